//! The incremental event-stream parser: bytes in any chunking → [`Frame`]s.
//!
//! Lines are split on the raw bytes and each finished line is UTF-8 decoded on its own. That is
//! exactly the spec's "decode the whole stream, then split" because the line terminators and the
//! colon are ASCII, and a UTF-8 decoder never swallows an ASCII byte into an invalid sequence (the
//! byte that ends a broken sequence is read again as itself). So a multi-byte character split
//! across chunks needs no decoder state: its bytes simply wait in the partial line.

use memchr::{memchr, memchr2};

use super::{Event, Frame};

/// The UTF-8 byte order mark, stripped once at the start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Bytes a line may have beyond `max_event_bytes` for its field name, colon, space and a BOM, so
/// a line carrying a value of exactly the bound is not mistaken for an overlong one.
const LINE_SLACK: usize = 16;

/// Incremental parser state for one stream.
///
/// Memory is bounded by about `max_event_bytes` plus [`LINE_SLACK`] for the partial line and the
/// same again for the event being built (invalid UTF-8 can triple a value when decoded, which is
/// counted against the bound after decoding).
#[derive(Debug)]
pub struct SseParser {
    /// Bound on the decoded bytes an event keeps (data with its joining LFs, type and id).
    max_event_bytes: usize,
    /// Bound on one raw line (terminator excluded); a longer line makes its block oversized.
    max_line_bytes: usize,
    /// The start of a line that has not ended yet (only when a line spans chunks).
    line: Vec<u8>,
    /// The last byte seen was a CR ending a line, so a LF right after it belongs to that line end.
    pending_cr: bool,
    /// No line has ended yet: the first line may start with a BOM.
    at_stream_start: bool,
    /// The block being built.
    block: Block,
    /// Skipping an oversized block until the next blank line.
    skipping: bool,
    /// While skipping: the current (unfinished) line has bytes, so its end is not a blank line.
    skip_line_has_bytes: bool,
    /// The browser's last event id (the spec's "last event ID string").
    last_event_id: String,
    /// `finish` was called: later input is ignored.
    finished: bool,
}

/// The spec's data, event type and last event id buffers for the block being read. The id is
/// kept per block and committed at the blank line: the spec sets its buffer at once, but the
/// buffer is only read at dispatch, so this is the same and lets an oversized block vanish whole.
#[derive(Debug, Default)]
struct Block {
    data: String,
    /// At least one `data` field was seen (the spec's "data buffer is not empty").
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
}

impl Block {
    /// Decoded bytes this block keeps, the quantity `max_event_bytes` bounds.
    fn retained(&self) -> usize {
        self.data.len()
            + self.event.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
    }

    fn clear(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.event = None;
        self.id = None;
    }
}

impl SseParser {
    /// A parser that drops events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            max_line_bytes: max_event_bytes.saturating_add(LINE_SLACK),
            line: Vec::new(),
            pending_cr: false,
            at_stream_start: true,
            block: Block::default(),
            skipping: false,
            skip_line_has_bytes: false,
            last_event_id: String::new(),
            finished: false,
        }
    }

    /// The id a browser would send as `Last-Event-ID` after the frames yielded so far: set by the
    /// last `id` field of a completed block, empty if none (or reset by an empty `id`). The proxy
    /// passes it to the app when it reopens the app's stream.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feed a chunk; completed frames are appended to `out`.
    ///
    /// Each byte is scanned once: complete lines are parsed straight from `chunk`, and only the
    /// unfinished tail is copied, so a line arriving in many small chunks costs linear time.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Frame>) {
        if self.finished || chunk.is_empty() {
            return;
        }
        let mut rest = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(at) = memchr2(b'\n', b'\r', rest) {
            let body = &rest[..at];
            let ended_by_cr = rest[at] == b'\r';
            rest = &rest[at + 1..];
            if ended_by_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            self.end_line(body, out);
        }
        if !rest.is_empty() {
            self.extend_line(rest, out);
        }
    }

    /// End of stream: a trailing incomplete event is discarded, per spec. The parser ignores any
    /// later input; [`last_event_id`](Self::last_event_id) keeps its value.
    pub fn finish(&mut self, _out: &mut Vec<Frame>) {
        self.finished = true;
        self.line = Vec::new();
        self.block = Block::default();
        self.skipping = false;
        self.pending_cr = false;
    }

    /// Bytes of a line that has not ended within this chunk.
    fn extend_line(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        if self.skipping {
            self.skip_line_has_bytes = true;
        } else if self.line.len() + bytes.len() > self.max_line_bytes {
            self.line = Vec::new();
            self.oversized(out);
            self.skip_line_has_bytes = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// A line terminator was found; `tail` is the line's bytes within the current chunk.
    fn end_line(&mut self, tail: &[u8], out: &mut Vec<Frame>) {
        let first_line = std::mem::replace(&mut self.at_stream_start, false);
        if self.skipping {
            let blank = !self.skip_line_has_bytes && tail.is_empty();
            self.skip_line_has_bytes = false;
            if blank {
                self.skipping = false;
            }
            return;
        }
        if self.line.is_empty() {
            self.line_complete(tail, first_line, out);
        } else if self.line.len() + tail.len() > self.max_line_bytes {
            // Refuse before joining, so a huge chunk is never copied into the line buffer.
            self.line = Vec::new();
            self.oversized(out);
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(tail);
            self.line_complete(&line, first_line, out);
            line.clear();
            self.line = line;
        }
    }

    /// A whole raw line (terminator excluded), not inside a skipped block.
    fn line_complete(&mut self, raw: &[u8], first_line: bool, out: &mut Vec<Frame>) {
        if raw.len() > self.max_line_bytes {
            self.oversized(out);
            return;
        }
        let line = match raw.strip_prefix(BOM) {
            Some(stripped) if first_line => stripped,
            _ => raw,
        };
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            let mut text = String::new();
            push_lossy(&mut text, &line[1..]);
            out.push(Frame::Comment(text));
            return;
        }
        let (name, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => self.data_field(value, out),
            b"event" => {
                let others =
                    self.block.retained() - self.block.event.as_ref().map_or(0, String::len);
                if let Some(event) = self.bounded_value(value, others, out) {
                    self.block.event = Some(event);
                }
            }
            // An id containing NUL is ignored (falls through to the unknown-field arm).
            b"id" if memchr(0, value).is_none() => {
                let others = self.block.retained() - self.block.id.as_ref().map_or(0, String::len);
                if let Some(id) = self.bounded_value(value, others, out) {
                    self.block.id = Some(id);
                }
            }
            b"retry" => {
                if let Some(millis) = parse_retry(value) {
                    out.push(Frame::Retry(millis));
                }
            }
            _ => {}
        }
    }

    /// Append a `data` value (with its joining LF) unless the event would outgrow the bound.
    fn data_field(&mut self, value: &[u8], out: &mut Vec<Frame>) {
        let join = usize::from(self.block.has_data);
        // Decoding never shrinks bytes, so the raw length is a safe early check.
        if self.block.retained() + join + value.len() > self.max_event_bytes {
            self.oversized(out);
            return;
        }
        if self.block.has_data {
            self.block.data.push('\n');
        }
        self.block.has_data = true;
        push_lossy(&mut self.block.data, value);
        if self.block.retained() > self.max_event_bytes {
            self.oversized(out);
        }
    }

    /// Decode a value that replaces a field worth `others` bytes less than the block keeps now;
    /// `None` (and the block dropped) if the event would outgrow the bound.
    fn bounded_value(
        &mut self,
        value: &[u8],
        others: usize,
        out: &mut Vec<Frame>,
    ) -> Option<String> {
        if others + value.len() > self.max_event_bytes {
            self.oversized(out);
            return None;
        }
        let mut text = String::new();
        push_lossy(&mut text, value);
        if others + text.len() > self.max_event_bytes {
            self.oversized(out);
            return None;
        }
        Some(text)
    }

    /// A blank line: dispatch the block, per the spec's "dispatch the event" steps.
    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        let block = &mut self.block;
        let id = block.id.take();
        if let Some(id) = &id {
            self.last_event_id.clone_from(id);
        }
        if block.has_data {
            block.has_data = false;
            out.push(Frame::Event(Event {
                id,
                event: block.event.take(),
                data: std::mem::take(&mut block.data),
            }));
        } else {
            block.event = None;
            if let Some(id) = id {
                out.push(Frame::SetId(id));
            }
        }
    }

    /// The block outgrew the bound: report it once and skip to the next blank line.
    fn oversized(&mut self, out: &mut Vec<Frame>) {
        self.block.clear();
        self.skipping = true;
        self.skip_line_has_bytes = false;
        out.push(Frame::Oversized);
    }
}

/// The spec's `retry` rule: only ASCII digits (at least one) count; a value too large for a `u64`
/// cannot be honoured either, so it is ignored like any other invalid one.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// Append `bytes` decoded as UTF-8, each maximal invalid subsequence replaced by U+FFFD (the
/// WHATWG "UTF-8 decode" error handling, which Rust's lossy decoding follows).
fn push_lossy(dst: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => dst.push_str(text),
        Err(_) => {
            for chunk in bytes.utf8_chunks() {
                dst.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    dst.push(char::REPLACEMENT_CHARACTER);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(max: usize, chunks: &[&[u8]]) -> (Vec<Frame>, String) {
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out);
        }
        parser.finish(&mut out);
        (out, parser.last_event_id().to_string())
    }

    fn parse(input: &[u8]) -> Vec<Frame> {
        parse_chunks(1 << 20, &[input]).0
    }

    fn event(id: Option<&str>, event: Option<&str>, data: &str) -> Frame {
        Frame::Event(Event {
            id: id.map(str::to_string),
            event: event.map(str::to_string),
            data: data.to_string(),
        })
    }

    #[test]
    fn data_lines_join_with_lf_and_one_space_is_stripped() {
        assert_eq!(
            parse(b"data:  two spaces\ndata:none\ndata\n\n"),
            vec![event(None, None, " two spaces\nnone\n")]
        );
    }

    #[test]
    fn cr_at_chunk_end_and_lf_in_next_chunk_are_one_line_end() {
        let (frames, _) = parse_chunks(1024, &[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(frames, vec![event(None, None, "a\nb")]);
    }

    #[test]
    fn a_blank_line_ended_by_cr_dispatches_without_waiting_for_the_next_chunk() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.push(b"data: x\r\r", &mut out);
        assert_eq!(out, vec![event(None, None, "x")]);
    }

    #[test]
    fn bom_split_across_chunks_is_stripped_once() {
        let bom_twice = b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n";
        let (frames, _) = parse_chunks(1024, &[&bom_twice[..1], &bom_twice[1..2], &bom_twice[2..]]);
        // The second BOM is part of the field name, so that line is an unknown field.
        assert_eq!(frames, vec![event(None, None, "y")]);
        assert_eq!(
            parse(b"\xEF\xBB\xBFdata: x\n\n"),
            vec![event(None, None, "x")]
        );
    }

    #[test]
    fn id_is_sticky_and_an_id_only_block_sets_it() {
        let (frames, last) = parse_chunks(
            1024,
            &[b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\nid: x\0y\ndata: c\n\n"],
        );
        assert_eq!(
            frames,
            vec![
                event(Some("1"), None, "a"),
                event(None, None, "b"),
                Frame::SetId("2".into()),
                event(None, None, "c"),
            ]
        );
        assert_eq!(last, "2");
    }

    #[test]
    fn incomplete_trailing_event_is_discarded_with_its_id() {
        let (frames, last) = parse_chunks(1024, &[b"id: 1\ndata: a\n\nid: 2\ndata: b\n"]);
        assert_eq!(frames, vec![event(Some("1"), None, "a")]);
        assert_eq!(last, "1");
    }

    #[test]
    fn retry_only_counts_ascii_digits() {
        assert_eq!(
            parse(b"retry: 10\nretry: 1x\nretry:\nretry: -1\nretry: 99999999999999999999\nretry:007\n"),
            vec![Frame::Retry(10), Frame::Retry(7)]
        );
    }

    #[test]
    fn oversized_event_is_reported_once_and_skipped_to_the_blank_line() {
        let input = b"data: 0123456789\ndata: 0123456789\nid: 7\nretry: 5\n: c\n\ndata: ok\n\n";
        let (frames, last) = parse_chunks(15, &[input]);
        assert_eq!(frames, vec![Frame::Oversized, event(None, None, "ok")]);
        assert_eq!(last, "");
    }

    #[test]
    fn an_endless_line_does_not_grow_memory() {
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            parser.push(&[b'x'; 100], &mut out);
        }
        assert!(parser.line.capacity() <= 64 + LINE_SLACK + 100);
        parser.push(b"\ndata: after\n\ndata: ok\n\n", &mut out);
        // The long line's block runs to the next blank line, so "after" is skipped too.
        assert_eq!(out, vec![Frame::Oversized, event(None, None, "ok")]);
    }

    #[test]
    fn a_long_line_finished_in_one_big_chunk_is_not_copied() {
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        parser.push(b"data: start", &mut out);
        let mut big = vec![b'x'; 1 << 20];
        big.extend_from_slice(
            b"

data: ok

",
        );
        parser.push(&big, &mut out);
        assert!(parser.line.capacity() <= 64 + LINE_SLACK);
        assert_eq!(out, vec![Frame::Oversized, event(None, None, "ok")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(
            parse(b"data: a\xFFb\xE2\x82\n\n"),
            vec![event(None, None, "a\u{FFFD}b\u{FFFD}")]
        );
    }

    #[test]
    fn input_after_finish_is_ignored() {
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        parser.push(b"data: a\n", &mut out);
        parser.finish(&mut out);
        parser.push(b"\n", &mut out);
        assert!(out.is_empty());
    }
}
