//! "Any pod answers any session": MCP-style sessions that live in one app process's memory,
//! behind HAProxy round robin (no affinity at all). Every POST must reach the pod holding its
//! session (through the sidecars' `/internal/forward`) and be answered on the right stream; during
//! a rolling restart no request may hang - each is answered, or refused fast with 404 (MCP's
//! signal to re-initialise).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ssekeeper_tests::harness::ports::client_ip;
use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::mcp::{McpSession, PostRecord, PostResult};
use ssekeeper_tests::scenario::{metric_sum, serial};
use ssekeeper_tests::verify::percentile;

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

const SESSIONS: usize = 10;
const POSTS_PER_SESSION: usize = 100;
/// A POST and its reply together must finish within this, or it counts as hung.
const POST_BOUND: Duration = Duration::from_secs(5);

/// Tally of POST outcomes.
#[derive(Default, Debug)]
struct Tally {
    answered: usize,
    not_found: usize,
    accepted_no_reply: usize,
    other_status: BTreeMap<u16, usize>,
    failed: Vec<String>,
    took: Vec<Duration>,
    reply: Vec<Duration>,
    reopened: usize,
    endpoint_changes: usize,
    /// The POSTs that were not answered, with their context, for the failure message.
    unanswered: Vec<String>,
}

impl Tally {
    fn add(&mut self, r: &PostRecord) {
        self.took.push(r.took);
        match &r.result {
            PostResult::Answered { reply_after } => {
                self.answered += 1;
                self.reply.push(*reply_after);
            }
            PostResult::Status(404) => self.not_found += 1,
            PostResult::Status(s) => *self.other_status.entry(*s).or_default() += 1,
            PostResult::AcceptedNoReply => self.accepted_no_reply += 1,
            PostResult::Failed(e) => self.failed.push(e.clone()),
        }
    }

    fn merge(&mut self, o: Tally) {
        self.answered += o.answered;
        self.not_found += o.not_found;
        self.accepted_no_reply += o.accepted_no_reply;
        for (k, v) in o.other_status {
            *self.other_status.entry(k).or_default() += v;
        }
        self.failed.extend(o.failed);
        self.took.extend(o.took);
        self.reply.extend(o.reply);
        self.reopened += o.reopened;
        self.endpoint_changes += o.endpoint_changes;
        self.unanswered.extend(o.unanswered);
    }

    fn total(&self) -> usize {
        self.took.len()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        write!(
            f,
            "{} POSTs: answered {}, 404 {}, accepted without reply {}, other {:?}, failed {}, \
             sessions re-opened {}, endpoints followed {}; POST p50 {} ms p99 {} ms max {} ms; reply p50 {} ms p99 {} ms",
            self.total(),
            self.answered,
            self.not_found,
            self.accepted_no_reply,
            self.other_status,
            self.failed.len(),
            self.reopened,
            self.endpoint_changes,
            ms(percentile(&self.took, 50.0)),
            ms(percentile(&self.took, 99.0)),
            ms(self.took.iter().max().copied()),
            ms(percentile(&self.reply, 50.0)),
            ms(percentile(&self.reply, 99.0)),
        )
    }
}

/// One session's client: `posts` POSTs in a row; after a 404 it re-initialises (a new `/sse`)
/// when `reopen` is set, as an MCP client does.
async fn session_client(front: SocketAddr, i: usize, posts: usize, reopen: bool) -> Tally {
    let src = Some(client_ip(i));
    let mut tally = Tally::default();
    let mut session = McpSession::open(front, src, POST_BOUND)
        .await
        .expect("session opens");
    for n in 0..posts {
        let body = format!("{{\"client\":{i},\"n\":{n}}}");
        let r = session.post(front, src, &body, POST_BOUND).await;
        let gone = matches!(r.result, PostResult::Status(404));
        if !matches!(r.result, PostResult::Answered { .. }) {
            tally.unanswered.push(format!(
                "client {i} post {n} to session {} (endpoint changes so far {}): {:?} after {:?}",
                &r.session[..8.min(r.session.len())],
                session.endpoint_changes,
                r.result,
                r.took
            ));
        }
        tally.add(&r);
        if gone && reopen {
            tally.endpoint_changes += session.endpoint_changes;
            session.close().await;
            session = McpSession::open(front, src, POST_BOUND)
                .await
                .expect("session re-opens");
            tally.reopened += 1;
        }
    }
    tally.endpoint_changes += session.endpoint_changes;
    session.close().await;
    tally
}

async fn forwarded(cluster: &Cluster) -> f64 {
    let mut total = 0.0;
    for name in cluster.pod_names() {
        if let Some(m) = cluster.metrics(&name).await {
            total += metric_sum(&m, "ssekeeper_forwards_total", Some("outcome=\"accepted\""));
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_reaches_its_session_through_round_robin() {
    let _turn = serial().await;
    bounded(Duration::from_secs(180), "MCP steady", steady()).await;
}

async fn steady() {
    let t0 = Instant::now();
    let cfg = ClusterConfig::new("mcp", Mode::Sidecar, Balance::RoundRobin, 3);
    let cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let front = cluster.frontend();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|i| tokio::spawn(session_client(front, i, POSTS_PER_SESSION, false)))
        .collect();
    let mut tally = Tally::default();
    for t in tasks {
        tally.merge(t.await.expect("session task"));
    }
    let fwd = forwarded(&cluster).await;
    println!(
        "MCP round robin, 3 pods: {tally}; forwarded between sidecars {fwd}; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(tally.total(), SESSIONS * POSTS_PER_SESSION);
    assert_eq!(
        tally.answered,
        tally.total(),
        "100% answered on the right stream: {tally}"
    );
    // Round robin over 3 pods sends about 2 in 3 POSTs to a pod that does not own the session.
    assert!(
        fwd >= tally.total() as f64 / 3.0,
        "requests were forwarded: {fwd}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_post_hangs_during_a_rolling_restart() {
    let _turn = serial().await;
    bounded(Duration::from_secs(180), "MCP rolling", rolling()).await;
}

async fn rolling() {
    let t0 = Instant::now();
    let cfg = ClusterConfig::new("mcp-roll", Mode::Sidecar, Balance::RoundRobin, 3);
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let front = cluster.frontend();
    // Enough POSTs per session to keep posting through the whole roll (~15 s).
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|i| tokio::spawn(session_client(front, i, 400, true)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reports = cluster.rolling_restart().await.expect("rolling restart");
    let mut tally = Tally::default();
    for t in tasks {
        tally.merge(t.await.expect("session task"));
    }
    for r in &reports {
        println!("terminated {r}");
    }
    println!(
        "MCP round robin during a rolling restart: {tally}; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        tally.failed.is_empty(),
        "no POST hangs or fails: {:?}",
        &tally.failed[..tally.failed.len().min(5)]
    );
    assert_eq!(
        tally.accepted_no_reply,
        0,
        "an accepted POST is answered: {tally}\n{}",
        tally.unanswered.join("\n")
    );
    assert!(tally.other_status.is_empty(), "only 202 or 404: {tally}");
    let slowest = tally.took.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < POST_BOUND,
        "every POST finishes fast: {slowest:?}"
    );
    assert!(
        tally.answered > tally.total() / 2,
        "most POSTs are answered: {tally}"
    );
    for r in &reports {
        assert!(r.clean(), "clean termination: {r}");
    }
}
