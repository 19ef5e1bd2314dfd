//! The harness proven without the sidecar: HAProxy in front of the demo apps directly, as SSE
//! services are deployed today. These tests show the harness reproduces both sides of the
//! problem: a chat room whose app replays by its own ids survives a rolling restart (so the
//! client, harness and verification are sound), while in-memory MCP sessions behind round-robin
//! fail - the bug the sidecar exists to fix.

use std::time::{Duration, Instant};

use ssekeeper_tests::harness::{Balance, Binaries, Cluster, ClusterConfig, Mode, bounded};
use ssekeeper_tests::mcp::{McpSession, PostResult};
use ssekeeper_tests::scenario::ChatCrowd;

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_rolling_restart_keeps_a_replaying_app_whole() {
    bounded(
        Duration::from_secs(120),
        "direct rolling restart",
        direct_rolling_restart(),
    )
    .await;
}

async fn direct_rolling_restart() {
    let t0 = Instant::now();
    let mut cfg = ClusterConfig::new("baseline-roll", Mode::Direct, Balance::Source, 3);
    cfg.publish_rate = Some(20.0);
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let crowd = ChatCrowd::spawn(cluster.frontend(), 30, |_, c| c);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(10)).await,
        "every client receives"
    );
    let reports = cluster.rolling_restart().await.expect("rolling restart");
    for r in &reports {
        println!("terminated {r}");
        assert!(r.clean(), "clean termination: {r}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = cluster.stop_publisher().await.expect("publisher stops");
    assert!(
        crowd.wait_caught_up(last, Duration::from_secs(15)).await,
        "clients catch up to {last}"
    );
    let summary = crowd.finish(last).await;
    println!(
        "direct rolling restart: last seq {last}; {summary}; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        summary.perfect(),
        summary.clients.len(),
        "{}",
        summary.worst(5)
    );
    assert!(
        summary.reconnects() >= summary.clients.len(),
        "every client was moved at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_round_robin_loses_in_memory_mcp_sessions() {
    bounded(Duration::from_secs(60), "direct MCP", direct_mcp()).await;
}

async fn direct_mcp() {
    let cfg = ClusterConfig::new("baseline-mcp", Mode::Direct, Balance::RoundRobin, 3);
    let cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let front = cluster.frontend();
    let (mut answered, mut not_found, mut other) = (0, 0, 0);
    for s in 0..5 {
        let mut session = McpSession::open(front, None, Duration::from_secs(5))
            .await
            .expect("session opens");
        for i in 0..20 {
            let r = session
                .post(
                    front,
                    None,
                    &format!("{{\"s\":{s},\"i\":{i}}}"),
                    Duration::from_secs(3),
                )
                .await;
            match r.result {
                PostResult::Answered { .. } => answered += 1,
                PostResult::Status(404) => not_found += 1,
                _ => other += 1,
            }
        }
        session.close().await;
    }
    println!("direct round robin MCP: answered {answered}, 404 {not_found}, other {other} of 100");
    assert_eq!(other, 0);
    // With 3 pods and round robin, about 2 in 3 land on a pod that never heard of the session.
    assert!(
        not_found >= 40,
        "the harness must reproduce the bug; 404s: {not_found}"
    );
}
