//! The registry of open client streams: the concurrency bound, the `active_streams` gauge, and
//! the handles the drain uses to close the resumable ones with a `retry:` hint (see
//! [`crate::http::kind`] for the streams it leaves open). Rebalancing sheds through it too: the
//! oldest resumable stream, closed the same way, marked so its recorder hands the session over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::http::kind::{KindCell, StreamKind};
use crate::metrics::Metrics;

/// Open client streams. Touched when a stream opens or closes, never per event.
pub struct Streams {
    open: Mutex<Open>,
    max: usize,
    /// When the drain window closing the resumable streams ends (`None`: not draining).
    window_end: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

struct Open {
    next_id: u64,
    /// By id, which grows with every stream: the first entry is the oldest.
    tokens: BTreeMap<u64, Slot>,
}

/// One open stream as the registry holds it.
#[derive(Clone)]
struct Slot {
    token: CancellationToken,
    kind: KindCell,
    shed: ShedMark,
}

/// Set when rebalancing closed the stream (shared by the registry, the stream's guard and its
/// producer), so the recorder whose client it was hands the session over soon instead of
/// waiting out the resume window.
#[derive(Debug, Clone, Default)]
pub struct ShedMark(Arc<AtomicBool>);

impl ShedMark {
    /// Whether rebalancing closed the stream.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Open streams by what rebalancing needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Every open stream.
    pub total: usize,
    /// Resumable streams not already closing (what could be shed).
    pub resumable: usize,
}

/// Keeps a stream registered while the response body lives; its token closes the stream.
pub struct StreamGuard {
    id: u64,
    token: CancellationToken,
    kind: KindCell,
    shed: ShedMark,
    streams: Arc<Streams>,
}

impl StreamGuard {
    /// The token the drain cancels to close this stream.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Set once rebalancing closed this stream.
    pub fn shed_mark(&self) -> ShedMark {
        self.shed.clone()
    }

    /// The stream's kind.
    pub fn kind(&self) -> StreamKind {
        self.kind.get()
    }

    /// The shared cell holding the stream's kind.
    pub fn kind_cell(&self) -> KindCell {
        self.kind.clone()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.tokens.remove(&self.id).is_some() {
            self.streams.metrics.active_streams.dec();
        }
    }
}

impl Streams {
    /// A registry admitting at most `max` streams at once.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Streams {
            open: Mutex::new(Open {
                next_id: 0,
                tokens: BTreeMap::new(),
            }),
            max,
            window_end: Mutex::new(None),
            metrics,
        })
    }

    /// Register a new stream of `kind`, or `None` when the bound is reached (the caller answers
    /// 503). A resumable stream opened while draining is served and closed at a random moment in
    /// what is left of the drain window (at once after it); the other kinds are left open.
    pub fn open(self: &Arc<Self>, kind: KindCell) -> Option<StreamGuard> {
        let token = CancellationToken::new();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.tokens.len() >= self.max {
            return None;
        }
        let id = open.next_id;
        open.next_id += 1;
        let shed = ShedMark::default();
        open.tokens.insert(
            id,
            Slot {
                token: token.clone(),
                kind: kind.clone(),
                shed: shed.clone(),
            },
        );
        drop(open);
        self.metrics.active_streams.inc();
        let window_end = *self.window_end.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(end) = window_end {
            let left = end.saturating_duration_since(Instant::now());
            close_resumable_after(token.clone(), kind.clone(), jitter(left));
        }
        Some(StreamGuard {
            id,
            token,
            kind,
            shed,
            streams: self.clone(),
        })
    }

    /// Whether the bound is reached: a request for a stream is refused before the app is asked.
    pub fn is_full(&self) -> bool {
        self.len() >= self.max
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many open streams are of one of `kinds`.
    pub fn count(&self, kinds: &[StreamKind]) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .values()
            .filter(|s| kinds.contains(&s.kind.get()))
            .count()
    }

    /// Every open stream, and the resumable ones not already closing (one pass, one lock).
    pub fn counts(&self) -> Counts {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let resumable = open
            .tokens
            .values()
            .filter(|s| s.kind.get() == StreamKind::Resumable && !s.token.is_cancelled())
            .count();
        Counts {
            total: open.tokens.len(),
            resumable,
        }
    }

    /// Rebalancing: close the oldest resumable stream the way the drain does (what is queued,
    /// then the `retry:` hint) and mark it shed, so its recorder hands the session over once the
    /// client had time to reconnect elsewhere. Only resumable streams: a session stream's
    /// client would lose its session's calls, a request stream's client its answer. The oldest,
    /// because a stream shed a moment ago and back here is then the youngest: every client is
    /// moved once before any is moved twice. `false` when none is left to shed.
    pub fn shed_oldest(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = open
            .tokens
            .values()
            .find(|s| s.kind.get() == StreamKind::Resumable && !s.token.is_cancelled())
        else {
            return false;
        };
        slot.shed.set();
        slot.token.cancel();
        true
    }

    /// Close every resumable stream at a random moment within `window` (no reconnect storm),
    /// and those opened from now on within what is left of it. Request and session streams are
    /// left open (the drain ends them).
    pub fn close_resumable_spread(&self, window: Duration) {
        *self.window_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + window);
        let open: Vec<Slot> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .values()
            .cloned()
            .collect();
        for s in open {
            close_resumable_after(s.token, s.kind, jitter(window));
        }
    }

    /// Close every open stream now, whatever its kind (the request deadline).
    pub fn close_all(&self) {
        for s in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .values()
        {
            s.token.cancel();
        }
    }
}

/// Close the stream after `delay` if it is still resumable then (it may have announced a
/// session meanwhile).
fn close_resumable_after(token: CancellationToken, kind: KindCell, delay: Duration) {
    if kind.get() != StreamKind::Resumable {
        return;
    }
    if delay.is_zero() {
        token.cancel();
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if kind.get() == StreamKind::Resumable {
            token.cancel();
        }
    });
}

/// A uniformly random delay in `[0, window)`, leaving the last 10% of the window free so the
/// last client has time to reconnect before the handover.
fn jitter(window: Duration) -> Duration {
    let span = window.mul_f64(0.9).as_millis() as u64;
    if span == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::random_range(0..span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_and_gauge_follow_guards() {
        let metrics = Arc::new(Metrics::new());
        let streams = Streams::new(2, metrics.clone());
        let a = streams.open(KindCell::default()).unwrap();
        let b = streams.open(KindCell::default()).unwrap();
        assert!(streams.open(KindCell::default()).is_none());
        assert_eq!(metrics.active_streams.get(), 2);
        drop(a);
        assert_eq!(streams.len(), 1);
        assert_eq!(metrics.active_streams.get(), 1);
        drop(b);
        assert!(streams.is_empty());
    }

    #[test]
    fn jitter_stays_in_the_window() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(2)) < Duration::from_millis(1800));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_drain_closes_resumable_streams_and_leaves_the_others_open() {
        let streams = Streams::new(10, Arc::new(Metrics::new()));
        let old = streams.open(KindCell::default()).unwrap();
        let request = streams.open(KindCell::new(StreamKind::Request)).unwrap();
        let session = streams.open(KindCell::new(StreamKind::Session)).unwrap();
        let announced = KindCell::default();
        let later_session = streams.open(announced.clone()).unwrap();
        announced.announce_session();
        streams.close_resumable_spread(Duration::from_millis(200));
        let new = streams.open(KindCell::default()).unwrap();
        let new_request = streams.open(KindCell::new(StreamKind::Request)).unwrap();
        assert!(
            !new.token().is_cancelled(),
            "a stream opened while draining is served, not closed at once"
        );
        tokio::time::timeout(Duration::from_secs(2), old.token().cancelled())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), new.token().cancelled())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        for g in [&request, &session, &later_session, &new_request] {
            assert!(!g.token().is_cancelled(), "{:?} left open", g.kind());
        }
        assert_eq!(streams.count(&[StreamKind::Request]), 2);
        assert_eq!(streams.count(&[StreamKind::Session]), 2);
        streams.close_all();
        assert!(request.token().is_cancelled() && session.token().is_cancelled());
    }

    #[test]
    fn shedding_closes_the_oldest_resumable_stream_and_nothing_else() {
        let streams = Streams::new(10, Arc::new(Metrics::new()));
        let request = streams.open(KindCell::new(StreamKind::Request)).unwrap();
        let session = streams.open(KindCell::new(StreamKind::Session)).unwrap();
        let old = streams.open(KindCell::default()).unwrap();
        let young = streams.open(KindCell::default()).unwrap();
        assert_eq!(
            streams.counts(),
            Counts {
                total: 4,
                resumable: 2
            }
        );
        assert!(streams.shed_oldest());
        assert!(old.token().is_cancelled() && old.shed_mark().is_set());
        assert!(!young.token().is_cancelled() && !young.shed_mark().is_set());
        assert_eq!(
            streams.counts().resumable,
            1,
            "a closing stream is not counted"
        );
        assert!(streams.shed_oldest());
        assert!(young.token().is_cancelled());
        assert!(
            !streams.shed_oldest(),
            "only session and request streams are left"
        );
        for g in [&request, &session] {
            assert!(!g.token().is_cancelled() && !g.shed_mark().is_set());
        }
        drop((old, young));
        assert_eq!(
            streams.counts(),
            Counts {
                total: 2,
                resumable: 0
            }
        );
    }

    #[tokio::test]
    async fn after_the_window_a_new_resumable_stream_is_closed_at_once() {
        let streams = Streams::new(10, Arc::new(Metrics::new()));
        streams.close_resumable_spread(Duration::ZERO);
        assert!(
            streams
                .open(KindCell::default())
                .unwrap()
                .token()
                .is_cancelled()
        );
    }
}
