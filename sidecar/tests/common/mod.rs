//! The sidecar's own test harness: sidecars in their own runtime threads (so one can be killed
//! like SIGKILL while the others keep running) and a store that can be switched off. The app,
//! the client, Redis and the waits are the workspace's test kit (`ssekeeper_testkit`).

#![allow(dead_code)]

pub mod hooked;

pub use hooked::{Hooked, Op, StoreHook};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ssekeeper_sidecar::config::Settings;
use ssekeeper_sidecar::contract::{SidecarArgs, StoreKind};
use ssekeeper_sidecar::cursor::{CursorKey, SessionId};
use ssekeeper_sidecar::server;
use ssekeeper_sidecar::server::Inspect;
use ssekeeper_sidecar::store::{MemoryStore, SessionStore, StoreError, StoreResult};
use ssekeeper_testkit::app::{Feeds, TestApp};
use tokio_util::sync::CancellationToken;

/// The forwarding key every test sidecar shares.
pub const FORWARD_KEY: &str = "test-forward-key";

/// A lifecycle socket of its own for each test sidecar (many share one process).
pub fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "ssekeeper-test-{}-{name}-{n}.sock",
        std::process::id()
    ))
}

/// Test defaults: loopback, ephemeral ports, short timings, MCP-style session keys.
pub fn args(app: SocketAddr, name: &str) -> SidecarArgs {
    let mut a = SidecarArgs::defaults(app.port(), "test", "svc");
    a.app_host = app.ip();
    a.listen_host = "127.0.0.1".parse().unwrap();
    a.sse_port = 0;
    a.admin_port = 0;
    a.pod_name = name.to_string();
    a.lifecycle_socket = socket_path(name);
    a.store = StoreKind::Memory;
    a.session_keys = vec![
        "query:sessionId".parse().unwrap(),
        "header:Mcp-Session-Id".parse().unwrap(),
    ];
    a.forward_key = Some(FORWARD_KEY.to_string());
    a.prestop_delay_seconds = 0;
    a.drain_seconds = 1;
    a.handover_margin_seconds = 3;
    a.reconnect_delay_millis = 100;
    a.lease_ttl_seconds = 2;
    a.resume_window_seconds = 10;
    a
}

/// The cursor key of the test sidecars (derived from [`FORWARD_KEY`], as every pod derives it).
pub fn cursor_key() -> CursorKey {
    CursorKey::derive(FORWARD_KEY.as_bytes())
}

/// The session the test sidecars record a keyed stream with `key` under.
#[allow(dead_code)]
pub fn keyed(key: &str) -> SessionId {
    cursor_key().session_for_key(key).unwrap()
}

/// A cursor of `session` at `seq` as the test sidecars would write it for an anonymous client
/// of `path` (its query is not part of the binding; the default identity: one header, absent).
#[allow(dead_code)]
pub fn cursor_for(session: &str, seq: u64, path: &str) -> String {
    let k = cursor_key();
    let path = path.split('?').next().unwrap_or(path);
    let s = SessionId::parse(session).unwrap();
    k.cursor(&s, seq, k.binding([None], path)).to_string()
}

/// Two pods sharing a memory store: an app and a sidecar each; A drains in 1 s and captures
/// 5 s past its window (a handover to B within a test's patience).
#[allow(dead_code)]
pub struct Pair {
    pub app_a: TestApp,
    pub app_b: TestApp,
    pub a: TestSidecar,
    pub b: TestSidecar,
}

#[allow(dead_code)]
impl Pair {
    pub async fn start() -> Self {
        let feeds = Arc::new(Feeds::default());
        let app_a = TestApp::start("app-a", feeds.clone()).await;
        let app_b = TestApp::start("app-b", feeds.clone()).await;
        let store = memory_store();
        let mut args_a = args(app_a.addr, "pod-a");
        args_a.drain_seconds = 1;
        args_a.handover_margin_seconds = 5;
        let a = start_sidecar(args_a, store.clone()).await;
        let b = start_sidecar(args(app_b.addr, "pod-b"), store.clone()).await;
        Pair { app_a, app_b, a, b }
    }
}

/// A memory store shared by the sidecars of one test.
pub fn memory_store() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new(1000, Duration::from_secs(300)))
}

/// A sidecar running in its own thread and runtime.
pub struct TestSidecar {
    pub sse: SocketAddr,
    pub admin: SocketAddr,
    /// The lifecycle socket (the preStop hook).
    pub lifecycle: PathBuf,
    pub shared: Arc<Inspect>,
    term: CancellationToken,
    kill: CancellationToken,
    finished: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Start a sidecar with these args on this store.
pub async fn start_sidecar(args: SidecarArgs, store: Arc<dyn SessionStore>) -> TestSidecar {
    let settings = Settings::from_args(&args);
    let term = CancellationToken::new();
    let kill = CancellationToken::new();
    let finished = CancellationToken::new();
    let (info_tx, info_rx) = tokio::sync::oneshot::channel();
    let (t, k, f) = (term.clone(), kill.clone(), finished.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt
            .block_on(server::start(settings, store))
            .expect("sidecar starts");
        let _ = info_tx.send((
            running.sse_addr,
            running.admin_addr,
            running.lifecycle_socket.clone(),
            running.shared.clone(),
        ));
        let f2 = f.clone();
        rt.spawn(async move {
            t.cancelled().await;
            running.terminate();
            running.wait().await;
            f2.cancel();
        });
        rt.block_on(async {
            tokio::select! {
                _ = k.cancelled() => {}
                _ = f.cancelled() => {}
            }
        });
        // Tasks are dropped, not run on (SIGKILL flushes nothing), but the worker threads are
        // waited for: `shutdown_background` returns while they still hold the listeners, and a
        // peer connecting in that moment is reset instead of refused, which no real kill does.
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    let (sse, admin, lifecycle, shared) = info_rx.await.expect("sidecar started");
    TestSidecar {
        sse,
        admin,
        lifecycle,
        shared,
        term,
        kill,
        finished,
        thread: Some(thread),
    }
}

impl TestSidecar {
    /// What SIGTERM does.
    pub fn terminate(&self) {
        self.term.cancel();
    }

    /// Wait for the drain to complete; returns how long it took from now.
    pub async fn wait_finished(&self, timeout: Duration) -> Duration {
        let t = Instant::now();
        tokio::time::timeout(timeout, self.finished.cancelled())
            .await
            .expect("drain finished in time");
        t.elapsed()
    }

    /// What SIGKILL does: every task of this sidecar stops at once, nothing is flushed.
    pub fn kill(&mut self) {
        self.kill.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A labelled counter.
    pub fn count(&self, family: &str, label: &'static str) -> u64 {
        self.shared.metrics.count(family, label)
    }
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        self.kill.cancel();
        // A killed sidecar leaves its socket behind (the next start would replace it).
        let _ = std::fs::remove_file(&self.lifecycle);
    }
}

/// A store that can be switched off: every call then fails with `Unavailable`.
pub type FlakyStore = Hooked<Flaky>;

/// The switches and counters of a [`FlakyStore`].
pub struct Flaky {
    pub down: AtomicBool,
    /// While down, calls hang (like a black-holed Redis) instead of failing at once.
    pub hang: AtomicBool,
    /// Milliseconds every call takes (a store across a network), 0 = none.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Calls made so far.
    pub calls: std::sync::atomic::AtomicU64,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn SessionStore>) -> Arc<Self> {
        Arc::new(Hooked {
            inner,
            hook: Flaky {
                down: AtomicBool::new(false),
                hang: AtomicBool::new(false),
                delay_ms: Default::default(),
                calls: Default::default(),
            },
        })
    }
}

impl Flaky {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn set_hanging(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    async fn check(&self) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if !self.down.load(Ordering::SeqCst) {
            return Ok(());
        }
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Err(StoreError::Unavailable("switched off by the test".into()))
    }
}

impl StoreHook for Flaky {
    fn before<'a>(
        &'a self,
        _: &'a dyn SessionStore,
        _: Op,
        _: Option<&'a SessionId>,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.check())
    }
}
