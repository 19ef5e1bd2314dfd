//! A session belongs to whoever opened it, tried as an attacker would: a thief holding another
//! client's cursor (stolen from a log, a shared screen, page script) or session key, on the
//! owner's pod and on another, for the same path and for another, against an app that authorises
//! every request (`/private/<user>` answers 401 unless `Authorization: <user>`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{args, memory_store, start_sidecar};
use ssekeeper_sidecar::cursor::Cursor;
use ssekeeper_testkit::app::{Feeds, TestApp, assert_contiguous};
use ssekeeper_testkit::client::{Log, Stream};

const T: Duration = Duration::from_secs(10);

fn headers<'a>(auth: Option<&'a str>, cursor: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("accept", "text/event-stream")];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    if let Some(c) = cursor {
        h.push(("last-event-id", c));
    }
    h
}

#[tokio::test]
async fn a_stolen_cursor_gets_the_thief_nothing_on_any_pod_or_path() {
    let common::Pair { app_a, app_b, a, b } = common::Pair::start().await;
    let path = "/private/alice?feed=al&interval_ms=10";

    let mut alice = Stream::open_with(a.sse, path, &headers(Some("alice"), None)).await;
    assert_eq!(alice.status, 200);
    let mut log = Log::default();
    alice.read_until(&mut log, 20, T).await;
    // Her first cursor: a resume after it would replay her whole history.
    let stolen = log.events[0].id.clone().unwrap();

    // Bob, with his own credentials, while Alice is still connected: on her pod and on another.
    for (pod, addr) in [("owner", a.sse), ("other", b.sse)] {
        let thief = Stream::open_with(addr, path, &headers(Some("bob"), Some(&stolen))).await;
        assert_eq!(
            thief.status, 401,
            "{pod} pod: the app is asked with Bob's credentials and refuses him"
        );
        let anonymous = Stream::open_with(addr, path, &headers(None, Some(&stolen))).await;
        assert_eq!(anonymous.status, 401, "{pod} pod: without credentials");
    }
    // Another path the app serves Bob: a stream of his own from the app, none of Alice's.
    let mut other = Stream::open_with(
        b.sse,
        "/private/bob?feed=al&interval_ms=10",
        &headers(Some("bob"), Some(&stolen)),
    )
    .await;
    assert_eq!(other.status, 200);
    let mut bobs = Log::default();
    other.read_until(&mut bobs, 3, T).await;
    let replayed: Vec<String> = bobs
        .data()
        .into_iter()
        .filter(|d| log.data().contains(d))
        .collect();
    assert!(replayed.is_empty(), "none of Alice's events: {replayed:?}");
    let bob_session = Cursor::parse(bobs.last_id.as_deref().unwrap())
        .unwrap()
        .session;
    assert_ne!(bob_session, Cursor::parse(&stolen).unwrap().session);
    // An edited copy of her cursor (seq 0: everything) verifies for nobody, Alice included.
    let mut edited = Cursor::parse(&stolen).unwrap();
    edited.seq = 0;
    let forged = Stream::open_with(
        a.sse,
        path,
        &headers(Some("bob"), Some(&edited.to_string())),
    )
    .await;
    assert_eq!(forged.status, 401);

    let refused = a.count("resumes", "unverified") + b.count("resumes", "unverified");
    assert_eq!(refused, 6, "every attempt counted");
    assert_eq!(a.count("resumes", "local") + b.count("resumes", "store"), 0);
    // The app saw each of Bob's attempts, with his credentials and no cursor of hers.
    let asked = |app: &TestApp| {
        app.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("GET /private/alice") && r.ends_with(' '))
            .count()
    };
    assert!(asked(&app_a) >= 3 && asked(&app_b) >= 2);

    // Alice herself resumes anywhere, whole.
    drop(alice);
    let last = log.last_id.clone().unwrap();
    let mut again = Stream::open_with(b.sse, path, &headers(Some("alice"), Some(&last))).await;
    assert_eq!(again.status, 200);
    again.read_until(&mut log, 40, T).await;
    assert_contiguous(&log.data());
    println!(
        "stolen cursor: refused {refused} times (401 from the app, nothing replayed); Alice resumed on pod-b whole"
    );
}

#[tokio::test]
async fn a_session_key_alone_does_not_attach_to_its_recording() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let a = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let path = "/private/alice?feed=k&interval_ms=10&sessionId=alice-session-42";
    let mut alice = Stream::open_with(a.sse, path, &headers(Some("alice"), None)).await;
    let mut log = Log::default();
    alice.read_until(&mut log, 5, T).await;
    // The key never shows in what a client or page script sees.
    assert!(
        log.events
            .iter()
            .all(|e| !e.id.as_deref().unwrap().contains("alice-session-42")),
        "event ids carry a keyed hash, not the key"
    );
    drop(alice);
    // The recorder holds her session for the resume window; Bob knows the key.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let thief = Stream::open_with(a.sse, path, &headers(Some("bob"), None)).await;
    assert_eq!(
        thief.status, 401,
        "not attached: the app decides, and refuses him"
    );
    assert_eq!(a.count("resumes", "reattached"), 0);
    assert_eq!(a.count("resumes", "unverified"), 1);
    // Alice reconnecting the same way is attached to her recording.
    let mut again = Stream::open_with(a.sse, path, &headers(Some("alice"), None)).await;
    assert_eq!(again.status, 200);
    again.read_until(&mut Log::default(), 3, T).await;
    assert_eq!(a.count("resumes", "reattached"), 1);
}

/// One raw HTTP/1.1 exchange: `request` written as is, the answer read until the server closes
/// or 2 s pass.
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_lowercase()
}

#[tokio::test]
async fn requests_a_proxy_must_not_pass_on_get_defined_answers() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let options = raw(sc.sse, "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        options.starts_with("http/1.1 200") && options.contains("allow: get"),
        "{options}"
    );
    let connect = raw(
        sc.sse,
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("http/1.1 405"), "{connect}");
    let coded = raw(
        sc.sse,
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(coded.starts_with("http/1.1 501"), "{coded}");
    // An early answer to a keyed request whose body was not read ends the connection, saying so.
    let gone = raw(
        sc.sse,
        "POST /messages?sessionId=nobody HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert!(
        gone.starts_with("http/1.1 404") && gone.contains("connection: close"),
        "{gone}"
    );
    let seen = app.seen.lock().unwrap().clone();
    assert!(seen.is_empty(), "none reached the app: {seen:?}");
    let (status, _, _) = ssekeeper_testkit::client::fetch(sc.sse, "GET", "/plain", &[], None).await;
    assert_eq!(status, 200, "and the proxy keeps serving");
}

#[tokio::test]
async fn an_app_answer_in_a_foreign_transfer_coding_is_a_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          transfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    let sc = start_sidecar(args(app_addr, "pod-a"), memory_store()).await;
    let (status, _, _) = ssekeeper_testkit::client::fetch(
        sc.sse,
        "GET",
        "/events",
        &[("accept", "text/event-stream")],
        None,
    )
    .await;
    assert_eq!(status, 502, "not an empty 200");
    assert_eq!(sc.count("errors", "upstream_transfer_coding"), 1);
}
