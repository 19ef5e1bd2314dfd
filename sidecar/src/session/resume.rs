//! Resuming a stream from its cursor (`Last-Event-ID: <session>.<seq>`), on any pod.
//!
//! - The session's recorder runs here (a network blip): attach to it; it hands over its recent
//!   events, and anything older comes from the store.
//! - Otherwise replay the store after `seq`, then tail it while the owner (another pod) records.
//!   An `End` marker ends the response; a `Handover` marker (the owner is draining) or an expired
//!   lease (it died) makes this pod take the session over: open a fresh upstream to its own app
//!   with the app's last event id, only then take the lease (epoch + 1, which fences the old
//!   owner), deliver what the old owner recorded meanwhile, and record the new upstream's events,
//!   dropping those the client already had (the overlap), continuing the sequence.
//!
//! Defined answers for the odd cases (each counted in `resumes_total{outcome}`): a session the
//! store does not know (expired, or never existed) and a cursor far beyond the session's history
//! (forged) start a fresh stream under a new session; a cursor at a finished stream's end opens a
//! new stream from the app with the app's last id, exactly what the client would have sent the app
//! directly; a store outage starts a fresh stream (no replay is possible).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::cursor::{Binding, Cursor, SessionId, SessionSigner, Signer};
use crate::http::body::{ClientBody, ClientTx, ProxyBody, full};
use crate::http::client::RequestTemplate;
use crate::http::headers::is_event_stream;
use crate::http::kind::{KindCell, StreamKind};
use crate::metrics::{ErrorKind, Metrics, OverlapOutcome, ResumeOutcome, TakeoverOutcome};
use crate::session::Sessions;
use crate::session::fresh::Fresh;
use crate::session::recorder::{self, AttachReply, StreamStart};
use crate::session::replay::{Overlap, entry_bytes};
use crate::store::{Entry, Epoch, LeaseState, Recorded, Seq, SessionStore as _, StoreError};

/// Entries read from the store per call.
const READ_BATCH: usize = 256;
/// Longest a takeover waits for the fresh stream's first event, and then for the old owner's
/// record to reach it (overlap), before it takes over without.
const OVERLAP_WAIT: Duration = Duration::from_millis(1500);
/// How often the overlap wait reads the store.
const OVERLAP_POLL: Duration = Duration::from_millis(5);
/// How long one tail read blocks waiting for the owner's next batch.
const TAIL_BLOCK: Duration = Duration::from_millis(1000);
/// How long a resuming client may keep the replay waiting before it is cut.
const SEND_PATIENCE: Duration = Duration::from_secs(10);
/// Store failures in a row a tail tolerates before it ends the response (the client reconnects).
const TAIL_ERRORS: u32 = 5;
/// How long a same-pod resume waits for entries still on their way to the store.
const RANGE_WAIT: Duration = Duration::from_secs(1);

/// What to do with a resume request.
pub enum Resumed {
    /// Answer with this (a replay, a tail, a refusal).
    Respond(Response<ProxyBody>),
    /// Open a new stream from the app, sending it this `Last-Event-ID` (if any).
    Fresh(Option<String>),
    /// The session is gone (expired): a new stream from the app, begun with the gap event.
    Expired,
}

/// The head of an SSE response the sidecar produces itself (replay and tail).
pub fn sse_response(body: ClientBody) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::http::body::boxed(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// 503 for a request beyond the stream bound.
pub fn too_many_streams(metrics: &Metrics) -> Response<ProxyBody> {
    metrics.error(ErrorKind::TooManyStreams);
    let mut r = Response::new(full("too many streams\n"));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

/// A resumed stream is resumable again (its client reconnects with `Last-Event-ID`).
fn channel(shared: &Sessions) -> Option<(ClientTx, ClientBody)> {
    shared.clients.open(KindCell::default())
}

/// A keyed stream reconnecting without `Last-Event-ID` (an MCP Streamable HTTP notification
/// `GET` with its `Mcp-Session-Id`) while this pod's recorder still holds the session's app
/// stream: attach to that recording from now on instead of opening a second upstream (which an
/// app allowing one stream per session refuses). `None` when no recorder of it runs here.
pub async fn attach_live(
    shared: &Arc<Sessions>,
    session: &SessionId,
    binding: Binding,
) -> Option<Response<ProxyBody>> {
    let handle = shared.recorders.get(session)?;
    if handle.binding() != binding {
        // Another client's recording (other credentials or path): it gets its own stream from
        // the app, which decides whether to serve it, and never a byte of this one.
        shared.metrics.resume(ResumeOutcome::Unverified);
        return None;
    }
    let Some((tx, body)) = shared.clients.open(KindCell::new(StreamKind::Session)) else {
        return Some(too_many_streams(&shared.metrics));
    };
    match handle.attach(crate::session::recorder::LIVE, tx).await {
        AttachReply::Attached(_) | AttachReply::Lost => {
            shared.metrics.resume(ResumeOutcome::Reattached);
            Some(sse_response(body))
        }
        AttachReply::Refused(_) | AttachReply::Forged => None,
    }
}

/// Answer a request carrying a well-formed cursor, made with the request's `binding`. A cursor
/// that does not verify for this request (another client's, edited, another path's, another
/// SseService's) is treated as one of an unknown session, before anything is read for it.
pub async fn resume(
    shared: &Arc<Sessions>,
    template: RequestTemplate,
    cursor: Cursor,
    binding: Binding,
) -> Resumed {
    if !shared.settings.cursor_key.verify(&cursor, binding) {
        tracing::info!(session = %cursor.session, "cursor not made for this client: fresh stream");
        return as_unknown(shared, ResumeOutcome::Unverified);
    }
    let signer = Signer {
        key: shared.settings.cursor_key.clone(),
        binding,
    }
    .for_session(&cursor.session);
    let Cursor {
        session,
        seq: after,
        ..
    } = cursor;
    let carried = match resume_here(shared, &signer, &session, after).await {
        Local::Answered(r) => return r,
        Local::Refused(pair) => Some(pair),
        Local::Absent => None,
    };
    let first = match from_store(shared, &session, after).await {
        Ok(first) => first,
        Err(fresh) => return fresh,
    };
    let Some((tx, body)) = carried.or_else(|| channel(shared)) else {
        return Resumed::Respond(too_many_streams(&shared.metrics));
    };
    shared.metrics.resume(ResumeOutcome::Store);
    let follower = Follower {
        shared: shared.clone(),
        signer,
        session,
        client_after: after,
        cursor: after,
        client: tx,
        sticky: None,
        template,
        gap_seen: false,
        handover_seen: false,
        buf: String::with_capacity(64),
    };
    tokio::spawn(follower.run(first));
    Resumed::Respond(sse_response(body))
}

/// What the session's recorder on this pod, if one runs, made of the resume.
enum Local {
    /// Answered by the recorder here (attached, lost, or a forged cursor).
    Answered(Resumed),
    /// The recorder is handing the session over: follow the store with this client queue.
    Refused((ClientTx, ClientBody)),
    /// No recorder here.
    Absent,
}

/// Attach to the session's recorder if it runs here (a network blip): it hands over its recent
/// events, anything older comes from the store.
async fn resume_here(
    shared: &Arc<Sessions>,
    signer: &SessionSigner,
    session: &SessionId,
    after: Seq,
) -> Local {
    let Some(handle) = shared.recorders.get(session) else {
        return Local::Absent;
    };
    let Some((tx, mut body)) = channel(shared) else {
        return Local::Answered(Resumed::Respond(too_many_streams(&shared.metrics)));
    };
    match handle.attach(after, tx).await {
        AttachReply::Attached(attached) => {
            shared.metrics.resume(ResumeOutcome::Local);
            let mut prefix = match attached.from_store {
                Some((from, upto)) => read_range(shared, signer, session, from, upto).await,
                None => VecDeque::new(),
            };
            shared
                .metrics
                .replayed_events
                .inc_by((prefix.len() + attached.prefix.len()) as u64);
            prefix.extend(attached.prefix);
            body.set_prefix(prefix);
            Local::Answered(Resumed::Respond(sse_response(body)))
        }
        AttachReply::Lost => Local::Answered(Resumed::Respond(sse_response(body))),
        AttachReply::Forged => {
            tracing::info!(session = %session, after, "cursor beyond the live session: fresh stream");
            shared.metrics.resume(ResumeOutcome::Forged);
            Local::Answered(Resumed::Fresh(None))
        }
        AttachReply::Refused(tx) => Local::Refused((tx, body)),
    }
}

/// The first entries after `after` to replay from the store, or the fresh stream to start
/// instead (and why, counted).
async fn from_store(
    shared: &Sessions,
    session: &SessionId,
    after: Seq,
) -> Result<Vec<Recorded>, Resumed> {
    let store_down = || {
        shared.metrics.resume(ResumeOutcome::StoreDown);
        Resumed::Fresh(None)
    };
    if !shared.store.is_up() {
        return Err(store_down());
    }
    let first = match shared.store.read_after(session, after, READ_BATCH).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(session = %session, error = %e, "resume without the store: fresh stream");
            return Err(store_down());
        }
    };
    let verdict = if first.is_empty() {
        let lease = shared.store.lease(session).await;
        let last = shared.store.last(session).await;
        let (Ok(lease), Ok(last)) = (lease, last) else {
            return Err(store_down());
        };
        judge_empty(
            after,
            lease.is_some(),
            last.map(|r| r.seq),
            shared.settings.max_unrecorded as u64,
        )
    } else if first[0].entry == Entry::End {
        Some(ResumeOutcome::Ended)
    } else {
        None
    };
    match verdict {
        None => Ok(first),
        Some(ResumeOutcome::Ended) => {
            // The client has the whole finished stream: it reconnects as it would to the app.
            let app_id = shared.store.last_app_id(session).await;
            shared.metrics.resume(ResumeOutcome::Ended);
            Err(Resumed::Fresh(app_id.ok().flatten()))
        }
        Some(ResumeOutcome::Unknown) => {
            tracing::info!(session = %session, after, "session expired: fresh stream");
            Err(as_unknown(shared, ResumeOutcome::Unknown))
        }
        Some(outcome) => {
            tracing::info!(session = %session, after, outcome = outcome.label(), "cursor the store cannot continue: fresh stream");
            shared.metrics.resume(outcome);
            Err(Resumed::Fresh(None))
        }
    }
}

/// A fresh stream from the app for a cursor of a session this pod cannot continue for this
/// client (expired, never existed, or not made for it), told so by the gap event when it is on.
fn as_unknown(shared: &Sessions, outcome: ResumeOutcome) -> Resumed {
    shared.metrics.resume(outcome);
    if shared.settings.gap_event {
        shared.metrics.replay_gaps.inc();
        Resumed::Expired
    } else {
        Resumed::Fresh(None)
    }
}

/// Nothing is stored after the cursor: is that a session to tail (its owner records on), one
/// the store does not know (`Unknown`), or a cursor far beyond its history (`Forged`; `slack`
/// covers entries an owner may still hold unwritten)?
fn judge_empty(after: Seq, leased: bool, last: Option<Seq>, slack: u64) -> Option<ResumeOutcome> {
    match last {
        None if !leased => Some(ResumeOutcome::Unknown),
        Some(last) if after > last.saturating_add(slack) => Some(ResumeOutcome::Forged),
        _ => None,
    }
}

/// The gap event for a resume after `after` whose next stored entries are missing (naming the
/// client's cursor at the hole).
fn missing_gap(signer: &SessionSigner, after: Seq) -> Bytes {
    crate::sse::encode_gap("missing", &signer.cursor(after).to_string())
}

/// Entries `(from, upto]` as wire bytes, waiting briefly for those still on their way.
async fn read_range(
    shared: &Sessions,
    signer: &SessionSigner,
    session: &SessionId,
    from: Seq,
    upto: Seq,
) -> VecDeque<Bytes> {
    let mut out = VecDeque::new();
    let mut cursor = from;
    let mut buf = String::new();
    let mut holed = false;
    // Counted once per resume; the gap event goes where the hole is.
    let mut hole = |out: &mut VecDeque<Bytes>, reached: Seq| {
        if std::mem::replace(&mut holed, true) {
            return;
        }
        shared.metrics.replay_gaps.inc();
        tracing::warn!(session = %session, from, upto, reached, "same-pod resume: part of the history is missing");
        if shared.settings.gap_event {
            out.push_back(missing_gap(signer, from));
        }
    };
    let deadline = Instant::now() + RANGE_WAIT;
    while cursor < upto && Instant::now() < deadline {
        let want = (upto - cursor).min(READ_BATCH as u64) as usize;
        let r = shared
            .store
            .wait_after_within(
                session,
                cursor,
                want,
                Duration::from_millis(100),
                shared.store.timeout() + RANGE_WAIT,
            )
            .await;
        let Ok(entries) = r else { break };
        let mut past_range = false;
        for e in &entries {
            if e.seq > upto {
                // The rest of the range is not in the store (trimmed or never recorded): what
                // follows comes from the recorder's memory. Asking again would only spin.
                past_range = true;
                break;
            }
            if e.seq > cursor + 1 {
                // Trimmed (or never recorded) between the cursor and the oldest entry kept.
                hole(&mut out, cursor);
            }
            if let Some(b) = entry_bytes(signer, e, &mut buf) {
                out.push_back(b);
            }
            cursor = e.seq;
        }
        if past_range {
            break;
        }
    }
    if cursor < upto {
        hole(&mut out, cursor);
    }
    out
}

enum Step {
    Next,
    Stop,
    /// Take the session over from this epoch (the one the decision was based on); `true` when
    /// the owner is alive (draining) and still records, so the takeover can wait for overlap.
    Takeover(Epoch, bool),
}

/// Who holds a session now, as a tail sees it.
enum Holder {
    /// Another pod, recording normally.
    Live,
    /// Another pod, draining (it will hand over), holding this epoch.
    Draining(Epoch),
    /// Nobody (the owner died or released it), or a lease of this pod without a recorder; the
    /// session's epoch when that was seen.
    Gone(Epoch),
    /// A recorder of this pod (another client took it over here).
    Here,
    /// The store did not answer.
    Unknown,
}

/// Feeds one resumed client from the store, and takes the session over when the owner leaves.
struct Follower {
    shared: Arc<Sessions>,
    /// Writes the client's cursors (its binding was verified with the cursor it sent).
    signer: SessionSigner,
    session: SessionId,
    /// The client's own cursor (a crash may have shown it entries the store never got).
    client_after: Seq,
    /// The last seq read from the store (delivered, or a marker passed).
    cursor: Seq,
    client: ClientTx,
    /// The app's last event id at `cursor`, once an event told it.
    sticky: Option<Option<String>>,
    template: RequestTemplate,
    gap_seen: bool,
    /// A `Handover` marker was passed: a draining owner is leaving and may be taken over.
    handover_seen: bool,
    buf: String,
}

impl Follower {
    async fn run(mut self, mut batch: Vec<Recorded>) {
        let mut errors = 0;
        loop {
            for r in std::mem::take(&mut batch) {
                match self.on_entry(r).await {
                    Step::Next => {}
                    Step::Stop => return,
                    Step::Takeover(epoch, alive) => match self.takeover(epoch, alive).await {
                        // Another pod took the session first: follow it from the store.
                        Some(me) => {
                            self = me;
                            break;
                        }
                        None => return,
                    },
                }
            }
            let read = tokio::select! {
                _ = self.client.closed() => return,
                r = self.shared.store.wait_after(&self.session, self.cursor, READ_BATCH, TAIL_BLOCK) => r,
            };
            match read {
                Ok(entries) if !entries.is_empty() => {
                    errors = 0;
                    batch = entries;
                }
                Ok(_) => match self.holder().await {
                    Holder::Live => errors = 0,
                    Holder::Draining(epoch) if self.handover_seen => {
                        errors = 0;
                        match self.takeover(epoch, true).await {
                            Some(me) => self = me,
                            None => return,
                        }
                    }
                    Holder::Draining(_) => errors = 0,
                    Holder::Unknown => errors += 1,
                    Holder::Gone(epoch) => match self.takeover(epoch, false).await {
                        Some(me) => self = me,
                        None => return,
                    },
                    Holder::Here => {
                        // Rare: a second client took the session over on this pod. End this
                        // response; the client reconnects and attaches to that recorder.
                        return;
                    }
                },
                Err(e) => {
                    errors += 1;
                    tracing::debug!(session = %self.session, error = %e, "tail read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if errors >= TAIL_ERRORS {
                tracing::warn!(session = %self.session, "store unavailable while tailing: ending the response");
                self.shared.metrics.error(ErrorKind::TailStoreUnavailable);
                return;
            }
        }
    }

    async fn holder(&self) -> Holder {
        if self.shared.recorders.contains(&self.session) {
            return Holder::Here;
        }
        let me = self.shared.book.owner();
        match self.lease().await {
            None => Holder::Unknown,
            Some(Some(l)) if l.owner == me.name => Holder::Gone(l.epoch),
            Some(Some(l)) if l.state == LeaseState::Draining => Holder::Draining(l.epoch),
            Some(Some(_)) => Holder::Live,
            Some(None) => {
                // Nobody holds it: the epoch to take it from, read *before* a second look at
                // the lease, so a pod that takes it in between is seen (and not taken from).
                let epoch = self.shared.store.epoch(&self.session).await;
                let Ok(epoch) = epoch else {
                    return Holder::Unknown;
                };
                match self.lease().await {
                    None => Holder::Unknown,
                    Some(None) => Holder::Gone(epoch),
                    Some(Some(l)) if l.owner == me.name => Holder::Gone(l.epoch),
                    Some(Some(l)) if l.state == LeaseState::Draining => Holder::Draining(l.epoch),
                    Some(Some(_)) => Holder::Live,
                }
            }
        }
    }

    /// The lease now; `None` if the store did not answer.
    async fn lease(&self) -> Option<Option<crate::store::Lease>> {
        let r = self.shared.store.lease(&self.session).await;
        r.ok()
    }

    /// Deliver one stored entry (or act on a marker).
    async fn on_entry(&mut self, r: Recorded) -> Step {
        if r.seq <= self.cursor {
            return Step::Next;
        }
        if r.seq > self.cursor + 1 && !self.gap_seen {
            self.gap_seen = true;
            self.shared.metrics.replay_gaps.inc();
            tracing::warn!(session = %self.session, after = self.cursor, next = r.seq, "history has a hole (trimmed or unrecorded)");
            if self.shared.settings.gap_event {
                let gap = missing_gap(&self.signer, self.cursor);
                if self.client.send(gap, SEND_PATIENCE).await.is_err() {
                    return Step::Stop;
                }
            }
        }
        match &r.entry {
            Entry::End => {
                self.cursor = r.seq;
                Step::Stop
            }
            Entry::Handover => {
                self.cursor = r.seq;
                self.handover_seen = false;
                match self.holder().await {
                    // A handover some earlier owner recorded; a live owner holds the session now.
                    Holder::Live | Holder::Here => Step::Next,
                    // Decided on an epoch or not at all: the tail asks again when it runs dry.
                    Holder::Unknown => {
                        self.handover_seen = true;
                        Step::Next
                    }
                    Holder::Draining(epoch) => Step::Takeover(epoch, true),
                    Holder::Gone(epoch) => Step::Takeover(epoch, false),
                }
            }
            Entry::Event { app_id, .. } => {
                self.sticky = Some(app_id.clone());
                self.send(&r).await
            }
            Entry::Retry(_) => self.send(&r).await,
        }
    }

    async fn send(&mut self, r: &Recorded) -> Step {
        self.cursor = r.seq;
        let Some(bytes) = entry_bytes(&self.signer, r, &mut self.buf) else {
            return Step::Next;
        };
        match self.client.send(bytes, SEND_PATIENCE).await {
            Ok(()) => {
                self.shared.metrics.replayed_events.inc();
                self.shared.metrics.events_forwarded.inc();
                Step::Next
            }
            Err(crate::http::body::Cut::Full) => {
                self.shared.metrics.slow_consumers.inc();
                Step::Stop
            }
            Err(crate::http::body::Cut::Closed) => Step::Stop,
        }
    }

    /// Deliver everything stored after the cursor; `false` if the response must end.
    async fn catch_up(&mut self, delivered: &mut Vec<Recorded>) -> Result<bool, TakeoverOutcome> {
        loop {
            let r = self
                .shared
                .store
                .read_after(&self.session, self.cursor, READ_BATCH)
                .await;
            let entries = r.map_err(|_| TakeoverOutcome::StoreUnavailable)?;
            if entries.is_empty() {
                return Ok(true);
            }
            for e in entries {
                if e.seq <= self.cursor {
                    continue;
                }
                match &e.entry {
                    Entry::End => {
                        self.cursor = e.seq;
                        return Ok(false);
                    }
                    Entry::Handover => self.cursor = e.seq,
                    Entry::Event { app_id, .. } => {
                        self.sticky = Some(app_id.clone());
                        if let Step::Stop = self.send(&e).await {
                            return Err(TakeoverOutcome::Client);
                        }
                        delivered.push(e);
                    }
                    Entry::Retry(_) => {
                        if let Step::Stop = self.send(&e).await {
                            return Err(TakeoverOutcome::Client);
                        }
                    }
                }
            }
        }
    }

    /// Step 5 of the handoff: open first, then take the lease (only from `expected`, the epoch
    /// the decision saw), then deliver the rest. Returns the follower if another pod took the
    /// session first: it goes on serving its client from the store.
    /// The session's stream, opened afresh from this pod's app with the app's last event id.
    async fn open_upstream(
        &self,
        app_last_id: Option<&str>,
    ) -> Result<Response<hyper::body::Incoming>, TakeoverOutcome> {
        let shared = &self.shared;
        let req = self.template.build(app_last_id, shared.app.addr());
        match shared.app.send(req).await {
            Ok(resp) if resp.status() == StatusCode::OK && is_event_stream(resp.headers()) => {
                Ok(resp)
            }
            Ok(resp) => {
                tracing::warn!(session = %self.session, status = %resp.status(), "takeover: the app did not answer with a stream");
                Err(TakeoverOutcome::UpstreamRefused)
            }
            Err(e) => {
                tracing::warn!(session = %self.session, error = %e, "takeover: cannot reach the app");
                shared.metrics.error(e.kind());
                Err(TakeoverOutcome::UpstreamUnreachable)
            }
        }
    }

    /// Deliver what the still-recording old owner stores until it reaches the fresh stream's
    /// first event (`first_id`), at most [`OVERLAP_WAIT`]: `Ok(true)` once the two overlap.
    async fn await_overlap(
        &mut self,
        first_id: &str,
        delivered: &mut Vec<Recorded>,
    ) -> Result<bool, TakeoverOutcome> {
        let deadline = Instant::now() + OVERLAP_WAIT;
        // Entries before this index were looked at already.
        let mut checked = 0;
        loop {
            let reached = delivered[checked..].iter().any(
                |r| matches!(&r.entry, Entry::Event { app_id: Some(id), .. } if id == first_id),
            );
            if reached {
                return Ok(true);
            }
            checked = delivered.len();
            if Instant::now() >= deadline {
                return Ok(false);
            }
            match self.catch_up(delivered).await? {
                true => tokio::time::sleep(OVERLAP_POLL).await,
                false => return Err(TakeoverOutcome::Ended),
            }
        }
    }

    async fn takeover(mut self, expected: Epoch, owner_alive: bool) -> Option<Self> {
        let started = Instant::now();
        let shared = self.shared.clone();
        let base = shared.store.last_app_id(&self.session).await;
        let Ok(base) = base else {
            shared.metrics.takeover(TakeoverOutcome::StoreUnavailable);
            return None;
        };
        let mut ignored = Vec::new();
        match self.catch_up(&mut ignored).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(why) => {
                shared.metrics.takeover(why);
                return None;
            }
        }
        let app_last_id = self.sticky.clone().unwrap_or(base);

        let upstream = match self.open_upstream(app_last_id.as_deref()).await {
            Ok(upstream) => upstream,
            Err(why) => {
                shared.metrics.takeover(why);
                return None;
            }
        };
        // Overlap first: the old owner, still recording, is fenced only once what it stored
        // reaches the fresh stream's first event (an app that ignores `Last-Event-ID` starts it
        // at "now"; fencing earlier would lose what lies between).
        let fresh = Fresh::read_ahead(
            upstream.into_body(),
            OVERLAP_WAIT,
            shared.settings.max_event_bytes,
        )
        .await;
        // The last event delivered before the open counts too: an app may repeat it.
        let mut delivered: Vec<Recorded> = ignored.pop().into_iter().collect();
        if let Some(first_id) = fresh.first_id().map(str::to_string) {
            let overlapped = if owner_alive {
                match self.await_overlap(&first_id, &mut delivered).await {
                    Ok(o) => o,
                    Err(why) => {
                        shared.metrics.takeover(why);
                        return None;
                    }
                }
            } else {
                false
            };
            if !overlapped && owner_alive {
                tracing::info!(session = %self.session, first_id, "takeover: the fresh stream does not overlap the record in time; taking over without overlap");
                shared.metrics.takeover_overlap(OverlapOutcome::NotReached);
            } else if overlapped {
                shared.metrics.takeover_overlap(OverlapOutcome::Overlapped);
            }
        } else {
            shared.metrics.takeover_overlap(OverlapOutcome::NoId);
        }
        let claim = match shared.book.take_over(&self.session, expected).await {
            Ok(c) => c,
            Err(StoreError::Fenced { current }) => {
                // Another client's pod decided at the same moment and won; its upstream is the
                // session's now. Ours is dropped unread and this client follows the store.
                tracing::info!(session = %self.session, expected, current, "takeover lost to another pod: following it");
                shared.metrics.takeover(TakeoverOutcome::Lost);
                self.handover_seen = false;
                return Some(self);
            }
            Err(e) => {
                tracing::warn!(session = %self.session, error = %e, "takeover: cannot take the lease");
                shared.metrics.takeover(TakeoverOutcome::StoreUnavailable);
                return None;
            }
        };
        // The old owner is fenced now: what it recorded so far is all it ever will.
        let mut rest = delivered;
        match self.catch_up(&mut rest).await {
            Ok(true) => {}
            Ok(false) => {
                // Its stream ended before it was fenced: nothing left to capture.
                shared.book.unpin(&self.session, claim.id);
                shared.metrics.takeover(TakeoverOutcome::Ended);
                return None;
            }
            Err(why) => {
                shared.book.unpin(&self.session, claim.id);
                shared.metrics.takeover(why);
                return None;
            }
        }
        let next_seq = self.cursor.max(self.client_after) + 1;
        tracing::info!(
            session = %self.session,
            epoch = claim.epoch,
            next_seq,
            overlap = rest.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "took the session over"
        );
        recorder::spawn(
            &shared,
            StreamStart {
                session: self.session,
                upstream: fresh.into_body(),
                next_seq,
                sticky: app_last_id,
                overlap: Overlap::from_delivered(&rest),
                kind: self.client.kind().clone(),
                client: Some(self.client),
                claim: Some(claim),
                // The app's fresh stream announces a new session (MCP: a new `endpoint`), which
                // the client follows: route it here like any stream's first endpoint.
                learn_endpoint: true,
                binding: self.signer.binding(),
            },
        );
        shared.metrics.takeover(TakeoverOutcome::Ok);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{HeaderMap, Method};
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::config::Settings;
    use crate::contract::SidecarArgs;
    use crate::metrics::Metrics;
    use crate::store::{MemoryStore, Owner, SessionStore};

    /// The session layer over a memory store, its app somewhere nothing listens.
    fn sessions() -> (Arc<Sessions>, Arc<dyn SessionStore>) {
        let args = SidecarArgs::defaults(9, "test", "svc");
        let memory: Arc<dyn SessionStore> =
            Arc::new(MemoryStore::new(1000, Duration::from_secs(60)));
        let s = Sessions::new(
            &Settings::from_args(&args),
            memory.clone(),
            Arc::new(Metrics::new()),
        );
        (Arc::new(s), memory)
    }

    fn template() -> RequestTemplate {
        RequestTemplate {
            method: Method::GET,
            path: "/events".into(),
            headers: HeaderMap::new(),
        }
    }

    /// The binding of [`template`]'s request (anonymous, `/events`).
    fn binding(sh: &Sessions) -> Binding {
        sh.settings
            .binding(&HeaderMap::new(), &"/events".parse().unwrap())
    }

    /// Resume `session` after `seq` with a cursor made for [`template`]'s request.
    async fn resume_at(sh: &Arc<Sessions>, session: &SessionId, seq: Seq) -> Resumed {
        let b = binding(sh);
        let cursor = sh.settings.cursor_key.cursor(session, seq, b);
        resume(sh, template(), cursor, b).await
    }

    fn event(seq: Seq, app_id: &str) -> Recorded {
        Recorded {
            seq,
            entry: Entry::Event {
                app_id: Some(app_id.into()),
                event: None,
                data: format!("event {seq}"),
            },
        }
    }

    /// A session another pod owns and records, with `entries` stored.
    async fn owned_elsewhere(store: &Arc<dyn SessionStore>, entries: &[Recorded]) -> SessionId {
        let s = SessionId::random();
        let other = Owner {
            name: "other".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 2)),
        };
        let lease = store
            .acquire(&s, &other, Duration::from_secs(30))
            .await
            .unwrap();
        store.append(&s, lease.epoch, entries).await.unwrap();
        s
    }

    fn fresh(r: &Resumed) -> Option<Option<String>> {
        match r {
            Resumed::Fresh(id) => Some(id.clone()),
            Resumed::Respond(_) | Resumed::Expired => None,
        }
    }

    #[tokio::test]
    async fn an_unknown_session_starts_fresh_and_is_told_so() {
        let (sh, _) = sessions();
        let r = resume_at(&sh, &SessionId::random(), 4).await;
        assert!(matches!(r, Resumed::Expired), "the gap event, then the app");
        assert_eq!(sh.metrics.count("resumes", "unknown"), 1);
        assert_eq!(sh.metrics.replay_gaps.get(), 1);
    }

    #[tokio::test]
    async fn a_cursor_at_a_finished_streams_end_reconnects_with_the_apps_last_id() {
        let (sh, store) = sessions();
        let end = Recorded {
            seq: 3,
            entry: Entry::End,
        };
        let s = owned_elsewhere(&store, &[event(1, "a1"), event(2, "a2"), end]).await;
        let r = resume_at(&sh, &s, 2).await;
        assert_eq!(fresh(&r), Some(Some("a2".into())));
        assert_eq!(sh.metrics.count("resumes", "ended"), 1);
    }

    #[tokio::test]
    async fn a_cursor_far_beyond_the_history_is_forged() {
        let (sh, store) = sessions();
        let s = owned_elsewhere(&store, &[event(1, "a1")]).await;
        let slack = sh.settings.max_unrecorded as u64;
        let r = resume_at(&sh, &s, 2 + slack).await;
        assert_eq!(fresh(&r), Some(None));
        assert_eq!(sh.metrics.count("resumes", "forged"), 1);
        // Within the slack, the owner may still hold it unwritten: the client tails.
        let r = resume_at(&sh, &s, 1 + slack).await;
        assert_eq!(fresh(&r), None);
    }

    #[tokio::test]
    async fn a_session_owned_elsewhere_is_replayed_from_the_store_with_cursor_ids() {
        let (sh, store) = sessions();
        let s = owned_elsewhere(&store, &[event(1, "a1"), event(2, "a2"), event(3, "a3")]).await;
        let Resumed::Respond(resp) = resume_at(&sh, &s, 1).await else {
            panic!("a replay");
        };
        assert_eq!(sh.metrics.count("resumes", "store"), 1);
        let mut body = resp.into_body();
        let mut got = String::new();
        while !got.contains("event 3") {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("replayed in time")
                .expect("the stream goes on")
                .expect("no error");
            if let Ok(data) = frame.into_data() {
                got.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        assert!(!got.contains("event 1"), "the client had event 1: {got}");
        assert!(
            crate::cursor::untag(&got).contains(&format!("id: {s}.2\ndata: event 2\n\n")),
            "{got}"
        );
        assert!(
            crate::cursor::untag(&got).contains(&format!("id: {s}.3\ndata: event 3\n\n")),
            "{got}"
        );
    }

    #[tokio::test]
    async fn a_cursor_made_for_another_client_reads_nothing_and_starts_fresh() {
        let (sh, store) = sessions();
        let s = owned_elsewhere(&store, &[event(1, "a1"), event(2, "a2")]).await;
        let k = &sh.settings.cursor_key;
        let alice = k.binding([Some("Bearer alice"), None], "/events");
        let stolen = k.cursor(&s, 0, alice);
        // Bob (no credentials) sends Alice's cursor: nothing of her session, a fresh stream.
        let r = resume(&sh, template(), stolen, binding(&sh)).await;
        assert!(
            matches!(r, Resumed::Expired),
            "treated as an unknown session"
        );
        assert_eq!(sh.metrics.count("resumes", "unverified"), 1);
        assert_eq!(sh.metrics.count("resumes", "store"), 0);
        // An edited seq of his own cursor does not verify either.
        let own = k.cursor(&s, 2, binding(&sh));
        let edited = Cursor { seq: 0, ..own };
        assert!(matches!(
            resume(&sh, template(), edited, binding(&sh)).await,
            Resumed::Expired
        ));
        assert_eq!(sh.metrics.count("resumes", "unverified"), 2);
    }

    #[test]
    fn nothing_after_the_cursor_is_judged_by_the_lease_and_the_last_seq() {
        assert_eq!(
            judge_empty(5, false, None, 10),
            Some(ResumeOutcome::Unknown)
        );
        assert_eq!(
            judge_empty(5, true, None, 10),
            None,
            "leased: the owner records on"
        );
        assert_eq!(
            judge_empty(15, false, Some(5), 10),
            None,
            "within the slack"
        );
        assert_eq!(
            judge_empty(16, true, Some(5), 10),
            Some(ResumeOutcome::Forged)
        );
        assert_eq!(judge_empty(u64::MAX, true, Some(u64::MAX - 1), 10), None);
    }
}
