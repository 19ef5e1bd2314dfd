//! Endpoints that exist only to feed the proxy bad or hostile input. Each stream is finite and
//! ends with a `done` event, so a test client knows when to stop.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::server::{self, AppState, Body};
use super::wire;

/// The bytes of `/testing/malformed`, split into the chunks the app writes (the splits fall inside
/// a CRLF and inside a UTF-8 sequence on purpose). Every spec corner an app gets wrong in the
/// wild: a BOM, CR-only and CRLF line ends, an `id` containing NUL (must be ignored), invalid
/// UTF-8 (must become U+FFFD), a non-numeric `retry`, a field without a colon, a bare `data`
/// field, an unknown field, and a last event never terminated (must be discarded).
pub const MALFORMED_CHUNKS: &[&[u8]] = &[
    b"\xEF\xBB\xBF: a comment\r\nid: m1\r\ndata: one\r",
    b"\n\r\n",
    b"id: bad\0id\rdata: two\r\r",
    b"data: three\xE2\x82",
    b"\xAC and \xFF\xFE\n\n",
    b"retry: abc\n\nnocolon\ndata\ndata:four\nunknown: x\n\n",
    b"event: custom\ndata: five\n\n",
    b"event: done\ndata: malformed\n\n",
    b"data: never terminated",
];

/// What an EventSource reading [`MALFORMED_CHUNKS`] dispatches, as `(event type, data)`, written
/// out by hand from the spec: the proxy must hand the client exactly these.
pub const MALFORMED_EXPECTED: &[(Option<&str>, &str)] = &[
    (None, "one"),
    (None, "two"),
    (None, "three\u{20ac} and \u{fffd}\u{fffd}"),
    (None, "\nfour"),
    (Some("custom"), "five"),
    (Some("done"), "malformed"),
];

/// Largest `bytes` / `n` the testing endpoints accept (they must stay bounded too).
pub const MAX_TESTING_BYTES: usize = 64 * 1024 * 1024;

/// Route `/testing/*`.
pub fn handle(req: &Request<Incoming>, _state: &Arc<AppState>) -> Response<Body> {
    let num = |name: &str, default: usize| -> Option<usize> {
        match server::query_param(req, name) {
            None => Some(default),
            Some(v) => v.parse().ok().filter(|n| *n <= MAX_TESTING_BYTES),
        }
    };
    let chunks: Vec<Bytes> = match req.uri().path() {
        "/testing/malformed" => MALFORMED_CHUNKS
            .iter()
            .map(|c| Bytes::from_static(c))
            .collect(),
        "/testing/oversized" => {
            let Some(size) = num("bytes", 1024 * 1024) else {
                return server::text(StatusCode::BAD_REQUEST, "bad bytes");
            };
            vec![
                wire::event(Some("1"), None, "small-1"),
                wire::event(Some("2"), None, &"x".repeat(size)),
                wire::event(Some("3"), None, "small-3"),
                wire::event(None, Some(wire::DONE_EVENT), "oversized"),
            ]
        }
        "/testing/flood" => {
            let (Some(n), Some(size)) = (num("n", 1000), num("bytes", 1024)) else {
                return server::text(StatusCode::BAD_REQUEST, "bad n or bytes");
            };
            if n.saturating_mul(size) > MAX_TESTING_BYTES {
                return server::text(StatusCode::BAD_REQUEST, "flood too large");
            }
            return flood(n, size);
        }
        _ => return server::text(StatusCode::NOT_FOUND, "not found"),
    };
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(c).expect("channel sized to fit");
    }
    server::sse(rx, ())
}

/// `n` events of `size` bytes as fast as the reader takes them: what a slow consumer chokes on.
fn flood(n: usize, size: usize) -> Response<Body> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let filler = "f".repeat(size);
        for i in 1..=n {
            let data = format!("{i} {filler}");
            if tx
                .send(wire::event(Some(&i.to_string()), None, &data))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx
            .send(wire::event(None, Some(wire::DONE_EVENT), "flood"))
            .await;
    });
    server::sse(rx, ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssekeeper_sidecar::sse::{Frame, SseParser};

    #[test]
    fn the_codec_reads_the_malformed_stream_as_written_out_by_hand() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        for c in MALFORMED_CHUNKS {
            p.push(c, &mut out);
        }
        p.finish(&mut out);
        let events: Vec<(Option<&str>, &str)> = out
            .iter()
            .filter_map(|f| match f {
                Frame::Event(e) => Some((e.event.as_deref(), e.data.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(events, MALFORMED_EXPECTED);
        // The id containing NUL was ignored, so the last id is still the first event's.
        assert_eq!(p.last_event_id(), "m1");
    }
}
