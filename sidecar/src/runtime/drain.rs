//! The kubelet's termination order, followed: preStop → SIGTERM → (SIGKILL at the deadline).
//!
//! preStop flips readiness and holds so load balancers forget the pod. SIGTERM stops accepting
//! and ends each stream the way its client survives (see [`crate::http::kind`]):
//! - resumable streams are closed with a `retry:` hint at a jittered moment within the drain
//!   window (clients reconnect elsewhere and tail the store while this pod keeps recording); at
//!   the window's end a handover is recorded for each, and capturing goes on until each new owner
//!   has taken over or the handover margin is over;
//! - session streams stay open past the window until no call on their session is in flight,
//!   then hand over and end;
//! - request streams finish in place; one still running at the request deadline is cut there
//!   (counted, logged with its age).
//!
//! Then the app is released (its preStop hook, waiting on the admin port, returns so it gets its
//! SIGTERM), every lease is released, and the drain returns so the process exits 0: as soon as
//! the last stream is done, not at the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::kind::StreamKind;
use crate::metrics::DrainPhase;
use crate::phase::Lifecycle;
use crate::session::Sessions;
use crate::session::broadcast::Broadcasts;

/// How often the drain checks whether it can move on early.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for stopped recorders to write what they hold.
const STOP_BUDGET: Duration = Duration::from_secs(4);

/// How long the drain takes: the window over which streams are closed, and the margin after it
/// during which sessions are captured until their new owners take over.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--drain-seconds`.
    pub drain: Duration,
    /// `--handover-margin-seconds`.
    pub handover_margin: Duration,
    /// `--request-seconds`: how long after SIGTERM request and session streams may still run.
    pub request: Duration,
}

/// The SIGTERM sequence; returns when the sidecar may exit.
pub async fn run(
    shared: Arc<Sessions>,
    broadcasts: Arc<Broadcasts>,
    lifecycle: Arc<Lifecycle>,
    s: Timing,
) {
    let streams = shared.clients.streams();
    let started = Instant::now();
    let deadline = started + s.request.max(s.drain);
    tracing::info!(
        streams = streams.len(),
        request_streams = streams.count(&[StreamKind::Request]),
        session_streams = streams.count(&[StreamKind::Session]),
        recorders = shared.recorders.len(),
        drain_secs = s.drain.as_secs(),
        request_secs = s.request.as_secs(),
        "SIGTERM: draining"
    );
    lifecycle.set(DrainPhase::Draining);
    lifecycle.stop_accepting.cancel();
    shared.book.set_draining();
    // A broadcast upstream is handed over at once: the other pods keep serving its clients.
    broadcasts.drain();
    {
        let book = shared.book.clone();
        tokio::spawn(async move { book.renew_round().await });
    }
    streams.close_resumable_spread(s.drain);

    // The drain window; over early once nothing is left to hand over (no resumable or session
    // stream, no captured upstream but request streams, no session key other pods may still
    // route here).
    let window_end = started + s.drain;
    let handed = [StreamKind::Resumable, StreamKind::Session];
    while Instant::now() < window_end {
        if streams.count(&handed) == 0
            && shared.recorders.of_kinds(&handed).is_empty()
            && shared.book.len() <= shared.recorders.len() + broadcasts.held()
        {
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
        r.handover(deadline);
    }
    let margin_end = started + s.drain + s.handover_margin;
    let resumable = [StreamKind::Resumable];
    while Instant::now() < margin_end && !shared.recorders.of_kinds(&resumable).is_empty() {
        tokio::time::sleep(POLL).await;
    }
    let left = shared.recorders.of_kinds(&resumable);
    if !left.is_empty() {
        tracing::info!(
            sessions = left.len(),
            "handover margin over: stopping the rest"
        );
    }
    stop(&left).await;

    // Request and session streams: until they are done, or the deadline.
    let in_place = [StreamKind::Request, StreamKind::Session];
    while Instant::now() < deadline
        && !(shared.recorders.is_empty() && streams.count(&in_place) == 0)
    {
        tokio::time::sleep(POLL).await;
    }
    let late = shared.recorders.all();
    for r in &late {
        if r.kind() == StreamKind::Request {
            shared.metrics.request_streams_cut.inc();
            tracing::warn!(
                age_secs = r.age().as_secs(),
                "request stream still running at the request deadline: cut"
            );
        }
    }
    stop(&late).await;
    streams.close_all();

    // A broadcast holder records until its successor took over (or its window is over).
    broadcasts
        .released((margin_end + Duration::from_secs(1)).saturating_duration_since(Instant::now()))
        .await;

    // Nothing captures the app's streams any more: its preStop hook may return.
    lifecycle.release_app();
    shared.book.release_all().await;
    lifecycle.set(DrainPhase::Done);
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "drain complete"
    );
}

/// Stop these recorders and wait (bounded) until they wrote what they hold.
async fn stop(recorders: &[crate::session::recorder::RecorderHandle]) {
    for r in recorders {
        r.stop();
    }
    let _ = tokio::time::timeout(STOP_BUDGET, async {
        for r in recorders {
            r.stopped().await;
        }
    })
    .await;
}
