#!/usr/bin/env bash
# Stops the control plane that up.sh started in this run dir: each process from its pidfile
# (newest first), TERM then KILL after a bounded wait, plus any process still running one of our
# binaries against this run dir (e.g. left by an up.sh that was interrupted before writing its
# pidfile). Leaves no process behind. `--purge` also removes <run dir>/cluster (certificates,
# etcd data, logs). Safe to run when nothing is up. A control-plane-only run dir (up.sh
# --control-plane-only) has no node: its down never touches the machine-wide node state.
#
# Env: SSEKEEPER_RUN_DIR, SSEKEEPER_CACHE, SSEKEEPER_DOWN_TIMEOUT (seconds per process, 15).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tests/cluster/node-down.sh source-path=SCRIPTDIR
source "$CLUSTER_DIR/node-down.sh"

purge=false
for a in "$@"; do
  case "$a" in
    --purge) purge=true ;;
    --control-plane-only) CONTROL_PLANE_ONLY=1 ;;  # also known from the run dir or the env
    -h | --help) echo "usage: $0 [--purge] [--control-plane-only]"; exit 0 ;;
    *) die "unknown argument: $a (usage: $0 [--purge] [--control-plane-only])" ;;
  esac
done
DOWN_TIMEOUT="${SSEKEEPER_DOWN_TIMEOUT:-15}"
PIDS="$STATE_DIR/pids"

if [[ ! -d "$STATE_DIR" ]]; then
  # A node whose run dir is gone (purged by hand) is still ours to clean if it names this dir.
  if ! ((CONTROL_PLANE_ONLY)) && [[ -s "$NODE_OWNER" && "$(<"$NODE_OWNER")" == "$STATE_DIR" ]]; then PIDS=/nonexistent; node_down; fi
  exit 0
fi
exec 9>"$STATE_DIR/.updown.lock"
flock -w 300 9 || die "another up.sh/down.sh holds $STATE_DIR/.updown.lock"

# stop PID NAME: TERM, wait up to DOWN_TIMEOUT, then KILL and wait for it to be gone.
stop() {
  local pid="$1" name="$2" i limit="$DOWN_TIMEOUT"
  # kube-apiserver's graceful shutdown waits out open watches and its endpoint lease (> 20 s even
  # with every client gone); its data is test data, so it gets a short grace before KILL.
  [[ "$name" == kube-apiserver ]] && ((limit > 5)) && limit=5
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < limit * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  [[ "$name" == kube-apiserver ]] || log "$name (pid $pid) ignored TERM for ${limit}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "$name (pid $pid) is still running after KILL"
}

for ((n = ${#COMPONENTS[@]} - 1; n >= 0; n--)); do
  c="${COMPONENTS[$n]}"
  # containerd goes with the node, after its pods (the kubelet is stopped by now).
  if [[ "$c" == containerd ]]; then ((CONTROL_PLANE_ONLY)) || node_down; continue; fi
  f="$PIDS/$c.pid"
  if [[ -s "$f" ]]; then
    pid="$(<"$f")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"; then stop "$pid" "$c"; fi
    rm -f "$f"
  fi
done

# Anything of ours that no pidfile names (controller-manager first, etcd last).
for pass in kube-proxy kubelet containerd kube-scheduler kube-controller-manager kube-apiserver etcd ""; do
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    is_ours "$pid" || continue
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || continue
    [[ -z "$pass" || "$(basename "${exe% (deleted)}")" == "$pass" ]] || continue
    log "stopping stray $(basename "${exe% (deleted)}") (pid $pid)"
    stop "$pid" "$(basename "${exe% (deleted)}")"
  done
done

# Strays stopped: the node's host state may only be cleaned now (a stray containerd held it).
((CONTROL_PLANE_ONLY)) || node_down
rm -f "$STATE_DIR/env"
if $purge; then
  exec 9>&-
  rm -rf "$STATE_DIR"
fi
