//! A store outage: streams keep flowing without recording, the pod reports it, and recording
//! resumes when the store is back.

mod common;

use std::time::Duration;

use common::{FlakyStore, args, memory_store, start_sidecar};
use ssekeeper_sidecar::store::SessionStore as _;
use ssekeeper_testkit::app::{Feeds, TestApp, assert_contiguous};
use ssekeeper_testkit::client::{Log, Stream, fetch};
use ssekeeper_testkit::{eventually, eventually_true};

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn streams_survive_a_store_outage_and_recording_recovers() {
    let app = TestApp::start("app", std::sync::Arc::new(Feeds::default())).await;
    let store = FlakyStore::new(memory_store());
    let sc = start_sidecar(args(app.addr, "pod-a"), store.clone()).await;

    let path = "/events?feed=o&interval_ms=10";
    let mut s = Stream::open(sc.sse, path, None).await;
    let mut log = Log::default();
    s.read_until(&mut log, 10, T).await;

    store.set_down(true);
    s.read_until(&mut log, 60, T).await; // the client path never waits on the store
    eventually_true("store reported down", T, || {
        sc.shared.metrics.store_up.get() == 0
    })
    .await;
    let (status, _, body) = fetch(sc.admin, "GET", "/ready", &[], None).await;
    assert_eq!(status, 200, "still serving");
    assert!(body.contains("unavailable"), "{body}");
    // New streams and plain requests still work.
    let mut other = Stream::open(sc.sse, "/events?feed=o2&interval_ms=10", None).await;
    let mut other_log = Log::default();
    other.read_until(&mut other_log, 3, T).await;
    let other_session =
        ssekeeper_sidecar::cursor::Cursor::parse(other_log.last_id.as_deref().unwrap())
            .unwrap()
            .session;
    assert_eq!(fetch(sc.sse, "GET", "/plain", &[], None).await.0, 200);

    let recorded_before = sc.shared.metrics.events_recorded.get();
    store.set_down(false);
    eventually_true("store reported up", T, || {
        sc.shared.metrics.store_up.get() == 1
    })
    .await;
    s.read_until(&mut log, 120, T).await;
    // The stream opened during the outage takes its lease once the store is back.
    eventually(
        "the stream opened during the outage is owned after it",
        Duration::from_secs(2),
        || async {
            let lease = sc.shared.store.lease(&other_session).await.unwrap();
            lease.is_some().then_some(())
        },
    )
    .await;
    eventually_true("recording resumed", T, || {
        sc.shared.metrics.events_recorded.get() > recorded_before
    })
    .await;
    assert_contiguous(&log.data());
    // The outage is short enough that the backlog was kept and written afterwards: a resume
    // from an event recorded during the outage still works without a gap.
    let mid = log.events[30].id.clone().unwrap();
    drop(s);
    let mut r = Stream::open(sc.sse, path, Some(&mid)).await;
    let mut tail = Log::default();
    r.read_until(&mut tail, 40, T).await;
    assert_eq!(tail.data()[0], log.data()[31]);
    assert_contiguous(&tail.data());
    println!(
        "outage: unrecorded {} events, errors(store_unavailable) {}",
        sc.shared.metrics.events_unrecorded.get(),
        sc.count("errors", "store_unavailable")
    );
}

#[tokio::test]
async fn a_key_learned_during_an_outage_is_routed_once_the_store_is_back() {
    use ssekeeper_testkit::sse::Frame;
    let feeds = std::sync::Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = FlakyStore::new(memory_store());
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    // A black-holed store: calls hang until their time budget runs out.
    store.set_hanging(true);
    store.set_down(true);
    // Both pods notice (the first timed-out call or the pinger).
    let _ = fetch(a.sse, "POST", "/messages?sessionId=probe", &[], Some("{}")).await;
    let _ = fetch(b.sse, "POST", "/messages?sessionId=probe", &[], Some("{}")).await;
    eventually_true("outage noticed", T, || {
        a.shared.metrics.store_up.get() == 0 && b.shared.metrics.store_up.get() == 0
    })
    .await;
    let t = std::time::Instant::now();
    let mut s = Stream::open(a.sse, "/sse", None).await;
    let session = loop {
        if let Frame::Event(e) = s.next(T).await.expect("endpoint event") {
            break e.data.split("sessionId=").nth(1).unwrap().to_string();
        }
    };
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the endpoint event did not wait on the store"
    );
    let path = format!("/messages?sessionId={session}");
    // During the outage each pod serves what it gets itself.
    assert_eq!(fetch(a.sse, "POST", &path, &[], Some("{}")).await.0, 202);

    store.set_down(false);
    eventually_true("stores back", T, || {
        a.shared.metrics.store_up.get() == 1 && b.shared.metrics.store_up.get() == 1
    })
    .await;
    let id = ssekeeper_sidecar::cursor::CursorKey::derive(common::FORWARD_KEY.as_bytes())
        .session_for_key(&session)
        .unwrap();
    eventually(
        "the key was registered after the outage",
        Duration::from_secs(4),
        || async { store.lease(&id).await.unwrap().is_some().then_some(()) },
    )
    .await;
    let (status, headers, _) = fetch(b.sse, "POST", &path, &[], Some("{}")).await;
    assert_eq!(status, 202);
    assert_eq!(headers["x-app-name"], "app-a");
}
