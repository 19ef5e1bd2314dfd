//! The store as the rest of the sidecar uses it: every call bounded by a time budget, observed
//! for the store's health, and counted by operation and outcome — in one place, so no caller
//! writes "timeout + observe" again.
//!
//! The store's health is learned from the calls the sidecar makes anyway (plus a cheap ping while
//! it is down), so an outage is reported once, as a gauge flip and a log line, not per call.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use super::{
    Appended, Epoch, Lease, LeaseState, Owner, Recorded, Seq, SessionStore, StoreError, StoreResult,
};
use crate::cursor::SessionId;
use crate::metrics::{ErrorKind, Metrics};

/// One operation of [`SessionStore`], as the `store_calls{op}` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// [`SessionStore::acquire`].
    Acquire,
    /// [`SessionStore::acquire_if`].
    AcquireIf,
    /// [`SessionStore::epoch`].
    Epoch,
    /// [`SessionStore::renew`].
    Renew,
    /// [`SessionStore::release`].
    Release,
    /// [`SessionStore::lease`].
    Lease,
    /// [`SessionStore::append`].
    Append,
    /// [`SessionStore::read_after`].
    ReadAfter,
    /// [`SessionStore::wait_after`].
    WaitAfter,
    /// [`SessionStore::last`].
    Last,
    /// [`SessionStore::last_app_id`].
    LastAppId,
    /// [`SessionStore::ping`].
    Ping,
    /// [`super::BroadcastStore::append_broadcast`].
    BroadcastAppend,
    /// [`super::BroadcastStore::claim_turn`] and [`super::BroadcastStore::release_turn`].
    BroadcastTurn,
}

impl StoreOp {
    /// Every operation, in label order.
    pub const ALL: [StoreOp; 14] = [
        Self::Acquire,
        Self::AcquireIf,
        Self::Epoch,
        Self::Renew,
        Self::Release,
        Self::Lease,
        Self::Append,
        Self::ReadAfter,
        Self::WaitAfter,
        Self::Last,
        Self::LastAppId,
        Self::Ping,
        Self::BroadcastAppend,
        Self::BroadcastTurn,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Acquire => "acquire",
            Self::AcquireIf => "acquire_if",
            Self::Epoch => "epoch",
            Self::Renew => "renew",
            Self::Release => "release",
            Self::Lease => "lease",
            Self::Append => "append",
            Self::ReadAfter => "read_after",
            Self::WaitAfter => "wait_after",
            Self::Last => "last",
            Self::LastAppId => "last_app_id",
            Self::Ping => "ping",
            Self::BroadcastAppend => "broadcast_append",
            Self::BroadcastTurn => "broadcast_turn",
        }
    }
}

/// How a store call ended, as the `store_calls{outcome}` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// It answered.
    Ok,
    /// A newer epoch owns the session.
    Fenced,
    /// No answer (or an error answer) within the budget.
    Unavailable,
    /// The data is not what this version writes.
    Malformed,
}

impl StoreOutcome {
    /// Every outcome, in label order.
    pub const ALL: [StoreOutcome; 4] = [Self::Ok, Self::Fenced, Self::Unavailable, Self::Malformed];

    /// The outcome of a call's result.
    pub fn of<T>(result: &StoreResult<T>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(StoreError::Fenced { .. }) => Self::Fenced,
            Err(StoreError::Unavailable(_)) => Self::Unavailable,
            Err(StoreError::Malformed(_)) => Self::Malformed,
        }
    }

    /// The metric label (the same words as [`StoreError::kind`]).
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fenced => "fenced",
            Self::Unavailable => "unavailable",
            Self::Malformed => "malformed",
        }
    }
}

/// Whether the store answers, as last observed.
///
/// One call running out of time while others are answered is a slow moment, not an outage:
/// the store is declared down only when calls fail and none has succeeded for `down_after`
/// (one call budget). Without that, a loaded store flaps up and down many times a second,
/// floods the log and makes resumes skip a store that is in fact serving.
pub struct StoreHealth {
    up: AtomicBool,
    /// Milliseconds since `born` of the last call that reached the store.
    last_ok_ms: AtomicU64,
    born: Instant,
    down_after: Duration,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    /// Assume up until calls say otherwise for `down_after`.
    pub fn new(metrics: Arc<Metrics>, down_after: Duration) -> Self {
        metrics.store_up.set(1);
        StoreHealth {
            up: AtomicBool::new(true),
            last_ok_ms: AtomicU64::new(0),
            born: Instant::now(),
            down_after,
            metrics,
        }
    }

    /// Whether the store is taken to answer (callers skip it while it is down).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Learn from a call's result: `Unavailable` counts against the store, anything else means
    /// it answered.
    pub fn observe<T>(&self, result: &StoreResult<T>) {
        let now = self.now_ms();
        let answered = !matches!(result, Err(StoreError::Unavailable(_)));
        if answered {
            self.last_ok_ms.fetch_max(now, Ordering::Relaxed);
        }
        let quiet_for =
            Duration::from_millis(now.saturating_sub(self.last_ok_ms.load(Ordering::Relaxed)));
        let up = answered || quiet_for < self.down_after;
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics.store_up.set(i64::from(up));
            if up {
                tracing::info!("session store is back: recording and replay resume");
            } else {
                self.metrics.error(ErrorKind::StoreUnavailable);
                if let Err(e) = result {
                    tracing::warn!(error = %e, "session store unavailable: streaming without recording or replay");
                }
            }
        }
    }
}

/// A store call with a time budget; running out of time counts as the store being unavailable.
pub async fn timed<T>(
    budget: Duration,
    call: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(budget, call).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} ms",
            budget.as_millis()
        ))),
    }
}

/// The decorator: a [`SessionStore`] whose every call has a budget, feeds [`StoreHealth`] and
/// counts `store_calls{op, outcome}`.
pub struct GuardedStore {
    inner: Arc<dyn SessionStore>,
    health: StoreHealth,
    timeout: Duration,
    /// `calls[op][outcome]`, resolved once so a call only does an atomic add.
    calls: Vec<[Counter; 4]>,
}

impl GuardedStore {
    /// Wrap `inner`; ordinary calls get `timeout`, a blocking read its block on top.
    pub fn new(inner: Arc<dyn SessionStore>, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let calls = StoreOp::ALL
            .iter()
            .map(|op| StoreOutcome::ALL.map(|o| metrics.store_call(op.label(), o.label())))
            .collect();
        GuardedStore {
            inner,
            health: StoreHealth::new(metrics, timeout),
            timeout,
            calls,
        }
    }

    /// Whether the store answered the last call (callers skip it while it is down).
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// The budget of an ordinary call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ping the store every `every` while it is down, so recovery is noticed without traffic.
    pub fn spawn_pinger(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let _ = store.ping().await;
            }
        });
    }

    /// [`SessionStore::wait_after`] with a budget of its own (a caller that keeps asking within
    /// a window of its own, rather than one block).
    pub async fn wait_after_within(
        &self,
        session: &SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
        budget: Duration,
    ) -> StoreResult<Vec<Recorded>> {
        self.call(
            StoreOp::WaitAfter,
            budget,
            self.inner.wait_after(session, after, limit, block),
        )
        .await
    }

    async fn call<T>(
        &self,
        op: StoreOp,
        budget: Duration,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let r = timed(budget, fut).await;
        // A store that answers at once (memory) never yields on its own: a loop of calls (a
        // renewal round over thousands of leases) would hold a worker thread and stall every
        // stream on it. Count each call against the task's budget so such loops yield.
        tokio::task::consume_budget().await;
        self.health.observe(&r);
        self.calls[op as usize][StoreOutcome::of(&r) as usize].inc();
        r
    }
}

impl SessionStore for GuardedStore {
    fn acquire<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(self.call(
            StoreOp::Acquire,
            self.timeout,
            self.inner.acquire(session, owner, ttl),
        ))
    }

    fn acquire_if<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
        expected: Epoch,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(self.call(
            StoreOp::AcquireIf,
            self.timeout,
            self.inner.acquire_if(session, owner, ttl, expected),
        ))
    }

    fn epoch<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Epoch>> {
        Box::pin(self.call(StoreOp::Epoch, self.timeout, self.inner.epoch(session)))
    }

    fn renew<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        state: LeaseState,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.call(
            StoreOp::Renew,
            self.timeout,
            self.inner.renew(session, epoch, state, ttl),
        ))
    }

    fn release<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.call(
            StoreOp::Release,
            self.timeout,
            self.inner.release(session, epoch),
        ))
    }

    fn lease<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Lease>>> {
        Box::pin(self.call(StoreOp::Lease, self.timeout, self.inner.lease(session)))
    }

    fn append<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        entries: &'a [Recorded],
    ) -> BoxFuture<'a, StoreResult<Appended>> {
        Box::pin(self.call(
            StoreOp::Append,
            self.timeout,
            self.inner.append(session, epoch, entries),
        ))
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(self.call(
            StoreOp::ReadAfter,
            self.timeout,
            self.inner.read_after(session, after, limit),
        ))
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(self.wait_after_within(session, after, limit, block, self.timeout + block))
    }

    fn last<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Recorded>>> {
        Box::pin(self.call(StoreOp::Last, self.timeout, self.inner.last(session)))
    }

    fn last_app_id<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(self.call(
            StoreOp::LastAppId,
            self.timeout,
            self.inner.last_app_id(session),
        ))
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.call(StoreOp::Ping, self.timeout, self.inner.ping()))
    }

    /// Itself, guarded, when the inner store can broadcast: broadcast calls get the same
    /// budget, health observation and `store_calls` counting as the rest.
    fn broadcast(&self) -> Option<&dyn super::BroadcastStore> {
        self.inner
            .broadcast()
            .map(|_| self as &dyn super::BroadcastStore)
    }

    fn stream_counts(&self) -> Option<&dyn super::StreamCountStore> {
        self.inner.stream_counts()
    }
}

impl GuardedStore {
    /// The inner store's broadcast side, or why there is none.
    fn broadcaster(&self) -> StoreResult<&dyn super::BroadcastStore> {
        self.inner
            .broadcast()
            .ok_or_else(|| StoreError::Unavailable("the store cannot broadcast".into()))
    }
}

impl super::BroadcastStore for GuardedStore {
    fn append_broadcast<'a>(
        &'a self,
        session: &'a SessionId,
        a: super::BroadcastAppend<'a>,
    ) -> BoxFuture<'a, StoreResult<super::BroadcastAppended>> {
        Box::pin(async move {
            let inner = self.broadcaster()?;
            self.call(
                StoreOp::BroadcastAppend,
                self.timeout,
                inner.append_broadcast(session, a),
            )
            .await
        })
    }

    fn claim_turn<'a>(
        &'a self,
        session: &'a SessionId,
        who: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let inner = self.broadcaster()?;
            self.call(
                StoreOp::BroadcastTurn,
                self.timeout,
                inner.claim_turn(session, who, ttl),
            )
            .await
        })
    }

    fn release_turn<'a>(
        &'a self,
        session: &'a SessionId,
        who: &'a str,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let inner = self.broadcaster()?;
            self.call(
                StoreOp::BroadcastTurn,
                self.timeout,
                inner.release_turn(session, who),
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn session() -> SessionId {
        SessionId::random()
    }

    #[tokio::test]
    async fn every_call_is_counted_by_op_and_outcome() {
        let metrics = Arc::new(Metrics::new());
        let inner = Arc::new(MemoryStore::new(10, Duration::from_secs(60)));
        let store = GuardedStore::new(inner, Duration::from_secs(1), metrics.clone());
        let s = session();
        assert!(store.append(&s, 7, &[]).await.is_err());
        store.ping().await.unwrap();
        assert_eq!(metrics.store_calls("append", "fenced"), 1);
        assert_eq!(metrics.store_calls("ping", "ok"), 1);
        assert!(store.is_up());
    }

    /// A store that never answers.
    struct Silent;

    impl SessionStore for Silent {
        fn acquire<'a>(
            &'a self,
            _: &'a SessionId,
            _: &'a Owner,
            _: Duration,
        ) -> BoxFuture<'a, StoreResult<Lease>> {
            Box::pin(futures::future::pending())
        }
        fn acquire_if<'a>(
            &'a self,
            _: &'a SessionId,
            _: &'a Owner,
            _: Duration,
            _: Epoch,
        ) -> BoxFuture<'a, StoreResult<Lease>> {
            Box::pin(futures::future::pending())
        }
        fn epoch<'a>(&'a self, _: &'a SessionId) -> BoxFuture<'a, StoreResult<Epoch>> {
            Box::pin(futures::future::pending())
        }
        fn renew<'a>(
            &'a self,
            _: &'a SessionId,
            _: Epoch,
            _: LeaseState,
            _: Duration,
        ) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(futures::future::pending())
        }
        fn release<'a>(&'a self, _: &'a SessionId, _: Epoch) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(futures::future::pending())
        }
        fn lease<'a>(&'a self, _: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Lease>>> {
            Box::pin(futures::future::pending())
        }
        fn append<'a>(
            &'a self,
            _: &'a SessionId,
            _: Epoch,
            _: &'a [Recorded],
        ) -> BoxFuture<'a, StoreResult<Appended>> {
            Box::pin(futures::future::pending())
        }
        fn read_after<'a>(
            &'a self,
            _: &'a SessionId,
            _: Seq,
            _: usize,
        ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
            Box::pin(futures::future::pending())
        }
        fn wait_after<'a>(
            &'a self,
            _: &'a SessionId,
            _: Seq,
            _: usize,
            _: Duration,
        ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
            Box::pin(futures::future::pending())
        }
        fn last<'a>(&'a self, _: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Recorded>>> {
            Box::pin(futures::future::pending())
        }
        fn last_app_id<'a>(
            &'a self,
            _: &'a SessionId,
        ) -> BoxFuture<'a, StoreResult<Option<String>>> {
            Box::pin(futures::future::pending())
        }
        fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
            Box::pin(futures::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_store_times_out_marks_itself_down_and_comes_back() {
        let metrics = Arc::new(Metrics::new());
        let store = GuardedStore::new(Arc::new(Silent), Duration::from_millis(50), metrics.clone());
        let r = store.last(&session()).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(!store.is_up());
        assert_eq!(metrics.store_calls("last", "unavailable"), 1);
        assert_eq!(metrics.count("errors", "store_unavailable"), 1);
        // wait_after's budget covers its block.
        let t = tokio::time::Instant::now();
        let _ = store
            .wait_after(&session(), 0, 1, Duration::from_millis(200))
            .await;
        assert_eq!(t.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_call_among_answered_ones_is_not_an_outage() {
        let metrics = Arc::new(Metrics::new());
        let health = StoreHealth::new(metrics.clone(), Duration::from_secs(1));
        let timed_out: StoreResult<()> = Err(StoreError::Unavailable("no answer".into()));
        health.observe(&Ok(()));
        tokio::time::advance(Duration::from_millis(400)).await;
        health.observe(&timed_out);
        assert!(health.is_up(), "another call answered 400 ms ago");
        health.observe(&Ok(()));
        tokio::time::advance(Duration::from_millis(999)).await;
        health.observe(&timed_out);
        assert!(health.is_up());
        tokio::time::advance(Duration::from_millis(2)).await;
        health.observe(&timed_out);
        assert!(!health.is_up(), "nothing answered for a whole budget");
        assert_eq!(metrics.count("errors", "store_unavailable"), 1);
        health.observe(&Ok(()));
        assert!(health.is_up());
    }
}
