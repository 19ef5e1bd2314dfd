//! `GET /answer?n=N&interval_ms=M`: a finite, deterministic stream of `N` tokens (ids `1..=N`)
//! followed by a `done` event - the shape of an LLM completion. The same request on any pod
//! yields the same tokens, and `Last-Event-ID: k` continues after token `k`, so a new owner that
//! reopens the upstream continues the answer instead of redoing it.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::payload::AnswerToken;
use super::server::{self, AppState, Body};
use ssekeeper_testkit::sse as wire;

/// Longest answer accepted, in tokens.
pub const MAX_TOKENS: u32 = 100_000;
/// Longest pause between tokens accepted, in milliseconds.
pub const MAX_INTERVAL_MS: u64 = 10_000;

/// The parameters of one answer, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSpec {
    /// Number of tokens.
    pub n: u32,
    /// Pause before each token.
    pub interval: Duration,
    /// First token to send (1 unless resuming).
    pub first: u32,
}

/// Parse `n`, `interval_ms` and the resume point; `None` when out of bounds.
pub fn parse(
    n: Option<&str>,
    interval_ms: Option<&str>,
    last_id: Option<u64>,
) -> Option<AnswerSpec> {
    let n: u32 = n.unwrap_or("10").parse().ok()?;
    let ms: u64 = interval_ms.unwrap_or("100").parse().ok()?;
    if n == 0 || n > MAX_TOKENS || ms > MAX_INTERVAL_MS {
        return None;
    }
    let first = last_id.map_or(1, |k| k.saturating_add(1).min(u64::from(n) + 1) as u32);
    Some(AnswerSpec {
        n,
        interval: Duration::from_millis(ms),
        first,
    })
}

/// The handler.
pub fn handle(req: &Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let Some(spec) = parse(
        server::query_param(req, "n"),
        server::query_param(req, "interval_ms"),
        server::last_event_id(req),
    ) else {
        return server::text(StatusCode::BAD_REQUEST, "bad n or interval_ms");
    };
    let (tx, rx) = mpsc::channel(16);
    let pod = state.pod.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        for token in spec.first..=spec.n {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(spec.interval) => {}
            }
            let data = serde_json::to_string(&AnswerToken {
                token,
                n: spec.n,
                pod: pod.clone(),
            })
            .expect("plain struct serialises");
            if tx
                .send(wire::event(Some(&token.to_string()), None, &data))
                .await
                .is_err()
            {
                return;
            }
        }
        let done = format!("{{\"n\":{},\"pod\":\"{pod}\"}}", spec.n);
        let _ = tx
            .send(wire::event(None, Some(wire::DONE_EVENT), &done))
            .await;
    });
    server::sse(rx, ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_the_last_token_and_clamps() {
        assert_eq!(parse(Some("5"), Some("1"), None).unwrap().first, 1);
        assert_eq!(parse(Some("5"), Some("1"), Some(3)).unwrap().first, 4);
        assert_eq!(parse(Some("5"), Some("1"), Some(99)).unwrap().first, 6);
        assert!(parse(Some("0"), None, None).is_none());
        assert!(parse(Some("x"), None, None).is_none());
        assert!(parse(None, Some("999999"), None).is_none());
    }
}
