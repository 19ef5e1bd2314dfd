//! The chart's Grafana dashboard and alert rules against a real operator's `/metrics`: every
//! `ssekeeper_operator_*` name they use must be exported (the sidecar's are checked by
//! `tests/dataplane_metrics.rs`), so a renamed metric fails here instead of leaving a panel empty
//! and an alert silent in production.

use std::time::Duration;

use ssekeeper_tests::promql::{self, Component};

use crate::support::*;

#[tokio::test]
async fn operator_metrics_name_every_series_the_dashboard_and_alerts_use() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "metric-names").await;
    let op = Operator::start(&ns.name, "op-metrics", &[]);
    // A labelled family is exported only once it has a series: an SseService whose Redis Secret
    // is missing gives the conditions (Degraded) and a reconcile error of its kind.
    let text = manifest("examples/chat.yaml", &ns.name);
    let only_svc = text.split("---").nth(1).expect("chat.yaml's SseService");
    let out = apply_text(only_svc);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = eventually(
        "the operator exports a condition and a reconcile error",
        paced(Duration::from_secs(60)),
        || async {
            let text = op.metrics().await?;
            (text.contains("ssekeeper_operator_sseservice_condition{")
                && text.contains("ssekeeper_operator_reconcile_errors_total{"))
            .then_some(text)
        },
    )
    .await;
    let used = promql::chart_metric_names();
    let checked = used
        .keys()
        .filter(|n| Component::of(n) == Some(Component::Operator))
        .count();
    assert!(checked >= 4, "the chart uses operator metrics: {used:?}");
    let missing = promql::missing(&used, &promql::exposed_names(&text), Component::Operator);
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts use operator metrics that /metrics does not export:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
}

/// The monitoring templates against a real API server without the Prometheus Operator: `auto`
/// renders none of its kinds there (so the chart installs), `true` renders them and the API
/// server has no such kind, and the dashboard's ConfigMap is one the API server accepts.
#[tokio::test]
async fn chart_monitoring_objects_follow_the_clusters_apis() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "monitoring-chart").await;
    let chart = repo().join("charts/ssekeeper");
    let chart = chart.to_str().unwrap();
    let helm = |args: &[&str]| {
        std::process::Command::new(cluster_bin("helm"))
            .args(["template", "sk", chart, "--namespace", &ns.name])
            .args(["--set", "crds.enabled=false"])
            .args(args)
            .envs(cluster_env())
            .output()
            .expect("run helm")
    };
    // --validate asks the cluster for its APIs (and checks the objects against them).
    let auto = helm(&["--validate"]);
    let rendered = String::from_utf8_lossy(&auto.stdout);
    assert!(
        auto.status.success(),
        "{}",
        String::from_utf8_lossy(&auto.stderr)
    );
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            !rendered.contains(&format!("kind: {kind}\n")),
            "auto renders no {kind} where monitoring.coreos.com/v1 is not served"
        );
    }
    let forced = helm(&["--validate", "--set", "monitoring.podMonitor.enabled=true"]);
    assert!(
        !forced.status.success() && String::from_utf8_lossy(&forced.stderr).contains("PodMonitor"),
        "enabled=true renders the PodMonitor even where its API is missing: {}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let dashboard = helm(&[
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
        "--show-only",
        "templates/grafana-dashboard.yaml",
    ]);
    assert!(
        dashboard.status.success(),
        "{}",
        String::from_utf8_lossy(&dashboard.stderr)
    );
    let out = kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
        &String::from_utf8_lossy(&dashboard.stdout),
    );
    assert!(
        out.status.success(),
        "the API server accepts the dashboard ConfigMap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
