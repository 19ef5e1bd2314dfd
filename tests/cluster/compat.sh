#!/usr/bin/env bash
# The operator against an older Kubernetes than versions.env pins (`make test-compat`): builds
# (cached, its own cache entry) and starts a control plane of SSEKEEPER_K8S_VERSION in
# control-plane-only mode (etcd, kube-apiserver, kube-controller-manager, kubectl, helm; no node),
# checks that the CRD and the chart are accepted (`kubectl apply --dry-run=server`, `helm install
# --dry-run=server`), runs the operator integration suite against it, prints the test runner's
# summary, then stops it and proves nothing is left (no process of this run dir, its ports free,
# its state removed). Exits non-zero when a check or a test fails.
#
# Env: SSEKEEPER_K8S_VERSION (required, e.g. v1.30.14), SSEKEEPER_ETCD_VERSION (default: the etcd
# that Kubernetes version is tested with, from its build/dependencies.yaml), SSEKEEPER_RUN_DIR and
# the SSEKEEPER_*_PORT variables (give it a run dir and ports of its own), SSEKEEPER_GO_BUILD_JOBS,
# CARGO (cargo), COMPAT_TEST_THREADS (3). The suite's full output stays in
# <run dir>/operator-tests.log, the components' logs in <run dir>/cluster-logs.
set -euo pipefail
[[ -n "${SSEKEEPER_K8S_VERSION:-}" ]] || { echo "compat.sh: set SSEKEEPER_K8S_VERSION (e.g. v1.30.14)" >&2; exit 2; }
export SSEKEEPER_CONTROL_PLANE_ONLY=1
export GOTOOLCHAIN=local GOWORK=off

# The etcd this Kubernetes is tested with, unless one is given.
if [[ -z "${SSEKEEPER_ETCD_VERSION:-}" ]]; then
  dir="$(cd /tmp && go mod download -json "k8s.io/kubernetes@${SSEKEEPER_K8S_VERSION}" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" ||
    { echo "compat.sh: cannot download k8s.io/kubernetes@${SSEKEEPER_K8S_VERSION}" >&2; exit 1; }
  v="$(sed -n '/name: "etcd"$/,/version:/s/^[[:space:]]*version:[[:space:]]*\([0-9.]*\).*/\1/p' \
    "$dir/build/dependencies.yaml" | head -n1)"
  [[ -n "$v" ]] || { echo "compat.sh: no etcd version in $dir/build/dependencies.yaml; set SSEKEEPER_ETCD_VERSION" >&2; exit 1; }
  export SSEKEEPER_ETCD_VERSION="v$v"
fi

# shellcheck source=tests/cluster/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CARGO="${CARGO:-cargo}"
THREADS="${COMPAT_TEST_THREADS:-3}"
LOG="$SSEKEEPER_RUN_DIR/operator-tests.log"
mkdir -p "$SSEKEEPER_RUN_DIR"
t0=$(date +%s)
secs() { echo "$(($(date +%s) - $1))s"; }

# Stop it whatever happens (a failed check, a failed test, ^C), then prove nothing is left.
down_and_check() {
  local rc=$? left=0 p d
  trap - EXIT INT TERM
  "$CLUSTER_DIR/down.sh" --control-plane-only || left=1
  for d in /proc/[0-9]*; do
    if is_ours "${d#/proc/}"; then log "left behind: pid ${d#/proc/} ($(readlink "$d/exe"))"; left=1; fi
  done
  for p in "$APISERVER_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KCM_PORT"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then log "left behind: port $p still listens"; left=1; fi
  done
  # The components' logs outlive the purge (for a look at a failure), beside the suite's.
  if [[ -d "$STATE_DIR/logs" ]]; then
    rm -rf "$SSEKEEPER_RUN_DIR/cluster-logs" && cp -r "$STATE_DIR/logs" "$SSEKEEPER_RUN_DIR/cluster-logs"
  fi
  "$CLUSTER_DIR/down.sh" --control-plane-only --purge || left=1
  [[ -e "$STATE_DIR" ]] && { log "left behind: $STATE_DIR"; left=1; }
  if ((left)); then log "down: something was left behind"; ((rc)) || rc=1
  else log "down: no process, port or state of $STATE_DIR left"; fi
  log "total $(secs "$t0") (Kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION}); exit $rc"
  exit "$rc"
}

log "Kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION}, control plane only, run dir $SSEKEEPER_RUN_DIR, apiserver :${APISERVER_PORT}"
t=$(date +%s)
"$CLUSTER_DIR/build.sh" --control-plane-only >/dev/null
log "build (cached when warm): $(secs "$t") -> $BIN_DIR"

# A run dir of its own, started from scratch: nothing of an earlier run (etcd data) is reused.
"$CLUSTER_DIR/down.sh" --control-plane-only --purge
trap down_and_check EXIT
trap 'exit 130' INT TERM
t=$(date +%s)
"$CLUSTER_DIR/up.sh" --control-plane-only >/dev/null
log "up: $(secs "$t")"
# shellcheck source=/dev/null
source "$STATE_DIR/env"
log "$(kubectl version | grep '^Server Version')"

fails=0
check() {  # check WHAT CMD...: runs CMD, says ok (with the server's warnings) or shows its output
  local out
  if out="$("${@:2}" 2>&1)"; then
    log "ok: $1"
    printf '%s\n' "$out" | grep -i '^warning' | sed 's/^/    /' >&2 || true
  else log "FAILED: $1"; printf '%s\n' "$out" | tail -n 20 >&2; fails=$((fails + 1)); fi
}
CRD="$REPO_ROOT/crds/ssekeeper.dev_sseservices.yaml"
CHART="$REPO_ROOT/charts/ssekeeper"
# Before the suite applies the CRD: the chart's own CRD template must be new to the server.
check "CRD accepted by the server (kubectl apply --dry-run=server; structural schema, CEL rules)" \
  kubectl apply --server-side --dry-run=server -f "$CRD"
check "chart accepted by the server (helm install --dry-run=server, with its CRD)" \
  helm install compat-dry-run "$CHART" --namespace default --dry-run=server
check "chart's kubeVersion admits ${K8S_VERSION} (helm template --kube-version)" \
  helm template compat "$CHART" --kube-version "${K8S_VERSION#v}"

t=$(date +%s)
(cd "$REPO_ROOT" && "$CARGO" build -q --workspace --bins)
log "cargo build: $(secs "$t")"
t=$(date +%s)
set +e
(cd "$REPO_ROOT" && "$CARGO" test --no-fail-fast -p ssekeeper-tests --test operator -- --test-threads="$THREADS") >"$LOG" 2>&1
test_rc=$?
set -e
log "operator suite: $(secs "$t") (full output: $LOG)"
echo "---- test runner summary (Kubernetes ${K8S_VERSION}) ----"
grep -E '^test .* \.\.\. |^failures:$|^    [a-z_0-9:]+$|^test result:' "$LOG" || true
if grep -q 'panicked at' "$LOG"; then
  echo "---- why (the first lines of each failure) ----"
  grep -A4 'panicked at' "$LOG" | cut -c1-400
fi
if ((test_rc != 0)) && ! grep -q '^test result:' "$LOG"; then
  echo "---- the suite did not run; last lines of its output ----"
  tail -n 40 "$LOG"
fi
if ((fails)); then log "$fails server-side check(s) failed"; fi
((test_rc == 0 && fails == 0))
