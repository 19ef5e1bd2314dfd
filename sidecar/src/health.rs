//! Health of what the sidecar depends on: the session store and the app's port.
//!
//! The store's health is learned from the calls the sidecar makes anyway (plus a cheap ping while
//! it is down), so an outage is reported once, as a gauge flip and a log line, not per call. The
//! app's readiness is a TCP connect every second: cheap, and enough to keep traffic off a pod
//! whose app is not listening yet or any more.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{SessionStore, StoreError, StoreResult};

/// Whether the store answers, as last observed.
pub struct StoreHealth {
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    /// Assume up until a call says otherwise.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.store_up.set(1);
        Arc::new(StoreHealth {
            up: AtomicBool::new(true),
            metrics,
        })
    }

    /// Whether the last call reached the store.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Learn from a call's result: `Unavailable` means down, anything else means it answered.
    pub fn observe<T>(&self, result: &StoreResult<T>) {
        let up = !matches!(result, Err(StoreError::Unavailable(_)));
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics.store_up.set(i64::from(up));
            if up {
                tracing::info!("session store is back: recording and replay resume");
            } else {
                self.metrics.error("store_unavailable");
                if let Err(e) = result {
                    tracing::warn!(error = %e, "session store unavailable: streaming without recording or replay");
                }
            }
        }
    }

    /// Ping the store every `every` while it is down, so recovery is noticed without traffic.
    pub fn spawn_pinger(
        self: &Arc<Self>,
        store: Arc<dyn SessionStore>,
        every: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let r = timed(timeout, store.ping()).await;
                health.observe(&r);
            }
        });
    }
}

/// A store call with a time budget; running out of time counts as the store being unavailable.
pub async fn timed<T>(
    budget: Duration,
    call: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(budget, call).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} ms",
            budget.as_millis()
        ))),
    }
}

/// Whether the app accepts TCP connections, refreshed every second.
pub struct AppProbe {
    up: AtomicBool,
}

impl AppProbe {
    /// Start probing `addr`; the first probe runs at once.
    pub fn spawn(addr: SocketAddr, metrics: Arc<Metrics>, stop: CancellationToken) -> Arc<Self> {
        let probe = Arc::new(AppProbe {
            up: AtomicBool::new(false),
        });
        let p = probe.clone();
        tokio::spawn(async move {
            loop {
                let up = matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect(addr)
                    )
                    .await,
                    Ok(Ok(_))
                );
                if p.up.swap(up, Ordering::Relaxed) != up {
                    metrics.app_up.set(i64::from(up));
                    tracing::info!(app = %addr, up, "app port readiness changed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        probe
    }

    /// Whether the last probe connected.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}
