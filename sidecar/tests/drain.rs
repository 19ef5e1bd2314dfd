//! The kubelet's termination order: preStop (the binary's `prestop` subcommand over the
//! lifecycle socket) flips readiness and holds, SIGTERM closes streams with a retry hint, the
//! process exits 0 before the grace deadline.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{args, memory_store, socket_path, start_sidecar};
use ssekeeper_sidecar::contract::{PrestopArgs, SidecarArgs, paths};
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
        ssekeeper_sidecar::contract::termination_grace_period_seconds(0, 1, 0),
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
async fn the_app_is_released_only_after_capturing_stopped() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.drain_seconds = 1;
    a.handover_margin_seconds = 3;
    let sc = start_sidecar(a, memory_store()).await;
    let mut s = Stream::open(sc.sse, "/events?feed=alone&interval_ms=20", None).await;
    s.read_until(&mut Log::default(), 3, T).await;
    // The app container's preStop hook, as the kubelet runs it: a GET that waits.
    let t = Instant::now();
    let admin = sc.admin;
    let inspect = sc.shared.clone();
    let hook = tokio::spawn(async move {
        let (status, _, body) = fetch(admin, "GET", paths::APP_PRESTOP, &[], None).await;
        (status, body, t.elapsed(), inspect.recorders.len())
    });
    sc.terminate();
    // The client goes away for good: nobody takes the session over.
    drop(s);
    eventually_true("the recorder stops", T, || sc.shared.recorders.is_empty()).await;
    let stopped = t.elapsed();
    let (status, body, released, capturing) = hook.await.unwrap();
    let took = sc.wait_finished(T).await + t.elapsed();
    println!(
        "capture stopped {stopped:?} after SIGTERM, app released at {released:?} ({status} {body:?}), drain done in {took:?}"
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(capturing, 0, "the app was released while still captured");
    assert!(
        released >= Duration::from_millis(3900),
        "drain + margin kept: {released:?}"
    );
    assert!(
        released < Duration::from_secs(9),
        "released soon after, not at the grace deadline: {released:?}"
    );
    assert_eq!(sc.count("handovers", "drain"), 1);
}

/// The three stream kinds in one drain: a resumable `GET` is closed with the hint in the window;
/// a request stream (`POST`) that ends by itself is never closed and arrives whole after the
/// window; one still running at `--request-seconds` is cut there, counted, with no `retry:` event
/// (its client does not reconnect). The drain is over as soon as the last stream is.
#[tokio::test]
async fn request_streams_finish_in_place_and_only_the_deadline_cuts_them() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.drain_seconds = 1;
    a.handover_margin_seconds = 1;
    a.request_seconds = 4;
    let sc = start_sidecar(a, memory_store()).await;
    let mut resumable = Stream::open(sc.sse, "/events?feed=g&interval_ms=20", None).await;
    // 125 events at 20 ms: ends by itself ~2.5 s after it began, after the drain window.
    let mut finishing = Stream::post(sc.sse, "/events?feed=f&interval_ms=20&total=125", "{}").await;
    let mut endless = Stream::post(sc.sse, "/events?feed=e&interval_ms=20", "{}").await;
    // MCP 2026-07-28's long-lived notification stream: a session stream, not a request stream.
    let listen_header = [("mcp-method", "subscriptions/listen")];
    let mut listen = Stream::post_with(
        sc.sse,
        "/events?feed=l&interval_ms=20",
        "{}",
        &listen_header,
    )
    .await;
    let (mut lr, mut lf, mut le) = (Log::default(), Log::default(), Log::default());
    let mut ll = Log::default();
    resumable.read_until(&mut lr, 2, T).await;
    finishing.read_until(&mut lf, 2, T).await;
    endless.read_until(&mut le, 2, T).await;
    listen.read_until(&mut ll, 2, T).await;
    assert_eq!(sc.count("streams_opened", "request"), 2);
    assert_eq!(sc.count("streams_opened", "resumable"), 1);
    assert_eq!(sc.count("streams_opened", "session"), 1);

    let t = Instant::now();
    sc.terminate();
    let (r, f, e, l) = tokio::join!(
        async {
            resumable.read_to_end(&mut lr, T).await;
            t.elapsed()
        },
        async {
            finishing.read_to_end(&mut lf, T).await;
            t.elapsed()
        },
        async {
            endless.read_to_end(&mut le, T).await;
            t.elapsed()
        },
        async {
            listen.read_to_end(&mut ll, T).await;
            t.elapsed()
        },
    );
    let took = sc.wait_finished(T).await + t.elapsed();
    println!(
        "after SIGTERM: resumable closed {r:?}, request stream ended {f:?} ({} events), endless \
         one cut {e:?} ({} events), drain done {took:?}",
        lf.events.len(),
        le.events.len()
    );
    assert!(r < Duration::from_secs(1), "closed in the window: {r:?}");
    assert_eq!(lr.retries.last(), Some(&100), "with the hint");
    let last = lf.data().last().cloned();
    assert_eq!(last.as_deref(), Some("event 125"), "whole, to its own end");
    assert!(
        lf.retries.is_empty() && le.retries.is_empty(),
        "no retry: on request streams"
    );
    assert!(
        e >= Duration::from_millis(3900) && e < Duration::from_millis(5500),
        "cut at the request deadline: {e:?}"
    );
    assert_eq!(sc.shared.metrics.request_streams_cut.get(), 1);
    println!("listen stream ended {l:?} after SIGTERM");
    assert!(
        l >= Duration::from_secs(1) && l < Duration::from_millis(2500),
        "a listen stream ends cleanly after the window, not at the deadline: {l:?}"
    );
    assert!(ll.retries.is_empty(), "a clean close");
    assert!(took < Duration::from_secs(8), "{took:?}");
}
