//! The Redis store: what lets many replicas share sessions.
//!
//! Key layout (all per-session keys carry the session as a `{hash tag}`, so one session lives in
//! one Cluster slot and every script below touches one slot; see [`crate::contract::keys`]):
//!
//! | key | type | holds | TTL |
//! |---|---|---|---|
//! | `ssekeeper:<ns>/<name>:{<s>}:events` | stream | entries, id `<seq>-0`, fields see `codec.rs` | session TTL, slid by every write |
//! | `…:{<s>}:epoch` | string | ownership counter (survives lease expiry) | same |
//! | `…:{<s>}:lease` | hash | `owner`, `addr`, `epoch`, `state`, `until` (server ms) | same (acquire/renew: the longer of session and lease TTL) |
//! | `…:{<s>}:appid` | string | newest app id recorded | same |
//! | `ssekeeper:<ns>/<name>:rebalance:streams` | hash | pod → `v1 <server ms> <total> <resumable> <state>` (see `contract::rebalance`) | 6 rebalance intervals, slid by every write |
//!
//! Because an entry's stream id *is* its seq, `XADD` itself would refuse a replayed seq, and a
//! tail is `XREAD BLOCK … <seq>-0`. Writes go through the Lua scripts in `scripts.rs` (fencing is
//! atomic with the write); reads are plain commands. Every call has a deadline (`op_timeout`,
//! default 1 s): an outage answers `Unavailable` quickly and never hangs the proxy.

mod blocking;
mod coalesce;
mod codec;
mod errors;
mod io_thread;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use ::redis::{Cmd, RedisError, ScriptInvocation, Value, cmd};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::time::Instant;

pub use crate::contract::redis::url;
pub use crate::contract::redis::{RedisTarget, UrlError};

use self::blocking::BlockingPool;
use self::coalesce::{Append, AppendScripts, Coalescer};
use self::codec::{
    Verdict, encode, parse_lease, parse_opt_text, parse_range, parse_verdict, parse_xread,
    stream_id,
};
pub use self::errors::purge_service;
use self::errors::{from_redis, timed_out};
use self::io_thread::{IoConn, IoThread};
use self::scripts::Scripts;
use super::batch::check_order;
use super::{
    Appended, Entry, Epoch, Lease, LeaseState, Owner, Recorded, Retention, Seq, SessionStore,
    StoreError, StoreResult,
};
use crate::contract::keys;
use crate::contract::redis::conn::{Connector, Timeouts, is_connection_fault};
use crate::cursor::SessionId;

/// Everything a [`RedisStore`] needs; [`RedisConfig::new`] fills the tuning knobs with defaults.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is; see [`url`] for the accepted forms.
    pub url: String,
    /// Namespace of the SseService (first half of the key prefix).
    pub namespace: String,
    /// Name of the SseService (second half of the key prefix).
    pub name: String,
    /// How much history each session keeps (approximately: trims are `~`).
    pub retention: Retention,
    /// How long a session outlives its last write.
    pub session_ttl: Duration,
    /// Deadline of every ordinary call and of establishing a connection.
    pub op_timeout: Duration,
    /// Blocking tails at once per store (each holds a dedicated connection).
    pub max_blocking: usize,
    /// Dedicated connections kept for reuse between tails.
    pub idle_blocking: usize,
    /// Longest block a single `wait_after` performs (longer requests are cut to this).
    pub max_block: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisConfig")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("retention", &self.retention)
            .field("session_ttl", &self.session_ttl)
            .field("op_timeout", &self.op_timeout)
            .field("max_blocking", &self.max_blocking)
            .field("idle_blocking", &self.idle_blocking)
            .field("max_block", &self.max_block)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Defaults: 1 s per call, 256 blocking tails (16 kept idle), 30 s longest block.
    pub fn new(
        url: &str,
        namespace: &str,
        name: &str,
        history_limit: u32,
        session_ttl: Duration,
    ) -> Self {
        Self {
            url: url.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            retention: Retention::count(history_limit),
            session_ttl,
            op_timeout: Duration::from_secs(1),
            max_blocking: 256,
            idle_blocking: 16,
            max_block: Duration::from_secs(30),
        }
    }
}

/// Why a Redis store could not be set up (Redis being down is not one of them: see `connect`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not one of the accepted forms.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The redis client refused the settings (e.g. differing credentials across cluster seeds).
    #[error("redis client setup: {0}")]
    Client(String),
    /// A setting is out of range.
    #[error("invalid store setting: {0}")]
    Invalid(String),
}

/// Sessions in Redis (single node, Sentinel or Cluster).
pub struct RedisStore {
    connector: Arc<Connector>,
    /// Where every connection is created and driven (see [`io_thread`]).
    io: IoThread,
    /// Appends of all sessions, sent together from the I/O thread (see [`coalesce`]).
    appends: Coalescer,
    pool: BlockingPool,
    namespace: String,
    name: String,
    retention: Retention,
    session_ttl: Duration,
    op_timeout: Duration,
    max_block: Duration,
    scripts: Scripts,
}

/// The five keys of one session.
struct SessionKeys {
    events: String,
    epoch: String,
    lease: String,
    appid: String,
    /// When entries were written, to the second (the time floor of [`Retention`]).
    marks: String,
}

impl SessionKeys {
    /// The keys as every session script takes them (`KEYS[1..5]`).
    fn in_script_order(&self) -> [&str; 5] {
        [
            &self.events,
            &self.epoch,
            &self.lease,
            &self.appid,
            &self.marks,
        ]
    }
}

impl RedisStore {
    /// A store for the SseService `namespace/name` with default tuning. Validates the URL and
    /// builds the clients but does not need Redis to be up: until it is, calls answer
    /// `Unavailable` (and [`SessionStore::ping`] says so), so a sidecar starts during an outage.
    pub async fn connect(
        url: &str,
        namespace: &str,
        name: &str,
        history_limit: u32,
        session_ttl: Duration,
    ) -> Result<Self, ConnectError> {
        Self::with_config(RedisConfig::new(
            url,
            namespace,
            name,
            history_limit,
            session_ttl,
        ))
        .await
    }

    /// Like [`RedisStore::connect`] with every knob.
    pub async fn with_config(cfg: RedisConfig) -> Result<Self, ConnectError> {
        let retention = cfg.retention;
        if retention.limit == 0 {
            return Err(ConnectError::Invalid(
                "history limit must be at least 1".into(),
            ));
        }
        if retention.cap < retention.limit {
            return Err(ConnectError::Invalid(format!(
                "history cap {} is below the history limit {}",
                retention.cap, retention.limit
            )));
        }
        if cfg.session_ttl < Duration::from_millis(1) || cfg.op_timeout < Duration::from_millis(1) {
            return Err(ConnectError::Invalid(
                "session TTL and call timeout must be at least 1 ms".into(),
            ));
        }
        let target = url::parse(&cfg.url)?;
        let connector = Connector::new(
            &target,
            Timeouts {
                op: cfg.op_timeout,
                max_block: cfg.max_block,
            },
        )
        .map_err(|e| ConnectError::Client(e.to_string()))?;
        let io = IoThread::start("ssekeeper-redis").map_err(|e| {
            ConnectError::Client(format!("cannot start the store's I/O thread: {e}"))
        })?;
        let connector = Arc::new(connector);
        let scripts = Scripts::new();
        let appends = Coalescer::start(
            io.handle(),
            connector.clone(),
            AppendScripts {
                one: scripts.append.clone(),
                many: scripts.append_many.clone(),
            },
            cfg.op_timeout,
        );
        Ok(Self {
            connector,
            io,
            appends,
            pool: BlockingPool::new(cfg.max_blocking, cfg.idle_blocking),
            namespace: cfg.namespace,
            name: cfg.name,
            retention,
            session_ttl: cfg.session_ttl,
            op_timeout: cfg.op_timeout,
            max_block: cfg.max_block,
            scripts,
        })
    }

    /// Tails blocked on a dedicated connection right now, and dedicated connections kept idle
    /// (for the proxy's metrics).
    pub fn blocking_stats(&self) -> (usize, usize) {
        (self.pool.in_use(), self.pool.idle_count())
    }

    /// Appends sent to Redis, and the round trips they took (several sessions' appends share
    /// one script call under load).
    pub fn append_stats(&self) -> (u64, u64) {
        self.appends.stats()
    }

    fn keys(&self, s: &SessionId) -> SessionKeys {
        let k = |suffix| keys::session_key(&self.namespace, &self.name, s.as_str(), suffix);
        SessionKeys {
            events: k("events"),
            epoch: k("epoch"),
            lease: k("lease"),
            appid: k("appid"),
            marks: k("marks"),
        }
    }

    fn script<'s>(&self, script: &'s ::redis::Script, k: &SessionKeys) -> ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        for key in k.in_script_order() {
            inv.key(key);
        }
        inv
    }

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// The shared connection, driven on the I/O thread. A Sentinel master due for its re-check
    /// is looked up there too (its new connection must be driven there).
    async fn shared(&self) -> redis::RedisResult<IoConn> {
        let conn = match self.connector.shared().now_or_never() {
            Some(c) => c?,
            None => {
                let connector = self.connector.clone();
                self.io.run(async move { connector.shared().await }).await?
            }
        };
        Ok(self.io.wrap(conn))
    }

    /// Runs one ordinary command on the shared connection within the call deadline.
    async fn query(&self, what: &str, c: &Cmd) -> StoreResult<Value> {
        self.deadline(what, async {
            let mut conn = self.shared().await?;
            c.query_async::<Value>(&mut conn).await
        })
        .await
    }

    /// Runs one script (EVALSHA, loading it on NOSCRIPT) within the call deadline.
    async fn invoke(&self, what: &str, inv: &ScriptInvocation<'_>) -> StoreResult<Value> {
        self.deadline(what, async {
            let mut conn = self.shared().await?;
            inv.invoke_async::<Value>(&mut conn).await
        })
        .await
    }

    async fn deadline(
        &self,
        what: &str,
        fut: impl Future<Output = Result<Value, RedisError>>,
    ) -> StoreResult<Value> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.connector.report(&e);
                Err(from_redis(e))
            }
            Err(_) => {
                self.connector.report_timeout();
                Err(timed_out(what, self.op_timeout))
            }
        }
    }

    async fn read(&self, s: &SessionId, after: Seq, limit: usize) -> StoreResult<Vec<Recorded>> {
        if limit == 0 || after == Seq::MAX {
            return Ok(Vec::new());
        }
        let mut c = cmd("XRANGE");
        c.arg(self.keys(s).events)
            .arg(stream_id(after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(count(limit));
        parse_range(&self.query("read", &c).await?)
    }

    async fn do_append(
        &self,
        s: &SessionId,
        epoch: Epoch,
        entries: &[Recorded],
    ) -> StoreResult<Appended> {
        check_order(None, entries)?;
        let k = self.keys(s);
        // The newest event's app id: set it, or clear it when the app reset it (empty `id:`).
        let newest = entries.iter().rev().find_map(|r| match &r.entry {
            Entry::Event { app_id, .. } => Some(app_id.as_deref()),
            _ => None,
        });
        let (app_id, app_id_mode) = match newest {
            Some(Some(id)) => (id, "1"),
            Some(None) => ("", "2"),
            None => ("", "0"),
        };
        let mut keys = Cmd::new();
        for key in k.in_script_order() {
            keys.arg(key);
        }
        let mut args = Cmd::new();
        args.arg(epoch)
            .arg(self.retention.limit)
            .arg(Self::ms(self.session_ttl))
            .arg(app_id)
            .arg(app_id_mode)
            .arg(entries.len())
            .arg(u64::try_from(self.retention.floor.as_millis()).unwrap_or(u64::MAX))
            .arg(self.retention.cap);
        for r in entries {
            let fields = encode(&r.entry);
            args.arg(stream_id(r.seq)).arg(fields.len() * 2);
            for (f, v) in &fields {
                args.arg(*f).arg(v.as_ref());
            }
        }
        let reply = self
            .deadline("append", self.appends.call(Append { keys, args }))
            .await?;
        match parse_verdict(&reply)? {
            Verdict::Ok { cut_into_floor } => Ok(Appended { cut_into_floor }),
            Verdict::Fenced(current) => Err(StoreError::Fenced { current }),
            Verdict::BadId(id) => Err(StoreError::Malformed(format!(
                "append: stream id {id:?} is not one this version writes"
            ))),
        }
    }

    async fn do_acquire(&self, s: &SessionId, owner: &Owner, ttl: Duration) -> StoreResult<Lease> {
        let k = self.keys(s);
        let mut inv = self.script(&self.scripts.acquire, &k);
        inv.arg(&owner.name)
            .arg(owner.addr.to_string())
            .arg(Self::ms(ttl))
            .arg(Self::ms(ttl.max(self.session_ttl)));
        let epoch = codec::parse_int(&self.invoke("acquire", &inv).await?, "acquired epoch")?;
        Ok(Lease {
            owner: owner.name.clone(),
            addr: owner.addr,
            epoch,
            state: LeaseState::Live,
        })
    }

    async fn do_acquire_if(
        &self,
        s: &SessionId,
        owner: &Owner,
        ttl: Duration,
        expected: Epoch,
    ) -> StoreResult<Lease> {
        let k = self.keys(s);
        let mut inv = self.script(&self.scripts.acquire_if, &k);
        inv.arg(&owner.name)
            .arg(owner.addr.to_string())
            .arg(Self::ms(ttl))
            .arg(Self::ms(ttl.max(self.session_ttl)))
            .arg(expected);
        match codec::parse_conditional(&self.invoke("acquire_if", &inv).await?)? {
            Ok(epoch) => Ok(Lease {
                owner: owner.name.clone(),
                addr: owner.addr,
                epoch,
                state: LeaseState::Live,
            }),
            Err(current) => Err(StoreError::Fenced { current }),
        }
    }

    async fn do_epoch(&self, s: &SessionId) -> StoreResult<Epoch> {
        let mut c = cmd("GET");
        c.arg(self.keys(s).epoch);
        match parse_opt_text(&self.query("epoch", &c).await?, "epoch")? {
            None => Ok(0),
            Some(t) => t
                .parse()
                .map_err(|_| StoreError::Malformed("the epoch key holds no counter".into())),
        }
    }

    async fn do_renew(
        &self,
        s: &SessionId,
        epoch: Epoch,
        state: LeaseState,
        ttl: Duration,
    ) -> StoreResult<()> {
        let k = self.keys(s);
        let mut inv = self.script(&self.scripts.renew, &k);
        inv.arg(epoch)
            .arg(codec::state_word(state))
            .arg(Self::ms(ttl))
            .arg(Self::ms(ttl.max(self.session_ttl)));
        verdict_unit(&self.invoke("renew", &inv).await?)
    }

    async fn do_release(&self, s: &SessionId, epoch: Epoch) -> StoreResult<()> {
        let k = self.keys(s);
        let mut inv = self.script(&self.scripts.release, &k);
        inv.arg(epoch);
        verdict_unit(&self.invoke("release", &inv).await?)
    }

    async fn do_lease(&self, s: &SessionId) -> StoreResult<Option<Lease>> {
        let k = self.keys(s);
        let inv = self.script(&self.scripts.lease, &k);
        parse_lease(&self.invoke("lease", &inv).await?)
    }

    async fn do_last(&self, s: &SessionId) -> StoreResult<Option<Recorded>> {
        let mut c = cmd("XREVRANGE");
        c.arg(self.keys(s).events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        Ok(parse_range(&self.query("last", &c).await?)?
            .into_iter()
            .next())
    }

    async fn do_last_app_id(&self, s: &SessionId) -> StoreResult<Option<String>> {
        let mut c = cmd("GET");
        c.arg(self.keys(s).appid);
        parse_opt_text(&self.query("last_app_id", &c).await?, "app id")
    }

    /// Reads, and if nothing is there yet blocks on a dedicated connection (see `blocking.rs`).
    async fn wait(
        &self,
        s: &SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
    ) -> StoreResult<Vec<Recorded>> {
        let first = self.read(s, after, limit).await?;
        if !first.is_empty() || block.is_zero() || limit == 0 || after == Seq::MAX {
            return Ok(first);
        }
        let deadline = Instant::now() + block.min(self.max_block);
        let Some(_slot) = self.pool.slot(deadline).await else {
            // Every slot stayed busy for our whole block: answer late rather than never.
            return self.read(s, after, limit).await;
        };
        let mut fresh_only = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < Duration::from_millis(1) {
                return self.read(s, after, limit).await;
            }
            let kept = if fresh_only {
                None
            } else {
                self.pool.take_idle()
            };
            let reused = kept.is_some();
            let mut conn = match kept {
                Some(c) => c,
                None => self.new_dedicated().await?,
            };
            let mut c = cmd("XREAD");
            c.arg("COUNT")
                .arg(count(limit))
                .arg("BLOCK")
                .arg(Self::ms(remaining))
                .arg("STREAMS")
                .arg(self.keys(s).events)
                .arg(stream_id(after));
            let reply = tokio::time::timeout(
                remaining + self.op_timeout,
                c.query_async::<Value>(&mut conn),
            )
            .await;
            match reply {
                Ok(Ok(v)) => {
                    self.pool.put_back(conn);
                    return parse_xread(&v);
                }
                // Kept connections die with a Redis restart: drop them all, retry once on a new one.
                Ok(Err(e)) if reused && is_connection_fault(&e) => {
                    self.pool.clear_idle();
                    fresh_only = true;
                }
                Ok(Err(e)) => {
                    if !is_connection_fault(&e) {
                        self.pool.put_back(conn);
                    }
                    return Err(from_redis(e));
                }
                // The connection may still be blocked server-side: drop it, never reuse it.
                Err(_) => return Err(timed_out("wait", remaining + self.op_timeout)),
            }
        }
    }

    async fn new_dedicated(&self) -> StoreResult<IoConn> {
        let connector = self.connector.clone();
        let made = self.io.run(async move { connector.dedicated().await });
        match tokio::time::timeout(self.op_timeout, made).await {
            Ok(Ok(c)) => Ok(self.io.wrap(c)),
            Ok(Err(e)) => Err(from_redis(e)),
            Err(_) => Err(timed_out("connect", self.op_timeout)),
        }
    }
}

/// Redis counts are signed 64-bit; `usize::MAX` ("everything") must not overflow them.
fn count(limit: usize) -> u64 {
    (limit as u64).min(i64::MAX as u64)
}

fn verdict_unit(v: &Value) -> StoreResult<()> {
    match parse_verdict(v)? {
        Verdict::Ok { .. } => Ok(()),
        Verdict::Fenced(current) => Err(StoreError::Fenced { current }),
        Verdict::BadId(_) => Err(StoreError::Malformed("unexpected script verdict".into())),
    }
}

impl RedisStore {
    async fn do_append_broadcast(
        &self,
        s: &SessionId,
        a: super::BroadcastAppend<'_>,
    ) -> StoreResult<super::BroadcastAppended> {
        let k = self.keys(s);
        let token_key = keys::session_key(
            &self.namespace,
            &self.name,
            s.as_str(),
            keys::BROADCAST_TOKEN_SUFFIX,
        );
        let newest = a.entries.iter().rev().find_map(|e| match e {
            Entry::Event {
                app_id: Some(id), ..
            } => Some(id.as_str()),
            _ => None,
        });
        let mut inv = self.scripts.broadcast_append.prepare_invoke();
        inv.key(&k.events)
            .key(&k.epoch)
            .key(&k.lease)
            .key(&k.appid)
            .key(&token_key);
        inv.arg(a.epoch.map(|e| e.to_string()).unwrap_or_default())
            .arg(a.token.unwrap_or(""))
            .arg(a.floor)
            .arg(a.limit.max(1))
            .arg(Self::ms(self.session_ttl))
            .arg(newest.unwrap_or(""))
            .arg(if newest.is_some() { "1" } else { "0" })
            .arg(a.entries.len());
        for e in a.entries {
            let fields = encode(e);
            inv.arg(fields.len() * 2);
            for (f, v) in &fields {
                inv.arg(*f).arg(v.as_ref());
            }
        }
        let reply = self.invoke("broadcast_append", &inv).await?;
        let bad = || StoreError::Malformed("broadcast append: unexpected reply".into());
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        let num = |i: usize| -> StoreResult<u64> {
            items
                .get(i)
                .ok_or_else(bad)
                .and_then(|v| codec::parse_int(v, "broadcast append"))
        };
        match num(0)? {
            1 => Ok(super::BroadcastAppended::Stored {
                first: num(1)?,
                last: num(2)?,
            }),
            0 => Err(StoreError::Fenced { current: num(1)? }),
            3 => Ok(super::BroadcastAppended::Repeated { last: num(1)? }),
            _ => Err(StoreError::Malformed(
                "broadcast append: the stream holds ids this version does not write".into(),
            )),
        }
    }

    async fn do_claim_turn(&self, s: &SessionId, who: &str, ttl: Duration) -> StoreResult<bool> {
        let key = keys::session_key(
            &self.namespace,
            &self.name,
            s.as_str(),
            keys::BROADCAST_TURN_SUFFIX,
        );
        let mut c = cmd("SET");
        c.arg(&key).arg(who).arg("NX").arg("PX").arg(Self::ms(ttl));
        if !matches!(self.query("claim_turn", &c).await?, Value::Nil) {
            return Ok(true);
        }
        let mut g = cmd("GET");
        g.arg(&key);
        Ok(parse_opt_text(&self.query("claim_turn", &g).await?, "turn")?.as_deref() == Some(who))
    }

    async fn do_release_turn(&self, s: &SessionId, who: &str) -> StoreResult<()> {
        let key = keys::session_key(
            &self.namespace,
            &self.name,
            s.as_str(),
            keys::BROADCAST_TURN_SUFFIX,
        );
        let mut c = cmd("EVAL");
        c.arg(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1",
        )
        .arg(1)
        .arg(&key)
        .arg(who);
        self.query("release_turn", &c).await.map(|_| ())
    }
}

impl super::BroadcastStore for RedisStore {
    fn append_broadcast<'a>(
        &'a self,
        session: &'a SessionId,
        a: super::BroadcastAppend<'a>,
    ) -> BoxFuture<'a, StoreResult<super::BroadcastAppended>> {
        Box::pin(self.do_append_broadcast(session, a))
    }

    fn claim_turn<'a>(
        &'a self,
        session: &'a SessionId,
        who: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.do_claim_turn(session, who, ttl))
    }

    fn release_turn<'a>(
        &'a self,
        session: &'a SessionId,
        who: &'a str,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.do_release_turn(session, who))
    }
}

impl RedisStore {
    async fn do_stream_counts(
        &self,
        pod: &str,
        rest: &str,
        stale_ms: u64,
        ttl_ms: u64,
    ) -> StoreResult<super::Spread> {
        use crate::contract::rebalance::{PodStreams, stream_counts_key};
        let mut inv = self.scripts.stream_counts.prepare_invoke();
        inv.key(stream_counts_key(&self.namespace, &self.name))
            .arg(pod)
            .arg(rest)
            .arg(stale_ms.max(1))
            .arg(ttl_ms.max(1));
        let bad = || StoreError::Malformed("stream counts: unexpected reply".into());
        let Value::Array(items) = self.invoke("stream_counts", &inv).await? else {
            return Err(bad());
        };
        let mut it = items.iter();
        let now_ms = codec::parse_int(it.next().ok_or_else(bad)?, "stream counts: time")?;
        let mut pods = Vec::new();
        while let (Some(field), Some(value)) = (it.next(), it.next()) {
            let (Ok(Some(field)), Ok(Some(value))) = (
                parse_opt_text(field, "stream counts: pod"),
                parse_opt_text(value, "stream counts: value"),
            ) else {
                continue;
            };
            if let Some(p) = PodStreams::parse(&value) {
                pods.push((field, p));
            }
        }
        Ok(super::Spread { now_ms, pods })
    }
}

impl super::StreamCountStore for RedisStore {
    fn publish_counts<'a>(
        &'a self,
        r: super::CountsReport<'a>,
    ) -> BoxFuture<'a, StoreResult<super::Spread>> {
        Box::pin(async move {
            let rest = format!(
                "{} {} {}",
                r.total,
                r.resumable.min(r.total),
                r.state.as_str()
            );
            self.do_stream_counts(r.pod, &rest, r.stale_ms, r.key_ttl_ms)
                .await
        })
    }

    fn withdraw_counts<'a>(
        &'a self,
        pod: &'a str,
        stale_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            self.do_stream_counts(pod, "", stale_ms, 2 * stale_ms)
                .await
                .map(|_| ())
        })
    }
}

impl SessionStore for RedisStore {
    fn broadcast(&self) -> Option<&dyn super::BroadcastStore> {
        Some(self)
    }

    fn stream_counts(&self) -> Option<&dyn super::StreamCountStore> {
        Some(self)
    }

    fn acquire<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(self.do_acquire(session, owner, ttl))
    }

    fn acquire_if<'a>(
        &'a self,
        session: &'a SessionId,
        owner: &'a Owner,
        ttl: Duration,
        expected: Epoch,
    ) -> BoxFuture<'a, StoreResult<Lease>> {
        Box::pin(self.do_acquire_if(session, owner, ttl, expected))
    }

    fn epoch<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Epoch>> {
        Box::pin(self.do_epoch(session))
    }

    fn renew<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        state: LeaseState,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.do_renew(session, epoch, state, ttl))
    }

    fn release<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.do_release(session, epoch))
    }

    fn lease<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Lease>>> {
        Box::pin(self.do_lease(session))
    }

    fn append<'a>(
        &'a self,
        session: &'a SessionId,
        epoch: Epoch,
        entries: &'a [Recorded],
    ) -> BoxFuture<'a, StoreResult<Appended>> {
        Box::pin(self.do_append(session, epoch, entries))
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(self.read(session, after, limit))
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        after: Seq,
        limit: usize,
        block: Duration,
    ) -> BoxFuture<'a, StoreResult<Vec<Recorded>>> {
        Box::pin(self.wait(session, after, limit, block))
    }

    fn last<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Recorded>>> {
        Box::pin(self.do_last(session))
    }

    fn last_app_id<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(self.do_last_app_id(session))
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { self.query("ping", &cmd("PING")).await.map(|_| ()) })
    }
}
