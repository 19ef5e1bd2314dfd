//! Appends of many sessions sent to Redis as one script call.
//!
//! Why: at 5,000 streams × 3 events/s every recorder's batch holds one event, so every event was
//! one script call handed to the I/O thread on its own: a task, a wake-up of that thread (an
//! eventfd write), a socket write and Redis's own per-call cost (parsing the call, entering Lua)
//! each. The profile of that bench row put a quarter of the append path in waking the thread,
//! and Redis spent more on calling the script than on the writes in it. Here callers queue their
//! appends; the I/O thread takes all that are queued (up to [`MAX_SESSIONS`] and [`MAX_ARGS`])
//! and sends them as one `append_many` call (`scripts.rs`), which runs each session's `append` in
//! turn and replies a verdict per session: under load one wake-up, one round trip and one script
//! call serve hundreds of sessions; a lone append is one `append` call as before. Redis Cluster gets one
//! call per session (the sessions' keys span slots). An append whose caller gave up (past its
//! deadline) before its call is built is not sent, as with the crate's own connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike as _;
use redis::{Cmd, RedisError, RedisResult, Script, Value, cmd};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::contract::redis::conn::{AnyConn, Connector};

/// Sessions in one call at most: a burst of a few thousand sessions goes in a few round trips,
/// and one call holds Redis for a few milliseconds at most.
const MAX_SESSIONS: usize = 128;
/// Script arguments in one call at most (a 256-entry batch is ~2,000): Redis runs a script
/// without interleaving, so one call of many large batches would hold every other client.
const MAX_ARGS: usize = 16_384;

/// One session's append: its five keys and its `append` arguments, each packed as a [`Cmd`]'s
/// arguments (no command name).
pub(crate) struct Append {
    /// The session's keys, in the `append` script's order.
    pub keys: Cmd,
    /// The `append` script's arguments.
    pub args: Cmd,
}

/// The two scripts an append is sent with.
pub(crate) struct AppendScripts {
    /// One session.
    pub one: Script,
    /// Several sessions.
    pub many: Script,
}

/// Queues appends for the I/O thread, which sends what is queued as one call.
pub(crate) struct Coalescer {
    tx: mpsc::UnboundedSender<Job>,
    sent: Arc<Sent>,
}

/// Appends and round trips sent so far: how much coalescing saved.
#[derive(Default)]
struct Sent {
    appends: AtomicU64,
    trips: AtomicU64,
}

struct Job {
    append: Append,
    reply: oneshot::Sender<RedisResult<Value>>,
}

impl Coalescer {
    /// Start the sending loop on the I/O thread's runtime `io`; a call not answered within
    /// `timeout` fails every append in it (their callers gave up by then).
    pub(crate) fn start(
        io: &Handle,
        connector: Arc<Connector>,
        scripts: AppendScripts,
        timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(Sent::default());
        io.spawn(run(rx, connector, scripts, timeout, sent.clone()));
        Self { tx, sent }
    }

    /// Appends sent, and the round trips they went in.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.sent.appends.load(Ordering::Relaxed),
            self.sent.trips.load(Ordering::Relaxed),
        )
    }

    /// Send `append` with whatever else is queued; its own `append` verdict (a server error of
    /// one session is that session's only).
    pub(crate) async fn call(&self, append: Append) -> RedisResult<Value> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { append, reply }).map_err(|_| stopped())?;
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
    scripts: AppendScripts,
    timeout: Duration,
    sent: Arc<Sent>,
) {
    let mut jobs = Vec::with_capacity(MAX_SESSIONS);
    let mut call = Vec::with_capacity(MAX_SESSIONS);
    while rx.recv_many(&mut jobs, MAX_SESSIONS).await > 0 {
        // Callers past their deadline are gone: what they asked for is not sent.
        jobs.retain(|j| !j.reply.is_closed());
        // Calls of at most MAX_ARGS arguments (one oversized append goes alone).
        let mut args = 0;
        for job in jobs.drain(..) {
            let n = job.append.args.args_iter().count();
            if !call.is_empty() && args + n > MAX_ARGS {
                send_answering(&connector, &scripts, timeout, &sent, &mut call).await;
                args = 0;
            }
            args += n;
            call.push(job);
        }
        if !call.is_empty() {
            send_answering(&connector, &scripts, timeout, &sent, &mut call).await;
        }
    }
}

/// Send the appends of `jobs` as one call and answer each (emptying `jobs`).
async fn send_answering(
    connector: &Connector,
    scripts: &AppendScripts,
    timeout: Duration,
    sent: &Sent,
    jobs: &mut Vec<Job>,
) {
    let (appends, replies): (Vec<Append>, Vec<_>) =
        jobs.drain(..).map(|j| (j.append, j.reply)).unzip();
    sent.appends
        .fetch_add(appends.len() as u64, Ordering::Relaxed);
    sent.trips.fetch_add(1, Ordering::Relaxed);
    let verdicts = tokio::time::timeout(timeout, send(connector, scripts, &appends)).await;
    match verdicts {
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

/// One verdict per append, in order.
async fn send(
    connector: &Connector,
    scripts: &AppendScripts,
    appends: &[Append],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut conn = connector.shared().await?;
    if appends.len() == 1 || matches!(conn, AnyConn::Cluster(_)) {
        let calls = appends.iter().map(|a| {
            let mut conn = conn.clone();
            async move { call_loading(&mut conn, &scripts.one, &one_call(&scripts.one, a)).await }
        });
        return Ok(futures::future::join_all(calls).await);
    }
    let reply = call_loading(&mut conn, &scripts.many, &many_call(&scripts.many, appends)).await?;
    let Value::Array(verdicts) = reply else {
        return Err(malformed("append_many: not an array"));
    };
    if verdicts.len() != appends.len() {
        return Err(malformed("append_many: one verdict per session expected"));
    }
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        })
        .collect())
}

fn malformed(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, what))
}

/// `EVALSHA` of `script`, loading it first when Redis lost it (a restart, a failover). An error
/// reply of the whole call is an error; one inside the reply (a session's own) is left in place
/// for its session (`query_async` would turn it into the whole call's).
async fn call_loading(conn: &mut AnyConn, script: &Script, call: &Cmd) -> RedisResult<Value> {
    let once = |conn: &mut AnyConn| {
        let mut conn = conn.clone();
        async move {
            match conn.req_packed_command(call).await? {
                Value::ServerError(e) => Err(RedisError::from(e)),
                v => Ok(v),
            }
        }
    };
    match once(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            once(conn).await
        }
        r => r,
    }
}

fn one_call(script: &Script, a: &Append) -> Cmd {
    let mut c = cmd("EVALSHA");
    c.arg(script.get_hash()).arg(a.keys.args_iter().count());
    push_args(&mut c, &a.keys);
    push_args(&mut c, &a.args);
    c
}

fn many_call(script: &Script, appends: &[Append]) -> Cmd {
    let mut c = cmd("EVALSHA");
    let keys: usize = appends.iter().map(|a| a.keys.args_iter().count()).sum();
    c.arg(script.get_hash()).arg(keys);
    for a in appends {
        push_args(&mut c, &a.keys);
    }
    for a in appends {
        c.arg(a.args.args_iter().count());
        push_args(&mut c, &a.args);
    }
    c
}

fn push_args(into: &mut Cmd, from: &Cmd) {
    for arg in from.args_iter() {
        if let redis::Arg::Simple(bytes) = arg {
            into.arg(bytes);
        }
    }
}
