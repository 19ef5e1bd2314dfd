# The node part of down.sh: pods torn down through the CRI (so CNI releases their network
# namespaces and addresses), then everything node.sh changed on the host put back: mounts, network
# namespaces, the bridge and its route, iptables chains (KUBE-*, CNI-*, SSEKEEPER-*), cgroups,
# sysctls, host paths that did not exist before. Sourced by down.sh after lib.sh, never run.
# shellcheck shell=bash

NODE_DIR="$STATE_DIR/node"

# remove_pods: while containerd still runs (the kubelet already stopped), every sandbox stopped
# and removed through the CRI.
remove_pods() {
  [[ -S "$CONTAINERD_SOCK" && -x "$BIN_DIR/crictl" ]] || return 0
  local crictl=("$BIN_DIR/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 20s)
  local ids
  ids="$("${crictl[@]}" pods -q 2>/dev/null)" || return 0
  [[ -n "$ids" ]] || return 0
  # shellcheck disable=SC2086 # one id per word
  local out
  out="$("${crictl[@]}" stopp $ids 2>&1)" || log "crictl stopp failed: $(head -n 3 <<<"$out")"
  # shellcheck disable=SC2086
  out="$("${crictl[@]}" rmp -f $ids 2>&1)" || log "crictl rmp failed: $(head -n 3 <<<"$out")"
}

# kill_shims: containerd's shims outlive it by design; ours name our socket in their arguments.
kill_shims() {
  local d pid cmd
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$(readlink "$d/exe" 2>/dev/null)" == */containerd-shim* ]] || continue
    cmd="$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)" || continue
    [[ "$cmd" == *"$CONTAINERD_SOCK"* ]] || continue
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Whatever the shims ran (pods' processes) dies with their cgroups below.
}

# unmount_under DIR...: every mount below DIR, deepest first.
unmount_under() {
  local dir m
  for dir in "$@"; do
    [[ -d "$dir" ]] || continue
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir" '{ gsub(/\\040/, " ", $5); if (index($5, d "/") == 1 || $5 == d) print $5 }' /proc/self/mountinfo | sort -r)
  done
}

remove_netns() {
  [[ -d /var/run/netns ]] || return 0
  local n
  for n in /var/run/netns/cni-*; do
    [[ -e "$n" ]] || continue
    grep -qx "$(basename "$n")" "$NODE_RUN/netns.before" 2>/dev/null && continue
    umount "$n" 2>/dev/null || umount -l "$n" 2>/dev/null || true
    rm -f "$n"
  done
}

# clean_iptables: the chains kube-proxy, the kubelet, CNI and node.sh made, and the jumps to them.
clean_iptables() {
  local ipt t line c chains
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for t in filter nat mangle raw; do
      "$ipt" -w -t "$t" -S >/dev/null 2>&1 || continue
      while read -r line; do
        eval "$ipt -w -t $t ${line/#-A/-D}" 2>/dev/null || true
      done < <("$ipt" -w -t "$t" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE-|CNI-|SSEKEEPER-)')
      mapfile -t chains < <("$ipt" -w -t "$t" -S | awk '/^-N (KUBE-|CNI-|SSEKEEPER-)/ {print $2}')
      for c in "${chains[@]}"; do "$ipt" -w -t "$t" -F "$c" 2>/dev/null || true; done
      for c in "${chains[@]}"; do "$ipt" -w -t "$t" -X "$c" 2>/dev/null || true; done
    done
  done
}

# kill_pod_processes: anything still in a pod's cgroup (a sandbox the CRI could not stop, or whose
# shim was killed) gets SIGKILL; bounded wait until the cgroups are empty.
kill_pod_processes() {
  local f pid i left
  for ((i = 0; i < 50; i++)); do
    left=0
    for f in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
      /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs; do
      [[ -f "$f" ]] || continue
      while read -r pid; do
        [[ -n "$pid" ]] || continue
        left=1
        kill -KILL "$pid" 2>/dev/null || true
      done <"$f"
    done
    ((left)) || return 0
    sleep 0.1
  done
  log "processes left in pod cgroups after SIGKILL"
}

# remove_veths: the host ends of the pods' veth pairs (normally gone with their network
# namespaces): those on the bridge, and any veth that did not exist before the first up.
remove_veths() {
  local v
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    ip link del "$v" 2>/dev/null || true
  done
  [[ -f "$NODE_RUN/links.before" ]] || return 0
  for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    grep -qx "$v" "$NODE_RUN/links.before" || ip link del "$v" 2>/dev/null || true
  done
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

restore_host() {
  if [[ -s "$NODE_RUN/sysctl.saved" ]]; then
    local kv
    while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$NODE_RUN/sysctl.saved"
  fi
  if [[ -f "$NODE_RUN/paths.absent" ]]; then
    local p
    while read -r p; do
      [[ -n "$p" && -e "$p" ]] || continue
      unmount_under "$p"
      rm -rf "$p"
    done <"$NODE_RUN/paths.absent"
  fi
}

# node_down: after the kubelet and kube-proxy stopped, and before containerd stops (it is
# stopped here, so its pods go first).
node_down() {
  [[ -d "$NODE_RUN" || -d "$NODE_DIR" ]] || return 0
  # Only the owner of the node tears it down.
  if [[ -s "$NODE_OWNER" && "$(<"$NODE_OWNER")" != "$STATE_DIR" ]]; then return 0; fi
  remove_pods
  local f="$PIDS/containerd.pid" pid
  if [[ -s "$f" ]]; then
    pid="$(<"$f")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"; then stop "$pid" containerd; fi
    rm -f "$f"
  fi
  kill_shims
  kill_pod_processes
  remove_cgroups
  unmount_under "$NODE_DIR" "$NODE_RUN" /run/containerd
  remove_netns
  remove_veths
  ip link del "$BRIDGE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  clean_iptables
  restore_host
  rm -rf "$NODE_RUN"
}
