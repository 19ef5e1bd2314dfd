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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::Settings;
use crate::drain::{self, Lifecycle};
use crate::health::{AppProbe, HEARTBEAT_EVERY, HEARTBEAT_STALE, Heartbeat};
use crate::leases::LeaseBook;
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::proxy::{self, Origin};
use crate::recorder::Recorders;
use crate::state::Shared;
use crate::store::{GuardedStore, SessionStore};
use crate::streams::Streams;
use crate::upstream::HttpClient;

/// A started sidecar.
pub struct Running {
    /// Where the client listener is bound.
    pub sse_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// Where the lifecycle socket (the preStop hook) is bound.
    pub lifecycle_socket: PathBuf,
    /// The shared state (tests read metrics and counts from it).
    pub shared: Arc<Shared>,
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

    let metrics = Arc::new(Metrics::new());
    let background = CancellationToken::new();
    let store = Arc::new(GuardedStore::new(
        store,
        settings.store_timeout,
        metrics.clone(),
    ));
    store.spawn_pinger(Duration::from_secs(1), background.clone());
    let book = LeaseBook::new(
        store.clone(),
        settings.owner.clone(),
        settings.lease_ttl,
        settings.session_ttl,
        metrics.clone(),
    );
    book.spawn_renewer(settings.renew_every, background.clone());
    let app_probe = AppProbe::spawn(settings.app_addr, metrics.clone(), background.clone());
    let shared = Arc::new(Shared {
        app: HttpClient::new(settings.upstream_timeout),
        peers: HttpClient::new(settings.forward_timeout),
        streams: Streams::new(settings.max_streams, metrics.clone()),
        recorders: Recorders::default(),
        gates: Default::default(),
        lifecycle: Lifecycle::new(metrics.clone()),
        store,
        book,
        app_probe,
        heartbeat: Heartbeat::new(HEARTBEAT_STALE),
        metrics,
        settings,
    });
    {
        // Visit every lock the request and recording paths take; hold a weak reference only,
        // so the heartbeat never keeps the state alive.
        let weak = Arc::downgrade(&shared);
        shared.heartbeat.spawn(
            HEARTBEAT_EVERY,
            move || {
                if let Some(s) = weak.upgrade() {
                    let _ = (s.book.len(), s.recorders.len(), s.streams.len());
                }
            },
            background.clone(),
        );
    }
    tracing::info!(
        sse = %sse_addr,
        admin = %admin_addr,
        lifecycle = %lifecycle_socket.display(),
        app = %shared.settings.app_addr,
        owner = %shared.settings.owner.name,
        advertised = %shared.settings.owner.addr,
        service = %shared.settings.service,
        "ssekeeper sidecar serving"
    );

    let admin_stop = CancellationToken::new();
    let sse_task = tokio::spawn(serve_clients(shared.clone(), sse));
    let admin_task = tokio::spawn(serve_admin(
        shared.clone(),
        admin_listener,
        admin_stop.clone(),
    ));
    let lifecycle_task = tokio::spawn(lifecycle::serve(
        shared.clone(),
        lifecycle_listener,
        lifecycle_socket.clone(),
        admin_stop.clone(),
    ));
    let terminate = CancellationToken::new();
    let done = {
        let shared = shared.clone();
        let terminate = terminate.clone();
        tokio::spawn(async move {
            terminate.cancelled().await;
            drain::run(shared.clone()).await;
            let _ = sse_task.await;
            background.cancel();
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

fn http1_builder(max_header_bytes: usize) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.max_buf_size(max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    b
}

/// Accept clients until the drain stops accepting; then ask every connection to close after its
/// current response (no keep-alive), so reconnects go to another pod.
async fn serve_clients(shared: Arc<Shared>, listener: TcpListener) {
    let graceful = GracefulShutdown::new();
    let builder = http1_builder(shared.settings.max_header_bytes);
    let stop = shared.lifecycle.stop_accepting.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let service = service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(proxy::handle(shared, req, peer, Origin::Client).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::spawn(graceful.shutdown());
}

async fn serve_admin(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    let builder = http1_builder(shared.settings.max_header_bytes);
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
