//! `GET /events`: a chat room whose history is a Redis Stream shared by every pod.
//!
//! Every pod streams the same global sequence (stream entry `N-0` is event `N`), so a client that
//! is moved from pod to pod can check it saw each event exactly once. One reader task per process
//! tails the stream and fans it out; each client stream replays from Redis what it is missing
//! (after its `Last-Event-ID`, after a lag, after a gap) and then follows the fan-out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::payload::ChatEvent;
use super::server::{self, AppState, Body};
use ssekeeper_testkit::sse as wire;

/// The Redis Stream holding the chat room.
pub const STREAM_KEY: &str = "demo:events";
/// Entries per Redis read: bounds memory and latency of one catch-up step.
const READ_BATCH: usize = 500;
/// How long one blocking `XREAD` waits; the reader's connection timeout must exceed it.
const BLOCK_MILLIS: usize = 1000;
/// Retries of a failed catch-up read before the stream is ended (the client then reconnects).
const CATCH_UP_ATTEMPTS: u32 = 30;

/// One chat-room entry as read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The global sequence number (the stream id's milliseconds part).
    pub seq: u64,
}

/// Parse a stream entry id `N-0` into `N`; anything else is not one of ours.
pub fn parse_entry_id(id: &str) -> Option<u64> {
    let (ms, sub) = id.split_once('-')?;
    (sub == "0").then_some(())?;
    ms.parse().ok()
}

/// The room's last sequence number (0 when empty): what a crowd of clients must reach.
pub async fn room_tail(url: &str) -> redis::RedisResult<u64> {
    use redis::AsyncCommands;
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let reply: redis::streams::StreamRangeReply =
        con.xrevrange_count(STREAM_KEY, "+", "-", 1).await?;
    Ok(reply
        .ids
        .first()
        .and_then(|e| parse_entry_id(&e.id))
        .unwrap_or(0))
}

fn entries(ids: &[StreamId]) -> impl Iterator<Item = Entry> + '_ {
    ids.iter()
        .filter_map(|e| parse_entry_id(&e.id).map(|seq| Entry { seq }))
}

/// The per-process fan-out of the chat room.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Entry>,
    latest: watch::Receiver<u64>,
    redis: ConnectionManager,
}

impl Hub {
    /// Connect and start the reader task, which runs until `shutdown`.
    pub async fn start(url: &str, shutdown: CancellationToken) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_with_config(client.clone(), cfg).await?;
        let (tx, _) = broadcast::channel(4096);
        let (latest_tx, latest) = watch::channel(0);
        tokio::spawn(reader(client, tx.clone(), latest_tx, shutdown));
        Ok(Self { tx, latest, redis })
    }

    /// Entries after `after`, oldest first, at most one batch.
    async fn range_after(&self, after: u64) -> redis::RedisResult<Vec<Entry>> {
        let mut con = self.redis.clone();
        let reply: StreamRangeReply = con
            .xrange_count(STREAM_KEY, format!("{}-0", after + 1), "+", READ_BATCH)
            .await?;
        Ok(entries(&reply.ids).collect())
    }
}

async fn connect_reader(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MILLIS as u64 + 2000)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Tail the stream and broadcast each entry, reconnecting (and resuming after the last entry
/// seen) whenever Redis fails.
async fn reader(
    client: redis::Client,
    tx: broadcast::Sender<Entry>,
    latest: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut last: Option<u64> = None;
    while !shutdown.is_cancelled() {
        let result = async {
            let mut con = connect_reader(&client).await?;
            if last.is_none() {
                let tail: StreamRangeReply = con.xrevrange_count(STREAM_KEY, "+", "-", 1).await?;
                let seq = entries(&tail.ids).next().map_or(0, |e| e.seq);
                last = Some(seq);
                latest.send_replace(seq);
            }
            let opts = StreamReadOptions::default()
                .block(BLOCK_MILLIS)
                .count(READ_BATCH);
            loop {
                let from = [format!("{}-0", last.unwrap_or(0))];
                let reply: Option<StreamReadReply> = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = con.xread_options(&[STREAM_KEY], &from, &opts) => r?,
                };
                for key in reply.into_iter().flat_map(|r| r.keys) {
                    for e in entries(&key.ids) {
                        last = Some(e.seq);
                        latest.send_replace(e.seq);
                        let _ = tx.send(e);
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            let e: redis::RedisError = e;
            tracing::warn!(error = %e, "chat reader: redis failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// `GET /events[?since=N]`: resumes after `Last-Event-ID` (or `since`), else starts live.
pub async fn handle(req: &Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let Some(hub) = state.hub.clone() else {
        return server::text(StatusCode::SERVICE_UNAVAILABLE, "no redis configured");
    };
    let start = server::last_event_id(req)
        .or_else(|| server::query_param(req, "since").and_then(|s| s.parse().ok()));
    let (tx, rx) = mpsc::channel(64);
    let sub = hub.tx.subscribe();
    let start = start.unwrap_or_else(|| *hub.latest.borrow());
    tokio::spawn(produce(
        hub,
        sub,
        start,
        tx,
        state.pod.clone(),
        state.shutdown.clone(),
    ));
    server::sse(rx, ())
}

fn render(seq: u64, pod: &str) -> Bytes {
    let data = serde_json::to_string(&ChatEvent {
        seq,
        pod: pod.to_string(),
    })
    .expect("plain struct serialises");
    wire::event(Some(&seq.to_string()), None, &data)
}

/// Deliver everything after `last` that Redis has. `Ok(false)`: the client is gone.
async fn catch_up(
    hub: &Hub,
    last: &mut u64,
    tx: &mpsc::Sender<Bytes>,
    pod: &str,
) -> Result<bool, redis::RedisError> {
    loop {
        let batch = hub.range_after(*last).await?;
        if batch.is_empty() {
            return Ok(true);
        }
        for e in batch {
            if tx.send(render(e.seq, pod)).await.is_err() {
                return Ok(false);
            }
            *last = e.seq;
        }
    }
}

async fn catch_up_retrying(hub: &Hub, last: &mut u64, tx: &mpsc::Sender<Bytes>, pod: &str) -> bool {
    for attempt in 1..=CATCH_UP_ATTEMPTS {
        match catch_up(hub, last, tx, pod).await {
            Ok(alive) => return alive,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "chat catch-up failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    false
}

async fn produce(
    hub: Hub,
    mut sub: broadcast::Receiver<Entry>,
    mut last: u64,
    tx: mpsc::Sender<Bytes>,
    pod: String,
    shutdown: CancellationToken,
) {
    if !catch_up_retrying(&hub, &mut last, &tx, &pod).await {
        return;
    }
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            n = sub.recv() => n,
        };
        match next {
            Ok(e) if e.seq <= last => {}
            Ok(e) if e.seq == last + 1 => {
                if tx.send(render(e.seq, &pod)).await.is_err() {
                    return;
                }
                last = e.seq;
            }
            Ok(e) => {
                // A gap (or a lag): Redis has what the fan-out skipped.
                if !catch_up_retrying(&hub, &mut last, &tx, &pod).await {
                    return;
                }
                if e.seq > last {
                    tracing::warn!(from = last, to = e.seq, "chat history trimmed; gap");
                    if tx.send(render(e.seq, &pod)).await.is_err() {
                        return;
                    }
                    last = e.seq;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !catch_up_retrying(&hub, &mut last, &tx, &pod).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_the_global_sequence() {
        assert_eq!(parse_entry_id("42-0"), Some(42));
        assert_eq!(parse_entry_id("42-1"), None);
        assert_eq!(parse_entry_id("x-0"), None);
        assert_eq!(parse_entry_id("42"), None);
    }
}
