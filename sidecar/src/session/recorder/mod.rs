//! The per-session recorder: the one task that owns a session's upstream.
//!
//! It parses the app's stream, numbers every entry, re-emits events to the attached client with
//! the cursor as their id (never waiting on the client: a full queue cuts it), keeps a few recent
//! events for a same-pod resume, and records everything to the store in batches written within the
//! batch window, at most one batch in flight so the store sees entries in order. The client path
//! never waits on the store. When its client goes away it keeps capturing for the resume window;
//! when another pod takes the session over (fenced) it stops at once.

mod registry;

use std::collections::VecDeque;
use std::future::pending;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame as BodyFrame;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::cursor::SessionId;
use crate::http::body::{BoxError, ClientTx, Cut, ProxyBody, Room};
use crate::http::session_key;
use crate::metrics::{ErrorKind, HandoverReason};
use crate::session::Sessions;
use crate::session::leases::Claim;
use crate::session::replay::{Overlap, apply_id, write_cursor};
use crate::sse::{self, Frame, SseParser};
use crate::store::{Entry, Epoch, Recorded, Seq, SessionStore as _, StoreError, StoreResult};

/// Pause after a failed batch before the next attempt (the store is down or slow).
const FLUSH_BACKOFF: Duration = Duration::from_millis(250);
/// Longest a stopping recorder tries to write what it still holds.
const FINAL_FLUSH_BUDGET: Duration = Duration::from_secs(3);

use self::registry::Command;
pub use self::registry::{AttachReply, Attached, RecorderHandle, Recorders, Reservation};

/// What a recorder starts from.
pub struct StreamStart {
    /// The session it records.
    pub session: SessionId,
    /// The app's response body.
    pub upstream: ProxyBody,
    /// The seq of the first entry it will record.
    pub next_seq: Seq,
    /// The app's last event id as the upstream starts (what was sent as `Last-Event-ID`).
    pub sticky: Option<String>,
    /// Events the client already has (after a takeover).
    pub overlap: Overlap,
    /// The client to feed, if one is attached.
    pub client: Option<ClientTx>,
    /// The lease, if already taken (a takeover); otherwise it is claimed in the background.
    pub claim: Option<Claim>,
    /// Inspect the first `endpoint` event for a session key to register (MCP SSE transport).
    pub learn_endpoint: bool,
}

/// Start a recorder and register it (replacing any older one of the same session).
pub fn spawn(shared: &Arc<Sessions>, start: StreamStart) -> RecorderHandle {
    let (handle, cmds) = shared.recorders.register(&start.session);
    let id = handle.id;
    let settings = &shared.settings;
    let detached_at = start.client.is_none().then(Instant::now);
    let fenced = start
        .claim
        .as_ref()
        .map(|c| c.fenced.clone())
        .unwrap_or_default();
    let recorder = Recorder {
        parser: SseParser::new(settings.max_event_bytes),
        frames: Vec::with_capacity(8),
        // Grown on demand: thousands of mostly idle sessions must not each preallocate.
        ring: VecDeque::new(),
        pending: Vec::new(),
        pending_since: None,
        urgent: false,
        inflight: None,
        retry_at: None,
        unrecorded_warned: false,
        phase: Phase::Capturing,
        cursor: String::with_capacity(64),
        shared: shared.clone(),
        id,
        session: start.session.clone(),
        upstream: Some(start.upstream),
        next_seq: start.next_seq.max(1),
        sticky: start.sticky,
        overlap: start.overlap,
        client: start.client,
        backlog: VecDeque::new(),
        stalled_since: None,
        detached_at,
        resume_window: settings.resume_window,
        claim: start.claim,
        fenced_wait: Box::pin(fenced.cancelled_owned()),
        learn_endpoint: start.learn_endpoint
            && session_key::has_query_source(&shared.settings.session_keys),
        keys: vec![start.session.clone()],
        keys_closed: false,
        handover_by: None,
        cmds,
    };
    shared.metrics.recorders.inc();
    tokio::spawn(recorder.run());
    handle
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Capturing and serving clients.
    Capturing,
    /// Handing over: the session's keys refuse new requests; capturing until the ones accepted
    /// are answered, then `Handover` is recorded.
    HandingOver(HandoverReason),
    /// Handover recorded (drain): capturing until fenced or stopped; clients resume elsewhere.
    HandedOver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stop capturing; write what is held, release, exit.
    Finish,
    /// Another pod owns the session: exit without writing.
    Fenced,
}

struct FlushDone {
    batch: Vec<Recorded>,
    result: StoreResult<()>,
    claim: Option<StoreResult<Claim>>,
    elapsed: Duration,
}

struct Recorder {
    shared: Arc<Sessions>,
    id: u64,
    session: SessionId,
    upstream: Option<ProxyBody>,
    parser: SseParser,
    frames: Vec<Frame>,
    next_seq: Seq,
    sticky: Option<String>,
    overlap: Overlap,
    client: Option<ClientTx>,
    /// Chunks waiting for room in the client's queue (the app's stream is paused meanwhile).
    backlog: VecDeque<Bytes>,
    /// Since when the client's queue has been full.
    stalled_since: Option<Instant>,
    detached_at: Option<Instant>,
    /// The resume window granted when the client left (see `window_on_detach`).
    resume_window: Duration,
    ring: VecDeque<(Seq, Bytes)>,
    pending: Vec<Recorded>,
    pending_since: Option<Instant>,
    /// Write the pending entries as soon as possible (a resume or a handover waits for them).
    urgent: bool,
    inflight: Option<JoinHandle<FlushDone>>,
    retry_at: Option<Instant>,
    unrecorded_warned: bool,
    claim: Option<Claim>,
    /// Resolves when another pod takes the session over (cancelled by the lease book).
    fenced_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    phase: Phase,
    learn_endpoint: bool,
    /// The keys requests for this stream's session carry: its own id and the key learned from
    /// the `endpoint` event. A handover closes them (see `gates`).
    keys: Vec<SessionId>,
    /// Whether `keys` were closed (a handover began).
    keys_closed: bool,
    /// Until when a pending handover waits for accepted requests (`Phase::HandingOver`).
    handover_by: Option<Instant>,
    cursor: String,
    cmds: mpsc::Receiver<Command>,
}

/// The MCP SSE transport names its session in the first `endpoint` event: own the key before
/// the client can use it, so a follow-up landing on another pod is routed here.
/// Returns the key, so the recorder can close it when it hands the stream over.
async fn register_endpoint_key(shared: &Sessions, data: &str) -> Option<SessionId> {
    let key = session_key::from_endpoint_data(data, &shared.settings.session_keys)?;
    match SessionId::from_external(&key) {
        Ok(id) => {
            if let Err(e) = shared.book.register(&id).await {
                shared.metrics.error(e.kind());
                tracing::warn!(error = %e, "could not register the session key from the endpoint event");
            }
            Some(id)
        }
        Err(_) => {
            shared.metrics.error(ErrorKind::InvalidSessionKey);
            None
        }
    }
}

/// The epoch of a holding now (it changes after a recovery), or the one it started with.
fn epoch_now(shared: &Sessions, session: &SessionId, id: u64, fallback: Epoch) -> Epoch {
    shared.book.epoch(session, id).unwrap_or(fallback)
}

async fn next_frame(body: &mut Option<ProxyBody>) -> Option<Result<BodyFrame<Bytes>, BoxError>> {
    match body {
        Some(b) => b.frame().await,
        None => pending().await,
    }
}

async fn join(inflight: &mut Option<JoinHandle<FlushDone>>) -> Option<FlushDone> {
    match inflight {
        Some(h) => h.await.ok(),
        None => pending().await,
    }
}

/// Room in the client's queue for the first chunk that waits; pending when nothing waits.
async fn room(client: &Option<ClientTx>, waiting: Option<usize>) -> Result<Room, Cut> {
    match (client, waiting) {
        (Some(c), Some(len)) => c.room(len).await,
        _ => pending().await,
    }
}

/// Fires at the armed deadline; pending while disarmed. One timer per recorder, re-armed only
/// when the deadline changes (once per batch), so the per-event loop registers no timers.
async fn timer(sleep: &mut Pin<Box<Sleep>>, armed: bool) {
    if armed {
        sleep.as_mut().await
    } else {
        pending().await
    }
}

/// How often a recorder checks, without events, whether its client left and whether its resume
/// window is over.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// Longest a handover waits for the session's accepted requests to be answered: a request the
/// app answers later than this (async work) is not waited for.
const HANDOVER_WAIT_MAX: Duration = Duration::from_secs(2);
/// How long after the last accepted request was answered (and after the keys closed) the app's
/// reply event is given to reach the recorder before `Handover` is recorded.
const HANDOVER_SETTLE: Duration = Duration::from_millis(100);
/// How often a pending handover checks whether it may be recorded.
const HANDOVER_POLL: Duration = Duration::from_millis(10);
/// How long a handed-over session's keys keep refusing requests after its recorder ended.
const KEYS_CLOSED_AFTER_EXIT: Duration = Duration::from_secs(5);

impl Recorder {
    async fn run(mut self) {
        // Take (or reuse) the lease right away so other pods see a live owner from the start.
        if self.claim.is_none() {
            self.start_flush();
        }
        let mut flush_timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut flush_deadline: Option<Instant> = None;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handover_poll = tokio::time::interval(HANDOVER_POLL);
        handover_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flow = loop {
            let due = self.flush_at();
            if due != flush_deadline {
                if let Some(d) = due {
                    flush_timer.as_mut().reset(d.into());
                }
                flush_deadline = due;
            }
            let flow = tokio::select! {
                biased;
                _ = self.fenced_wait.as_mut() => Flow::Fenced,
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => Flow::Finish,
                },
                done = join(&mut self.inflight) => {
                    self.inflight = None;
                    match done {
                        Some(done) => self.on_flushed(done),
                        None => Flow::Continue,
                    }
                },
                _ = timer(&mut flush_timer, flush_deadline.is_some()) => {
                    flush_deadline = None;
                    self.start_flush();
                    Flow::Continue
                },
                _ = housekeeping.tick() => self.housekeeping().await,
                // A timer kept across iterations: one made anew each turn would never fire while
                // events arrive faster than it.
                _ = handover_poll.tick(), if self.handover_by.is_some() => {
                    self.finish_handover().await
                },
                room = room(&self.client, self.backlog.front().map(Bytes::len)) => {
                    self.on_room(room);
                    Flow::Continue
                },
                frame = next_frame(&mut self.upstream), if self.backlog.is_empty() => {
                    self.on_upstream(frame).await
                },
            };
            if flow != Flow::Continue {
                break flow;
            }
        };
        self.exit(flow).await;
    }

    /// Notice a client that left while the app was quiet, and end the resume window.
    async fn housekeeping(&mut self) -> Flow {
        if self.client.as_ref().is_some_and(ClientTx::is_closed) {
            self.detach();
        }
        if self
            .stalled_since
            .is_some_and(|t| t.elapsed() >= self.shared.settings.client_stall)
        {
            self.cut_slow();
        }
        match self.detach_deadline() {
            Some(deadline) if Instant::now() >= deadline => {
                tracing::debug!(session = %self.session, "resume window over: handing over");
                self.begin_handover(HandoverReason::ResumeWindow);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    /// When the next batch should start, if one is due and none is in flight.
    fn flush_at(&self) -> Option<Instant> {
        if self.inflight.is_some() || self.pending.is_empty() {
            return None;
        }
        let due = if self.urgent || self.pending.len() >= self.shared.settings.batch_max_entries {
            Instant::now()
        } else {
            self.pending_since? + self.shared.settings.batch_window
        };
        Some(match self.retry_at {
            Some(r) if r > due => r,
            _ => due,
        })
    }

    fn detach_deadline(&self) -> Option<Instant> {
        if self.phase != Phase::Capturing || self.shared.book.is_draining() {
            return None;
        }
        Some(self.detached_at? + self.resume_window)
    }

    /// How long a recorder whose client left keeps capturing: the resume window, or nothing
    /// when this pod already runs more recorders than it admits streams. Clients that connect
    /// and leave must not pile up captured upstreams (each an open connection to the app)
    /// beyond the stream bound; a later resume takes the session over from the store instead.
    fn window_on_detach(&self) -> Duration {
        let running = usize::try_from(self.shared.metrics.recorders.get()).unwrap_or(0);
        if running > self.shared.settings.max_streams {
            Duration::ZERO
        } else {
            self.shared.settings.resume_window
        }
    }

    fn detach(&mut self) {
        self.backlog.clear();
        self.stalled_since = None;
        if self.client.take().is_some() {
            self.detached_at = Some(Instant::now());
            self.resume_window = self.window_on_detach();
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Attach {
                after,
                client,
                reply,
            } => {
                let answer = self.on_attach(after, client);
                let _ = reply.send(answer);
                Flow::Continue
            }
            Command::Handover => {
                if self.phase == Phase::Capturing {
                    self.begin_handover(HandoverReason::Drain);
                }
                Flow::Continue
            }
            Command::Stop => Flow::Finish,
        }
    }

    fn on_attach(&mut self, after: Seq, client: ClientTx) -> AttachReply {
        let last = self.next_seq - 1;
        if self.phase != Phase::Capturing {
            return AttachReply::Refused(client);
        }
        if after > last {
            return AttachReply::Forged;
        }
        self.client = Some(client);
        self.detached_at = None;
        // Older entries come from the store: make sure they are on their way there.
        self.urgent = true;
        let first_in_ring = self.ring.front().map(|(s, _)| *s);
        let (from_store, ring_from) = if after == last {
            (None, Seq::MAX)
        } else {
            match first_in_ring {
                Some(first) if after + 1 >= first => (None, after + 1),
                Some(first) => (Some((after, first - 1)), first),
                None => (Some((after, last)), Seq::MAX),
            }
        };
        let prefix = self
            .ring
            .iter()
            .filter(|(s, _)| *s >= ring_from)
            .map(|(_, b)| b.clone())
            .collect();
        AttachReply::Attached(Attached { prefix, from_store })
    }

    async fn on_upstream(&mut self, frame: Option<Result<BodyFrame<Bytes>, BoxError>>) -> Flow {
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.parser.push(&data, &mut self.frames);
                    self.process_frames().await;
                }
                Flow::Continue
            }
            None => {
                self.parser.finish(&mut self.frames);
                self.process_frames().await;
                self.upstream = None;
                self.push(Entry::End);
                // The client reads everything queued, then the end of the response.
                self.client = None;
                Flow::Finish
            }
            Some(Err(e)) => {
                tracing::warn!(session = %self.session, error = %e, "app stream failed: handing the session over");
                self.shared.metrics.error(ErrorKind::UpstreamBody);
                self.upstream = None;
                self.client = None;
                if matches!(self.phase, Phase::Capturing | Phase::HandingOver(_)) {
                    self.record_handover(HandoverReason::UpstreamError).await;
                }
                Flow::Finish
            }
        }
    }

    async fn process_frames(&mut self) {
        let mut frames = std::mem::take(&mut self.frames);
        for frame in frames.drain(..) {
            match frame {
                Frame::Event(event) => self.on_event(event).await,
                Frame::Retry(ms) => {
                    let mut out = Vec::with_capacity(24);
                    sse::encode_retry(ms, &mut out);
                    let seq = self.push(Entry::Retry(ms));
                    self.deliver(seq, Bytes::from(out));
                }
                Frame::Comment(text) => {
                    if self.client.is_some() {
                        let mut out = Vec::with_capacity(text.len() + 2);
                        sse::encode_comment(&text, &mut out);
                        self.send_to_client(Bytes::from(out));
                    }
                }
                Frame::SetId(id) => apply_id(&mut self.sticky, &id),
                Frame::Oversized => {
                    self.shared.metrics.oversized_events.inc();
                }
            }
        }
        self.frames = frames;
    }

    async fn on_event(&mut self, event: sse::Event) {
        if let Some(id) = &event.id {
            apply_id(&mut self.sticky, id);
        }
        if !self.overlap.is_done() && self.overlap.take(self.sticky.as_deref()) {
            self.shared.metrics.overlap_dropped.inc();
            return;
        }
        if self.learn_endpoint && event.event.as_deref() == Some("endpoint") {
            self.learn_endpoint = false;
            let shared = self.shared.clone();
            if let Some(key) = register_endpoint_key(&shared, &event.data).await {
                self.keys.push(key);
            }
        }
        let seq = self.next_seq;
        write_cursor(&mut self.cursor, &self.session, seq);
        let mut out = Vec::with_capacity(event.data.len() + self.cursor.len() + 32);
        sse::encode_event(&event, Some(&self.cursor), &mut out);
        let sse::Event { event, data, .. } = event;
        self.push(Entry::Event {
            app_id: self.sticky.clone(),
            event,
            data,
        });
        self.deliver(seq, Bytes::from(out));
    }

    /// Queue an entry for the store; returns its seq.
    fn push(&mut self, entry: Entry) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.pending.push(Recorded { seq, entry });
        seq
    }

    /// Send an entry's bytes to the client and keep them for a same-pod resume.
    fn deliver(&mut self, seq: Seq, bytes: Bytes) {
        let cap = self.shared.settings.resume_buffer_events;
        if cap > 0 {
            if self.ring.len() >= cap {
                self.ring.pop_front();
            }
            self.ring.push_back((seq, bytes.clone()));
        }
        self.send_to_client(bytes);
    }

    /// Queue bytes for the client without waiting. A full queue pauses the app's stream (as a
    /// plain proxy would, by TCP backpressure) until the client catches up; see `housekeeping`.
    fn send_to_client(&mut self, bytes: Bytes) {
        let Some(c) = &self.client else { return };
        if !self.backlog.is_empty() {
            self.backlog.push_back(bytes);
            return;
        }
        match c.try_send(bytes.clone()) {
            Ok(()) => {
                self.shared.metrics.events_forwarded.inc();
            }
            Err(Cut::Full) => {
                self.backlog.push_back(bytes);
                self.stalled_since = Some(Instant::now());
            }
            Err(Cut::Closed) => self.detach(),
        }
    }

    /// The client has room again: hand it what waited.
    fn on_room(&mut self, room: Result<Room, Cut>) {
        match room {
            Ok(room) => {
                if let Some(bytes) = self.backlog.pop_front() {
                    room.send(bytes);
                    self.shared.metrics.events_forwarded.inc();
                }
                if self.backlog.is_empty() {
                    self.stalled_since = None;
                }
            }
            Err(_) => self.detach(),
        }
    }

    fn cut_slow(&mut self) {
        tracing::info!(session = %self.session, "client too slow: cut (it resumes from its cursor)");
        self.shared.metrics.slow_consumers.inc();
        self.detach();
    }

    fn start_flush(&mut self) {
        let n = self
            .pending
            .len()
            .min(self.shared.settings.batch_max_entries);
        let batch: Vec<Recorded> = self.pending.drain(..n).collect();
        // What is left was waiting already: it goes as soon as this batch is written.
        self.urgent = !self.pending.is_empty();
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        let shared = self.shared.clone();
        let session = self.session.clone();
        let claim = self.claim.as_ref().map(|c| c.id);
        self.inflight = Some(tokio::spawn(async move {
            let started = Instant::now();
            let (id, epoch, claimed) = match claim {
                Some(id) => match shared.book.epoch(&session, id) {
                    Some(epoch) => (id, epoch, None),
                    // The holding is gone: another pod took the session over.
                    None => {
                        return FlushDone {
                            batch,
                            result: Err(StoreError::Fenced {
                                current: Epoch::MAX,
                            }),
                            claim: None,
                            elapsed: started.elapsed(),
                        };
                    }
                },
                None => match shared.book.claim(&session).await {
                    Ok(c) => (c.id, c.epoch, Some(Ok(c))),
                    Err(e) => {
                        return FlushDone {
                            batch,
                            result: Err(e.clone()),
                            claim: Some(Err(e)),
                            elapsed: started.elapsed(),
                        };
                    }
                },
            };
            let mut result = Ok(());
            // At most one recovery: the store lost the session (restart, flush) and it is taken
            // again, then the batch is written with the new epoch.
            for _ in 0..2 {
                if batch.is_empty() {
                    break;
                }
                let r = shared
                    .store
                    .append(&session, epoch_now(&shared, &session, id, epoch), &batch)
                    .await;
                result = r;
                match &result {
                    Err(StoreError::Fenced { current })
                        if *current == 0 || *current == epoch_now(&shared, &session, id, epoch) =>
                    {
                        if let Err(e) = shared.book.recover(&session, id, Some(*current)).await {
                            result = Err(e);
                            break;
                        }
                    }
                    _ => break,
                }
            }
            FlushDone {
                batch,
                result,
                claim: claimed,
                elapsed: started.elapsed(),
            }
        }));
    }

    fn on_flushed(&mut self, done: FlushDone) -> Flow {
        if let Some(Ok(claim)) = done.claim {
            self.fenced_wait = Box::pin(claim.fenced.clone().cancelled_owned());
            self.claim = Some(claim);
        }
        match done.result {
            Ok(()) => {
                self.retry_at = None;
                if !done.batch.is_empty() {
                    let m = &self.shared.metrics;
                    m.events_recorded.inc_by(done.batch.len() as u64);
                    m.record_batch_seconds.observe(done.elapsed.as_secs_f64());
                }
                Flow::Continue
            }
            Err(StoreError::Fenced { current }) => {
                tracing::info!(session = %self.session, current, "session taken over by another pod: stop capturing");
                if let Some(c) = &self.claim {
                    self.shared.book.fenced(&self.session, c.id);
                }
                Flow::Fenced
            }
            Err(StoreError::Unavailable(_)) => {
                self.requeue(done.batch);
                self.retry_at = Some(Instant::now() + FLUSH_BACKOFF);
                Flow::Continue
            }
            Err(StoreError::Malformed(e)) => {
                tracing::warn!(session = %self.session, error = %e, "store refused a batch: dropped");
                self.shared.metrics.error(ErrorKind::Malformed);
                self.shared
                    .metrics
                    .events_unrecorded
                    .inc_by(done.batch.len() as u64);
                Flow::Continue
            }
        }
    }

    /// Put a failed batch back in front, dropping the oldest beyond the bound (memory never grows).
    fn requeue(&mut self, mut batch: Vec<Recorded>) {
        batch.append(&mut self.pending);
        let max = self.shared.settings.max_unrecorded;
        if batch.len() > max {
            let dropped = batch.len() - max;
            batch.drain(..dropped);
            self.shared.metrics.events_unrecorded.inc_by(dropped as u64);
            if !self.unrecorded_warned {
                self.unrecorded_warned = true;
                tracing::warn!(session = %self.session, "store unavailable too long: oldest entries dropped from the record");
            }
        }
        self.pending = batch;
        if !self.pending.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// Mark the lease draining, then record the handover, so a reader seeing it knows the owner
    /// is leaving.
    async fn record_handover(&mut self, reason: HandoverReason) {
        self.shared.gates.close(&self.keys);
        self.keys_closed = true;
        let _ = self.shared.book.mark_draining(&self.session).await;
        self.push(Entry::Handover);
        self.urgent = true;
        self.shared.metrics.handover(reason);
    }

    /// Start handing over: close the session's keys at once (new requests get `404`), keep
    /// capturing until the requests already accepted have been answered (their replies are
    /// events on this stream), then record `Handover` (`finish_handover`).
    fn begin_handover(&mut self, reason: HandoverReason) {
        self.shared.gates.close(&self.keys);
        self.keys_closed = true;
        self.phase = Phase::HandingOver(reason);
        self.handover_by = Some(Instant::now() + HANDOVER_WAIT_MAX);
    }

    /// Record `Handover` once the session's accepted requests are answered (or the bounded
    /// wait is over). A drain keeps capturing until fenced; a resume window ends.
    async fn finish_handover(&mut self) -> Flow {
        let Phase::HandingOver(reason) = self.phase else {
            return Flow::Continue;
        };
        let settle = HANDOVER_SETTLE.max(self.shared.settings.batch_window * 4);
        let over = self.handover_by.is_none_or(|t| Instant::now() >= t);
        if !over && !self.shared.gates.quiet(&self.keys, settle) {
            return Flow::Continue;
        }
        self.handover_by = None;
        self.record_handover(reason).await;
        self.phase = Phase::HandedOver;
        if reason == HandoverReason::Drain {
            self.client = None;
            Flow::Continue
        } else {
            Flow::Finish
        }
    }

    async fn exit(mut self, flow: Flow) {
        if let (Flow::Finish, Phase::HandingOver(reason), Some(_)) =
            (flow, self.phase, &self.upstream)
        {
            // Stopped (the drain's margin is over) before the pending handover was recorded:
            // record it now, so a resuming client takes the session over instead of waiting
            // for the lease to expire.
            self.record_handover(reason).await;
        }
        self.shared.recorders.remove(&self.session, self.id);
        self.forget_keys_later();
        self.cmds.close();
        self.upstream = None;
        self.client = None;
        if flow == Flow::Finish {
            self.final_flush().await;
        } else if let Some(h) = self.inflight.take() {
            h.abort();
        }
        if let Some(c) = &self.claim {
            self.shared.book.unpin(&self.session, c.id);
        }
        self.shared.metrics.recorders.dec();
    }

    /// Closed keys stay closed a little after the upstream is dropped (the app may take a moment
    /// to notice its session is gone and would still accept requests for it), then are forgotten.
    fn forget_keys_later(&self) {
        if !self.keys_closed {
            return;
        }
        let gates = self.shared.gates.clone();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            tokio::time::sleep(KEYS_CLOSED_AFTER_EXIT).await;
            gates.forget(&keys);
        });
    }

    /// Write everything still held, in order, within a bounded time.
    async fn final_flush(&mut self) {
        let deadline = Instant::now() + FINAL_FLUSH_BUDGET;
        loop {
            if let Some(h) = self.inflight.take() {
                let done = tokio::time::timeout_at(deadline.into(), h).await;
                match done {
                    Ok(Ok(done)) => {
                        if self.on_flushed(done) == Flow::Fenced {
                            return;
                        }
                    }
                    _ => break,
                }
            }
            if self.pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            if let Some(r) = self.retry_at {
                tokio::time::sleep_until(r.min(deadline).into()).await;
            }
            self.start_flush();
        }
        if !self.pending.is_empty() {
            self.shared
                .metrics
                .events_unrecorded
                .inc_by(self.pending.len() as u64);
        }
    }
}
