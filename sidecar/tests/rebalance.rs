//! Rebalancing against a real Redis shared by two sidecars: only resumable streams are shed
//! (never session or request streams), a shed client resumes on the other pod without a gap,
//! the counts are in Redis in the format the operator reads, and nothing is shed while the
//! store is down.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestSidecar, args, start_sidecar};
use ssekeeper_sidecar::contract::StoreKind;
use ssekeeper_sidecar::contract::rebalance::{PodState, PodStreams, stream_counts_key};
use ssekeeper_sidecar::metrics::{HandoverReason, ShedReason, SkipReason};
use ssekeeper_sidecar::store;
use ssekeeper_testkit::app::{Feeds, TestApp, assert_contiguous};
use ssekeeper_testkit::client::{Log, Stream};
use ssekeeper_testkit::eventually_true;
use ssekeeper_testkit::redis::RedisServer;

const T: Duration = Duration::from_secs(20);
const FEED: &str = "/events?feed=rb&interval_ms=100";

async fn pod(app: &TestApp, name: &str, redis: &RedisServer) -> TestSidecar {
    let mut a = args(app.addr, name);
    a.store = StoreKind::Redis;
    a.redis_url = Some(redis.url());
    a.rebalance = true;
    a.rebalance_interval_seconds = 1;
    a.rebalance_tolerance_percent = 20;
    a.rebalance_max_shed_per_second = 10;
    // The request streams of an infinite feed run in place up to this after SIGTERM.
    a.request_seconds = 4;
    let store = store::open(&a).await.expect("redis store opens");
    start_sidecar(a, store).await
}

fn shed(p: &TestSidecar) -> u64 {
    p.shared.metrics.rebalance.shed_count(ShedReason::OverShare)
}

fn skipped(p: &TestSidecar, r: SkipReason) -> u64 {
    p.shared.metrics.rebalance.skipped_count(r)
}

/// Open a stream and read its first event.
async fn open(addr: std::net::SocketAddr, path: &str, log: &mut Log) -> Stream {
    let mut s = Stream::open(addr, path, None).await;
    assert!(!s.read_until(log, 1, T).await, "{path}: a first event");
    s
}

/// The rebalancing hash as the operator would read it: pod → entry.
fn spread_in_redis(redis: &RedisServer) -> Vec<(String, PodStreams)> {
    let out = redis.cli(&["HGETALL", &stream_counts_key("test", "svc")]);
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .chunks(2)
        .filter_map(|kv| Some((kv[0].to_string(), PodStreams::parse(kv.get(1)?)?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_resumable_streams_are_shed_and_a_shed_client_resumes_elsewhere() {
    let redis = RedisServer::start().await;
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let a = pod(&app_a, "pod-a", &redis).await;
    let b = pod(&app_b, "pod-b", &redis).await;

    // On A: 12 session streams (keyed), 4 request streams (POST), 10 resumable streams.
    let mut sessions = Vec::new();
    for i in 0..12 {
        let mut log = Log::default();
        let s = open(a.sse, &format!("{FEED}&sessionId=k{i}"), &mut log).await;
        sessions.push((s, log));
    }
    let mut requests = Vec::new();
    for _ in 0..4 {
        let mut log = Log::default();
        let mut s = Stream::post(a.sse, FEED, "{}").await;
        assert!(!s.read_until(&mut log, 1, T).await);
        requests.push((s, log));
    }
    let mut resumables = Vec::new();
    for _ in 0..10 {
        let mut log = Log::default();
        let s = open(a.sse, FEED, &mut log).await;
        resumables.push((s, log));
    }
    // Shedding may already have begun while they opened (A was over its share from the start).

    // 26 against 0: mean 13, line 15.6, keep 15. Only the 10 resumable streams may go.
    eventually_true("shed(&a) == 10", T, || shed(&a) == 10).await;
    for (s, log) in &mut resumables {
        s.read_to_end(log, T).await;
        assert_eq!(log.retries.last(), Some(&100), "closed with the retry hint");
    }
    eventually_true("skipped(&a, SkipReason::NothingSheddable) > 0", T, || {
        skipped(&a, SkipReason::NothingSheddable) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(shed(&a), 10, "nothing more is shed");
    for (s, log) in sessions.iter_mut().chain(requests.iter_mut()) {
        let had = log.events.len();
        assert!(!s.read_until(log, had + 3, T).await, "still streaming");
    }
    assert_eq!(shed(&b), 0, "the pod under its share sheds nothing");

    // The counts are in Redis, in the format the operator reads.
    let spread = spread_in_redis(&redis);
    let entry = |name: &str| {
        spread
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("{name} in {spread:?}"))
    };
    assert_eq!(entry("pod-a").total, 16);
    assert_eq!(entry("pod-a").resumable, 0);
    assert_eq!(entry("pod-a").state, PodState::Serving);
    assert_eq!(entry("pod-b").total, 0);
    let text = a.shared.metrics.encode();
    for want in [
        "ssekeeper_rebalance_pod_streams{pod=\"pod-a\"} 16",
        "ssekeeper_rebalance_pod_streams{pod=\"pod-b\"} 0",
        "ssekeeper_rebalance_shed_total{reason=\"over_share\"} 10",
        "ssekeeper_rebalance_imbalance_ratio 2.0",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }

    // A shed client resumes on B with its cursor: nothing missing, nothing twice; A hands the
    // session over (reason rebalance) and B takes it over.
    let (_, mut log) = resumables.remove(0);
    let mut s = Stream::open(b.sse, FEED, log.last_id.as_deref()).await;
    let had = log.events.len();
    s.read_until(&mut log, had + 40, T).await;
    assert_contiguous(&log.data());
    eventually_true(
        "a.count('handovers', HandoverReason::Rebalance.label()) == 10",
        T,
        || a.count("handovers", HandoverReason::Rebalance.label()) == 10,
    )
    .await;
    eventually_true("b.count('takeovers', 'ok') == 1", T, || {
        b.count("takeovers", "ok") == 1
    })
    .await;
    let had = log.events.len();
    s.read_until(&mut log, had + 20, T).await;
    let first = assert_contiguous(&log.data());
    println!(
        "rebalance: A shed {} of 26 (10 resumable, 16 session/request kept), skipped {} rounds \
         with nothing sheddable; a shed client resumed on B: {} events from {first} contiguous",
        shed(&a),
        skipped(&a, SkipReason::NothingSheddable),
        log.events.len()
    );
    drop(s);

    // A drains: it stops shedding, says so, and takes its entry out when it exits.
    drop((sessions, requests, resumables));
    let shed_before = shed(&a);
    a.terminate();
    a.wait_finished(T).await;
    assert_eq!(shed(&a), shed_before, "nothing shed while draining");
    let left = spread_in_redis(&redis);
    assert!(
        left.iter().all(|(n, _)| n != "pod-a"),
        "a pod that exited withdrew its entry: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_shed_while_the_store_is_down() {
    let mut redis = RedisServer::start().await;
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let a = pod(&app_a, "pod-a", &redis).await;
    let b = pod(&app_b, "pod-b", &redis).await;
    // Both pods have published once.
    eventually_true("spread_in_redis(&redis).len() == 2", T, || {
        spread_in_redis(&redis).len() == 2
    })
    .await;
    redis.stop().await;

    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut log = Log::default();
        let s = open(a.sse, FEED, &mut log).await;
        streams.push((s, log));
    }
    eventually_true("skipped(&a, SkipReason::StoreDown) >= 3", T, || {
        skipped(&a, SkipReason::StoreDown) >= 3
    })
    .await;
    assert_eq!(shed(&a), 0, "no handoff possible: nothing shed");
    for (s, log) in &mut streams {
        let had = log.events.len();
        assert!(!s.read_until(log, had + 2, T).await, "still streaming");
    }

    // The store is back (empty): both pods publish again and A sheds down to its share.
    redis.restart().await;
    eventually_true("shed(&a) > 0", Duration::from_secs(30), || shed(&a) > 0).await;
    println!(
        "store down: A skipped {} rounds (store_down), shed 0; store back: shed {}",
        skipped(&a, SkipReason::StoreDown),
        shed(&a)
    );
    assert_eq!(shed(&b), 0);
}
