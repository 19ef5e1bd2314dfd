#!/usr/bin/env bash
# Proves that cluster-down leaves nothing behind. `snapshot FILE` records the host before the
# cluster comes up; `check FILE`, after down, compares: no process of ours, no new mount, network
# namespace, link, route or iptables chain (KUBE-*, CNI-*, SSEKEEPER-*), the sysctls as they were,
# no node or state directory. Prints one verdict per check and `leftovers: N passed, M failed`.
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tests/cluster/node.sh source-path=SCRIPTDIR
source "$CLUSTER_DIR/node.sh"

usage() { echo "usage: $0 snapshot FILE | check FILE" >&2; exit 2; }
(($# == 2)) || usage
mode="$1" file="$2"

# section NAME: the lines of one aspect of the host, sorted.
section() {
  case "$1" in
    processes)
      # The cluster's components, containerd and its shims, and anything still in a pod's cgroup.
      local d exe
      for d in /proc/[0-9]*; do
        exe="$(readlink "$d/exe" 2>/dev/null)" || continue
        exe="${exe% (deleted)}"
        case "$exe" in
          "$SSEKEEPER_CACHE"/*/bin/* | /usr/bin/containerd | /usr/bin/containerd-shim*) echo "$exe" ;;
          # An `if`, not `&&`: the loop's status is its last command's, and a last process
          # outside any pod must not fail the whole section under pipefail.
          *) if grep -q kubepods "$d/cgroup" 2>/dev/null; then echo "pod process $exe"; fi ;;
        esac
      done | sort -u
      ;;
    mounts) awk '{print $5}' /proc/self/mountinfo | grep -E 'kubelet|containerd|ssekeeper|netns|/run/ssekeeper' | sort -u || true ;;
    netns) ls -1 /var/run/netns 2>/dev/null | sort || true ;;
    links) ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort ;;
    routes) ip route show | sort ;;
    iptables)
      local ipt
      for ipt in iptables ip6tables; do
        command -v "$ipt-save" >/dev/null || continue
        "$ipt-save" 2>/dev/null | awk -v t="$ipt" '/^\*/ {tab=$1} /^:(KUBE-|CNI-|SSEKEEPER-)/ {print t, tab, $1}'
      done | sort
      ;;
    sysctls) local k; for k in "${NODE_SYSCTLS[@]}"; do printf '%s=%s\n' "$k" "$(sysctl -n "$k" 2>/dev/null || echo absent)"; done ;;
    paths) local p; for p in "${NODE_HOST_PATHS[@]}" "$NODE_RUN"; do [[ -e "$p" ]] && echo "$p"; done; true ;;
    cgroups) ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null || true ;;
  esac
}
SECTIONS=(processes mounts netns links routes iptables sysctls paths cgroups)

case "$mode" in
  snapshot)
    for s in "${SECTIONS[@]}"; do section "$s" | sed "s|^|$s |"; done >"$file"
    ;;
  check)
    [[ -f "$file" ]] || die "no snapshot $file (take one with: $0 snapshot $file)"
    pass=0 fail=0
    for s in "${SECTIONS[@]}"; do
      extra="$(comm -13 <(sed -n "s|^$s ||p" "$file" | sort) <(section "$s" | sort))"
      if [[ -n "$extra" ]]; then
        fail=$((fail + 1))
        printf 'leftovers: FAIL %s:\n%s\n' "$s" "$(sed 's/^/    /' <<<"$extra")"
      else
        pass=$((pass + 1))
        printf 'leftovers: ok   %s\n' "$s"
      fi
    done
    if [[ -d "$STATE_DIR" ]]; then
      fail=$((fail + 1)); echo "leftovers: FAIL state directory $STATE_DIR remains"
    else
      pass=$((pass + 1)); echo "leftovers: ok   state directory"
    fi
    echo "leftovers: $pass passed, $fail failed"
    ((fail == 0))
    ;;
  *) usage ;;
esac
