//! The recorders running in this process, by session: the handle the rest of the sidecar holds
//! on a recorder (attach a resuming client, hand over, stop) and the reservation that keeps two
//! streams of one session from both starting one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::cursor::{Binding, SessionId};
use crate::http::body::ClientTx;
use crate::http::kind::{KindCell, StreamKind};
use crate::store::Seq;

/// The `after` of an attach that wants only what comes next (a keyed stream reconnecting
/// without `Last-Event-ID`).
pub const LIVE: Seq = Seq::MAX;

/// Commands queued per recorder.
const COMMAND_QUEUE: usize = 16;

/// What a client attaching to a live recorder receives.
#[derive(Debug)]
pub struct Attached {
    /// Recent events it missed, from the recorder's memory, to send first.
    pub prefix: VecDeque<Bytes>,
    /// Older entries `(after, upto]` it missed, to read from the store before the prefix.
    pub from_store: Option<(Seq, Seq)>,
}

/// How a recorder answered an attach.
pub enum AttachReply {
    /// Attached: send the missed entries, then the live ones follow.
    Attached(Attached),
    /// The recorder no longer serves clients (stopping, or handed over): resume from the store.
    Refused(ClientTx),
    /// The cursor is beyond anything this recorder numbered: forged.
    Forged,
    /// The recorder exited while answering; the client's stream is closed (it reconnects).
    Lost,
}

pub(super) enum Command {
    Attach {
        after: Seq,
        client: ClientTx,
        reply: oneshot::Sender<AttachReply>,
    },
    /// The drain window is over: hand the session over (a session stream once its calls are
    /// answered, at most at `quiet_until`; a request stream finishes in place).
    Handover {
        quiet_until: Instant,
    },
    Stop,
}

/// A handle on a running recorder.
#[derive(Clone)]
pub struct RecorderHandle {
    pub(super) id: u64,
    tx: mpsc::Sender<Command>,
    kind: KindCell,
    started: Instant,
    binding: Binding,
}

impl RecorderHandle {
    /// Attach a client resuming after `after`.
    pub async fn attach(&self, after: Seq, client: ClientTx) -> AttachReply {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Attach { client, .. })) = self
            .tx
            .send(Command::Attach {
                after,
                client,
                reply,
            })
            .await
        {
            return AttachReply::Refused(client);
        }
        answer.await.unwrap_or(AttachReply::Lost)
    }

    /// The drain window is over: record a handover and keep capturing until fenced (a
    /// resumable stream); end once no call on the session is in flight, by `quiet_until` at the
    /// latest (a session stream); nothing (a request stream: it finishes in place).
    pub fn handover(&self, quiet_until: Instant) {
        let _ = self.tx.try_send(Command::Handover { quiet_until });
    }

    /// What the stream's cursors are bound to: only a request with the same binding may attach.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// The stream's kind now.
    pub fn kind(&self) -> StreamKind {
        self.kind.get()
    }

    /// How long the recorder has run.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Write what is held, release the session and stop.
    pub fn stop(&self) {
        let _ = self.tx.try_send(Command::Stop);
    }

    /// Resolves once the recorder has exited.
    pub async fn stopped(&self) {
        self.tx.closed().await
    }
}

/// The recorders running in this process, by session, for same-pod resumes and the drain.
#[derive(Default)]
pub struct Recorders {
    map: Mutex<Running>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Running {
    by_session: HashMap<SessionId, RecorderHandle>,
    /// Sessions a stream is about to record (claimed before the store call that precedes the
    /// recorder's start), so two concurrent streams with the same key do not both take it.
    reserved: HashSet<SessionId>,
}

impl std::ops::Deref for Running {
    type Target = HashMap<SessionId, RecorderHandle>;
    fn deref(&self) -> &Self::Target {
        &self.by_session
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_session
    }
}

impl Recorders {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The recorder of a session, if it runs here.
    pub fn get(&self, session: &SessionId) -> Option<RecorderHandle> {
        self.lock().get(session).cloned()
    }

    /// Whether a recorder of the session runs (or is about to start) here.
    pub fn contains(&self, session: &SessionId) -> bool {
        let map = self.lock();
        map.contains_key(session) || map.reserved.contains(session)
    }

    /// Reserve the session for a stream about to start recording it: `None` if a recorder of
    /// it runs or another stream reserved it first. [`super::spawn`] takes the reservation over;
    /// dropping it unused (an error, or the request was cancelled at an await) gives it up.
    pub fn reserve<'a>(&'a self, session: &SessionId) -> Option<Reservation<'a>> {
        let mut map = self.lock();
        (!map.contains_key(session) && map.reserved.insert(session.clone())).then(|| Reservation {
            recorders: self,
            session: Some(session.clone()),
        })
    }

    /// Every running recorder of one of `kinds`.
    pub fn of_kinds(&self, kinds: &[StreamKind]) -> Vec<RecorderHandle> {
        self.lock()
            .values()
            .filter(|h| kinds.contains(&h.kind()))
            .cloned()
            .collect()
    }

    /// Every running recorder.
    pub fn all(&self) -> Vec<RecorderHandle> {
        self.lock().values().cloned().collect()
    }

    /// How many recorders run.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Register a starting recorder (ending its reservation, replacing any older recorder of
    /// the session); returns its handle and the receiving end of its commands.
    pub(super) fn register(
        &self,
        session: &SessionId,
        kind: KindCell,
        binding: Binding,
    ) -> (RecorderHandle, mpsc::Receiver<Command>) {
        let (tx, cmds) = mpsc::channel(COMMAND_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = RecorderHandle {
            id,
            tx,
            kind,
            started: Instant::now(),
            binding,
        };
        let mut running = self.lock();
        running.reserved.remove(session);
        running.insert(session.clone(), handle.clone());
        (handle, cmds)
    }

    pub(super) fn remove(&self, session: &SessionId, id: u64) {
        let mut map = self.lock();
        if map.get(session).is_some_and(|h| h.id == id) {
            map.remove(session);
        }
    }
}

/// A session reserved for a recorder about to start (see [`Recorders::reserve`]).
pub struct Reservation<'a> {
    recorders: &'a Recorders,
    session: Option<SessionId>,
}

impl Reservation<'_> {
    /// The recorder started ([`super::spawn`] ended the reservation): nothing to give up.
    pub fn started(mut self) {
        self.session = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.recorders.lock().reserved.remove(&s);
        }
    }
}
