//! Resume and handoff: the promise (no gap, no duplicate, order kept) across reconnects to the
//! same pod, to another pod, through a drain's handover, and after a crash.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ssekeeper_sidecar::cursor::SessionId;
use ssekeeper_sidecar::store::{
    Entry, Epoch, LeaseState, Owner, Recorded, Seq, SessionStore, StoreResult,
};

use common::{Hooked, Op, StoreHook, args, memory_store, start_sidecar};
use ssekeeper_sidecar::cursor::Cursor;
use ssekeeper_testkit::app::{Feeds, TestApp, assert_contiguous};
use ssekeeper_testkit::client::{Log, Stream};
use ssekeeper_testkit::eventually_true;

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn reconnect_to_the_same_pod_misses_nothing() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;

    let mut log = Log::default();
    let mut s = Stream::open(sc.sse, "/events?feed=f&interval_ms=10", None).await;
    s.read_until(&mut log, 10, T).await;
    drop(s); // network blip
    tokio::time::sleep(Duration::from_millis(300)).await; // ~30 events happen meanwhile
    let last = log.last_id.clone().unwrap();
    let mut s = Stream::open(sc.sse, "/events?feed=f&interval_ms=10", Some(&last)).await;
    s.read_until(&mut log, 80, T).await;

    let first = assert_contiguous(&log.data());
    println!(
        "same-pod resume: {} events from event {first}, no gap, no duplicate",
        log.events.len()
    );
    assert_eq!(sc.count("resumes", "local"), 1);
    // The app was asked once: the recorder kept its upstream through the blip.
    let asked = app
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("GET /events"))
        .count();
    assert_eq!(asked, 1);
}

/// The time floor: a fast stream (1,000 events/s) whose client is away for a second resumes
/// whole although the count alone (100 entries, 0.1 s) would have trimmed its cursor away; the
/// same resume with no floor finds the hole. The floor, not luck, is what keeps the history.
#[tokio::test]
async fn a_fast_streams_resume_after_a_second_away_finds_its_history_through_the_time_floor() {
    for floor in [Duration::from_secs(10), Duration::ZERO] {
        let app = TestApp::start("app", Arc::new(Feeds::default())).await;
        let retention = ssekeeper_sidecar::store::Retention {
            limit: 100,
            floor,
            cap: 100_000,
        };
        let store = Arc::new(ssekeeper_sidecar::store::MemoryStore::with_retention(
            retention,
            Duration::from_secs(300),
        ));
        let mut a = args(app.addr, "pod-a");
        a.resume_buffer_events = 5;
        let sc = start_sidecar(a, store).await;
        let path = "/events?feed=fast&interval_ms=1&ignore_lei=1";
        let mut log = Log::default();
        let mut s = Stream::open(sc.sse, path, None).await;
        s.read_until(&mut log, 50, T).await;
        drop(s);
        tokio::time::sleep(Duration::from_secs(1)).await; // ~1,000 events meanwhile
        let mut s = Stream::open(sc.sse, path, log.last_id.as_deref()).await;
        let mut resumed = Log::default();
        s.read_until(&mut resumed, 1500, T).await;
        let gap = resumed
            .events
            .iter()
            .any(|e| e.event.as_deref() == Some(ssekeeper_sidecar::contract::GAP_EVENT_TYPE));
        println!(
            "floor {floor:?}: resumed after 1 s away at 1,000 events/s with a 100-entry limit: gap {gap}, replay gaps {}; left at {:?}, resumed at {:?}",
            sc.shared.metrics.replay_gaps.get(),
            log.data().last(),
            resumed.data().first()
        );
        if floor.is_zero() {
            assert!(gap, "without a floor the count trimmed the cursor away");
        } else {
            assert!(!gap, "the floor kept the history");
            let mut all = log.data();
            all.extend(resumed.data());
            assert_contiguous(&all);
            assert_eq!(sc.shared.metrics.replay_gaps.get(), 0);
        }
    }
}

#[tokio::test]
async fn a_same_pod_resume_past_the_stored_history_does_not_spin_on_the_store() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    // The store keeps one entry per session; the recorder remembers the last 5 events.
    let store = common::FlakyStore::new(Arc::new(ssekeeper_sidecar::store::MemoryStore::new(
        1,
        Duration::from_secs(300),
    )));
    let mut a = args(app.addr, "pod-a");
    a.resume_buffer_events = 5;
    let sc = start_sidecar(a, store.clone()).await;
    let mut log = Log::default();
    let mut s = Stream::open(sc.sse, "/events?feed=trim&interval_ms=10", None).await;
    s.read_until(&mut log, 5, T).await;
    let cursor = log.events[0].id.clone().unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await; // ~30 more events, trimmed away
    let before = store.calls.load(std::sync::atomic::Ordering::SeqCst);
    let t = Instant::now();
    let mut s = Stream::open(sc.sse, "/events?feed=trim&interval_ms=10", Some(&cursor)).await;
    let answered = t.elapsed();
    let calls = store.calls.load(std::sync::atomic::Ordering::SeqCst) - before;
    let mut resumed = Log::default();
    s.read_until(&mut resumed, 10, T).await;
    println!("resume past the stored history: answered in {answered:?} with {calls} store calls");
    assert_eq!(sc.count("resumes", "local"), 1);
    assert!(
        sc.shared.metrics.replay_gaps.get() >= 1,
        "the trimmed part is a gap"
    );
    assert!(calls < 30, "{calls} store calls for one resume");
    // Not silently glued: the client is told where the hole is, then what the recorder
    // remembers follows, in order.
    let gap = &resumed.events[0];
    assert_eq!(
        gap.event.as_deref(),
        Some(ssekeeper_sidecar::contract::GAP_EVENT_TYPE)
    );
    assert_eq!(gap.id, None, "the client's last event id is left as it was");
    assert_eq!(
        gap.data,
        format!(r#"{{"after":"{cursor}","reason":"missing"}}"#)
    );
    assert_contiguous(&resumed.data()[1..]);
}

#[tokio::test]
async fn resume_on_another_pod_tails_the_live_owner() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let path = "/events?feed=g&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 10, T).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    s.read_until(&mut log, 60, T).await;

    assert_contiguous(&log.data());
    assert_eq!(b.count("resumes", "store"), 1);
    assert_eq!(b.count("takeovers", "ok"), 0, "A still owns the session");
    assert!(
        app_b.seen.lock().unwrap().is_empty(),
        "B never asked its app"
    );
    let sessions: Vec<_> = log
        .events
        .iter()
        .map(|e| Cursor::parse(e.id.as_deref().unwrap()).unwrap().session)
        .collect();
    assert!(
        sessions.iter().all(|s| s == &sessions[0]),
        "one session across pods"
    );
}

#[tokio::test]
async fn a_finite_stream_ends_on_the_pod_the_client_moved_to() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let path = "/events?feed=h&interval_ms=20&total=25";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 5, T).await;
    drop(s);
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    s.read_to_end(&mut log, T).await;

    assert_eq!(log.data(), ssekeeper_testkit::app::expected(1, 25));
    assert_eq!(b.count("takeovers", "ok"), 0, "no work redone");
    assert!(app_b.seen.lock().unwrap().is_empty());
    // Reconnecting at the end opens the app's stream again with the app's own last id.
    let mut again = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    let ended = again.read_until(&mut Log::default(), 1, T).await;
    assert!(ended, "the app has nothing after event 25");
    assert_eq!(b.count("resumes", "ended"), 1);
    let seen = app_b.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["GET /events?feed=h&interval_ms=20&total=25 25".to_string()]
    );
}

/// (Bind every field of a [`common::Pair`]: a `..` pattern would drop the apps at once.)
#[tokio::test]
async fn drain_hands_the_session_over_without_gap_or_duplicate() {
    let common::Pair {
        app_a: _app_a,
        app_b,
        a,
        b,
    } = common::Pair::start().await;

    let path = "/events?feed=d&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 10, T).await;

    let t0 = Instant::now();
    a.terminate();
    // A closes the stream with a retry hint within the drain window.
    let ended = s.read_until(&mut log, usize::MAX, T).await;
    assert!(ended);
    assert_eq!(log.retries.last(), Some(&100), "the reconnect hint");
    // The client reconnects to B (the load balancer no longer sends it to A).
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    let target = log.events.len() + 200; // well past the handover (~1 s of events)
    s.read_until(&mut log, target, T).await;

    let first = assert_contiguous(&log.data());
    let took = a.wait_finished(T).await + t0.elapsed();
    println!(
        "handover: {} events from event {first} without gap or duplicate; pod A drained in {:?}; overlap dropped {}",
        log.events.len(),
        took,
        b.shared.metrics.overlap_dropped.get()
    );
    assert_eq!(b.count("takeovers", "ok"), 1);
    assert_eq!(a.count("handovers", "drain"), 1);
    let deadline = Duration::from_secs(u64::from(
        ssekeeper_sidecar::contract::termination_grace_period_seconds(0, 1, 0),
    ));
    assert!(
        took < deadline,
        "drained in {took:?}, deadline {deadline:?}"
    );
    // B's app was asked with the app's last id, not the cursor.
    let seen = app_b.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let lei: u64 = seen[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("an app id, not a cursor");
    assert!(lei > 10);
    // One session throughout.
    let first_id = Cursor::parse(log.events[0].id.as_deref().unwrap()).unwrap();
    let last_id = Cursor::parse(log.last_id.as_deref().unwrap()).unwrap();
    assert_eq!(first_id.session, last_id.session);
}

/// Takeover by overlap: an app that ignores `Last-Event-ID` and streams a shared sequence (many
/// real apps do) at 500 events/s. The new owner's fresh stream starts at "now"; the old owner
/// must not be fenced before what it records reaches that point, or the events in between are
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_from_an_app_that_ignores_last_event_id_loses_nothing() {
    for round in 0..3 {
        let common::Pair {
            app_a: _app_a,
            app_b: _app_b,
            a,
            b,
        } = common::Pair::start().await;
        let path = "/events?feed=i&interval_ms=2&ignore_lei=1";
        let mut log = Log::default();
        let mut s = Stream::open(a.sse, path, None).await;
        s.read_until(&mut log, 50, T).await;
        a.terminate();
        assert!(s.read_until(&mut log, usize::MAX, T).await);
        let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
        let target = log.events.len() + 1500; // ~3 s: well past the handover
        s.read_until(&mut log, target, T).await;
        let nums: Vec<u64> = log
            .data()
            .iter()
            .map(|d| d.strip_prefix("event ").unwrap().parse().unwrap())
            .collect();
        let breaks: Vec<(u64, u64)> = nums
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            breaks.is_empty(),
            "round {round}: gaps or duplicates at {breaks:?}"
        );
        let first = nums[0];
        println!(
            "round {round}: {} events from event {first} without gap or duplicate across the takeover; overlap dropped {}, fenced entries on A {}",
            log.events.len(),
            b.shared.metrics.overlap_dropped.get(),
            a.shared.metrics.fenced_entries.get()
        );
        assert_eq!(b.count("takeovers", "ok"), 1);
        assert_eq!(b.count("takeover_overlap", "overlapped"), 1);
    }
}

#[tokio::test]
async fn a_crashed_owner_is_taken_over_after_its_lease_expires() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let mut a = start_sidecar(args(app_a.addr, "pod-a"), store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let path = "/events?feed=c&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 20, T).await;
    let t0 = Instant::now();
    a.kill(); // SIGKILL: nothing flushed, lease left to expire
    s.read_until(&mut log, usize::MAX, T).await;
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    let before = log.events.len();
    s.read_until(&mut log, before + 50, T).await;
    let data = log.data();
    let mut nums: Vec<u64> = data.iter().map(|d| d[6..].parse().unwrap()).collect();
    let total = nums.len();
    nums.dedup();
    let dups = total - nums.len();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap after a crash (the app replays): {nums:?}"
    );
    println!(
        "crash takeover after {:?} (lease ttl 2 s): {dups} duplicate(s) from the unflushed window",
        t0.elapsed()
    );
    assert!(dups <= 3, "at most the unflushed window is repeated");
    assert_eq!(b.count("takeovers", "ok"), 1);
}

#[tokio::test]
async fn forged_foreign_and_unknown_cursors_get_defined_answers() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let path = "/events?feed=u&interval_ms=10";

    // Not a cursor (maybe the app's own id from before the sidecar): passed to the app.
    let mut s = Stream::open(sc.sse, path, Some("41")).await;
    let mut log = Log::default();
    s.read_until(&mut log, 1, T).await;
    assert_eq!(log.data(), vec!["event 42"]);
    assert_eq!(sc.count("resumes", "foreign"), 1);
    let known = Cursor::parse(log.last_id.as_deref().unwrap()).unwrap();
    drop(s);

    // A well-formed cursor of a session nobody knows (expired): a fresh stream under a new
    // session, begun with the event that says so.
    let unknown = common::cursor_for("nosuchsession", 5, path);
    let mut s = Stream::open(sc.sse, path, Some(&unknown)).await;
    let mut log = Log::default();
    s.read_until(&mut log, 2, T).await;
    assert_eq!(
        log.events[0].event.as_deref(),
        Some(ssekeeper_sidecar::contract::GAP_EVENT_TYPE)
    );
    assert_eq!(
        log.events[0].data,
        format!(r#"{{"after":"{unknown}","reason":"expired"}}"#)
    );
    let c = Cursor::parse(log.last_id.as_deref().unwrap()).unwrap();
    assert_ne!(c.session.as_str(), "nosuchsession");
    assert_eq!(sc.count("resumes", "unknown"), 1);

    // A cursor far beyond the session's history: refused as forged, fresh stream.
    eventually_true("the first session is recorded", T, || {
        sc.shared.metrics.events_recorded.get() >= 1
    })
    .await;
    let forged = common::cursor_for(known.session.as_str(), u64::MAX - 1, path);
    let mut s = Stream::open(sc.sse, path, Some(&forged)).await;
    let mut log = Log::default();
    s.read_until(&mut log, 1, T).await;
    assert_ne!(
        Cursor::parse(log.last_id.as_deref().unwrap())
            .unwrap()
            .session,
        known.session
    );
    assert_eq!(sc.count("resumes", "forged"), 1);

    // Garbage with control bytes cannot even be sent as a header; garbage text is "foreign".
    let mut s = Stream::open(sc.sse, path, Some("../../etc/passwd{}.x")).await;
    assert_eq!(s.status, 200);
    s.read_until(&mut Log::default(), 1, T).await;
}

/// A store that, when a session is taken over, first lets the old owner write a few more
/// entries: the race step 5 of the handoff must absorb (the old owner records until fenced).
struct Racing {
    late: Mutex<Option<(SessionId, Epoch, Vec<Recorded>)>>,
}

impl StoreHook for Racing {
    fn before<'a>(
        &'a self,
        inner: &'a dyn SessionStore,
        op: Op,
        s: Option<&'a SessionId>,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            if op != Op::AcquireIf {
                return Ok(());
            }
            let late = self
                .late
                .lock()
                .unwrap()
                .take_if(|(id, _, _)| Some(&*id) == s);
            if let Some((id, epoch, entries)) = late {
                inner.append(&id, epoch, &entries).await?;
            }
            Ok(())
        })
    }
}

fn app_event(seq: Seq, k: u64) -> Recorded {
    Recorded {
        seq,
        entry: Entry::Event {
            app_id: Some(k.to_string()),
            event: None,
            data: format!("event {k}"),
        },
    }
}

#[tokio::test]
async fn takeover_delivers_the_old_owners_late_writes_once_and_drops_the_overlap() {
    let inner = memory_store();
    let session = SessionId::parse("planted-session").unwrap();
    let gone = Owner {
        name: "pod-x".into(),
        addr: "127.0.0.1:9".parse().unwrap(),
    };
    // pod-x recorded events 1..=10, started draining and recorded its handover...
    let lease = inner
        .acquire(&session, &gone, Duration::from_secs(30))
        .await
        .unwrap();
    let history: Vec<Recorded> = (1..=10).map(|k| app_event(k, k)).collect();
    inner.append(&session, lease.epoch, &history).await.unwrap();
    inner
        .renew(
            &session,
            lease.epoch,
            LeaseState::Draining,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    inner
        .append(
            &session,
            lease.epoch,
            &[Recorded {
                seq: 11,
                entry: Entry::Handover,
            }],
        )
        .await
        .unwrap();
    // ...and will still record events 11 and 12 right before it is fenced.
    let store = Arc::new(Hooked {
        inner,
        hook: Racing {
            late: Mutex::new(Some((
                session.clone(),
                lease.epoch,
                vec![app_event(12, 11), app_event(13, 12)],
            ))),
        },
    });

    let app = TestApp::start("app-b", Arc::new(Feeds::default())).await;
    let b = start_sidecar(args(app.addr, "pod-b"), store.clone()).await;
    let mut s = Stream::open(
        b.sse,
        "/events?feed=ov&interval_ms=10",
        Some(&common::cursor_for("planted-session", 5, "/events")),
    )
    .await;
    let mut log = Log::default();
    s.read_until(&mut log, 30, T).await;

    assert_eq!(log.data(), ssekeeper_testkit::app::expected(6, 35));
    assert_eq!(
        b.shared.metrics.overlap_dropped.get(),
        2,
        "events 11 and 12 came from the store, not twice"
    );
    assert_eq!(b.count("takeovers", "ok"), 1);
    let seqs: Vec<u64> = log
        .events
        .iter()
        .map(|e| Cursor::parse(e.id.as_deref().unwrap()).unwrap().seq)
        .collect();
    assert_eq!(
        &seqs[..7],
        &[6, 7, 8, 9, 10, 12, 13],
        "the handover marker takes a seq, not a line"
    );
    assert_eq!(
        seqs[7], 14,
        "the sequence continues after the old owner's last entry"
    );
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["GET /events?feed=ov&interval_ms=10 10".to_string()],
        "opened with the app's id"
    );
    let now = store.lease(&session).await.unwrap().unwrap();
    assert_eq!((now.owner.as_str(), now.epoch), ("pod-b", 2));
}

#[tokio::test]
async fn an_abandoned_stream_is_handed_over_after_the_resume_window() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let store = memory_store();
    let mut args_a = args(app_a.addr, "pod-a");
    args_a.resume_window_seconds = 1;
    let a = start_sidecar(args_a, store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;

    let path = "/events?feed=w&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 5, T).await;
    drop(s);
    eventually_true("A gives the upstream up after its resume window", T, || {
        a.count("handovers", "resume_window") == 1 && a.shared.recorders.is_empty()
    })
    .await;
    let asked_a = app_a.seen.lock().unwrap().len();
    // Much later the client comes back elsewhere: what A captured is replayed, then B takes over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = Stream::open(b.sse, path, log.last_id.as_deref()).await;
    s.read_until(&mut log, 250, T).await;
    assert_contiguous(&log.data());
    assert_eq!(b.count("takeovers", "ok"), 1);
    assert_eq!(
        app_a.seen.lock().unwrap().len(),
        asked_a,
        "A's app is not asked again"
    );
}

/// A store whose takeovers wait for each other once armed: two pods that decided to take a
/// session over reach the store at the same moment, deterministically.
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    arrived: std::sync::atomic::AtomicUsize,
    all_in: tokio::sync::Notify,
}

impl Gate {
    async fn gate(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.armed.load(SeqCst) {
            return;
        }
        let all_in = self.all_in.notified();
        if self.arrived.fetch_add(1, SeqCst) + 1 >= 2 {
            self.armed.store(false, SeqCst);
            self.all_in.notify_waiters();
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), all_in).await;
    }
}

impl StoreHook for Gate {
    fn before<'a>(
        &'a self,
        _: &'a dyn SessionStore,
        op: Op,
        _: Option<&'a SessionId>,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            if op == Op::AcquireIf {
                self.gate().await;
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn two_clients_taking_over_one_session_at_once_leave_exactly_one_owner() {
    let feeds = Arc::new(Feeds::default());
    let app_a = TestApp::start("app-a", feeds.clone()).await;
    let app_b = TestApp::start("app-b", feeds.clone()).await;
    let app_c = TestApp::start("app-c", feeds.clone()).await;
    let store = Arc::new(Hooked {
        inner: memory_store(),
        hook: Gate {
            armed: false.into(),
            arrived: 0.into(),
            all_in: tokio::sync::Notify::new(),
        },
    });
    let mut args_a = args(app_a.addr, "pod-a");
    args_a.handover_margin_seconds = 5;
    let a = start_sidecar(args_a, store.clone()).await;
    let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;
    let c = start_sidecar(args(app_c.addr, "pod-c"), store.clone()).await;

    let path = "/events?feed=twin&interval_ms=10";
    let mut log = Log::default();
    let mut s = Stream::open(a.sse, path, None).await;
    s.read_until(&mut log, 10, T).await;
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    a.terminate();
    assert!(s.read_until(&mut log, usize::MAX, T).await);
    let base = log.data();
    let cursor = log.last_id.clone();
    // The same client state resumes on two pods at once (a duplicated tab, a retrying proxy).
    let mut sb = Stream::open(b.sse, path, cursor.as_deref()).await;
    let mut sc = Stream::open(c.sse, path, cursor.as_deref()).await;
    let (mut lb, mut lc) = (Log::default(), Log::default());
    let (ended_b, ended_c) = tokio::join!(
        sb.read_until(&mut lb, 250, T),
        sc.read_until(&mut lc, 250, T)
    );
    assert!(!ended_b && !ended_c, "neither client is cut");
    for l in [&lb, &lc] {
        let all: Vec<String> = base.iter().cloned().chain(l.data()).collect();
        assert_contiguous(&all);
    }
    let ok = b.count("takeovers", "ok") + c.count("takeovers", "ok");
    let lost = b.count("takeovers", "lost") + c.count("takeovers", "lost");
    println!("simultaneous takeovers: {ok} won, {lost} lost (and followed the winner)");
    assert_eq!((ok, lost), (1, 1), "exactly one pod owns the session");
    let owner = store
        .lease(&Cursor::parse(cursor.as_deref().unwrap()).unwrap().session)
        .await
        .unwrap()
        .unwrap();
    assert!(owner.owner == "pod-b" || owner.owner == "pod-c");
}
