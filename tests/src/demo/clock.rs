//! `GET /clock?rate=R`: a shared sequence that follows the wall clock, the way many real feeds
//! (prices, telemetry, a game's ticks) behave: event `k` is due `k / R` seconds after the Unix
//! epoch, every pod computes the same `k` for the same moment, and a request starts at the next
//! due event **whatever its `Last-Event-ID`** (the app keeps no history). Through a rolling
//! restart, only the sidecar's recording and takeover by overlap can make such a stream gapless.
//!
//! Due events are written together once per millisecond, so 20,000 events/s is 20 events per
//! write, not 20,000 timer wake-ups.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::payload::ChatEvent;
use super::server::{self, AppState, Body};

/// Highest rate accepted, events per second.
pub const MAX_RATE: u64 = 100_000;
/// How often due events are written.
const TICK: Duration = Duration::from_millis(1);

/// The sequence number due at `now` for `rate` events per second.
pub fn due_at(now: Duration, rate: u64) -> u64 {
    (now.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
}

/// `rate` from the query: 1..=[`MAX_RATE`], default 100.
pub fn parse_rate(raw: Option<&str>) -> Option<u64> {
    let rate: u64 = raw.unwrap_or("100").parse().ok()?;
    (1..=MAX_RATE).contains(&rate).then_some(rate)
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The handler.
pub fn handle(req: &Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let Some(rate) = parse_rate(server::query_param(req, "rate")) else {
        return server::text(StatusCode::BAD_REQUEST, "rate must be 1..=100000");
    };
    let (tx, rx) = mpsc::channel(64);
    let pod = state.pod.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut next = due_at(since_epoch(), rate) + 1;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = due_at(since_epoch(), rate);
            if now < next {
                continue;
            }
            let mut out = BytesMut::new();
            for k in next..=now {
                let data = serde_json::to_string(&ChatEvent {
                    seq: k,
                    pod: pod.clone(),
                })
                .expect("plain struct serialises");
                out.put_slice(format!("id: {k}\ndata: {data}\n\n").as_bytes());
            }
            next = now + 1;
            if tx.send(out.freeze()).await.is_err() {
                return;
            }
        }
    });
    server::sse(rx, ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_computes_the_same_sequence_from_the_clock() {
        assert_eq!(due_at(Duration::from_millis(1500), 1000), 1500);
        assert_eq!(due_at(Duration::from_micros(200), 5000), 1);
        assert_eq!(due_at(Duration::from_micros(199), 5000), 0);
        assert_eq!(parse_rate(None), Some(100));
        assert_eq!(parse_rate(Some("0")), None);
        assert_eq!(parse_rate(Some("100001")), None);
        assert_eq!(parse_rate(Some("x")), None);
    }
}
