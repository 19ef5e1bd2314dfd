//! The recording promise under load, against a real Redis (issue 8, bug 1): a stream faster than
//! the store is slowed to what the store takes (backpressure on the app's stream), so when the
//! client has every event, every event is in the store too — nothing queued without bound,
//! nothing dropped by the final flush.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FlakyStore, TestSidecar, args, start_sidecar};
use ssekeeper_sidecar::contract::StoreKind;
use ssekeeper_sidecar::cursor::Cursor;
use ssekeeper_sidecar::cursor::SessionId;
use ssekeeper_sidecar::store;
use ssekeeper_sidecar::store::{Entry, Recorded, SessionStore};
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Log, Stream};
use ssekeeper_testkit::eventually_true as eventually;
use ssekeeper_testkit::redis::RedisServer;

/// Events in the fast stream: far more than the recorder's lag bound (4 × the batch size), so
/// an unbounded queue or a lossy final flush would show.
const EVENTS: u64 = 60_000;
/// The most forwarded may run ahead of recorded: the recorder's lag bound (4 × 256) plus slack
/// for the client's queue (forwarded counts events as they are handed to the client's writer).
const LAG_BOUND: u64 = 4 * 256 + 512;

async fn redis_sidecar(app: &TestApp, redis: &RedisServer) -> TestSidecar {
    redis_sidecar_with_delay(app, redis, Duration::ZERO).await
}

/// A sidecar on `redis` whose every store call takes `delay` longer (a store across a slow
/// network), so a stream is sure to outrun it whatever the machine's speed.
async fn redis_sidecar_with_delay(
    app: &TestApp,
    redis: &RedisServer,
    delay: Duration,
) -> TestSidecar {
    let mut a = args(app.addr, "pod-a");
    a.store = StoreKind::Redis;
    a.redis_url = Some(redis.url());
    a.history_limit = (EVENTS as u32) * 2;
    let store = FlakyStore::new(store::open(&a).await.expect("redis store opens"));
    store.set_delay(delay);
    start_sidecar(a, store).await
}

#[tokio::test]
async fn a_stream_faster_than_the_store_is_recorded_whole() {
    let redis = RedisServer::start().await;
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    // 256 entries per 20 ms at most: about 13,000 a second, below any build's stream rate.
    let sc = redis_sidecar_with_delay(&app, &redis, Duration::from_millis(20)).await;
    let m = &sc.shared.metrics;

    // Watch the distance between forwarded and recorded while the stream runs.
    let shared = sc.shared.clone();
    let watch = tokio::spawn(async move {
        let m = &shared.metrics;
        let mut max_lag = 0u64;
        for _ in 0..60_000 {
            let (fw, rec) = (m.events_forwarded.get(), m.events_recorded.get());
            max_lag = max_lag.max(fw.saturating_sub(rec));
            if rec > EVENTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        max_lag
    });
    let mut s = Stream::open(sc.sse, &format!("/firehose?size=100&count={EVENTS}"), None).await;
    let mut log = Log::default();
    s.read_to_end(&mut log, Duration::from_secs(120)).await;
    assert_eq!(
        log.events.len() as u64,
        EVENTS,
        "the client got every event"
    );

    // The lag is bounded, so the store catches up within moments of the stream's end.
    eventually(
        "every forwarded event recorded (plus the End marker)",
        Duration::from_secs(20),
        || m.events_recorded.get() > EVENTS,
    )
    .await;
    assert_eq!(
        m.events_unrecorded.get(),
        0,
        "nothing dropped from the record"
    );
    let max_lag = watch.await.unwrap();
    // The bound: 4 batches of 256 waiting or in flight, plus what the client's queue and the
    // socket hold between the recorder and the count of forwarded events.
    assert!(
        max_lag <= LAG_BOUND,
        "forwarded ran {max_lag} events ahead of recorded (bound {LAG_BOUND})"
    );
    assert!(
        m.record_backpressure.get() > 0,
        "the stream outran the store and was paused, not queued"
    );

    let session = Cursor::parse(log.last_id.as_deref().expect("ids"))
        .expect("a cursor")
        .session;
    let stored = read_all(&*sc.shared.store, &session).await;
    let events = stored
        .iter()
        .filter(|r| matches!(r.entry, Entry::Event { .. }))
        .count() as u64;
    assert_eq!(events, EVENTS, "the store holds every event");
    assert!(
        stored.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "no hole in the record"
    );
    assert!(matches!(stored.last().map(|r| &r.entry), Some(Entry::End)));
    println!(
        "{EVENTS} events: forwarded ran at most {max_lag} ahead of recorded; recorded {}, unrecorded {}, upstream paused for the store {} times",
        m.events_recorded.get(),
        m.events_unrecorded.get(),
        m.record_backpressure.get()
    );
}

/// Streams × their rate: 50,000 events a second offered to one sidecar for a bounded time
/// (issue 8, bug 2: the Redis store used to stop sending commands under this load).
const STREAMS: u64 = 500;
const INTERVAL_MS: u64 = 10;
const PER_STREAM: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load: `make test-load` runs it in release, where the sidecar can take the rate"]
async fn fifty_thousand_events_a_second_are_all_in_the_store() {
    let redis = RedisServer::start().await;
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = redis_sidecar(&app, &redis).await;
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..STREAMS)
        .map(|i| {
            let addr = sc.sse;
            tokio::spawn(async move {
                let path =
                    format!("/events?feed=f{i}&interval_ms={INTERVAL_MS}&total={PER_STREAM}");
                let mut s = Stream::open(addr, &path, None).await;
                let mut log = Log::default();
                s.read_to_end(&mut log, Duration::from_secs(60)).await;
                log
            })
        })
        .collect();
    let mut logs = Vec::new();
    for c in clients {
        logs.push(c.await.expect("client"));
    }
    let elapsed = started.elapsed();
    let received: u64 = logs.iter().map(|l| l.events.len() as u64).sum();
    let m = &sc.shared.metrics;
    eventually(
        "every forwarded event recorded (plus one End per stream)",
        Duration::from_secs(20),
        || m.events_recorded.get() >= received + STREAMS,
    )
    .await;
    assert_eq!(
        m.events_unrecorded.get(),
        0,
        "nothing dropped from the record"
    );
    assert_eq!(
        m.count("errors", "store_unavailable"),
        0,
        "the store was never taken for down"
    );
    // Every client's events are in the store, once, in order.
    for log in &logs {
        let session = Cursor::parse(log.last_id.as_deref().expect("ids"))
            .expect("a cursor")
            .session;
        let stored = read_all(&*sc.shared.store, &session).await;
        let events: Vec<_> = stored
            .iter()
            .filter_map(|r| match &r.entry {
                Entry::Event { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(events, log.data(), "the store holds what the client got");
    }
    println!(
        "{STREAMS} streams × {} ev/s offered: {received} events in {elapsed:.1?} ({:.0} ev/s), all recorded; \
         store appends {}, upstream paused for the store {} times",
        1000 / INTERVAL_MS,
        received as f64 / elapsed.as_secs_f64(),
        m.store_calls("append", "ok"),
        m.record_backpressure.get(),
    );
}

/// The crash promise on a fast stream: a sidecar killed mid-stream (its runtime dropped, like
/// SIGKILL) leaves in the store everything its client got except at most the lag bound.
#[tokio::test]
async fn a_sidecar_killed_mid_stream_loses_at_most_the_lag_bound() {
    let redis = RedisServer::start().await;
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    // A slow store, so the stream runs at the lag bound when the sidecar is killed.
    let mut sc = redis_sidecar_with_delay(&app, &redis, Duration::from_millis(20)).await;
    let mut s = Stream::open(sc.sse, &format!("/firehose?size=100&count={EVENTS}"), None).await;
    let mut log = Log::default();
    let ended = s
        .read_until(&mut log, 20_000, Duration::from_secs(60))
        .await;
    assert!(
        !ended,
        "the stream is still running when the sidecar is killed"
    );
    sc.kill();
    // What the client got before the kill is whatever the socket still held: read it all.
    while s.next(Duration::from_millis(500)).await.is_some_and(|f| {
        log.take(f);
        true
    }) {}
    let got = Cursor::parse(log.last_id.as_deref().expect("ids")).expect("a cursor");
    let store = redis_store(&redis).await;
    let stored = read_all(&*store, &got.session).await;
    let last_stored = stored.last().map_or(0, |r| r.seq);
    let lost = got.seq.saturating_sub(last_stored);
    println!(
        "killed after the client got seq {}: the store holds up to {last_stored}, {lost} lost (bound {LAG_BOUND})",
        got.seq
    );
    assert!(
        stored.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "no hole in what was recorded"
    );
    assert!(
        lost <= LAG_BOUND,
        "lost {lost} events, more than the bound {LAG_BOUND}"
    );
}

async fn redis_store(redis: &RedisServer) -> Arc<dyn SessionStore> {
    let mut a = args("127.0.0.1:1".parse().unwrap(), "reader");
    a.store = StoreKind::Redis;
    a.redis_url = Some(redis.url());
    store::open(&a).await.expect("redis store opens")
}

/// Everything stored for `session`, read in pages (one huge read could outlast a call's budget
/// on a loaded machine).
async fn read_all(store: &dyn SessionStore, session: &SessionId) -> Vec<Recorded> {
    let mut all = Vec::new();
    loop {
        let after = all
            .last()
            .map_or(0, |r: &ssekeeper_sidecar::store::Recorded| r.seq);
        let page = store
            .read_after(session, after, 4096)
            .await
            .expect("read back");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}
