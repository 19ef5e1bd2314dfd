//! A handoff loses nothing at any rate: clients following a shared sequence at 5,000 and 20,000
//! events/s from an app that ignores `Last-Event-ID` (`/clock`), through a rolling restart of
//! every pod behind a real HAProxy, with real Redis and release sidecars. Each client resumes the
//! way a browser's EventSource does; what it received must be its sequence without a gap or a
//! duplicate. The history's time floor (`historySeconds`) is what makes this hold: a count of
//! 1,000 entries is 0.2 s at 5,000 events/s, while a moved client reconnects a second behind.
//!
//! Run in release (`make test-load`): a debug build of the clients and sidecars would measure
//! itself, not the handoff.

use std::time::{Duration, Instant};

use ssekeeper_testkit::client::EventSourceConfig;
use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::scenario::{ChatCrowd, ClientVerdict, chat_event, metric_sum, serial};

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

/// What one run saw, summed over its clients.
struct RateRun {
    clients: Vec<ClientVerdict>,
    /// The new pods' counters after the roll.
    metrics: Vec<(String, f64)>,
}

impl RateRun {
    fn missing(&self) -> u64 {
        self.clients.iter().map(|c| c.seq.missing_count()).sum()
    }

    fn duplicates(&self) -> u64 {
        self.clients.iter().map(|c| c.seq.duplicates).sum()
    }

    fn events(&self) -> usize {
        self.clients.iter().map(|c| c.seq.received).sum()
    }
}

const COUNTERS: [&str; 5] = [
    "ssekeeper_takeovers_total",
    "ssekeeper_takeover_overlap_total",
    "ssekeeper_replay_gaps_total",
    "ssekeeper_history_floor_cuts_total",
    "ssekeeper_events_unrecorded_total",
];

async fn roll_at(
    rate: u64,
    clients: usize,
    tweak: fn(&mut ssekeeper_sidecar::contract::SidecarArgs),
) -> RateRun {
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new(&format!("rate{rate}"), Mode::Sidecar, Balance::Source, 3);
    cfg.drain_seconds = 5;
    // A browser's reconnect: the client is about a second behind when it resumes.
    cfg.reconnect_delay_millis = 1000;
    cfg.sidecar_tweak = tweak;
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let path = format!("/clock?rate={rate}");
    let crowd = ChatCrowd::spawn(cluster.frontend(), clients, |_, c| EventSourceConfig {
        path: path.clone(),
        idle_timeout: Some(Duration::from_secs(10)),
        time_limit: Duration::from_secs(180),
        ..c
    });
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(30)).await,
        "every client receives before the roll"
    );
    let roll_started = Instant::now();
    let reports = cluster.rolling_restart().await.expect("rolling restart");
    let roll_took = roll_started.elapsed();
    for r in &reports {
        println!("terminated {r}");
        assert!(
            r.clean(),
            "pod exits cleanly before its grace deadline: {r}"
        );
    }
    // Every client back on a live pod and following for a while after the last handover.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut metrics = Vec::new();
    for name in COUNTERS {
        let mut sum = 0.0;
        for pod in cluster.pod_names() {
            if let Some(text) = cluster.metrics(&pod).await {
                sum += metric_sum(&text, name, None);
            }
        }
        metrics.push((name.to_string(), sum));
    }
    let verdicts = crowd.finish_each().await;
    let run = RateRun {
        clients: verdicts,
        metrics,
    };
    println!(
        "{clients} clients at {rate} events/s through a rolling restart of 3 pods (roll {:.1} s, \
         total {:.1} s): {} events, missing {}, duplicates {}, reconnects {}; new pods' counters {:?}",
        roll_took.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        run.events(),
        run.missing(),
        run.duplicates(),
        run.clients
            .iter()
            .map(|c| c.report.reconnects())
            .sum::<usize>(),
        run.metrics
    );
    for (i, c) in run.clients.iter().enumerate() {
        println!(
            "  client {i}: {}; {} connections, pods {:?}",
            c.seq,
            c.report.attempts.len(),
            c.pods
        );
    }
    run
}

fn assert_whole(run: &RateRun) {
    for (i, c) in run.clients.iter().enumerate() {
        assert!(
            c.seq.received > 0 && c.seq.is_perfect(),
            "client {i}: {} (attempts {})",
            c.seq,
            c.attempts()
        );
        assert!(
            c.report.reconnects() >= 1 && c.pods.len() >= 2,
            "client {i} was moved by the roll"
        );
        let last = c.report.events.iter().rev().find_map(chat_event);
        assert!(last.is_some(), "client {i} kept receiving");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_at_5000_events_per_second_loses_nothing() {
    let _turn = serial().await;
    let run = bounded(
        Duration::from_secs(240),
        "5,000 events/s roll",
        roll_at(5000, 5, |_| {}),
    )
    .await;
    assert_whole(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_at_20000_events_per_second_loses_nothing() {
    let _turn = serial().await;
    // 20,000 events/s for the default floor (drain 5 s + 10 s margin + reconnect 1 s + 5 s = 21 s)
    // is 420,000 entries: above the default cap, so the cap is raised as the README says to.
    let run = bounded(
        Duration::from_secs(240),
        "20,000 events/s roll",
        roll_at(20_000, 3, |a| a.history_max_entries = 600_000),
    )
    .await;
    assert_whole(&run);
}
