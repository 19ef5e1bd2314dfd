//! Listeners, connections and the process lifecycle.
//!
//! [`start`] binds both ports and the lifecycle socket, starts every background task, and returns
//! a [`Running`] handle; [`Running::terminate`] is what SIGTERM does (the binary wires the signal
//! to it, tests call it directly, so several sidecars can run in one test process).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::client::HttpClient;
use crate::http::streams::Streams;
use crate::metrics::ConnRefusal;
use crate::metrics::Metrics;
use crate::phase::Lifecycle;
use crate::routing::handler::{self as proxy, Origin};
use crate::routing::handler::{RouteSettings, Router};
use crate::runtime::admin;
use crate::runtime::admission::{Admission, REFUSAL};
use crate::runtime::descriptors;
use crate::runtime::drain;
use crate::runtime::health::{AppProbe, HEARTBEAT_EVERY, HEARTBEAT_STALE, Heartbeat};
use crate::runtime::lifecycle;
use crate::runtime::rebalance::Rebalancer;
use crate::runtime::state::Sidecar;
use crate::session::Sessions;
use crate::session::broadcast::{BroadcastSettings, Broadcasts, PublishSettings};
use crate::session::recorder::Recorders;
use crate::store::{GuardedStore, SessionStore};

/// A started sidecar.
pub struct Running {
    /// Where the client listener is bound.
    pub sse_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// Where the lifecycle socket (the preStop hook) is bound.
    pub lifecycle_socket: PathBuf,
    /// What an embedder may look at while it runs (tests read probes and counts from it).
    pub shared: Arc<Inspect>,
    terminate: CancellationToken,
    done: JoinHandle<()>,
}

impl Running {
    /// Begin the SIGTERM sequence.
    pub fn terminate(&self) {
        self.terminate.cancel();
    }

    /// Wait until the drain is complete and every listener is closed.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// A running sidecar's state, as its embedder may look at it (never handed to its parts).
pub struct Inspect {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The guarded session store.
    pub store: Arc<GuardedStore>,
    /// Drain phase and readiness.
    pub lifecycle: Arc<Lifecycle>,
    /// Whether the app's port accepts connections.
    pub app_probe: Arc<AppProbe>,
    /// Recorders running here.
    pub recorders: Arc<Recorders>,
    /// Open client streams.
    pub streams: Arc<Streams>,
    /// Broadcast paths served here.
    pub broadcasts: Arc<Broadcasts>,
}

/// Bind the ports and the lifecycle socket, and start serving.
pub async fn start(settings: Settings, store: Arc<dyn SessionStore>) -> std::io::Result<Running> {
    let sse = TcpListener::bind(settings.sse_listen).await?;
    let admin_listener = TcpListener::bind(settings.admin_listen).await?;
    let lifecycle_socket = settings.lifecycle_socket.clone();
    let lifecycle_listener = lifecycle::bind(&lifecycle_socket)?;
    let sse_addr = sse.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let mut settings = settings;
    if settings.owner.addr.port() == 0 {
        settings.owner.addr.set_port(admin_addr.port());
    }
    fit_descriptors(&mut settings);

    let metrics = Arc::new(Metrics::new());
    let background = CancellationToken::new();
    let sessions = build_sessions(&settings, store, metrics.clone(), &background);
    let broadcasts = Broadcasts::start(
        sessions.clone(),
        BroadcastSettings {
            paths: settings.broadcast.clone(),
            owner: settings.owner.name.clone(),
            lease_ttl: settings.lease_ttl,
            handover_window: settings.drain + settings.handover_margin,
            publish: PublishSettings {
                token: settings.broadcast_publish_token.clone(),
            },
        },
        background.clone(),
    );
    let router = build_router(&settings, sessions.clone(), broadcasts.clone());
    let app_probe = AppProbe::spawn(settings.app_addr, metrics.clone(), background.clone());
    let lifecycle = Arc::new(Lifecycle::new(metrics.clone()));
    let heartbeat = spawn_heartbeat(&sessions, &background);
    tracing::info!(
        sse = %sse_addr,
        admin = %admin_addr,
        lifecycle = %lifecycle_socket.display(),
        app = %settings.app_addr,
        owner = %settings.owner.name,
        advertised = %settings.owner.addr,
        service = %settings.service,
        "ssekeeper sidecar serving"
    );

    let admin_stop = CancellationToken::new();
    let admission = Admission::new(
        settings.max_connections,
        settings.max_connections_per_ip,
        metrics.clone(),
    );
    let sse_task = tokio::spawn(serve_clients(
        router.clone(),
        lifecycle.stop_accepting.clone(),
        http1_builder(settings.max_header_bytes, settings.header_timeout),
        admission,
        sse,
    ));
    let lifecycle_task = tokio::spawn(lifecycle::serve(
        lifecycle.clone(),
        settings.prestop_delay,
        lifecycle_listener,
        lifecycle_socket.clone(),
        admin_stop.clone(),
    ));
    let timing = drain::Timing {
        drain: settings.drain,
        handover_margin: settings.handover_margin,
        request: settings.request_deadline,
    };
    let shared = Arc::new(Inspect {
        metrics,
        store: sessions.store.clone(),
        lifecycle: lifecycle.clone(),
        app_probe: app_probe.clone(),
        recorders: sessions.recorders.clone(),
        streams: sessions.clients.streams().clone(),
        broadcasts: broadcasts.clone(),
    });
    let sidecar = Arc::new(Sidecar {
        router,
        lifecycle: lifecycle.clone(),
        app_probe,
        heartbeat,
        settings,
        app_prestop_waiters: Arc::new(tokio::sync::Semaphore::new(
            crate::runtime::state::APP_PRESTOP_WAITERS,
        )),
        forwards_seen: Default::default(),
    });
    let rebalancer = spawn_rebalancer(&sidecar, &sessions, &background);
    let admin_task = tokio::spawn(serve_admin(sidecar, admin_listener, admin_stop.clone()));
    let terminate = CancellationToken::new();
    let done = {
        let terminate = terminate.clone();
        tokio::spawn(async move {
            terminate.cancelled().await;
            drain::run(sessions, broadcasts, lifecycle, timing).await;
            let _ = sse_task.await;
            background.cancel();
            // Its last act takes this pod's count out of the store (bounded).
            if let Some(r) = rebalancer {
                let _ = r.await;
            }
            admin_stop.cancel();
            let _ = admin_task.await;
            let _ = lifecycle_task.await;
        })
    };
    Ok(Running {
        sse_addr,
        admin_addr,
        lifecycle_socket,
        shared,
        terminate,
        done,
    })
}

/// The session layer: the guarded store (pinged while down), the lease book (renewed), the
/// recorders, gates, the app and the client queues.
fn build_sessions(
    settings: &Settings,
    store: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    background: &CancellationToken,
) -> Arc<Sessions> {
    let sessions = Sessions::new(settings, store, metrics);
    sessions
        .store
        .spawn_pinger(Duration::from_secs(1), background.clone());
    sessions
        .book
        .spawn_renewer(settings.renew_every, background.clone());
    Arc::new(sessions)
}

/// The rebalancing task, when `--rebalance` is on and the store can share counts.
fn spawn_rebalancer(
    sidecar: &Sidecar,
    sessions: &Arc<Sessions>,
    background: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let settings = sidecar.settings.rebalance?;
    if sessions.store.stream_counts().is_none() {
        tracing::warn!("--rebalance needs the redis store: rebalancing is off");
        return None;
    }
    tracing::info!(
        tolerance_percent = (settings.tolerance * 100.0).round() as u32,
        max_shed_per_second = settings.max_shed_per_second,
        interval_secs = settings.interval.as_secs(),
        "rebalancing on: streams above the fair share are shed (affinity must be off)"
    );
    let r = Rebalancer {
        pod: sidecar.settings.owner.name.clone(),
        streams: sessions.clients.streams().clone(),
        store: sessions.store.clone(),
        lifecycle: sidecar.lifecycle.clone(),
        app_probe: sidecar.app_probe.clone(),
        metrics: sessions.metrics.clone(),
        settings,
    };
    Some(r.spawn(background.clone()))
}

/// The request handler over `sessions`, with the client to other sidecars.
fn build_router(
    settings: &Settings,
    sessions: Arc<Sessions>,
    broadcasts: Arc<Broadcasts>,
) -> Arc<Router> {
    Arc::new(Router {
        sessions,
        broadcasts,
        peers: HttpClient::new(settings.forward_timeout),
        settings: RouteSettings {
            session_keys: settings.session_keys.clone(),
            forward_key: settings.forward_key.clone(),
            owner_name: settings.owner.name.clone(),
            signed_headers: crate::routing::forward::signed_headers(
                &settings.session_keys,
                &settings.identity,
            ),
        },
    })
}

/// The liveness heartbeat: it visits every lock the request and recording paths take, holding a
/// weak reference only, so it never keeps the state alive.
fn spawn_heartbeat(sessions: &Arc<Sessions>, background: &CancellationToken) -> Arc<Heartbeat> {
    let heartbeat = Heartbeat::new(HEARTBEAT_STALE);
    let weak = Arc::downgrade(sessions);
    heartbeat.spawn(
        HEARTBEAT_EVERY,
        move || {
            if let Some(s) = weak.upgrade() {
                let _ = (s.book.len(), s.recorders.len(), s.clients.streams().len());
            }
        },
        background.clone(),
    );
    heartbeat
}

/// Raise the descriptor limit and fit the connection bound to it, saying what to change when
/// the bound had to be lowered.
fn fit_descriptors(settings: &mut Settings) {
    let Some(fit) = descriptors::fit_process(settings.max_connections, settings.max_detached)
    else {
        tracing::warn!("cannot read RLIMIT_NOFILE: the connection bound is not checked against it");
        return;
    };
    if fit.max_connections < settings.max_connections {
        tracing::warn!(
            limit = fit.limit,
            needed = fit.needed,
            max_connections = fit.max_connections,
            configured = settings.max_connections,
            "RLIMIT_NOFILE cannot hold --max-connections (two descriptors each, plus --max-detached and a reserve): \
             lowered to what fits; raise the container's nofile limit or lower --max-connections"
        );
        settings.max_connections = fit.max_connections;
    }
}

fn http1_builder(max_header_bytes: usize, header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.max_buf_size(max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    b
}

/// Refused connections answered at once; beyond them a refused connection is just closed.
const REFUSERS: usize = 64;
/// How long a refused connection's request is waited for (so the `503` is read, not reset).
const REFUSAL_READ: Duration = Duration::from_millis(200);

/// Answer a connection over the bounds with `503` and close it: its request head is read
/// first (briefly, into a small buffer) so the answer is not lost to a reset; under a flood,
/// beyond [`REFUSERS`] at once, it is closed without a word.
fn refuse(stream: tokio::net::TcpStream, refusals: &Arc<tokio::sync::Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _permit = permit;
        let mut stream = stream;
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(REFUSAL_READ, stream.read(&mut buf)).await;
        let _ = tokio::time::timeout(REFUSAL_READ, async {
            let _ = stream.write_all(REFUSAL).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// At most one warning per this interval for failing accepts (the rest are counted in it).
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning that repeats at most once per interval, with how many it stood for.
struct Throttled {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl Throttled {
    /// Whether to log now, and how many were suppressed since the last one.
    fn due(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|t| now < t + ACCEPT_WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accept clients until the drain stops accepting; then ask every connection to close after its
/// current response (no keep-alive), so reconnects go to another pod.
async fn serve_clients(
    router: Arc<Router>,
    stop: CancellationToken,
    builder: http1::Builder,
    admission: Arc<Admission>,
    listener: TcpListener,
) {
    let mut warn = Throttled {
        last: None,
        suppressed: 0,
    };
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSERS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    router.sessions.metrics.connection_refused(ConnRefusal::Descriptors);
                    if let Some(suppressed) = warn.due() {
                        tracing::warn!(error = %e, suppressed, held = admission.held(), "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(admitted) = admission.admit(peer.ip()) else {
            refuse(stream, &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = service_fn(move |req| {
            let router = router.clone();
            // Boxed: the handler's future lives only until the response head, while the
            // connection task lives as long as the stream; unboxed, every idle stream's task
            // would keep room for the handler's largest state (several KiB).
            Box::pin(async move {
                Ok::<_, Infallible>(proxy::handle(router, req, peer, Origin::Client).await)
            })
        });
        // With upgrades (WebSocket tunnels); once accepting stops, the connection closes after
        // its current response instead of keeping alive.
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
}

async fn serve_admin(shared: Arc<Sidecar>, listener: TcpListener, stop: CancellationToken) {
    let builder = http1_builder(
        shared.settings.max_header_bytes,
        shared.settings.header_timeout,
    );
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let service = service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(admin::handle(shared, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
