//! Any pod answers any session: requests are forwarded to the session's owner, signed; forged or
//! stale signatures are refused; a session whose owner is gone answers 404 quickly.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FORWARD_KEY, args, memory_store, start_sidecar};
use ssekeeper_sidecar::forward;
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Log, Stream, fetch};
use ssekeeper_testkit::sse::Frame;

const T: Duration = Duration::from_secs(10);

async fn endpoint_session(s: &mut Stream) -> String {
    loop {
        match s.next(T).await.expect("endpoint event") {
            Frame::Event(e) if e.event.as_deref() == Some("endpoint") => {
                return e.data.split("sessionId=").nth(1).unwrap().to_string();
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn mcp_sse_transport_messages_reach_the_owner_from_any_pod() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let mut s = Stream::open(a.sse, "/sse", None).await;
    let session = endpoint_session(&mut s).await;
    let path = format!("/messages?sessionId={session}");
    // 15 tries through the pod that does not own the session: every one reaches app-a.
    for _ in 0..15 {
        let (status, headers, body) = fetch(b.sse, "POST", &path, &[], Some("{}")).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(headers["x-app-name"], "app-a");
    }
    let (status, _, _) = fetch(a.sse, "POST", &path, &[], Some("{}")).await;
    assert_eq!(status, 202);
    assert_eq!(b.count("forwards", "ok"), 15);
    assert_eq!(a.count("forwards", "accepted"), 15);
}

#[tokio::test]
async fn streamable_http_session_header_is_learned_and_routed() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let (status, headers, _) = fetch(
        b.sse,
        "POST",
        "/mcp",
        &[],
        Some("{\"method\":\"initialize\"}"),
    )
    .await;
    assert_eq!(status, 200);
    let id = headers["mcp-session-id"].to_str().unwrap().to_string();
    for _ in 0..5 {
        let (status, _, body) = fetch(
            a.sse,
            "POST",
            "/mcp",
            &[("mcp-session-id", &id)],
            Some("{}"),
        )
        .await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok from app-b\n"));
    }
}

#[tokio::test]
async fn forged_and_expired_forwards_are_refused() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let path = "/echo";
    let now = forward::unix_now();

    let (status, _, _) = fetch(sc.admin, "POST", "/internal/forward/echo", &[], Some("x")).await;
    assert_eq!(status, 403);
    let forged = forward::sign(b"not-the-key", "POST", path, now);
    let ts = now.to_string();
    let (status, _, _) = fetch(
        sc.admin,
        "POST",
        "/internal/forward/echo",
        &[
            ("x-ssekeeper-forward-ts", &ts),
            ("x-ssekeeper-forward-sig", &forged),
        ],
        Some("x"),
    )
    .await;
    assert_eq!(status, 403);
    let old = now - 3600;
    let stale = forward::sign(FORWARD_KEY.as_bytes(), "POST", path, old);
    let old_ts = old.to_string();
    let (status, _, _) = fetch(
        sc.admin,
        "POST",
        "/internal/forward/echo",
        &[
            ("x-ssekeeper-forward-ts", &old_ts),
            ("x-ssekeeper-forward-sig", &stale),
        ],
        Some("x"),
    )
    .await;
    assert_eq!(status, 403);
    // Signed for another path: refused.
    let other = forward::sign(FORWARD_KEY.as_bytes(), "POST", "/plain", now);
    let (status, _, _) = fetch(
        sc.admin,
        "POST",
        "/internal/forward/echo",
        &[
            ("x-ssekeeper-forward-ts", &ts),
            ("x-ssekeeper-forward-sig", &other),
        ],
        Some("x"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(sc.count("forwards", "missing"), 1);
    assert_eq!(sc.count("forwards", "forged"), 2);
    assert_eq!(sc.count("forwards", "expired"), 1);
    assert!(
        app.seen.lock().unwrap().is_empty(),
        "nothing reached the app"
    );

    // A valid signature is accepted and the app sees no forwarding headers.
    let good = forward::sign(FORWARD_KEY.as_bytes(), "POST", path, now);
    let (status, _, body) = fetch(
        sc.admin,
        "POST",
        "/internal/forward/echo",
        &[
            ("x-ssekeeper-forward-ts", &ts),
            ("x-ssekeeper-forward-sig", &good),
        ],
        Some("signed"),
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "signed"));
}

#[tokio::test]
async fn a_session_whose_owner_is_gone_answers_404_quickly() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let mut a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let mut s = Stream::open(a.sse, "/sse", None).await;
    let session = endpoint_session(&mut s).await;
    let path = format!("/messages?sessionId={session}");
    a.kill();
    drop(s);
    // The lease still names A, but A does not answer: 404 at once.
    let t = Instant::now();
    let (status, _, _) = fetch(b.sse, "POST", &path, &[], Some("{}")).await;
    assert_eq!(status, 404);
    println!("owner unreachable: 404 in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3));
    // Once the lease expired nobody owns it: 404 from the registry, the app is not asked.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = Instant::now();
    let (status, _, _) = fetch(b.sse, "POST", &path, &[], Some("{}")).await;
    assert_eq!(status, 404);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(app_b.seen.lock().unwrap().is_empty());
    assert_eq!(b.count("forwards", "owner_gone"), 2);
    // A stream request for an unowned key opens a stream here (this pod becomes the owner).
    let mut st = Stream::open(b.sse, "/events?feed=z&sessionId=fresh-key", None).await;
    assert_eq!(st.status, 200);
    st.read_until(&mut Log::default(), 1, T).await;
}

#[tokio::test]
async fn keyed_streams_use_the_key_and_are_relayed_from_the_owner() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;
    let path = "/events?feed=q&interval_ms=10&sessionId=key-1";

    let mut first = Stream::open(a.sse, path, None).await;
    let mut log = Log::default();
    first.read_until(&mut log, 3, T).await;
    let c = ssekeeper_sidecar::cursor::Cursor::parse(log.last_id.as_deref().unwrap()).unwrap();
    assert_eq!(
        c.session,
        common::keyed("key-1"),
        "the stream records under its key"
    );

    // The same key through B: forwarded to the owner A and relayed; a second stream of one key
    // gets its own session so the two never share a sequence.
    let mut second = Stream::open(b.sse, path, None).await;
    let mut log2 = Log::default();
    second.read_until(&mut log2, 3, T).await;
    let c2 = ssekeeper_sidecar::cursor::Cursor::parse(log2.last_id.as_deref().unwrap()).unwrap();
    assert_ne!(c2.session, common::keyed("key-1"));
    assert_eq!(b.count("forwards", "ok"), 1);
    assert!(app_b.seen.lock().unwrap().is_empty());

    // B drains: the relayed stream is closed with the hint like its own streams.
    b.terminate();
    second.read_to_end(&mut log2, T).await;
    assert_eq!(log2.retries.last(), Some(&100));
}

/// A keyed stream reconnecting without `Last-Event-ID` while the recorder still holds its
/// session's app stream (MCP Streamable HTTP's notification `GET` with `Mcp-Session-Id`) is
/// attached to that recording: the app sees one `GET`, never a second one it would refuse.
#[tokio::test]
async fn a_keyed_stream_reconnecting_attaches_to_its_recording() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let a = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let path = "/events?feed=r&interval_ms=10&sessionId=key-9";
    let mut first = Stream::open(a.sse, path, None).await;
    let mut log = Log::default();
    first.read_until(&mut log, 3, T).await;
    drop(first);
    // The recorder notices the client left (its housekeeping runs every 500 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut again = Stream::open(a.sse, path, None).await;
    let mut log2 = Log::default();
    again.read_until(&mut log2, 3, T).await;
    let c = ssekeeper_sidecar::cursor::Cursor::parse(log2.last_id.as_deref().unwrap()).unwrap();
    assert_eq!(
        c.session,
        common::keyed("key-9"),
        "the same session's recording"
    );
    let gets = app
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("sessionId=key-9"))
        .count();
    assert_eq!(gets, 1, "one upstream for the session");
    assert_eq!(a.count("resumes", "reattached"), 1);
}
