//! Batching to the store: entries queue here and go out in batches written within the batch
//! window, at most one batch in flight so the store sees them in order.
//!
//! While the store answers, the distance between forwarded and recorded is bounded by
//! [`Limits::max_lag`]: once that many entries wait (queued or in flight), [`Batcher::is_full`]
//! tells the recorder to stop reading the app's stream, so a fast stream is slowed to what the
//! store takes instead of growing memory. While the store does not answer (the one documented
//! exception), the stream goes on unrecorded: a batch the store did not take goes back in front
//! and the oldest beyond [`Limits::max_unrecorded`] are dropped, counted and logged.

use std::collections::VecDeque;
use std::future::pending;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::cursor::SessionId;
use crate::session::leases::{Claim, LeaseBook};
use crate::store::{
    Appended, Epoch, GuardedStore, Recorded, SessionStore as _, StoreError, StoreResult,
};

/// How one batch went.
pub(super) struct FlushDone {
    /// The entries it carried.
    pub batch: Vec<Recorded>,
    /// The store's answer.
    pub result: StoreResult<Appended>,
    /// The lease, when this write had to claim it first.
    pub claim: Option<StoreResult<Claim>>,
    /// How long it took.
    pub elapsed: Duration,
}

/// The batching limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Longest an entry waits before its batch starts.
    pub window: Duration,
    /// Most entries in one batch.
    pub max_entries: usize,
    /// Most entries held while the store does not take them.
    pub max_unrecorded: usize,
    /// Most entries forwarded but not yet recorded (queued or in flight) while the store answers.
    pub max_lag: usize,
}

/// Entries on their way to the store.
pub(super) struct Batcher {
    limits: Limits,
    /// Oldest first; batches are taken off the front (a ring buffer: O(batch), not O(queue)).
    pending: VecDeque<Recorded>,
    /// Entries in the batch in flight.
    inflight_len: usize,
    pending_since: Option<Instant>,
    /// Write the pending entries as soon as possible (a resume or a handover waits for them).
    urgent: bool,
    inflight: Option<JoinHandle<FlushDone>>,
    retry_at: Option<Instant>,
}

impl Batcher {
    pub(super) fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            pending: VecDeque::new(),
            inflight_len: 0,
            pending_since: None,
            urgent: false,
            inflight: None,
            retry_at: None,
        }
    }

    /// Queue an entry.
    pub(super) fn push(&mut self, recorded: Recorded) {
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.pending.push_back(recorded);
    }

    /// Whether the recorder must stop reading its upstream until the store catches up: the lag
    /// is at its bound and the store answers (while it does not, streaming goes on unrecorded).
    pub(super) fn is_full(&self) -> bool {
        self.retry_at.is_none() && self.pending.len() + self.inflight_len >= self.limits.max_lag
    }

    /// Write what is queued as soon as possible.
    pub(super) fn hurry(&mut self) {
        self.urgent = true;
    }

    /// Entries not yet written (nor in flight).
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When the next batch should start, if one is due and none is in flight.
    pub(super) fn flush_at(&self) -> Option<Instant> {
        if self.inflight.is_some() || self.pending.is_empty() {
            return None;
        }
        let due = if self.urgent || self.pending.len() >= self.limits.max_entries {
            Instant::now()
        } else {
            self.pending_since? + self.limits.window
        };
        Some(match self.retry_at {
            Some(r) if r > due => r,
            _ => due,
        })
    }

    /// The next batch, oldest first; what is left goes as soon as it is written.
    pub(super) fn take_batch(&mut self) -> Vec<Recorded> {
        let n = self.pending.len().min(self.limits.max_entries);
        let batch: Vec<Recorded> = self.pending.drain(..n).collect();
        self.inflight_len = batch.len();
        // What is left was waiting already: it goes as soon as this batch is written.
        self.urgent = !self.pending.is_empty();
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        batch
    }

    /// The batch in flight now.
    pub(super) fn started(&mut self, write: JoinHandle<FlushDone>) {
        self.inflight = Some(write);
    }

    /// Resolves when the batch in flight is done; pending while none is.
    pub(super) async fn done(&mut self) -> Option<FlushDone> {
        let r = match &mut self.inflight {
            Some(h) => h.await.ok(),
            None => pending().await,
        };
        self.inflight = None;
        self.inflight_len = 0;
        r
    }

    /// The batch in flight, taken (to wait for it with a deadline, or to abort it).
    pub(super) fn take_inflight(&mut self) -> Option<JoinHandle<FlushDone>> {
        self.inflight_len = 0;
        self.inflight.take()
    }

    /// The store took a batch.
    pub(super) fn written(&mut self) {
        self.retry_at = None;
        self.inflight_len = 0;
    }

    /// The store did not answer: put the batch back in front, try again after `backoff`.
    /// Returns how many of the oldest entries were dropped beyond the bound.
    pub(super) fn retry(&mut self, batch: Vec<Recorded>, backoff: Duration) -> usize {
        self.retry_at = Some(Instant::now() + backoff);
        self.inflight_len = 0;
        for r in batch.into_iter().rev() {
            self.pending.push_front(r);
        }
        let dropped = self
            .pending
            .len()
            .saturating_sub(self.limits.max_unrecorded);
        self.pending.drain(..dropped);
        if !self.pending.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        dropped
    }

    /// When a retry is due, if one is.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

/// Write one batch with the session's epoch: the claim's current one (it changes after a
/// recovery), or a fresh claim when none is held yet. If the store lost the session (restart,
/// flush), it is taken again once and the batch written with the new epoch.
pub(super) async fn write_batch(
    book: &LeaseBook,
    store: &GuardedStore,
    session: &SessionId,
    claim: Option<u64>,
    batch: Vec<Recorded>,
) -> FlushDone {
    let started = Instant::now();
    let (id, epoch, claimed) = match claim {
        Some(id) => match book.epoch(session, id) {
            Some(epoch) => (id, epoch, None),
            // The holding is gone: another pod took the session over.
            None => {
                return FlushDone {
                    batch,
                    result: Err(StoreError::Fenced {
                        current: Epoch::MAX,
                    }),
                    claim: None,
                    elapsed: started.elapsed(),
                };
            }
        },
        None => match book.claim(session).await {
            Ok(c) => (c.id, c.epoch, Some(Ok(c))),
            Err(e) => {
                return FlushDone {
                    batch,
                    result: Err(e.clone()),
                    claim: Some(Err(e)),
                    elapsed: started.elapsed(),
                };
            }
        },
    };
    let epoch_now = || book.epoch(session, id).unwrap_or(epoch);
    let mut result = Ok(Appended::default());
    // A few attempts: a recovery when the store lost the session, a retry when another task of
    // this pod recovered it first.
    for _ in 0..3 {
        if batch.is_empty() {
            break;
        }
        let used = epoch_now();
        result = store.append(session, used, &batch).await;
        match &result {
            // The renewal round recovered the session while this append was on its way.
            Err(StoreError::Fenced { current }) if *current != used && *current == epoch_now() => {}
            Err(StoreError::Fenced { current }) if *current == 0 || *current == epoch_now() => {
                if let Err(e) = book.recover(session, id, Some(*current)).await {
                    result = Err(e);
                    break;
                }
            }
            _ => break,
        }
    }
    FlushDone {
        batch,
        result,
        claim: claimed,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Entry, MemoryStore, Owner, Seq, SessionStore};

    fn limits() -> Limits {
        Limits {
            window: Duration::from_millis(5),
            max_entries: 2,
            max_unrecorded: 3,
            max_lag: 4,
        }
    }

    fn rec(seq: Seq) -> Recorded {
        Recorded {
            seq,
            entry: Entry::Retry(seq),
        }
    }

    #[test]
    fn batches_are_bounded_and_a_full_queue_is_due_at_once() {
        let mut b = Batcher::new(limits());
        assert_eq!(b.flush_at(), None);
        b.push(rec(1));
        let due = b.flush_at().unwrap();
        assert!(due > Instant::now(), "one entry waits for the window");
        b.push(rec(2));
        b.push(rec(3));
        assert!(b.flush_at().unwrap() <= Instant::now());
        let batch = b.take_batch();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(b.pending(), 1);
        assert!(
            b.flush_at().unwrap() <= Instant::now(),
            "the rest is urgent"
        );
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_and_the_oldest_beyond_the_bound_are_dropped() {
        let mut b = Batcher::new(limits());
        for s in 1..=4 {
            b.push(rec(s));
        }
        let batch = b.take_batch();
        let dropped = b.retry(batch, Duration::from_secs(1));
        assert_eq!(dropped, 1);
        let next = b.take_batch();
        assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(b.retry_at().is_some());
        assert!(b.flush_at().unwrap() >= b.retry_at().unwrap() - Duration::from_millis(1));
    }

    #[test]
    fn a_full_lag_stops_the_upstream_while_the_store_answers_but_not_while_it_is_down() {
        let mut b = Batcher::new(limits());
        for s in 1..=3 {
            b.push(rec(s));
        }
        assert!(!b.is_full(), "3 waiting, the bound is 4");
        let batch = b.take_batch();
        assert!(!b.is_full(), "2 in flight + 1 queued");
        b.push(rec(4));
        assert!(b.is_full(), "2 in flight + 2 queued reach the bound");
        // The store did not answer: streaming goes on unrecorded, bounded by max_unrecorded.
        let dropped = b.retry(batch, Duration::from_secs(1));
        assert_eq!(dropped, 1);
        assert_eq!(b.pending(), 3);
        assert!(!b.is_full(), "no backpressure while the store is down");
        // It answers again: the bound applies again.
        b.written();
        b.push(rec(5));
        assert!(b.is_full());
    }

    fn book(store: Arc<dyn SessionStore>) -> (Arc<LeaseBook>, Arc<GuardedStore>) {
        LeaseBook::for_tests(store, "a", Duration::from_secs(60))
    }

    #[tokio::test]
    async fn the_first_write_claims_the_lease_and_later_ones_write_with_it() {
        let memory: Arc<dyn SessionStore> =
            Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let (book, store) = book(memory.clone());
        let s = SessionId::random();
        let first = write_batch(&book, &store, &s, None, vec![rec(1)]).await;
        assert!(first.result.is_ok());
        let claim = first.claim.unwrap().unwrap();
        let second = write_batch(&book, &store, &s, Some(claim.id), vec![rec(2)]).await;
        assert!(second.result.is_ok() && second.claim.is_none());
        let stored = memory.read_after(&s, 0, 10).await.unwrap();
        assert_eq!(stored.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[tokio::test]
    async fn a_write_for_a_session_taken_over_is_fenced() {
        let memory: Arc<dyn SessionStore> =
            Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let (book, store) = book(memory.clone());
        let s = SessionId::random();
        let claim = write_batch(&book, &store, &s, None, vec![rec(1)])
            .await
            .claim
            .unwrap()
            .unwrap();
        let other = Owner {
            name: "b".into(),
            addr: "127.0.0.1:2".parse().unwrap(),
        };
        memory
            .acquire(&s, &other, Duration::from_secs(5))
            .await
            .unwrap();
        let r = write_batch(&book, &store, &s, Some(claim.id), vec![rec(2)]).await;
        assert!(
            matches!(r.result, Err(StoreError::Fenced { current: 2 })),
            "{:?}",
            r.result
        );
    }
}
