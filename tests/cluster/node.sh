# The node stage of up.sh: the host network the node needs (a bridge of our own, a route for
# Services, forwarding, an egress guard), containerd, the kubelet, kube-proxy and CoreDNS.
# Sourced by up.sh after lib.sh, never run. Everything it changes on the host is recorded under
# $NODE_RUN so down.sh can put it back exactly (node-down.sh).
# shellcheck shell=bash

# Host sysctls the kubelet or kube-proxy may change, or that we set; saved before the first up
# and restored by down.
NODE_SYSCTLS=(
  kernel.panic kernel.panic_on_oops vm.overcommit_memory
  net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.netfilter.nf_conntrack_tcp_be_liberal
)
# Host paths the node may create; the ones absent before the first up are removed by down.
NODE_HOST_PATHS=(/run/containerd /var/lib/cni /var/log/containers /var/log/pods /var/run/netns /etc/cni)
EGRESS_CHAIN=SSEKEEPER-EGRESS
# containerd and the kubelet run with this group, so the host may refuse them any traffic off the
# machine: an image reference that is not on the node (ErrImagePull) fails at once, and no pull or
# DNS lookup ever leaves it.
NODE_GID=64242
NODE_OUT_CHAIN=SSEKEEPER-NODE-OUT
# Addresses on the bridge for test and demo clients (below the pods' range): ClientIP affinity
# spreads clients over pods only when they come from several addresses.
CLIENT_IPS=(198.18.0.2 198.18.0.3 198.18.0.4 198.18.0.5 198.18.0.6 198.18.0.7 198.18.0.8 198.18.0.9)
NODE_DIR="$STATE_DIR/node"

# claim_node: the node is machine-wide; refuse when another run dir's node is running.
claim_node() {
  mkdir -p "$NODE_RUN"
  chmod 700 "$NODE_RUN"
  if [[ -s "$NODE_OWNER" && "$(<"$NODE_OWNER")" != "$STATE_DIR" ]]; then
    local other
    other="$(<"$NODE_OWNER")"
    if [[ -d "$other/pids" ]] && ls "$other"/pids/*.pid >/dev/null 2>&1; then
      die "a node of another cluster ($other) runs on this machine; stop it first (SSEKEEPER_RUN_DIR=${other%/cluster} tests/cluster/down.sh, or make cluster-down there)"
    fi
    log "taking over the node left by $other (nothing of it runs)"
  fi
  printf '%s' "$STATE_DIR" >"$NODE_OWNER"
}

# record_host_state: what the host looks like before the first up (kept until down).
record_host_state() {
  if [[ ! -s "$NODE_RUN/sysctl.saved" ]]; then
    local k v
    : >"$NODE_RUN/sysctl.saved.tmp"
    for k in "${NODE_SYSCTLS[@]}"; do
      v="$(sysctl -n "$k" 2>/dev/null)" || continue
      printf '%s=%s\n' "$k" "$v" >>"$NODE_RUN/sysctl.saved.tmp"
    done
    mv -f "$NODE_RUN/sysctl.saved.tmp" "$NODE_RUN/sysctl.saved"
  fi
  if [[ ! -f "$NODE_RUN/paths.absent" ]]; then
    local p
    : >"$NODE_RUN/paths.absent.tmp"
    for p in "${NODE_HOST_PATHS[@]}"; do [[ -e "$p" ]] || echo "$p" >>"$NODE_RUN/paths.absent.tmp"; done
    mv -f "$NODE_RUN/paths.absent.tmp" "$NODE_RUN/paths.absent"
  fi
  if [[ ! -f "$NODE_RUN/links.before" ]]; then
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' >"$NODE_RUN/links.before"
  fi
  if [[ ! -f "$NODE_RUN/netns.before" ]]; then
    ls -1 /var/run/netns 2>/dev/null >"$NODE_RUN/netns.before" || : >"$NODE_RUN/netns.before"
  fi
}

# node_network_up: the bridge (named by the node's IP), the Service route, forwarding, and a
# guard so pod traffic never leaves the machine (only 198.18.0.0/15 is forwarded).
node_network_up() {
  command -v iptables >/dev/null || die "iptables missing: run tests/scripts/install-deps.sh"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || die "cannot create the bridge $BRIDGE"
    # Pin the bridge's MAC: left alone, a Linux bridge takes the lowest MAC of its ports, so a pod
    # starting or stopping could change the gateway's address under every other pod's ARP cache.
    ip link set "$BRIDGE" address "$(cat "/sys/class/net/$BRIDGE/address")"
  fi
  ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  iptables -w -N "$EGRESS_CHAIN" 2>/dev/null || iptables -w -F "$EGRESS_CHAIN"
  iptables -w -A "$EGRESS_CHAIN" -d 198.18.0.0/15 -j RETURN
  iptables -w -A "$EGRESS_CHAIN" -j DROP
  iptables -w -C FORWARD -i "$BRIDGE" -j "$EGRESS_CHAIN" 2>/dev/null ||
    iptables -w -I FORWARD 1 -i "$BRIDGE" -j "$EGRESS_CHAIN"
  iptables -w -N "$NODE_OUT_CHAIN" 2>/dev/null || iptables -w -F "$NODE_OUT_CHAIN"
  iptables -w -A "$NODE_OUT_CHAIN" -d 127.0.0.0/8 -j RETURN
  iptables -w -A "$NODE_OUT_CHAIN" -d 198.18.0.0/15 -j RETURN
  iptables -w -A "$NODE_OUT_CHAIN" -j REJECT
  iptables -w -C OUTPUT -m owner --gid-owner "$NODE_GID" -j "$NODE_OUT_CHAIN" 2>/dev/null ||
    iptables -w -I OUTPUT 1 -m owner --gid-owner "$NODE_GID" -j "$NODE_OUT_CHAIN"
  local ip
  for ip in "${CLIENT_IPS[@]}"; do ip addr replace "$ip/32" dev "$BRIDGE"; done
}

# write_if_changed FILE: stdin to FILE only when the content differs (kube-proxy exits when its
# config file changes, and an unchanged file keeps a running component running).
write_if_changed() {
  local tmp="$1.tmp"
  cat >"$tmp"
  if [[ -f "$1" ]] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

write_node_configs() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam" "$NODE_DIR/containerd" "$NODE_DIR/kubelet" \
    "$NODE_DIR/pod-logs" "$NODE_RUN/containerd-state" "$NODE_RUN/runc"
  write_if_changed "$NODE_DIR/containerd.toml" <<EOF
# Written by tests/cluster/up.sh. containerd 1.6 (Debian) for the test node's kubelet.
version = 2
root = "$NODE_DIR/containerd"
state = "$NODE_RUN/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$NODE_RUN/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM's root lacks CAP_SYS_RESOURCE: runc fails a sandbox that lowers oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  write_if_changed "$NODE_DIR/cni/net.d/10-ssekeeper.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ssekeeper",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "rangeStart": "$POD_RANGE_START", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  # Pods get only the cluster DNS: never the machine's resolver.
  : | write_if_changed "$NODE_DIR/resolv.conf"
  write_if_changed "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization: { mode: Webhook }
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
resolvConf: $NODE_DIR/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
rotateCertificates: false
serverTLSBootstrap: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1% }
maxPods: 110
shutdownGracePeriod: 0s
syncFrequency: 10s
fileCheckFrequency: 10s
EOF
  write_if_changed "$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: $STATE_DIR/kube-proxy.kubeconfig }
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: [$NODE_IP/32]
iptables: { localhostNodePorts: false, minSyncPeriod: 0s, syncPeriod: 30s }
# 0 leaves the host's conntrack settings alone.
conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
EOF
}

# node_certs: identities the Node authorizer and default RBAC know, signed by the test CA.
node_certs() {
  gen_cert kubelet "system:node:$NODE_NAME" system:nodes "$client_ext"
  gen_cert kubelet-serving "$NODE_NAME" "" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP"
  gen_cert kube-proxy system:kube-proxy "" "$client_ext"
  gen_cert kube-scheduler system:kube-scheduler "" "$client_ext"
  chmod 600 "$PKI"/*.key
  write_kubeconfig "$STATE_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME" "$PKI/kubelet.crt" "$PKI/kubelet.key"
  write_kubeconfig "$STATE_DIR/kube-proxy.kubeconfig" system:kube-proxy "$PKI/kube-proxy.crt" "$PKI/kube-proxy.key"
  write_kubeconfig "$STATE_DIR/scheduler.kubeconfig" system:kube-scheduler "$PKI/kube-scheduler.crt" "$PKI/kube-scheduler.key"
}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

containerd_ready() { [[ -S "$CONTAINERD_SOCK" ]] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }

# import_images: every image `make images` wrote, into the node's containerd (idempotent).
import_images() {
  [[ -s "$IMAGES_DIR/pause.tar" ]] ||
    die "no images in $IMAGES_DIR (the node needs the pause image): run 'make images' first"
  local t
  for t in "$IMAGES_DIR"/*.tar; do
    ctr_k8s images import --snapshotter overlayfs "$t" >/dev/null 2>"$LOGS/ctr-import.log" ||
      { cat "$LOGS/ctr-import.log" >&2; die "importing $t into containerd failed"; }
  done
}

node_ready() {
  [[ "$("$BIN_DIR/kubectl" --request-timeout=5s get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
kubelet_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:${KUBELET_HEALTHZ_PORT}/healthz" 2>/dev/null | grep -qx ok; }
proxy_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:${PROXY_HEALTHZ_PORT}/healthz" >/dev/null 2>&1; }
scheduler_healthy() { curl -fsSk --max-time 3 "https://127.0.0.1:${SCHEDULER_PORT}/healthz" 2>/dev/null | grep -qx ok; }
coredns_ready() {
  [[ "$("$BIN_DIR/kubectl" --request-timeout=5s -n kube-system get deploy coredns \
    -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" == 1 ]]
}

start_node() {
  start kube-scheduler "$SCHEDULER_PORT" -- "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --cert-dir="$STATE_DIR/scheduler-certs" --leader-elect=false --profiling=false
  wait_for "kube-scheduler /healthz" "$(remaining)" scheduler_healthy

  start containerd -- setpriv --regid="$NODE_GID" --clear-groups /usr/bin/containerd --config "$NODE_DIR/containerd.toml" --log-level warn
  wait_for "containerd" "$(remaining)" containerd_ready
  import_images

  start kubelet "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" -- setpriv --regid="$NODE_GID" --clear-groups "$BIN_DIR/kubelet" \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$STATE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" \
    --cert-dir="$NODE_DIR/kubelet-certs" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --v=1
  wait_for "kubelet /healthz" "$(remaining)" kubelet_healthy
  wait_for "node $NODE_NAME Ready" "$(remaining)" node_ready

  start kube-proxy "$PROXY_HEALTHZ_PORT" "$PROXY_METRICS_PORT" -- "$BIN_DIR/kube-proxy" \
    --config="$NODE_DIR/kube-proxy.yaml" --v=1
  wait_for "kube-proxy /healthz" "$(remaining)" proxy_healthy

  sed -e "s#@IMAGE@#localhost/ssekeeper/coredns:${IMAGE_VERSION}#g" -e "s#@CLUSTER_DNS_IP@#${CLUSTER_DNS_IP}#g" \
    "$CLUSTER_DIR/coredns.yaml" | "$BIN_DIR/kubectl" apply --server-side --force-conflicts -f - >/dev/null ||
    die "applying CoreDNS failed"
  wait_for "CoreDNS Ready" "$(remaining)" coredns_ready
}
