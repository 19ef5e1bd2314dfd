//! The proxy: pass-through of non-SSE traffic, id rewriting of SSE, limits and bad input.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{args, memory_store, start_sidecar};
use ssekeeper_sidecar::cursor::Cursor;
use ssekeeper_sidecar::store::SessionStore as _;
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Log, Stream, fetch};
use ssekeeper_testkit::sse::Frame;
use ssekeeper_testkit::{eventually, eventually_true};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn non_sse_passes_through_unchanged_with_forwarded_for() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;

    let (status, headers, body) = fetch(sc.sse, "GET", "/plain", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello\n");
    assert_eq!(headers["x-app-name"], "app");
    assert_eq!(headers["content-length"], "6");

    let (status, headers, body) = fetch(
        sc.sse,
        "POST",
        "/echo",
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
        Some("payload with\nlines"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "payload with\nlines");
    assert_eq!(
        headers["x-seen-secret"], "false",
        "a header named in Connection is hop-by-hop"
    );
    assert_eq!(headers["x-seen-xff"], "203.0.113.9, 127.0.0.1");

    let (status, _, body) = fetch(sc.sse, "GET", "/nowhere", &[], None).await;
    assert_eq!((status.as_u16(), body.as_str()), (404, "no such path\n"));
    assert!(sc.shared.metrics.count("requests", "local") >= 3);
}

#[tokio::test]
async fn sse_ids_become_cursors_and_everything_else_is_kept() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;

    let mut s = Stream::open(sc.sse, "/mixed", None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let mut log = Log::default();
    s.read_to_end(&mut log, T).await;

    assert_eq!(log.comments, vec![" keep-alive".to_string()]);
    assert_eq!(log.retries, vec![1500]);
    let data: Vec<_> = log.data();
    assert_eq!(data, vec!["line one\nline two", "no id here", "crlf"]);
    assert_eq!(log.events[0].event.as_deref(), Some("greet"));
    let cursors: Vec<Cursor> = log
        .events
        .iter()
        .map(|e| Cursor::parse(e.id.as_deref().expect("every event gets a cursor")).unwrap())
        .collect();
    let session = &cursors[0].session;
    assert!(cursors.iter().all(|c| &c.session == session));
    assert!(cursors.windows(2).all(|w| w[1].seq > w[0].seq));
    // The app's own ids were recorded beside the cursors (sticky, as a browser tracks them).
    // The response ends before the recorder's last batch is written: wait for the `End`.
    let recorded = eventually("the recorder's End", T, || async {
        let r = sc.shared.store.read_after(session, 0, 100).await.unwrap();
        let ended = r.last().map(|l| &l.entry) == Some(&ssekeeper_sidecar::store::Entry::End);
        ended.then_some(r)
    })
    .await;
    let app_ids: Vec<Option<String>> = recorded
        .iter()
        .filter_map(|r| match &r.entry {
            ssekeeper_sidecar::store::Entry::Event { app_id, .. } => Some(app_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        app_ids,
        vec![Some("a1".into()), Some("a1".into()), Some("a2".into())]
    );
    assert!(matches!(
        recorded.last().unwrap().entry,
        ssekeeper_sidecar::store::Entry::End
    ));
}

#[tokio::test]
async fn app_down_is_a_quick_502() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let addr = app.addr;
    app.kill();
    drop(app);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sc = start_sidecar(args(addr, "pod-a"), memory_store()).await;
    let started = std::time::Instant::now();
    let (status, _, _) = fetch(sc.sse, "GET", "/plain", &[], None).await;
    assert_eq!(status, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    let (status, _, body) = fetch(sc.admin, "GET", "/ready", &[], None).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn limits_refuse_too_many_streams_and_huge_heads() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.max_streams = 1;
    let sc = start_sidecar(a, memory_store()).await;

    let mut first = Stream::open(sc.sse, "/events?feed=l", None).await;
    assert_eq!(first.status, 200);
    let mut log = Log::default();
    first.read_until(&mut log, 1, T).await;
    let second = Stream::open(sc.sse, "/events?feed=l2", None).await;
    assert_eq!(second.status, 503);
    assert_eq!(sc.count("errors", "too_many_streams"), 1);
    let asked = app
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("feed=l2"))
        .count();
    assert_eq!(
        asked, 0,
        "refused before the app opened a stream for nobody"
    );

    let big = "x".repeat(64 * 1024);
    let (status, _, _) = fetch(sc.sse, "GET", "/plain", &[("x-big", &big)], None).await;
    assert_eq!(status, 431);
    drop(first);
    eventually_true("the stream slot is free", T, || {
        sc.shared.streams.is_empty()
    })
    .await;
    let (status, _, _) = fetch(sc.sse, "GET", "/plain", &[], None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_app_stream_never_stalls_the_proxy() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.max_event_bytes = 64 * 1024;
    let sc = start_sidecar(a, memory_store()).await;

    let mut s = Stream::open(sc.sse, "/garbage", None).await;
    let mut log = Log::default();
    s.read_to_end(&mut log, T).await;
    let data = log.data();
    assert_eq!(data.last().map(String::as_str), Some("ok"));
    assert!(
        !data.iter().any(|d| d.len() > 64 * 1024),
        "the oversized event was dropped"
    );
    assert!(sc.shared.metrics.oversized_events.get() >= 1);
    let (status, _, _) = fetch(sc.sse, "GET", "/plain", &[], None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_slow_consumer_is_cut_and_memory_stays_bounded() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.client_buffer_bytes = 64 * 1024;
    a.client_stall_millis = 300;
    let sc = start_sidecar(a, memory_store()).await;

    // A client that reads gets everything: a full queue only pauses the app's stream.
    let mut s = Stream::open(sc.sse, "/firehose?size=1000", None).await;
    let mut all = Log::default();
    s.read_to_end(&mut all, T).await;
    assert_eq!(all.events.len(), 20_000);
    assert_eq!(sc.shared.metrics.slow_consumers.get(), 0);

    let mut s = Stream::open(sc.sse, "/firehose?size=1000", None).await;
    // Do not read: the app writes far more than the budget.
    eventually_true("the slow client is cut", T, || {
        sc.shared.metrics.slow_consumers.get() >= 1
    })
    .await;
    // What was queued still arrives, then the response ends (the client would resume).
    let mut log = Log::default();
    s.read_to_end(&mut log, T).await;
    let bytes: usize = log.events.iter().map(|e| e.data.len()).sum();
    println!(
        "slow consumer: cut; {} events ({} data bytes) were in flight (64 KiB sidecar budget + socket buffers)",
        log.events.len(),
        bytes
    );
    assert!(
        bytes < 4 << 20,
        "the per-client buffer bounded what was queued"
    );
    let last = log.last_id.clone().expect("received some events");
    // It resumes from its cursor on the same pod and continues where it stopped.
    let mut r = Stream::open(sc.sse, "/firehose?size=1000", Some(&last)).await;
    let mut told_gap = false;
    let next = loop {
        match r.next(T).await.expect("resumed stream has events") {
            // The recorder went on at full speed: what the 1,000-entry history no longer holds
            // is announced, not glued over.
            Frame::Event(e)
                if e.event.as_deref() == Some(ssekeeper_sidecar::contract::GAP_EVENT_TYPE) =>
            {
                told_gap = true;
            }
            Frame::Event(e) => break e,
            _ => continue,
        }
    };
    assert_eq!(told_gap, sc.shared.metrics.replay_gaps.get() > 0);
    let (a, b) = (
        Cursor::parse(&last).unwrap(),
        Cursor::parse(next.id.as_deref().unwrap()).unwrap(),
    );
    assert_eq!(a.session, b.session);
    assert!(b.seq > a.seq);
    assert!(sc.count("resumes", "local") >= 1);
}

#[tokio::test]
async fn concurrent_streams_with_one_session_key_record_apart() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    // A store across a network: every call takes a while, so both requests are in flight at once.
    let store = common::FlakyStore::new(memory_store());
    store.set_delay(Duration::from_millis(100));
    let sc = start_sidecar(args(app.addr, "pod-a"), store.clone()).await;
    let headers = [
        ("accept", "text/event-stream"),
        ("mcp-session-id", "shared-key"),
    ];
    // MCP Streamable HTTP: parallel requests of one client carry the same session header.
    let (mut s1, mut s2) = tokio::join!(
        Stream::open_with(sc.sse, "/events?feed=k1&interval_ms=10", &headers),
        Stream::open_with(sc.sse, "/events?feed=k2&interval_ms=10", &headers),
    );
    let (mut l1, mut l2) = (Log::default(), Log::default());
    tokio::join!(s1.read_until(&mut l1, 5, T), s2.read_until(&mut l2, 5, T));
    let session = |l: &Log| {
        Cursor::parse(l.events[0].id.as_deref().unwrap())
            .unwrap()
            .session
    };
    let (a, b) = (session(&l1), session(&l2));
    println!("two streams with one key recorded as {a} and {b}");
    assert_ne!(a, b, "one history per stream: cursors must not collide");
    let key = common::keyed("shared-key");
    assert!(
        a == key || b == key,
        "one of them continues the key's session"
    );
    assert!(
        !a.as_str().contains("shared-key") && !b.as_str().contains("shared-key"),
        "the key itself never shows in an event id"
    );
    // Both histories are recorded whole (no batch refused for colliding seqs).
    eventually_true("both recorded", T, || {
        sc.shared.metrics.events_recorded.get() >= 10
    })
    .await;
    assert_eq!(sc.count("errors", "malformed"), 0);
}

#[tokio::test]
async fn clients_that_leave_do_not_pile_up_captured_upstreams_beyond_the_stream_bound() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.max_streams = 2;
    a.resume_window_seconds = 30;
    let sc = start_sidecar(a, memory_store()).await;
    for i in 0..6 {
        let mut s = Stream::open(
            sc.sse,
            &format!("/events?feed=leave{i}&interval_ms=10"),
            None,
        )
        .await;
        assert_eq!(s.status, 200);
        s.read_until(&mut Log::default(), 1, T).await;
        drop(s); // the client leaves; its recorder keeps capturing for the resume window
        eventually_true("the stream slot is free", T, || {
            sc.shared.streams.is_empty()
        })
        .await;
    }
    eventually_true(
        "recorders beyond the stream bound hand over at once",
        Duration::from_secs(5),
        || sc.shared.recorders.len() <= 2,
    )
    .await;
    println!(
        "6 clients left: {} recorders still capturing, {} handed over early",
        sc.shared.recorders.len(),
        sc.count("handovers", "resume_window")
    );
    assert!(sc.count("handovers", "resume_window") >= 4);
}
