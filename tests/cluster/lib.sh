# Shared by the cluster scripts: where things live and how to fail. Sourced, never run.
# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"

# shellcheck source=tests/cluster/versions.env
source "$CLUSTER_DIR/versions.env"

SSEKEEPER_CACHE="${SSEKEEPER_CACHE:-$HOME/.cache/ssekeeper}"
BUILD_KEY="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}"
BUILD_DIR="$SSEKEEPER_CACHE/$BUILD_KEY"
BIN_DIR="$BUILD_DIR/bin"

SSEKEEPER_RUN_DIR="${SSEKEEPER_RUN_DIR:-$REPO_ROOT/tests/.run}"
STATE_DIR="$SSEKEEPER_RUN_DIR/cluster"

# Ports: all overridable so two checkouts can run side by side.
APISERVER_PORT="${SSEKEEPER_APISERVER_PORT:-16443}"
ETCD_CLIENT_PORT="${SSEKEEPER_ETCD_CLIENT_PORT:-12379}"
ETCD_PEER_PORT="${SSEKEEPER_ETCD_PEER_PORT:-12380}"
KCM_PORT="${SSEKEEPER_KCM_PORT:-10257}"
SERVICE_CIDR="${SSEKEEPER_SERVICE_CIDR:-198.19.0.0/16}"
FIRST_SERVICE_IP="${SSEKEEPER_FIRST_SERVICE_IP:-198.19.0.1}"

# The components up.sh starts, in start order (down.sh stops them in reverse).
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# is_ours PID: true if PID runs one of our cached binaries with arguments naming this run dir
# (so a recycled pid, or another checkout's cluster, is never taken for ours).
is_ours() {
  local exe cmd
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [[ "$exe" == "$SSEKEEPER_CACHE"/*/bin/* ]] || return 1
  cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$STATE_DIR/"* ]]
}

# pid_alive FILE: true if FILE names a live process of ours.
pid_alive() {
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(<"$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"
}
