//! MCP with the official SDKs on both ends: the `mcp` Python SDK's own server as the app (its
//! sessions live in one process's memory, as every MCP server's do) on three pods behind HAProxy
//! round robin (no affinity at all), and the SDKs' own clients on each transport (Python: the
//! legacy HTTP+SSE transport, stateful Streamable HTTP, the 2026-07-28 generation; TypeScript
//! `@modelcontextprotocol/sdk`: HTTP+SSE and Streamable HTTP), with default session
//! keys and a rolling restart of every pod mid-run. No call may hang; a session whose pod goes
//! away may see at most one fast, explicit failure (then the client re-initialises).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use ssekeeper_tests::harness::{
    AppLaunch, Balance, Binaries, Cluster, ClusterConfig, Mode, bounded,
};
use ssekeeper_tests::scenario::serial;
use ssekeeper_tests::sdk;

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

const SESSIONS: usize = 4;
const CALLS: usize = 150;
const DELAY_MS: u32 = 40;
/// The client's bound on one call: beyond it the call counts as hung.
const CALL_TIMEOUT_S: u32 = 8;

#[derive(Debug, Deserialize)]
struct Call {
    session: usize,
    outcome: String,
    error: Option<String>,
    ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct SessionReport {
    session: usize,
    reinits: usize,
}

#[derive(Debug, Deserialize)]
struct Report {
    calls: Vec<Call>,
    sessions: Vec<SessionReport>,
}

/// The SDK's server as the pods' app.
fn mcp_server() -> AppLaunch {
    AppLaunch {
        program: sdk::python(),
        args: vec![
            sdk::script("mcp_server.py").display().to_string(),
            "--host={host}".into(),
            "--port={port}".into(),
            "--pod-name={pod}".into(),
        ],
        ready_path: "/healthz".into(),
    }
}

/// Which SDK's client.
#[derive(Debug, Clone, Copy)]
enum Sdk {
    Python,
    TypeScript,
}

/// Run the SDK client's sessions on `transport` through a rolling restart of every pod: through
/// the sidecars behind round robin, or (`Mode::Direct`) as people deploy MCP servers today,
/// plain pods behind client-IP affinity (`balance source`).
async fn through_a_rollout(mode: Mode, sdk_client: Sdk, transport: &str) -> Report {
    let balance = match mode {
        Mode::Sidecar => Balance::RoundRobin,
        Mode::Direct => Balance::Source,
    };
    let mut cfg = ClusterConfig::new("mcp-sdk", mode, balance, 3);
    cfg.app = Some(mcp_server());
    cfg.sidecar_tweak = |a| a.handover_margin_seconds = 2;
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let (program, script) = match sdk_client {
        Sdk::Python => (sdk::python(), sdk::script("mcp_calls.py")),
        Sdk::TypeScript => ("node".into(), sdk::node_mcp_calls()),
    };
    let mut client = sdk::ClientRun::spawn(
        &program,
        &[
            script.display().to_string(),
            format!("http://{}", cluster.frontend()),
            transport.to_string(),
            SESSIONS.to_string(),
            CALLS.to_string(),
            DELAY_MS.to_string(),
            CALL_TIMEOUT_S.to_string(),
        ],
    );
    client.expect_line("ready", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rolled = Instant::now();
    for r in cluster.rolling_restart().await.expect("rolling restart") {
        println!("{transport}: terminated {r}");
        // uvicorn re-raises SIGTERM after its graceful shutdown (a signal exit, not 0): the app's
        // business; it must not need the deadline's SIGKILL, and the sidecar must exit 0.
        let sidecar_clean = r.sidecar.as_ref().is_none_or(|s| s.clean());
        assert!(!r.app.killed && sidecar_clean, "exited by themselves: {r}");
    }
    println!(
        "{transport}: rolled 3 pods in {:.1}s",
        rolled.elapsed().as_secs_f64()
    );
    client.report(Duration::from_secs(120)).await
}

fn tally(transport: &str, r: &Report) -> BTreeMap<String, usize> {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for c in &r.calls {
        *by.entry(c.outcome.clone()).or_default() += 1;
    }
    let mut ms: Vec<f64> = r.calls.iter().filter_map(|c| c.ms).collect();
    ms.sort_by(f64::total_cmp);
    let p99 = ms.get(ms.len() * 99 / 100).copied().unwrap_or(0.0);
    let reinits: usize = r.sessions.iter().map(|s| s.reinits).sum();
    println!(
        "{transport}: {} calls in {} sessions through a rolling restart: {by:?}, re-initialised \
         {reinits}, call p99 {p99:.0} ms",
        r.calls.len(),
        r.sessions.len()
    );
    for c in r.calls.iter().filter(|c| c.outcome != "answered") {
        println!("  session {}: {} {:?}", c.session, c.outcome, c.error);
    }
    by
}

async fn check(sdk_client: Sdk, transport: &str) {
    let report = through_a_rollout(Mode::Sidecar, sdk_client, transport).await;
    let transport = &format!("{sdk_client:?} {transport}");
    let by = tally(transport, &report);
    assert_eq!(report.calls.len(), SESSIONS * CALLS);
    assert_eq!(by.get("hung"), None, "{transport}: no call hangs");
    for s in &report.sessions {
        let failed = report
            .calls
            .iter()
            .filter(|c| c.session == s.session && c.outcome != "answered")
            .count();
        assert!(
            failed <= 3,
            "{transport}: session {} failed {failed} calls (one pod going away each time at most)",
            s.session
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sdk_sessions_survive_a_rolling_restart() {
    let _turn = serial().await;
    bounded(
        Duration::from_secs(900),
        "MCP SDK through rollouts",
        async {
            for transport in ["streamable", "sse", "modern"] {
                check(Sdk::Python, transport).await;
            }
            for transport in ["streamable", "sse"] {
                check(Sdk::TypeScript, transport).await;
            }
            // The same clients without ssekeeper, for the README's comparison (reported only:
            // what plain pods do is not ours to assert).
            for (sdk_client, transport) in [
                (Sdk::Python, "streamable"),
                (Sdk::Python, "sse"),
                (Sdk::TypeScript, "streamable"),
                (Sdk::TypeScript, "sse"),
            ] {
                let report = through_a_rollout(Mode::Direct, sdk_client, transport).await;
                tally(
                    &format!(
                        "baseline (plain pods, client-IP affinity) {sdk_client:?} {transport}"
                    ),
                    &report,
                );
            }
        },
    )
    .await;
}
