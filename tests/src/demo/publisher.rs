//! The chat room's publisher: appends entry `N-0` for N = 1, 2, ... at a fixed rate. It runs as
//! its own process (not inside a pod) so that rolling the pods never stops the sequence, and it
//! retries the same N until Redis takes it, so the sequence stays dense across a Redis outage.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use tokio_util::sync::CancellationToken;

use super::events::{STREAM_KEY, parse_entry_id};

/// Entries kept in the stream (approximate trim): bounds Redis memory in long runs.
pub const MAX_LEN: usize = 200_000;

/// Publish at `rate` per second until `count` entries were added or `shutdown`. Returns the last
/// sequence number published.
pub async fn run(
    url: &str,
    rate: f64,
    count: Option<u64>,
    shutdown: CancellationToken,
) -> redis::RedisResult<u64> {
    let client = redis::Client::open(url)?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    let mut con = ConnectionManager::new_with_config(client, cfg).await?;
    let mut last = tail_seq(&mut con).await?;
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.01, 100_000.0));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = 0u64;
    while count.is_none_or(|c| published < c) {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let seq = last + 1;
        let added: redis::RedisResult<Option<String>> = con
            .xadd_maxlen(
                STREAM_KEY,
                redis::streams::StreamMaxlen::Approx(MAX_LEN),
                format!("{seq}-0"),
                &[("msg", format!("message {seq}"))],
            )
            .await;
        match added {
            Ok(_) => {
                last = seq;
                published += 1;
            }
            Err(e) => {
                // The add may have landed before the reply was lost: trust the stream's tail.
                tracing::warn!(error = %e, seq, "publish failed; retrying the same seq");
                if let Ok(t) = tail_seq(&mut con).await
                    && t >= seq
                {
                    last = t;
                    published += 1;
                }
            }
        }
    }
    Ok(last)
}

/// The last sequence number in the stream (0 when empty).
pub async fn tail_seq(con: &mut ConnectionManager) -> redis::RedisResult<u64> {
    let tail: StreamRangeReply = con.xrevrange_count(STREAM_KEY, "+", "-", 1).await?;
    Ok(tail
        .ids
        .first()
        .and_then(|e| parse_entry_id(&e.id))
        .unwrap_or(0))
}
