//! The pure parts of broadcast paths: the wire id, the entry encoding, the overlap filter, and
//! the publish request's parsing and authentication. No I/O, so every rule is unit-tested.
//!
//! # Ids
//!
//! A broadcast client sees `id: <seq>`, the position in the path's one Redis Stream (1, 2, 3 …),
//! never the app's own id. The store numbers entries, so the holder's upstream and every pod's
//! publishes share one sequence, and every client on every pod sees the same id for the same
//! event. The app's id is recorded beside the entry and is what a new holder sends the app as
//! `Last-Event-ID`. Broadcast ids are not signed like session cursors: the stream is the same for
//! every client, so a guessed id only replays what any client may read anyway.

use bytes::Bytes;
use sha2::Digest as _;

use crate::sse::{Frame, SseParser};
use crate::store::{Entry, Seq};

/// A `Last-Event-ID` a broadcast client sent, read as a seq: canonical decimal only (digits,
/// no sign, no leading zero, fits a `u64`). Anything else (a session cursor, an app's id from
/// before the path was a broadcast) is no position: the client gets the live stream.
pub fn parse_last_id(text: &str) -> Option<Seq> {
    let t = text.trim();
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if t.len() > 1 && t.starts_with('0') {
        return None;
    }
    t.parse().ok()
}

/// The bytes a client gets for a stored entry: an event with `id: <seq>`, the app's `retry:`
/// hint, or nothing (handover markers are for the pods, not the clients).
pub fn encode_entry(seq: Seq, entry: &Entry) -> Option<Bytes> {
    match entry {
        Entry::Event { event, data, .. } => {
            let mut out = Vec::with_capacity(data.len() + 32);
            let mut id = itoa::Buffer::new();
            crate::sse::encode_event_parts(event.as_deref(), data, Some(id.format(seq)), &mut out);
            Some(Bytes::from(out))
        }
        Entry::Retry(ms) => {
            let mut out = Vec::new();
            crate::sse::encode_retry(*ms, &mut out);
            Some(Bytes::from(out))
        }
        Entry::End | Entry::Handover => None,
    }
}

/// Drops the events of a (re)opened upstream that the stream already holds.
///
/// A holder that reopens its upstream, or a pod that takes it over, asks the app with the
/// `Last-Event-ID` of the last recorded event. An app that honours it sends only newer events; an
/// app that replays a little earlier, or ignores it (a shared "now" sequence), sends events that
/// are recorded already. They are recognised by their app id among the ids recorded last; the
/// first event whose id is not among them ends the overlap, and from then on nothing is dropped
/// (an app may legitimately repeat an id later). Apps that send no ids cannot be deduplicated.
#[derive(Debug, Default)]
pub struct Overlap {
    recorded: std::collections::HashSet<String>,
    over: bool,
}

impl Overlap {
    /// An overlap against the app ids recorded last (`ids`: bounded by the caller).
    pub fn new<I: IntoIterator<Item = String>>(ids: I) -> Self {
        let recorded: std::collections::HashSet<String> = ids.into_iter().collect();
        let over = recorded.is_empty();
        Overlap { recorded, over }
    }

    /// Whether an event with this app id is new (kept) or recorded already (dropped).
    pub fn admit(&mut self, app_id: Option<&str>) -> bool {
        if self.over {
            return true;
        }
        match app_id {
            Some(id) if self.recorded.contains(id) => false,
            _ => {
                self.over = true;
                self.recorded = Default::default();
                true
            }
        }
    }

    /// Whether the overlap is over (everything is kept now).
    pub fn is_over(&self) -> bool {
        self.over
    }
}

/// The app ids of the events among `entries`, newest last.
pub fn app_ids<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<String> {
    entries
        .into_iter()
        .filter_map(|e| match e {
            Entry::Event {
                app_id: Some(id), ..
            } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Largest publish body (64 KiB): an event is a message, not a file.
pub const MAX_PUBLISH_BYTES: usize = 64 * 1024;

/// Why a publish body was refused (each a `400` with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Nothing to publish.
    #[error("empty body: the body is the event's data")]
    Empty,
    /// The body is not UTF-8 (SSE is text).
    #[error("the body is not UTF-8 (an event stream is text)")]
    NotUtf8,
    /// An event-stream body without a complete event.
    #[error("no complete event in the text/event-stream body (a data: line and a blank line)")]
    NoEvent,
    /// The `event` parameter has a line break.
    #[error("the event type must be one line")]
    BadType,
}

/// The entries a publish body stands for. A `text/event-stream` body is parsed as SSE (its
/// `event:` and `data:` fields; `id:` is ignored, the stream numbers events, and `retry:` too);
/// any other body is the data of one event of type `event` (the query parameter, if any).
pub fn parse_publish(
    event_stream: bool,
    body: &[u8],
    event: Option<&str>,
) -> Result<Vec<Entry>, PublishError> {
    if body.is_empty() {
        return Err(PublishError::Empty);
    }
    if event.is_some_and(|e| e.contains(['\r', '\n'])) {
        return Err(PublishError::BadType);
    }
    let text = std::str::from_utf8(body).map_err(|_| PublishError::NotUtf8)?;
    if !event_stream {
        return Ok(vec![Entry::Event {
            app_id: None,
            event: event.filter(|e| !e.is_empty()).map(str::to_string),
            data: text.to_string(),
        }]);
    }
    let mut parser = SseParser::new(MAX_PUBLISH_BYTES + 1);
    let mut frames = Vec::new();
    parser.push(text.as_bytes(), &mut frames);
    // A body need not end with the blank line: the end of the request ends its last event.
    parser.push(b"\n\n", &mut frames);
    let entries: Vec<Entry> = frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Event(e) => Some(Entry::Event {
                app_id: None,
                event: e.event.filter(|t| !t.is_empty()),
                data: e.data,
            }),
            _ => None,
        })
        .collect();
    if entries.is_empty() {
        return Err(PublishError::NoEvent);
    }
    Ok(entries)
}

/// Whether the `Authorization` header value presents `expected` as a bearer token, compared in
/// constant time (both sides hashed first, so neither the length nor a prefix leaks).
pub fn bearer_matches(expected: &str, header: Option<&str>) -> bool {
    let Some(presented) = header.and_then(|h| {
        let (scheme, token) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }) else {
        return false;
    };
    let a = sha2::Sha256::digest(expected.as_bytes());
    let b = sha2::Sha256::digest(presented.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The value of query parameter `name`, percent-decoded (`+` is a space), if present and UTF-8.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k)? == name).then(|| decode(v)).flatten()
    })
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_ids_are_canonical_decimal_seqs_only() {
        assert_eq!(parse_last_id("42"), Some(42));
        assert_eq!(parse_last_id("0"), Some(0));
        assert_eq!(parse_last_id(" 7 "), Some(7));
        for bad in [
            "",
            "042",
            "-1",
            "+1",
            "1.5",
            "s.1.0123456789abcdef",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_last_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_encode_with_the_seq_as_id_and_markers_not_at_all() {
        let e = Entry::Event {
            app_id: Some("app-9".into()),
            event: Some("price".into()),
            data: "a\nb".into(),
        };
        assert_eq!(
            encode_entry(17, &e).unwrap(),
            "id: 17\nevent: price\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            encode_entry(3, &Entry::Retry(250)).unwrap(),
            "retry: 250\n\n"
        );
        assert_eq!(encode_entry(4, &Entry::Handover), None);
        assert_eq!(encode_entry(5, &Entry::End), None);
    }

    #[test]
    fn the_overlap_drops_recorded_ids_until_the_first_new_one() {
        let mut o = Overlap::new(["8".to_string(), "9".to_string(), "10".to_string()]);
        // An app that replays from a little earlier: 9 and 10 again, then 11.
        assert!(!o.admit(Some("9")));
        assert!(!o.admit(Some("10")));
        assert!(o.admit(Some("11")));
        assert!(o.is_over());
        // Afterwards an id seen before is an event of its own.
        assert!(o.admit(Some("9")));
        // An app that honours Last-Event-ID: its first event is new.
        let mut h = Overlap::new(["10".to_string()]);
        assert!(h.admit(Some("11")));
        // An event without id ends the overlap (it cannot be matched).
        let mut n = Overlap::new(["10".to_string()]);
        assert!(n.admit(None));
        // Nothing recorded: nothing to drop.
        assert!(Overlap::new(Vec::new()).admit(Some("1")));
        let ids = app_ids(&[
            Entry::Retry(5),
            Entry::Event {
                app_id: Some("x".into()),
                event: None,
                data: String::new(),
            },
            Entry::Event {
                app_id: None,
                event: None,
                data: String::new(),
            },
            Entry::Handover,
        ]);
        assert_eq!(ids, vec!["x"]);
    }

    #[test]
    fn publish_bodies_are_data_or_sse_fields() {
        let plain = parse_publish(false, b"{\"p\":1}", Some("price")).unwrap();
        assert_eq!(
            plain,
            vec![Entry::Event {
                app_id: None,
                event: Some("price".into()),
                data: "{\"p\":1}".into()
            }]
        );
        let sse =
            parse_publish(true, b"id: 5\nevent: a\ndata: x\n\ndata: y\ndata: z", None).unwrap();
        assert_eq!(sse.len(), 2);
        assert_eq!(
            sse[1],
            Entry::Event {
                app_id: None,
                event: None,
                data: "y\nz".into()
            }
        );
        assert_eq!(parse_publish(false, b"", None), Err(PublishError::Empty));
        assert_eq!(
            parse_publish(false, &[0xff, 0xfe], None),
            Err(PublishError::NotUtf8)
        );
        assert_eq!(
            parse_publish(true, b": just a comment\n", None),
            Err(PublishError::NoEvent)
        );
        assert_eq!(
            parse_publish(false, b"x", Some("a\nb")),
            Err(PublishError::BadType)
        );
    }

    #[test]
    fn bearer_tokens_and_query_parameters() {
        assert!(bearer_matches("s3cret", Some("Bearer s3cret")));
        assert!(bearer_matches("s3cret", Some("bearer  s3cret ")));
        assert!(!bearer_matches("s3cret", Some("Bearer s3cre")));
        assert!(!bearer_matches("s3cret", Some("Basic s3cret")));
        assert!(!bearer_matches("s3cret", Some("s3cret")));
        assert!(!bearer_matches("s3cret", None));
        assert_eq!(
            query_param(Some("a=1&path=%2Fevents%2Fprices&event=x+y"), "path").as_deref(),
            Some("/events/prices")
        );
        assert_eq!(
            query_param(Some("path=/e&event=x+y"), "event").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param(Some("path=%zz"), "path"), None);
        assert_eq!(query_param(None, "path"), None);
    }
}
