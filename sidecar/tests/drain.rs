//! The kubelet's termination order: preStop (the binary's `prestop` subcommand over the
//! lifecycle socket) flips readiness and holds, SIGTERM closes streams with a retry hint, the
//! process exits 0 before the grace deadline.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{args, memory_store, socket_path, start_sidecar};
use ssekeeper_sidecar::contract::{PrestopArgs, SidecarArgs};
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Log, Stream, fetch};
use ssekeeper_testkit::{Patience, eventually, eventually_true};

/// The kubelet's `exec` preStop hook, as the operator renders it, run against `sidecar`'s socket:
/// the built binary's `prestop` subcommand. Returns its exit status and stdout.
async fn exec_prestop(sidecar: &SidecarArgs) -> (std::process::ExitStatus, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssekeeper-sidecar"))
        .args(PrestopArgs::for_sidecar(sidecar).to_args())
        .output()
        .await
        .expect("the prestop subcommand runs");
    (out.status, String::from_utf8_lossy(&out.stdout).to_string())
}

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn prestop_flips_readiness_then_sigterm_closes_streams_with_a_hint() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.prestop_delay_seconds = 1;
    a.drain_seconds = 2;
    a.handover_margin_seconds = 1;
    a.reconnect_delay_millis = 750;
    let sc = start_sidecar(a.clone(), memory_store()).await;
    eventually_true("ready", T, || sc.shared.app_probe.is_up()).await;
    assert_eq!(fetch(sc.admin, "GET", "/ready", &[], None).await.0, 200);

    let mut streams = Vec::new();
    for i in 0..4 {
        let mut s = Stream::open(sc.sse, &format!("/events?feed=p{i}&interval_ms=20"), None).await;
        s.read_until(&mut Log::default(), 1, T).await;
        streams.push(s);
    }

    let t = Instant::now();
    let hook = a.clone();
    let prestop = tokio::spawn(async move { exec_prestop(&hook).await });
    eventually_true("readiness off at once", Duration::from_millis(500), || {
        !sc.shared.lifecycle.ready()
    })
    .await;
    assert_eq!(fetch(sc.admin, "GET", "/ready", &[], None).await.0, 503);
    // Not ready, but alive: the heartbeat still beats, so the kubelet does not restart it.
    assert_eq!(fetch(sc.admin, "GET", "/live", &[], None).await.0, 200);
    let (status, stdout) = prestop.await.unwrap();
    assert!(status.success(), "prestop exited {status:?}: {stdout}");
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    let held = t.elapsed();
    assert!(held >= Duration::from_secs(1), "preStop held {held:?}");
    // Still serving while the load balancers catch up.
    assert_eq!(fetch(sc.sse, "GET", "/plain", &[], None).await.0, 200);

    let t = Instant::now();
    sc.terminate();
    let closes = streams.iter_mut().map(|s| async move {
        let mut log = Log::default();
        s.read_to_end(&mut log, T).await;
        assert_eq!(
            log.retries.last(),
            Some(&750),
            "every stream gets the retry hint"
        );
        t.elapsed()
    });
    let mut closed_at = futures::future::join_all(closes).await;
    closed_at.sort();
    println!("stream closes after SIGTERM (jittered over the 2 s drain window): {closed_at:?}");
    // Closed within the 2 s window (scheduled in its first 90%; slack for a loaded machine).
    assert!(closed_at.iter().all(|d| *d < Duration::from_secs(3)));
    // New connections are refused.
    assert!(tokio::net::TcpStream::connect(sc.sse).await.is_err());
    let took = sc.wait_finished(T).await + t.elapsed();
    assert!(took < Duration::from_secs(2 + 1 + 5), "drain took {took:?}");
    assert_eq!(sc.count("handovers", "drain"), 4);
}

#[tokio::test]
async fn the_binary_drains_and_exits_zero_before_the_deadline() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sse_port = probe.local_addr().unwrap().port();
    let probe2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_port = probe2.local_addr().unwrap().port();
    drop((probe, probe2));
    let socket = socket_path("bin");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssekeeper-sidecar"))
        .args([
            format!("--app-port={}", app.addr.port()),
            "--listen-host=127.0.0.1".to_string(),
            format!("--sse-port={sse_port}"),
            format!("--admin-port={admin_port}"),
            "--service-namespace=test".to_string(),
            "--service-name=bin".to_string(),
            "--drain-seconds=1".to_string(),
            "--handover-margin-seconds=1".to_string(),
            "--prestop-delay-seconds=0".to_string(),
            format!("--lifecycle-socket={}", socket.display()),
            "--reconnect-delay-millis=300".to_string(),
            "--log-format=json".to_string(),
        ])
        .env("POD_NAME", "bin-pod")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let sse = format!("127.0.0.1:{sse_port}").parse().unwrap();
    let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let patience = Patience::within(T).every(Duration::from_millis(50));
    eventually("the binary is ready", patience, || async {
        // Connect first: `fetch` fails the test when there is nothing to connect to yet.
        drop(tokio::net::TcpStream::connect(admin).await.ok()?);
        (fetch(admin, "GET", "/ready", &[], None).await.0 == 200).then_some(())
    })
    .await;
    let mut s = Stream::open(sse, "/events?feed=b&interval_ms=20", None).await;
    let mut log = Log::default();
    s.read_until(&mut log, 3, T).await;
    let (_, _, metrics) = fetch(admin, "GET", "/metrics", &[], None).await;
    assert!(metrics.contains("ssekeeper_active_streams 1"), "{metrics}");

    // The kubelet's order: the exec preStop hook (readiness off), then SIGTERM.
    let mut hook = SidecarArgs::defaults(app.addr.port(), "test", "bin");
    hook.lifecycle_socket = socket.clone();
    hook.prestop_delay_seconds = 0;
    let (status, stdout) = exec_prestop(&hook).await;
    assert!(status.success(), "prestop exited {status:?}: {stdout}");
    assert_eq!(fetch(admin, "GET", "/ready", &[], None).await.0, 503);

    let t = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    s.read_to_end(&mut log, T).await;
    assert_eq!(log.retries.last(), Some(&300));
    let exit = eventually("the binary exits", T.saturating_sub(t.elapsed()), || {
        std::future::ready(child.try_wait().unwrap())
    })
    .await;
    let took = t.elapsed();
    let grace = Duration::from_secs(u64::from(
        ssekeeper_sidecar::contract::termination_grace_period_seconds(0, 1),
    ));
    println!("binary: SIGTERM to exit {exit} in {took:?} (grace {grace:?})");
    assert!(exit.success(), "exit code {exit:?}");
    assert!(took < grace);
    let mut stderr = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("drain complete") && l.starts_with('{')),
        "json logs: {stderr}"
    );
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[tokio::test]
async fn capture_nobody_takes_over_stops_before_the_apps_sigterm() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.drain_seconds = 1;
    a.handover_margin_seconds = 3;
    let sc = start_sidecar(a, memory_store()).await;
    let mut s = Stream::open(sc.sse, "/events?feed=alone&interval_ms=20", None).await;
    s.read_until(&mut Log::default(), 3, T).await;
    let t = Instant::now();
    sc.terminate();
    // The client goes away for good: nobody takes the session over.
    drop(s);
    eventually_true("the recorder stops", T, || sc.shared.recorders.is_empty()).await;
    let stopped = t.elapsed();
    let took = sc.wait_finished(T).await + t.elapsed();
    // The app gets SIGTERM `drain + margin` = 4 s after the sidecar: capturing must be over
    // before it, or an app that closes its streams cleanly would have them recorded as ended.
    println!(
        "capture stopped {stopped:?} after SIGTERM (app SIGTERM at 4 s), drain done in {took:?}"
    );
    assert!(
        stopped < Duration::from_millis(3600),
        "still capturing at {stopped:?}"
    );
    assert!(
        stopped >= Duration::from_millis(2500),
        "margin kept: {stopped:?}"
    );
    assert_eq!(sc.count("handovers", "drain"), 1);
}
