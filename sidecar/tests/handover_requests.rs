//! Requests answered on their session's stream (MCP SSE transport: `POST` → `202`, the reply is
//! an event on the stream) racing the drain: the session stream stays open past the drain window
//! until the request in flight is answered on it, and only then ends; a request after that is
//! refused with `404` (MCP's "re-initialise"), never accepted into a stream nobody captures; and
//! when the client reconnects elsewhere, the endpoint the new owner's app announces is routed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{args, memory_store, start_sidecar};
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Stream, fetch};
use ssekeeper_testkit::sse::Frame;

const T: Duration = Duration::from_secs(10);

/// Read events until one of type `kind` (or with data `data`) arrives; keeps the last cursor.
async fn until(
    s: &mut Stream,
    last: &mut Option<String>,
    want: impl Fn(&str, &str) -> bool,
) -> String {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.next(left).await {
            Some(Frame::Event(e)) => {
                if e.id.is_some() {
                    last.clone_from(&e.id);
                }
                let kind = e.event.as_deref().unwrap_or("message");
                if want(kind, &e.data) {
                    return e.data;
                }
            }
            Some(_) => {}
            None => panic!("the stream ended before the wanted event"),
        }
    }
}

fn session_of(endpoint: &str) -> String {
    endpoint.split("sessionId=").nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_requests_racing_the_handover_are_delivered_or_refused() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    // Drain window 1 s, then the handover.
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let mut last = None;
    let mut s = Stream::open(a.sse, "/mcp-sse", None).await;
    let x = session_of(&until(&mut s, &mut last, |k, _| k == "endpoint").await);
    let (status, _, _) = fetch(a.sse, "POST", &format!("/rpc?sessionId={x}&n=1"), &[], None).await;
    assert_eq!(status, 202);
    until(&mut s, &mut last, |_, d| d == "reply 1").await;

    // A request the app works on across the end of A's drain window (sent through B: forwarded).
    let slow_path = format!("/rpc?sessionId={x}&n=2&delay=1500");
    let b_sse = b.sse;
    let slow = tokio::spawn(async move { fetch(b_sse, "POST", &slow_path, &[], None).await.0 });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let term = Instant::now();
    a.terminate();

    // A session stream is not closed in the drain window: the request in flight is answered on
    // it (through A, whose app still runs), and then the stream ends.
    assert_eq!(slow.await.unwrap(), 202);
    until(&mut s, &mut last, |_, d| d == "reply 2").await;
    loop {
        match s.next(T).await {
            Some(Frame::Event(e)) if e.id.is_some() => last = e.id,
            Some(_) => {}
            None => break,
        }
    }
    let ended = term.elapsed();
    println!("session stream ended {ended:?} after SIGTERM (window 1 s)");
    assert!(
        ended > Duration::from_secs(1),
        "kept open past the window while a call was in flight: {ended:?}"
    );

    // Ended: a new request for the session is refused, fast.
    let started = Instant::now();
    let (status, _, body) =
        fetch(b.sse, "POST", &format!("/rpc?sessionId={x}&n=9"), &[], None).await;
    assert_eq!(
        status, 404,
        "a request after the handover is refused: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let cursor = last.clone().expect("a cursor to resume from");
    let mut s2 = Stream::open(b.sse, "/mcp-sse", Some(&cursor)).await;
    assert_eq!(s2.status, 200);

    // B took the stream over; its app announces a new session there, which is routed to B.
    let y = session_of(&until(&mut s2, &mut last, |k, _| k == "endpoint").await);
    assert_ne!(x, y);
    let (status, headers, body) =
        fetch(b.sse, "POST", &format!("/rpc?sessionId={y}&n=3"), &[], None).await;
    assert_eq!(status, 202, "the announced endpoint works: {body}");
    assert_eq!(headers["x-app-name"], "app-b");
    until(&mut s2, &mut last, |_, d| d == "reply 3").await;
}
