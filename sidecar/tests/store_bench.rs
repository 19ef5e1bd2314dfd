//! Rough throughput of `append` against a local Redis (and memory for reference), printed so the
//! figures land in the test log. Each phase is bounded by time; the assertions are only sanity
//! floors (a store that manages fewer than 50 appends/s is broken, not slow).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssekeeper_sidecar::cursor::SessionId;
use ssekeeper_sidecar::store::{Entry, MemoryStore, Owner, Recorded, RedisStore, SessionStore};
use ssekeeper_testkit::redis::RedisServer;

const PHASE: Duration = Duration::from_millis(700);
const LONG: Duration = Duration::from_secs(600);

fn batch(first: u64, n: u64, payload: &str) -> Vec<Recorded> {
    (first..first + n)
        .map(|seq| Recorded {
            seq,
            entry: Entry::Event {
                app_id: Some(seq.to_string()),
                event: Some("token".into()),
                data: payload.to_string(),
            },
        })
        .collect()
}

/// `writers` sessions appending batches of `size` back to back for [`PHASE`]; returns
/// (appends/s, events/s).
async fn measure(st: &Arc<dyn SessionStore>, tag: &str, writers: usize, size: u64) -> (f64, f64) {
    let payload = "x".repeat(200);
    let owner = Owner {
        name: "bench".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], 8801)),
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let st = st.clone();
            let owner = owner.clone();
            let payload = payload.clone();
            let s = SessionId::parse(&format!("{tag}-{writers}-{size}-{w}")).unwrap();
            tokio::spawn(async move {
                let l = st.acquire(&s, &owner, LONG).await.unwrap();
                let mut next = 1;
                let mut appends = 0u64;
                while start.elapsed() < PHASE {
                    st.append(&s, l.epoch, &batch(next, size, &payload))
                        .await
                        .unwrap();
                    next += size;
                    appends += 1;
                }
                appends
            })
        })
        .collect();
    let mut appends = 0;
    for t in tasks {
        appends += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = appends as f64 / secs;
    (per_s, per_s * size as f64)
}

async fn report(st: Arc<dyn SessionStore>, name: &str) {
    for (writers, size) in [(1, 1), (1, 64), (16, 1), (16, 64)] {
        let (a, e) = measure(&st, name, writers, size).await;
        println!(
            "{name:>6}: {writers:>2} writer(s), batch {size:>2} x 200 B: {a:>9.0} appends/s {e:>10.0} events/s"
        );
        assert!(a > 50.0, "{name}: only {a:.0} appends/s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; `make bench` runs it in release"]
async fn append_throughput() {
    println!(
        "(profile: {}; the client side is slower in debug builds)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let server = RedisServer::start().await;
    let redis: Arc<dyn SessionStore> = Arc::new(
        RedisStore::connect(&server.url(), "bench", "svc", 1000, LONG)
            .await
            .unwrap(),
    );
    report(redis, "redis").await;
    report(Arc::new(MemoryStore::new(1000, LONG)), "memory").await;
}
