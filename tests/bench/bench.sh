#!/usr/bin/env bash
# `make bench` (full) and `make bench-short` (short): the peers side by side in one run.
#
# Builds the sidecar in release and the bench's Go tools (app, load generator, driver) into
# target/bench, makes a network namespace of its own (loopback only), and runs the driver in it:
# direct, HAProxy, nginx and the sidecar (memory store, Redis) measured back to back under one
# load generator. Writes target/bench/results.{md,json} and target/bench/bench.png; prints the
# table. Fails only when a peer cannot run at all or the harness breaks, never on speed.
#
#   bash tests/bench/bench.sh full|short
set -euo pipefail

MODE="${1:-short}"
case "$MODE" in full | short) ;; *) echo "usage: $0 full|short" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/target/bench"
CARGO="${CARGO:-cargo}"
SIDECAR="${CARGO_TARGET_DIR:-$ROOT/target}/release/ssekeeper-sidecar"
log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 2; }

((EUID == 0)) || die "needs root (it makes a network namespace); run as root"
for c in ip haproxy nginx redis-server go python3; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null || die "$c missing (make deps installs haproxy, nginx, redis-server)"
done
export PATH="$PATH:/usr/sbin:/sbin"

mkdir -p "$OUT"
log "building the sidecar (release) and the bench tools"
(cd "$ROOT" && "$CARGO" build -q --release -p ssekeeper-sidecar)
(cd "$ROOT/tests/bench" && GOFLAGS="${GOFLAGS:--trimpath}" go build -o "$OUT/" ./app ./load ./run)

NS="ssekeeper-bench-$$"
cleanup() {
  local pids
  # Everything inside the namespace was started by this run.
  if pids="$(ip netns pids "$NS" 2>/dev/null)" && [[ -n "$pids" ]]; then
    kill -KILL $pids 2>/dev/null || true
  fi
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
# Per-namespace knobs: 10k streams through a proxy need ports and backlog; none leaks outside.
for s in "net.ipv4.ip_local_port_range=30000 65000" net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=65535 \
  net.ipv4.tcp_max_syn_backlog=65535; do
  ip netns exec "$NS" sysctl -qw "$s" >/dev/null 2>&1 || log "could not set $s in the namespace"
done
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- sidecar 2>/dev/null || rev="$rev+dirty"
cmd="make bench"; [[ "$MODE" == short ]] && cmd="make bench-short"
log "running ($MODE) in network namespace $NS"
rc=0
ip netns exec "$NS" env BENCH_SIDECAR_REV="$rev" "$OUT/run" -mode "$MODE" -out "$OUT" -bin "$OUT" \
  -sidecar "$SIDECAR" -command "$cmd" ${BENCH_ARGS:-} || rc=$?

if [[ -s "$OUT/results.json" ]]; then
  rm -f "$OUT/bench.png"
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "matplotlib missing: pip install matplotlib"
    python3 -m pip install -q --user matplotlib >/dev/null 2>&1 || python3 -m pip install -q matplotlib >/dev/null 2>&1 || true
  fi
  if python3 -c 'import matplotlib' 2>/dev/null; then
    if ! python3 "$ROOT/tests/bench/plot.py" "$OUT/results.json" "$OUT/bench.png"; then
      log "plot failed"
      ((rc != 0)) || rc=2
    fi
  else
    log "no matplotlib: table only, no plot"
  fi
fi
log "results: $OUT/results.md, $OUT/results.json, $OUT/bench.png (exit $rc)"
exit "$rc"
