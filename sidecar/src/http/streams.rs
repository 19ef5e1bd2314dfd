//! The registry of open client streams: the concurrency bound, the `active_streams` gauge, and
//! the handles the drain uses to close the resumable ones with a `retry:` hint (see
//! [`crate::http::kind`] for the streams it leaves open).

use std::collections::HashMap;
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
    tokens: HashMap<u64, (CancellationToken, KindCell)>,
}

/// Keeps a stream registered while the response body lives; its token closes the stream.
pub struct StreamGuard {
    id: u64,
    token: CancellationToken,
    kind: KindCell,
    streams: Arc<Streams>,
}

impl StreamGuard {
    /// The token the drain cancels to close this stream.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
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
                tokens: HashMap::new(),
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
        open.tokens.insert(id, (token.clone(), kind.clone()));
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
            .filter(|(_, k)| kinds.contains(&k.get()))
            .count()
    }

    /// Close every resumable stream at a random moment within `window` (no reconnect storm),
    /// and those opened from now on within what is left of it. Request and session streams are
    /// left open (the drain ends them).
    pub fn close_resumable_spread(&self, window: Duration) {
        *self.window_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + window);
        let open: Vec<(CancellationToken, KindCell)> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .values()
            .cloned()
            .collect();
        for (token, kind) in open {
            close_resumable_after(token, kind, jitter(window));
        }
    }

    /// Close every open stream now, whatever its kind (the request deadline).
    pub fn close_all(&self) {
        for (token, _) in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .values()
        {
            token.cancel();
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
