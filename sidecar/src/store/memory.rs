//! The single-replica store: everything in this process, lost on restart.
//!
//! It exists so one replica runs without Redis, and so the proxy's tests run without one; it keeps
//! exactly the Redis store's semantics (fencing, sliding TTL, history trimming, lease expiry by
//! time, blocking tails) so behaviour does not change when a service grows past one replica.
//!
//! Expiry is lazy (an expired session is dropped when touched) plus a bounded sweep on every write
//! that visits a few sessions in key order, so memory is reclaimed without a background task and
//! without a write ever paying for the whole map. Tails wait on a per-session [`Notify`], never by
//! polling.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::batch::unstored;
use super::{
    Appended, Entry, Epoch, Lease, LeaseState, Owner, Recorded, Retention, Seq, SessionStore,
    StoreError, StoreResult,
};
use crate::cursor::SessionId;

/// How many sessions one sweep looks at. Small enough to be invisible in a call's latency; with
/// at most one sweep per [`SWEEP_EVERY`] it still visits 256,000 sessions a second, far more than
/// any pod creates.
const SWEEP_BATCH: usize = 256;
/// The least time between two sweeps: calls come tens of thousands a second under load, and a
/// sweep on each was a measurable share of a fan-out's CPU.
const SWEEP_EVERY: Duration = Duration::from_millis(1);

/// Appends within this long of the last mark share it (the floor then keeps up to this much more):
/// a fast stream appends every millisecond, and one mark each would cost more than the entries.
const MARK_EVERY: Duration = Duration::from_millis(100);

/// In-process session store for a single replica.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    retention: Retention,
    session_ttl: Duration,
}

#[derive(Default)]
struct Inner {
    /// Ordered so the sweep can resume after the last key it visited.
    sessions: BTreeMap<String, Session>,
    /// Tails waiting for a session's next append. Kept apart from `sessions` because a tail may
    /// wait for a session that does not exist yet; removed when its last waiter leaves.
    waiters: HashMap<String, Arc<Notify>>,
    /// Where the next sweep starts; `None` = from the beginning.
    sweep_cursor: Option<String>,
    /// When the next sweep may run.
    next_sweep: Option<Instant>,
}

struct Session {
    events: VecDeque<Recorded>,
    /// When each append landed and the first seq it stored, oldest first: what the time floor
    /// is judged by. Marks older than the floor are dropped as soon as they are judged.
    marks: VecDeque<(Instant, Seq)>,
    epoch: Epoch,
    lease: Option<StoredLease>,
    last_app_id: Option<String>,
    expires_at: Instant,
}

struct StoredLease {
    owner: String,
    addr: std::net::SocketAddr,
    epoch: Epoch,
    state: LeaseState,
    until: Instant,
}

impl MemoryStore {
    /// A store keeping `history_limit` entries per session (at least 1), no time floor, for
    /// `session_ttl` after the session's last write.
    pub fn new(history_limit: usize, session_ttl: Duration) -> Self {
        let limit = u32::try_from(history_limit).unwrap_or(u32::MAX).max(1);
        Self::with_retention(Retention::count(limit), session_ttl)
    }

    /// A store keeping history by `retention` (at least 1 entry, a cap at least the limit).
    pub fn with_retention(retention: Retention, session_ttl: Duration) -> Self {
        let limit = retention.limit.max(1);
        Self {
            inner: Mutex::new(Inner::default()),
            retention: Retention {
                limit,
                cap: retention.cap.max(limit),
                ..retention
            },
            session_ttl,
        }
    }

    /// Sessions currently held (expired ones not yet swept included), for metrics and tests.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code path panics while holding the lock; if one ever did, the data is still
        // consistent at statement granularity, so keep serving rather than poison every caller.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire_now(&self, id: &str, owner: &Owner, ttl: Duration) -> Lease {
        match self.acquire_checked(id, owner, ttl, None) {
            Ok(lease) => lease,
            // Unconditional: there is no expectation to fail.
            Err(_) => unreachable!("an unconditional acquire cannot be fenced"),
        }
    }

    /// Acquire, only if the epoch is `expected` when one is given.
    fn acquire_checked(
        &self,
        id: &str,
        owner: &Owner,
        ttl: Duration,
        expected: Option<Epoch>,
    ) -> StoreResult<Lease> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        let session_ttl = self.session_ttl;
        let s = inner
            .sessions
            .entry(id.to_string())
            .or_insert_with(|| Session {
                events: VecDeque::new(),
                marks: VecDeque::new(),
                epoch: 0,
                lease: None,
                last_app_id: None,
                expires_at: now,
            });
        if s.expires_at <= now {
            // Expired but not yet swept: a new session starts from scratch, as in Redis.
            *s = Session {
                events: VecDeque::new(),
                marks: VecDeque::new(),
                epoch: 0,
                lease: None,
                last_app_id: None,
                expires_at: now,
            };
        }
        if let Some(expected) = expected
            && s.epoch != expected
        {
            let current = s.epoch;
            if current == 0 {
                // Created by this call only to be compared: leave no trace.
                inner.sessions.remove(id);
            }
            return Err(StoreError::Fenced { current });
        }
        s.epoch += 1;
        s.lease = Some(StoredLease {
            owner: owner.name.clone(),
            addr: owner.addr,
            epoch: s.epoch,
            state: LeaseState::Live,
            until: now + ttl,
        });
        s.expires_at = now + session_ttl.max(ttl);
        Ok(Lease {
            owner: owner.name.clone(),
            addr: owner.addr,
            epoch: s.epoch,
            state: LeaseState::Live,
        })
    }

    fn epoch_now(&self, id: &str) -> Epoch {
        let mut inner = self.lock();
        inner.live_mut(id, Instant::now()).map_or(0, |s| s.epoch)
    }

    fn renew_now(
        &self,
        id: &str,
        epoch: Epoch,
        state: LeaseState,
        ttl: Duration,
    ) -> StoreResult<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        let session_ttl = self.session_ttl;
        let Some(s) = inner.live_mut(id, now) else {
            return Err(StoreError::Fenced { current: 0 });
        };
        if s.epoch != epoch {
            return Err(StoreError::Fenced { current: s.epoch });
        }
        // A lease that lapsed by time is revived while nobody has taken over (the epoch is still
        // ours); a released one is not (there is nothing left to revive).
        let Some(lease) = s.lease.as_mut() else {
            return Err(StoreError::Fenced { current: s.epoch });
        };
        lease.state = state;
        lease.until = now + ttl;
        s.expires_at = now + session_ttl.max(ttl);
        Ok(())
    }

    fn release_now(&self, id: &str, epoch: Epoch) -> StoreResult<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(s) = inner.live_mut(id, now) else {
            return Ok(());
        };
        if s.epoch != epoch {
            return Err(StoreError::Fenced { current: s.epoch });
        }
        s.lease = None;
        Ok(())
    }

    fn lease_now(&self, id: &str) -> Option<Lease> {
        let now = Instant::now();
        let mut inner = self.lock();
        let s = inner.live_mut(id, now)?;
        let l = s.lease.as_ref().filter(|l| l.until > now)?;
        Some(Lease {
            owner: l.owner.clone(),
            addr: l.addr,
            epoch: l.epoch,
            state: l.state,
        })
    }

    fn append_now(&self, id: &str, epoch: Epoch, entries: &[Recorded]) -> StoreResult<Appended> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        let session_ttl = self.session_ttl;
        let retention = self.retention;
        let Some(s) = inner.live_mut(id, now) else {
            return Err(StoreError::Fenced { current: 0 });
        };
        if s.epoch != epoch {
            return Err(StoreError::Fenced { current: s.epoch });
        }
        let entries = unstored(s.events.back().map(|r| r.seq), entries)?;
        if let Some(first) = entries.first()
            && s.marks.back().is_none_or(|(at, _)| now >= *at + MARK_EVERY)
        {
            s.marks.push_back((now, first.seq));
        }
        for r in entries {
            if let Entry::Event { app_id, .. } = &r.entry {
                s.last_app_id.clone_from(app_id);
            }
            s.events.push_back(r.clone());
        }
        let appended = s.trim(&retention, now);
        s.expires_at = now + session_ttl;
        if !entries.is_empty()
            && let Some(n) = inner.waiters.get(id)
        {
            n.notify_waiters();
        }
        Ok(appended)
    }

    fn read_now(&self, id: &str, after: Seq, limit: usize) -> Vec<Recorded> {
        let mut inner = self.lock();
        inner.read(id, after, limit, Instant::now())
    }

    /// Reads, or (when there is nothing yet) registers interest before releasing the lock, so an
    /// append landing between the read and the wait still wakes us.
    fn read_or_listen(
        &self,
        id: &str,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Recorded>, tokio::sync::futures::OwnedNotified> {
        let mut inner = self.lock();
        let got = inner.read(id, after, limit, Instant::now());
        if !got.is_empty() {
            return Ok(got);
        }
        let notify = inner.waiters.entry(id.to_string()).or_default().clone();
        // `notified_owned` receives every `notify_waiters` issued after it is created, even before
        // it is first polled; it is created under the lock that appends take.
        Err(notify.notified_owned())
    }

    fn forget_waiter(&self, id: &str) {
        let mut inner = self.lock();
        if inner
            .waiters
            .get(id)
            .is_some_and(|n| Arc::strong_count(n) == 1)
        {
            inner.waiters.remove(id);
        }
    }

    fn last_now(&self, id: &str) -> Option<Recorded> {
        let mut inner = self.lock();
        inner.live_mut(id, Instant::now())?.events.back().cloned()
    }

    fn last_app_id_now(&self, id: &str) -> Option<String> {
        let mut inner = self.lock();
        inner.live_mut(id, Instant::now())?.last_app_id.clone()
    }

    async fn wait(&self, id: &str, after: Seq, limit: usize, block: Duration) -> Vec<Recorded> {
        if limit == 0 {
            return Vec::new();
        }
        let deadline = Instant::now() + block;
        // Removes our waiter entry however this future ends (including being dropped).
        let _guard = WaiterGuard { store: self, id };
        loop {
            let notified = match self.read_or_listen(id, after, limit) {
                Ok(got) => return got,
                Err(notified) => notified,
            };
            if Instant::now() >= deadline {
                return Vec::new();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.read_now(id, after, limit);
            }
        }
    }
}

struct WaiterGuard<'a> {
    store: &'a MemoryStore,
    id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.store.forget_waiter(self.id);
    }
}

impl Session {
    /// Trim by `retention` (the Redis store's rule, with exact times instead of seconds).
    fn trim(&mut self, retention: &Retention, now: Instant) -> Appended {
        if let Some(cutoff) = now.checked_sub(retention.floor) {
            while self.marks.front().is_some_and(|(at, _)| *at < cutoff) {
                self.marks.pop_front();
            }
        }
        // Within the count nothing is trimmed whatever the floor or a drain wants (the common
        // case, as in the Redis script): no search.
        if self.events.len() <= retention.limit as usize {
            return Appended::default();
        }
        let floor_from = self.marks.front().map_or(Seq::MAX, |(_, seq)| *seq);
        let floor_kept = self.events.len() - self.events.partition_point(|r| r.seq < floor_from);
        let draining = self
            .lease
            .as_ref()
            .is_some_and(|l| l.epoch == self.epoch && l.state == LeaseState::Draining);
        let (keep, cut_into_floor) = retention.keep(self.events.len(), floor_kept, draining);
        while self.events.len() > keep {
            self.events.pop_front();
        }
        Appended { cut_into_floor }
    }
}

impl Inner {
    /// The session if it exists and has not expired; an expired one is dropped on the spot.
    fn live_mut(&mut self, id: &str, now: Instant) -> Option<&mut Session> {
        if self.sessions.get(id).is_some_and(|s| s.expires_at <= now) {
            self.sessions.remove(id);
            return None;
        }
        self.sessions.get_mut(id)
    }

    fn read(&mut self, id: &str, after: Seq, limit: usize, now: Instant) -> Vec<Recorded> {
        let Some(s) = self.live_mut(id, now) else {
            return Vec::new();
        };
        let start = s.events.partition_point(|r| r.seq <= after);
        s.events.iter().skip(start).take(limit).cloned().collect()
    }

    /// Visits at most [`SWEEP_BATCH`] sessions after the cursor, dropping expired ones (at most
    /// once per [`SWEEP_EVERY`]).
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        let lower = match &self.sweep_cursor {
            Some(c) => Bound::Excluded(c.as_str()),
            None => Bound::Unbounded,
        };
        let mut visited = 0;
        let mut last = None;
        let mut expired = Vec::new();
        for (k, s) in self
            .sessions
            .range::<str, _>((lower, Bound::Unbounded))
            .take(SWEEP_BATCH)
        {
            visited += 1;
            if s.expires_at <= now {
                expired.push(k.clone());
            }
            last = Some(k);
        }
        self.sweep_cursor = if visited < SWEEP_BATCH {
            None
        } else {
            last.cloned()
        };
        for k in expired {
            self.sessions.remove(&k);
        }
    }
}

impl SessionStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(async move { Ok(self.acquire_now(session.as_str(), owner, ttl)) })
    }

    fn acquire_if<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
        expected: Epoch,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(async move { self.acquire_checked(session.as_str(), owner, ttl, Some(expected)) })
    }

    fn epoch<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Epoch>> {
        Box::pin(async move { Ok(self.epoch_now(session.as_str())) })
    }

    fn renew<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        state: LeaseState,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move { self.renew_now(session.as_str(), epoch, state, ttl) })
    }

    fn release<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move { self.release_now(session.as_str(), epoch) })
    }

    fn lease<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Lease>>> {
        Box::pin(async move { Ok(self.lease_now(session.as_str())) })
    }

    fn append<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        entries: &'a [Recorded],
    ) -> BoxFuture<'a, StoreResult<Appended>> {
        Box::pin(async move { self.append_now(session.as_str(), epoch, entries) })
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(async move { Ok(self.read_now(session.as_str(), after, limit)) })
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(async move { Ok(self.wait(session.as_str(), after, limit, block).await) })
    }

    fn last<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Recorded>>> {
        Box::pin(async move { Ok(self.last_now(session.as_str())) })
    }

    fn last_app_id<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move { Ok(self.last_app_id_now(session.as_str())) })
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: Seq) -> Recorded {
        Recorded {
            seq,
            entry: Entry::Event {
                app_id: Some(seq.to_string()),
                event: None,
                data: "x".into(),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_reclaims_expired_sessions_without_touching_them() {
        let store = MemoryStore::new(10, Duration::from_secs(5));
        let owner = Owner {
            name: "p".into(),
            addr: "127.0.0.1:8801".parse().unwrap(),
        };
        for i in 0..100 {
            store.acquire_now(&format!("s{i:03}"), &owner, Duration::from_secs(1));
        }
        assert_eq!(store.session_count(), 100);
        tokio::time::advance(Duration::from_secs(6)).await;
        // Each write sweeps SWEEP_BATCH sessions; a few writes reclaim the lot.
        for _ in 0..(100 / SWEEP_BATCH + 2) {
            store.acquire_now("fresh", &owner, Duration::from_secs(1));
        }
        assert_eq!(store.session_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_entries_are_removed_when_tails_leave() {
        let store = MemoryStore::new(10, Duration::from_secs(5));
        let got = store.wait("s", 0, 10, Duration::from_secs(1)).await;
        assert!(got.is_empty());
        assert!(store.lock().waiters.is_empty());
        let owner = Owner {
            name: "p".into(),
            addr: "127.0.0.1:8801".parse().unwrap(),
        };
        let lease = store.acquire_now("s", &owner, Duration::from_secs(1));
        store.append_now("s", lease.epoch, &[ev(1)]).unwrap();
        assert_eq!(
            store.wait("s", 0, 10, Duration::from_secs(1)).await,
            vec![ev(1)]
        );
        assert!(store.lock().waiters.is_empty());
    }
}
