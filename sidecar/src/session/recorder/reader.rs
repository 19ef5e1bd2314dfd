//! Upstream reading: the app's bytes in, numbered entries and the bytes their client gets out.
//!
//! Pure: no store, no socket, no clock. It numbers every entry of the session (events and retry
//! hints it reads, and the markers the recorder asks it to number), rewrites each event's id to
//! its cursor, keeps the app's own (sticky) id beside it, and drops what a new upstream repeats
//! after a takeover (the overlap).
//!
//! Everything the client gets from one chunk of the app's stream is written into one buffer:
//! each item's bytes are a slice of it (no allocation per event) and the whole buffer goes to
//! the client as one chunk ([`Reader::take_wire`]), one queue operation and one wake-up per
//! read instead of one per event.

use bytes::Bytes;

use crate::cursor::{SessionId, SessionSigner, Signer};
use crate::session::replay::{Overlap, apply_id};
use crate::sse::{self, Frame, SseParser};
use crate::store::{Entry, Recorded, Seq};

/// What reading produced, in order.
#[derive(Debug, PartialEq)]
pub(super) enum Item {
    /// A numbered entry and the bytes its client gets (kept for same-pod resumes).
    Entry(Recorded, Bytes),
    /// A comment (keep-alive), for the attached client only.
    Comment(Bytes),
    /// The first `endpoint` event's data, ahead of the event itself: a session key to own
    /// before the client can use it.
    Endpoint(String),
    /// An event the client already had (the overlap after a takeover), dropped.
    OverlapDropped,
    /// An event over the size bound, dropped.
    Oversized,
}

/// The reading half of a recorder.
pub(super) struct Reader {
    /// Writes the session's cursors (its session and binding hashed once).
    signer: SessionSigner,
    parser: SseParser,
    frames: Vec<Frame>,
    next_seq: Seq,
    sticky: Option<String>,
    overlap: Overlap,
    learn_endpoint: bool,
    cursor: String,
    /// The client's bytes of the chunk being read.
    wire: Vec<u8>,
    /// Where each item's bytes lie in `wire`: (index in the output, start, end).
    spans: Vec<(usize, usize, usize)>,
    /// The client's bytes of the last chunk read, until taken.
    ready: Option<Bytes>,
}

impl Reader {
    /// Numbering from `next_seq`, with the app's last id `sticky` and the `overlap` to drop.
    pub(super) fn new(
        session: SessionId,
        signer: Signer,
        max_event_bytes: usize,
        next_seq: Seq,
        sticky: Option<String>,
        overlap: Overlap,
        learn_endpoint: bool,
    ) -> Self {
        Reader {
            signer: signer.for_session(&session),
            parser: SseParser::new(max_event_bytes),
            frames: Vec::with_capacity(8),
            next_seq: next_seq.max(1),
            sticky,
            overlap,
            learn_endpoint,
            cursor: String::with_capacity(64),
            wire: Vec::new(),
            spans: Vec::new(),
            ready: None,
        }
    }

    /// The seq of the newest entry numbered (0 before the first).
    pub(super) fn last_seq(&self) -> Seq {
        self.next_seq - 1
    }

    /// Number an entry the recorder adds itself (`End`, `Handover`).
    pub(super) fn number(&mut self, entry: Entry) -> Recorded {
        let seq = self.next_seq;
        self.next_seq += 1;
        Recorded { seq, entry }
    }

    /// Read a chunk of the app's stream.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        self.parser.push(chunk, &mut self.frames);
        self.drain(out);
    }

    /// The app's stream ended: what is left in the parser.
    pub(super) fn finish(&mut self, out: &mut Vec<Item>) {
        self.parser.finish(&mut self.frames);
        self.drain(out);
    }

    /// The bytes the client gets for everything read since the last call, in order: the
    /// concatenation of the items' bytes.
    pub(super) fn take_wire(&mut self) -> Option<Bytes> {
        self.ready.take()
    }

    fn drain(&mut self, out: &mut Vec<Item>) {
        let mut frames = std::mem::take(&mut self.frames);
        // One allocation for the chunk: each event grows by its cursor id and field names.
        let estimate: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Event(e) => e.data.len() + e.event.as_ref().map_or(0, String::len) + 80,
                Frame::Comment(c) => c.len() + 4,
                _ => 24,
            })
            .sum();
        self.wire.reserve(estimate);
        for frame in frames.drain(..) {
            let start = self.wire.len();
            match frame {
                Frame::Event(event) => self.event(event, out),
                Frame::Retry(ms) => {
                    sse::encode_retry(ms, &mut self.wire);
                    let recorded = self.number(Entry::Retry(ms));
                    out.push(Item::Entry(recorded, Bytes::new()));
                }
                Frame::Comment(text) => {
                    sse::encode_comment(&text, &mut self.wire);
                    out.push(Item::Comment(Bytes::new()));
                }
                Frame::SetId(id) => apply_id(&mut self.sticky, &id),
                Frame::Oversized => out.push(Item::Oversized),
            }
            if self.wire.len() > start {
                self.spans.push((out.len() - 1, start, self.wire.len()));
            }
        }
        self.frames = frames;
        self.seal(out);
    }

    /// Freeze the chunk's bytes and hand each item its slice.
    fn seal(&mut self, out: &mut [Item]) {
        if self.spans.is_empty() {
            return;
        }
        let buf = Bytes::from(std::mem::take(&mut self.wire));
        for (i, start, end) in self.spans.drain(..) {
            if let Item::Entry(_, b) | Item::Comment(b) = &mut out[i] {
                *b = buf.slice(start..end);
            }
        }
        self.ready = Some(match self.ready.take() {
            // Not taken since the last read (the caller reads twice before sending): join them.
            Some(prev) => [prev, buf].concat().into(),
            None => buf,
        });
    }

    fn event(&mut self, event: sse::Event, out: &mut Vec<Item>) {
        if let Some(id) = &event.id {
            apply_id(&mut self.sticky, id);
        }
        if !self.overlap.is_done() && self.overlap.take(self.sticky.as_deref()) {
            out.push(Item::OverlapDropped);
            return;
        }
        if self.learn_endpoint && event.event.as_deref() == Some("endpoint") {
            self.learn_endpoint = false;
            out.push(Item::Endpoint(event.data.clone()));
        }
        let seq = self.next_seq;
        self.signer.write(&mut self.cursor, seq);
        sse::encode_event(&event, Some(&self.cursor), &mut self.wire);
        let sse::Event { event, data, .. } = event;
        let recorded = self.number(Entry::Event {
            app_id: self.sticky.clone(),
            event,
            data,
        });
        out.push(Item::Entry(recorded, Bytes::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(next_seq: Seq, overlap: Overlap, learn: bool) -> Reader {
        let session = SessionId::parse("s1").unwrap();
        Reader::new(
            session,
            crate::cursor::test_signer(),
            1 << 16,
            next_seq,
            None,
            overlap,
            learn,
        )
    }

    fn entries(items: &[Item]) -> Vec<(Seq, String)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Entry(r, wire) => Some((
                    r.seq,
                    crate::cursor::untag(std::str::from_utf8(wire).unwrap()),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn events_are_numbered_and_carry_their_cursor_with_the_apps_id_beside_it() {
        let mut r = reader(7, Overlap::default(), false);
        let mut out = Vec::new();
        r.feed(
            b"id: a1\ndata: one\n\nretry: 500\n\n: ping\n\ndata: two\n\n",
            &mut out,
        );
        assert_eq!(
            entries(&out),
            vec![
                (7, "id: s1.7\ndata: one\n\n".into()),
                (8, "retry: 500\n\n".into()),
                (9, "id: s1.9\ndata: two\n\n".into()),
            ]
        );
        let Item::Entry(last, _) = &out[out.len() - 1] else {
            panic!("{out:?}")
        };
        // The sticky id, as the browser would track it.
        assert!(matches!(&last.entry, Entry::Event { app_id: Some(id), .. } if id == "a1"));
        assert!(out.iter().any(|i| matches!(i, Item::Comment(_))));
        assert_eq!(r.last_seq(), 9);
        assert_eq!(r.number(Entry::End).seq, 10);
    }

    #[test]
    fn a_chunk_reaches_the_client_as_one_buffer_of_which_each_entry_is_a_slice() {
        let mut r = reader(1, Overlap::default(), false);
        let mut out = Vec::new();
        r.feed(b"data: a\n\n: ping\n\nretry: 5\n\ndata: b\n\n", &mut out);
        let wire = r.take_wire().expect("bytes for the client");
        assert_eq!(
            crate::cursor::untag(std::str::from_utf8(&wire).unwrap()),
            "id: s1.1\ndata: a\n\n: ping\nretry: 5\n\nid: s1.3\ndata: b\n\n"
        );
        let joined: Vec<u8> = out
            .iter()
            .flat_map(|i| match i {
                Item::Entry(_, b) | Item::Comment(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(
            joined,
            wire.to_vec(),
            "the items' bytes are the chunk, in order"
        );
        assert!(r.take_wire().is_none(), "taken once");
        r.feed(b"data: c", &mut out);
        assert!(r.take_wire().is_none(), "nothing complete yet");
    }

    #[test]
    fn an_event_split_across_chunks_is_read_once_whole() {
        let mut r = reader(1, Overlap::default(), false);
        let mut out = Vec::new();
        r.feed(b"data: he", &mut out);
        assert!(out.is_empty());
        r.feed(b"llo\n", &mut out);
        r.finish(&mut out);
        assert!(out.is_empty(), "an unterminated block is not dispatched");
        let mut r = reader(1, Overlap::default(), false);
        r.feed(b"data: he", &mut out);
        r.feed(b"llo\n\n", &mut out);
        assert_eq!(entries(&out), vec![(1, "id: s1.1\ndata: hello\n\n".into())]);
    }

    #[test]
    fn the_overlap_is_dropped_without_a_number() {
        let delivered = [Recorded {
            seq: 4,
            entry: Entry::Event {
                app_id: Some("a1".into()),
                event: None,
                data: "x".into(),
            },
        }];
        let mut r = reader(5, Overlap::from_delivered(&delivered), false);
        let mut out = Vec::new();
        r.feed(b"id: a1\ndata: x\n\nid: a2\ndata: y\n\n", &mut out);
        assert_eq!(out[0], Item::OverlapDropped);
        assert_eq!(entries(&out), vec![(5, "id: s1.5\ndata: y\n\n".into())]);
    }

    #[test]
    fn the_first_endpoint_event_is_announced_before_it_is_numbered() {
        let mut r = reader(1, Overlap::default(), true);
        let mut out = Vec::new();
        r.feed(
            b"event: endpoint\ndata: /messages?sessionId=abc\n\nevent: endpoint\ndata: again\n\n",
            &mut out,
        );
        assert_eq!(out[0], Item::Endpoint("/messages?sessionId=abc".into()));
        assert!(matches!(out[1], Item::Entry(..)));
        assert!(
            matches!(out[2], Item::Entry(..)),
            "only the first is learned"
        );
        assert_eq!(out.len(), 3);
    }
}
