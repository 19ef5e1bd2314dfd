//! The preStop hook is not a network endpoint: the admin port refuses `/prestop` (and the pod
//! stays ready), only the binary's `prestop` subcommand on the lifecycle socket drains, and that
//! socket is the sidecar user's alone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{args, memory_store, socket_path, start_sidecar};
use ssekeeper_sidecar::contract::{PRESTOP_REFUSED_BODY, PRESTOP_SUBCOMMAND, paths};
use ssekeeper_sidecar::lifecycle::SOCKET_MODE;
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Log, Stream, fetch};
use ssekeeper_testkit::eventually_true;

const T: Duration = Duration::from_secs(15);

/// `ssekeeper-sidecar prestop --lifecycle-socket=<socket>`, as the kubelet's exec hook runs it.
async fn prestop_subcommand(socket: &Path, extra: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ssekeeper-sidecar"))
        .arg(PRESTOP_SUBCOMMAND)
        .arg(format!("--lifecycle-socket={}", socket.display()))
        .args(extra)
        .output()
        .await
        .expect("the prestop subcommand runs")
}

#[tokio::test]
async fn prestop_on_the_admin_port_is_refused_and_the_pod_stays_ready() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.prestop_delay_seconds = 2;
    let sc = start_sidecar(a, memory_store()).await;
    eventually_true("ready", T, || sc.shared.app_probe.is_up()).await;
    let mut s = Stream::open(sc.sse, "/events?feed=r&interval_ms=20", None).await;
    let mut log = Log::default();
    s.read_until(&mut log, 2, T).await;

    for method in ["GET", "POST", "PUT"] {
        let t = Instant::now();
        let (status, _, body) = fetch(sc.admin, method, paths::PRESTOP, &[], None).await;
        assert_eq!(status, 404, "{method} /prestop on the admin port");
        assert_eq!(body, PRESTOP_REFUSED_BODY, "{method}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "answered without a hold"
        );
    }
    assert_eq!(sc.count("admin_refused", "prestop"), 3);
    let (_, _, metrics) = fetch(sc.admin, "GET", paths::METRICS, &[], None).await;
    assert!(
        metrics.contains("ssekeeper_admin_refused_total{reason=\"prestop\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("ssekeeper_drain_phase 0"), "{metrics}");

    // Nothing drained: ready, and the stream keeps flowing.
    assert!(sc.shared.lifecycle.ready());
    let (status, _, body) = fetch(sc.admin, "GET", paths::READY, &[], None).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ready\n"));
    s.read_until(&mut log, 5, T).await;
    assert!(log.retries.is_empty(), "no retry hint: {:?}", log.retries);
}

#[tokio::test]
async fn the_prestop_subcommand_drains_over_a_private_socket() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    a.prestop_delay_seconds = 1;
    let sc = start_sidecar(a, memory_store()).await;
    eventually_true("ready", T, || sc.shared.app_probe.is_up()).await;
    assert_eq!(fetch(sc.admin, "GET", paths::READY, &[], None).await.0, 200);

    let meta = std::fs::symlink_metadata(&sc.lifecycle).expect("socket exists");
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        SOCKET_MODE,
        "only the sidecar's user may connect"
    );
    assert_eq!(SOCKET_MODE & 0o077, 0);

    let t = Instant::now();
    let socket = sc.lifecycle.clone();
    let hook = tokio::spawn(async move { prestop_subcommand(&socket, &[]).await });
    eventually_true("readiness off", Duration::from_secs(2), || {
        !sc.shared.lifecycle.ready()
    })
    .await;
    let (status, _, body) = fetch(sc.admin, "GET", paths::READY, &[], None).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "not ready: draining\n")
    );
    let out = hook.await.unwrap();
    let held = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "prestop subcommand: {:?} after {held:?}: {stdout}",
        out.status
    );
    assert!(out.status.success(), "{out:?}");
    assert!(held >= Duration::from_secs(1), "held {held:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.contains("readiness off, held 1 s"), "{stdout:?}");
    assert_eq!(sc.count("admin_refused", "prestop"), 0);
}

#[tokio::test]
async fn the_socket_answers_only_post_prestop() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    let get = |path: &'static str| {
        let socket = sc.lifecycle.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            c.write_all(req.as_bytes()).await.unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    assert!(get(paths::PRESTOP).await.starts_with("HTTP/1.1 405"));
    assert!(get(paths::READY).await.starts_with("HTTP/1.1 404"));
    assert!(sc.shared.lifecycle.ready(), "a GET drains nothing");
}

#[tokio::test]
async fn without_a_sidecar_the_subcommand_fails_clearly() {
    // No socket file at all.
    let missing = socket_path("missing");
    let out = prestop_subcommand(&missing, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("missing socket: {:?}: {stderr}", out.status);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains(&format!(
            "cannot reach the sidecar on {}",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");

    // A stale socket: the file is there, nobody listens.
    let stale = socket_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = prestop_subcommand(&stale, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("cannot reach the sidecar"), "{stderr}");

    // A listener that never answers: the timeout ends the wait.
    let _ = std::fs::remove_file(&stale);
    let silent = std::os::unix::net::UnixListener::bind(&stale).unwrap();
    let t = Instant::now();
    let out = prestop_subcommand(&stale, &["--timeout-seconds=1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("no answer from the sidecar"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(silent);
    let _ = std::fs::remove_file(&stale);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_at_start_up() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let mut a = args(app.addr, "pod-a");
    // What a SIGKILLed sidecar leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&a.lifecycle_socket).unwrap());
    a.prestop_delay_seconds = 0;
    let sc = start_sidecar(a, memory_store()).await;
    let out = prestop_subcommand(&sc.lifecycle, &[]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(!sc.shared.lifecycle.ready());
}
