//! The SSE the fake app writes and the client reads.
//!
//! Deliberately independent of the sidecar's codec: the app stands for third-party code and the
//! client for a browser, and sharing the proxy's encoder or parser would hide a codec bug on both
//! sides of the proxy at once. The reader follows the WHATWG rules the sidecar's parser follows,
//! and reports the same kinds of frame, so a test can compare what went in with what came out.

use bytes::Bytes;

/// The terminal event of every finite stream, so a client knows not to reconnect.
pub const DONE_EVENT: &str = "done";

/// One event block as an app writes it: optional `id:` and `event:` lines, one `data:` line per
/// line of `data`, and the blank line that dispatches it.
pub fn event(id: Option<&str>, event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// One dispatched event, as an EventSource delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `id:` field if this block set one (`Some("")` resets the last event id; an id with a
    /// NUL is ignored). `None` inherits the previous last event id.
    pub id: Option<String>,
    /// The `event:` type if the block had one (`None` and `Some("")` both mean `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// What the reader yields, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A block with at least one `data` field.
    Event(Event),
    /// A valid `retry:` field (ASCII digits only), in milliseconds.
    Retry(u64),
    /// A comment line, without its colon (keep-alives).
    Comment(String),
    /// A block that set the last event id but had no `data`, so dispatched nothing.
    SetId(String),
    /// An event over the size bound, dropped.
    Oversized,
}

/// Bytes a line may have beyond the event bound for its field name, colon, space and a BOM.
const LINE_SLACK: usize = 16;

/// The reader: bytes in any chunking (split inside a line, a CRLF, a UTF-8 sequence) to frames.
///
/// Written from the spec rather than from the sidecar's parser, in two layers: `Lines` cuts the
/// bytes into lines (and refuses overlong ones), `Fields` runs the spec's field rules on whole
/// lines with the spec's own buffers. Events over the size bound are dropped whole, reported once.
#[derive(Debug)]
pub struct Parser {
    lines: Lines,
    fields: Fields,
    finished: bool,
}

impl Parser {
    /// A reader that drops (and reports) events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            lines: Lines {
                max: max_event_bytes.saturating_add(LINE_SLACK),
                partial: Vec::new(),
                after_cr: false,
                overlong: false,
            },
            fields: Fields {
                max_event_bytes,
                before_first_line: true,
                discarding: false,
                data: String::new(),
                kind: None,
                id: None,
                last_event_id: String::new(),
            },
            finished: false,
        }
    }

    /// The `Last-Event-ID` a browser would send now.
    pub fn last_event_id(&self) -> &str {
        &self.fields.last_event_id
    }

    /// Read a chunk; the frames it completes are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Frame>) {
        if !self.finished {
            let fields = &mut self.fields;
            self.lines.feed(chunk, |line| fields.line(line, out));
        }
    }

    /// The end of the stream: an unfinished block is dropped, as the spec says, and later input
    /// is ignored.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

/// A line as [`Lines`] hands it on.
enum Line<'a> {
    /// A whole line, its terminator removed.
    Whole(&'a [u8]),
    /// A line longer than the bound (reported once, as soon as it is seen; the rest of it is
    /// dropped).
    TooLong,
}

/// The spec's line splitting: CR, LF and CRLF each end a line, a CRLF may be split across chunks.
#[derive(Debug)]
struct Lines {
    max: usize,
    /// The start of a line not ended yet.
    partial: Vec<u8>,
    /// The last chunk ended with a CR: a LF opening the next one belongs to that line end.
    after_cr: bool,
    /// Inside a line already reported as too long.
    overlong: bool,
}

impl Lines {
    fn feed(&mut self, mut chunk: &[u8], mut each: impl FnMut(Line<'_>)) {
        if chunk.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        while let Some(end) = chunk.iter().position(|b| matches!(b, b'\r' | b'\n')) {
            let (head, terminator) = (&chunk[..end], chunk[end]);
            chunk = &chunk[end + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if std::mem::take(&mut self.overlong) {
                continue;
            }
            if self.partial.len() + head.len() > self.max {
                self.partial.clear();
                each(Line::TooLong);
            } else if self.partial.is_empty() {
                each(Line::Whole(head));
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                each(Line::Whole(&line));
            }
        }
        if self.overlong || chunk.is_empty() {
            return;
        }
        if self.partial.len() + chunk.len() > self.max {
            self.partial.clear();
            self.overlong = true;
            each(Line::TooLong);
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }
}

/// The spec's field rules, with its buffers: the data buffer gets each `data` value plus a LF,
/// the event type buffer the last `event`, and the block's `id` becomes the last event id when the
/// block is dispatched (so a dropped block leaves no trace).
#[derive(Debug)]
struct Fields {
    max_event_bytes: usize,
    /// No line has ended yet: the first may start with a BOM.
    before_first_line: bool,
    /// Dropping an oversized block until its blank line.
    discarding: bool,
    data: String,
    kind: Option<String>,
    id: Option<String>,
    last_event_id: String,
}

impl Fields {
    /// What the size bound counts: the data as dispatched (LF-joined), the type and the id.
    fn kept(&self) -> usize {
        self.data.len().saturating_sub(1)
            + self.kind.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
    }

    fn line(&mut self, line: Line<'_>, out: &mut Vec<Frame>) {
        let first = std::mem::replace(&mut self.before_first_line, false);
        let line = match line {
            Line::TooLong if self.discarding => return,
            Line::TooLong => return self.drop_block(out),
            Line::Whole(line) if self.discarding => {
                self.discarding = !line.is_empty();
                return;
            }
            Line::Whole(line) => line,
        };
        let line = match line.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) if first => rest,
            _ => line,
        };
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return match line {
                b"" => self.dispatch(out),
                name => self.field(name, b"", out),
            };
        };
        if colon == 0 {
            return out.push(Frame::Comment(lossy(&line[1..])));
        }
        let value = &line[colon + 1..];
        self.field(
            &line[..colon],
            value.strip_prefix(b" ").unwrap_or(value),
            out,
        );
    }

    fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<Frame>) {
        match name {
            b"data" => {
                // `data` plus its LF is exactly what the block would keep on top of now.
                if self.data.len() + self.kept_without_data() + value.len() > self.max_event_bytes {
                    return self.drop_block(out);
                }
                self.data.push_str(&lossy(value));
                self.data.push('\n');
                if self.kept() > self.max_event_bytes {
                    self.drop_block(out);
                }
            }
            b"event" => {
                let others = self.kept() - self.kind.as_ref().map_or(0, String::len);
                self.kind = self.within_bound(value, others, out).or(self.kind.take());
            }
            b"id" if !value.contains(&0) => {
                let others = self.kept() - self.id.as_ref().map_or(0, String::len);
                self.id = self.within_bound(value, others, out).or(self.id.take());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only, so this is UTF-8; too large for a u64 cannot be honoured either.
                if let Ok(ms) = String::from_utf8_lossy(value).parse() {
                    out.push(Frame::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn kept_without_data(&self) -> usize {
        self.kind.as_ref().map_or(0, String::len) + self.id.as_ref().map_or(0, String::len)
    }

    /// `value` decoded, or `None` with the block dropped if the block (worth `others` besides
    /// this field) would outgrow the bound.
    fn within_bound(
        &mut self,
        value: &[u8],
        others: usize,
        out: &mut Vec<Frame>,
    ) -> Option<String> {
        let text = lossy(value);
        if others + value.len().max(text.len()) > self.max_event_bytes {
            self.drop_block(out);
            return None;
        }
        Some(text)
    }

    /// The blank line: the spec's "dispatch the event".
    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        let id = self.id.take();
        let kind = self.kind.take();
        if let Some(id) = &id {
            self.last_event_id.clone_from(id);
        }
        match self.data.pop() {
            Some(_lf) => out.push(Frame::Event(Event {
                id,
                event: kind,
                data: std::mem::take(&mut self.data),
            })),
            None => out.extend(id.map(Frame::SetId)),
        }
    }

    /// The block outgrew the bound: say so once and discard it up to its blank line.
    fn drop_block(&mut self, out: &mut Vec<Frame>) {
        self.data.clear();
        self.kind = None;
        self.id = None;
        self.discarding = true;
        out.push(Frame::Oversized);
    }
}

/// UTF-8 decoded, each invalid sequence replaced by U+FFFD (the spec's decoder).
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::{MALFORMED_CHUNKS, MALFORMED_EXPECTED};

    fn read(max: usize, chunks: &[&[u8]]) -> (Vec<Frame>, String) {
        let mut p = Parser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        p.finish();
        (out, p.last_event_id().to_string())
    }

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        let b = event(Some("7"), Some("message"), "a\nb");
        assert_eq!(&b[..], b"id: 7\nevent: message\ndata: a\ndata: b\n\n");
        assert_eq!(&event(None, None, "")[..], b"data: \n\n");
    }

    #[test]
    fn reads_the_malformed_stream_as_written_out_by_hand() {
        let (frames, last) = read(1024, MALFORMED_CHUNKS);
        assert!(frames.contains(&Frame::Comment(" a comment".into())));
        let mut log = crate::client::Log::default();
        frames.into_iter().for_each(|f| _ = log.take(f));
        let want: Vec<(Option<String>, String)> = MALFORMED_EXPECTED
            .iter()
            .map(|(kind, data)| (kind.map(str::to_string), data.to_string()))
            .collect();
        let got: Vec<(Option<String>, String)> =
            log.events.into_iter().map(|e| (e.event, e.data)).collect();
        assert_eq!(got, want);
        // The id containing NUL was ignored, so the last id is still the first event's.
        assert_eq!((last.as_str(), log.last_id.as_deref()), ("m1", Some("m1")));
    }

    #[test]
    fn retry_comments_bare_ids_and_what_the_writer_wrote() {
        let (frames, last) = read(
            1024,
            &[
                b": keep-alive\n\nretry: 15",
                b"00\n\nid: 4\n\n",
                &event(Some("5"), None, "x\ny"),
            ],
        );
        assert_eq!(
            frames,
            vec![
                Frame::Comment(" keep-alive".into()),
                Frame::Retry(1500),
                Frame::SetId("4".into()),
                Frame::Event(Event {
                    id: Some("5".into()),
                    event: None,
                    data: "x\ny".into()
                }),
            ]
        );
        assert_eq!(last, "5");
    }

    #[test]
    fn an_oversized_event_is_reported_once_and_the_stream_goes_on() {
        let big = format!("id: 2\ndata: {}\ndata: more\n\n", "x".repeat(100));
        let (frames, last) = read(64, &[b"id: 1\ndata: a\n\n", big.as_bytes(), b"data: b\n\n"]);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(frames[1], Frame::Oversized);
        assert!(matches!(&frames[2], Frame::Event(e) if e.data == "b"));
        assert_eq!(last, "1", "the dropped block's id does not count");
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_end() {
        let (frames, _) = read(1024, &[b"data: a\r", b"\n\r", b"\n"]);
        assert_eq!(
            frames,
            vec![Frame::Event(Event {
                data: "a".into(),
                ..Event::default()
            })]
        );
    }
}
