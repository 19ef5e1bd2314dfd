//! Ending a session here so another pod can take it over: the recorder's phase and the keys its
//! session's requests carry.
//!
//! A handover first closes the keys (new requests for the session get `404` at once), then waits
//! until the requests already accepted are answered — their answers are events on this stream —
//! and only then is `Handover` recorded. Pure bookkeeping over [`Gates`]: the recorder does the
//! store writes, so this is tested without a store or a socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cursor::SessionId;
use crate::metrics::HandoverReason;
use crate::session::gates::Gates;

/// Longest a handover waits for the session's accepted requests to be answered: a request the
/// app answers later than this (async work) is not waited for.
pub(super) const WAIT_MAX: Duration = Duration::from_secs(2);
/// How long after the last accepted request was answered (and after the keys closed) the app's
/// reply event is given to reach the recorder before `Handover` is recorded.
const SETTLE: Duration = Duration::from_millis(100);
/// How often a pending handover looks again while one of its session's requests is in flight
/// (or, in a drain, until the session is quiet): when that request leaves is not known ahead.
const POLL: Duration = Duration::from_millis(10);
/// How long a handed-over session's keys keep refusing requests after its recorder ended.
const KEYS_CLOSED_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Where a recorder is in ending its session here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Capturing and serving clients.
    Capturing,
    /// A session stream in a drain: still serving its keys, until none of its requests is in
    /// flight (or `until`); then the handover begins.
    Quieting {
        reason: HandoverReason,
        until: Instant,
    },
    /// Handing over: the session's keys refuse new requests; capturing until the ones accepted
    /// are answered, then `Handover` is recorded.
    HandingOver(HandoverReason),
    /// Handover recorded (drain): capturing until fenced or stopped; clients resume elsewhere.
    HandedOver,
}

/// The phase, the session's keys and the wait for its accepted requests.
pub(super) struct Handover {
    phase: Phase,
    /// The keys requests for this stream's session carry: its own id and the key learned from
    /// the `endpoint` event.
    keys: Vec<SessionId>,
    /// Whether `keys` were closed (a handover began).
    keys_closed: bool,
    /// Until when a pending handover waits for accepted requests.
    wait_until: Option<Instant>,
}

impl Handover {
    /// A capturing session whose requests carry its own id.
    pub(super) fn new(session: SessionId) -> Self {
        Handover {
            phase: Phase::Capturing,
            keys: vec![session],
            keys_closed: false,
            wait_until: None,
        }
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the session is still served here (no handover begun).
    pub(super) fn is_capturing(&self) -> bool {
        matches!(self.phase, Phase::Capturing | Phase::Quieting { .. })
    }

    /// Whether nothing about a handover was decided yet.
    pub(super) fn is_untouched(&self) -> bool {
        self.phase == Phase::Capturing
    }

    /// A session stream's drain: keep serving its keys until none of its requests is in flight,
    /// at most `until`, then begin the handover as [`Handover::begin`] does.
    pub(super) fn begin_when_quiet(&mut self, reason: HandoverReason, until: Instant) {
        self.phase = Phase::Quieting { reason, until };
    }

    /// A key learned from the app (the `endpoint` event) that requests for the session carry.
    pub(super) fn add_key(&mut self, key: SessionId) {
        self.keys.push(key);
    }

    /// Whether a begun handover waits for accepted requests (or for its session to be quiet).
    pub(super) fn is_waiting(&self) -> bool {
        self.wait_until.is_some() || matches!(self.phase, Phase::Quieting { .. })
    }

    /// Refuse new requests for the session from now on.
    pub(super) fn close_keys(&mut self, gates: &Gates) {
        gates.close(&self.keys);
        self.keys_closed = true;
    }

    /// Start handing over: close the keys and wait (at most [`WAIT_MAX`]) for the requests
    /// already accepted.
    pub(super) fn begin(&mut self, reason: HandoverReason, gates: &Gates, now: Instant) {
        self.close_keys(gates);
        self.phase = Phase::HandingOver(reason);
        self.wait_until = Some(now + WAIT_MAX);
    }

    /// The reason, once the pending handover may be recorded: every accepted request answered
    /// and `batch_window`-scaled settle time passed, or the wait is over. Ends the wait.
    pub(super) fn due(
        &mut self,
        gates: &Gates,
        batch_window: Duration,
        now: Instant,
    ) -> Option<HandoverReason> {
        if let Phase::Quieting { reason, until } = self.phase
            && (now >= until || gates.idle(&self.keys))
        {
            self.begin(reason, gates, now);
            return None;
        }
        let Phase::HandingOver(reason) = self.phase else {
            return None;
        };
        let settle = settle_time(batch_window);
        let over = self.wait_until.is_none_or(|t| now >= t);
        if !over && !gates.quiet(&self.keys, settle) {
            return None;
        }
        self.wait_until = None;
        Some(reason)
    }

    /// When a waiting handover should next ask [`Handover::due`]: the moment its keys turn
    /// quiet if no request is in flight, else after [`POLL`]; never after its wait is over.
    pub(super) fn next_check(
        &self,
        gates: &Gates,
        batch_window: Duration,
        now: Instant,
    ) -> Instant {
        let poll = now + POLL;
        match self.phase {
            Phase::Quieting { .. } if gates.idle(&self.keys) => now,
            Phase::Quieting { until, .. } => poll.min(until),
            Phase::HandingOver(_) => {
                let quiet = gates
                    .quiet_at(&self.keys, settle_time(batch_window))
                    .unwrap_or(poll);
                self.wait_until.map_or(quiet, |w| quiet.min(w))
            }
            Phase::Capturing | Phase::HandedOver => now,
        }
    }

    /// `Handover` was recorded.
    pub(super) fn recorded(&mut self) {
        self.phase = Phase::HandedOver;
    }

    /// The handover begun but not recorded yet (the recorder stops before the wait was over).
    pub(super) fn unrecorded(&self) -> Option<HandoverReason> {
        match self.phase {
            Phase::HandingOver(reason) | Phase::Quieting { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Closed keys stay closed a little after the upstream is dropped (the app may take a
    /// moment to notice its session is gone and would still accept requests for it), then are
    /// forgotten.
    pub(super) fn forget_keys_later(&self, gates: &Arc<Gates>) {
        if !self.keys_closed {
            return;
        }
        let gates = gates.clone();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            tokio::time::sleep(KEYS_CLOSED_AFTER_EXIT).await;
            gates.forget(&keys);
        });
    }
}

/// How long the app's reply events get to reach the recorder after the session's last request
/// was answered: longer when batches are held longer.
fn settle_time(batch_window: Duration) -> Duration {
    SETTLE.max(batch_window * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn a_handover_closes_the_keys_and_waits_for_the_accepted_requests() {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s1"));
        h.add_key(key("mcp-1"));
        let inflight = gates
            .enter(&key("mcp-1"))
            .expect("open before the handover");
        let t0 = Instant::now();
        h.begin(HandoverReason::Drain, &gates, t0);
        assert!(!h.is_capturing() && h.is_waiting());
        assert!(
            gates.enter(&key("s1")).is_none(),
            "new requests are refused"
        );
        assert!(gates.enter(&key("mcp-1")).is_none());
        assert_eq!(
            h.due(&gates, Duration::ZERO, t0),
            None,
            "a request is in flight"
        );
        assert_eq!(h.unrecorded(), Some(HandoverReason::Drain));
        drop(inflight);
        // Answered, but its reply event gets the settle time to arrive.
        assert_eq!(h.due(&gates, Duration::ZERO, Instant::now()), None);
        std::thread::sleep(SETTLE + Duration::from_millis(20));
        assert_eq!(
            h.due(&gates, Duration::ZERO, Instant::now()),
            Some(HandoverReason::Drain)
        );
        assert!(!h.is_waiting());
        h.recorded();
        assert_eq!(h.phase(), Phase::HandedOver);
        assert_eq!(h.unrecorded(), None);
    }

    #[test]
    fn a_request_the_app_never_answers_is_waited_for_only_so_long() {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s2"));
        let _stuck = gates.enter(&key("s2")).unwrap();
        let t0 = Instant::now();
        h.begin(HandoverReason::ResumeWindow, &gates, t0);
        assert_eq!(h.due(&gates, Duration::ZERO, t0 + WAIT_MAX / 2), None);
        assert_eq!(
            h.due(&gates, Duration::ZERO, t0 + WAIT_MAX),
            Some(HandoverReason::ResumeWindow)
        );
    }

    #[test]
    fn a_session_stream_serves_its_keys_until_no_request_is_in_flight() {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s4"));
        h.add_key(key("mcp-4"));
        let call = gates.enter(&key("mcp-4")).unwrap();
        let t0 = Instant::now();
        h.begin_when_quiet(HandoverReason::Drain, t0 + Duration::from_secs(60));
        assert!(h.is_capturing() && !h.is_untouched() && h.is_waiting());
        assert_eq!(h.due(&gates, Duration::ZERO, t0), None);
        let another = gates.enter(&key("mcp-4"));
        assert!(
            another.is_some(),
            "keys still served while a call is in flight"
        );
        drop((call, another));
        assert_eq!(h.due(&gates, Duration::ZERO, Instant::now()), None);
        assert!(!h.is_capturing(), "quiet: the handover began");
        assert!(
            gates.enter(&key("mcp-4")).is_none(),
            "now new requests get 404"
        );
        std::thread::sleep(SETTLE + Duration::from_millis(20));
        assert_eq!(
            h.due(&gates, Duration::ZERO, Instant::now()),
            Some(HandoverReason::Drain)
        );
    }

    #[test]
    fn a_session_that_never_quiets_hands_over_at_the_deadline() {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s5"));
        let _busy = gates.enter(&key("s5")).unwrap();
        let t0 = Instant::now();
        h.begin_when_quiet(HandoverReason::Drain, t0 + Duration::from_secs(1));
        assert_eq!(h.unrecorded(), Some(HandoverReason::Drain));
        assert_eq!(h.due(&gates, Duration::ZERO, t0), None);
        assert!(h.is_capturing());
        assert_eq!(
            h.due(&gates, Duration::ZERO, t0 + Duration::from_secs(1)),
            None
        );
        assert!(!h.is_capturing());
    }

    #[test]
    fn a_waiting_handover_sleeps_until_its_keys_turn_quiet_and_polls_only_while_a_request_is_in_flight()
     {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s6"));
        let call = gates.enter(&key("s6")).unwrap();
        let t0 = Instant::now();
        h.begin(HandoverReason::ResumeWindow, &gates, t0);
        assert_eq!(
            h.next_check(&gates, Duration::ZERO, t0),
            t0 + POLL,
            "when the request leaves is not known"
        );
        let before_exit = Instant::now();
        drop(call);
        let left = Instant::now();
        let at = h.next_check(&gates, Duration::ZERO, left);
        assert!(
            at >= before_exit + SETTLE && at <= left + SETTLE,
            "one look, when the settle time after the exit is over"
        );
        assert_eq!(h.due(&gates, Duration::ZERO, left), None, "not yet settled");
        std::thread::sleep(at.saturating_duration_since(Instant::now()) + Duration::from_millis(5));
        assert_eq!(
            h.due(&gates, Duration::ZERO, Instant::now()),
            Some(HandoverReason::ResumeWindow)
        );
        // A longer batch window stretches the settle time, and the wait's end caps the sleep.
        let mut h = Handover::new(key("s7"));
        let t1 = Instant::now();
        h.begin(HandoverReason::Drain, &gates, t1);
        let long = h.next_check(&gates, Duration::from_secs(10), t1);
        assert_eq!(long, t1 + WAIT_MAX);
    }

    #[test]
    fn a_quieting_session_stream_looks_at_once_when_idle() {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s8"));
        let t0 = Instant::now();
        h.begin_when_quiet(HandoverReason::Drain, t0 + Duration::from_millis(3));
        assert_eq!(h.next_check(&gates, Duration::ZERO, t0), t0);
        let _busy = gates.enter(&key("s8")).unwrap();
        assert_eq!(
            h.next_check(&gates, Duration::ZERO, t0),
            t0 + Duration::from_millis(3),
            "never past its deadline"
        );
    }

    #[test]
    fn nothing_is_due_while_capturing() {
        let gates = Arc::new(Gates::default());
        let mut h = Handover::new(key("s3"));
        assert!(h.is_capturing() && !h.is_waiting());
        assert_eq!(h.due(&gates, Duration::ZERO, Instant::now()), None);
        assert!(gates.enter(&key("s3")).is_some(), "keys stay open");
    }
}
