//! Pure pieces of replay and takeover: wire form of stored entries, the app's sticky last id,
//! and the overlap filter that drops what a new upstream repeats.

use std::collections::HashMap;

use bytes::Bytes;

use crate::cursor::SessionSigner;
use crate::sse;
use crate::store::{Entry, Recorded};

/// The bytes a client receives for a stored entry: events with their cursor, retry hints as
/// they were; markers (`End`, `Handover`) have no wire form.
pub fn entry_bytes(
    signer: &SessionSigner,
    recorded: &Recorded,
    cursor: &mut String,
) -> Option<Bytes> {
    match &recorded.entry {
        Entry::Event { event, data, .. } => {
            signer.write(cursor, recorded.seq);
            let mut out = Vec::with_capacity(data.len() + cursor.len() + 32);
            sse::encode_event_parts(event.as_deref(), data, Some(cursor), &mut out);
            Some(Bytes::from(out))
        }
        Entry::Retry(ms) => {
            let mut out = Vec::with_capacity(24);
            sse::encode_retry(*ms, &mut out);
            Some(Bytes::from(out))
        }
        Entry::End | Entry::Handover => None,
    }
}

/// The browser's last event id after an `id:` field: empty resets it.
pub fn apply_id(sticky: &mut Option<String>, id: &str) {
    *sticky = if id.is_empty() {
        None
    } else {
        Some(id.to_string())
    };
}

/// Events a new upstream repeats after a takeover, by the app's (sticky) id, with multiplicity.
///
/// The new owner asks its app for everything after the last app id the client had; the old owner
/// may have recorded more before it was fenced, and those were delivered from the store. The new
/// upstream's first events are those again: each is dropped while its id is still owed, and the
/// first event that is not ends the filtering for good (everything after it is new).
#[derive(Debug, Default, Clone)]
pub struct Overlap {
    owed: HashMap<String, u32>,
    done: bool,
}

impl Overlap {
    /// The overlap made of these delivered entries (only events with an app id count: an app
    /// without ids cannot be deduplicated).
    pub fn from_delivered<'a>(entries: impl IntoIterator<Item = &'a Recorded>) -> Overlap {
        let mut owed = HashMap::new();
        for r in entries {
            if let Entry::Event {
                app_id: Some(id), ..
            } = &r.entry
            {
                *owed.entry(id.clone()).or_insert(0) += 1;
            }
        }
        Overlap {
            done: owed.is_empty(),
            owed,
        }
    }

    /// Whether an upstream event whose sticky app id is `sticky` was already delivered (drop it).
    pub fn take(&mut self, sticky: Option<&str>) -> bool {
        if self.done {
            return false;
        }
        if let Some(count) = sticky.and_then(|id| self.owed.get_mut(id))
            && *count > 0
        {
            *count -= 1;
            return true;
        }
        self.done = true;
        self.owed = HashMap::new();
        false
    }

    /// Whether filtering is over.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{SessionId, test_signer, untag};
    use crate::store::Seq;

    fn ev(seq: Seq, id: Option<&str>, data: &str) -> Recorded {
        Recorded {
            seq,
            entry: Entry::Event {
                app_id: id.map(str::to_string),
                event: None,
                data: data.to_string(),
            },
        }
    }

    #[test]
    fn entries_encode_with_their_cursor() {
        let s = SessionId::parse("abc").unwrap();
        let mut buf = String::new();
        let signer = test_signer();
        let session_signer = signer.for_session(&s);
        let b = entry_bytes(&session_signer, &ev(7, Some("app-9"), "x\ny"), &mut buf).unwrap();
        let wire = std::str::from_utf8(&b).unwrap();
        assert_eq!(untag(wire), "id: abc.7\ndata: x\ndata: y\n\n");
        let id = wire.lines().next().unwrap().strip_prefix("id: ").unwrap();
        let cursor = crate::cursor::Cursor::parse(id).unwrap();
        assert!(
            signer.key.verify(&cursor, signer.binding),
            "a cursor that verifies"
        );
        let r = Recorded {
            seq: 8,
            entry: Entry::Retry(250),
        };
        assert_eq!(
            &entry_bytes(&session_signer, &r, &mut buf).unwrap()[..],
            b"retry: 250\n\n"
        );
        let end = Recorded {
            seq: 9,
            entry: Entry::End,
        };
        assert!(entry_bytes(&session_signer, &end, &mut buf).is_none());
    }

    #[test]
    fn overlap_drops_each_repeated_id_once_then_stops() {
        let delivered = [
            ev(5, Some("5"), "a"),
            ev(6, Some("5"), "b"),
            ev(7, Some("6"), "c"),
        ];
        let mut o = Overlap::from_delivered(&delivered);
        assert!(o.take(Some("5")));
        assert!(o.take(Some("5")));
        assert!(o.take(Some("6")));
        assert!(!o.take(Some("7")));
        assert!(o.is_done());
        // After the first new event nothing is dropped any more, even a repeated id.
        assert!(!o.take(Some("5")));
    }

    #[test]
    fn overlap_stops_at_an_unknown_or_missing_id() {
        let delivered = [ev(1, Some("1"), "a"), ev(2, Some("2"), "b")];
        let mut o = Overlap::from_delivered(&delivered);
        assert!(o.take(Some("1")));
        assert!(!o.take(None));
        assert!(!o.take(Some("2")));
        let mut none = Overlap::from_delivered(&[ev(1, None, "a")]);
        assert!(none.is_done());
        assert!(!none.take(None));
    }

    #[test]
    fn ids_are_sticky_and_empty_resets() {
        let mut sticky = None;
        apply_id(&mut sticky, "4");
        assert_eq!(sticky.as_deref(), Some("4"));
        apply_id(&mut sticky, "");
        assert_eq!(sticky, None);
    }
}
