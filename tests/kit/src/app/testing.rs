//! Streams that exist only to feed the proxy bad, hostile or heavy input. They need no state, so
//! the in-process [`TestApp`](super::TestApp) serves them and so does the demo app's binary (under
//! `/testing/`), for the tests that run apps as processes.
//!
//! The `/testing/*` streams are finite and end with a `done` event, so a client knows when to
//! stop.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::serve::{self, Body};
use crate::sse;

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

/// `/testing/malformed` ([`MALFORMED_CHUNKS`]), `/testing/oversized?bytes=B` (a `B`-byte event
/// between two small ones) and `/testing/flood?n=N&bytes=B` (`N` events of `B` bytes as fast as
/// the reader takes them: what a slow consumer chokes on).
pub fn handle(req: &Request<Incoming>) -> Response<Body> {
    let num = |name: &str, default: usize| -> Option<usize> {
        match serve::query_param(req, name) {
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
                return serve::text(StatusCode::BAD_REQUEST, "bad bytes");
            };
            vec![
                sse::event(Some("1"), None, "small-1"),
                sse::event(Some("2"), None, &"x".repeat(size)),
                sse::event(Some("3"), None, "small-3"),
                sse::event(None, Some(sse::DONE_EVENT), "oversized"),
            ]
        }
        "/testing/flood" => {
            let (Some(n), Some(size)) = (num("n", 1000), num("bytes", 1024)) else {
                return serve::text(StatusCode::BAD_REQUEST, "bad n or bytes");
            };
            if n.saturating_mul(size) > MAX_TESTING_BYTES {
                return serve::text(StatusCode::BAD_REQUEST, "flood too large");
            }
            let filler = "f".repeat(size);
            return burst(n, 8, move |i| format!("{i} {filler}"), Some("flood"));
        }
        _ => return serve::text(StatusCode::NOT_FOUND, "not found"),
    };
    chunks_now(chunks)
}

/// `n` events `id: i` with `data(i)`, as fast as the reader takes them (at most `queue` ahead),
/// then a `done` event carrying `done` if given.
pub fn burst(
    n: usize,
    queue: usize,
    data: impl Fn(usize) -> String + Send + 'static,
    done: Option<&'static str>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(queue);
    tokio::spawn(async move {
        for i in 1..=n {
            if tx
                .send(sse::event(Some(&i.to_string()), None, &data(i)))
                .await
                .is_err()
            {
                return;
            }
        }
        if let Some(done) = done {
            let _ = tx.send(sse::event(None, Some(sse::DONE_EVENT), done)).await;
        }
    });
    serve::sse(rx, ())
}

/// `/firehose?size=S&count=N`: `N` events (default 20,000) of `S` bytes (default 1000) as fast
/// as the reader takes them, no end event.
pub fn firehose(req: &Request<Incoming>) -> Response<Body> {
    let size: usize = serve::query_param(req, "size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let count: usize = serve::query_param(req, "count")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let data = "x".repeat(size);
    burst(count, 16, move |_| data.clone(), None)
}

/// `/mixed`: a keep-alive comment, a `retry`, a two-line typed event, an event without id and
/// one with CRLF line ends, written 5 ms apart.
pub fn mixed() -> Response<Body> {
    let parts: [&'static [u8]; 5] = [
        b": keep-alive\n\n",
        b"retry: 1500\n\n",
        b"id: a1\nevent: greet\ndata: line one\ndata: line two\n\n",
        b"data: no id here\n\n",
        b"id: a2\r\ndata: crlf\r\n\r\n",
    ];
    paced(
        parts.map(Bytes::from_static).to_vec(),
        std::time::Duration::from_millis(5),
    )
}

/// `/garbage`: invalid UTF-8 and NUL outside any field, an id with NUL, a 3 MiB data line,
/// malformed fields, then one good event `id: 1` / `ok`.
pub fn garbage() -> Response<Body> {
    let mut huge = vec![b'a'; 3 << 20];
    huge.splice(0..0, b"data: ".iter().copied());
    chunks_now(vec![
        Bytes::from_static(b"\xff\xfe\x00garbage\x00\n"),
        Bytes::from_static(b"id: bad\x00id\ndata: nul id\n\n"),
        Bytes::from(huge),
        Bytes::from_static(b"\n\nretry: abc\nevent\n:\n\n"),
        Bytes::from_static(b"id: 1\ndata: ok\n\n"),
    ])
}

/// A stream of these chunks, all queued before the response starts.
fn chunks_now(chunks: Vec<Bytes>) -> Response<Body> {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(c).expect("channel sized to fit");
    }
    serve::sse(rx, ())
}

/// A stream of these chunks, `pause` after each.
fn paced(chunks: Vec<Bytes>, pause: std::time::Duration) -> Response<Body> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(c).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    serve::sse(rx, ())
}
