//! What the promise says about failures that are not graceful: a pod SIGKILLed under load loses
//! at most the recording batch window's worth of events (measured and printed), and a store
//! outage neither stops the streams nor leaves replay broken once the store is back.

use std::time::{Duration, Instant};

use ssekeeper_testkit::Patience;
use ssekeeper_tests::harness::ports::client_ip;
use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::scenario::{ChatCrowd, metric_sum, serial};

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

/// The sidecar's default recording batch window (`--batch-window-millis`).
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Lease lifetime for the crash test: how long the dead pod's sessions wait for a new owner.
const LEASE_TTL_SECONDS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_at_most_the_batch_window() {
    let _turn = serial().await;
    bounded(Duration::from_secs(180), "SIGKILL", sigkill()).await;
}

async fn sigkill() {
    const CLIENTS: usize = 60;
    const RATE: f64 = 100.0;
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new("sigkill", Mode::Sidecar, Balance::Source, 3);
    cfg.publish_rate = Some(RATE);
    cfg.sidecar_tweak = |a| a.lease_ttl_seconds = LEASE_TTL_SECONDS;
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let crowd = ChatCrowd::spawn(cluster.frontend(), CLIENTS, |_, c| c);
    assert!(crowd.wait_all_receiving(Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = cluster.pod_names()[1].clone();
    let killed_at = Instant::now();
    assert!(cluster.kill_pod(&victim).await);
    // The ReplicaSet replaces it.
    cluster.add_pod().await.expect("replacement pod");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let last = cluster.stop_publisher().await.expect("publisher stops");
    let caught_up = crowd.wait_caught_up(last, Duration::from_secs(30)).await;
    let summary = crowd.finish(last).await;
    let bound = ((RATE * BATCH_WINDOW.as_secs_f64()).ceil() as u64).max(1);
    let affected: Vec<_> = summary
        .clients
        .iter()
        .filter(|c| c.report.reconnects() > 0)
        .collect();
    let worst_loss = affected
        .iter()
        .map(|c| c.seq.missing_count())
        .max()
        .unwrap_or(0);
    let worst_stall = affected.iter().map(|c| c.max_gap).max().unwrap_or_default();
    println!(
        "SIGKILL of {victim} at {RATE}/s: {} of {CLIENTS} clients moved; loss: total {} events, \
         worst client {worst_loss} (bound {bound} = {RATE}/s x {BATCH_WINDOW:?}); duplicates {}; \
         worst stall {} ms (lease TTL {LEASE_TTL_SECONDS} s); {summary}; {:.1}s after the kill, \
         {:.1}s total",
        affected.len(),
        summary.missing(),
        summary.duplicates(),
        worst_stall.as_millis(),
        killed_at.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        caught_up,
        "every client resumes after the crash: {}",
        summary.worst(3)
    );
    assert!(!affected.is_empty(), "the killed pod had clients");
    for (i, c) in summary.clients.iter().enumerate() {
        assert!(
            c.seq.missing_count() <= bound,
            "client {i} lost more than the batch window: {}",
            c.seq
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_streams_and_replay_returns_after_restart() {
    let _turn = serial().await;
    bounded(Duration::from_secs(240), "store outage", store_outage()).await;
}

async fn store_states(cluster: &Cluster) -> Vec<f64> {
    let mut out = Vec::new();
    for name in cluster.pod_names() {
        let m = cluster.metrics(&name).await.unwrap_or_default();
        out.push(metric_sum(&m, "ssekeeper_store_up", None));
    }
    out
}

async fn wait_store_state(cluster: &Cluster, up: f64, timeout: Duration) -> bool {
    let patience = Patience::within(timeout).every(Duration::from_millis(200));
    ssekeeper_testkit::poll(patience, || async {
        store_states(cluster)
            .await
            .iter()
            .all(|s| *s == up)
            .then_some(())
    })
    .await
    .is_some()
}

async fn store_outage() {
    const CLIENTS: usize = 50;
    const RATE: f64 = 20.0;
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new("outage", Mode::Sidecar, Balance::Source, 3);
    cfg.publish_rate = Some(RATE);
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let before = ChatCrowd::spawn(cluster.frontend(), CLIENTS, |_, c| c);
    assert!(before.wait_all_receiving(Duration::from_secs(20)).await);

    // Outage: the streams go on (without recording), the pods stay ready and say so.
    cluster.store_redis().expect("sidecar mode").stop().await;
    let outage_started = Instant::now();
    let during = cluster.last_published().await.expect("app redis") + (RATE as u64) * 2;
    let streams_continue = before.wait_caught_up(during, Duration::from_secs(10)).await;
    let reported_down = wait_store_state(&cluster, 0.0, Duration::from_secs(10)).await;
    let mut ready = Vec::new();
    for name in cluster.pod_names() {
        let admin = cluster
            .pod(&name)
            .and_then(|p| p.admin_addr())
            .expect("admin");
        let r = ssekeeper_testkit::client::request(
            admin,
            None,
            http::Method::GET,
            "/ready",
            &[],
            bytes::Bytes::new(),
            Duration::from_secs(2),
            4096,
        )
        .await
        .expect("ready answers");
        ready.push((
            r.status.as_u16(),
            String::from_utf8_lossy(&r.body).trim().to_string(),
        ));
    }
    let outage_took = outage_started.elapsed();

    // Back (empty: no persistence), then new clients, then a roll that needs replay.
    cluster
        .store_redis()
        .expect("sidecar mode")
        .up()
        .await
        .expect("redis restarts");
    let reported_up = wait_store_state(&cluster, 1.0, Duration::from_secs(15)).await;
    let after = ChatCrowd::spawn(cluster.frontend(), CLIENTS, |i, mut c| {
        c.source_ip = Some(client_ip(CLIENTS + i));
        c
    });
    assert!(after.wait_all_receiving(Duration::from_secs(20)).await);
    let reports = cluster.rolling_restart().await.expect("rolling restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = cluster.stop_publisher().await.expect("publisher stops");
    let before_caught_up = before.wait_caught_up(last, Duration::from_secs(30)).await;
    let after_caught_up = after.wait_caught_up(last, Duration::from_secs(30)).await;
    let before = before.finish(last).await;
    let after = after.finish(last).await;
    println!(
        "store outage of {:.1}s: streams continued {streams_continue}, store_up 0 reported \
         {reported_down}, /ready during outage {ready:?}, store_up 1 after restart {reported_up}",
        outage_took.as_secs_f64()
    );
    for r in &reports {
        println!("terminated {r}");
    }
    println!("clients opened before the outage, after the roll: {before}");
    println!("clients opened after the restart, after the roll: {after}");
    println!("{:.1}s total", t0.elapsed().as_secs_f64());
    assert!(streams_continue, "streams continue during the outage");
    assert!(
        reported_down,
        "the pods report the store outage (store_up 0)"
    );
    assert!(
        ready.iter().all(|(s, _)| *s == 200),
        "pods stay ready without the store: {ready:?}"
    );
    assert!(reported_up, "the pods see the store again");
    assert!(
        before_caught_up,
        "old clients keep streaming: {}",
        before.worst(3)
    );
    assert!(
        after_caught_up,
        "new clients keep streaming: {}",
        after.worst(3)
    );
    assert_eq!(
        after.perfect(),
        CLIENTS,
        "replay works again after the restart: {}",
        after.worst(5)
    );
    // Sessions opened before the outage were lost with the store's memory; the sidecars
    // re-register them when the store is back, so they too are replayed at the roll.
    assert_eq!(
        before.perfect(),
        CLIENTS,
        "sessions from before the outage survive the roll: {}",
        before.worst(5)
    );
}
