# Shared by the cluster scripts: where things live and how to fail. Sourced, never run.
# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"

# shellcheck source=tests/cluster/versions.env
source "$CLUSTER_DIR/versions.env"

# Another Kubernetes (and its etcd) than the pinned one, e.g. to check an older minor the chart
# claims (`make test-compat`): both are keys of the cache, so each version has its own entry and
# the pinned one is never rebuilt or touched.
K8S_VERSION="${SSEKEEPER_K8S_VERSION:-$K8S_VERSION}"
ETCD_VERSION="${SSEKEEPER_ETCD_VERSION:-$ETCD_VERSION}"
[[ "$K8S_VERSION" =~ ^v1\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || { echo "SSEKEEPER_K8S_VERSION must look like v1.30.14, not '$K8S_VERSION'" >&2; exit 1; }
[[ "$ETCD_VERSION" =~ ^v3\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || { echo "SSEKEEPER_ETCD_VERSION must look like v3.5.15, not '$ETCD_VERSION'" >&2; exit 1; }

SSEKEEPER_CACHE="${SSEKEEPER_CACHE:-$HOME/.cache/ssekeeper}"
BUILD_KEY="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}"
# CoreDNS is its own cache entry, so bumping it never rebuilds Kubernetes.
COREDNS_BUILD_DIR="$SSEKEEPER_CACHE/coredns-${COREDNS_VERSION}"
CRICTL_BUILD_DIR="$SSEKEEPER_CACHE/crictl-${CRICTL_VERSION}"
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

SCHEDULER_PORT="${SSEKEEPER_SCHEDULER_PORT:-10259}"

# The node: one per machine (iptables chains, the bridge and containerd are machine-wide), named
# by its IP on a bridge of our own. Pods on POD_CIDR, Services on SERVICE_CIDR (both inside
# 198.18.0.0/15, the benchmarking range), cluster DNS on CLUSTER_DNS_IP.
NODE_IP="${SSEKEEPER_NODE_IP:-198.18.0.1}"
NODE_NAME="$NODE_IP"
POD_CIDR="${SSEKEEPER_POD_CIDR:-198.18.0.0/24}"
POD_RANGE_START="${SSEKEEPER_POD_RANGE_START:-198.18.0.16}"
BRIDGE="${SSEKEEPER_BRIDGE:-ssek0}"
CLUSTER_DNS_IP="${SSEKEEPER_CLUSTER_DNS_IP:-198.19.0.10}"
KUBELET_PORT="${SSEKEEPER_KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${SSEKEEPER_KUBELET_HEALTHZ_PORT:-10248}"
PROXY_HEALTHZ_PORT="${SSEKEEPER_PROXY_HEALTHZ_PORT:-10256}"
PROXY_METRICS_PORT="${SSEKEEPER_PROXY_METRICS_PORT:-10249}"
# Sockets live on a short path (a unix socket path is limited to 108 bytes; a CI clone may sit
# deep), machine-wide like the node itself. NODE_OWNER names the run dir whose node this is.
NODE_RUN="${SSEKEEPER_NODE_RUN:-/run/ssekeeper-node}"
NODE_OWNER="$NODE_RUN/owner"
CONTAINERD_SOCK="$NODE_RUN/containerd.sock"
# The images the node runs are imported from here (`make images` writes them).
IMAGES_DIR="${SSEKEEPER_IMAGES_DIR:-$REPO_ROOT/target/images}"
IMAGE_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n1)"
PAUSE_IMAGE="localhost/ssekeeper/pause:${IMAGE_VERSION}"

# The components up.sh starts, in start order (down.sh stops them in reverse).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

# Control-plane-only mode (SSEKEEPER_CONTROL_PLANE_ONLY=1, or up.sh/build.sh --control-plane-only):
# etcd, kube-apiserver (on 127.0.0.1) and kube-controller-manager (garbage collection,
# Deployments -> ReplicaSets), plus kubectl and helm; no scheduler and no node, so no root, no
# bridge, no iptables, and nothing machine-wide: it runs beside another run dir's full cluster.
# What the operator tests need (`make test-compat`). A run dir started this way remembers it
# (cluster/control-plane-only), so down.sh never touches a node there.
CONTROL_PLANE_ONLY=0
if [[ "${SSEKEEPER_CONTROL_PLANE_ONLY:-}" == 1 ]] ||
  [[ -z "${SSEKEEPER_CONTROL_PLANE_ONLY:-}" && -f "$STATE_DIR/control-plane-only" ]]; then
  CONTROL_PLANE_ONLY=1
  COMPONENTS=(etcd kube-apiserver kube-controller-manager)
fi

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# is_ours PID: true if PID runs one of our cached binaries with arguments naming this run dir
# (so a recycled pid, or another checkout's cluster, is never taken for ours).
is_ours() {
  local exe cmd
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [[ "$exe" == "$SSEKEEPER_CACHE"/*/bin/* || "$exe" == /usr/bin/containerd ]] || return 1
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
