//! Where the pod is in the kubelet's termination order, and whether it takes new traffic: set by
//! the preStop hook and the drain, read by probes, listeners and recorders.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::{DrainPhase, Metrics};

/// The drain phase, readiness, and the signal that stops accepting connections.
pub struct Lifecycle {
    phase: AtomicU8,
    /// Cancelled at SIGTERM: the client listener stops accepting and connections stop keep-alive.
    pub stop_accepting: CancellationToken,
    /// Cancelled once the drain no longer needs the app (nothing captures its streams): the
    /// app's preStop hook, waiting on the admin port, returns and the app gets its SIGTERM.
    app_released: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// Serving.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.set_phase(DrainPhase::Serving);
        Lifecycle {
            phase: AtomicU8::new(DrainPhase::Serving as u8),
            stop_accepting: CancellationToken::new(),
            app_released: CancellationToken::new(),
            metrics,
        }
    }

    /// Move on to `phase` (never back).
    pub fn set(&self, phase: DrainPhase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.metrics.set_phase(phase);
    }

    /// Whether the pod should receive new traffic (the app's state is checked separately).
    pub fn ready(&self) -> bool {
        self.phase.load(Ordering::Acquire) == DrainPhase::Serving as u8
    }

    /// Whether SIGTERM arrived.
    pub fn is_draining(&self) -> bool {
        self.phase.load(Ordering::Acquire) >= DrainPhase::Draining as u8
    }

    /// The drain is done with the app.
    pub fn release_app(&self) {
        self.app_released.cancel();
    }

    /// Resolves once the drain is done with the app (see [`Lifecycle::release_app`]).
    pub async fn app_released(&self) {
        self.app_released.cancelled().await
    }

    /// The preStop hook: not ready from now on; answer after `delay`.
    pub async fn prestop(&self, delay: Duration) {
        if self.ready() {
            tracing::info!(
                hold_secs = delay.as_secs(),
                "preStop: readiness off, holding"
            );
            self.set(DrainPhase::PreStop);
        }
        tokio::time::sleep(delay).await;
    }
}
