//! The kubelet's termination order, followed: preStop → SIGTERM → (SIGKILL at the deadline).
//!
//! preStop flips readiness and holds so load balancers forget the pod. SIGTERM stops accepting,
//! closes every client stream with a `retry:` hint at a jittered moment within the drain window
//! (clients reconnect elsewhere and tail the store while this pod keeps recording), then records a
//! handover for every session still captured, keeps capturing until each new owner has taken over
//! or the margin is over, releases every lease, and returns so the process exits 0 in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::{DrainPhase, Metrics};
use crate::state::Shared;

/// How often the drain checks whether it can move on early.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for stopped recorders to write what they hold.
const STOP_BUDGET: Duration = Duration::from_secs(4);
/// How long before the app's SIGTERM capturing stops. The app's preStop sleep ends `drain +
/// margin` after this sidecar's SIGTERM (both follow the same preStop hold); an app that closes
/// its streams cleanly on SIGTERM would otherwise make a still-capturing recorder record `End`, and
/// the client's stream would end instead of being taken over from the app's last id.
const STOP_AHEAD: Duration = Duration::from_secs(1);

/// The drain phase, readiness, and the signal that stops accepting connections.
pub struct Lifecycle {
    phase: AtomicU8,
    /// Cancelled at SIGTERM: the client listener stops accepting and connections stop keep-alive.
    pub stop_accepting: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// Serving.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.set_phase(DrainPhase::Serving);
        Lifecycle {
            phase: AtomicU8::new(DrainPhase::Serving as u8),
            stop_accepting: CancellationToken::new(),
            metrics,
        }
    }

    fn set(&self, phase: DrainPhase) {
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

/// The SIGTERM sequence; returns when the sidecar may exit.
pub async fn run(shared: Arc<Shared>) {
    let s = &shared.settings;
    let started = Instant::now();
    tracing::info!(
        streams = shared.streams.len(),
        recorders = shared.recorders.len(),
        drain_secs = s.drain.as_secs(),
        "SIGTERM: draining"
    );
    shared.lifecycle.set(DrainPhase::Draining);
    shared.lifecycle.stop_accepting.cancel();
    shared.book.set_draining();
    {
        let book = shared.book.clone();
        tokio::spawn(async move { book.renew_round().await });
    }
    shared.streams.close_all_spread(s.drain);

    // The drain window; over early once nothing is left to hand over (no stream, no captured
    // upstream, no session key other pods may still route here).
    let window_end = started + s.drain;
    while Instant::now() < window_end {
        if shared.streams.is_empty() && shared.recorders.is_empty() && shared.book.is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    shared.lifecycle.set(DrainPhase::Handover);
    let open = shared.recorders.all();
    tracing::info!(
        sessions = open.len(),
        "drain window over: handing sessions over"
    );
    for r in &open {
        r.handover();
    }
    // Counted from SIGTERM, not from the end of the window: the app's SIGTERM is.
    let margin_end = (started + s.drain + s.handover_margin)
        .checked_sub(STOP_AHEAD)
        .unwrap_or(started);
    while Instant::now() < margin_end && !shared.recorders.is_empty() {
        tokio::time::sleep(POLL).await;
    }

    let left = shared.recorders.all();
    if !left.is_empty() {
        tracing::info!(
            sessions = left.len(),
            "handover margin over: stopping the rest"
        );
    }
    for r in &left {
        r.stop();
    }
    let _ = tokio::time::timeout(STOP_BUDGET, async {
        for r in &left {
            r.stopped().await;
        }
    })
    .await;
    shared.book.release_all().await;
    shared.lifecycle.set(DrainPhase::Done);
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "drain complete"
    );
}
