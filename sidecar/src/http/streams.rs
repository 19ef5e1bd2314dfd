//! The registry of open client streams: the concurrency bound, the `active_streams` gauge, and
//! the handles the drain uses to close every stream with a `retry:` hint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Open client streams. Touched when a stream opens or closes, never per event.
pub struct Streams {
    open: Mutex<Open>,
    max: usize,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

struct Open {
    next_id: u64,
    tokens: HashMap<u64, CancellationToken>,
}

/// Keeps a stream registered while the response body lives; its token closes the stream.
pub struct StreamGuard {
    id: u64,
    token: CancellationToken,
    streams: Arc<Streams>,
}

impl StreamGuard {
    /// The token the drain cancels to close this stream.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
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
            draining: AtomicBool::new(false),
            metrics,
        })
    }

    /// Register a new stream, or `None` when the bound is reached (the caller answers 503).
    /// A stream opened while draining is closed at once (it still gets its replay and the hint).
    pub fn open(self: &Arc<Self>) -> Option<StreamGuard> {
        let token = CancellationToken::new();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.tokens.len() >= self.max {
            return None;
        }
        let id = open.next_id;
        open.next_id += 1;
        open.tokens.insert(id, token.clone());
        drop(open);
        self.metrics.active_streams.inc();
        if self.draining.load(Ordering::Acquire) {
            token.cancel();
        }
        Some(StreamGuard {
            id,
            token,
            streams: self.clone(),
        })
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

    /// Close every open stream at a random moment within `window` (no reconnect storm), and
    /// every stream opened from now on at once.
    pub fn close_all_spread(&self, window: Duration) {
        self.draining.store(true, Ordering::Release);
        let tokens: Vec<CancellationToken> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .values()
            .cloned()
            .collect();
        for token in tokens {
            let delay = jitter(window);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                token.cancel();
            });
        }
    }
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
        let a = streams.open().unwrap();
        let b = streams.open().unwrap();
        assert!(streams.open().is_none());
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
    async fn draining_closes_new_streams_at_once() {
        let streams = Streams::new(10, Arc::new(Metrics::new()));
        let old = streams.open().unwrap();
        streams.close_all_spread(Duration::from_millis(20));
        let new = streams.open().unwrap();
        assert!(new.token().is_cancelled());
        tokio::time::timeout(Duration::from_secs(2), old.token().cancelled())
            .await
            .unwrap();
    }
}
