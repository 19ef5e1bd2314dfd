#!/usr/bin/env bash
# `make demo`: ssekeeper live on a real node. The cluster comes up (control plane, kubelet +
# containerd, kube-proxy, CoreDNS), the Helm chart installs the operator in the cluster (2
# replicas, leader election), examples/redis.yaml and examples/chat.yaml are applied (3 replicas
# of the demo chat app, sessions in Redis), 60 browser-like clients stream through the Service's
# ClusterIP, the SseService is rolled mid-stream, and the clients report what they received.
# The cluster stays up for you to explore; `make cluster-down` removes it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${SSEKEEPER_RUN_DIR:-$repo/tests/.run}
demo=$run_dir/demo
clients=${SSEKEEPER_DEMO_CLIENTS:-60}
mkdir -p "$demo"
t0=$(date +%s)

step() { printf '\n\033[1m== %s\033[0m  (%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() { printf '\ndemo: error: %s\n' "$*" >&2; exit 1; }

step "Cluster: control plane + node (kubelet, containerd, kube-proxy, CoreDNS)"
bash "$repo/tests/cluster/up.sh" >/dev/null
# shellcheck disable=SC1091
source "$run_dir/cluster/env"
kubectl get nodes -o wide
kubectl -n kube-system get pods -o wide

# Our images are imported into the node's containerd as localhost/ssekeeper/*; the examples name
# the public registry, which a user replaces with theirs the same way.
local_images() { sed "s#ghcr.io/ssekeeper/#localhost/ssekeeper/#g" "$1"; }
restricted() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl label namespace "$1" --overwrite pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >/dev/null
}

step "Helm chart: the operator in the cluster (namespace ssekeeper-system, PodSecurity restricted)"
# Helm installs CRDs only once and never upgrades them: apply the current one first.
kubectl apply --server-side --force-conflicts -f "$repo/crds/ssekeeper.dev_sseservices.yaml" >/dev/null
restricted ssekeeper-system
helm upgrade --install ssekeeper "$repo/charts/ssekeeper" --namespace ssekeeper-system \
  --set imageRegistry=localhost/ssekeeper --set operator.logFormat=pretty --wait --timeout 180s >/dev/null ||
  { kubectl -n ssekeeper-system get pods; fail "the chart did not become ready"; }
kubectl -n ssekeeper-system get deploy,pods,lease -o wide
helm test ssekeeper -n ssekeeper-system --logs | sed -n '/^POD LOGS/,$p'

step "kubectl apply -f examples/redis.yaml -f examples/chat.yaml (namespace default, PodSecurity restricted)"
restricted default
local_images "$repo/examples/redis.yaml" | kubectl apply -f -
kubectl rollout status deploy/redis --timeout=120s
local_images "$repo/examples/chat.yaml" | kubectl apply -f -
for _ in $(seq 1 120); do
  [[ "$(kubectl get ssesvc chat -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]] && break
  sleep 1
done
[[ "$(kubectl get ssesvc chat -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] ||
  { kubectl describe ssesvc chat; kubectl get pods -o wide; fail "SseService chat did not become Ready in 120 s"; }
kubectl rollout status deploy/chat-publisher --timeout=60s
kubectl get ssesvc chat
kubectl get pods -o wide

svc_ip=$(kubectl get svc chat -o jsonpath='{.spec.clusterIP}')
svc_port=$(kubectl get svc chat -o jsonpath='{.spec.ports[0].port}')
redis_ip=$(kubectl get svc redis -o jsonpath='{.spec.clusterIP}')

step "$clients clients stream GET /events through the Service's ClusterIP $svc_ip:$svc_port (kube-proxy, ClientIP affinity)"
"$repo/target/debug/sse-crowd" --target "$svc_ip:$svc_port" --redis-url "redis://$redis_ip:6379/1" \
  --clients "$clients" --groups 3 --source-ips "$SSEKEEPER_CLIENT_IPS" >"$demo/crowd.log" 2>&1 &
crowd=$!
trap 'kill $crowd 2>/dev/null || true' EXIT
for _ in $(seq 1 90); do
  grep -q 'clients streaming' "$demo/crowd.log" && break
  kill -0 "$crowd" 2>/dev/null || { cat "$demo/crowd.log"; fail "the clients stopped"; }
  sleep 1
done
cat "$demo/crowd.log"
sleep 5

step "Rolling update of the SseService mid-stream (a template change): pods being replaced"
gen_before=$(kubectl get deploy chat -o jsonpath='{.metadata.generation}')
kubectl patch ssesvc chat --type merge \
  -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"demo.ssekeeper.dev/rolled-at\":\"$(date -Is)\"}}}}}"
roll_start=$(date +%s)
last=""
while :; do
  now=$(kubectl get pods -l ssekeeper.dev/service=chat --no-headers \
    -o custom-columns='NAME:.metadata.name,READY:.status.containerStatuses[*].ready,PHASE:.status.phase,DELETING:.metadata.deletionTimestamp' 2>/dev/null |
    awk '{ printf "  %s ready=%s %s%s\n", $1, $2, $3, ($4 != "<none>" ? " terminating" : "") }')
  if [[ "$now" != "$last" ]]; then
    printf '%4ss\n%s\n' "$(($(date +%s) - roll_start))" "$now"
    last="$now"
  fi
  generation=$(kubectl get deploy chat -o jsonpath='{.metadata.generation}')
  read -r obs upd ready total < <(kubectl get deploy chat -o jsonpath='{.status.observedGeneration} {.status.updatedReplicas} {.status.readyReplicas} {.status.replicas}{"\n"}') || true
  pods=$(kubectl get pods -l ssekeeper.dev/service=chat --no-headers 2>/dev/null | wc -l)
  if ((generation > gen_before)) && [[ "$obs" == "$generation" && "$upd" == 3 && "$ready" == 3 && "$total" == 3 && "$pods" == 3 ]]; then break; fi
  (($(date +%s) - roll_start < 300)) || fail "the rollout did not finish in 300 s"
  sleep 1
done
echo "rollout done in $(($(date +%s) - roll_start)) s"
tail -n 3 "$demo/crowd.log"

step "Publisher stopped; every client must have the whole sequence"
sleep 3
kubectl scale deploy chat-publisher --replicas=0 >/dev/null
kubectl wait --for=delete pod -l app.kubernetes.io/name=chat-publisher --timeout=60s >/dev/null 2>&1 || true
kill -INT "$crowd"
crowd_rc=0
wait "$crowd" || crowd_rc=$?
trap - EXIT
grep -E '^(group|all|sse-crowd: last)' "$demo/crowd.log" || true
kubectl scale deploy chat-publisher --replicas=1 >/dev/null

step "kubectl get ssesvc"
kubectl get ssesvc
step "kubectl describe ssesvc chat"
kubectl describe ssesvc chat

cat <<MSG

The cluster keeps running ($(($(date +%s) - t0)) s so far). Explore it:
  export KUBECONFIG=$KUBECONFIG PATH=$SSEKEEPER_CLUSTER_BIN:\$PATH
  kubectl get ssesvc,pods,svc -o wide
  kubectl -n ssekeeper-system logs -l app.kubernetes.io/name=ssekeeper --prefix
Clients' log: $demo/crowd.log
Remove everything with: make cluster-down
MSG
((crowd_rc == 0)) || fail "a client lost or repeated events (see above)"
