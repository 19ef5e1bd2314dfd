//! The encoder: [`Frame`]s → event-stream bytes that parse back to the same frames.
//!
//! SSE has no escaping: a CR or LF anywhere ends a line. So every value is cut at line breaks
//! before it is written, and nothing a caller passes can start a new field.

use std::io::Write as _;

use bytes::Bytes;

use super::{Event, Frame};

/// Encode an event with the given wire id (the sidecar's cursor, or the app's id unchanged).
/// Multi-line data becomes several `data:` lines; the output always ends with a blank line.
///
/// `event.id` is not written: the caller chooses the id (pass `event.id.as_deref()` to keep the
/// app's). Data lines split on LF, CR and CRLF, so data with a CR reads back with LF in its place,
/// which is what a browser would have read; CR/LF (and NUL for ids, which would void them) are
/// dropped from the type and the id, which cannot hold them.
pub fn encode_event(event: &Event, wire_id: Option<&str>, out: &mut Vec<u8>) {
    encode_event_parts(event.event.as_deref(), &event.data, wire_id, out);
}

/// [`encode_event`] from borrowed parts, for callers holding an event in another shape (a
/// stored entry being replayed): no [`Event`] has to be built, so nothing is copied.
pub fn encode_event_parts(
    kind: Option<&str>,
    data: &str,
    wire_id: Option<&str>,
    out: &mut Vec<u8>,
) {
    if let Some(id) = wire_id {
        write_field(out, b"id", id, &['\r', '\n', '\0']);
    }
    if let Some(kind) = kind {
        write_field(out, b"event", kind, &['\r', '\n']);
    }
    for line in Lines::new(data) {
        write_field(out, b"data", line, &[]);
    }
    out.push(b'\n');
}

/// Encode a `retry:` field line followed by a blank line.
pub fn encode_retry(millis: u64, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "retry: {millis}\n\n");
}

/// Encode a comment line (keep-alive). Text with line breaks becomes one comment line per line,
/// so it can never start a field.
pub fn encode_comment(text: &str, out: &mut Vec<u8>) {
    for line in Lines::new(text) {
        out.push(b':');
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// Encode a block that only sets the last event id (what [`Frame::SetId`] stands for).
pub fn encode_set_id(id: &str, out: &mut Vec<u8>) {
    write_field(out, b"id", id, &['\r', '\n', '\0']);
    out.push(b'\n');
}

/// Encode any frame the way the parser read it (events keep their own id). `Oversized` has no
/// wire form: the event is gone, so nothing is written.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Event(event) => encode_event(event, event.id.as_deref(), out),
        Frame::Retry(millis) => encode_retry(*millis, out),
        Frame::Comment(text) => encode_comment(text, out),
        Frame::SetId(id) => encode_set_id(id, out),
        Frame::Oversized => {}
    }
}

/// Convenience for the hot path: encode into a fresh [`Bytes`].
pub fn event_bytes(event: &Event, wire_id: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(event.data.len() + 64);
    encode_event(event, wire_id, &mut out);
    Bytes::from(out)
}

/// Write `name: value` (or `name:` for an empty value, no trailing space), leaving out `drop`.
/// Always writing the space keeps a value that starts with a space intact, as the parser strips
/// exactly one.
fn write_field(out: &mut Vec<u8>, name: &[u8], value: &str, drop: &[char]) {
    out.extend_from_slice(name);
    out.push(b':');
    if !value.is_empty() {
        out.push(b' ');
        // The common case (a cursor, an event type) holds no CR, LF or NUL (`drop` is a subset of
        // them): one vectorised scan, one copy.
        if drop.is_empty() || memchr::memchr3(b'\r', b'\n', b'\0', value.as_bytes()).is_none() {
            out.extend_from_slice(value.as_bytes());
        } else {
            for piece in value.split(drop) {
                out.extend_from_slice(piece.as_bytes());
            }
        }
    }
    out.push(b'\n');
}

/// The lines of a text split exactly as the parser splits them (LF, CR or CRLF), always at least
/// one (an empty text is one empty line, a trailing break gives a trailing empty line).
struct Lines<'a>(Option<&'a str>);

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self(Some(text))
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let text = self.0?;
        // CR and LF are ASCII, so the byte offset memchr finds is a char boundary.
        match memchr::memchr2(b'\r', b'\n', text.as_bytes()) {
            Some(at) => {
                let skip = if text[at..].starts_with("\r\n") { 2 } else { 1 };
                self.0 = Some(&text[at + skip..]);
                Some(&text[..at])
            }
            None => {
                self.0 = None;
                Some(text)
            }
        }
    }
}

/// The event a resuming client gets where its history has a hole
/// ([`crate::contract::GAP_EVENT_TYPE`]): `reason` is `missing` or `expired`, `after` the cursor
/// it resumed from. No `id:` line, so the client's last event id is left as it was.
pub fn encode_gap(reason: &str, after: &str) -> bytes::Bytes {
    let data = serde_json::json!({ "reason": reason, "after": after }).to_string();
    let mut out = String::with_capacity(data.len() + 40);
    out.push_str("event: ");
    out.push_str(crate::contract::GAP_EVENT_TYPE);
    out.push_str("\ndata: ");
    out.push_str(&data);
    out.push_str("\n\n");
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn event_fields_and_multi_line_data() {
        let event = Event {
            id: Some("app-1".into()),
            event: Some("update".into()),
            data: "a\n\n b\n".into(),
        };
        assert_eq!(
            encoded(|out| encode_event(&event, Some("s.1"), out)),
            "id: s.1\nevent: update\ndata: a\ndata:\ndata:  b\ndata:\n\n"
        );
    }

    #[test]
    fn cr_in_data_is_a_line_break_and_cannot_inject_a_field() {
        let event = Event {
            data: "a\rid: evil\r\nb\r".into(),
            ..Event::default()
        };
        assert_eq!(
            encoded(|out| encode_event(&event, None, out)),
            "data: a\ndata: id: evil\ndata: b\ndata:\n\n"
        );
    }

    #[test]
    fn line_breaks_are_dropped_from_id_and_type() {
        let event = Event {
            id: None,
            event: Some("x\ndata: evil".into()),
            data: String::new(),
        };
        assert_eq!(
            encoded(|out| encode_event(&event, Some("1\r\n\0 2"), out)),
            "id: 1 2\nevent: xdata: evil\ndata:\n\n"
        );
    }

    #[test]
    fn comment_with_line_breaks_stays_comments() {
        assert_eq!(
            encoded(|out| encode_comment(" a\r\ndata: x\rb", out)),
            ": a\n:data: x\n:b\n"
        );
        assert_eq!(encoded(|out| encode_comment("", out)), ":\n");
    }

    #[test]
    fn retry_and_set_id() {
        assert_eq!(encoded(|out| encode_retry(1500, out)), "retry: 1500\n\n");
        assert_eq!(encoded(|out| encode_set_id("", out)), "id:\n\n");
        assert_eq!(encoded(|out| encode_frame(&Frame::Oversized, out)), "");
    }

    #[test]
    fn the_gap_event_parses_back_without_an_id() {
        let wire = encode_gap("trimmed", "abc.7");
        let mut parser = crate::sse::SseParser::new(1024);
        let mut frames = Vec::new();
        parser.push(&wire, &mut frames);
        let [crate::sse::Frame::Event(e)] = frames.as_slice() else {
            panic!("one event: {frames:?}");
        };
        assert_eq!(e.event.as_deref(), Some(crate::contract::GAP_EVENT_TYPE));
        assert_eq!(e.id, None, "the client's last event id stays");
        assert_eq!(e.data, r#"{"after":"abc.7","reason":"trimmed"}"#);
    }
}
