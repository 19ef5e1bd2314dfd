//! Rebalancing through a real HAProxy (round robin, no affinity), real Redis and real sidecar
//! processes: 300 chat clients open on one pod, two more pods start, and the busiest pod comes
//! within 1.2 × the mean in bounded time, with every client's sequence whole (0 lost, 0
//! duplicated) and the reconnects paced by `--rebalance-max-shed-per-second`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::scenario::{ChatCrowd, metric_sum, serial};

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

const CLIENTS: usize = 300;
const RATE: f64 = 5.0;
const MAX_SHED: u32 = 10;
const BALANCE_WITHIN: Duration = Duration::from_secs(90);

fn rebalance_on(a: &mut ssekeeper_sidecar::contract::SidecarArgs) {
    a.rebalance = true;
    a.rebalance_tolerance_percent = 20;
    a.rebalance_max_shed_per_second = MAX_SHED;
    a.rebalance_interval_seconds = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_is_rebalanced_without_loss_and_without_a_reconnect_storm() {
    let _turn = serial().await;
    bounded(Duration::from_secs(300), "rebalance", scale_up()).await;
}

/// Each pod's open streams, from its own metrics.
async fn counts(cluster: &Cluster) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in cluster.pod_names() {
        let text = cluster.metrics(&name).await.unwrap_or_default();
        out.insert(name, metric_sum(&text, "ssekeeper_active_streams", None));
    }
    out
}

fn ratio(c: &BTreeMap<String, f64>) -> f64 {
    let mean = c.values().sum::<f64>() / c.len().max(1) as f64;
    let max = c.values().copied().fold(0.0, f64::max);
    if mean > 0.0 { max / mean } else { 1.0 }
}

async fn shed_total(cluster: &Cluster, name: &str) -> f64 {
    let text = cluster.metrics(name).await.unwrap_or_default();
    metric_sum(&text, "ssekeeper_rebalance_shed_total", None)
}

async fn scale_up() {
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new("rebalance", Mode::Sidecar, Balance::RoundRobin, 1);
    cfg.publish_rate = Some(RATE);
    cfg.sidecar_tweak = rebalance_on;
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let crowd = ChatCrowd::spawn(cluster.frontend(), CLIENTS, |_, c| c);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(60)).await,
        "every client receives before the scale-up: {}",
        crowd.progress()
    );
    let first = cluster.pod_names()[0].clone();
    let before = counts(&cluster).await;
    println!("before the scale-up: {before:?}");
    assert_eq!(before[&first] as usize, CLIENTS, "all on one pod");

    let scaled = Instant::now();
    cluster.add_pod().await.expect("second pod");
    cluster.add_pod().await.expect("third pod");
    let mut timeline = Vec::new();
    let balanced_after = loop {
        let c = counts(&cluster).await;
        let r = ratio(&c);
        timeline.push((scaled.elapsed().as_secs(), c.clone()));
        if r <= 1.2 && c.len() == 3 {
            break scaled.elapsed();
        }
        assert!(
            scaled.elapsed() < BALANCE_WITHIN,
            "busiest pod within 1.2 × the mean in {BALANCE_WITHIN:?}: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Shedding stops on its own (hysteresis): wait until no pod sheds for 6 s, then look at
    // the spread once more.
    let mut last = f64::NAN;
    let settle = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let mut total = 0.0;
        for name in cluster.pod_names() {
            total += shed_total(&cluster, &name).await;
        }
        if total != last {
            last = total;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(6) {
            break;
        }
        assert!(settle.elapsed() < Duration::from_secs(60), "shedding stops");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = counts(&cluster).await;
    let settled_ratio = ratio(&after);
    let mut sheds = BTreeMap::new();
    for name in cluster.pod_names() {
        sheds.insert(name.clone(), shed_total(&cluster, &name).await);
    }

    let last_seq = cluster.stop_publisher().await.expect("publisher stops");
    let caught_up = crowd
        .wait_caught_up(last_seq, Duration::from_secs(30))
        .await;
    let summary = crowd.finish(last_seq).await;

    let per_second = summary.reconnects_per_second(scaled);
    let max_per_second = per_second.values().copied().max().unwrap_or(0);
    let shed_sum: f64 = sheds.values().sum();
    let shedding_secs = per_second
        .keys()
        .next_back()
        .zip(per_second.keys().next())
        .map(|(l, f)| l - f + 1)
        .unwrap_or(1);
    println!(
        "rebalance 1 → 3 pods under {CLIENTS} clients at {RATE}/s: ratio ≤ 1.2 after {:.1}s, \
         settled {after:?} (ratio {settled_ratio:.2}); shed {sheds:?} = {shed_sum} over ~{shedding_secs}s \
         ({:.1}/s), reconnects {} with at most {max_per_second} in one second (max {MAX_SHED}/s); \
         last seq {last_seq}; {summary}; total {:.1}s",
        balanced_after.as_secs_f64(),
        shed_sum / shedding_secs as f64,
        summary.reconnects(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        settled_ratio <= 1.2,
        "still balanced once settled: {after:?}"
    );
    assert!(
        caught_up,
        "clients catch up to {last_seq}: {}",
        summary.worst(3)
    );
    assert_eq!(summary.perfect(), CLIENTS, "{}", summary.worst(5));
    assert_eq!((summary.missing(), summary.duplicates()), (0, 0));
    assert!(
        summary.http_errors().is_empty(),
        "{:?}",
        summary.http_errors()
    );
    // Only the pod over its share shed; the others never shed back (no ping-pong).
    for (name, n) in &sheds {
        if *name != first {
            assert_eq!(*n, 0.0, "{name} shed {n}");
        }
    }
    // Paced: never more than the maximum in a second (one more allowed for a reconnect that
    // lands in the next second by its own latency), and every reconnect is a shed one.
    assert!(
        max_per_second <= MAX_SHED + 1,
        "reconnects per second: {per_second:?}"
    );
    assert!(
        summary.reconnects() as f64 <= shed_sum + 5.0,
        "no reconnect but the shed ones: {} reconnects, {shed_sum} shed",
        summary.reconnects()
    );
}
