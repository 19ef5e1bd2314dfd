//! Bad and hostile input, each with its defined answer, and after each the proxy still serves:
//! a malformed app stream, forged `Last-Event-ID`s, an unknown session, forged sidecar-to-sidecar
//! forwarding, an oversized event and a client that does not read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use ssekeeper_sidecar::contract::paths;
use ssekeeper_sidecar::cursor::Cursor;
use ssekeeper_testkit::app::testing::MALFORMED_EXPECTED;
use ssekeeper_testkit::client::{
    EventSource, EventSourceConfig, EventSourceReport, Outcome, request,
};
use ssekeeper_tests::demo::payload::AnswerToken;
use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::scenario::{metric_sum, serial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

/// Event size bound given to the sidecars here (the oversized test sends more).
const MAX_EVENT_BYTES: u32 = 64 * 1024;
/// Per-client buffer given to the sidecars here (the slow-consumer test overruns it).
const CLIENT_BUFFER_BYTES: u32 = 64 * 1024;
/// How long a client may keep its buffer full before it is cut.
const CLIENT_STALL_MILLIS: u32 = 1000;

async fn cluster(label: &str) -> Cluster {
    let mut cfg = ClusterConfig::new(label, Mode::Sidecar, Balance::RoundRobin, 2);
    cfg.sidecar_tweak = |a| {
        a.max_event_bytes = MAX_EVENT_BYTES;
        a.client_buffer_bytes = CLIENT_BUFFER_BYTES;
        a.client_stall_millis = CLIENT_STALL_MILLIS;
    };
    Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts")
}

/// Read a finite stream to its `done` event (bounded), optionally resuming from `last_event_id`.
async fn read_stream(
    front: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
) -> EventSourceReport {
    let mut c = EventSourceConfig::new(front, path);
    c.last_event_id = last_event_id.map(str::to_string);
    c.stop_on_event = Some("done".into());
    c.max_connects = 3;
    c.time_limit = Duration::from_secs(20);
    c.idle_timeout = Some(Duration::from_secs(5));
    EventSource::spawn(c).join().await
}

fn tokens(r: &EventSourceReport) -> Vec<u32> {
    r.events
        .iter()
        .filter_map(|e| serde_json::from_str::<AnswerToken>(&e.data).ok())
        .map(|t| t.token)
        .collect()
}

/// The proxy still serves: a short answer completes through HAProxy.
async fn assert_still_serving(front: SocketAddr) {
    let r = read_stream(front, "/answer?n=3&interval_ms=1", None).await;
    assert_eq!(
        r.outcome,
        Outcome::Finished,
        "still serving: {:?}",
        r.attempts
    );
    assert_eq!(tokens(&r), vec![1, 2, 3], "still serving");
}

async fn metric_total(cluster: &Cluster, name: &str, label: Option<&str>) -> f64 {
    let mut total = 0.0;
    for pod in cluster.pod_names() {
        total += metric_sum(
            &cluster.metrics(&pod).await.unwrap_or_default(),
            name,
            label,
        );
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_app_stream_reaches_the_client_as_a_browser_reads_it() {
    let _turn = serial().await;
    bounded(Duration::from_secs(60), "malformed", async {
        let c = cluster("bad-malformed").await;
        let r = read_stream(c.frontend(), "/testing/malformed", None).await;
        let got: Vec<(Option<&str>, &str)> = r
            .events
            .iter()
            .map(|e| (e.event.as_deref(), e.data.as_str()))
            .collect();
        println!(
            "malformed stream: {} events delivered, outcome {:?}",
            got.len(),
            r.outcome
        );
        assert_eq!(
            got, MALFORMED_EXPECTED,
            "the spec's reading of the app's bytes"
        );
        for e in &r.events {
            let id = e.id.as_deref().unwrap_or_default();
            assert!(
                Cursor::parse(id).is_ok(),
                "every event carries a resumable cursor: {id:?}"
            );
        }
        assert_still_serving(c.frontend()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_last_event_ids_get_their_defined_answers() {
    let _turn = serial().await;
    bounded(Duration::from_secs(90), "forged ids", async {
        let c = cluster("bad-ids").await;
        let front = c.frontend();
        let path = "/answer?n=5&interval_ms=1";
        let all: Vec<u32> = (1..=5).collect();

        // Not a cursor: passed to the app unchanged (it may be the app's own id).
        let r = read_stream(front, path, Some("not a cursor!")).await;
        assert_eq!(tokens(&r), all, "garbage id: the app starts over");
        let r = read_stream(front, path, Some("3")).await;
        assert_eq!(tokens(&r), vec![4, 5], "the app's own id reaches the app");

        // A well-formed cursor of a session nobody knows (its tag made up): a fresh stream.
        let unknown = format!(
            "{:032x}.7.{:016x}",
            rand::random::<u128>(),
            rand::random::<u64>()
        );
        let r = read_stream(front, path, Some(&unknown)).await;
        assert_eq!(tokens(&r), all, "unknown session: fresh stream");

        // A real session's cursor edited (pushed far beyond its history): its tag no longer
        // verifies, a fresh stream.
        let real = read_stream(front, path, None).await;
        let last = real
            .events
            .iter()
            .rev()
            .find_map(|e| e.id.as_deref().and_then(|id| Cursor::parse(id).ok()))
            .expect("a real stream carries cursors");
        for seq in [last.seq + 1_000_000, u64::MAX] {
            let forged = Cursor {
                seq,
                ..last.clone()
            }
            .to_string();
            let started = Instant::now();
            let r = read_stream(front, path, Some(&forged)).await;
            println!(
                "forged cursor {forged}: tokens {:?} in {} ms",
                tokens(&r),
                started.elapsed().as_millis()
            );
            assert_eq!(tokens(&r), all, "cursor beyond the history: fresh stream");
        }
        let mut outcomes = Vec::new();
        for label in [
            "foreign",
            "unknown",
            "unverified",
            "forged",
            "store",
            "local",
            "ended",
        ] {
            let want = format!("outcome=\"{label}\"");
            let n = metric_total(&c, "ssekeeper_resumes_total", Some(&want)).await;
            outcomes.push(format!("{label} {n}"));
        }
        println!("resumes by outcome: {}", outcomes.join(", "));
        assert_still_serving(front).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_is_refused_fast() {
    let _turn = serial().await;
    bounded(Duration::from_secs(60), "unknown session", async {
        let c = cluster("bad-session").await;
        for key in [
            format!("{:032x}", rand::random::<u128>()),
            "%7Bbad%7D".to_string(),
        ] {
            let started = Instant::now();
            let r = request(
                c.frontend(),
                None,
                Method::POST,
                &format!("/messages?sessionId={key}"),
                &[],
                Bytes::from_static(b"{}"),
                Duration::from_secs(5),
                4096,
            )
            .await
            .expect("answered");
            let took = started.elapsed();
            println!(
                "unknown session {key}: {} in {} ms",
                r.status,
                took.as_millis()
            );
            assert_eq!(r.status.as_u16(), 404, "MCP's re-initialise signal");
            assert!(took < Duration::from_secs(1), "fast: {took:?}");
        }
        assert_still_serving(c.frontend()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_is_forbidden() {
    let _turn = serial().await;
    bounded(Duration::from_secs(60), "forged forward", async {
        let c = cluster("bad-forward").await;
        let name = c.pod_names()[0].clone();
        let admin = c
            .pod(&name)
            .and_then(|p| p.admin_addr())
            .expect("admin port");
        let path = format!(
            "{}/messages?sessionId={:032x}",
            paths::FORWARD,
            rand::random::<u128>()
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            .to_string();
        let fake_sig = "ab".repeat(32);
        let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("unsigned", vec![]),
            (
                "bad signature",
                vec![
                    ("x-ssekeeper-forward-ts", now.as_str()),
                    ("x-ssekeeper-forward-sig", fake_sig.as_str()),
                ],
            ),
            (
                "stale",
                vec![
                    ("x-ssekeeper-forward-ts", "1000"),
                    ("x-ssekeeper-forward-sig", fake_sig.as_str()),
                ],
            ),
        ];
        for (what, headers) in cases {
            let r = request(
                admin,
                None,
                Method::POST,
                &path,
                &headers,
                Bytes::from_static(b"{}"),
                Duration::from_secs(5),
                4096,
            )
            .await
            .expect("answered");
            println!("forged forward ({what}): {}", r.status);
            assert_eq!(r.status.as_u16(), 403, "{what}");
        }
        let refused = metric_total(&c, "ssekeeper_forwards_total", None).await
            - metric_total(&c, "ssekeeper_forwards_total", Some("outcome=\"accepted\"")).await;
        assert!(refused >= 3.0, "refusals are counted: {refused}");
        assert_still_serving(c.frontend()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_event_is_dropped_and_the_stream_goes_on() {
    let _turn = serial().await;
    bounded(Duration::from_secs(60), "oversized", async {
        let c = cluster("bad-oversized").await;
        let path = format!("/testing/oversized?bytes={}", MAX_EVENT_BYTES * 4);
        let r = read_stream(c.frontend(), &path, None).await;
        let data: Vec<&str> = r.events.iter().map(|e| e.data.as_str()).collect();
        let dropped = metric_total(&c, "ssekeeper_oversized_events_total", None).await;
        println!("oversized: delivered {data:?}, dropped {dropped}");
        assert_eq!(data, vec!["small-1", "small-3", "oversized"]);
        assert!(dropped >= 1.0, "the drop is counted");
        assert_still_serving(c.frontend()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_and_the_proxy_keeps_serving() {
    let _turn = serial().await;
    bounded(Duration::from_secs(90), "slow consumer", async {
        let c = cluster("bad-slow").await;
        let name = c.pod_names()[0].clone();
        let sse = c.pod(&name).expect("pod").serving_addr();
        // 16 MiB offered to a client that reads nothing for 3 s (three times the stall bound),
        // with a small receive window; `Connection: close` so the end of the response is EOF.
        let (n, size) = (4096, 4096);
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
        let mut s = sock.connect(sse).await.expect("connect");
        let req = format!(
            "GET /testing/flood?n={n}&bytes={size} HTTP/1.1\r\nHost: x\r\n\
             Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("request");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut received = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut received)).await;
        let total = n * size;
        let done = received.windows(11).any(|w| w == b"event: done");
        let cut = metric_sum(
            &c.metrics(&name).await.unwrap_or_default(),
            "ssekeeper_slow_consumers_total",
            None,
        );
        println!(
            "slow consumer: received {} of {} bytes, stream ended {}, done seen {done}, cut {cut}",
            received.len(),
            total,
            read.is_ok()
        );
        assert!(
            read.is_ok(),
            "the sidecar ends the stream of a client that does not read"
        );
        assert!(!done, "the stream was cut before the end");
        assert!(received.len() < total, "not everything was buffered for it");
        assert!(cut >= 1.0, "the cut is counted");
        assert_still_serving(c.frontend()).await;
    })
    .await;
}
