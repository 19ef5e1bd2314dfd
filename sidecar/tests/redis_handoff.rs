//! The handoff against a real Redis shared by two sidecars: resume on the other pod, handover on
//! drain, takeover after a crash, routing, and a Redis restart that loses every key.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestSidecar, args, start_sidecar};
use ssekeeper_sidecar::contract::StoreKind;
use ssekeeper_sidecar::store;
use ssekeeper_sidecar::store::SessionStore as _;
use ssekeeper_testkit::app::{Feeds, TestApp, assert_contiguous};
use ssekeeper_testkit::client::{Log, Stream, fetch};
use ssekeeper_testkit::eventually_true;
use ssekeeper_testkit::redis::RedisServer;
use ssekeeper_testkit::sse::Frame;

const T: Duration = Duration::from_secs(20);

async fn redis_pod(
    app: &TestApp,
    name: &str,
    redis: &RedisServer,
    drain_seconds: u32,
) -> TestSidecar {
    let mut a = args(app.addr, name);
    a.store = StoreKind::Redis;
    a.redis_url = Some(redis.url());
    a.drain_seconds = drain_seconds;
    let store = store::open(&a).await.expect("redis store opens");
    start_sidecar(a, store).await
}

#[tokio::test]
async fn two_pods_on_redis_resume_and_hand_over_without_gap_or_duplicate() {
    let redis = RedisServer::start().await;
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let a = redis_pod(&app_a, "pod-a", &redis, 1).await;
    let b = redis_pod(&app_b, "pod-b", &redis, 1).await;

    let path = "/events?feed=r&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 20, T).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Resume on B while A still owns and records: B replays and tails Redis.
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    s.read_until(&mut log, 60, T).await;
    assert_eq!(b.count("resumes", "store"), 1);
    assert_eq!(b.count("takeovers", "ok"), 0);

    // A drains: at the end of its window it records the handover and B takes over.
    let t = Instant::now();
    a.terminate();
    s.read_until(&mut log, 60 + 250, T).await;
    let drained = a.wait_finished(T).await + t.elapsed();
    let first = assert_contiguous(&log.data());
    println!(
        "redis handoff: {} events from event {first}, no gap, no duplicate; A drained in {drained:?}; \
         entries recorded by A {} and by B {}",
        log.events.len(),
        a.shared.metrics.events_recorded.get(),
        b.shared.metrics.events_recorded.get(),
    );
    assert_eq!(b.count("takeovers", "ok"), 1);
    assert_eq!(a.count("handovers", "drain"), 1);
    // Redis holds B's lease now (routing follows the session).
    let session = ssekeeper_sidecar::cursor::Cursor::parse(log.last_id.as_deref().unwrap())
        .unwrap()
        .session;
    let lease = b
        .shared
        .store
        .lease(&session)
        .await
        .unwrap()
        .expect("a lease");
    assert_eq!(lease.owner, "pod-b");
    assert_eq!(lease.epoch, 2);
}

#[tokio::test]
async fn a_crashed_pod_on_redis_is_taken_over() {
    let redis = RedisServer::start().await;
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let mut a = redis_pod(&app_a, "pod-a", &redis, 1).await;
    let b = redis_pod(&app_b, "pod-b", &redis, 1).await;

    let path = "/events?feed=k&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 20, T).await;
    let t = Instant::now();
    a.kill();
    s.read_until(&mut log, usize::MAX, T).await;
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    let n = log.events.len();
    s.read_until(&mut log, n + 50, T).await;
    let mut nums: Vec<u64> = log.data().iter().map(|d| d[6..].parse().unwrap()).collect();
    let total = nums.len();
    nums.dedup();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap: {nums:?}"
    );
    println!(
        "redis crash takeover after {:?}: {} duplicate(s)",
        t.elapsed(),
        total - nums.len()
    );
    assert_eq!(b.count("takeovers", "ok"), 1);
}

#[tokio::test]
async fn routing_through_redis_leases() {
    let redis = RedisServer::start().await;
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let a = redis_pod(&app_a, "pod-a", &redis, 1).await;
    let b = redis_pod(&app_b, "pod-b", &redis, 1).await;

    let mut s = Stream::open(a.sse, "/sse", None).await;
    let session = loop {
        if let Frame::Event(e) = s.next(T).await.expect("endpoint event") {
            break e.data.split("sessionId=").nth(1).unwrap().to_string();
        }
    };
    for _ in 0..10 {
        let (status, headers, _) = fetch(
            b.sse,
            "POST",
            &format!("/messages?sessionId={session}"),
            &[],
            Some("{}"),
        )
        .await;
        assert_eq!(status, 202);
        assert_eq!(headers["x-app-name"], "app-a");
    }
    let (status, _, _) = fetch(
        b.sse,
        "POST",
        "/messages?sessionId=never-seen",
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_redis_restart_that_loses_every_key_does_not_stop_the_stream() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = redis_pod(&app, "pod-a", &redis, 1).await;

    let path = "/events?feed=x&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(sc.sse, path, None).await;
    s.read_until(&mut log, 20, T).await;
    redis.stop().await;
    s.read_until(&mut log, 60, T).await;
    eventually_true("store reported down", T, || {
        sc.shared.metrics.store_up.get() == 0
    })
    .await;
    redis.restart().await;
    eventually_true("store reported up", T, || {
        sc.shared.metrics.store_up.get() == 1
    })
    .await;
    eventually_true("session re-acquired", T, || {
        sc.count("errors", "store_state_lost") >= 1
    })
    .await;
    s.read_until(&mut log, 150, T).await;
    assert_contiguous(&log.data());
    // What is recorded after the restart resumes without a gap, from the store (new connection
    // to the same pod, beyond the in-memory resume buffer).
    let at = log.events[110].id.clone().unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut r = Stream::open(sc.sse, path, Some(&at)).await;
    let mut tail = Log::default();
    r.read_until(&mut tail, 30, T).await;
    assert_eq!(tail.data()[0], log.data()[111]);
    assert_contiguous(&tail.data());
}
