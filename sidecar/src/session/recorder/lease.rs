//! The recorder's hold on its session's lease: the claim its batches are written with, and the
//! signal that another pod took the session over (then the recorder stops at once, writing
//! nothing more). The first batch claims the lease when the recorder did not start with one.

use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::cursor::SessionId;
use crate::session::leases::{Claim, LeaseBook};

/// The claim (once made) and the fencing signal it carries.
pub(super) struct Holding {
    claim: Option<Claim>,
    /// Resolves when another pod takes the session over (cancelled by the lease book).
    fenced: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Holding {
    /// Holding `claim` (a takeover starts with one), or nothing yet.
    pub(super) fn new(claim: Option<Claim>) -> Self {
        let token = claim.as_ref().map(|c| c.fenced.clone()).unwrap_or_default();
        Holding {
            claim,
            fenced: Box::pin(token.cancelled_owned()),
        }
    }

    /// Whether the lease is held (else the next batch claims it).
    pub(super) fn is_held(&self) -> bool {
        self.claim.is_some()
    }

    /// The holding's id in the lease book, to write with.
    pub(super) fn id(&self) -> Option<u64> {
        self.claim.as_ref().map(|c| c.id)
    }

    /// The claim a batch made.
    pub(super) fn adopt(&mut self, claim: Claim) {
        self.fenced = Box::pin(claim.fenced.clone().cancelled_owned());
        self.claim = Some(claim);
    }

    /// Resolves when another pod took the session over; pending until then.
    pub(super) async fn taken_over(&mut self) {
        self.fenced.as_mut().await
    }

    /// A write was fenced: the lease book forgets the holding (and signals its other users).
    pub(super) fn fenced(&self, book: &LeaseBook, session: &SessionId) {
        if let Some(c) = &self.claim {
            book.fenced(session, c.id);
        }
    }

    /// The recorder is done: the lease is released unless a routing registration still uses it.
    pub(super) fn release(&self, book: &Arc<LeaseBook>, session: &SessionId) {
        if let Some(c) = &self.claim {
            book.unpin(session, c.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{MemoryStore, SessionStore};

    fn book() -> Arc<LeaseBook> {
        let memory: Arc<dyn SessionStore> =
            Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        LeaseBook::for_tests(memory, "a", Duration::from_secs(60)).0
    }

    async fn resolves(h: &mut Holding) -> bool {
        tokio::time::timeout(Duration::from_millis(50), h.taken_over())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_claim_is_adopted_and_a_fence_on_it_stops_the_recorder() {
        let book = book();
        let s = SessionId::random();
        let mut h = Holding::new(None);
        assert!(!h.is_held() && h.id().is_none());
        assert!(!resolves(&mut h).await, "nothing to be fenced from yet");
        let claim = book.claim(&s).await.unwrap();
        let id = claim.id;
        h.adopt(claim);
        assert_eq!(h.id(), Some(id));
        assert!(!resolves(&mut h).await);
        h.fenced(&book, &s);
        assert!(resolves(&mut h).await, "the fence reaches the recorder");
        assert_eq!(book.epoch(&s, id), None, "the book forgot the holding");
    }

    #[tokio::test]
    async fn releasing_gives_the_lease_back() {
        let book = book();
        let s = SessionId::random();
        let h = Holding::new(Some(book.claim(&s).await.unwrap()));
        assert_eq!(book.len(), 1);
        h.release(&book, &s);
        assert_eq!(book.len(), 0);
    }
}
