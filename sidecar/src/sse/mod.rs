//! Incremental Server-Sent Events codec (WHATWG HTML "server-sent events" parsing rules).
//!
//! The proxy sees an app's `text/event-stream` body as chunks split anywhere (inside a line, inside
//! a CRLF, inside a UTF-8 sequence). [`SseParser`] turns those chunks into [`Frame`]s exactly as a
//! browser's EventSource would interpret them, so the sidecar can rewrite ids and record events
//! without changing what the client sees; [`encode_event`] and friends write them back.
//!
//! API contract (the proxy codes against these signatures):
//! - `SseParser::new(max_event_bytes)`; `push(&mut self, chunk: &[u8], out: &mut Vec<Frame>)`
//!   appends every frame completed by `chunk`; `finish(&mut self, out)` at end of stream
//!   (an incomplete trailing event is discarded, as the spec says).
//! - An event larger than `max_event_bytes` yields `Frame::Oversized` once and is skipped.
//!
//! # The app's last event id
//!
//! A browser's `Last-Event-ID` is sticky: an event without an `id` field keeps the id of the one
//! before, and a block with an `id` field but no `data` (so no event is dispatched) still moves it.
//! The proxy must know that value to resume the app's stream after a handover, so it is surfaced
//! twice, consistently:
//! - in frame order: [`Event::id`] is the id *this block* set, and [`Frame::SetId`] is a block that
//!   set an id without dispatching an event. Folding the frames (`current = id` on every `Some` id
//!   and on every `SetId`) gives the browser's last event id after each frame;
//! - as state: [`SseParser::last_event_id`] is that fold after the last pushed chunk.
//!
//! # Round trips
//!
//! [`encode_frame`] writes any frame the parser can produce so that it parses back to the same
//! frame. SSE has no escaping, so text the parser can never produce is normalised instead of
//! corrupting the stream: CR and CRLF in `data` become line breaks (LF, as a browser would read
//! them), CR/LF are dropped from `event` and `id` values (and NUL from ids), and a comment with line
//! breaks becomes several comment lines. No input to an encoder can inject a field.

mod encode;
mod parser;

pub use encode::{
    encode_comment, encode_event, encode_event_parts, encode_frame, encode_gap, encode_retry,
    encode_set_id, event_bytes,
};
pub use parser::SseParser;

/// One dispatched event, as an EventSource would deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `id:` field if this event block set one (`Some("")` resets the last event id). An `id`
    /// value containing NUL is ignored, as the spec says (so it is `None` here). An event with
    /// `None` inherits the previous last event id (see the module docs).
    pub id: Option<String>,
    /// The `event:` type, if the block had an `event` field (the last one wins). `Some("")` and
    /// `None` both mean the default `message`; the parser keeps the difference only so that
    /// re-encoding is exact.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (the trailing newline removed, as the spec says).
    pub data: String,
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete event (a block with at least one `data` field).
    Event(Event),
    /// A valid `retry:` field (ASCII digits only, fits in a `u64`), in milliseconds. Yielded when
    /// the line is read, as the spec applies it at once rather than at the blank line.
    Retry(u64),
    /// A comment line (`:` prefix), without the colon; forwarded so keep-alives pass through.
    Comment(String),
    /// A block that set the last event id (`id` field, possibly empty = reset) but had no `data`,
    /// so no event was dispatched. The proxy tracks the app's last id with it and does not forward
    /// it (the client sees the sidecar's cursors, not the app's ids).
    SetId(String),
    /// An event exceeded the size bound and was dropped (counted in a metric by the caller).
    Oversized,
}
