//! Incremental Server-Sent Events codec (WHATWG HTML "server-sent events" parsing rules).
//!
//! The proxy sees an app's `text/event-stream` body as chunks split anywhere (inside a line, inside
//! a CRLF, inside a UTF-8 sequence). [`SseParser`] turns those chunks into [`Frame`]s exactly as a
//! browser's EventSource would interpret them, so the sidecar can rewrite ids and record events
//! without changing what the client sees; [`encode_event`] and friends write them back.
//!
//! API contract (implemented in the codec task; the proxy codes against these signatures):
//! - `SseParser::new(max_event_bytes)`; `push(&mut self, chunk: &[u8], out: &mut Vec<Frame>)`
//!   appends every frame completed by `chunk`; `finish(&mut self, out)` at end of stream
//!   (an incomplete trailing event is discarded, as the spec says).
//! - An event larger than `max_event_bytes` yields `Frame::Oversized` once and is skipped.

use bytes::Bytes;

/// One dispatched event, as an EventSource would deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `id:` field if this event block set one (`Some("")` resets the last event id). An `id`
    /// value containing NUL is ignored, as the spec says (so it is `None` here).
    pub id: Option<String>,
    /// The `event:` type, if set (empty means the default `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (the trailing newline removed, as the spec says).
    pub data: String,
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete event (a block with at least one `data` field).
    Event(Event),
    /// A valid `retry:` field (ASCII digits only), in milliseconds.
    Retry(u64),
    /// A comment line (`:` prefix), without the colon; forwarded so keep-alives pass through.
    Comment(String),
    /// An event exceeded the size bound and was dropped (counted in a metric by the caller).
    Oversized,
}

/// Incremental parser state for one stream.
#[derive(Debug)]
pub struct SseParser {
    _max_event_bytes: usize,
}

impl SseParser {
    /// A parser that drops events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            _max_event_bytes: max_event_bytes,
        }
    }

    /// Feed a chunk; completed frames are appended to `out`.
    pub fn push(&mut self, _chunk: &[u8], _out: &mut Vec<Frame>) {
        todo!("codec task")
    }

    /// End of stream: a trailing incomplete event is discarded, per spec.
    pub fn finish(&mut self, _out: &mut Vec<Frame>) {
        todo!("codec task")
    }
}

/// Encode an event with the given wire id (the sidecar's cursor, or the app's id unchanged).
/// Multi-line data becomes several `data:` lines; the output always ends with a blank line.
pub fn encode_event(_event: &Event, _wire_id: Option<&str>, _out: &mut Vec<u8>) {
    todo!("codec task")
}

/// Encode a `retry:` field line followed by a blank line.
pub fn encode_retry(_millis: u64, _out: &mut Vec<u8>) {
    todo!("codec task")
}

/// Encode a comment line (keep-alive).
pub fn encode_comment(_text: &str, _out: &mut Vec<u8>) {
    todo!("codec task")
}

/// Convenience for the hot path: encode into a fresh [`Bytes`].
pub fn event_bytes(event: &Event, wire_id: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(event.data.len() + 64);
    encode_event(event, wire_id, &mut out);
    Bytes::from(out)
}
