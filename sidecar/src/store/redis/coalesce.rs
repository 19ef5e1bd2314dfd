//! Appends of many sessions sent to Redis as one pipeline.
//!
//! Why: at 5,000 streams × 3 events/s every recorder's batch holds one event, so every event was
//! one script call handed to the I/O thread on its own: a task, a wake-up of that thread (an
//! eventfd write) and a socket write each. The profile of that bench row put a quarter of the
//! append path in waking the thread, and the proxy's CPU spent on the store delayed the streams'
//! events (p99 in the hundreds of ms). Here callers queue their calls; the I/O thread takes all
//! that are queued (up to [`MAX_PIPELINE`]) and sends them as one pipeline: under load one
//! wake-up, one write and one read serve hundreds of sessions, and a lone call is one command as
//! before. A call whose caller gave up (past its deadline) before its pipeline is built is not
//! sent, as with the crate's own connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Cmd, RedisError, RedisResult, Value};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::contract::redis::conn::{AnyConn, Connector};

/// Calls sent in one pipeline at most: enough to take a whole burst of a few thousand sessions
/// in a few round trips, small enough that one pipeline's reply never holds Redis for long.
const MAX_PIPELINE: usize = 256;

/// Queues calls for the I/O thread, which sends what is queued as one pipeline.
pub(crate) struct Coalescer {
    tx: mpsc::UnboundedSender<Job>,
    sent: Arc<Sent>,
}

/// Calls and round trips sent so far: how much coalescing saved.
#[derive(Default)]
struct Sent {
    calls: AtomicU64,
    trips: AtomicU64,
}

struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<RedisResult<Value>>,
}

impl Coalescer {
    /// Start the sending loop on the I/O thread's runtime `io`; a pipeline not answered within
    /// `timeout` fails every call in it (their callers gave up by then).
    pub(crate) fn start(io: &Handle, connector: Arc<Connector>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(Sent::default());
        io.spawn(run(rx, connector, timeout, sent.clone()));
        Self { tx, sent }
    }

    /// Calls sent, and the pipelines (or lone commands) they went in.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.sent.calls.load(Ordering::Relaxed),
            self.sent.trips.load(Ordering::Relaxed),
        )
    }

    /// Send `cmd` with whatever else is queued; its own reply (a server error reply is this
    /// call's error only).
    pub(crate) async fn call(&self, cmd: Cmd) -> RedisResult<Value> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { cmd, reply }).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> RedisError {
    RedisError::from(std::io::Error::other(
        "the store's I/O thread stopped sending",
    ))
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Job>,
    connector: Arc<Connector>,
    timeout: Duration,
    sent: Arc<Sent>,
) {
    let mut jobs = Vec::with_capacity(MAX_PIPELINE);
    while rx.recv_many(&mut jobs, MAX_PIPELINE).await > 0 {
        // Callers past their deadline are gone: what they asked for is not sent.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (cmds, replies): (Vec<Cmd>, Vec<_>) = jobs.drain(..).map(|j| (j.cmd, j.reply)).unzip();
        sent.calls.fetch_add(cmds.len() as u64, Ordering::Relaxed);
        sent.trips.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout(timeout, send(&connector, cmds)).await;
        match sent {
            Ok(Ok(values)) => {
                for (reply, value) in replies.into_iter().zip(values) {
                    let _ = reply.send(value);
                }
            }
            Ok(Err(e)) => replies.into_iter().for_each(|r| {
                let _ = r.send(Err(e.clone()));
            }),
            // The callers' own deadlines have passed; dropping the replies tells any left.
            Err(_) => {}
        }
    }
}

/// One reply per command, in order. A pipeline of several; a Cluster connection gets each
/// command on its own (a pipeline there must stay within one slot, and sessions are spread).
async fn send(connector: &Connector, cmds: Vec<Cmd>) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut conn = connector.shared().await?;
    if cmds.len() == 1 || matches!(conn, AnyConn::Cluster(_)) {
        let calls = cmds.iter().map(|c| {
            let mut conn = conn.clone();
            async move { c.query_async::<Value>(&mut conn).await }
        });
        return Ok(futures::future::join_all(calls).await);
    }
    let mut pipe = redis::pipe();
    for c in cmds {
        pipe.add_command(c);
    }
    pipe.ignore_errors();
    pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await
}
