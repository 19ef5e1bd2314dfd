//! `POST /v1/chat/completions` with `"stream": true`: an OpenAI-compatible streaming chat
//! completion, so the official `openai` SDK can be the client. The answer is `max_tokens`
//! deterministic tokens (`"1 2 3 … "`), one chunk each `interval_ms` (an extra body field the SDK
//! sends with `extra_body`), then a `finish_reason: "stop"` chunk and `data: [DONE]`.
//!
//! Like a real inference server, an answer in flight is finished even after SIGTERM (the server's
//! graceful shutdown waits for it): closing it would cancel the request, which no client resumes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::server::{self, AppState, Body, MAX_BODY_BYTES};
use ssekeeper_testkit::sse as wire;

/// Longest answer accepted, in tokens.
pub const MAX_TOKENS: u32 = 10_000;
/// Longest pause between tokens accepted, in milliseconds.
pub const MAX_INTERVAL_MS: u64 = 10_000;

/// The request fields this server reads (the rest of the OpenAI request is accepted and ignored).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Echoed back.
    pub model: String,
    /// Only streaming is served.
    #[serde(default)]
    pub stream: bool,
    /// The answer's length in tokens.
    #[serde(default = "default_tokens", alias = "max_completion_tokens")]
    pub max_tokens: u32,
    /// Pause before each token (not an OpenAI field: sent with the SDK's `extra_body`).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

fn default_tokens() -> u32 {
    16
}

fn default_interval() -> u64 {
    20
}

/// The whole answer's text for `n` tokens, as a client concatenates the deltas.
pub fn expected_content(n: u32) -> String {
    (1..=n).map(|t| format!("{t} ")).collect()
}

/// Validate a request body; the error is the 400 text.
pub fn parse(body: &[u8]) -> Result<CompletionRequest, String> {
    let req: CompletionRequest =
        serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))?;
    if !req.stream {
        return Err("only \"stream\": true is served".into());
    }
    if req.max_tokens == 0 || req.max_tokens > MAX_TOKENS {
        return Err(format!("max_tokens must be 1..={MAX_TOKENS}"));
    }
    if req.interval_ms > MAX_INTERVAL_MS {
        return Err(format!("interval_ms must be at most {MAX_INTERVAL_MS}"));
    }
    Ok(req)
}

/// One `chat.completion.chunk` object.
fn chunk(
    id: &str,
    model: &str,
    created: u64,
    delta: serde_json::Value,
    finish: Option<&str>,
) -> String {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
    .to_string()
}

/// The handler.
pub async fn handle(req: Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return server::text(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let spec = match parse(&body) {
        Ok(s) => s,
        Err(e) => return server::text(StatusCode::BAD_REQUEST, e),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("chatcmpl-{}-{:016x}", state.pod, rand::random::<u64>());
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let model = spec.model;
        let first = chunk(
            &id,
            &model,
            created,
            json!({"role": "assistant", "content": ""}),
            None,
        );
        if tx.send(wire::event(None, None, &first)).await.is_err() {
            return;
        }
        for token in 1..=spec.max_tokens {
            tokio::time::sleep(Duration::from_millis(spec.interval_ms)).await;
            let delta = json!({"content": format!("{token} ")});
            let data = chunk(&id, &model, created, delta, None);
            if tx.send(wire::event(None, None, &data)).await.is_err() {
                return;
            }
        }
        let last = chunk(&id, &model, created, json!({}), Some("stop"));
        let _ = tx.send(wire::event(None, None, &last)).await;
        let _ = tx.send(wire::event(None, None, "[DONE]")).await;
    });
    server::sse(rx, ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated_with_a_reason() {
        let ok = parse(br#"{"model":"m","stream":true,"max_tokens":3,"messages":[]}"#).unwrap();
        assert_eq!((ok.max_tokens, ok.interval_ms), (3, 20));
        assert!(
            parse(br#"{"model":"m","max_tokens":3}"#)
                .unwrap_err()
                .contains("stream")
        );
        assert!(parse(br#"{"model":"m","stream":true,"max_tokens":0}"#).is_err());
        assert!(
            parse(b"not json")
                .unwrap_err()
                .starts_with("bad request body")
        );
        assert_eq!(expected_content(3), "1 2 3 ");
    }
}
