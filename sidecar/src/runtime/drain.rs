//! The kubelet's termination order, followed: preStop → SIGTERM → (SIGKILL at the deadline).
//!
//! preStop flips readiness and holds so load balancers forget the pod. SIGTERM stops accepting,
//! closes every client stream with a `retry:` hint at a jittered moment within the drain window
//! (clients reconnect elsewhere and tail the store while this pod keeps recording), then records a
//! handover for every session still captured, keeps capturing until each new owner has taken over
//! or the margin is over, releases every lease, and returns so the process exits 0 in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::DrainPhase;
use crate::phase::Lifecycle;
use crate::session::Sessions;

/// How often the drain checks whether it can move on early.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for stopped recorders to write what they hold.
const STOP_BUDGET: Duration = Duration::from_secs(4);
/// How long before the app's SIGTERM capturing stops. The app's preStop sleep ends `drain +
/// margin` after this sidecar's SIGTERM (both follow the same preStop hold); an app that closes
/// its streams cleanly on SIGTERM would otherwise make a still-capturing recorder record `End`, and
/// the client's stream would end instead of being taken over from the app's last id.
const STOP_AHEAD: Duration = Duration::from_secs(1);

/// How long the drain takes: the window over which streams are closed, and the margin after it
/// during which sessions are captured until their new owners take over.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--drain-seconds`.
    pub drain: Duration,
    /// `--handover-margin-seconds`.
    pub handover_margin: Duration,
}

/// The SIGTERM sequence; returns when the sidecar may exit.
pub async fn run(shared: Arc<Sessions>, lifecycle: Arc<Lifecycle>, s: Timing) {
    let streams = shared.clients.streams();
    let started = Instant::now();
    tracing::info!(
        streams = streams.len(),
        recorders = shared.recorders.len(),
        drain_secs = s.drain.as_secs(),
        "SIGTERM: draining"
    );
    lifecycle.set(DrainPhase::Draining);
    lifecycle.stop_accepting.cancel();
    shared.book.set_draining();
    {
        let book = shared.book.clone();
        tokio::spawn(async move { book.renew_round().await });
    }
    streams.close_all_spread(s.drain);

    // The drain window; over early once nothing is left to hand over (no stream, no captured
    // upstream, no session key other pods may still route here).
    let window_end = started + s.drain;
    while Instant::now() < window_end {
        if streams.is_empty() && shared.recorders.is_empty() && shared.book.is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    lifecycle.set(DrainPhase::Handover);
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
    lifecycle.set(DrainPhase::Done);
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "drain complete"
    );
}
