//! Connections to whichever deployment the URL named, behind one interface.
//!
//! Two kinds of connection are needed. Every ordinary call shares one multiplexed connection
//! (pipelined, cheap to clone). A blocking `XREAD` must not run on it: the server answers a
//! connection's requests in order, so one tail blocked for seconds would stall every append
//! queued behind it. Tails therefore get *dedicated* connections from [`Connector::dedicated`],
//! pooled and bounded by the caller (`blocking.rs`).
//!
//! Reconnection: single node uses the redis crate's `ConnectionManager` (reconnects on I/O
//! errors); Cluster uses its cluster client (rediscovers slots, reconnects nodes); Sentinel has no
//! such manager in the crate, so [`SentinelState`] keeps the current master connection, drops it
//! on a connection fault, `READONLY` (a failover demoted it) or a timeout, and also asks the
//! sentinels every [`SENTINEL_RECHECK`] whether the master moved (a freshly elected master is
//! announced before the old one is demoted; writes to the old one in between are lost).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, TlsMode, Value,
};

use super::url::RedisTarget;

/// Any connection a command can run on.
#[derive(Clone)]
pub enum AnyConn {
    /// Single node, reconnecting.
    Manager(ConnectionManager),
    /// One multiplexed connection (a sentinel-resolved master, or a dedicated blocking one).
    Plain(MultiplexedConnection),
    /// Redis Cluster, routing by key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Timeouts for connecting and for one reply; the store's own per-call deadline sits above them.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Deadline for ordinary calls (and for establishing any connection).
    pub op: Duration,
    /// The longest `XREAD BLOCK` a dedicated connection will be asked to wait.
    pub max_block: Duration,
}

/// Opens connections to one target.
pub struct Connector {
    shared: Shared,
    dedicated: Dedicated,
    timeouts: Timeouts,
}

enum Shared {
    Direct(AnyConn),
    Sentinel(Arc<SentinelState>),
}

// One per store, never moved around: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Dedicated {
    Single(Client),
    Sentinel(Arc<SentinelState>),
    Cluster(ClusterClient),
}

/// How often the sentinels are asked whether the master changed. A failover announced by the
/// sentinels is followed within this (plus one lookup) even while the old master still accepts
/// writes, which bounds the writes sent to a master that is about to be demoted.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

/// The master behind a set of sentinels, re-resolved after a failover.
struct SentinelState {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Current>>,
    config: AsyncConnectionConfig,
}

/// The connection to the master the sentinels named last, and when that was confirmed.
#[derive(Clone)]
struct Current {
    conn: MultiplexedConnection,
    addr: String,
    checked: Instant,
}

impl Connector {
    /// Builds clients for `target` without connecting: the store must come up (and report
    /// itself unavailable) even while Redis is down.
    pub fn new(target: &RedisTarget, timeouts: Timeouts) -> RedisResult<Self> {
        install_crypto_provider();
        let op = timeouts.op;
        match target {
            RedisTarget::Single { url } => {
                let client = Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(op))
                    .set_response_timeout(Some(op))
                    // Fail fast and let the next call try again: callers degrade, they do not wait.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200));
                let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok(Self {
                    shared: Shared::Direct(AnyConn::Manager(manager)),
                    dedicated: Dedicated::Single(client),
                    timeouts,
                })
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                tls,
                master_template,
            } => {
                let master_info = master_template.as_str().into_connection_info()?;
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(master_info.redis_settings().clone());
                if *tls {
                    node = node.set_tls_mode(TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let state = Arc::new(SentinelState {
                    sentinel: tokio::sync::Mutex::new(client),
                    current: Mutex::new(None),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(op))
                        .set_response_timeout(Some(op)),
                });
                Ok(Self {
                    shared: Shared::Sentinel(state.clone()),
                    dedicated: Dedicated::Sentinel(state),
                    timeouts,
                })
            }
            RedisTarget::Cluster { nodes } => {
                let shared = cluster_client(nodes, op)?.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(op)
                        .set_response_timeout(op),
                );
                Ok(Self {
                    shared: Shared::Direct(AnyConn::Cluster(shared)),
                    dedicated: Dedicated::Cluster(cluster_client(nodes, op)?),
                    timeouts,
                })
            }
        }
    }

    /// The shared connection for ordinary calls.
    pub async fn shared(&self) -> RedisResult<AnyConn> {
        match &self.shared {
            Shared::Direct(c) => Ok(c.clone()),
            Shared::Sentinel(s) => s.master().await.map(AnyConn::Plain),
        }
    }

    /// Tells the connector a call on the shared connection failed, so a sentinel master that
    /// went away or was demoted is looked up again.
    pub fn report(&self, e: &RedisError) {
        if let Shared::Sentinel(s) = &self.shared
            && is_connection_fault(e)
        {
            s.forget();
        }
    }

    /// Tells the connector a call on the shared connection timed out: a sentinel master behind a
    /// black-holed network only ever shows up this way, so it is looked up again.
    pub fn report_timeout(&self) {
        if let Shared::Sentinel(s) = &self.shared {
            s.forget();
        }
    }

    /// A new connection of its own, for one blocking read at a time. Its reply timeout covers
    /// the longest block plus the ordinary deadline.
    pub async fn dedicated(&self) -> RedisResult<AnyConn> {
        let reply = self.timeouts.max_block + self.timeouts.op;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeouts.op))
            .set_response_timeout(Some(reply));
        match &self.dedicated {
            Dedicated::Single(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(AnyConn::Plain),
            Dedicated::Sentinel(s) => {
                let client = s.sentinel.lock().await.async_get_client().await?;
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(AnyConn::Plain)
            }
            Dedicated::Cluster(client) => client
                .get_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(self.timeouts.op)
                        .set_response_timeout(reply),
                )
                .await
                .map(AnyConn::Cluster),
        }
    }
}

impl SentinelState {
    async fn master(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(cur) = self.cached() {
            if cur.checked.elapsed() < SENTINEL_RECHECK {
                return Ok(cur.conn);
            }
            // Due for a re-check. One caller does it; the others keep using the connection.
            let Ok(mut sentinel) = self.sentinel.try_lock() else {
                return Ok(cur.conn);
            };
            return match sentinel.async_get_client().await {
                Ok(client) if client.get_connection_info().addr().to_string() == cur.addr => {
                    self.set_checked(&cur.addr);
                    Ok(cur.conn)
                }
                // A failover elected another master: move now, before the old one is demoted.
                Ok(client) => self.switch(client).await,
                // Sentinels unreachable: the master we have is still the best guess.
                Err(_) => {
                    self.set_checked(&cur.addr);
                    Ok(cur.conn)
                }
            };
        }
        // No master yet (or it failed): one lookup at a time, the others reuse its result.
        let mut sentinel = self.sentinel.lock().await;
        if let Some(cur) = self.cached() {
            return Ok(cur.conn);
        }
        let client = sentinel.async_get_client().await?;
        self.switch(client).await
    }

    async fn switch(&self, client: Client) -> RedisResult<MultiplexedConnection> {
        let addr = client.get_connection_info().addr().to_string();
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.lock() = Some(Current {
            conn: conn.clone(),
            addr,
            checked: Instant::now(),
        });
        Ok(conn)
    }

    fn cached(&self) -> Option<Current> {
        self.lock().clone()
    }

    fn set_checked(&self, addr: &str) {
        if let Some(cur) = self.lock().as_mut().filter(|c| c.addr == addr) {
            cur.checked = Instant::now();
        }
    }

    fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn cluster_client(nodes: &[String], op: Duration) -> RedisResult<ClusterClient> {
    ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(op)
        .response_timeout(op)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .build()
}

/// The redis crate leaves rustls without a crypto provider when nothing else in the binary
/// picked one; without this a `rediss://` connect would fail at run time. Idempotent.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether the connection that produced `e` should be thrown away rather than reused (the server
/// went away, or a failover demoted it).
pub fn is_connection_fault(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}
