//! The per-session recorder: the one task that owns a session's upstream.
//!
//! It parses the app's stream, numbers every entry, re-emits events to the attached client with
//! the cursor as their id (never waiting on the client: a full queue cuts it), keeps a few recent
//! events for a same-pod resume, and records everything to the store in batches written within the
//! batch window, at most one batch in flight so the store sees entries in order. The record lags
//! the stream by a bound: at the bound the app's stream waits for the store (backpressure), and
//! only while the store does not answer at all does the stream go on unrecorded. When its client
//! goes away it keeps capturing for the resume window; when another pod takes the session over
//! (fenced) it stops at once.

mod batcher;
mod fanout;
mod handover;
mod lease;
mod reader;
mod registry;

use std::future::pending;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame as BodyFrame;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::cursor::{Binding, SessionId, Signer};
use crate::http::body::{BoxError, ClientTx, ProxyBody};
use crate::http::kind::{KindCell, StreamKind};
use crate::http::session_key;
use crate::metrics::{ErrorKind, HandoverReason};
use crate::session::Sessions;
use crate::session::leases::Claim;
use crate::session::replay::Overlap;
use crate::store::{Entry, Seq, StoreError};

/// Pause after a failed batch before the next attempt (the store is down or slow).
const FLUSH_BACKOFF: Duration = Duration::from_millis(250);
/// Longest a stopping recorder tries to write what it still holds.
const FINAL_FLUSH_BUDGET: Duration = Duration::from_secs(3);

use self::batcher::{Batcher, FlushDone, write_batch};
use self::fanout::Fanout;
use self::handover::{Handover, Phase};
use self::lease::Holding;
use self::reader::{Item, Reader};
use self::registry::Command;
pub use self::registry::{AttachReply, LIVE, RecorderHandle, Recorders, Reservation};

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
    /// The stream's kind (shared with the client stream), which decides how the drain ends it.
    pub kind: KindCell,
    /// The lease, if already taken (a takeover); otherwise it is claimed in the background.
    pub claim: Option<Claim>,
    /// Inspect the first `endpoint` event for a session key to register (MCP SSE transport).
    pub learn_endpoint: bool,
    /// What its cursors are bound to (the opening request's identity and path).
    pub binding: Binding,
}

/// Start a recorder and register it (replacing any older one of the same session).
pub fn spawn(shared: &Arc<Sessions>, start: StreamStart) -> RecorderHandle {
    let (handle, cmds) =
        shared
            .recorders
            .register(&start.session, start.kind.clone(), start.binding);
    let settings = &shared.settings;
    let recorder = Recorder {
        reader: Reader::new(
            start.session.clone(),
            Signer {
                key: settings.cursor_key.clone(),
                binding: start.binding,
            },
            settings.max_event_bytes,
            start.next_seq,
            start.sticky,
            start.overlap,
            start.learn_endpoint && session_key::has_query_source(&settings.session_keys),
        ),
        batcher: Batcher::new(batcher::Limits {
            window: settings.batch_window,
            max_entries: settings.batch_max_entries,
            max_unrecorded: settings.max_unrecorded,
            max_lag: settings.max_record_lag,
        }),
        fanout: Fanout::new(
            fanout::Settings {
                ring: settings.resume_buffer_events,
                resume_window: settings.resume_window,
                max_streams: settings.max_streams,
                max_detached: settings.max_detached,
                shed_window: settings.shed_window,
            },
            shared.metrics.clone(),
            start.client,
        ),
        items: Vec::with_capacity(8),
        unrecorded_warned: false,
        floor_cut_warned: false,
        paused_for_store: false,
        handover: Handover::new(start.session.clone()),
        handed_over_at: None,
        kind: start.kind,
        shared: shared.clone(),
        id: handle.id,
        session: start.session.clone(),
        upstream: Some(start.upstream),
        lease: Holding::new(start.claim),
        cmds,
    };
    shared.metrics.recorders.inc();
    tokio::spawn(recorder.run());
    handle
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stop capturing; write what is held, release, exit.
    Finish,
    /// Another pod owns the session: exit without writing.
    Fenced,
}

/// The task: it reads the upstream ([`Reader`]), fans out to the client ([`Fanout`]), batches to
/// the store ([`Batcher`]), keeps the lease (the claim and the fencing signal) and ends or hands
/// the session over (the phase, the session's keys).
struct Recorder {
    shared: Arc<Sessions>,
    id: u64,
    session: SessionId,
    upstream: Option<ProxyBody>,
    reader: Reader,
    items: Vec<Item>,
    fanout: Fanout,
    batcher: Batcher,
    unrecorded_warned: bool,
    /// Whether this recorder logged that the history cap cut into the time floor (once each).
    floor_cut_warned: bool,
    /// Whether the upstream is paused for the store (to count each pause once).
    paused_for_store: bool,
    /// The lease's claim and fencing signal (see [`lease`]).
    lease: Holding,
    /// The phase and the session's keys (see [`handover`]).
    handover: Handover,
    /// When a drain's handover was recorded (capturing goes on for the handover margin).
    handed_over_at: Option<Instant>,
    /// How the drain ends this stream (a resumable one becomes a session stream when the app
    /// announces a session on it).
    kind: KindCell,
    cmds: mpsc::Receiver<Command>,
}

/// The MCP SSE transport names its session in the first `endpoint` event: own the key before
/// the client can use it, so a follow-up landing on another pod is routed here.
/// Returns the key, so the recorder can close it when it hands the stream over.
async fn register_endpoint_key(shared: &Sessions, data: &str) -> Option<SessionId> {
    let key = session_key::from_endpoint_data(data, &shared.settings.session_keys)?;
    match shared.settings.cursor_key.session_for_key(&key) {
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

async fn next_frame(body: &mut Option<ProxyBody>) -> Option<Result<BodyFrame<Bytes>, BoxError>> {
    match body {
        Some(b) => b.frame().await,
        None => pending().await,
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

impl Recorder {
    async fn run(mut self) {
        // Take (or reuse) the lease right away so other pods see a live owner from the start.
        if !self.lease.is_held() {
            self.start_flush();
        }
        let mut flush_timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut flush_deadline: Option<Instant> = None;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set to when a pending handover next looks whether it is due (armed: waiting, and set
        // since the last look).
        let mut handover_timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut handover_armed = false;
        let flow = loop {
            let mut due = self.batcher.flush_at();
            // A batch due now starts now: a timer set to the present fires only on the timer
            // wheel's next millisecond tick, which would cap a fast stream at one batch per ms.
            if due.is_some_and(|d| d <= Instant::now()) {
                self.start_flush();
                due = self.batcher.flush_at();
            }
            if due != flush_deadline {
                if let Some(d) = due {
                    flush_timer.as_mut().reset(d.into());
                }
                flush_deadline = due;
            }
            if !self.handover.is_waiting() {
                handover_armed = false;
            } else if !handover_armed {
                let at = self.handover.next_check(
                    &self.shared.gates,
                    self.shared.settings.batch_window,
                    Instant::now(),
                );
                handover_timer.as_mut().reset(at.into());
                handover_armed = true;
            }
            let backlogged = self.fanout.is_backlogged();
            // Backpressure: the store lags by the bound, so the app's stream waits (its TCP
            // window fills) instead of the recorder's memory growing.
            let store_full = self.batcher.is_full();
            if store_full && !self.paused_for_store {
                self.shared.metrics.record_backpressure.inc();
            }
            self.paused_for_store = store_full;
            let flow = tokio::select! {
                biased;
                _ = self.lease.taken_over() => Flow::Fenced,
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => Flow::Finish,
                },
                done = self.batcher.done() => match done {
                    Some(done) => self.on_flushed(done),
                    None => Flow::Continue,
                },
                _ = timer(&mut flush_timer, flush_deadline.is_some()) => {
                    flush_deadline = None;
                    self.start_flush();
                    Flow::Continue
                },
                _ = housekeeping.tick() => self.housekeeping().await,
                // A timer kept across iterations (one made anew each turn would never fire while
                // events arrive faster than it), set once per look.
                _ = timer(&mut handover_timer, handover_armed) => {
                    handover_armed = false;
                    self.finish_handover().await
                },
                room = self.fanout.room() => {
                    self.fanout.on_room(room);
                    Flow::Continue
                },
                frame = next_frame(&mut self.upstream), if !backlogged && !store_full => {
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
        self.fanout
            .check(self.shared.settings.client_stall, &self.session);
        if self
            .handed_over_at
            .is_some_and(|t| t.elapsed() >= self.shared.settings.handover_margin)
        {
            tracing::debug!(session = %self.session, "handover margin over: stop capturing");
            return Flow::Finish;
        }
        match self.detach_deadline() {
            Some(deadline) if Instant::now() >= deadline => {
                // A client rebalancing moved: hand over the way the drain does, so the pod it
                // reconnected to takes the session over by overlap.
                let reason = if self.fanout.was_shed() {
                    HandoverReason::Rebalance
                } else {
                    HandoverReason::ResumeWindow
                };
                tracing::debug!(session = %self.session, reason = reason.label(), "client gone: handing over");
                self.begin_handover(reason);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    fn detach_deadline(&self) -> Option<Instant> {
        if !self.handover.is_capturing() || self.shared.book.is_draining() {
            return None;
        }
        self.fanout.detached_until()
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
            Command::Handover { quiet_until } => {
                match self.kind.get() {
                    _ if !self.handover.is_untouched() => {}
                    // Its client cannot resume: it finishes in place (cut at the deadline).
                    StreamKind::Request => {}
                    StreamKind::Session => self
                        .handover
                        .begin_when_quiet(HandoverReason::Drain, quiet_until),
                    StreamKind::Resumable => self.begin_handover(HandoverReason::Drain),
                }
                Flow::Continue
            }
            Command::Stop => Flow::Finish,
        }
    }

    fn on_attach(&mut self, after: Seq, client: ClientTx) -> AttachReply {
        let last = self.reader.last_seq();
        // A live attach takes over a recording whose client left; a second stream of one key
        // while the first still reads gets a session of its own (refused here).
        if after == LIVE && self.fanout.has_live_client() {
            return AttachReply::Refused(client);
        }
        let after = if after == LIVE { last } else { after };
        if !self.handover.is_capturing() {
            return AttachReply::Refused(client);
        }
        if after > last {
            return AttachReply::Forged;
        }
        // Older entries come from the store: make sure they are on their way there.
        self.batcher.hurry();
        AttachReply::Attached(self.fanout.attach(after, last, client))
    }

    async fn on_upstream(&mut self, frame: Option<Result<BodyFrame<Bytes>, BoxError>>) -> Flow {
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.reader.feed(&data, &mut self.items);
                    self.take_items().await;
                }
                Flow::Continue
            }
            None => {
                self.reader.finish(&mut self.items);
                self.take_items().await;
                self.upstream = None;
                self.push(Entry::End);
                // The client reads everything queued, then the end of the response.
                self.fanout.release();
                Flow::Finish
            }
            Some(Err(e)) => {
                tracing::warn!(session = %self.session, error = %e, "app stream failed: handing the session over");
                self.shared.metrics.error(ErrorKind::UpstreamBody);
                self.upstream = None;
                self.fanout.release();
                if self.handover.phase() != Phase::HandedOver {
                    self.record_handover(HandoverReason::UpstreamError).await;
                }
                Flow::Finish
            }
        }
    }

    /// What the reader produced: entries to the store and the client, in order.
    async fn take_items(&mut self) {
        let mut items = std::mem::take(&mut self.items);
        // Entries and comments, which reach the client as one chunk once all are taken (an
        // endpoint key is owned before then).
        let mut sent = 0u64;
        for item in items.drain(..) {
            match item {
                Item::Entry(recorded, wire) => {
                    let seq = recorded.seq;
                    self.batcher.push(recorded);
                    self.fanout.remember(seq, wire);
                    sent += 1;
                }
                Item::Comment(_) => sent += 1,
                Item::Endpoint(data) => {
                    let shared = self.shared.clone();
                    if let Some(key) = register_endpoint_key(&shared, &data).await {
                        self.handover.add_key(key);
                        self.kind.announce_session();
                    }
                }
                Item::OverlapDropped => {
                    self.shared.metrics.overlap_dropped.inc();
                }
                Item::Oversized => {
                    self.shared.metrics.oversized_events.inc();
                }
            }
        }
        self.items = items;
        if let Some(wire) = self.reader.take_wire() {
            self.fanout.send(wire, sent);
        }
    }

    /// Number a marker and queue it for the store.
    fn push(&mut self, entry: Entry) {
        let recorded = self.reader.number(entry);
        self.batcher.push(recorded);
    }

    fn start_flush(&mut self) {
        let batch = self.batcher.take_batch();
        let shared = self.shared.clone();
        let session = self.session.clone();
        let claim = self.lease.id();
        self.batcher.started(tokio::spawn(async move {
            write_batch(&shared.book, &shared.store, &session, claim, batch).await
        }));
    }

    fn on_flushed(&mut self, done: FlushDone) -> Flow {
        if let Some(Ok(claim)) = done.claim {
            self.lease.adopt(claim);
        }
        match done.result {
            Ok(appended) => {
                self.batcher.written();
                self.unrecorded_warned = false;
                if appended.cut_into_floor {
                    self.shared.metrics.history_floor_cuts.inc();
                    if !self.floor_cut_warned {
                        self.floor_cut_warned = true;
                        tracing::warn!(session = %self.session, "history cap (historyMaxEntries) reached: events younger than historySeconds were trimmed, a resume may find a hole (counted in history_floor_cuts)");
                    }
                }
                if !done.batch.is_empty() {
                    let m = &self.shared.metrics;
                    m.events_recorded.inc_by(done.batch.len() as u64);
                    m.record_batch_seconds.observe(done.elapsed.as_secs_f64());
                }
                Flow::Continue
            }
            Err(StoreError::Fenced { current }) => {
                // What this pod captured after the takeover is the new owner's to deliver; counted,
                // so a loss at a takeover is visible, not only logged.
                let refused = done.batch.len() + self.batcher.pending();
                self.shared.metrics.fenced_entries.inc_by(refused as u64);
                tracing::info!(session = %self.session, current, refused, "session taken over by another pod: stop capturing");
                self.lease.fenced(&self.shared.book, &self.session);
                Flow::Fenced
            }
            Err(StoreError::Unavailable(e)) => {
                let dropped = self.batcher.retry(done.batch, FLUSH_BACKOFF);
                if dropped > 0 {
                    self.shared.metrics.events_unrecorded.inc_by(dropped as u64);
                    if !self.unrecorded_warned {
                        self.unrecorded_warned = true;
                        tracing::warn!(session = %self.session, dropped, error = %e, "store unavailable: streaming on, the oldest unrecorded entries are dropped from the record (counted in events_unrecorded)");
                    }
                }
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

    /// Mark the lease draining, then record the handover, so a reader seeing it knows the owner
    /// is leaving.
    async fn record_handover(&mut self, reason: HandoverReason) {
        self.handover.close_keys(&self.shared.gates);
        let _ = self.shared.book.mark_draining(&self.session).await;
        self.push(Entry::Handover);
        self.batcher.hurry();
        self.shared.metrics.handover(reason);
    }

    /// Start handing over (see [`handover`]): new requests get `404` at once; `Handover` is
    /// recorded once the requests already accepted are answered (`finish_handover`).
    fn begin_handover(&mut self, reason: HandoverReason) {
        self.handover
            .begin(reason, &self.shared.gates, Instant::now());
    }

    /// Record `Handover` once it is due. A drain keeps capturing until fenced; a resume window
    /// ends.
    async fn finish_handover(&mut self) -> Flow {
        let due = self.handover.due(
            &self.shared.gates,
            self.shared.settings.batch_window,
            Instant::now(),
        );
        let Some(reason) = due else {
            return Flow::Continue;
        };
        self.record_handover(reason).await;
        self.handover.recorded();
        if matches!(reason, HandoverReason::Drain | HandoverReason::Rebalance) {
            // The client's stream ends (a session stream's last, its calls answered); capturing
            // goes on until the client's new pod takes over, for the handover margin at most
            // (a shed client's new pod takes over by overlap, exactly as after a drain).
            self.fanout.release();
            self.handed_over_at = Some(Instant::now());
            Flow::Continue
        } else {
            Flow::Finish
        }
    }

    async fn exit(mut self, flow: Flow) {
        if let (Flow::Finish, Some(reason), Some(_)) =
            (flow, self.handover.unrecorded(), &self.upstream)
        {
            // Stopped (the drain's margin is over) before the pending handover was recorded:
            // record it now, so a resuming client takes the session over instead of waiting
            // for the lease to expire.
            self.record_handover(reason).await;
        }
        self.shared.recorders.remove(&self.session, self.id);
        self.handover.forget_keys_later(&self.shared.gates);
        self.cmds.close();
        self.upstream = None;
        self.fanout.release();
        if flow == Flow::Finish {
            self.final_flush().await;
        } else if let Some(h) = self.batcher.take_inflight() {
            h.abort();
        }
        self.lease.release(&self.shared.book, &self.session);
        self.shared.metrics.recorders.dec();
    }

    /// Write everything still held, in order, within a bounded time.
    async fn final_flush(&mut self) {
        let deadline = Instant::now() + FINAL_FLUSH_BUDGET;
        loop {
            if let Some(h) = self.batcher.take_inflight() {
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
            if self.batcher.pending() == 0 || Instant::now() >= deadline {
                break;
            }
            if let Some(r) = self.batcher.retry_at() {
                tokio::time::sleep_until(r.min(deadline).into()).await;
            }
            self.start_flush();
        }
        let left = self.batcher.pending();
        if left > 0 {
            self.shared.metrics.events_unrecorded.inc_by(left as u64);
            tracing::warn!(session = %self.session, left, "stream ended before the store took its last entries: they are not recorded (counted in events_unrecorded)");
        }
    }
}
