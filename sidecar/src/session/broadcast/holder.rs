//! The one upstream of a broadcast path: who holds it, how it is recorded, how it moves.
//!
//! The lease is a session lease ([`crate::session::leases::LeaseBook`]) under the path's session
//! id, so it is renewed, marked draining, fenced and recovered after a Redis restart like any
//! session's. The protocol:
//!
//! 1. **Nobody holds it** (first start, or the holder died and its lease expired): a pod takes
//!    it with a compare-and-acquire on the epoch (of several trying, one wins), *then* opens
//!    `GET <path>` with `Last-Event-ID` = the app id of the last recorded event. A path the
//!    store lost entirely (no epoch) while this pod saw its history (Redis restarted empty under
//!    a live holder) is taken only after it stayed missing for a lease TTL, so the live holder
//!    recovers it first.
//! 2. **The holder records**: every event from the upstream is appended (fenced by the epoch,
//!    numbered by the store, a retried batch deduplicated by its token). A broken upstream is
//!    reopened with the last recorded app id; what the app sends again is dropped
//!    ([`super::ids::Overlap`]).
//! 3. **The holder drains** (SIGTERM): it marks the lease draining and records `Handover`, and
//!    keeps recording. Another pod that is not draining sees the marker in its tail, takes the
//!    path's takeover *turn* (`SET NX`, so the app sees at most two upstreams at once), opens its
//!    own upstream with the last recorded app id, waits (bounded) until its upstream's first
//!    event is one the old holder recorded (the overlap), and only then takes the lease (the
//!    epoch goes up by one: the old holder's next append is refused). It appends what its
//!    upstream sent that the
//!    stream does not hold yet. Nothing is lost (the old holder recorded until the new one
//!    began) and nothing is doubled (the overlap is dropped by app id).
//! 4. The old holder stops when it is fenced or its handover window is over, and releases.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::ids::{Overlap, app_ids};
use super::{Channel, Ctx};
use crate::http::body::empty;
use crate::http::client::outbound;
use crate::http::headers::{LAST_EVENT_ID, is_event_stream, last_event_id_value};
use crate::session::leases::Claim;
use crate::sse::{Frame, SseParser};
use crate::store::{
    BroadcastAppend, BroadcastAppended, Entry, Epoch, LeaseState, Seq, SessionStore as _,
    StoreError,
};

use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Entries of history whose app ids a (re)opened upstream is checked against.
const OVERLAP_HISTORY: u64 = 256;
/// Most events a taker holds while it waits for its upstream to overlap the stream.
const MAX_PENDING: usize = 10_000;
/// Most entries appended in one batch.
const MAX_BATCH: usize = 256;
/// Pause before reopening an upstream that failed or ended.
const REOPEN: Duration = Duration::from_millis(200);
/// Longest pause between failed reopens.
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// Pause after a failed append before it is retried.
const APPEND_RETRY: Duration = Duration::from_millis(100);

/// An open upstream: its body and the parser state, with the app's last event id as the parser
/// has folded it so far.
struct Upstream {
    body: Incoming,
    parser: SseParser,
    app_id: Option<String>,
    frames: Vec<Frame>,
}

impl Upstream {
    /// The entries the next chunk completes; `None` when the upstream ended or broke.
    async fn next(&mut self, ctx: &Ctx) -> Option<Vec<Entry>> {
        loop {
            let frame = self.body.frame().await?.ok()?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            return Some(self.push(ctx, &data));
        }
    }

    fn push(&mut self, ctx: &Ctx, data: &Bytes) -> Vec<Entry> {
        self.frames.clear();
        self.parser.push(data, &mut self.frames);
        let mut out = Vec::new();
        for f in self.frames.drain(..) {
            match f {
                Frame::Event(e) => {
                    if let Some(id) = e.id {
                        self.app_id = (!id.is_empty()).then_some(id);
                    }
                    out.push(Entry::Event {
                        app_id: self.app_id.clone(),
                        event: e.event,
                        data: e.data,
                    });
                }
                Frame::SetId(id) => self.app_id = (!id.is_empty()).then_some(id),
                Frame::Retry(ms) => out.push(Entry::Retry(ms)),
                Frame::Comment(_) => {}
                Frame::Oversized => {
                    ctx.metrics.oversized_events.inc();
                }
            }
        }
        out
    }
}

/// Open `GET <path>` to the app with the app's last id.
async fn open(ctx: &Ctx, ch: &Channel, app_id: Option<&str>) -> Option<Upstream> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(v) = app_id.and_then(last_event_id_value) {
        headers.insert(LAST_EVENT_ID, v);
    }
    let app = &ctx.sessions.app;
    let req = outbound(Method::GET, &ch.path, headers, empty(), app.addr());
    ctx.m().upstreams_opened.get_or_create(&ch.label).inc();
    match app.send(req).await {
        Ok(resp) if resp.status() == StatusCode::OK && is_event_stream(resp.headers()) => {
            Some(Upstream {
                body: resp.into_body(),
                parser: SseParser::new(ctx.sessions.settings.max_event_bytes),
                app_id: app_id.map(str::to_string),
                frames: Vec::new(),
            })
        }
        Ok(resp) => {
            tracing::warn!(path = %ch.path, status = %resp.status(), "broadcast upstream refused by the app");
            None
        }
        Err(e) => {
            tracing::warn!(path = %ch.path, error = %e, "broadcast upstream could not be opened");
            None
        }
    }
}

/// App ids of the stream's entries after `from`, read whole (bounded by the history limit).
async fn recorded_ids(ctx: &Ctx, ch: &Channel, from: Seq) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut after = from;
    loop {
        let batch = ctx
            .sessions
            .store
            .read_after(&ch.session, after, 1024)
            .await?;
        let Some(tail) = batch.last() else {
            return Ok(out);
        };
        after = tail.seq;
        let n = batch.len();
        out.extend(app_ids(batch.iter().map(|r| &r.entry)));
        if n < 1024 {
            return Ok(out);
        }
    }
}

/// The app ids of the last [`OVERLAP_HISTORY`] entries (a reopened upstream's overlap).
async fn recent_ids(ctx: &Ctx, ch: &Channel) -> Vec<String> {
    let end = match ctx.sessions.store.last(&ch.session).await {
        Ok(r) => r.map_or(0, |r| r.seq),
        Err(_) => ch.known_last(),
    };
    recorded_ids(ctx, ch, end.saturating_sub(OVERLAP_HISTORY))
        .await
        .unwrap_or_default()
}

/// Sleep `d` unless the sidecar stops first (`false` then).
async fn pause(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = ctx.stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// After giving the path up because this pod's app refused it: stay away a lease TTL, so a pod
/// whose app answers takes it first.
async fn cool_down(ctx: &Ctx) {
    tokio::select! {
        _ = ctx.stop.cancelled() => {}
        _ = ctx.draining.cancelled() => {}
        _ = tokio::time::sleep(ctx.lease_ttl) => {}
    }
}

/// The manager of one path on this pod: watches the lease, takes it when it may, holds it.
pub(super) async fn manage(ctx: Arc<Ctx>, ch: Arc<Channel>) {
    let poll = (ctx.lease_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let store = &ctx.sessions.store;
    let mut missing_since: Option<Instant> = None;
    // The stream's end as the store has it, so a pod that just started knows whether the path
    // has history (and must not take a missing lease at once).
    while !ctx.stop.is_cancelled() {
        match store.last(&ch.session).await {
            Ok(r) => {
                ch.raise(r.map_or(0, |r| r.seq));
                break;
            }
            Err(_) => {
                if !pause(&ctx, poll).await {
                    return;
                }
            }
        }
    }
    loop {
        if ctx.stop.is_cancelled() || ctx.draining.is_cancelled() {
            return;
        }
        // The epoch first, then the lease: a pod that takes the path between the two reads
        // moved the epoch, so the compare-and-acquire below refuses (no steal from a live holder).
        let Ok(epoch) = store.epoch(&ch.session).await else {
            if !pause(&ctx, poll).await {
                return;
            }
            continue;
        };
        match store.lease(&ch.session).await {
            Ok(None) => {
                let since = *missing_since.get_or_insert_with(Instant::now);
                // The store lost the path (no epoch) while this pod saw history: Redis came back
                // empty, and a live holder recovers its lease within a renewal; wait a TTL.
                if (epoch > 0 || ch.known_last() == 0 || since.elapsed() >= ctx.lease_ttl)
                    && let Ok(claim) = ctx.sessions.book.take_over(&ch.session, epoch).await
                {
                    missing_since = None;
                    ctx.m().takeover("vacant");
                    tracing::info!(path = %ch.path, epoch = claim.epoch, "broadcast upstream taken (nobody held it)");
                    if hold(&ctx, &ch, claim, None).await == Lost::AppDown {
                        cool_down(&ctx).await;
                    }
                    continue;
                }
            }
            // Held under this pod's name but not by this process: a previous run of this pod.
            Ok(Some(l)) if l.owner == ctx.owner && !ch.held.load(Ordering::Acquire) => {
                missing_since = None;
                if let Ok(claim) = ctx.sessions.book.take_over(&ch.session, l.epoch).await {
                    ctx.m().takeover("restarted");
                    if hold(&ctx, &ch, claim, None).await == Lost::AppDown {
                        cool_down(&ctx).await;
                    }
                    continue;
                }
            }
            Ok(Some(l)) if l.state == LeaseState::Draining => {
                missing_since = None;
                take_from_draining(&ctx, &ch, l.epoch).await;
                continue;
            }
            Ok(Some(_)) => missing_since = None,
            Err(_) => {}
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = ctx.draining.cancelled() => return,
            _ = ch.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Step 3 of the protocol, on the taking side; the turn is given back however it ends.
async fn take_from_draining(ctx: &Arc<Ctx>, ch: &Arc<Channel>, old_epoch: Epoch) {
    let Some(bstore) = ctx.sessions.store.broadcast() else {
        return;
    };
    let turn_ttl = ctx.lease_ttl * 3;
    match bstore.claim_turn(&ch.session, &ctx.owner, turn_ttl).await {
        Ok(true) => {}
        // Another pod is taking it over (or the store is down): look again later.
        _ => {
            let _ = pause(ctx, ctx.lease_ttl / 4).await;
            return;
        }
    }
    let taken = take_turn(ctx, ch, old_epoch).await;
    let _ = bstore.release_turn(&ch.session, &ctx.owner).await;
    if let Some((claim, started)) = taken
        && hold(ctx, ch, claim, Some(started)).await == Lost::AppDown
    {
        cool_down(ctx).await;
    }
}

/// What a won takeover hands to [`hold`]: the open upstream, what it sent before the lease
/// was taken, and the overlap to drop from it.
type Started = (Upstream, Vec<Entry>, Overlap);

/// With the turn held: open, wait for the overlap, take the lease.
async fn take_turn(
    ctx: &Arc<Ctx>,
    ch: &Arc<Channel>,
    old_epoch: Epoch,
) -> Option<(Claim, Started)> {
    let store = &ctx.sessions.store;
    let (Ok(s0), Ok(app_id)) = (
        store.last(&ch.session).await,
        store.last_app_id(&ch.session).await,
    ) else {
        return None;
    };
    let s0 = s0.map_or(0, |r| r.seq);
    let Some(mut up) = open(ctx, ch, app_id.as_deref()).await else {
        ctx.m().takeover("upstream_failed");
        let _ = pause(ctx, REOPEN).await;
        return None;
    };
    // Wait until the new upstream overlaps what the old holder records, bounded: then the old
    // holder may be fenced without a gap.
    let deadline = tokio::time::Instant::now() + ctx.lease_ttl;
    let mut pending: Vec<Entry> = Vec::new();
    // What the old holder recorded after `s0`, read incrementally (a fast stream appends
    // thousands of entries during the wait).
    let mut recorded = std::collections::HashSet::new();
    let mut scanned = s0;
    let overlapped = loop {
        let first = pending.iter().find_map(|e| match e {
            Entry::Event { app_id, .. } => Some(app_id.clone()),
            _ => None,
        });
        match first {
            // An event without an id cannot be matched: take over now.
            Some(None) => break false,
            Some(Some(id)) => {
                if let Ok(batch) = store.read_after(&ch.session, scanned, 1024).await
                    && let Some(tail) = batch.last()
                {
                    scanned = tail.seq;
                    recorded.extend(app_ids(batch.iter().map(|r| &r.entry)));
                }
                if recorded.contains(&id) {
                    break true;
                }
            }
            None => {}
        }
        if tokio::time::Instant::now() >= deadline || pending.len() >= MAX_PENDING {
            break false;
        }
        // The old holder is gone already: nothing more to overlap with.
        match store.lease(&ch.session).await {
            Ok(Some(l)) if l.epoch == old_epoch => {}
            _ => break false,
        }
        let step = tokio::time::Instant::now() + Duration::from_millis(20);
        tokio::select! {
            r = up.next(ctx) => match r {
                Some(entries) => pending.extend(entries),
                None => {
                    ctx.m().takeover("upstream_failed");
                    return None;
                }
            },
            _ = tokio::time::sleep_until(step.min(deadline)) => {}
            _ = ctx.stop.cancelled() => return None,
        }
    };
    let claim = match ctx.sessions.book.take_over(&ch.session, old_epoch).await {
        Ok(c) => c,
        Err(_) => {
            ctx.m().takeover("lost_race");
            return None;
        }
    };
    ctx.m()
        .takeover(if overlapped { "overlap" } else { "no_overlap" });
    tracing::info!(path = %ch.path, epoch = claim.epoch, overlapped, pending = pending.len(), "broadcast upstream taken over from a draining holder");
    // The old holder can append nothing more: what it recorded after `s0` is final.
    let recorded = recorded_ids(ctx, ch, s0.saturating_sub(OVERLAP_HISTORY))
        .await
        .unwrap_or_default();
    let overlap = Overlap::new(recorded);
    Some((claim, (up, pending, overlap)))
}

/// How appends of one holding are written.
struct Writer {
    claim: Claim,
    nonce: u64,
    batches: u64,
}

/// Why a holding ends.
#[derive(Debug, PartialEq, Eq)]
enum Lost {
    /// Another pod holds the path now.
    Fenced,
    /// The sidecar stops.
    Stopped,
    /// This pod's app refused the upstream [`GIVE_UP_AFTER`] times in a row: the lease is
    /// released so a pod whose app answers takes the path.
    AppDown,
}

/// Failed upstream opens in a row after which a holder gives the path up.
const GIVE_UP_AFTER: u32 = 3;

impl Writer {
    /// Append `entries` until the store takes them (retrying the same batch, deduplicated by
    /// its token), the lease is lost, or the sidecar stops. Nothing is read from the upstream
    /// meanwhile: an outage slows the app's stream instead of losing it.
    async fn write(&mut self, ctx: &Ctx, ch: &Channel, entries: &[Entry]) -> Result<(), Lost> {
        if entries.is_empty() {
            return Ok(());
        }
        let Some(bstore) = ctx.sessions.store.broadcast() else {
            return Err(Lost::Stopped);
        };
        let book = &ctx.sessions.book;
        self.batches += 1;
        loop {
            if self.claim.fenced.is_cancelled() {
                return Err(Lost::Fenced);
            }
            let Some(epoch) = book.epoch(&ch.session, self.claim.id) else {
                return Err(Lost::Fenced);
            };
            let token = format!("{epoch}:{:x}:{}", self.nonce, self.batches);
            let a = BroadcastAppend {
                epoch: Some(epoch),
                token: Some(&token),
                floor: ch.known_last(),
                limit: ch.limit,
                entries,
            };
            let started = Instant::now();
            match bstore.append_broadcast(&ch.session, a).await {
                Ok(BroadcastAppended::Stored { last, .. }) => {
                    ctx.metrics
                        .record_batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    ctx.m()
                        .events_appended
                        .get_or_create(&ch.label)
                        .inc_by(entries.len() as u64);
                    ctx.metrics.events_recorded.inc_by(entries.len() as u64);
                    ch.raise(last);
                    return Ok(());
                }
                Ok(BroadcastAppended::Repeated { last }) => {
                    ch.raise(last);
                    return Ok(());
                }
                // The store lost the path (Redis restarted empty): take it again and go on.
                Err(StoreError::Fenced { current: 0 }) => {
                    if let Err(StoreError::Fenced { .. }) =
                        book.recover(&ch.session, self.claim.id, Some(0)).await
                    {
                        book.fenced(&ch.session, self.claim.id);
                        return Err(Lost::Fenced);
                    }
                }
                Err(StoreError::Fenced { current }) => {
                    tracing::info!(path = %ch.path, epoch, current, "broadcast upstream taken over by another pod");
                    ctx.metrics.fenced_entries.inc_by(entries.len() as u64);
                    book.fenced(&ch.session, self.claim.id);
                    return Err(Lost::Fenced);
                }
                Err(_) => {
                    if !pause(ctx, APPEND_RETRY).await {
                        return Err(Lost::Stopped);
                    }
                }
            }
        }
    }
}

/// Hold the path: read the upstream and record it until the lease is lost, the sidecar stops,
/// or (draining) the successor took over or the handover window is over.
async fn hold(ctx: &Arc<Ctx>, ch: &Arc<Channel>, claim: Claim, started: Option<Started>) -> Lost {
    ch.held.store(true, Ordering::Release);
    let held = ctx.m().upstream_held.get_or_create(&ch.label).clone();
    held.set(1);
    let id = claim.id;
    let mut w = Writer {
        claim,
        nonce: rand::random(),
        batches: 0,
    };
    let end = run(ctx, ch, &mut w, started).await;
    held.set(0);
    tracing::info!(path = %ch.path, reason = ?end, "broadcast upstream given up");
    ctx.sessions.book.unpin(&ch.session, id);
    ch.held.store(false, Ordering::Release);
    end
}

async fn run(ctx: &Arc<Ctx>, ch: &Arc<Channel>, w: &mut Writer, started: Option<Started>) -> Lost {
    let store = &ctx.sessions.store;
    let overlap_dropped = ctx.m().overlap_dropped.get_or_create(&ch.label).clone();
    let (mut up, mut overlap) = match started {
        Some((up, pending, mut overlap)) => {
            let fresh: Vec<Entry> = keep_new(pending, &mut overlap, &overlap_dropped);
            for chunk in fresh.chunks(MAX_BATCH) {
                if let Err(l) = w.write(ctx, ch, chunk).await {
                    return l;
                }
            }
            (Some(up), overlap)
        }
        None => (None, Overlap::default()),
    };
    let mut app_id: Option<String> = store.last_app_id(&ch.session).await.unwrap_or_default();
    let mut backoff = REOPEN;
    let mut failures = 0u32;
    let mut handover_by: Option<tokio::time::Instant> = None;
    loop {
        if ctx.stop.is_cancelled() {
            return Lost::Stopped;
        }
        if w.claim.fenced.is_cancelled() {
            return Lost::Fenced;
        }
        // Draining: mark the lease and record the handover once, then keep capturing.
        if ctx.draining.is_cancelled() && handover_by.is_none() {
            handover_by = Some(tokio::time::Instant::now() + ctx.handover_window);
            let _ = ctx.sessions.book.mark_draining(&ch.session).await;
            if let Err(l) = w.write(ctx, ch, &[Entry::Handover]).await {
                return l;
            }
            tracing::info!(path = %ch.path, "broadcast holder draining: handover recorded");
        }
        if handover_by.is_some_and(|t| tokio::time::Instant::now() >= t) {
            return Lost::Stopped;
        }
        let Some(u) = up.as_mut() else {
            overlap = Overlap::new(recent_ids(ctx, ch).await);
            match open(ctx, ch, app_id.as_deref()).await {
                Some(u) => {
                    up = Some(u);
                    backoff = REOPEN;
                    failures = 0;
                }
                None => {
                    failures += 1;
                    if failures >= GIVE_UP_AFTER && handover_by.is_none() {
                        tracing::warn!(path = %ch.path, failures, "the app refuses the broadcast upstream: giving the path to another pod");
                        return Lost::AppDown;
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(REOPEN_MAX);
                    tokio::select! {
                        _ = ctx.stop.cancelled() => return Lost::Stopped,
                        _ = w.claim.fenced.cancelled() => return Lost::Fenced,
                        _ = ctx.draining.cancelled(), if handover_by.is_none() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            continue;
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let next = tokio::select! {
            r = u.next(ctx) => r,
            _ = ctx.stop.cancelled() => return Lost::Stopped,
            _ = w.claim.fenced.cancelled() => return Lost::Fenced,
            _ = ctx.draining.cancelled(), if handover_by.is_none() => continue,
            _ = tokio::time::sleep_until(handover_by.unwrap_or(far)) => return Lost::Stopped,
        };
        let Some(entries) = next else {
            tracing::info!(path = %ch.path, "broadcast upstream ended: reopening");
            up = None;
            if !pause(ctx, REOPEN).await {
                return Lost::Stopped;
            }
            continue;
        };
        let fresh = keep_new(entries, &mut overlap, &overlap_dropped);
        for chunk in fresh.chunks(MAX_BATCH) {
            if let Err(l) = w.write(ctx, ch, chunk).await {
                return l;
            }
        }
        if let Some(last) = fresh.iter().rev().find_map(|e| match e {
            Entry::Event { app_id, .. } => Some(app_id.clone()),
            _ => None,
        }) {
            app_id = last;
        }
    }
}

/// The entries the stream does not hold yet (the overlap of a reopened upstream dropped).
fn keep_new(
    entries: Vec<Entry>,
    overlap: &mut Overlap,
    dropped: &prometheus_client::metrics::counter::Counter,
) -> Vec<Entry> {
    entries
        .into_iter()
        .filter(|e| match e {
            Entry::Event { app_id, .. } => {
                let keep = overlap.admit(app_id.as_deref());
                if !keep {
                    dropped.inc();
                }
                keep
            }
            _ => overlap.is_over(),
        })
        .collect()
}
