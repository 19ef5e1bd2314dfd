//! Redis-only behaviour against real servers: outages answer `Unavailable` quickly and the store
//! recovers by itself; purging removes exactly one service; foreign or corrupt data is
//! `Malformed`, never a panic; settings are validated with clear errors.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ssekeeper_sidecar::contract::SidecarArgs;
use ssekeeper_sidecar::cursor::SessionId;
use ssekeeper_sidecar::store::{
    self, ConnectError, Entry, OpenError, Owner, Recorded, RedisConfig, RedisStore, SessionStore,
    StoreError, purge_service,
};
use ssekeeper_testkit::Patience;
use ssekeeper_testkit::ports::free_port;
use ssekeeper_testkit::redis::{RedisCluster, RedisSentinel, RedisServer};

/// An outage must be reported within this (the proxy degrades instead of hanging).
const QUICK: Duration = Duration::from_millis(2000);
const LONG: Duration = Duration::from_secs(60);

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn owner() -> Owner {
    Owner {
        name: "pod-a".into(),
        addr: SocketAddr::from(([10, 0, 0, 1], 8801)),
    }
}

fn ev(seq: u64) -> Recorded {
    Recorded {
        seq,
        entry: Entry::Event {
            app_id: Some(format!("a{seq}")),
            event: None,
            data: "x".into(),
        },
    }
}

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(url, "ns", "chat", 1000, LONG)
        .await
        .expect("connect")
}

/// Calls `f` until it succeeds, at most `limit`; returns how long recovery took.
async fn until_ok<F, Fut>(limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let t = Instant::now();
    let last = std::cell::RefCell::new(None);
    let patience = Patience::within(limit).every(Duration::from_millis(50));
    let recovered = ssekeeper_testkit::poll(patience, || {
        let (call, last) = (f(), &last);
        async move { call.await.map_err(|e| *last.borrow_mut() = Some(e)).ok() }
    })
    .await;
    match recovered {
        Some(()) => t.elapsed(),
        None => panic!("not recovered within {limit:?}: {:?}", last.into_inner()),
    }
}

fn assert_quick_unavailable<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, StoreError>,
    took: Duration,
) {
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{what}: expected Unavailable, got {r:?}"
    );
    assert!(took < QUICK, "{what}: took {took:?}");
}

#[tokio::test]
async fn a_restart_is_unavailable_quickly_then_recovers_by_itself() {
    let mut server = RedisServer::start().await;
    let st = store(&server.url()).await;
    let s = sid("sess-restart");
    let l = st.acquire(&s, &owner(), LONG).await.unwrap();
    st.append(&s, l.epoch, &[ev(1)]).await.unwrap();
    // Park a dedicated blocking connection in the pool, so recovery covers it too.
    assert_eq!(
        st.wait_after(&s, 0, 10, Duration::from_secs(1))
            .await
            .unwrap()
            .len(),
        1
    );
    let got = st
        .wait_after(&s, 1, 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(
        st.blocking_stats().1,
        1,
        "one idle blocking connection kept"
    );

    server.stop().await;
    for _ in 0..3 {
        let t = Instant::now();
        let r = st.append(&s, l.epoch, &[ev(2)]).await;
        assert_quick_unavailable("append while down", r, t.elapsed());
        let t = Instant::now();
        let r = st.ping().await;
        assert_quick_unavailable("ping while down", r, t.elapsed());
        let t = Instant::now();
        let r = st.wait_after(&s, 1, 10, Duration::from_millis(300)).await;
        assert_quick_unavailable("wait_after while down", r, t.elapsed());
    }

    server.restart().await;
    let took = until_ok(Duration::from_secs(10), || st.ping()).await;
    println!("recovered {took:?} after the restart");
    // The server lost everything (no persistence): a new owner starts over at epoch 1.
    let l = st.acquire(&s, &owner(), LONG).await.unwrap();
    assert_eq!(l.epoch, 1);
    st.append(&s, l.epoch, &[ev(1)]).await.unwrap();
    // The pooled blocking connection died with the server; the tail still works.
    let tail = st
        .wait_after(&s, 1, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(tail.is_empty());
    let tail = st
        .wait_after(&s, 0, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(tail, vec![ev(1)]);
}

/// A server that accepts nothing and answers nothing (SIGSTOP) must not hang any call.
#[tokio::test]
async fn a_hung_server_times_out_instead_of_hanging() {
    let server = RedisServer::start().await;
    let st = store(&server.url()).await;
    let s = sid("sess-hang");
    let l = st.acquire(&s, &owner(), LONG).await.unwrap();
    let pid = server.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let result = async {
        let t = Instant::now();
        let r = st.append(&s, l.epoch, &[ev(1)]).await;
        assert_quick_unavailable("append to a hung server", r, t.elapsed());
        let t = Instant::now();
        let r = st.lease(&s).await;
        assert_quick_unavailable("lease from a hung server", r, t.elapsed());
        let t = Instant::now();
        let r = st.wait_after(&s, 0, 10, Duration::from_millis(200)).await;
        assert_quick_unavailable("wait_after on a hung server", r, t.elapsed());
    };
    // Resume the server even if an assertion fails, so Drop can reap it.
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    let batch = [ev(1)];
    until_ok(Duration::from_secs(10), || async {
        st.append(&s, l.epoch, &batch).await.map(drop)
    })
    .await;
}

#[tokio::test]
async fn a_store_opens_while_redis_is_down_and_says_so() {
    let port = free_port();
    let st = store(&format!("redis://127.0.0.1:{port}")).await;
    let t = Instant::now();
    let r = st.ping().await;
    assert_quick_unavailable("ping with nothing listening", r, t.elapsed());
}

async fn seed(url: &str, ns: &str, name: &str, sessions: usize) -> u64 {
    let st = RedisStore::connect(url, ns, name, 100, LONG).await.unwrap();
    for i in 0..sessions {
        let s = sid(&format!("s{i}"));
        let l = st.acquire(&s, &owner(), LONG).await.unwrap();
        st.append(&s, l.epoch, &[ev(1)]).await.unwrap();
    }
    // events, epoch, lease, appid per session (the marks key exists only past the history
    // limit).
    4 * sessions as u64
}

#[tokio::test]
async fn purge_removes_exactly_one_service() {
    let server = RedisServer::start().await;
    let url = server.url();
    let planted = seed(&url, "ns", "chat", 300).await;
    seed(&url, "ns", "chat2", 3).await;
    seed(&url, "ns2", "chat", 3).await;
    seed(&url, "ns", "cha", 3).await;
    server.cli(&["set", "unrelated", "1"]);
    let before: u64 = server.cli(&["dbsize"]).parse().unwrap();

    let t = Instant::now();
    let removed = purge_service(&url, "ns", "chat").await.unwrap();
    println!("purged {removed} keys in {:?}", t.elapsed());
    assert_eq!(removed, planted);
    let after: u64 = server.cli(&["dbsize"]).parse().unwrap();
    assert_eq!(after, before - planted);
    assert_eq!(server.cli(&["keys", "ssekeeper:ns/chat:*"]), "");
    assert_ne!(server.cli(&["keys", "ssekeeper:ns/chat2:*"]), "");
    assert_ne!(server.cli(&["keys", "ssekeeper:ns2/chat:*"]), "");
    assert_ne!(server.cli(&["keys", "ssekeeper:ns/cha:*"]), "");
    assert_eq!(server.cli(&["get", "unrelated"]), "1");
    assert_eq!(
        purge_service(&url, "ns", "chat").await.unwrap(),
        0,
        "idempotent"
    );
}

#[tokio::test]
async fn purge_scans_every_cluster_master() {
    let cluster = RedisCluster::start(3).await;
    let url = cluster.url();
    let planted = seed(&url, "ns", "chat", 60).await;
    let other = seed(&url, "ns", "other", 10).await;
    let count = |pattern: &str| -> usize {
        cluster
            .nodes()
            .iter()
            .map(|n| n.cli(&["--scan", "--pattern", pattern]).lines().count())
            .sum()
    };
    let holding = cluster
        .nodes()
        .iter()
        .filter(|n| {
            !n.cli(&["--scan", "--pattern", "ssekeeper:ns/chat:*"])
                .is_empty()
        })
        .count();
    assert!(
        holding >= 2,
        "keys should spread over masters (on {holding})"
    );
    assert_eq!(purge_service(&url, "ns", "chat").await.unwrap(), planted);
    assert_eq!(count("ssekeeper:ns/chat:*"), 0);
    assert_eq!(count("ssekeeper:ns/other:*") as u64, other);
}

#[tokio::test]
async fn purge_reports_an_outage_and_a_bad_url() {
    let r = purge_service(&format!("redis://127.0.0.1:{}", free_port()), "ns", "chat").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = purge_service("http://nope", "ns", "chat").await;
    assert!(
        matches!(r, Err(StoreError::Unavailable(ref m)) if m.contains("scheme")),
        "{r:?}"
    );
}

/// Keys this version never writes (or corrupt ones) are `Malformed`, for every operation.
#[tokio::test]
async fn garbage_in_the_store_is_malformed_not_a_panic() {
    let server = RedisServer::start().await;
    let st = store(&server.url()).await;
    let key = |s: &str, suffix: &str| format!("ssekeeper:ns/chat:{{{s}}}:{suffix}");
    let malformed = |what: &str, r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::Malformed(_))), "{what}: {r:?}");
        println!("{what}: {}", r.unwrap_err());
    };

    // An epoch that is not a counter.
    server.cli(&["set", &key("g1", "epoch"), "not-a-number"]);
    let s = sid("g1");
    malformed("acquire", st.acquire(&s, &owner(), LONG).await.map(drop));
    malformed("append", st.append(&s, 1, &[ev(1)]).await.map(drop));
    malformed(
        "renew",
        st.renew(&s, 1, store::LeaseState::Live, LONG).await,
    );
    malformed("release", st.release(&s, 1).await);
    assert_eq!(
        server.cli(&["get", &key("g1", "epoch")]),
        "not-a-number",
        "untouched"
    );

    // The events key of the wrong type.
    server.cli(&["set", &key("g2", "events"), "a string"]);
    let s = sid("g2");
    malformed("read_after", st.read_after(&s, 0, 10).await.map(drop));
    malformed(
        "wait_after",
        st.wait_after(&s, 0, 10, Duration::from_millis(100))
            .await
            .map(drop),
    );
    malformed("last", st.last(&s).await.map(drop));
    let l = st.acquire(&s, &owner(), LONG).await.unwrap();
    malformed("append", st.append(&s, l.epoch, &[ev(1)]).await.map(drop));

    // A foreign stream entry (auto id, unknown fields).
    server.cli(&["xadd", &key("g3", "events"), "*", "foo", "bar"]);
    let s = sid("g3");
    malformed("read_after", st.read_after(&s, 0, 10).await.map(drop));
    malformed("last", st.last(&s).await.map(drop));
    malformed(
        "wait_after",
        st.wait_after(&s, 0, 10, Duration::from_millis(100))
            .await
            .map(drop),
    );

    // An entry with our id form but a broken body.
    server.cli(&["xadd", &key("g4", "events"), "1-0", "k", "r", "r", "soon"]);
    malformed(
        "read_after",
        st.read_after(&sid("g4"), 0, 10).await.map(drop),
    );

    // A lease hash with junk in it, and an app id key of the wrong type.
    server.cli(&[
        "hset",
        &key("g5", "lease"),
        "owner",
        "x",
        "addr",
        "nowhere",
        "epoch",
        "1",
        "state",
        "live",
        "until",
        "99999999999999",
    ]);
    malformed("lease", st.lease(&sid("g5")).await.map(drop));
    server.cli(&["hset", &key("g6", "lease"), "owner", "x"]);
    malformed("lease (incomplete)", st.lease(&sid("g6")).await.map(drop));
    server.cli(&["hset", &key("g7", "appid"), "f", "v"]);
    malformed("last_app_id", st.last_app_id(&sid("g7")).await.map(drop));

    // The store is still fine for everyone else.
    let s = sid("clean");
    let l = st.acquire(&s, &owner(), LONG).await.unwrap();
    st.append(&s, l.epoch, &[ev(1)]).await.unwrap();
}

#[tokio::test]
async fn auth_comes_from_the_url_and_a_wrong_password_is_unavailable_without_leaking_it() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]).await;
    let port = server.port();
    let good = store(&format!("redis://:s3cret-pw@127.0.0.1:{port}")).await;
    good.ping().await.unwrap();
    let s = sid("authed");
    let l = good.acquire(&s, &owner(), LONG).await.unwrap();
    good.append(&s, l.epoch, &[ev(1)]).await.unwrap();

    let bad = store(&format!("redis://:wrong-pw-123@127.0.0.1:{port}")).await;
    let t = Instant::now();
    let r = bad.ping().await;
    let msg = format!("{r:?}");
    println!("wrong password: {msg}");
    assert_quick_unavailable("wrong password", r, t.elapsed());
    assert!(!msg.contains("wrong-pw-123"), "{msg}");
}

#[tokio::test]
async fn tls_to_an_untrusted_server_fails_cleanly() {
    // A real TLS Redis with a self-signed certificate: the store must refuse it (the system
    // roots do not trust it) with Unavailable, proving the TLS stack is wired (no panic about a
    // missing crypto provider).
    let dir = std::env::temp_dir().join(format!("ssekeeper-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, keyf) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&keyf)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl req failed");
    let tls_port = free_port();
    let _server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        keyf.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let st = store(&format!("rediss://127.0.0.1:{tls_port}")).await;
    let t = Instant::now();
    let r = st.ping().await;
    println!("TLS: {r:?}");
    assert_quick_unavailable("TLS with an untrusted certificate", r, t.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn settings_are_validated_with_clear_errors() {
    for (url, needle) in [
        ("http://h", "unknown scheme"),
        ("redis+sentinel://h:26379", "master name"),
        ("", "empty"),
    ] {
        match RedisStore::connect(url, "ns", "chat", 10, LONG).await {
            Err(ConnectError::Url(e)) => assert!(e.to_string().contains(needle), "{url}: {e}"),
            Err(e) => panic!("{url}: {e}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
    assert!(matches!(
        RedisStore::connect("redis://h", "ns", "chat", 0, LONG).await,
        Err(ConnectError::Invalid(_))
    ));

    let mut args = SidecarArgs::parse_from([
        "x",
        "--app-port=8080",
        "--service-namespace=ns",
        "--service-name=chat",
        "--store=redis",
    ]);
    args.redis_url = None;
    let err = store::open(&args).await.err().expect("refused");
    assert!(matches!(err, OpenError::MissingRedisUrl));
    assert!(err.to_string().contains("SSEKEEPER_REDIS_URL"), "{err}");

    let server = RedisServer::start().await;
    args.redis_url = Some(server.url());
    let st: Arc<dyn SessionStore> = store::open(&args).await.unwrap();
    st.ping().await.unwrap();
    args.store = ssekeeper_sidecar::contract::StoreKind::Memory;
    let st = store::open(&args).await.unwrap();
    st.ping().await.unwrap();
}

/// After a Sentinel failover the store finds the new master by itself (the demoted one answers
/// READONLY, which drops the cached connection).
#[tokio::test]
async fn a_sentinel_failover_is_followed() {
    let sentinel = RedisSentinel::start_replicated().await;
    let st = store(&sentinel.url()).await;
    let s = sid("before-failover");
    let l = st.acquire(&s, &owner(), LONG).await.unwrap();
    st.append(&s, l.epoch, &[ev(1)]).await.unwrap();

    let t = Instant::now();
    sentinel.failover().await;
    let replica = sentinel.replica.as_ref().unwrap();
    // Writes must reach the new master within the re-check interval (plus slack), even though
    // the old master keeps accepting them until the sentinel demotes it.
    let attempt = std::sync::atomic::AtomicU32::new(0);
    let took = until_ok(Duration::from_secs(15), || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = sid(&format!("after-failover-{n}"));
        let l = st.acquire(&s, &owner(), LONG).await?;
        st.append(&s, l.epoch, &[ev(1)]).await?;
        let key = format!("ssekeeper:ns/chat:{{after-failover-{n}}}:events");
        if replica.cli(&["exists", &key]) == "1" {
            Ok(())
        } else {
            Err(StoreError::Unavailable("written to the old master".into()))
        }
    })
    .await;
    println!(
        "failover announced after {:?}; writes reached the new master {took:?} later",
        t.elapsed() - took
    );
    assert!(
        took < Duration::from_secs(5),
        "followed the failover late: {took:?}"
    );
    assert!(replica.cli(&["role"]).starts_with("master"));
    let n = attempt.load(std::sync::atomic::Ordering::Relaxed) - 1;
    let s2 = sid(&format!("after-failover-{n}"));
    // Tails use the new master too.
    assert_eq!(
        st.wait_after(&s2, 0, 10, Duration::from_millis(200))
            .await
            .unwrap(),
        vec![ev(1)]
    );
}

/// With every blocking slot taken, a tail still answers (late, after its block), losing nothing.
#[tokio::test]
async fn exhausted_blocking_slots_degrade_to_a_late_read() {
    let server = RedisServer::start().await;
    let mut cfg = RedisConfig::new(&server.url(), "ns", "chat", 100, LONG);
    cfg.max_blocking = 1;
    let st = Arc::new(RedisStore::with_config(cfg).await.unwrap());
    let (a, b) = (sid("tail-a"), sid("tail-b"));
    let la = st.acquire(&a, &owner(), LONG).await.unwrap();
    let lb = st.acquire(&b, &owner(), LONG).await.unwrap();

    let hog = {
        let st = st.clone();
        let a = a.clone();
        tokio::spawn(async move { st.wait_after(&a, 0, 10, Duration::from_millis(1500)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(st.blocking_stats().0, 1, "the only slot is taken");
    let late = {
        let st = st.clone();
        let b = b.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let got = st.wait_after(&b, 0, 10, Duration::from_millis(500)).await;
            (got, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    st.append(&b, lb.epoch, &[ev(1)]).await.unwrap();
    let (got, waited) = late.await.unwrap();
    assert_eq!(got.unwrap(), vec![ev(1)], "nothing lost");
    assert!(
        waited >= Duration::from_millis(450),
        "answered at the end of its block: {waited:?}"
    );
    st.append(&a, la.epoch, &[ev(1)]).await.unwrap();
    assert_eq!(hog.await.unwrap().unwrap(), vec![ev(1)]);
}

/// Issue 8, bug 2: on a runtime saturated with busy tasks (thousands of streams), calls must
/// still reach Redis. The redis crate's connection task used to run on that runtime, one task
/// among thousands: requests waited in its channel past their deadline, were skipped unsent, and
/// every call timed out while Redis sat idle. The store drives its connections on a thread of
/// its own, so here every append is answered and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_runtime_does_not_starve_the_store() {
    let server = RedisServer::start().await;
    let st = Arc::new(store(&server.url()).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 2,000 tasks that each burn 50 µs per poll: one round of the runtime takes ~100 ms.
    let mut burners = Vec::new();
    for _ in 0..2000 {
        let stop = stop.clone();
        burners.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(50) {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    // 1,500 sessions appending one entry after another for 3 s (bounded by count too).
    let until = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for i in 0..1500 {
        let st = st.clone();
        writers.push(tokio::spawn(async move {
            let s = sid(&format!("busy-{i}"));
            let epoch = st.acquire(&s, &owner(), LONG).await?.epoch;
            let mut seq = 0;
            while Instant::now() < until && seq < 1000 {
                st.append(&s, epoch, &[ev(seq + 1)]).await?;
                seq += 1;
            }
            Ok::<_, StoreError>((s, seq))
        }));
    }
    let mut written = Vec::new();
    let mut failures = Vec::new();
    for w in writers {
        match w.await.unwrap() {
            Ok(done) => written.push(done),
            Err(e) => failures.push(e.to_string()),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        b.await.unwrap();
    }
    let appended: u64 = written.iter().map(|(_, n)| n).sum();
    println!(
        "{} writers finished, {} failed, {appended} appends answered",
        written.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of 1500 writers failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    for (s, n) in written.iter().step_by(100) {
        let stored = st.read_after(s, 0, usize::MAX).await.unwrap();
        assert_eq!(
            stored.len() as u64,
            *n,
            "{s:?} has every entry it was told it has"
        );
    }
}

/// Appends of many sessions at once share pipelines (one round trip for many sessions, see
/// `store/redis/coalesce.rs`), and each still gets its own verdict: a session taken over by
/// another pod is refused as fenced and one with a corrupt epoch key as malformed, while the
/// others in the same call are stored. A Redis that lost its scripts mid-way (SCRIPT FLUSH) is
/// answered by loading them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_pipelines_and_keep_their_own_verdicts() {
    let server = RedisServer::start().await;
    let st = Arc::new(store(&server.url()).await);
    let sessions: Vec<SessionId> = (0..200).map(|i| sid(&format!("many-{i}"))).collect();
    let mut epochs = Vec::new();
    for s in &sessions {
        epochs.push(st.acquire(s, &owner(), LONG).await.unwrap().epoch);
    }
    // Every third session is taken over by another pod: its old owner is fenced from now on.
    let other = Owner {
        name: "pod-b".into(),
        addr: SocketAddr::from(([10, 0, 0, 2], 8801)),
    };
    for s in sessions.iter().step_by(3) {
        st.acquire(s, &other, LONG).await.unwrap();
    }
    // And one session's epoch key is corrupt: only that session's appends are malformed.
    let corrupt = 1;
    server.cli(&[
        "set",
        &format!("ssekeeper:ns/chat:{{{}}}:epoch", sessions[corrupt].as_str()),
        "not-a-number",
    ]);
    let before = st.append_stats();
    for round in 0..10u64 {
        if round == 5 {
            let mut c = redis::Client::open(server.url().as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let calls = sessions.iter().zip(&epochs).map(|(s, &epoch)| {
            let st = st.clone();
            let s = s.clone();
            tokio::spawn(async move { st.append(&s, epoch, &[ev(round + 1)]).await })
        });
        for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
            let verdict = call.await.unwrap();
            if i == corrupt {
                assert!(
                    matches!(verdict, Err(StoreError::Malformed(_))),
                    "the corrupt session, got {verdict:?}"
                );
            } else if i % 3 == 0 {
                assert!(
                    matches!(verdict, Err(StoreError::Fenced { .. })),
                    "session {i} was taken over, got {verdict:?}"
                );
            } else {
                assert!(verdict.is_ok(), "session {i}, round {round}: {verdict:?}");
            }
        }
    }
    let (calls, trips) = {
        let after = st.append_stats();
        (after.0 - before.0, after.1 - before.1)
    };
    println!("{calls} appends in {trips} round trips");
    assert!(calls >= 2000, "every append was sent ({calls})");
    assert!(
        trips * 2 <= calls,
        "appends issued together share round trips: {calls} in {trips}"
    );
    for (i, s) in sessions.iter().enumerate() {
        let stored = st.read_after(s, 0, usize::MAX).await.unwrap();
        if i == corrupt {
            continue;
        }
        let want = if i % 3 == 0 { 0 } else { 10 };
        assert_eq!(stored.len(), want, "session {i}");
    }
}
