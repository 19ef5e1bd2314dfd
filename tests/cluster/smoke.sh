#!/usr/bin/env bash
# Proves the control plane from up.sh is real, not a stand-in: CEL validation in a CRD refuses a
# bad object with its message, server-side apply works, the deployment/replicaset controllers
# create a ReplicaSet and Pods, the garbage collector removes them, the namespace controller
# finalizes a namespace, RBAC answers `auth can-i` for real, the APIs an operator needs are
# served, and helm runs. Every wait is bounded. Prints "smoke: N passed, M failed".
#
# Env: SSEKEEPER_RUN_DIR (finds <run dir>/cluster/env), SSEKEEPER_SMOKE_TIMEOUT (seconds per wait, 60).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f "$STATE_DIR/env" ]] || die "no $STATE_DIR/env: run tests/cluster/up.sh first"
# shellcheck source=/dev/null
source "$STATE_DIR/env"
WAIT="${SSEKEEPER_SMOKE_TIMEOUT:-60}"
NS="ssekeeper-smoke-$$"
GROUP=smoke.ssekeeper.dev
passed=0
failed=0
work="$(mktemp -d)"

cleanup() {
  kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete crd "widgets.$GROUP" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [[ -z "${2:-}" ]] || printf '     %s\n' "$2"; }

# eventually SECONDS CMD...: polls CMD (quietly) every 0.5 s until it succeeds or time runs out.
eventually() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || return 1
    sleep 0.5
  done
}

k() { kubectl --request-timeout=10s "$@"; }

# ---- APIs an operator needs -----------------------------------------------------------------
for gv in apiextensions.k8s.io/v1 events.k8s.io/v1 coordination.k8s.io/v1 policy/v1 \
  networking.k8s.io/v1 apps/v1 rbac.authorization.k8s.io/v1; do
  if k get --raw "/apis/$gv" >/dev/null 2>"$work/err"; then ok "API $gv is served"; else fail "API $gv is served" "$(cat "$work/err")"; fi
done

# ---- CRD with a CEL rule --------------------------------------------------------------------
k create namespace "$NS" >/dev/null
cat >"$work/crd.yaml" <<EOF
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.$GROUP}
spec:
  group: $GROUP
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              replicas: {type: integer}
              store: {type: string}
            x-kubernetes-validations:
            - rule: "self.store != 'memory' || self.replicas <= 1"
              message: "store memory allows one replica only"
EOF
if k apply --server-side -f "$work/crd.yaml" >/dev/null 2>"$work/err" &&
  k wait --for=condition=Established --timeout="${WAIT}s" "crd/widgets.$GROUP" >/dev/null 2>>"$work/err"; then
  ok "CRD with x-kubernetes-validations is established"
else
  fail "CRD with x-kubernetes-validations is established" "$(cat "$work/err")"
fi

widget() {
  printf 'apiVersion: %s/v1\nkind: Widget\nmetadata: {name: %s, namespace: %s}\nspec: {replicas: %s, store: memory}\n' \
    "$GROUP" "$1" "$NS" "$2"
}
# Discovery of a fresh CRD can lag a moment behind Established; retry the valid one briefly.
widget good 1 >"$work/good.yaml"
if eventually "$WAIT" k apply --server-side -f "$work/good.yaml"; then
  ok "a valid object is accepted (server-side apply)"
else
  fail "a valid object is accepted (server-side apply)" "$(k apply --server-side -f "$work/good.yaml" 2>&1)"
fi
widget bad 3 >"$work/bad.yaml"
if out="$(k apply --server-side -f "$work/bad.yaml" 2>&1)"; then
  fail "an invalid object is refused by the CEL rule" "it was accepted: $out"
elif grep -q "store memory allows one replica only" <<<"$out"; then
  ok "an invalid object is refused with the rule's message"
else
  fail "an invalid object is refused with the rule's message" "$out"
fi

# ---- controllers: serviceaccount, deployment -> replicaset -> pods, garbage collection -------
if eventually "$WAIT" k -n "$NS" get serviceaccount default; then
  ok "serviceaccount controller created $NS/default"
else
  fail "serviceaccount controller created $NS/default"
fi
# No node runs pods yet: the pods stay Pending, but the controllers still do their part.
k -n "$NS" create deployment web --image=registry.invalid/none:1 --replicas=2 >/dev/null
rs_of_web() {
  [[ "$(k -n "$NS" get rs -l app=web -o jsonpath='{.items[0].metadata.ownerReferences[0].name}')" == web ]]
}
pods_of_web() {
  [[ "$(k -n "$NS" get pods -l app=web -o name | wc -l)" -eq 2 ]]
}
rs_made=false
if eventually "$WAIT" rs_of_web; then
  rs_made=true
  ok "deployment controller created a ReplicaSet owned by the Deployment"
else
  fail "deployment controller created a ReplicaSet owned by the Deployment" "$(k -n "$NS" get deploy,rs 2>&1)"
fi
if eventually "$WAIT" pods_of_web; then ok "replicaset controller created 2 Pods"; else fail "replicaset controller created 2 Pods" "$(k -n "$NS" get pods 2>&1)"; fi

k -n "$NS" delete deployment web --cascade=background --wait=false >/dev/null
no_rs() { [[ -z "$(k -n "$NS" get rs,pods -l app=web -o name)" ]]; }
if ! $rs_made; then
  fail "garbage collector removed the ReplicaSet and its Pods" "there was no ReplicaSet to collect"
elif eventually "$WAIT" no_rs; then
  ok "garbage collector removed the ReplicaSet and its Pods"
else
  fail "garbage collector removed the ReplicaSet and its Pods" "$(k -n "$NS" get rs,pods 2>&1)"
fi

# ---- RBAC ------------------------------------------------------------------------------------
if [[ "$(k auth can-i create deployments -n "$NS" 2>&1)" == yes ]]; then ok "auth can-i: admin may create deployments"; else fail "auth can-i: admin may create deployments"; fi
sa="system:serviceaccount:$NS:default"
if [[ "$(k auth can-i create deployments -n "$NS" --as="$sa" 2>/dev/null || true)" == no ]]; then
  ok "auth can-i: a bare service account may not (RBAC is enforced)"
else
  fail "auth can-i: a bare service account may not (RBAC is enforced)"
fi
k -n "$NS" create rolebinding sa-edit --clusterrole=edit --serviceaccount="$NS:default" >/dev/null
can_sa() { [[ "$(k auth can-i create deployments -n "$NS" --as="$sa" 2>/dev/null)" == yes ]]; }
if eventually "$WAIT" can_sa; then ok "auth can-i: a RoleBinding grants it"; else fail "auth can-i: a RoleBinding grants it"; fi
# A token the apiserver signed authenticates the service account (token controller / TokenRequest).
if token="$(k -n "$NS" create token default --duration=10m 2>"$work/err")" &&
  [[ "$(kubectl --token="$token" --request-timeout=10s auth whoami -o jsonpath='{.status.userInfo.username}' \
    --kubeconfig=<(sed '/client-certificate-data\|client-key-data/d' "$KUBECONFIG") 2>>"$work/err")" == "$sa" ]]; then
  ok "a service-account token authenticates as $sa"
else
  fail "a service-account token authenticates as $sa" "$(cat "$work/err")"
fi

# ---- namespace controller ---------------------------------------------------------------------
k delete namespace "$NS" --wait=false >/dev/null
ns_gone() { ! k get namespace "$NS" >/dev/null 2>&1; }
if eventually "$WAIT" ns_gone; then ok "namespace controller finalized namespace $NS"; else fail "namespace controller finalized namespace $NS" "$(k get ns "$NS" -o yaml 2>&1 | tail -n 15)"; fi

# ---- versions ---------------------------------------------------------------------------------
if v="$(k version -o json 2>&1)" && [[ "$(grep -c "\"gitVersion\": \"$K8S_VERSION\"" <<<"$v")" -eq 2 ]]; then
  ok "kubectl and kube-apiserver both report $K8S_VERSION"
else
  fail "kubectl and kube-apiserver both report $K8S_VERSION" "$v"
fi
if hv="$(helm version --short 2>&1)" && [[ "$hv" == "$HELM_VERSION"* ]]; then ok "helm version: $hv"; else fail "helm version prints $HELM_VERSION" "$hv"; fi

echo "smoke: $passed passed, $failed failed"
((failed == 0))
