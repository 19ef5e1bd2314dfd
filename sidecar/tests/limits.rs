//! Bounded connections, tried as an attacker would against the real binary in its own process
//! with a small descriptor limit (`prlimit --nofile`): a flood of connections each holding an
//! unfinished request head. The sidecar must keep its memory and descriptors, keep answering its
//! probes, serve again once the flood times out, and say (once, not 20 times a second) what hit
//! the bound.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssekeeper_sidecar::contract::{SidecarArgs, StoreKind};
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::fetch;
use ssekeeper_testkit::ports::free_port;
use ssekeeper_testkit::process::Proc;
use ssekeeper_testkit::tempdir::TestDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn sidecar_args(app: SocketAddr, dir: &Path, tweak: impl FnOnce(&mut SidecarArgs)) -> SidecarArgs {
    let mut a = SidecarArgs::defaults(app.port(), "test", "limits");
    a.app_host = app.ip();
    a.listen_host = "127.0.0.1".parse().unwrap();
    a.sse_port = free_port();
    a.admin_port = free_port();
    a.pod_name = "pod-limits".into();
    a.lifecycle_socket = dir.join("lifecycle.sock");
    a.store = StoreKind::Memory;
    tweak(&mut a);
    a
}

fn start(args: &SidecarArgs, nofile: u32, dir: &Path) -> Proc {
    let mut argv = vec![
        format!("--nofile={nofile}:{nofile}"),
        "--".to_string(),
        env!("CARGO_BIN_EXE_ssekeeper-sidecar").to_string(),
    ];
    argv.extend(args.to_args());
    argv.push(format!("--pod-name={}", args.pod_name));
    Proc::spawn(
        "sidecar",
        Path::new("/usr/bin/prlimit"),
        &argv,
        &[],
        &dir.join("sidecar.log"),
    )
    .expect("sidecar starts")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn ok_within(addr: SocketAddr, path: &str, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, fetch(addr, "GET", path, &[], None)).await,
        Ok((s, _, _)) if s == 200
    )
}

/// Whether the sidecar answers `/live` within 10 s of its start.
async fn started(admin: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(admin)).await
        {
            return ok_within(admin, "/live", Duration::from_secs(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, _, body) = fetch(admin, "GET", "/metrics", &[], None).await;
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_the_probes_keep_answering() {
    let dir = TestDir::new("limits").unwrap();
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let args = sidecar_args(app.addr, dir.path(), |a| {
        a.max_connections = 200;
        a.header_timeout_millis = 3000;
    });
    let sse = SocketAddr::new(args.listen_host, args.sse_port);
    let admin = SocketAddr::new(args.listen_host, args.admin_port);
    let mut proc = start(&args, 512, dir.path());
    assert!(started(admin).await, "the sidecar starts");
    let before = rss_kib(proc.pid());

    // 600 connections, each with a 15 KB request head that never ends: more than the bound,
    // more than the descriptors.
    let pad = "x".repeat(15_000);
    let mut flood = Vec::new();
    for _ in 0..600 {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(sse)).await
        {
            let _ = s
                .write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-pad: {pad}").as_bytes())
                .await;
            flood.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(proc.pid());
    let t = Instant::now();
    let live = ok_within(admin, "/live", Duration::from_secs(2)).await;
    let ready = ok_within(admin, "/ready", Duration::from_secs(2)).await;
    let probe_ms = t.elapsed().as_millis();
    let refused = metric(admin, "ssekeeper_connections_refused_total").await;
    let held = metric(admin, "ssekeeper_client_connections").await;
    // A client over the bound is told so, at once.
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(2),
        fetch(sse, "GET", "/plain", &[], None),
    )
    .await
    .expect("an answer, not a hang");
    println!(
        "600 stalled heads against --max-connections 200 and 512 fds: held {held}, refused {refused}, \
         RSS {before} -> {during} KiB, probes answered in {probe_ms} ms, a new client got {status}"
    );
    assert!(live && ready, "the probes answer under the flood");
    assert!(held <= 200.0, "the bound holds: {held}");
    assert!(
        refused >= 300.0,
        "what is over the bound is refused: {refused}"
    );
    assert_eq!(status, 503);
    assert!(
        during < before + 32 * 1024,
        "memory stays bounded: {before} -> {during} KiB"
    );

    // The heads time out; then clients are served again, with the flood still connected.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, _, body) = fetch(sse, "GET", "/plain", &[], None).await;
    assert_eq!(
        (status, body.as_str()),
        (http::StatusCode::OK, "hello\n"),
        "served after the timeout"
    );
    drop(flood);

    proc.sigterm();
    let _ = proc.wait_timeout(Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap();
    let accept_warnings = log.matches("accept failed").count();
    assert!(
        accept_warnings <= 2,
        "accept errors are rate-limited: {accept_warnings} lines"
    );
}

#[tokio::test]
async fn a_descriptor_limit_below_the_bounds_lowers_them_and_says_what_to_change() {
    let dir = TestDir::new("nofile").unwrap();
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let args = sidecar_args(app.addr, dir.path(), |_| {});
    let admin = SocketAddr::new(args.listen_host, args.admin_port);
    let mut proc = start(&args, 1024, dir.path());
    assert!(started(admin).await, "the sidecar starts");
    proc.sigterm();
    let _ = proc.wait_timeout(Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("RLIMIT_NOFILE cannot hold --max-connections"))
        .unwrap_or_else(|| panic!("the sidecar says what to change:\n{log}"));
    println!("{line}");
    let fitted = (1024 - 64 - 256) / 2;
    assert!(
        line.contains(&format!("\"max_connections\":{fitted}")),
        "{line}"
    );
}
