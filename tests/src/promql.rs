//! Metric names in the chart's monitoring pack, held against what the processes export.
//!
//! The Grafana dashboard (`charts/ssekeeper/files/dashboard.json`) and the alert rules
//! (`charts/ssekeeper/files/prometheus-rules.yaml`) are text that no compiler reads: a renamed
//! metric leaves a panel empty and an alert silent, and nothing says so. The tests that start a
//! real sidecar (`tests/dataplane_metrics.rs`) and a real operator (`tests/operator/`) scrape
//! their `/metrics` and fail on any name used here that they do not export.
//!
//! [`metric_names`] is a small scanner, not a PromQL parser: it knows strings, label matchers,
//! ranges, numbers, keywords, aggregation modifiers and function calls well enough for the
//! expressions the chart ships, which its unit tests cover.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which process exports a metric, told by its name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `ssekeeper_operator_*`.
    Operator,
    /// Every other `ssekeeper_*`.
    Sidecar,
}

impl Component {
    /// The component exporting `name`; `None` for names that are not ssekeeper's (such as `up`,
    /// which Prometheus makes).
    pub fn of(name: &str) -> Option<Self> {
        if name.starts_with("ssekeeper_operator_") {
            Some(Self::Operator)
        } else if name.starts_with("ssekeeper_") {
            Some(Self::Sidecar)
        } else {
            None
        }
    }
}

/// Words that are PromQL syntax, never metric names, even when not followed by `(`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    // Aggregations, which may be followed by `by (...)` before their `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords whose parenthesised list names labels, not series.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: identifiers followed by `{` or standing bare, less
/// functions (followed by `(`), keywords, label names in matchers and grouping lists, strings,
/// durations, numbers and Grafana variables (`$var`, `${var}`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_past(&chars, i, '{', '}'),
            '[' => i = skip_past(&chars, i, '[', ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_past(&chars, i, '{', '}');
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers, durations (`5m`), exponents (`1e3`), hex (`0x1f`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if called {
                        i = skip_past(&chars, next, '(', ')');
                    }
                } else if !called && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal opening at `i` (backslash escapes, except in raw strings).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if quote != '`' && chars[j] == '\\' {
            2
        } else {
            1
        };
    }
    j + 1
}

/// The index after the `close` matching the `open` at `i`, stepping over strings inside.
fn skip_past(chars: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// The PromQL in a Grafana template variable's query: `label_values(expr, label)` and
/// `label_values(label)` are Grafana's, not PromQL; their label is not a metric.
pub fn grafana_query_expr(query: &str) -> String {
    let q = query.trim();
    let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return q.to_string();
    };
    // The label is the last top-level argument; without a comma there is no expression.
    let chars: Vec<char> = inner.chars().collect();
    let (mut depth, mut last_comma, mut j) = (0i32, None, 0);
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(&chars, j);
                continue;
            }
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => last_comma = Some(j),
            _ => {}
        }
        j += 1;
    }
    last_comma
        .map(|k| chars[..k].iter().collect())
        .unwrap_or_default()
}

/// Every metric name the chart's alert rules and dashboard use, each with where (for failure
/// messages): `alert <name>`, `panel <title>`, `variable <name>`.
pub fn chart_metric_names() -> BTreeMap<String, Vec<String>> {
    let files = chart_files();
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |expr: &str, place: String| {
        for name in metric_names(expr) {
            used.entry(name).or_default().push(place.clone());
        }
    };

    let rules = read(&files.join("prometheus-rules.yaml"));
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&rules).expect("prometheus-rules.yaml is YAML");
    for group in rules["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules of a group") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("a rule is an alert or a recording rule");
            add(
                rule["expr"].as_str().expect("a rule's expr"),
                format!("alert {name}"),
            );
        }
    }

    let dashboard = read(&files.join("dashboard.json"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard.json is JSON");
    walk_panels(&dashboard["panels"], &mut add);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_default();
        let name = var["name"].as_str().unwrap_or("?");
        add(&grafana_query_expr(query), format!("variable {name}"));
    }
    used
}

/// Every target `expr` of the panels, rows' nested panels included.
fn walk_panels(panels: &serde_json::Value, add: &mut impl FnMut(&str, String)) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                add(expr, format!("panel {title}"));
            }
        }
        walk_panels(&panel["panels"], add);
    }
}

/// `charts/ssekeeper/files` of this repository.
fn chart_files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ssekeeper/files")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The series names an exposition (`/metrics` text) can produce: each `# TYPE` family with the
/// suffixes its type gives its samples in Prometheus (a counter `x` is stored as `x_total`, a
/// histogram as `x_bucket`, `x_sum`, `x_count`), and every sample name present. A labelled
/// family appears only once it has a series: a test must make each happen, or scrape where it
/// did.
pub fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(family), Some(ty)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match ty {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[],
            };
            names.insert(family.to_string());
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') {
            let name: String = line.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The names `used` attributes to `component` that are not among `exposed` (what
/// [`exposed_names`] found in one or more scrapes), with where each is used: what a test reports.
pub fn missing(
    used: &BTreeMap<String, Vec<String>>,
    exposed: &BTreeSet<String>,
    component: Component,
) -> Vec<String> {
    used.iter()
        .filter(|(name, _)| Component::of(name) == Some(component) && !exposed.contains(*name))
        .map(|(name, places)| format!("{name} (used by {})", places.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn selectors_bare_or_with_matchers_are_names_and_labels_are_not() {
        assert_eq!(
            names(
                r#"sum by (namespace, sseservice) (rate(ssekeeper_events_forwarded_total{namespace=~"$namespace", sseservice=~"a|b"}[$__rate_interval]))"#
            ),
            ["ssekeeper_events_forwarded_total"]
        );
        assert_eq!(names("ssekeeper_store_up == 0"), ["ssekeeper_store_up"]);
        assert_eq!(names("up"), ["up"]);
    }

    #[test]
    fn joins_aggregations_and_functions_keep_only_the_series() {
        assert_eq!(
            names(
                "max by (namespace, name) (\n  ssekeeper_operator_sseservice_condition{condition=\"Ready\"}\n  and on (instance) (ssekeeper_operator_leader == 1)\n) == 0"
            ),
            [
                "ssekeeper_operator_leader",
                "ssekeeper_operator_sseservice_condition"
            ]
        );
        assert_eq!(
            names(
                "max by (namespace) (ssekeeper_operator_leader) < 1\nor\nabsent(ssekeeper_operator_leader)"
            ),
            ["ssekeeper_operator_leader"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > bool 1e-3"),
            ["x_bucket"]
        );
        assert_eq!(
            names(
                "a / ignoring (kind) group_left (pod) b offset 1h unless sum without(le)(c) atan2 d"
            ),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            names(r#"label_replace(a{x="}"}, "dst", "$1", "src", "(.*)") # b is a comment"#),
            ["a"]
        );
        assert_eq!(
            names("topk(3, a) + Inf + NaN + count_values(\"v\", b)"),
            ["a", "b"]
        );
    }

    #[test]
    fn grafana_variables_are_not_names() {
        assert_eq!(names("a[${__range}] * ${factor} * $factor"), ["a"]);
        assert_eq!(
            grafana_query_expr(
                r#"label_values(ssekeeper_build_info{namespace=~"$namespace"}, sseservice)"#
            ),
            r#"ssekeeper_build_info{namespace=~"$namespace"}"#
        );
        assert_eq!(grafana_query_expr("label_values(namespace)"), "");
        assert_eq!(grafana_query_expr("query_result(up)"), "query_result(up)");
    }

    #[test]
    fn an_exposition_names_its_families_with_their_suffixes() {
        let text = "# HELP ssekeeper_resumes Resumes.\n# TYPE ssekeeper_resumes counter\n\
                    # TYPE ssekeeper_record_batch_seconds histogram\n\
                    ssekeeper_record_batch_seconds_bucket{le=\"0.1\"} 0\n\
                    # TYPE ssekeeper_store_up gauge\nssekeeper_store_up 1\n# EOF\n";
        let names = exposed_names(text);
        for n in [
            "ssekeeper_resumes_total",
            "ssekeeper_record_batch_seconds_bucket",
            "ssekeeper_record_batch_seconds_count",
            "ssekeeper_store_up",
        ] {
            assert!(names.contains(n), "{n}: {names:?}");
        }
        assert!(!names.contains("ssekeeper_store_up_total"));
        let used = BTreeMap::from([
            (
                "ssekeeper_store_up".to_string(),
                vec!["alert A".to_string()],
            ),
            (
                "ssekeeper_store_down".to_string(),
                vec!["panel P".to_string()],
            ),
            (
                "ssekeeper_operator_leader".to_string(),
                vec!["alert B".to_string()],
            ),
        ]);
        assert_eq!(
            missing(&used, &names, Component::Sidecar),
            ["ssekeeper_store_down (used by panel P)"]
        );
    }

    /// Every name the chart uses is one of ours: a misspelt prefix would otherwise be checked
    /// against neither process.
    #[test]
    fn every_name_the_chart_uses_belongs_to_the_operator_or_the_sidecar() {
        let used = chart_metric_names();
        let foreign: Vec<_> = used.keys().filter(|n| Component::of(n).is_none()).collect();
        assert!(foreign.is_empty(), "not ssekeeper metrics: {foreign:?}");
        for component in [Component::Operator, Component::Sidecar] {
            assert!(
                used.keys().any(|n| Component::of(n) == Some(component)),
                "the chart uses {component:?} metrics"
            );
        }
        assert!(used.contains_key("ssekeeper_drain_state"), "{used:?}");
        assert!(used.contains_key("ssekeeper_operator_sseservice_condition"));
    }
}
