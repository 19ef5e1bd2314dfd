#!/usr/bin/env bash
# The chart's monitoring pack, checked without a cluster (`make chart` runs this):
#   - promtool checks the alert rules, both the file as it is and the PrometheusRule the chart
#     renders from it, and runs their unit tests (rules-test.yaml) against the rendered one;
#   - every alert has a firing and a quiet test case and a runbook in the README;
#   - the monitoring templates render with each toggle, `auto` renders nothing without the
#     monitoring.coreos.com/v1 API and every object with it, and the dashboard is valid JSON.
# promtool comes from Debian's prometheus package (tests/scripts/install-deps.sh); helm from
# tests/cluster/build.sh, or $HELM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

chart=charts/ssekeeper
rules=$chart/files/prometheus-rules.yaml
tests=tests/monitoring/rules-test.yaml
helm=${HELM:-$(bash tests/cluster/build.sh)/helm}
api=(--api-versions monitoring.coreos.com/v1)

fail() { printf 'monitoring: FAIL: %s\n' "$*" >&2; exit 1; }
command -v promtool >/dev/null ||
  fail "promtool is missing: bash tests/scripts/install-deps.sh installs it (Debian's prometheus package)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the rules --------------------------------------------------------------------------------
promtool check rules "$rules" >/dev/null || fail "promtool check rules $rules"

# The chart's PrometheusRule with a fixed runbook base: its spec is a promtool rule file.
base='https://runbooks.test/ssekeeper#'
"$helm" template sk "$chart" --set monitoring.prometheusRule.enabled=true \
  --set-string "monitoring.prometheusRule.runbookBaseUrl=$base" \
  --show-only templates/prometheusrule.yaml >"$work/prometheusrule.yaml"
sed -n '/^spec:$/,$p' "$work/prometheusrule.yaml" | tail -n +2 | sed 's/^  //' >"$work/rules.yaml"
grep -q '__RUNBOOK_BASE_URL__' "$work/rules.yaml" && fail "the rendered rules still hold the runbook placeholder"
cp "$tests" "$work/rules-test.yaml"
promtool check rules "$work/rules.yaml" || fail "promtool check rules on the chart's PrometheusRule"
promtool test rules "$work/rules-test.yaml" || fail "promtool test rules $tests"

mapfile -t alerts < <(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$rules")
((${#alerts[@]} > 0)) || fail "no alert found in $rules"
# alertname -> "fire" / "quiet" cases, from `exp_alerts:` (a list follows) and `exp_alerts: []`.
cases=$(awk '/alertname:/ { name = $2 }
             /exp_alerts: *\[\]/ { print name, "quiet"; next }
             /exp_alerts: *$/ { print name, "fire" }' "$tests" | sort -u)
for a in "${alerts[@]}"; do
  grep -qx "$a fire" <<<"$cases" || fail "$a has no firing case in $tests"
  grep -qx "$a quiet" <<<"$cases" || fail "$a has no case where it stays quiet in $tests"
  grep -q "runbook_url: __RUNBOOK_BASE_URL__${a,,}\$" "$rules" || fail "$a's runbook_url is not the base + ${a,,}"
  # GitHub's anchor of "#### Runbook: Name" is runbook-name, what the default base points at.
  grep -qE "^#+ Runbook: \`?$a\`?\$" README.md || fail "README.md has no '#### Runbook: $a' heading"
done
grep -q '^    runbookBaseUrl: https://github.com/ssekeeper/ssekeeper/blob/main/README.md#runbook-$' \
  "$chart/values.yaml" || fail "runbookBaseUrl's default is not the README's runbook anchors"

# --- the templates ----------------------------------------------------------------------------
render() { "$helm" template sk "$chart" --namespace sk-system "$@"; }
# kinds of the monitoring objects in a render, one a line, sorted
kinds() { render "$@" | sed -n 's/^kind: \(ServiceMonitor\|PodMonitor\|PrometheusRule\)$/\1/p; /^  name: sk-ssekeeper-dashboard$/s/.*/Dashboard/p' | sort | tr '\n' ' '; }
expect() {
  local want=$1 got
  shift
  got=$(kinds "$@")
  [[ "$got" == "$want" ]] || fail "helm template $* rendered '$got', want '$want'"
}
expect "" # defaults without the API: auto renders nothing
expect "PodMonitor PrometheusRule ServiceMonitor " "${api[@]}"
expect "PodMonitor PrometheusRule " "${api[@]}" --set metricsService.enabled=false
expect "ServiceMonitor " --set monitoring.serviceMonitor.enabled=true
expect "PodMonitor " --set monitoring.podMonitor.enabled=true
expect "PrometheusRule " --set monitoring.prometheusRule.enabled=true
expect "Dashboard " --set monitoring.grafanaDashboard.enabled=true
expect "" "${api[@]}" --set monitoring.serviceMonitor.enabled=false \
  --set monitoring.podMonitor.enabled=false --set monitoring.prometheusRule.enabled=false
all=(--set monitoring.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true
  --set monitoring.prometheusRule.enabled=true --set monitoring.grafanaDashboard.enabled=true)
expect "Dashboard PodMonitor PrometheusRule ServiceMonitor " "${all[@]}"
"$helm" lint --strict "$chart" "${all[@]}" >/dev/null || fail "helm lint --strict with every monitoring toggle on"
render --set monitoring.serviceMonitor.enabled=true --set metricsService.enabled=false >/dev/null 2>&1 &&
  fail "a ServiceMonitor without the metrics Service must be refused"
render --set monitoring.podMonitor.enabled=yes >/dev/null 2>&1 &&
  fail "values.schema.json must refuse podMonitor.enabled=yes"

# The PodMonitor looks where the operator watches.
pm() { render --set monitoring.podMonitor.enabled=true --show-only templates/podmonitor.yaml "$@"; }
pm | grep -q '^    any: true$' || fail "the PodMonitor of a cluster-wide install selects any namespace"
pm --set 'operator.watchNamespaces={team-a,team-b}' | tr -d '\n' | grep -q 'matchNames:      - team-a      - team-b' ||
  fail "the PodMonitor of a namespaced install selects the watched namespaces"
pm | grep -q 'key: ssekeeper.dev/service, operator: Exists' || fail "the PodMonitor selects SseService pods"
pm | grep -q '^    - port: admin$' || fail "the PodMonitor scrapes the sidecar's admin port"

# The dashboard: valid JSON in a ConfigMap with the sidecar's label.
render --set monitoring.grafanaDashboard.enabled=true --set monitoring.grafanaDashboard.namespace=grafana \
  --show-only templates/grafana-dashboard.yaml >"$work/dashboard.yaml"
grep -q '^    "grafana_dashboard": "1"$' "$work/dashboard.yaml" || fail "the dashboard ConfigMap lacks grafana_dashboard: \"1\""
grep -q '^  namespace: grafana$' "$work/dashboard.yaml" || fail "the dashboard ConfigMap ignores grafanaDashboard.namespace"
sed -n '/^  ssekeeper.json: |-$/,$p' "$work/dashboard.yaml" | tail -n +2 | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["uid"] and d["panels"], "a dashboard with a uid and panels"
' || fail "the dashboard ConfigMap does not hold the dashboard JSON"

echo "monitoring: ${#alerts[@]} alerts checked and unit-tested by promtool, templates render with each toggle"
