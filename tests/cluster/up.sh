#!/usr/bin/env bash
# Starts a real Kubernetes cluster on this machine for the tests and the demo: upstream etcd,
# kube-apiserver (Node,RBAC authorization, service-account tokens), kube-controller-manager,
# kube-scheduler and one node (containerd, kubelet, kube-proxy, CoreDNS: node.sh), with
# certificates generated here. Waits until the API is ready and the default namespace and
# service account exist, then writes <run dir>/cluster/env (KUBECONFIG, PATH) for other scripts
# and tests to source, and prints the KUBECONFIG export. Idempotent: says so if already up.
#
# Env: SSEKEEPER_RUN_DIR (default <repo>/tests/.run), SSEKEEPER_CACHE, SSEKEEPER_APISERVER_PORT
# (16443), SSEKEEPER_ETCD_CLIENT_PORT (12379), SSEKEEPER_ETCD_PEER_PORT (12380),
# SSEKEEPER_KCM_PORT (10257), SSEKEEPER_SERVICE_CIDR (198.19.0.0/16),
# SSEKEEPER_FIRST_SERVICE_IP (198.19.0.1), SSEKEEPER_UP_TIMEOUT (seconds, 180),
# SSEKEEPER_KEEP_ON_FAILURE=1 (leave the processes running when up fails, to debug),
# SSEKEEPER_K8S_VERSION / SSEKEEPER_ETCD_VERSION (another version than versions.env's).
#
# `--control-plane-only` (or SSEKEEPER_CONTROL_PLANE_ONLY=1): etcd, kube-apiserver on 127.0.0.1
# and kube-controller-manager only; no scheduler, no node, no root, nothing machine-wide (see
# lib.sh). The run dir remembers the mode until it is purged (SSEKEEPER_CONTROL_PLANE_ONLY=0 to
# start a full cluster there instead).
set -euo pipefail
for a in "$@"; do
  case "$a" in
    --control-plane-only) export SSEKEEPER_CONTROL_PLANE_ONLY=1 ;;
    -h | --help) echo "usage: $0 [--control-plane-only]"; exit 0 ;;
    *) echo "$0: unknown argument: $a (usage: $0 [--control-plane-only])" >&2; exit 2 ;;
  esac
done
# shellcheck source=tests/cluster/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tests/cluster/node.sh source-path=SCRIPTDIR
source "$CLUSTER_DIR/node.sh"

UP_TIMEOUT="${SSEKEEPER_UP_TIMEOUT:-180}"
started_at=$(date +%s)

SSEKEEPER_CONTROL_PLANE_ONLY="$CONTROL_PLANE_ONLY" "$CLUSTER_DIR/build.sh" >/dev/null || die "building the control-plane binaries failed"
command -v openssl >/dev/null || die "openssl missing: run tests/scripts/install-deps.sh"
command -v curl >/dev/null || die "curl missing: run tests/scripts/install-deps.sh"

PKI="$STATE_DIR/pki"
LOGS="$STATE_DIR/logs"
PIDS="$STATE_DIR/pids"
KUBECONFIG_FILE="$STATE_DIR/admin.kubeconfig"
KCM_KUBECONFIG="$STATE_DIR/controller-manager.kubeconfig"
ENV_FILE="$STATE_DIR/env"
# Without a node there is no bridge: the apiserver listens on loopback (its certificate names it).
API_IP="$NODE_IP"
((CONTROL_PLANE_ONLY)) && API_IP=127.0.0.1
SERVER="https://${API_IP}:${APISERVER_PORT}"
mkdir -p "$PKI" "$LOGS" "$PIDS"
mkdir -p "$STATE_DIR/etcd" && chmod 700 "$STATE_DIR/etcd"
chmod 700 "$STATE_DIR"

# One up/down at a time per run dir. (The daemons must not inherit fd 9: see start.)
exec 9>"$STATE_DIR/.updown.lock"
flock -w 300 9 || die "another up.sh/down.sh holds $STATE_DIR/.updown.lock"

# If bringing the cluster up fails half-way, stop what we started (logs stay for a look).
on_exit() {
  local rc=$?
  if ((rc != 0)) && [[ "${SSEKEEPER_KEEP_ON_FAILURE:-}" != 1 ]]; then
    exec 9>&-
    log "stopping what was started (set SSEKEEPER_KEEP_ON_FAILURE=1 to keep it running)"
    "$CLUSTER_DIR/down.sh" || true
  fi
  exit "$rc"
}
trap on_exit EXIT

# The node is machine-wide: claim it, record the host as it is, give the node its network
# (the apiserver listens on the bridge address, so pods reach it through the kubernetes Service).
if ((CONTROL_PLANE_ONLY)); then
  : >"$STATE_DIR/control-plane-only"
else
  rm -f "$STATE_DIR/control-plane-only"
  ((EUID == 0)) || die "the node (bridge, iptables, containerd, kubelet) needs root"
  claim_node
  record_host_state
  node_network_up
fi

# Forget pidfiles of processes that are gone (killed, crashed, machine restarted).
for c in "${COMPONENTS[@]}"; do
  pid_alive "$PIDS/$c.pid" || rm -f "$PIDS/$c.pid"
done

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_alive "$PIDS/$c.pid" || return 1; done
}

api_ready() {
  [[ -f "$PKI/admin.crt" ]] &&
    [[ "$(curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
      "$SERVER/readyz" 2>/dev/null)" == "ok" ]]
}

write_env() {
  local node_lines="export SSEKEEPER_CONTROL_PLANE_ONLY=1"
  ((CONTROL_PLANE_ONLY)) || node_lines="export SSEKEEPER_NODE_IP='$NODE_IP'
export SSEKEEPER_CONTAINERD_SOCK='$CONTAINERD_SOCK'
export CONTAINER_RUNTIME_ENDPOINT='unix://$CONTAINERD_SOCK'
export SSEKEEPER_CLIENT_IPS='$(IFS=,; echo "${CLIENT_IPS[*]}")'"
  cat >"$ENV_FILE.tmp" <<EOF
# Written by tests/cluster/up.sh: source it to talk to the test control plane.
export KUBECONFIG='$KUBECONFIG_FILE'
export SSEKEEPER_CLUSTER_BIN='$BIN_DIR'
export SSEKEEPER_APISERVER_URL='$SERVER'
export SSEKEEPER_CLUSTER_K8S_VERSION='$K8S_VERSION'
export SSEKEEPER_SERVICE_CIDR='$SERVICE_CIDR'
$node_lines
export SSEKEEPER_IMAGE_TAG='$IMAGE_VERSION'
case ":\$PATH:" in *":$BIN_DIR:"*) ;; *) export PATH='$BIN_DIR':"\$PATH" ;; esac
EOF
  mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

if all_running && api_ready; then
  ((CONTROL_PLANE_ONLY)) || import_images  # `make images` may have built new ones since
  write_env
  log "already up ($SERVER)"
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  exit 0
fi

# ---- certificates ---------------------------------------------------------------------------
# gen_ca NAME CN: a self-signed CA (kept across runs).
gen_ca() {
  [[ -s "$PKI/$1.crt" && -s "$PKI/$1.key" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 3650 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null ||
    die "openssl could not create the CA $1"
}

# gen_cert NAME CN O EXT [CA]: key + cert signed by CA (default: ca), with the given extensions.
gen_cert() {
  local name="$1" cn="$2" o="$3" ext="$4" ca="${5:-ca}" subj="/CN=$2"
  [[ -s "$PKI/$name.crt" && -s "$PKI/$name.key" ]] && return 0
  [[ -n "$o" ]] && subj="/O=$o/CN=$cn"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null ||
    die "openssl could not sign $name"
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# A serving certificate from before the node stage lacks the node's address: make a new one.
if [[ -s "$PKI/apiserver.crt" ]] && ! openssl x509 -in "$PKI/apiserver.crt" -noout -text 2>/dev/null | grep -q "IP Address:${NODE_IP}"; then
  rm -f "$PKI/apiserver.crt" "$PKI/apiserver.key"
fi
if [[ ! -s "$PKI/ca.crt" || ! -s "$PKI/ca.key" ]]; then
  rm -f "$PKI"/*.crt "$PKI"/*.key  # a new CA invalidates every certificate it signed
fi
gen_ca ca ssekeeper-test-ca
# Front proxy (request-header authentication): for aggregated API servers; its own CA, as kubeadm does.
gen_ca front-proxy-ca ssekeeper-test-front-proxy-ca
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
gen_cert apiserver kube-apiserver "" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:${NODE_IP},IP:${FIRST_SERVICE_IP},DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
gen_cert admin admin system:masters "$client_ext"
gen_cert controller-manager system:kube-controller-manager "" "$client_ext"
gen_cert front-proxy-client front-proxy-client "" "$client_ext" front-proxy-ca
# For the kubelet stage: how the apiserver authenticates to kubelets (logs, exec).
gen_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "$client_ext"
if [[ ! -s "$PKI/sa.key" ]]; then
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
chmod 600 "$PKI"/*.key

# write_kubeconfig FILE USER CERT KEY: a self-contained kubeconfig (certificates embedded).
write_kubeconfig() {
  local b64="base64 -w0"
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ssekeeper-test
  cluster:
    server: $SERVER
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$3")
    client-key-data: $($b64 <"$4")
contexts:
- name: ssekeeper-test
  context: {cluster: ssekeeper-test, user: $2, namespace: default}
current-context: ssekeeper-test
EOF
  chmod 600 "$1.tmp"
  mv -f "$1.tmp" "$1"
}
write_kubeconfig "$KUBECONFIG_FILE" admin "$PKI/admin.crt" "$PKI/admin.key"
write_kubeconfig "$KCM_KUBECONFIG" system:kube-controller-manager "$PKI/controller-manager.crt" "$PKI/controller-manager.key"
if ! ((CONTROL_PLANE_ONLY)); then
  node_certs
  write_node_configs
fi

# ---- processes ------------------------------------------------------------------------------
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# start NAME PORT... -- CMD...: starts CMD detached (own session, survives this script) unless its
# pidfile names a live process; refuses if one of its ports is taken by something else.
start() {
  local name="$1" ports=()
  shift
  while [[ "$1" != "--" ]]; do ports+=("$1"); shift; done
  shift
  if pid_alive "$PIDS/$name.pid"; then return 0; fi
  local p
  for p in "${ports[@]}"; do
    port_busy "$p" && die "port $p (for $name) is already in use by another process; set SSEKEEPER_*_PORT to free ones or run tests/cluster/down.sh"
  done
  {
    printf '\n==== %s starting %s\n' "$(date -Is)" "$name"
  } >>"$LOGS/$name.log"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name.pid"
}

# wait_for WHAT SECONDS CMD...: polls CMD every 0.5 s until it succeeds; on timeout shows the logs.
wait_for() {
  local what="$1" secs="$2" deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@"; do
    if (($(date +%s) >= deadline)); then
      local c
      for c in "${COMPONENTS[@]}"; do
        [[ -f "$LOGS/$c.log" ]] && { echo "---- last lines of $LOGS/$c.log" >&2; tail -n 15 "$LOGS/$c.log" >&2; }
      done
      die "timed out after ${secs}s waiting for $what (logs in $LOGS)"
    fi
    local c
    for c in "${COMPONENTS[@]}"; do
      if [[ -f "$PIDS/$c.pid" ]] && ! pid_alive "$PIDS/$c.pid"; then
        echo "---- last lines of $LOGS/$c.log" >&2
        tail -n 25 "$LOGS/$c.log" >&2
        die "$c exited while waiting for $what (log: $LOGS/$c.log)"
      fi
    done
    sleep 0.5
  done
}

remaining() { local r=$((started_at + UP_TIMEOUT - $(date +%s))); ((r > 5)) && echo "$r" || echo 5; }

start etcd "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" -- "$BIN_DIR/etcd" \
  --name=ssekeeper-test \
  --data-dir="$STATE_DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
  --advertise-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="ssekeeper-test=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --unsafe-no-fsync=true \
  --log-level=warn

etcd_ready() { curl -fsS --max-time 3 "http://127.0.0.1:${ETCD_CLIENT_PORT}/health" 2>/dev/null | grep -q '"health":"true"'; }
wait_for "etcd" "$(remaining)" etcd_ready

# Control plane only: the advertised address (the `kubernetes` Service's endpoint, which must not
# be loopback) is the apiserver's own pick, the host's default-route address; no pod ever uses it.
advertise=(--advertise-address="$NODE_IP")
((CONTROL_PLANE_ONLY)) && advertise=()
start kube-apiserver "$APISERVER_PORT" -- "$BIN_DIR/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
  --bind-address="$API_IP" \
  "${advertise[@]}" \
  --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --kubelet-preferred-address-types=InternalIP \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --allow-privileged=true \
  --profiling=false \
  --cert-dir="$STATE_DIR/apiserver-certs"

wait_for "kube-apiserver /readyz" "$(remaining)" api_ready

start kube-controller-manager "$KCM_PORT" -- "$BIN_DIR/kube-controller-manager" \
  --kubeconfig="$KCM_KUBECONFIG" \
  --authentication-kubeconfig="$KCM_KUBECONFIG" \
  --authorization-kubeconfig="$KCM_KUBECONFIG" \
  --bind-address=127.0.0.1 \
  --secure-port="$KCM_PORT" \
  --cert-dir="$STATE_DIR/controller-manager-certs" \
  --leader-elect=false \
  --controllers='*' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --profiling=false

export KUBECONFIG="$KUBECONFIG_FILE"
kctl() { "$BIN_DIR/kubectl" --request-timeout=5s "$@" >/dev/null 2>&1; }
kcm_healthy() { curl -fsSk --max-time 3 "https://127.0.0.1:${KCM_PORT}/healthz" 2>/dev/null | grep -qx ok; }
wait_for "kube-controller-manager /healthz" "$(remaining)" kcm_healthy
wait_for "namespace default" "$(remaining)" kctl get namespace default
wait_for "serviceaccount default/default" "$(remaining)" kctl -n default get serviceaccount default

((CONTROL_PLANE_ONLY)) || start_node

write_env
log "up in $(($(date +%s) - started_at))s: $SERVER (logs: $LOGS)"
echo "export KUBECONFIG=$KUBECONFIG_FILE"
