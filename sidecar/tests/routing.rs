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

/// A forward as pod-b would send it to pod-a: signed over `body` and `auth` at `ts_ms`.
fn forward_headers(
    key: &[u8],
    body: &str,
    auth: &str,
    ts_ms: u64,
    to: &str,
) -> Vec<(String, String)> {
    let names = forward::signed_headers(
        &[
            "query:sessionId".parse().unwrap(),
            "header:Mcp-Session-Id".parse().unwrap(),
        ],
        &ssekeeper_sidecar::contract::IdentitySources::default().0,
    );
    let mut h = http::HeaderMap::new();
    h.insert("authorization", auth.parse().unwrap());
    let nonce = forward::nonce();
    let s = forward::Signed {
        method: "POST",
        path: "/echo",
        ts_ms,
        nonce: &nonce,
        to,
        body_sha256: forward::body_digest(body.as_bytes()),
    };
    let sig = forward::sign(key, &s, &h, &names);
    vec![
        ("authorization".into(), auth.into()),
        ("x-ssekeeper-forward-ts".into(), ts_ms.to_string()),
        ("x-ssekeeper-forward-nonce".into(), nonce),
        ("x-ssekeeper-forward-to".into(), to.into()),
        ("x-ssekeeper-forward-sig".into(), sig),
    ]
}

async fn send_forward(
    admin: std::net::SocketAddr,
    headers: &[(String, String)],
    body: &str,
) -> u16 {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    fetch(admin, "POST", "/internal/forward/echo", &h, Some(body))
        .await
        .0
        .as_u16()
}

/// Tried as an attacker on the pod network would: unsigned, forged, stale, re-addressed, and a
/// captured forward replayed as it was or with another body or other credentials.
#[tokio::test]
async fn forged_stale_readdressed_and_replayed_forwards_are_refused() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let key = FORWARD_KEY.as_bytes();
    let now = forward::unix_millis();

    assert_eq!(send_forward(sc.admin, &[], "x").await, 403, "unsigned");
    let forged = forward_headers(b"not-the-key", "x", "alice", now, "pod-a");
    assert_eq!(
        send_forward(sc.admin, &forged, "x").await,
        403,
        "another key"
    );
    let stale = forward_headers(key, "x", "alice", now - 60_000, "pod-a");
    assert_eq!(
        send_forward(sc.admin, &stale, "x").await,
        403,
        "a minute old"
    );
    let future = forward_headers(key, "x", "alice", now + 60_000, "pod-a");
    assert_eq!(
        send_forward(sc.admin, &future, "x").await,
        403,
        "from the future"
    );
    let elsewhere = forward_headers(key, "x", "alice", now, "pod-c");
    assert_eq!(
        send_forward(sc.admin, &elsewhere, "x").await,
        403,
        "addressed to another pod"
    );
    assert!(
        app.seen.lock().unwrap().is_empty(),
        "nothing reached the app"
    );

    // A valid forward is accepted once, and the app sees no forwarding headers.
    let captured = forward_headers(key, "signed", "alice", forward::unix_millis(), "pod-a");
    let (status, _, body) = fetch(
        sc.admin,
        "POST",
        "/internal/forward/echo",
        &captured
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        Some("signed"),
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "signed"));
    // Replayed: as it was, with another body, with other credentials.
    assert_eq!(
        send_forward(sc.admin, &captured, "signed").await,
        403,
        "replayed as captured"
    );
    let mut other_body = forward_headers(key, "signed", "alice", forward::unix_millis(), "pod-a");
    assert_eq!(
        send_forward(sc.admin, &other_body, "rm -rf").await,
        403,
        "another body"
    );
    other_body[0].1 = "bob".into();
    assert_eq!(
        send_forward(sc.admin, &other_body, "signed").await,
        403,
        "other credentials"
    );

    assert_eq!(sc.count("forwards", "missing"), 1);
    assert_eq!(sc.count("forwards", "forged"), 4);
    assert_eq!(sc.count("forwards", "expired"), 2);
    assert_eq!(sc.count("forwards", "replayed"), 1);
    assert_eq!(sc.count("forwards", "accepted"), 1);
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one request reached the app: {seen:?}");
}

/// A client cannot pose as a sidecar: `x-ssekeeper-*` headers it sends never reach the app.
#[tokio::test]
async fn client_sent_sidecar_headers_are_stripped() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let (status, _, body) = fetch(
        sc.sse,
        "GET",
        "/headers",
        &[
            ("x-ssekeeper-forwarded-by", "pod-evil"),
            ("x-ssekeeper-anything", "1"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!body.to_ascii_lowercase().contains("x-ssekeeper"), "{body}");
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
