//! The `SessionStore` contract, one test body run against every store: memory, a real single
//! Redis server, and (for the core operations) a real 3-master Redis Cluster and a Sentinel setup.
//! The handoff protocol relies on exactly these behaviours, so any store must pass all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ssekeeper_sidecar::cursor::SessionId;
use ssekeeper_sidecar::store::{
    Entry, Lease, LeaseState, MemoryStore, Owner, Recorded, RedisConfig, RedisStore, Retention,
    SessionStore, StoreError,
};
use ssekeeper_testkit::Patience;
use ssekeeper_testkit::redis::{RedisCluster, RedisSentinel, RedisServer};

/// Where a test's store lives; each backend makes stores with the limits a test asks for.
enum Backend {
    Memory,
    Redis(String),
}

impl Backend {
    async fn store(&self, history_limit: u32, session_ttl: Duration) -> Arc<dyn SessionStore> {
        self.store_with(Retention::count(history_limit), session_ttl)
            .await
    }

    async fn store_with(
        &self,
        retention: Retention,
        session_ttl: Duration,
    ) -> Arc<dyn SessionStore> {
        match self {
            Backend::Memory => Arc::new(MemoryStore::with_retention(retention, session_ttl)),
            Backend::Redis(url) => {
                let mut cfg =
                    RedisConfig::new(url, "test-ns", "chat", retention.limit, session_ttl);
                cfg.retention = retention;
                Arc::new(RedisStore::with_config(cfg).await.expect("connect"))
            }
        }
    }

    /// How many entries beyond the limit trimming may keep (`MAXLEN ~` trims whole radix-tree
    /// nodes of at most 100 entries).
    fn trim_slack(&self) -> usize {
        match self {
            Backend::Memory => 0,
            Backend::Redis(_) => 100,
        }
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn owner(name: &str, port: u16) -> Owner {
    Owner {
        name: name.into(),
        addr: SocketAddr::from(([10, 0, 0, 1], port)),
    }
}

fn ev(seq: u64, app_id: Option<&str>) -> Recorded {
    Recorded {
        seq,
        entry: Entry::Event {
            app_id: app_id.map(str::to_string),
            event: Some("msg".into()),
            data: format!("payload {seq}\nsecond line"),
        },
    }
}

fn at(seq: u64, entry: Entry) -> Recorded {
    Recorded { seq, entry }
}

const LONG: Duration = Duration::from_secs(60);

async fn append_read_last(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-basic");
    assert_eq!(st.read_after(&s, 0, 10).await.unwrap(), vec![]);
    assert_eq!(st.last(&s).await.unwrap(), None);
    assert_eq!(st.last_app_id(&s).await.unwrap(), None);
    assert_eq!(st.lease(&s).await.unwrap(), None);

    let lease = st.acquire(&s, &owner("pod-a", 8801), LONG).await.unwrap();
    assert_eq!(lease.epoch, 1, "a new session starts at epoch 1");
    let batch = vec![
        ev(1, Some("a1")),
        at(2, Entry::Retry(2500)),
        ev(3, None),
        ev(4, Some("a4")),
        // No `id:` field: the last event id stays what it was (the reader records it so).
        ev(5, Some("a4")),
    ];
    st.append(&s, 1, &batch).await.unwrap();
    st.append(&s, 1, &[at(6, Entry::Handover), at(7, Entry::End)])
        .await
        .unwrap();

    let all = st.read_after(&s, 0, 100).await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(&all[..5], &batch[..]);
    assert_eq!(st.read_after(&s, 3, 2).await.unwrap(), all[3..5].to_vec());
    assert_eq!(st.read_after(&s, 7, 10).await.unwrap(), vec![]);
    assert_eq!(st.read_after(&s, 0, 0).await.unwrap(), vec![]);
    assert_eq!(st.read_after(&s, u64::MAX, 5).await.unwrap(), vec![]);
    assert_eq!(st.last(&s).await.unwrap(), Some(at(7, Entry::End)));
    assert_eq!(st.last_app_id(&s).await.unwrap().as_deref(), Some("a4"));

    // A reordered batch is refused whole: nothing of it is stored.
    let err = st
        .append(&s, 1, &[ev(8, Some("x")), ev(7, None)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Malformed(_)), "{err:?}");
    assert_eq!(st.read_after(&s, 0, 100).await.unwrap(), all);
    // A batch wholly stored already (a retry of a write that was applied) changes nothing.
    st.append(&s, 1, &[ev(6, Some("x")), ev(7, Some("y"))])
        .await
        .unwrap();
    assert_eq!(st.read_after(&s, 0, 100).await.unwrap(), all);
    assert_eq!(st.last_app_id(&s).await.unwrap().as_deref(), Some("a4"));

    // An empty `id:` reset the last event id: a new owner must send its app none.
    st.append(&s, 1, &[ev(8, None), at(9, Entry::Retry(100))])
        .await
        .unwrap();
    assert_eq!(st.last_app_id(&s).await.unwrap(), None);
    st.append(&s, 1, &[ev(10, Some("a10"))]).await.unwrap();
    assert_eq!(st.last_app_id(&s).await.unwrap().as_deref(), Some("a10"));

    // Other sessions are separate.
    assert_eq!(st.read_after(&sid("other"), 0, 10).await.unwrap(), vec![]);
    st.ping().await.unwrap();
}

/// Issue 8, bug 3: a write that timed out after the store applied it is retried together with
/// newer entries; the stored prefix is skipped and the new entries are kept (no gap), while a
/// stale owner is still refused.
async fn retried_batch_keeps_the_new_entries(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-retry");
    let lease = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    let first: Vec<_> = (1..=4).map(|q| ev(q, Some(&q.to_string()))).collect();
    st.append(&s, lease.epoch, &first).await.unwrap();
    // The "timed out" batch 3..=4 goes again with 5..=6 behind it.
    let retry: Vec<_> = (3..=6).map(|q| ev(q, Some(&q.to_string()))).collect();
    st.append(&s, lease.epoch, &retry).await.unwrap();
    let stored = st.read_after(&s, 0, 100).await.unwrap();
    assert_eq!(
        stored.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "every entry once, none lost"
    );
    assert_eq!(
        stored[2..4],
        first[2..4],
        "the stored prefix is the first write's"
    );
    assert_eq!(st.last_app_id(&s).await.unwrap().as_deref(), Some("6"));
    // Fencing comes first: a stale owner's retry stores nothing.
    let b_lease = st.acquire(&s, &owner("pod-b", 2), LONG).await.unwrap();
    let err = st
        .append(&s, lease.epoch, &[ev(6, None), ev(7, None)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { current } if current == b_lease.epoch),
        "{err:?}"
    );
    assert_eq!(st.read_after(&s, 0, 100).await.unwrap().len(), 6);
}

async fn fencing(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-fence");
    let a = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    st.append(&s, a.epoch, &[ev(1, Some("1"))]).await.unwrap();
    let b_lease = st.acquire(&s, &owner("pod-b", 2), LONG).await.unwrap();
    assert_eq!(b_lease.epoch, a.epoch + 1);
    assert_eq!(
        st.lease(&s).await.unwrap(),
        Some(Lease {
            owner: "pod-b".into(),
            addr: owner("pod-b", 2).addr,
            epoch: 2,
            state: LeaseState::Live
        })
    );
    let stale = st
        .append(
            &s,
            a.epoch,
            &[ev(2, Some("2")), ev(3, Some("3")), ev(4, None)],
        )
        .await;
    assert_eq!(stale, Err(StoreError::Fenced { current: 2 }));
    assert_eq!(
        st.renew(&s, a.epoch, LeaseState::Draining, LONG).await,
        Err(StoreError::Fenced { current: 2 })
    );
    assert_eq!(
        st.read_after(&s, 0, 10).await.unwrap().len(),
        1,
        "no partial append"
    );
    assert_eq!(st.last_app_id(&s).await.unwrap().as_deref(), Some("1"));
    // The new owner continues the sequence.
    st.append(&s, 2, &[ev(2, Some("b2"))]).await.unwrap();
    assert_eq!(st.last(&s).await.unwrap(), Some(ev(2, Some("b2"))));
}

/// A conditional takeover succeeds only from the epoch the taker saw: of two takers that saw
/// the same epoch exactly one wins, and the loser learns the winner's epoch without writing.
async fn conditional_takeover(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-cas");
    assert_eq!(st.epoch(&s).await.unwrap(), 0);
    // A session nobody knows is taken from epoch 0 only, and a failed attempt leaves no trace.
    assert_eq!(
        st.acquire_if(&s, &owner("pod-x", 9), LONG, 3).await,
        Err(StoreError::Fenced { current: 0 })
    );
    assert_eq!(st.lease(&s).await.unwrap(), None);
    let a = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    assert_eq!(st.epoch(&s).await.unwrap(), a.epoch);
    st.renew(&s, a.epoch, LeaseState::Draining, LONG)
        .await
        .unwrap();
    let seen = st.epoch(&s).await.unwrap();
    let (ob, oc) = (owner("pod-b", 2), owner("pod-c", 3));
    let (rb, rc) = tokio::join!(
        st.acquire_if(&s, &ob, LONG, seen),
        st.acquire_if(&s, &oc, LONG, seen),
    );
    let (winner, loser) = match (rb, rc) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one takeover must win: {other:?}"),
    };
    assert_eq!(winner.epoch, seen + 1);
    assert_eq!(loser, StoreError::Fenced { current: seen + 1 });
    assert_eq!(st.lease(&s).await.unwrap(), Some(winner.clone()));
    assert_eq!(st.epoch(&s).await.unwrap(), winner.epoch);
    // The expired or released lease keeps its epoch: a taker compares against it.
    st.release(&s, winner.epoch).await.unwrap();
    assert_eq!(st.lease(&s).await.unwrap(), None);
    assert_eq!(st.epoch(&s).await.unwrap(), winner.epoch);
    let next = st
        .acquire_if(&s, &owner("pod-d", 4), LONG, winner.epoch)
        .await
        .unwrap();
    assert_eq!(next.epoch, winner.epoch + 1);
}

/// An old owner appending in a tight loop while another pod takes over: every append that
/// returned Ok is stored whole, nothing after the takeover is, and no batch is split.
async fn fencing_is_atomic_under_concurrency(b: &Backend) {
    const BATCH: u64 = 8;
    let st = b.store(u32::MAX, LONG).await;
    let s = sid("sess-race");
    let a = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let writer = {
        let st = st.clone();
        let s = s.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut next = 1;
            let mut last_ok = 0;
            while Instant::now() < deadline {
                let batch: Vec<Recorded> = (next..next + BATCH).map(|q| ev(q, None)).collect();
                match st.append(&s, a.epoch, &batch).await {
                    Ok(_) => {
                        last_ok = next + BATCH - 1;
                        next += BATCH;
                        progress.store(last_ok, Ordering::Relaxed);
                    }
                    Err(StoreError::Fenced { current }) => return (last_ok, current),
                    Err(e) => panic!("{e:?}"),
                }
                tokio::task::yield_now().await;
            }
            panic!("never fenced");
        })
    };
    // Take over while the writer is mid-stream (after a few acknowledged batches).
    let patience = Patience::within(Duration::from_secs(10)).every(Duration::from_millis(5));
    let mid_stream =
        || std::future::ready((progress.load(Ordering::Relaxed) >= 5 * BATCH).then_some(()));
    let _ = ssekeeper_testkit::poll(patience, mid_stream).await;
    let taken = st.acquire(&s, &owner("pod-b", 2), LONG).await.unwrap();
    let (last_ok, current) = writer.await.unwrap();
    assert_eq!(current, taken.epoch);
    assert!(last_ok > 0, "the writer made progress before the takeover");
    let stored = st.read_after(&s, 0, usize::MAX).await.unwrap();
    assert_eq!(
        stored.len() as u64,
        last_ok,
        "exactly the acknowledged appends"
    );
    assert_eq!(stored.len() as u64 % BATCH, 0, "no batch split");
    assert!(stored.iter().zip(1..).all(|(r, q)| r.seq == q));
    println!("fencing race: {last_ok} entries acknowledged before the takeover, none after");
}

async fn wait_after_wakes_and_times_out(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-wait");
    let l = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();

    // Nothing arrives: waits the whole block, then answers empty.
    let t = Instant::now();
    let got = st
        .wait_after(&s, 0, 10, Duration::from_millis(300))
        .await
        .unwrap();
    let waited = t.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(290),
        "returned early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "overslept: {waited:?}"
    );

    // An append wakes a blocked tail promptly.
    let tail = {
        let st = st.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let got = st
                .wait_after(&s, 0, 10, Duration::from_secs(10))
                .await
                .unwrap();
            (got, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    st.append(&s, l.epoch, &[ev(1, Some("1")), ev(2, None)])
        .await
        .unwrap();
    let (got, waited) = tail.await.unwrap();
    assert_eq!(got, vec![ev(1, Some("1")), ev(2, None)]);
    assert!(waited < Duration::from_secs(2), "woke late: {waited:?}");
    println!("wait_after woke {waited:?} after starting (append at ~150 ms)");

    // Data already there: no waiting at all, and only what is after the cursor.
    let t = Instant::now();
    let got = st
        .wait_after(&s, 1, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got, vec![ev(2, None)]);
    assert!(t.elapsed() < Duration::from_secs(1));

    // A tail on a session that does not exist yet is woken by its first append.
    let s2 = sid("sess-wait-new");
    let tail = {
        let st = st.clone();
        let s2 = s2.clone();
        tokio::spawn(async move { st.wait_after(&s2, 0, 10, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let l2 = st.acquire(&s2, &owner("pod-a", 1), LONG).await.unwrap();
    st.append(&s2, l2.epoch, &[ev(1, None)]).await.unwrap();
    assert_eq!(tail.await.unwrap().unwrap(), vec![ev(1, None)]);
}

async fn history_is_trimmed(b: &Backend) {
    const LIMIT: u32 = 50;
    let st = b.store(LIMIT, LONG).await;
    let s = sid("sess-trim");
    let l = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    for chunk in (1..=500u64).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<Recorded> = chunk.iter().map(|q| ev(*q, Some(&q.to_string()))).collect();
        st.append(&s, l.epoch, &batch).await.unwrap();
    }
    let kept = st.read_after(&s, 0, 10_000).await.unwrap();
    let n = kept.len();
    assert!(
        n >= LIMIT as usize && n <= LIMIT as usize + b.trim_slack(),
        "kept {n} entries for a limit of {LIMIT}"
    );
    assert_eq!(kept.last().unwrap().seq, 500, "the newest are kept");
    assert!(
        kept.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "contiguous"
    );
    assert_eq!(st.last_app_id(&s).await.unwrap().as_deref(), Some("500"));
    println!("history limit {LIMIT}: kept {n} of 500");
}

/// Appends `from..=to` in batches of 10; whether any append said the cap cut into the floor.
async fn append_range(
    st: &dyn SessionStore,
    s: &SessionId,
    epoch: u64,
    from: u64,
    to: u64,
) -> bool {
    let mut cut = false;
    for chunk in (from..=to).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<Recorded> = chunk.iter().map(|q| ev(*q, Some(&q.to_string()))).collect();
        cut |= st.append(s, epoch, &batch).await.unwrap().cut_into_floor;
    }
    cut
}

async fn history_keeps_a_time_floor_beyond_the_limit(b: &Backend) {
    let r = Retention {
        limit: 10,
        floor: Duration::from_secs(2),
        cap: 100_000,
    };
    let st = b.store_with(r, LONG).await;
    let s = sid("sess-floor");
    let l = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    assert!(!append_range(&*st, &s, l.epoch, 1, 2000).await);
    let kept = st.read_after(&s, 0, 10_000).await.unwrap();
    assert_eq!(
        kept.len(),
        2000,
        "every entry younger than the floor is kept"
    );
    // Older than the floor (Redis judges to the second): back to the count.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    append_range(&*st, &s, l.epoch, 2001, 2010).await;
    let n = st.read_after(&s, 0, 10_000).await.unwrap().len();
    assert!(
        n >= 10 && n <= 10 + b.trim_slack(),
        "past the floor only the limit is kept: {n}"
    );
}

async fn the_cap_bounds_the_floor_and_says_so(b: &Backend) {
    let r = Retention {
        limit: 10,
        floor: Duration::from_secs(60),
        cap: 300,
    };
    let st = b.store_with(r, LONG).await;
    let s = sid("sess-cap");
    let l = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    assert!(
        append_range(&*st, &s, l.epoch, 1, 1000).await,
        "the cut is reported"
    );
    let kept = st.read_after(&s, 0, 10_000).await.unwrap();
    assert!(
        kept.len() >= 300 && kept.len() <= 300 + b.trim_slack(),
        "the cap holds: {}",
        kept.len()
    );
    assert_eq!(kept.last().unwrap().seq, 1000);
}

async fn a_draining_session_is_not_trimmed_until_taken_over(b: &Backend) {
    let r = Retention {
        limit: 10,
        floor: Duration::ZERO,
        cap: 100_000,
    };
    let st = b.store_with(r, LONG).await;
    let s = sid("sess-drain");
    let a = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    append_range(&*st, &s, a.epoch, 1, 100).await;
    st.renew(&s, a.epoch, LeaseState::Draining, LONG)
        .await
        .unwrap();
    append_range(&*st, &s, a.epoch, 101, 1000).await;
    st.append(&s, a.epoch, &[at(1001, Entry::Handover)])
        .await
        .unwrap();
    let kept = st.read_after(&s, 0, 10_000).await.unwrap();
    assert!(
        kept.len() >= 900,
        "what the drain recorded stays for the new owner: {}",
        kept.len()
    );
    assert_eq!(kept.last().unwrap().entry, Entry::Handover);
    // The new owner's appends trim by the rule again (once a second has passed: Redis judges
    // the floor to the second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b2 = st.acquire(&s, &owner("pod-b", 2), LONG).await.unwrap();
    append_range(&*st, &s, b2.epoch, 1002, 1011).await;
    let n = st.read_after(&s, 0, 10_000).await.unwrap().len();
    assert!(n <= 10 + b.trim_slack(), "trimmed after the takeover: {n}");
}

async fn ttl_expires_and_slides(b: &Backend) {
    let ttl = Duration::from_millis(1500);
    let st = b.store(1000, ttl).await;
    let s = sid("sess-ttl");
    let l = st
        .acquire(&s, &owner("pod-a", 1), Duration::from_millis(200))
        .await
        .unwrap();
    st.append(&s, l.epoch, &[ev(1, Some("1"))]).await.unwrap();
    // Writes every ~600 ms keep it alive well past its TTL.
    for q in 2..=4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        st.append(&s, l.epoch, &[ev(q, Some(&q.to_string()))])
            .await
            .unwrap();
    }
    assert_eq!(
        st.read_after(&s, 0, 10).await.unwrap().len(),
        4,
        "slid by writes"
    );
    // Silence longer than the TTL: the whole session is gone.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_eq!(st.read_after(&s, 0, 10).await.unwrap(), vec![]);
    assert_eq!(st.last(&s).await.unwrap(), None);
    assert_eq!(st.last_app_id(&s).await.unwrap(), None);
    assert_eq!(st.lease(&s).await.unwrap(), None);
    assert_eq!(
        st.append(&s, l.epoch, &[ev(5, None)]).await,
        Err(StoreError::Fenced { current: 0 }),
        "an expired session fences its old owner"
    );
    let again = st.acquire(&s, &owner("pod-b", 2), LONG).await.unwrap();
    assert_eq!(again.epoch, 1, "a session that expired starts over");
}

async fn lease_expires_by_time(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-lease");
    let o = owner("pod-a", 8801);
    let l = st
        .acquire(&s, &o, Duration::from_millis(1000))
        .await
        .unwrap();
    assert_eq!(st.lease(&s).await.unwrap(), Some(l.clone()));
    st.renew(
        &s,
        l.epoch,
        LeaseState::Draining,
        Duration::from_millis(1000),
    )
    .await
    .unwrap();
    assert_eq!(
        st.lease(&s).await.unwrap().map(|l| l.state),
        Some(LeaseState::Draining)
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(st.lease(&s).await.unwrap(), None, "expired by time");
    // Nobody took over: the owner may renew (revive) its lapsed lease.
    st.renew(&s, l.epoch, LeaseState::Live, LONG).await.unwrap();
    assert_eq!(
        st.lease(&s).await.unwrap(),
        Some(Lease {
            state: LeaseState::Live,
            ..l.clone()
        })
    );
}

async fn release_only_by_the_holder(b: &Backend) {
    let st = b.store(1000, LONG).await;
    let s = sid("sess-release");
    let a = st.acquire(&s, &owner("pod-a", 1), LONG).await.unwrap();
    let bl = st.acquire(&s, &owner("pod-b", 2), LONG).await.unwrap();
    assert_eq!(
        st.release(&s, a.epoch).await,
        Err(StoreError::Fenced { current: bl.epoch })
    );
    assert_eq!(
        st.lease(&s).await.unwrap(),
        Some(bl.clone()),
        "B's lease survives"
    );
    st.release(&s, bl.epoch).await.unwrap();
    assert_eq!(st.lease(&s).await.unwrap(), None);
    assert!(
        matches!(
            st.renew(&s, bl.epoch, LeaseState::Live, LONG).await,
            Err(StoreError::Fenced { .. })
        ),
        "a released lease is not revived"
    );
    st.release(&sid("never-existed"), 3).await.unwrap();
    // History outlives the lease.
    st.append(&s, bl.epoch, &[ev(1, None)]).await.unwrap();
    assert_eq!(st.read_after(&s, 0, 10).await.unwrap().len(), 1);
}

/// One `#[tokio::test]` per backend for each contract function.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = super::RedisServer::start().await;
                    super::$name(&super::Backend::Redis(server.url())).await;
                }
            )*
        }
    };
}

contract!(
    append_read_last,
    retried_batch_keeps_the_new_entries,
    fencing,
    conditional_takeover,
    fencing_is_atomic_under_concurrency,
    wait_after_wakes_and_times_out,
    history_is_trimmed,
    history_keeps_a_time_floor_beyond_the_limit,
    the_cap_bounds_the_floor_and_says_so,
    a_draining_session_is_not_trimmed_until_taken_over,
    ttl_expires_and_slides,
    lease_expires_by_time,
    release_only_by_the_holder,
);

/// The same core contract over a real 3-master Redis Cluster (scripts must stay in one slot).
#[tokio::test]
async fn redis_cluster_core_contract() {
    let cluster = RedisCluster::start(3).await;
    let b = Backend::Redis(cluster.url());
    append_read_last(&b).await;
    retried_batch_keeps_the_new_entries(&b).await;
    fencing(&b).await;
    conditional_takeover(&b).await;
    wait_after_wakes_and_times_out(&b).await;
    release_only_by_the_holder(&b).await;
}

/// The same core contract through Sentinel.
#[tokio::test]
async fn redis_sentinel_core_contract() {
    let sentinel = RedisSentinel::start().await;
    let b = Backend::Redis(sentinel.url());
    append_read_last(&b).await;
    fencing(&b).await;
    wait_after_wakes_and_times_out(&b).await;
}
