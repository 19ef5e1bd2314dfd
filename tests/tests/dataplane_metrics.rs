//! The chart's Grafana dashboard and alert rules against real sidecars' `/metrics`: every
//! `ssekeeper_*` name they use (other than the operator's) must be exported, so a renamed metric
//! fails here instead of leaving a panel empty and an alert silent in production.
//!
//! A labelled family is exported only once it has a series, so the sidecars are put through what
//! makes each one: streams, a resume, a refused forward, an unusable session key and a rolling
//! restart (drain handovers on the old pods, takeovers on the new ones). The old pods are scraped
//! while they drain, since what they count leaves with them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ssekeeper_sidecar::contract;
use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::promql::{self, Component};
use ssekeeper_tests::scenario::ChatCrowd;
use tokio::sync::watch;

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

/// One request, its answer ignored: only what the sidecar counts matters here.
async fn send(addr: SocketAddr, method: http::Method, path: &str, headers: &[(&str, &str)]) {
    let _ = ssekeeper_testkit::client::request(
        addr,
        None,
        method,
        path,
        headers,
        Bytes::new(),
        Duration::from_secs(5),
        1 << 20,
    )
    .await;
}

/// The `/metrics` text at `admin`, if it answers.
async fn scrape(admin: SocketAddr) -> Option<String> {
    let r = ssekeeper_testkit::client::request(
        admin,
        None,
        http::Method::GET,
        contract::paths::METRICS,
        &[],
        Bytes::new(),
        Duration::from_secs(2),
        4 << 20,
    )
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_metrics_name_every_series_the_dashboard_and_alerts_use() {
    bounded(
        Duration::from_secs(120),
        "sidecar metric names",
        exercise_and_check(),
    )
    .await;
}

async fn exercise_and_check() {
    let mut cfg = ClusterConfig::new("metric-names", Mode::Sidecar, Balance::Source, 2);
    cfg.publish_rate = Some(20.0);
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let front = cluster.frontend();
    let crowd = ChatCrowd::spawn(front, 8, |_, c| c);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(15)).await,
        "every client receives"
    );
    // A session key no session can be made of (longer than 256 bytes): errors{kind}.
    send(
        front,
        http::Method::GET,
        &format!("/sse?sessionId={}", "k".repeat(300)),
        &[],
    )
    .await;
    // A Last-Event-ID that is not one of the sidecar's cursors: resumes{outcome="foreign"}.
    send(
        front,
        http::Method::GET,
        "/answer?n=1&interval_ms=1",
        &[("Last-Event-ID", "app-42")],
    )
    .await;

    let old: Vec<SocketAddr> = cluster
        .pod_names()
        .iter()
        .filter_map(|n| cluster.pod(n)?.admin_addr())
        .collect();
    // A forward without its signature, refused: forwards{outcome}.
    send(old[0], http::Method::POST, contract::paths::FORWARD, &[]).await;

    // Scrape the old pods until they are gone: their handovers are counted while they drain.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (stop_tx, mut stop) = watch::channel(false);
    let scraper = tokio::spawn({
        let seen = seen.clone();
        async move {
            while !*stop.borrow() {
                for admin in &old {
                    if let Some(text) = scrape(*admin).await {
                        seen.lock().unwrap().extend(promql::exposed_names(&text));
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
            }
        }
    });
    let reports = cluster.rolling_restart().await.expect("rolling restart");
    let _ = stop_tx.send(true);
    scraper.await.expect("the scraper never panics");
    for r in &reports {
        println!("terminated {r}");
    }
    for name in cluster.pod_names() {
        let text = cluster.metrics(&name).await.expect("a new pod's /metrics");
        seen.lock().unwrap().extend(promql::exposed_names(&text));
    }
    drop(crowd);

    let seen = seen.lock().unwrap().clone();
    let used = promql::chart_metric_names();
    let checked = used
        .keys()
        .filter(|n| Component::of(n) == Some(Component::Sidecar))
        .count();
    assert!(checked >= 10, "the chart uses sidecar metrics: {used:?}");
    let missing = promql::missing(&used, &seen, Component::Sidecar);
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts use sidecar metrics that no sidecar exported:\n{}\n\nexported: {seen:?}",
        missing.join("\n")
    );
    println!("{checked} sidecar metric names of the dashboard and alerts exported");
}
