//! Where sessions are recorded, leased and found.
//!
//! The handoff protocol (DESIGN.md "Sessions and replay") needs exactly these operations from a
//! store: an append that is refused atomically once another pod holds a newer epoch (fencing), a
//! read after a cursor, a blocking tail, and a lease that names the owner pod and its admin address
//! (the routing registry is the lease itself). Redis implements it for many replicas; memory for one.
//!
//! The trait is object-safe (`Arc<dyn SessionStore>`) so the proxy does not care which store runs.

mod batch;
pub mod guard;
pub mod memory;
pub mod redis;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::contract::{SidecarArgs, StoreKind, env};
use crate::cursor::SessionId;
use crate::metrics::ErrorKind;

pub use self::guard::{GuardedStore, StoreHealth, StoreOp, StoreOutcome};
pub use self::memory::MemoryStore;
pub use self::redis::{ConnectError, RedisConfig, RedisStore, purge_service};

/// Position of an entry in a session's history; the `<seq>` of the wire cursor. Starts at 1.
pub type Seq = u64;
/// Ownership generation of a session. Every takeover increments it; older owners are fenced.
pub type Epoch = u64;

/// What a session's history holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An event from the app, with the app's own id kept beside the cursor.
    Event {
        /// The app's `id:` (sticky last-event-id as the browser would track it), if any.
        app_id: Option<String>,
        /// The `event:` type, if any.
        event: Option<String>,
        /// The data, lines joined with `\n`.
        data: String,
    },
    /// The app's `retry:` hint, replayed so a resumed client keeps the app's reconnect delay.
    Retry(u64),
    /// The upstream ended (finite stream): whoever serves the client ends the response after it.
    End,
    /// The owner's drain window is over: a pod serving this session should take it over now.
    Handover,
}

/// One entry at its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Position in the session's history.
    pub seq: Seq,
    /// The entry.
    pub entry: Entry,
}

/// Whether the owner still captures normally or is draining (clients should be elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Serving and recording.
    Live,
    /// Terminating: recording until handover, clients were told to reconnect elsewhere.
    Draining,
}

/// Who owns a session right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The owner's pod name (for logs and metrics).
    pub owner: String,
    /// The owner's admin address, where `/internal/forward` reaches it.
    pub addr: SocketAddr,
    /// The owner's epoch; appends with another epoch are refused.
    pub epoch: Epoch,
    /// Live or draining.
    pub state: LeaseState,
}

/// How much of a session's history a store keeps (`spec.sessions.historyLimit`, `historySeconds`,
/// `historyMaxEntries`).
///
/// A count alone fails fast streams: 1,000 entries are 0.2 s at 5,000 events/s, while a client
/// moved by a drain reconnects a second or more behind, so its resume found a hole. The time floor
/// keeps what a handoff needs at any rate; the cap keeps one runaway stream from exhausting the
/// store's memory, and says so (see [`Appended::cut_into_floor`]) when it cuts into the floor.
/// While the owner drains, only the cap trims: the entries and the `Handover`/`End` markers of a
/// session being handed over stay until the new owner takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest entries kept whatever their age.
    pub limit: u32,
    /// Entries younger than this are kept too (to about a second in Redis).
    pub floor: Duration,
    /// Entries kept at most, whatever the floor or a drain wants. At least `limit`.
    pub cap: u32,
}

impl Retention {
    /// Keep the newest `limit` entries, nothing more (no time floor).
    pub fn count(limit: u32) -> Self {
        Self {
            limit,
            floor: Duration::ZERO,
            cap: limit,
        }
    }

    /// From the sidecar's flags.
    pub fn from_args(args: &SidecarArgs) -> Self {
        let limit = args.history_limit.max(1);
        Self {
            limit,
            floor: Duration::from_secs(u64::from(args.history_floor_seconds())),
            cap: args.history_max_entries.max(limit),
        }
    }

    /// How many of `len` stored entries to keep, and whether that cuts into what the floor (or a
    /// drain) wants. `floor_kept` is how many of the newest entries are younger than the floor.
    pub fn keep(&self, len: usize, floor_kept: usize, draining: bool) -> (usize, bool) {
        let want = if draining {
            len
        } else {
            floor_kept.max(self.limit as usize).min(len)
        };
        let keep = want.min(self.cap as usize);
        (keep, keep < want)
    }
}

/// What an append did beyond storing its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// The cap (`historyMaxEntries`) trimmed entries the time floor or a drain would have kept:
    /// a resume may now find a hole. Counted and logged by the recorder.
    pub cut_into_floor: bool,
}

/// Identity of this pod as an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Pod name.
    pub name: String,
    /// Admin address other sidecars forward to.
    pub addr: SocketAddr,
}

/// Why a store call failed; each variant is a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another pod took the session over (its epoch is newer): stop writing, stop capturing.
    #[error("session fenced: epoch {current} owns it now")]
    Fenced {
        /// The epoch that owns the session now.
        current: Epoch,
    },
    /// The store cannot be reached or answered with an error; the caller degrades (no replay).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored data is not what this version writes (corrupt or foreign keys).
    #[error("malformed store data: {0}")]
    Malformed(String),
}

impl StoreError {
    /// Label for the `errors_total{kind}` metric.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Fenced { .. } => ErrorKind::Fenced,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Malformed(_) => ErrorKind::Malformed,
        }
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// The operations the handoff protocol needs. Every per-session write slides the session's TTL.
pub trait SessionStore: Send + Sync + 'static {
    /// Take the session: epoch := epoch + 1 (1 for a new session), owner := `owner`, state Live,
    /// lease TTL `ttl`. Unconditional: the caller decided it may (new session, handover seen, or
    /// the previous lease expired). Returns the new lease.
    fn acquire<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<Lease>>;

    /// Take the session over only if its epoch is still `expected` (the one the taker saw when
    /// it decided to take over, 0 for a session the store does not know): otherwise
    /// `Fenced { current }` and nothing changes. Two pods that decide at the same moment (two
    /// clients resuming the same session) both saw the same epoch, so exactly one of them wins;
    /// the loser keeps serving its client from the store. Same effects as `acquire` on success.
    fn acquire_if<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
        expected: Epoch,
    ) -> BoxFuture<'a, StoreResult<Lease>>;

    /// The session's ownership epoch now (0 when the store does not know the session), also
    /// after its lease expired or was released: what a taker passes to `acquire_if`.
    fn epoch<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Epoch>>;

    /// Extend the lease and set its state; `Fenced` if `epoch` no longer owns the session.
    fn renew<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        state: LeaseState,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// Drop the lease if `epoch` still holds it (history stays for its TTL).
    fn release<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// The current lease, `None` if there is none or it expired.
    fn lease<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Lease>>>;

    /// Append entries (their `seq`s strictly increasing) atomically with the epoch check: all or
    /// nothing; `Fenced` if `epoch` is not the current one. Entries at or below the newest stored
    /// seq are skipped (a retry of a write that was applied but timed out), the rest stored.
    /// Trims history by the store's [`Retention`] and slides the TTL.
    fn append<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        entries: &'a [Recorded],
    ) -> BoxFuture<'a, StoreResult<Appended>>;

    /// Up to `limit` entries with seq > `after`, oldest first.
    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>>;

    /// Like `read_after`, but waits up to `block` for the first entry if there is none yet.
    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>>;

    /// The last stored entry, to continue the sequence after a takeover; also the last app id
    /// delivered is found by reading backwards (see `last_app_id`).
    fn last<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Recorded>>>;

    /// The app id recorded with the newest `Event` entry — the client's last event id at that
    /// point, `None` once the app reset it with an empty `id:` — which is the `Last-Event-ID` a
    /// new owner sends its own app when it opens a fresh upstream.
    fn last_app_id<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>>;

    /// Whether the store answers (for `/ready` reporting and metrics), cheaply.
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// The operations broadcast paths need beyond these, if this store can share one stream
    /// between pods (Redis); `None` (the default) for stores that cannot.
    fn broadcast(&self) -> Option<&dyn BroadcastStore> {
        None
    }

    /// The stream counts rebalancing shares between pods, if this store is shared (Redis);
    /// `None` (the default) for stores that are not: rebalancing is refused with them.
    fn stream_counts(&self) -> Option<&dyn StreamCountStore> {
        None
    }
}

/// What a pod publishes about itself for rebalancing (see [`StreamCountStore`]).
#[derive(Debug, Clone, Copy)]
pub struct CountsReport<'a> {
    /// The pod's name (the hash field).
    pub pod: &'a str,
    /// Its open streams, every kind.
    pub total: u32,
    /// Of them, the resumable ones.
    pub resumable: u32,
    /// How the others are to count it.
    pub state: crate::contract::rebalance::PodState,
    /// Entries older than this (server time) are ignored and deleted.
    pub stale_ms: u64,
    /// How long the whole hash outlives this write.
    pub key_ttl_ms: u64,
}

/// The live entries of the rebalancing hash, as one writer read them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    /// The store's clock when it was read (ms since the epoch).
    pub now_ms: u64,
    /// Every entry not stale, by pod name (the writer's own included); values this version
    /// cannot read are left out.
    pub pods: Vec<(String, crate::contract::rebalance::PodStreams)>,
}

/// What rebalancing needs from a shared store: each pod's stream count, stamped by the store's
/// clock (so pod clock skew cannot make a live pod look stale), written and read in one step.
pub trait StreamCountStore: Send + Sync {
    /// Write this pod's entry, drop stale ones, and return what is left.
    fn publish_counts<'a>(&'a self, report: CountsReport<'a>)
    -> BoxFuture<'a, StoreResult<Spread>>;

    /// Remove this pod's entry (it stops serving), so the others stop counting it at once.
    fn withdraw_counts<'a>(&'a self, pod: &'a str, stale_ms: u64)
    -> BoxFuture<'a, StoreResult<()>>;
}

/// One append to a broadcast path's stream (see [`BroadcastStore::append_broadcast`]).
#[derive(Debug, Clone, Copy)]
pub struct BroadcastAppend<'a> {
    /// The holder's epoch (the append is fenced like a session's); `None` for a publish, which
    /// any pod may append whoever holds the upstream.
    pub epoch: Option<Epoch>,
    /// Identifies this batch (`None` for a publish): a retry of a batch whose first attempt was
    /// applied is not applied again.
    pub token: Option<&'a str>,
    /// The highest seq this pod has seen in the stream: seqs continue above it even if the
    /// store lost the stream (a Redis restart without persistence), so ids never go back.
    pub floor: Seq,
    /// Entries kept in the stream (`--broadcast <path>=<historyLimit>`), trimmed approximately.
    pub limit: u32,
    /// The entries, in order; the store numbers them.
    pub entries: &'a [Entry],
}

/// What a broadcast append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastAppended {
    /// Stored with the seqs `first..=last`.
    Stored {
        /// Seq of the first entry.
        first: Seq,
        /// Seq of the last entry.
        last: Seq,
    },
    /// This batch (its token) was applied before; `last` is the stream's newest seq now.
    Repeated {
        /// The stream's newest seq.
        last: Seq,
    },
}

/// What broadcast paths need from a shared store: an append where the *store* numbers the
/// entries (holder and publishers on several pods write one sequence, so no writer can pick
/// the seq), and a short exclusive turn for taking an upstream over.
pub trait BroadcastStore: Send + Sync {
    /// Append `a.entries` atomically: refused with `Fenced` when `a.epoch` is given and is not
    /// the current one; numbered from `max(newest stored, a.floor) + 1`; trimmed to `a.limit`;
    /// the newest event's app id kept for the next holder's `Last-Event-ID`; TTLs slid.
    fn append_broadcast<'a>(
        &'a self,
        session: &'a SessionId,
        a: BroadcastAppend<'a>,
    ) -> BoxFuture<'a, StoreResult<BroadcastAppended>>;

    /// Take the path's takeover turn for `ttl` if nobody else holds it (`true` also when `who`
    /// holds it already): of several pods seeing one handover, one opens a second upstream.
    fn claim_turn<'a>(
        &'a self,
        session: &'a SessionId,
        who: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>>;

    /// Give the turn back if `who` holds it (the takeover is over, won or lost), so the next
    /// handover of the path (the new holder draining soon after) is not held up by it.
    fn release_turn<'a>(
        &'a self,
        session: &'a SessionId,
        who: &'a str,
    ) -> BoxFuture<'a, StoreResult<()>>;
}

/// Why the configured store could not be opened. Redis being down is not one of them: a Redis
/// store opens anyway and answers `Unavailable` until Redis is back.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `--store=redis` without a URL.
    #[error("the redis store needs a URL: set {}", env::REDIS_URL)]
    MissingRedisUrl,
    /// The Redis settings are unusable (bad URL, out-of-range setting).
    #[error(transparent)]
    Redis(#[from] ConnectError),
}

/// The store the sidecar's settings ask for, shared by every connection the proxy serves.
pub async fn open(args: &SidecarArgs) -> Result<Arc<dyn SessionStore>, OpenError> {
    let ttl = Duration::from_secs(u64::from(args.session_ttl_seconds));
    match args.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::with_retention(
            Retention::from_args(args),
            ttl,
        ))),
        StoreKind::Redis => {
            let url = args
                .redis_url
                .as_deref()
                .ok_or(OpenError::MissingRedisUrl)?;
            let mut cfg = RedisConfig::new(
                url,
                &args.service_namespace,
                &args.service_name,
                args.history_limit,
                ttl,
            );
            cfg.retention = Retention::from_args(args);
            Ok(Arc::new(RedisStore::with_config(cfg).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_larger_of_count_and_floor_within_the_cap() {
        let r = Retention {
            limit: 10,
            floor: Duration::from_secs(30),
            cap: 100,
        };
        assert_eq!(r.keep(5, 5, false), (5, false), "nothing to trim");
        assert_eq!(r.keep(50, 3, false), (10, false), "old entries: the count");
        assert_eq!(
            r.keep(50, 40, false),
            (40, false),
            "young entries: the floor"
        );
        assert_eq!(
            r.keep(500, 400, false),
            (100, true),
            "the cap cuts the floor"
        );
        assert_eq!(r.keep(80, 0, true), (80, false), "a drain keeps all");
        assert_eq!(r.keep(500, 0, true), (100, true), "within the cap");
    }
}
