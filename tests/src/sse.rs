//! The client side's SSE parser.
//!
//! A second, independent reading of the WHATWG rules: the load client must interpret what the
//! proxy sends exactly as a browser would, and must not share a bug with the sidecar's codec.
//! It yields the sidecar's own [`Frame`] / [`Event`] types so the two stay comparable.

pub use ssekeeper_sidecar::sse::{Event, Frame};

/// Incremental parser for one stream.
#[derive(Debug)]
pub struct ClientParser {
    max_event_bytes: usize,
    line: Vec<u8>,
    pending_cr: bool,
    started: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    block_bytes: usize,
    oversized: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl ClientParser {
    /// A parser that drops (and reports once) events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            pending_cr: false,
            started: false,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            block_bytes: 0,
            oversized: false,
        }
    }

    /// Feed a chunk; every completed frame is appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) {
        if !self.started {
            // The BOM may itself arrive split; wait until we can tell.
            let mut probe = std::mem::take(&mut self.line);
            probe.extend_from_slice(chunk);
            if probe.len() < BOM.len() && BOM.starts_with(&probe) {
                self.line = probe;
                return;
            }
            self.started = true;
            let rest = probe.strip_prefix(BOM).unwrap_or(&probe).to_vec();
            self.push_bytes(&rest, out);
            return;
        }
        if self.pending_cr {
            self.pending_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        self.push_bytes(chunk, out);
    }

    fn push_bytes(&mut self, chunk: &[u8], out: &mut Vec<Frame>) {
        let mut i = 0;
        while i < chunk.len() {
            match chunk[i..].iter().position(|b| *b == b'\n' || *b == b'\r') {
                None => {
                    self.append_partial(&chunk[i..]);
                    return;
                }
                Some(p) => {
                    self.append_partial(&chunk[i..i + p]);
                    let end = i + p;
                    i = end + 1;
                    if chunk[end] == b'\r' {
                        if i < chunk.len() {
                            if chunk[i] == b'\n' {
                                i += 1;
                            }
                        } else {
                            self.pending_cr = true;
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out);
                }
            }
        }
    }

    fn append_partial(&mut self, bytes: &[u8]) {
        // Bound the line buffer too: a line longer than the limit can only be part of an
        // oversized event, so keep just enough to know its field name.
        let room = (self.max_event_bytes + 16).saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.block_bytes = self.block_bytes.saturating_add(bytes.len());
        if self.block_bytes > self.max_event_bytes {
            self.oversized = true;
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Frame>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if self.oversized {
            return;
        }
        let line = String::from_utf8_lossy(line);
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Frame::Comment(comment.to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(Frame::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        let oversized = std::mem::replace(&mut self.oversized, false);
        self.block_bytes = 0;
        let mut data = std::mem::take(&mut self.data);
        let event = self.event.take();
        let id = self.id.take();
        let has_data = std::mem::replace(&mut self.has_data, false);
        if oversized {
            out.push(Frame::Oversized);
            return;
        }
        if !has_data {
            // A block without data dispatches nothing. (A browser would still move its last event
            // id on an id-only block; the sidecar never sends one, and the codec's `Frame` has no
            // way to say it, so neither does this parser.)
            let _ = id;
            return;
        }
        data.pop();
        out.push(Frame::Event(Event { id, event, data }));
    }

    /// End of stream: an unterminated block is discarded, per spec.
    pub fn finish(&mut self, _out: &mut Vec<Frame>) {
        *self = Self::new(self.max_event_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut p = ClientParser::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        p.finish(&mut out);
        out
    }

    fn ev(id: Option<&str>, event: Option<&str>, data: &str) -> Frame {
        Frame::Event(Event {
            id: id.map(str::to_string),
            event: event.map(str::to_string),
            data: data.to_string(),
        })
    }

    #[test]
    fn malformed_demo_stream_reads_as_a_browser_would() {
        let out = parse_chunks(crate::demo::testing::MALFORMED_CHUNKS);
        assert_eq!(
            out,
            vec![
                Frame::Comment(" a comment".into()),
                ev(Some("m1"), None, "one"),
                ev(None, None, "two"),
                ev(None, None, "three\u{20ac} and \u{fffd}\u{fffd}"),
                ev(None, None, "\nfour"),
                ev(None, Some("custom"), "five"),
                ev(None, Some("done"), "malformed"),
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let whole: &[u8] = b"\xEF\xBB\xBFid: 1\r\ndata: a\r\ndata: b\r\n\r\nretry: 50\rdata:c\r\r";
        let expect = parse_chunks(&[whole]);
        assert_eq!(
            expect,
            vec![ev(Some("1"), None, "a\nb"), Frame::Retry(50), ev(None, None, "c")]
        );
        for cut in 0..whole.len() {
            assert_eq!(parse_chunks(&[&whole[..cut], &whole[cut..]]), expect, "cut {cut}");
        }
    }

    #[test]
    fn oversized_event_is_reported_once_and_skipped() {
        let big = format!("data: {}\n\ndata: ok\n\n", "x".repeat(5000));
        let out = parse_chunks(&[big.as_bytes()]);
        assert_eq!(out, vec![Frame::Oversized, ev(None, None, "ok")]);
    }
}
