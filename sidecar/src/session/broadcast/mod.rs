//! Broadcast paths: one upstream per SseService, fanned out to every client on every pod
//! through one Redis Stream per path (issue 12, DESIGN.md "Broadcast paths").
//!
//! Per configured path each pod runs:
//! - a **manager** ([`holder`]) that takes the path's lease when nobody holds it (or when the
//!   holder drains: by overlap, like a session takeover) and then, as the holder, reads the one
//!   upstream `GET <path>` from its app and appends its events to the stream;
//! - one **tail** (`XREAD BLOCK` on the stream) whose entries are encoded once and handed to the
//!   pod's clients through a `tokio::sync::broadcast` ring;
//! - per client a **pump** that replays from the store after the client's `Last-Event-ID`, then
//!   follows the ring, filling any hole from the store, so no client sees a gap or a duplicate,
//!   and every client sees the same ids (`id: <seq>`, see [`ids`]).
//!
//! Clients never touch the upstream: a client leaving only ends its pump. A client that does not
//! read fast enough fills its bounded queue and is closed with the `retry:` hint; it reconnects
//! with its last id and resumes from history (counted in `broadcast_slow_clients_cut`).

mod holder;
pub mod ids;
mod publish;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::contract::BroadcastPath;
use crate::cursor::SessionId;
use crate::http::body::{ClientTx, Cut, ProxyBody};
use crate::http::kind::{KindCell, StreamKind};
use crate::metrics::{BroadcastMetrics, PathLabel};
use crate::session::Sessions;
use crate::session::resume::{sse_response, too_many_streams};
use crate::store::{Entry, Seq, SessionStore as _};

pub use self::publish::PublishSettings;

/// Entries one tail read or one replay read asks for.
const READ_BATCH: usize = 512;
/// Slots of a path's in-memory ring per pod: a pump that falls this far behind the tail (a
/// starved task, not a slow client: those are cut at their own queue) refills from the store.
const RING: usize = 4096;
/// How long one tail read blocks.
const TAIL_BLOCK: Duration = Duration::from_secs(2);
/// Pause after a failed store call of the tail.
const TAIL_RETRY: Duration = Duration::from_millis(250);

/// One entry as the tail delivers it to the pod's pumps.
#[derive(Debug)]
struct Live {
    seq: Seq,
    /// What clients get (`None`: a marker, only the position moves).
    bytes: Option<Bytes>,
}

/// One broadcast path on this pod.
struct Channel {
    path: String,
    session: SessionId,
    limit: u32,
    live: broadcast::Sender<Arc<Live>>,
    /// Highest seq this pod saw in the stream (tail or own appends): new seqs are numbered above
    /// it even when the store lost the stream.
    known_last: AtomicU64,
    /// The tail saw a handover marker: the manager looks at the lease now, not at its next poll.
    wake: Notify,
    /// Whether this pod holds the upstream right now.
    held: AtomicBool,
    label: PathLabel,
}

impl Channel {
    fn known_last(&self) -> Seq {
        self.known_last.load(Ordering::Acquire)
    }

    fn raise(&self, seq: Seq) {
        self.known_last.fetch_max(seq, Ordering::AcqRel);
    }
}

/// What the broadcast tasks share.
struct Ctx {
    sessions: Arc<Sessions>,
    metrics: Arc<crate::metrics::Metrics>,
    owner: String,
    lease_ttl: Duration,
    /// `--drain-seconds` + `--handover-margin-seconds`: how long a draining holder keeps its
    /// upstream for the pod taking it over.
    handover_window: Duration,
    /// Cancelled at SIGTERM: managers stop taking leases, holders hand over.
    draining: CancellationToken,
    /// Cancelled when the sidecar stops.
    stop: CancellationToken,
}

impl Ctx {
    fn m(&self) -> &BroadcastMetrics {
        &self.metrics.broadcast
    }
}

/// The broadcast paths of this pod.
pub struct Broadcasts {
    ctx: Arc<Ctx>,
    channels: HashMap<String, Arc<Channel>>,
    publish: PublishSettings,
}

/// What [`Broadcasts::start`] needs beyond the session layer.
#[derive(Debug, Clone)]
pub struct BroadcastSettings {
    /// The configured paths.
    pub paths: Vec<BroadcastPath>,
    /// This pod's name (lease owner, takeover turn).
    pub owner: String,
    /// Lease lifetime without renewal (a dead holder is replaced after it).
    pub lease_ttl: Duration,
    /// How long a draining holder keeps capturing for its successor.
    pub handover_window: Duration,
    /// The publish endpoint's settings.
    pub publish: PublishSettings,
}

impl Broadcasts {
    /// Start a manager and a tail per path (nothing at all without paths). `stop` ends them.
    pub fn start(
        sessions: Arc<Sessions>,
        settings: BroadcastSettings,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let ctx = Arc::new(Ctx {
            metrics: sessions.metrics.clone(),
            sessions,
            owner: settings.owner,
            lease_ttl: settings.lease_ttl,
            handover_window: settings.handover_window,
            draining: CancellationToken::new(),
            stop,
        });
        let mut channels = HashMap::new();
        let can = ctx.sessions.store.broadcast().is_some();
        for p in settings.paths {
            let session = match SessionId::parse(&crate::contract::keys::broadcast_session(&p.path))
            {
                Ok(s) => s,
                Err(_) => continue,
            };
            let ch = Arc::new(Channel {
                label: BroadcastMetrics::path(&p.path),
                path: p.path.clone(),
                session,
                limit: p.history_limit,
                live: broadcast::channel(RING).0,
                known_last: AtomicU64::new(0),
                wake: Notify::new(),
                held: AtomicBool::new(false),
            });
            ctx.m().upstream_held.get_or_create(&ch.label).set(0);
            ctx.m().subscribers.get_or_create(&ch.label).set(0);
            if !can {
                // `main` refuses this combination; an embedder that starts it anyway gets the
                // path proxied to the app per client, as without `--broadcast`.
                tracing::error!(path = %p.path, "broadcast path configured on a store that cannot share a stream: proxied per client");
                continue;
            }
            tokio::spawn(tail(ctx.clone(), ch.clone()));
            tokio::spawn(holder::manage(ctx.clone(), ch.clone()));
            channels.insert(p.path, ch);
        }
        Arc::new(Broadcasts {
            ctx,
            channels,
            publish: settings.publish,
        })
    }

    /// Whether `path` (without query) is a broadcast path.
    pub fn is_broadcast(&self, path: &str) -> bool {
        self.channels.contains_key(path)
    }

    /// Serve a client of a broadcast path: the live stream, or a replay after `last_event_id`
    /// and then the live stream. `None` when `path` is no broadcast path.
    pub fn serve(&self, path: &str, last_event_id: Option<&str>) -> Option<Response<ProxyBody>> {
        let ch = self.channels.get(path)?.clone();
        let Some((tx, body)) = self
            .ctx
            .sessions
            .clients
            .open(KindCell::new(StreamKind::Resumable))
        else {
            return Some(too_many_streams(&self.ctx.metrics));
        };
        let resume = last_event_id.map(|t| (ids::parse_last_id(t), t.to_string()));
        // Subscribed before anything is read, so nothing the tail delivers from now is missed.
        let rx = ch.live.subscribe();
        tokio::spawn(pump(self.ctx.clone(), ch, tx, rx, resume));
        Some(sse_response(body))
    }

    /// SIGTERM: stop taking upstreams; a holder records the handover and keeps capturing until
    /// another pod takes over (or the handover window is over).
    pub fn drain(&self) {
        self.ctx.draining.cancel();
        for ch in self.channels.values() {
            ch.wake.notify_one();
        }
    }

    /// Wait until this pod holds no upstream any more (handed over or given up), at most `limit`.
    pub async fn released(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self
                .channels
                .values()
                .any(|c| c.held.load(Ordering::Acquire))
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// How many paths this pod holds the upstream of.
    pub fn held(&self) -> usize {
        self.channels
            .values()
            .filter(|c| c.held.load(Ordering::Acquire))
            .count()
    }
}

/// The pod's one tail of a path: every entry after the stream's end at start, encoded once and
/// sent to the pod's pumps; a handover marker wakes the manager.
async fn tail(ctx: Arc<Ctx>, ch: Arc<Channel>) {
    let store = &ctx.sessions.store;
    let mut last = loop {
        match store.last(&ch.session).await {
            Ok(r) => break r.map_or(0, |r| r.seq),
            Err(_) => {
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(TAIL_RETRY) => {}
                }
            }
        }
    };
    ch.raise(last);
    let lag = ctx.m().tail_lag_entries.get_or_create(&ch.label).clone();
    loop {
        let read = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = store.wait_after_within(&ch.session, last, READ_BATCH, TAIL_BLOCK, TAIL_BLOCK + store.timeout()) => r,
        };
        let entries = match read {
            Ok(e) => e,
            Err(_) => {
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(TAIL_RETRY) => {}
                }
                continue;
            }
        };
        lag.set(entries.len().saturating_sub(1) as i64);
        for r in entries {
            if r.seq <= last {
                continue;
            }
            last = r.seq;
            ch.raise(last);
            if r.entry == Entry::Handover {
                ch.wake.notify_one();
            }
            let _ = ch.live.send(Arc::new(Live {
                seq: r.seq,
                bytes: ids::encode_entry(r.seq, &r.entry),
            }));
        }
    }
}

/// Decrements the subscriber gauge when a pump ends, however it ends.
struct Subscribed(Gauge);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a pump stops.
enum Stop {
    /// The client is gone or was cut.
    Client,
}

/// One client's stream: the replay after its last id (when it sent one), then the tail's
/// entries, each exactly once and in order.
async fn pump(
    ctx: Arc<Ctx>,
    ch: Arc<Channel>,
    tx: ClientTx,
    mut rx: broadcast::Receiver<Arc<Live>>,
    resume: Option<(Option<Seq>, String)>,
) {
    let gauge = ctx.m().subscribers.get_or_create(&ch.label).clone();
    gauge.inc();
    let _subscribed = Subscribed(gauge);
    let mut last = match resume {
        Some((Some(after), sent)) => {
            let mut last = after;
            // An id beyond the stream's end belongs to a stream that is gone (Redis lost it and
            // the ids started again): say so, and go on from the end.
            let end = match ctx.sessions.store.last(&ch.session).await {
                Ok(r) => r.map_or(0, |r| r.seq).max(ch.known_last()),
                Err(_) => return retry_later(&tx),
            };
            if after > end {
                ctx.metrics.replay_gaps.inc();
                if ctx.sessions.settings.gap_event
                    && tx
                        .send(crate::sse::encode_gap("expired", &sent), stall(&ctx))
                        .await
                        .is_err()
                {
                    return;
                }
                last = end;
            }
            if catch_up(&ctx, &ch, &tx, &mut last, None, &sent)
                .await
                .is_err()
            {
                return;
            }
            last
        }
        // No position (or not one of ours): the live stream from now.
        _ => ch.known_last(),
    };
    let sent = last.to_string();
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            r = rx.recv() => r,
        };
        match item {
            Ok(item) => {
                if item.seq <= last {
                    continue;
                }
                if item.seq > last + 1
                    && catch_up(&ctx, &ch, &tx, &mut last, Some(item.seq - 1), &sent)
                        .await
                        .is_err()
                {
                    return;
                }
                last = item.seq;
                let Some(bytes) = &item.bytes else { continue };
                match tx.try_send(bytes.clone()) {
                    Ok(()) => {
                        ctx.metrics.events_forwarded.inc();
                    }
                    Err(Cut::Full) => return slow(&ctx, &ch, &tx),
                    Err(Cut::Closed) => return,
                }
            }
            // This pump fell behind the ring (its task starved, not its client): the store has it.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if catch_up(&ctx, &ch, &tx, &mut last, None, &sent)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How long a replay waits on a client's queue before the client counts as slow.
fn stall(ctx: &Ctx) -> Duration {
    ctx.sessions.settings.client_stall
}

/// A client that does not read fast enough: closed with the `retry:` hint (it resumes from
/// history), counted.
fn slow(ctx: &Ctx, ch: &Channel, tx: &ClientTx) {
    ctx.m().slow_clients_cut.get_or_create(&ch.label).inc();
    ctx.metrics.slow_consumers.inc();
    tx.close();
}

/// The store cannot serve this client now: end its stream with the `retry:` hint so it comes
/// back with the same id (an EventSource treats an error status as final, a closed stream not).
fn retry_later(tx: &ClientTx) {
    tx.close();
}

/// Deliver what the store holds after `last` (up to `up_to`), in order; a hole before the first
/// stored entry (trimmed history) gets the gap event, as a session resume does.
async fn catch_up(
    ctx: &Ctx,
    ch: &Channel,
    tx: &ClientTx,
    last: &mut Seq,
    up_to: Option<Seq>,
    sent: &str,
) -> Result<(), Stop> {
    let store = &ctx.sessions.store;
    let mut first_read = true;
    loop {
        if up_to.is_some_and(|u| *last >= u) {
            return Ok(());
        }
        let entries = match store.read_after(&ch.session, *last, READ_BATCH).await {
            Ok(e) => e,
            Err(_) => {
                retry_later(tx);
                return Err(Stop::Client);
            }
        };
        let Some(head) = entries.first() else {
            return Ok(());
        };
        if head.seq > *last + 1 && (first_read || up_to.is_some()) {
            ctx.metrics.replay_gaps.inc();
            if ctx.sessions.settings.gap_event
                && tx
                    .send(crate::sse::encode_gap("missing", sent), stall(ctx))
                    .await
                    .is_err()
            {
                return Err(Stop::Client);
            }
        }
        first_read = false;
        let full = entries.len() == READ_BATCH;
        for r in entries {
            if up_to.is_some_and(|u| r.seq > u) {
                return Ok(());
            }
            *last = r.seq;
            let Some(bytes) = ids::encode_entry(r.seq, &r.entry) else {
                continue;
            };
            match tx.send(bytes, stall(ctx)).await {
                Ok(()) => {
                    ctx.metrics.replayed_events.inc();
                    ctx.metrics.events_forwarded.inc();
                }
                Err(Cut::Full) => {
                    slow(ctx, ch, tx);
                    return Err(Stop::Client);
                }
                Err(Cut::Closed) => return Err(Stop::Client),
            }
        }
        if !full {
            return Ok(());
        }
    }
}
