//! The leases this pod holds: one place that acquires, renews, marks draining and releases them.
//!
//! A session's lease serves two purposes: it fences recording (only the epoch holder may append)
//! and it is the routing registry (its address is where other sidecars forward the session's
//! requests). Recorders pin the leases of the sessions they capture; keys learned from the app
//! are held as routing registrations while requests keep using them. A single renewal loop keeps
//! them all alive; a renewal that finds the session fenced tells its recorder to stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::cursor::SessionId;
use crate::metrics::{ErrorKind, Metrics};
use crate::store::{
    Epoch, GuardedStore, LeaseState, Owner, SessionStore as _, StoreError, StoreResult,
};

/// The epoch of a routing registration made while the store was down: acquired later.
const UNACQUIRED: Epoch = 0;

/// Concurrent store calls of one renewal round.
const RENEW_CONCURRENCY: usize = 32;

struct Held {
    /// Identifies this holding across re-acquires (the epoch changes if the store lost it).
    id: u64,
    epoch: Epoch,
    state: LeaseState,
    pins: u32,
    routing: bool,
    last_used: Instant,
    fenced: CancellationToken,
}

/// A pinned lease: the epoch to write with, and a token cancelled if another pod takes over.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Which holding this is (for [`LeaseBook::epoch`], [`LeaseBook::unpin`]).
    pub id: u64,
    /// The epoch appends carried when the claim was made.
    pub epoch: Epoch,
    /// Cancelled when a renewal finds the session fenced.
    pub fenced: CancellationToken,
}

/// This pod's leases.
pub struct LeaseBook {
    store: Arc<GuardedStore>,
    owner: Owner,
    ttl: Duration,
    idle_ttl: Duration,
    metrics: Arc<Metrics>,
    held: Mutex<HashMap<SessionId, Held>>,
    draining: std::sync::atomic::AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
}

impl LeaseBook {
    /// A book for `owner`, with leases of `ttl`, routing registrations kept `idle_ttl` after their
    /// last use (store calls bounded by the store's guard).
    pub fn new(
        store: Arc<GuardedStore>,
        owner: Owner,
        ttl: Duration,
        idle_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(LeaseBook {
            store,
            owner,
            ttl,
            idle_ttl,
            metrics,
            held: Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> LeaseState {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            LeaseState::Draining
        } else {
            LeaseState::Live
        }
    }

    /// This pod as an owner.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Whether this pod holds the session (and marks it used: a routing registration lives on).
    pub fn touch(&self, session: &SessionId) -> bool {
        match self.lock().get_mut(session) {
            Some(h) => {
                h.last_used = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Pin the session's lease for a recorder: the held one, or a fresh acquire.
    pub async fn claim(&self, session: &SessionId) -> StoreResult<Claim> {
        if let Some(h) = self
            .lock()
            .get_mut(session)
            .filter(|h| h.epoch != UNACQUIRED)
        {
            h.pins += 1;
            h.last_used = Instant::now();
            return Ok(Claim {
                id: h.id,
                epoch: h.epoch,
                fenced: h.fenced.clone(),
            });
        }
        self.acquire(session, 1, false, None).await
    }

    /// The epoch a claim must write with now (it changes only when the store lost the session
    /// and it was re-acquired); `None` once the claim is gone (fenced or released).
    pub fn epoch(&self, session: &SessionId, id: u64) -> Option<Epoch> {
        self.lock()
            .get(session)
            .filter(|h| h.id == id)
            .map(|h| h.epoch)
    }

    /// The store has no trace of a session this pod holds (Redis restarted without persistence,
    /// or flushed): take it again so recording and routing continue. Returns the new epoch.
    ///
    /// `expected` is the epoch the store reported when it refused this pod (0: the session is
    /// gone): the session is taken again only if nobody took it meanwhile. `None` for a key
    /// registered while the store was down (a new session: taken unconditionally).
    pub async fn recover(
        &self,
        session: &SessionId,
        id: u64,
        expected: Option<Epoch>,
    ) -> StoreResult<Epoch> {
        let (lease, taken_here) = match self.acquire_call(session, expected).await {
            Ok(lease) => (lease, true),
            // Two of this pod's tasks (the renewal round and a recorder's batch) found the
            // session lost at once and both recover it: the later one finds the store at the
            // epoch the earlier one took, which is this pod's own, not a takeover.
            Err(StoreError::Fenced { current }) => match self.store.lease(session).await? {
                Some(lease) if lease.owner == self.owner.name && lease.epoch == current => {
                    (lease, false)
                }
                _ => return Err(StoreError::Fenced { current }),
            },
            Err(e) => return Err(e),
        };
        let mut held = self.lock();
        match held.get_mut(session) {
            // Recovered already, by the other task of the two.
            Some(h) if h.id == id && !taken_here && h.epoch == lease.epoch => Ok(lease.epoch),
            Some(h) if h.id == id => {
                if h.epoch == UNACQUIRED {
                    tracing::info!(session = %session, epoch = lease.epoch, "session key registered now that the store is back");
                } else {
                    tracing::warn!(session = %session, epoch = lease.epoch, "session state lost in the store: re-acquired");
                    self.metrics.error(ErrorKind::StoreStateLost);
                }
                h.epoch = lease.epoch;
                Ok(lease.epoch)
            }
            _ => Err(StoreError::Fenced {
                current: lease.epoch,
            }),
        }
    }

    /// Take the session over (epoch + 1) even if this pod believes it holds it, and pin it —
    /// only if its epoch is still `expected`, the one seen when the takeover was decided;
    /// `Fenced` if another pod took it first (two clients resuming the same session at once).
    pub async fn take_over(&self, session: &SessionId, expected: Epoch) -> StoreResult<Claim> {
        self.acquire(session, 1, false, Some(expected)).await
    }

    fn acquire_call<'a>(
        &'a self,
        session: &'a SessionId,
        expected: Option<Epoch>,
    ) -> futures::future::BoxFuture<'a, StoreResult<crate::store::Lease>> {
        match expected {
            Some(e) => self.store.acquire_if(session, &self.owner, self.ttl, e),
            None => self.store.acquire(session, &self.owner, self.ttl),
        }
    }

    /// Register a key learned from the app so other pods route its requests here. Reuses a
    /// lease already held.
    /// While the store is down the key is held locally (requests with it are served here) and
    /// acquired by the next renewal round after the store is back, instead of holding up the
    /// response that handed it out.
    pub async fn register(&self, session: &SessionId) -> StoreResult<()> {
        {
            let mut held = self.lock();
            if let Some(h) = held.get_mut(session) {
                h.routing = true;
                h.last_used = Instant::now();
                return Ok(());
            }
            if !self.store.is_up() {
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.insert(
                    session.clone(),
                    Held {
                        id,
                        epoch: UNACQUIRED,
                        state: self.state(),
                        pins: 0,
                        routing: true,
                        last_used: Instant::now(),
                        fenced: CancellationToken::new(),
                    },
                );
                self.metrics.leases_held.inc();
                return Ok(());
            }
        }
        self.acquire(session, 0, true, None).await.map(|_| ())
    }

    async fn acquire(
        &self,
        session: &SessionId,
        pins: u32,
        routing: bool,
        expected: Option<Epoch>,
    ) -> StoreResult<Claim> {
        let lease = self.acquire_call(session, expected).await?;
        let state = self.state();
        if state == LeaseState::Draining {
            let _ = self
                .store
                .renew(session, lease.epoch, state, self.ttl)
                .await;
        }
        let fenced = CancellationToken::new();
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut held = self.lock();
        let previous = held.insert(
            session.clone(),
            Held {
                id,
                epoch: lease.epoch,
                state,
                pins,
                routing,
                last_used: Instant::now(),
                fenced: fenced.clone(),
            },
        );
        match previous {
            // A stale local holding (an older epoch of ours): whoever pinned it is fenced now.
            Some(old) => {
                old.fenced.cancel();
                if let Some(h) = held.get_mut(session) {
                    h.routing |= old.routing;
                }
            }
            None => {
                self.metrics.leases_held.inc();
            }
        }
        Ok(Claim {
            id,
            epoch: lease.epoch,
            fenced,
        })
    }

    /// A recorder is done with the session. A stream lease nobody else uses is released at once;
    /// a routing registration stays until it is idle.
    pub fn unpin(self: &Arc<Self>, session: &SessionId, id: u64) {
        let release = {
            let mut held = self.lock();
            match held.get_mut(session) {
                Some(h) if h.id == id => {
                    h.pins = h.pins.saturating_sub(1);
                    h.last_used = Instant::now();
                    if h.pins == 0 && !h.routing {
                        let epoch = h.epoch;
                        held.remove(session);
                        self.metrics.leases_held.dec();
                        Some(epoch)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        if let Some(epoch) = release {
            let book = self.clone();
            let session = session.clone();
            tokio::spawn(async move {
                let _ = book.store.release(&session, epoch).await;
            });
        }
    }

    /// Forget a session another pod took over (its epoch is newer than the held one).
    pub fn fenced(&self, session: &SessionId, id: u64) {
        let mut held = self.lock();
        if held.get(session).is_some_and(|h| h.id == id)
            && let Some(h) = held.remove(session)
        {
            h.fenced.cancel();
            self.metrics.leases_held.dec();
        }
    }

    /// Mark one session draining now (before its handover is recorded, so a reader that sees
    /// the handover also sees the owner draining).
    pub async fn mark_draining(&self, session: &SessionId) -> StoreResult<()> {
        let (id, epoch) = {
            let mut held = self.lock();
            let Some(h) = held.get_mut(session) else {
                return Ok(());
            };
            h.state = LeaseState::Draining;
            (h.id, h.epoch)
        };
        let r = self
            .store
            .renew(session, epoch, LeaseState::Draining, self.ttl)
            .await;
        if let Err(StoreError::Fenced { current }) = r
            && current > 0
        {
            self.fenced(session, id);
        }
        r
    }

    /// Whether this pod drains (SIGTERM arrived): its leases are renewed as draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on every lease is renewed as draining (and the next round marks them all).
    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.lock().values_mut() {
            h.state = LeaseState::Draining;
        }
    }

    /// Renew every lease once; drop the fenced, release idle routing registrations.
    pub async fn renew_round(&self) {
        let now = Instant::now();
        let mut idle = Vec::new();
        let work: Vec<(SessionId, u64, Epoch, LeaseState)> = {
            let mut held = self.lock();
            held.retain(|s, h| {
                let expired = h.pins == 0 && now.duration_since(h.last_used) > self.idle_ttl;
                if expired {
                    idle.push((s.clone(), h.epoch));
                    self.metrics.leases_held.dec();
                }
                !expired
            });
            held.iter()
                .map(|(s, h)| (s.clone(), h.id, h.epoch, h.state))
                .collect()
        };
        let results: Vec<(SessionId, u64, Epoch, StoreResult<()>)> = futures::stream::iter(work)
            .map(|(s, id, epoch, state)| async move {
                if epoch == UNACQUIRED {
                    let r = self.recover(&s, id, None).await.map(|_| ());
                    return (s, id, epoch, r);
                }
                let r = self.store.renew(&s, epoch, state, self.ttl).await;
                (s, id, epoch, r)
            })
            .buffer_unordered(RENEW_CONCURRENCY)
            .collect()
            .await;
        for (s, id, epoch, r) in results {
            match r {
                Err(StoreError::Fenced { current }) if current == 0 || current == epoch => {
                    let _ = self.recover(&s, id, Some(current)).await;
                }
                Err(StoreError::Fenced { current }) => {
                    tracing::info!(session = %s, epoch, current, "lease taken over by another pod");
                    self.fenced(&s, id);
                }
                _ => {}
            }
        }
        for (s, epoch) in idle {
            let _ = self.store.release(&s, epoch).await;
        }
    }

    /// Release every lease (the end of a drain).
    pub async fn release_all(&self) {
        let all: Vec<(SessionId, Held)> = self.lock().drain().collect();
        self.metrics.leases_held.set(0);
        futures::stream::iter(all)
            .for_each_concurrent(RENEW_CONCURRENCY, |(s, h)| async move {
                h.fenced.cancel();
                let _ = self.store.release(&s, h.epoch).await;
            })
            .await;
    }

    /// Renew every `every` until `stop`.
    pub fn spawn_renewer(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let book = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                book.renew_round().await;
            }
        });
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no lease is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
impl LeaseBook {
    /// A book for unit tests: `store` behind a guard with a 1 s budget, held by `name`, 5 s
    /// leases, routing registrations idle after `idle_ttl`.
    pub(crate) fn for_tests(
        store: Arc<dyn crate::store::SessionStore>,
        name: &str,
        idle_ttl: Duration,
    ) -> (Arc<LeaseBook>, Arc<GuardedStore>) {
        let metrics = Arc::new(Metrics::new());
        let guarded = Arc::new(GuardedStore::new(
            store,
            Duration::from_secs(1),
            metrics.clone(),
        ));
        let owner = Owner {
            name: name.into(),
            addr: "127.0.0.1:8801".parse().unwrap(),
        };
        let book = LeaseBook::new(
            guarded.clone(),
            owner,
            Duration::from_secs(5),
            idle_ttl,
            metrics,
        );
        (book, guarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, SessionStore};

    fn owner(name: &str) -> Owner {
        Owner {
            name: name.into(),
            addr: "127.0.0.1:8801".parse().unwrap(),
        }
    }

    fn book(store: Arc<dyn SessionStore>, name: &str) -> Arc<LeaseBook> {
        LeaseBook::for_tests(store, name, Duration::from_millis(50)).0
    }

    #[tokio::test]
    async fn claims_share_one_lease_and_the_last_unpin_releases_it() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let b = book(store.clone(), "a");
        let s = SessionId::parse("s1").unwrap();
        let c1 = b.claim(&s).await.unwrap();
        let c2 = b.claim(&s).await.unwrap();
        assert_eq!((c1.id, c1.epoch), (c2.id, c2.epoch));
        b.unpin(&s, c1.id);
        assert!(store.lease(&s).await.unwrap().is_some());
        b.unpin(&s, c2.id);
        assert!(b.is_empty());
        for _ in 0..50 {
            if store.lease(&s).await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the lease was not released");
    }

    /// `book`'s holdings over a fresh empty store: what the pod sees after Redis restarted
    /// without persistence.
    fn restarted_empty(book: &LeaseBook, name: &str) -> (LeaseBook, Arc<dyn SessionStore>) {
        let replacement: Arc<dyn SessionStore> =
            Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let moved = LeaseBook {
            store: Arc::new(GuardedStore::new(
                replacement.clone(),
                Duration::from_secs(1),
                book.metrics.clone(),
            )),
            owner: owner(name),
            ttl: Duration::from_secs(5),
            idle_ttl: Duration::from_secs(60),
            metrics: book.metrics.clone(),
            held: Mutex::new(std::mem::take(&mut *book.lock())),
            draining: std::sync::atomic::AtomicBool::new(false),
            next_id: std::sync::atomic::AtomicU64::new(100),
        };
        (moved, replacement)
    }

    #[tokio::test]
    async fn a_takeover_elsewhere_fences_on_renewal_and_lost_state_is_recovered() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let a = book(store.clone(), "a");
        let s = SessionId::parse("s2").unwrap();
        let claim = a.claim(&s).await.unwrap();
        store
            .acquire(&s, &owner("b"), Duration::from_secs(5))
            .await
            .unwrap();
        a.renew_round().await;
        assert!(claim.fenced.is_cancelled());
        assert_eq!(a.epoch(&s, claim.id), None);

        // A fresh store (Redis restarted empty): the holding is re-acquired, not dropped.
        let empty: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let c = book(empty.clone(), "c");
        let k = SessionId::parse("s3").unwrap();
        c.register(&k).await.unwrap();
        let before = c.lock().get(&k).map(|h| (h.id, h.epoch)).unwrap();
        let (c2, replacement) = restarted_empty(&c, "c");
        c2.renew_round().await;
        assert_eq!(c2.epoch(&k, before.0), Some(1));
        assert_eq!(replacement.lease(&k).await.unwrap().unwrap().owner, "c");
    }

    /// Redis back empty: the renewal round and a recorder's batch both find the session gone and
    /// both recover it. The one that comes second must see this pod's own fresh lease, not a
    /// takeover (which would stop the recorder and cut its client's stream).
    #[tokio::test]
    async fn two_recoveries_of_one_lost_session_both_keep_it() {
        let before: Arc<dyn SessionStore> =
            Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let old = book(before, "a");
        let s = SessionId::parse("s4").unwrap();
        let claim = old.claim(&s).await.unwrap();
        let (b, store) = restarted_empty(&old, "a");
        let first = b.recover(&s, claim.id, Some(0)).await.unwrap();
        let second = b.recover(&s, claim.id, Some(0)).await;
        assert_eq!(
            second,
            Ok(first),
            "the second recovery sees this pod's lease"
        );
        assert_eq!(b.epoch(&s, claim.id), Some(first));
        assert!(!claim.fenced.is_cancelled());

        // Another pod's lease is still a takeover.
        store
            .acquire(&s, &owner("b"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            b.recover(&s, claim.id, Some(first)).await,
            Err(StoreError::Fenced { .. })
        ));
    }

    #[tokio::test]
    async fn idle_routing_registrations_are_released() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let b = book(store.clone(), "a");
        let k = SessionId::parse("key").unwrap();
        b.register(&k).await.unwrap();
        assert!(b.touch(&k));
        tokio::time::sleep(Duration::from_millis(80)).await;
        b.renew_round().await;
        assert!(b.is_empty());
        assert!(store.lease(&k).await.unwrap().is_none());
    }
}
