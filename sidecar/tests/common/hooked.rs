//! One store wrapper for every test that needs to step into store calls: `Hooked<H>` delegates
//! each `SessionStore` call to `inner` after `H::before` ran (which may delay, fail or race the
//! call), so a test writes only its hook, not the whole trait again.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ssekeeper_sidecar::cursor::SessionId;
use ssekeeper_sidecar::store::{
    Appended, Epoch, Lease, LeaseState, Owner, Recorded, Seq, SessionStore, StoreResult,
};

/// The store call about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Acquire,
    AcquireIf,
    Epoch,
    Renew,
    Release,
    Lease,
    Append,
    ReadAfter,
    WaitAfter,
    Last,
    LastAppId,
    Ping,
}

/// What a test does before a store call; an error is answered instead of the call.
pub trait StoreHook: Send + Sync + 'static {
    fn before<'a>(
        &'a self,
        inner: &'a dyn SessionStore,
        op: Op,
        session: Option<&'a SessionId>,
    ) -> BoxFuture<'a, StoreResult<()>>;
}

/// `inner` with `hook` run before every call. Derefs to the hook, so its switches and counters
/// are reachable from the store handle.
pub struct Hooked<H> {
    pub inner: Arc<dyn SessionStore>,
    pub hook: H,
}

impl<H> Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<H: StoreHook> Hooked<H> {
    async fn before(&self, op: Op, session: Option<&SessionId>) -> StoreResult<()> {
        self.hook.before(&*self.inner, op, session).await
    }
}

impl<H: StoreHook> SessionStore for Hooked<H> {
    fn acquire<'a>(
        &'a self,
        s: &'a SessionId,
        o: &'a Owner,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(async move {
            self.before(Op::Acquire, Some(s)).await?;
            self.inner.acquire(s, o, ttl).await
        })
    }
    fn acquire_if<'a>(
        &'a self,
        s: &'a SessionId,
        o: &'a Owner,
        ttl: Duration,
        expected: Epoch,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(async move {
            self.before(Op::AcquireIf, Some(s)).await?;
            self.inner.acquire_if(s, o, ttl, expected).await
        })
    }
    fn epoch<'a>(&'a self, s: &'a SessionId) -> BoxFuture<'a, StoreResult<Epoch>> {
        Box::pin(async move {
            self.before(Op::Epoch, Some(s)).await?;
            self.inner.epoch(s).await
        })
    }
    fn renew<'a>(
        &'a self,
        s: &'a SessionId,
        e: Epoch,
        st: LeaseState,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            self.before(Op::Renew, Some(s)).await?;
            self.inner.renew(s, e, st, ttl).await
        })
    }
    fn release<'a>(&'a self, s: &'a SessionId, e: Epoch) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            self.before(Op::Release, Some(s)).await?;
            self.inner.release(s, e).await
        })
    }
    fn lease<'a>(&'a self, s: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Lease>>> {
        Box::pin(async move {
            self.before(Op::Lease, Some(s)).await?;
            self.inner.lease(s).await
        })
    }
    fn append<'a>(
        &'a self,
        s: &'a SessionId,
        e: Epoch,
        entries: &'a [Recorded],
    ) -> BoxFuture<'a, StoreResult<Appended>> {
        Box::pin(async move {
            self.before(Op::Append, Some(s)).await?;
            self.inner.append(s, e, entries).await
        })
    }
    fn read_after<'a>(
        &'a self,
        s: &'a SessionId,
        after: Seq,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(async move {
            self.before(Op::ReadAfter, Some(s)).await?;
            self.inner.read_after(s, after, limit).await
        })
    }
    fn wait_after<'a>(
        &'a self,
        s: &'a SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(async move {
            self.before(Op::WaitAfter, Some(s)).await?;
            self.inner.wait_after(s, after, limit, block).await
        })
    }
    fn last<'a>(&'a self, s: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Recorded>>> {
        Box::pin(async move {
            self.before(Op::Last, Some(s)).await?;
            self.inner.last(s).await
        })
    }
    fn last_app_id<'a>(&'a self, s: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            self.before(Op::LastAppId, Some(s)).await?;
            self.inner.last_app_id(s).await
        })
    }
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.before(Op::Ping, None).await?;
            self.inner.ping().await
        })
    }
}
