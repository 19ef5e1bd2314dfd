//! Body types: what the proxy sends to clients and to the app.
//!
//! Pass-through bodies are boxed as they come (streamed, never buffered). SSE responses are fed
//! through a [`ClientTx`]/[`ClientBody`] pair: a bounded queue whose byte budget makes a slow
//! client visible to its producer (which cuts it) instead of growing memory, and whose close
//! signal lets the drain end a stream with a `retry:` hint at a moment of its choosing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::http::kind::{KindCell, StreamKind};
use crate::http::streams::{ShedMark, StreamGuard, Streams};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type of every request and response the proxy handles.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body read whole, if it is at most `max` bytes (`None`: larger, or it failed). For what
/// must be hashed before it is sent on (a forward's body).
pub async fn read_bounded<B>(body: B, max: usize) -> Option<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut body = body;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        if out.len() + data.len() > max {
            return None;
        }
        out.extend_from_slice(&data);
    }
    Some(out.freeze())
}

/// Box any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Queue slots per client, in messages; the byte budget is the tighter bound in practice.
const CLIENT_QUEUE_MESSAGES: usize = 4096;

/// Why a chunk could not be queued for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client's budget is used up: it does not read fast enough.
    Full,
    /// The client is gone (disconnected, cut, or closed by the drain).
    Closed,
}

/// The producer side of one client's SSE stream.
#[derive(Debug)]
pub struct ClientTx {
    tx: mpsc::Sender<Bytes>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    kind: KindCell,
    close: tokio_util::sync::CancellationToken,
    shed: ShedMark,
}

/// Bytes charged against the budget for a chunk: at most the whole budget, so one chunk larger
/// than the budget still fits in an empty queue.
fn charge(len: usize, budget_bytes: usize) -> u32 {
    len.clamp(1, budget_bytes).min(u32::MAX as usize) as u32
}

impl ClientTx {
    /// The stream's kind, shared with its registry entry (a recorder upgrades it when the app
    /// announces a session).
    pub fn kind(&self) -> &KindCell {
        &self.kind
    }

    /// Whether rebalancing closed this stream (its recorder then hands the session over soon).
    pub fn was_shed(&self) -> bool {
        self.shed.is_set()
    }

    /// Queue a chunk without waiting (the live path: never held up by a client).
    pub fn try_send(&self, chunk: Bytes) -> Result<(), Cut> {
        let n = charge(chunk.len(), self.budget_bytes);
        if self.tx.is_closed() {
            return Err(Cut::Closed);
        }
        let permit = self.budget.try_acquire_many(n).map_err(|_| Cut::Full)?;
        permit.forget();
        self.tx.try_send(chunk).map_err(|e| {
            self.budget.add_permits(n as usize);
            match e {
                mpsc::error::TrySendError::Full(_) => Cut::Full,
                mpsc::error::TrySendError::Closed(_) => Cut::Closed,
            }
        })
    }

    /// Queue a chunk, waiting up to `patience` for room (replay from the store, where waiting on
    /// the client is fine but not forever).
    pub async fn send(&self, chunk: Bytes, patience: Duration) -> Result<(), Cut> {
        let n = charge(chunk.len(), self.budget_bytes);
        let work = async {
            let permit = self.budget.acquire_many(n).await.map_err(|_| Cut::Closed)?;
            permit.forget();
            if self.tx.send(chunk).await.is_err() {
                self.budget.add_permits(n as usize);
                return Err(Cut::Closed);
            }
            Ok(())
        };
        tokio::select! {
            r = work => r,
            _ = self.tx.closed() => Err(Cut::Closed),
            _ = tokio::time::sleep(patience) => Err(Cut::Full),
        }
    }

    /// Wait for room for a chunk of `len` bytes (budget and a queue slot), owned so the caller
    /// may hold it across its own state changes; dropping it unused gives the room back.
    pub async fn room(&self, len: usize) -> Result<Room, Cut> {
        let n = charge(len, self.budget_bytes);
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Cut::Closed)?;
        let slot = self
            .tx
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| Cut::Closed)?;
        Ok(Room { slot, budget })
    }

    /// Resolves when the client side is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Whether the client side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// End the stream the way the drain does: what is queued, then the `retry:` hint (a slow
    /// broadcast client cut this way reconnects and resumes from history).
    pub fn close(&self) {
        self.close.cancel();
    }
}

/// Room reserved in a client's queue by [`ClientTx::room`].
pub struct Room {
    slot: mpsc::OwnedPermit<Bytes>,
    budget: tokio::sync::OwnedSemaphorePermit,
}

impl Room {
    /// Queue the chunk the room was reserved for (its budget is returned when the client reads it).
    pub fn send(self, chunk: Bytes) {
        self.budget.forget();
        self.slot.send(chunk);
    }
}

/// The client side: yields a prefix (replayed history), then what the producer queues; on the
/// drain's signal it yields what is already queued, then the `retry:` hint, and ends.
pub struct ClientBody {
    prefix: VecDeque<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    close: Pin<Box<WaitForCancellationFutureOwned>>,
    closing: bool,
    done: bool,
    retry_hint: Bytes,
    guard: StreamGuard,
}

/// Where client streams are opened: a slot under the stream bound, a queue of a byte budget, and
/// the `retry:` hint the stream ends with when the drain closes it.
#[derive(Clone)]
pub struct ClientQueues {
    streams: Arc<Streams>,
    budget_bytes: usize,
    retry_millis: u64,
}

impl ClientQueues {
    /// Queues of `budget_bytes` each, ending with a `retry: retry_millis` hint, under `streams`.
    pub fn new(streams: Arc<Streams>, budget_bytes: usize, retry_millis: u64) -> Self {
        ClientQueues {
            streams,
            budget_bytes,
            retry_millis,
        }
    }

    /// A new client stream of `kind`, or `None` when the stream bound is reached.
    pub fn open(&self, kind: KindCell) -> Option<(ClientTx, ClientBody)> {
        let guard = self.streams.open(kind)?;
        Some(client_channel(guard, self.budget_bytes, self.retry_millis))
    }

    /// The open client streams (for the drain).
    pub fn streams(&self) -> &Arc<Streams> {
        &self.streams
    }
}

/// A new client stream: the producer side, and the body to answer the client with.
pub fn client_channel(
    guard: StreamGuard,
    budget_bytes: usize,
    retry_millis: u64,
) -> (ClientTx, ClientBody) {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE_MESSAGES);
    let budget_bytes = budget_bytes.max(1);
    let budget = Arc::new(Semaphore::new(budget_bytes));
    let mut hint = Vec::new();
    crate::sse::encode_retry(retry_millis, &mut hint);
    let close = Box::pin(guard.token().cancelled_owned());
    (
        ClientTx {
            tx,
            budget: budget.clone(),
            budget_bytes,
            kind: guard.kind_cell(),
            close: guard.token(),
            shed: guard.shed_mark(),
        },
        ClientBody {
            prefix: VecDeque::new(),
            rx,
            budget,
            budget_bytes,
            close,
            closing: false,
            done: false,
            retry_hint: Bytes::from(hint),
            guard,
        },
    )
}

impl ClientBody {
    /// Chunks to send before anything queued (history replayed on a resume).
    pub fn set_prefix(&mut self, prefix: VecDeque<Bytes>) {
        self.prefix = prefix;
    }

    fn release(&self, chunk: &Bytes) {
        self.budget
            .add_permits(charge(chunk.len(), self.budget_bytes) as usize);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if !this.closing {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    this.release(&chunk);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(None) => {
                    // Closed by its producer after it asked for the close (a slow broadcast
                    // client cut): the hint still ends the stream, as a drain close does.
                    if this.close.as_mut().poll(cx).is_pending() {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending => {}
            }
            if this.close.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.closing = true;
        }
        // Closing: hand over what is already queued, then the retry hint, then end.
        match this.rx.try_recv() {
            Ok(chunk) => {
                this.release(&chunk);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Err(_) => {
                this.rx.close();
                this.done = true;
                // A request stream's client does not reconnect; a bare `retry:` event is only
                // noise to it (SDKs try to parse it as a message).
                if this.guard.kind() == StreamKind::Request {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::data(this.retry_hint.clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::streams::Streams;
    use crate::metrics::Metrics;

    async fn next(body: &mut ClientBody) -> Option<Bytes> {
        body.frame().await.map(|f| f.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn prefix_then_queue_then_end() {
        let streams = Streams::new(4, Arc::new(Metrics::new()));
        let (tx, mut body) = client_channel(streams.open(KindCell::default()).unwrap(), 1024, 500);
        body.set_prefix(VecDeque::from([
            Bytes::from_static(b"p1"),
            Bytes::from_static(b"p2"),
        ]));
        tx.try_send(Bytes::from_static(b"q1")).unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(b) = next(&mut body).await {
            got.push(b);
        }
        assert_eq!(got, vec!["p1", "p2", "q1"]);
        assert_eq!(streams.len(), 1);
        drop(body);
        assert!(
            streams.is_empty(),
            "the stream left the registry with its body"
        );
    }

    #[tokio::test]
    async fn the_byte_budget_refuses_a_client_that_does_not_read_and_reading_frees_it() {
        let streams = Streams::new(4, Arc::new(Metrics::new()));
        let (tx, mut body) = client_channel(streams.open(KindCell::default()).unwrap(), 10, 500);
        tx.try_send(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(tx.try_send(Bytes::from_static(b"123456")), Err(Cut::Full));
        assert_eq!(next(&mut body).await.unwrap(), "123456");
        tx.try_send(Bytes::from_static(b"123456")).unwrap();
        // A chunk larger than the whole budget still fits into an empty queue.
        let (tx2, _body2) = client_channel(streams.open(KindCell::default()).unwrap(), 4, 500);
        tx2.try_send(Bytes::from_static(b"much longer")).unwrap();
        let room = tokio::time::timeout(Duration::from_millis(50), tx2.room(1)).await;
        assert!(room.is_err(), "no room until the client reads");
    }

    #[tokio::test]
    async fn a_drain_close_delivers_what_is_queued_then_the_retry_hint() {
        let streams = Streams::new(4, Arc::new(Metrics::new()));
        let (tx, mut body) = client_channel(streams.open(KindCell::default()).unwrap(), 1024, 750);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        tx.try_send(Bytes::from_static(b"b")).unwrap();
        streams.close_resumable_spread(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut got = Vec::new();
        while let Some(b) = next(&mut body).await {
            got.push(b);
        }
        assert_eq!(got, vec!["a", "b", "retry: 750\n\n"]);
        assert!(tx.is_closed(), "the producer sees the client gone");
        assert_eq!(tx.try_send(Bytes::from_static(b"c")), Err(Cut::Closed));
    }

    #[tokio::test]
    async fn a_request_stream_cut_at_the_deadline_ends_without_a_retry_event() {
        let streams = Streams::new(4, Arc::new(Metrics::new()));
        let kind = KindCell::new(StreamKind::Request);
        let (tx, mut body) = client_channel(streams.open(kind).unwrap(), 1024, 750);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        streams.close_all();
        let mut got = Vec::new();
        while let Some(b) = next(&mut body).await {
            got.push(b);
        }
        assert_eq!(got, vec!["a"]);
    }
}
