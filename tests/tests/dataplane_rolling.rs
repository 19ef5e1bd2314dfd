//! The promise under a rolling restart, through a real HAProxy, real Redis and real sidecars:
//! every chat client gets the whole sequence (no gap, no duplicate, in order), and a finite
//! answer whose pod is terminated mid-answer still completes on the client.

use std::time::{Duration, Instant};

use ssekeeper_testkit::client::{EventSource, EventSourceConfig, EventSourceReport, Outcome};
use ssekeeper_tests::demo::payload::AnswerToken;
use ssekeeper_tests::harness::ports::client_ip;
use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::scenario::{ChatCrowd, pod_runs, serial};
use ssekeeper_tests::verify::check_sequence;

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

const CLIENTS: usize = 200;
const RATE: f64 = 10.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_delivers_the_whole_sequence_to_every_client() {
    let _turn = serial().await;
    bounded(
        Duration::from_secs(240),
        "rolling restart",
        rolling_restart(),
    )
    .await;
}

async fn rolling_restart() {
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new("roll", Mode::Sidecar, Balance::Source, 3);
    cfg.publish_rate = Some(RATE);
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let crowd = ChatCrowd::spawn(cluster.frontend(), CLIENTS, |_, c| c);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(30)).await,
        "every client receives before the roll"
    );
    let roll_started = Instant::now();
    let reports = cluster.rolling_restart().await.expect("rolling restart");
    let roll_took = roll_started.elapsed();
    for r in &reports {
        println!("terminated {r}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = cluster.stop_publisher().await.expect("publisher stops");
    let caught_up = crowd.wait_caught_up(last, Duration::from_secs(30)).await;
    let summary = crowd.finish(last).await;
    println!(
        "rolling restart of 3 pods under {CLIENTS} clients at {RATE}/s: roll {:.1}s, last seq \
         {last}; {summary}; total {:.1}s",
        roll_took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        caught_up,
        "clients catch up to {last}: {}",
        summary.worst(3)
    );
    assert_eq!(summary.perfect(), CLIENTS, "{}", summary.worst(5));
    assert!(
        summary.http_errors().is_empty(),
        "HTTP errors: {:?}",
        summary.http_errors()
    );
    assert!(
        summary.clients.iter().all(|c| !c.report.retries.is_empty()),
        "every drained client got the retry hint"
    );
    for r in &reports {
        assert!(
            r.clean(),
            "pod exits cleanly before its grace deadline: {r}"
        );
    }
}

async fn answer_through_termination(
    label: &str,
    n: u32,
    interval_ms: u64,
    kill_after: Duration,
    drain_seconds: u32,
    apps: usize,
) {
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new(label, Mode::Sidecar, Balance::Source, 2);
    cfg.drain_seconds = drain_seconds;
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let mut c = EventSourceConfig::new(
        cluster.frontend(),
        format!("/answer?n={n}&interval_ms={interval_ms}"),
    );
    c.source_ip = Some(client_ip(7));
    c.stop_on_event = Some("done".into());
    c.idle_timeout = Some(Duration::from_secs(15));
    c.time_limit = Duration::from_secs(90);
    let client = EventSource::spawn(c);
    tokio::time::sleep(kill_after).await;
    let serving = client
        .with_events(|evs| {
            evs.iter()
                .rev()
                .find_map(|e| serde_json::from_str::<AnswerToken>(&e.data).ok())
        })
        .expect("tokens arrive before the termination")
        .pod;
    let terminated = cluster.terminate(&serving).await.expect("pod exists");
    println!("terminated {terminated}");
    let report = tokio::time::timeout(Duration::from_secs(60), client.join())
        .await
        .expect("client finishes");
    print_answer(label, &report, n, t0);
    check_answer(&report, n, apps);
    assert!(terminated.clean(), "clean termination: {terminated}");
}

fn print_answer(label: &str, r: &EventSourceReport, n: u32, t0: Instant) {
    println!(
        "{label}: {n} tokens; received {} events over {} connections ({}), outcome {:?}, {:.1}s",
        r.events.len(),
        r.attempts.len(),
        pod_runs(&r.events),
        r.outcome,
        t0.elapsed().as_secs_f64()
    );
}

/// `apps`: how many apps produced the tokens - one when the old owner's recording carried the
/// answer to its end, two when the new owner continued it from its own app.
fn check_answer(r: &EventSourceReport, n: u32, apps: usize) {
    let producers: std::collections::BTreeSet<String> = r
        .events
        .iter()
        .filter_map(|e| serde_json::from_str::<AnswerToken>(&e.data).ok())
        .map(|t| t.pod)
        .collect();
    assert_eq!(
        producers.len(),
        apps,
        "apps that produced the answer: {producers:?}"
    );
    assert_eq!(
        r.outcome,
        Outcome::Finished,
        "the answer ends with done: {:?}",
        r.attempts
    );
    let tokens: Vec<u64> = r
        .events
        .iter()
        .filter_map(|e| serde_json::from_str::<AnswerToken>(&e.data).ok())
        .map(|t| u64::from(t.token))
        .collect();
    let v = check_sequence(&tokens, Some(1), u64::from(n));
    assert!(v.is_perfect(), "every token once, in order: {v}");
    assert!(r.reconnects() >= 1, "the termination moved the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_that_ends_during_the_drain_completes_on_the_client() {
    let _turn = serial().await;
    // The owner is terminated after 1 s: preStop holds 1 s, so SIGTERM comes at ~2 s; the drain
    // closes the client's stream at a random moment in the first 90% of its 10 s (by ~11 s) and
    // records the handover at ~12 s. The answer ends at ~11.5 s, in between: the client is on
    // the new pod by then, which tails the old owner's recording and delivers its end marker.
    bounded(
        Duration::from_secs(120),
        "short answer",
        answer_through_termination("answer-end", 115, 100, Duration::from_secs(1), 10, 1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_that_outlives_its_pod_is_continued_by_the_new_owner() {
    let _turn = serial().await;
    // 20 s of answer, owner terminated after 1 s with a 2 s drain: the answer outlives the old
    // owner's handover, so the new owner reopens the app's stream with the app's last id and
    // continues it.
    bounded(
        Duration::from_secs(120),
        "long answer",
        answer_through_termination("answer-handover", 200, 100, Duration::from_secs(1), 2, 2),
    )
    .await;
}
