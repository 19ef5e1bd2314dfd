#!/usr/bin/env bash
# `make demo`: the real control plane on loopback, the Helm chart installed, the operator running
# (out of cluster for now: the control plane has no node yet), examples/chat.yaml applied, and what
# a user would look at: kubectl get / describe.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${SSEKEEPER_RUN_DIR:-$repo/tests/.run}
demo=$run_dir/demo
mkdir -p "$demo"

bash "$repo/tests/cluster/up.sh" >/dev/null
# shellcheck disable=SC1091
source "$run_dir/cluster/env"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "CRD and Helm chart"
# Helm installs CRDs only once and never upgrades them: apply the current one first.
kubectl apply --server-side --force-conflicts -f "$repo/crds/ssekeeper.dev_sseservices.yaml" >/dev/null
helm upgrade --install ssekeeper "$repo/charts/ssekeeper" --namespace ssekeeper-system --create-namespace \
  --set sidecar.image.repository=ssekeeper/sidecar --set sidecar.image.tag=dev >/dev/null
# Poll: `kubectl wait` errors out while a fresh CRD has no status.conditions yet.
for _ in $(seq 1 300); do
  [ "$(kubectl get crd/sseservices.ssekeeper.dev -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ] && break
  sleep 0.2
done
helm list -n ssekeeper-system

step "Operator (out of cluster, as the chart's service account, leader election on)"
if [ -f "$demo/operator.pid" ] && kill -0 "$(cat "$demo/operator.pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$demo/operator.pid"))"
else
  token=$(kubectl create token ssekeeper -n ssekeeper-system --duration=24h)
  kc=$demo/operator.kubeconfig
  rm -f "$kc"
  kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$demo/ca.crt"
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  KUBECONFIG=$kc kubectl config set-cluster demo --server="$server" --certificate-authority="$demo/ca.crt" --embed-certs >/dev/null
  KUBECONFIG=$kc kubectl config set-credentials ssekeeper --token="$token" >/dev/null
  KUBECONFIG=$kc kubectl config set-context demo --cluster=demo --user=ssekeeper >/dev/null
  KUBECONFIG=$kc kubectl config use-context demo >/dev/null
  KUBECONFIG=$kc POD_NAMESPACE=ssekeeper-system \
    SSEKEEPER_SIDECAR_IMAGE=ssekeeper/sidecar:dev SSEKEEPER_LOG_FORMAT=pretty \
    SSEKEEPER_METRICS_ADDR=127.0.0.1:18080 SSEKEEPER_LEASE_NAME=ssekeeper \
    nohup "$repo/target/debug/ssekeeper-operator" >"$demo/operator.log" 2>&1 &
  echo $! >"$demo/operator.pid"
  echo "pid $(cat "$demo/operator.pid"), log $demo/operator.log, metrics http://127.0.0.1:18080/metrics"
fi

step "kubectl apply -f examples/chat.yaml"
kubectl apply -f "$repo/examples/chat.yaml"
for _ in $(seq 1 60); do
  gen=$(kubectl get ssesvc chat -o jsonpath='{.metadata.generation}')
  seen=$(kubectl get ssesvc chat -o jsonpath='{.status.observedGeneration}')
  [ "$gen" = "$seen" ] && break
  sleep 1
done
[ "$gen" = "$seen" ] || { echo "operator did not reconcile within 60 s; log:"; tail -50 "$demo/operator.log"; exit 1; }

step "kubectl get ssesvc"
kubectl get ssesvc
step "kubectl get deploy,svc,secret,pdb -l ssekeeper.dev/service=chat"
kubectl get deploy,svc,secret,pdb -l ssekeeper.dev/service=chat
step "kubectl describe ssesvc chat"
kubectl describe ssesvc chat
step "The rendered pod (app + injected sidecar)"
kubectl get deploy chat -o jsonpath='{range .spec.template.spec.containers[*]}{.name}{"\t"}{.image}{"\n"}{end}'
echo "terminationGracePeriodSeconds: $(kubectl get deploy chat -o jsonpath='{.spec.template.spec.terminationGracePeriodSeconds}')"

cat <<MSG

The control plane keeps running: export KUBECONFIG=$KUBECONFIG
Pods stay Pending until the node stage (kubelet + containerd) lands.
Stop everything with: make cluster-down
MSG
