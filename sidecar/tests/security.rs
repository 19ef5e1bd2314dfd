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
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;
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
