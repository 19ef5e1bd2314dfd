//! The resumable cursor `<session>.<seq>` the sidecar writes as every event's `id:`.
//!
//! A reconnecting EventSource sends the last id it saw as `Last-Event-ID`, so the cursor is all
//! any pod needs to find the session in the store and replay what came after `seq`. It arrives
//! from the network, so parsing treats it as hostile: bounded length, a strict alphabet, and a
//! typed error for anything else, never a panic.
//!
//! Session ids never contain `.`, `{` or `}`: the cursor splits unambiguously and a session is
//! safe inside a Redis Cluster hash tag (`contract::keys::session_key`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Longest session id: a random id is 32 characters, an app's own key is hashed if longer.
pub const MAX_SESSION_LEN: usize = 128;
/// Longest app-provided session key [`SessionId::from_external`] accepts.
pub const MAX_EXTERNAL_KEY_LEN: usize = 256;
/// Decimal digits of `u64::MAX`: the longest `seq`.
const MAX_SEQ_DIGITS: usize = 20;
/// Longest cursor on the wire; longer input is refused before it is scanned.
pub const MAX_CURSOR_LEN: usize = MAX_SESSION_LEN + 1 + MAX_SEQ_DIGITS;
/// Prefix of a session id derived by hashing an app's key. Keys that already start with it are
/// hashed too, so a kept key and a hashed key can never name the same session.
const HASHED_PREFIX: &str = "h_";
/// Bytes of SHA-256 kept in a hashed session id (128 bits, as many as a random id has).
const HASHED_BYTES: usize = 16;

/// Why a session id, app key or cursor was refused. Messages never echo the input (it may be
/// forged and end up in logs); they say what rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The session part is empty.
    #[error("empty session id")]
    EmptySession,
    /// The session part is longer than [`MAX_SESSION_LEN`].
    #[error("session id of {0} bytes is longer than {MAX_SESSION_LEN}")]
    SessionTooLong(usize),
    /// The session part has a byte outside `[A-Za-z0-9_-]`.
    #[error("session id has a byte outside [A-Za-z0-9_-] at offset {0}")]
    SessionCharacter(usize),
    /// The app-provided key is empty.
    #[error("empty session key")]
    EmptyKey,
    /// The app-provided key is longer than [`MAX_EXTERNAL_KEY_LEN`].
    #[error("session key of {0} bytes is longer than {MAX_EXTERNAL_KEY_LEN}")]
    KeyTooLong(usize),
    /// The app-provided key has a byte that is not visible ASCII.
    #[error("session key has a byte that is not visible ASCII at offset {0}")]
    KeyCharacter(usize),
    /// The cursor is longer than [`MAX_CURSOR_LEN`].
    #[error("cursor of {0} bytes is longer than {MAX_CURSOR_LEN}")]
    CursorTooLong(usize),
    /// The cursor has no `.` between session and sequence number.
    #[error("cursor has no '.' separator")]
    MissingSeparator,
    /// The sequence number is not a canonical decimal `u64` (digits only, no sign, no leading
    /// zero, not too large).
    #[error("cursor sequence number is not a canonical decimal u64")]
    InvalidSeq,
}

/// A validated session id: 1..=128 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// Validate a session id as it appears on the wire or in the store.
    pub fn parse(text: &str) -> Result<SessionId, CursorError> {
        validate_session(text)?;
        Ok(SessionId(text.to_string()))
    }

    /// A fresh id for a stream that names no session: 128 random bits as 32 lowercase hex digits,
    /// unguessable so a client cannot resume someone else's stream.
    pub fn random() -> SessionId {
        SessionId(format!("{:032x}", rand::random::<u128>()))
    }

    /// The session for a key the app chose (an MCP `sessionId`, a header, a cookie), which may
    /// hold any visible ASCII. A key that is already a valid id (and does not start with the
    /// hashed prefix `h_`) is kept, so ids stay readable in the store; any other is replaced by
    /// `h_` and 32 hex digits of its SHA-256. The mapping is deterministic, so every pod finds the
    /// same session, and one-to-one up to SHA-256 collisions.
    pub fn from_external(key: &str) -> Result<SessionId, CursorError> {
        if key.is_empty() {
            return Err(CursorError::EmptyKey);
        }
        if key.len() > MAX_EXTERNAL_KEY_LEN {
            return Err(CursorError::KeyTooLong(key.len()));
        }
        if let Some(at) = key.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(CursorError::KeyCharacter(at));
        }
        if !key.starts_with(HASHED_PREFIX) && validate_session(key).is_ok() {
            return Ok(SessionId(key.to_string()));
        }
        let digest = Sha256::digest(key.as_bytes());
        Ok(SessionId(format!(
            "{HASHED_PREFIX}{}",
            hex::encode(&digest[..HASHED_BYTES])
        )))
    }

    /// The id as text (for store keys and logs).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for SessionId {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        SessionId::parse(text)
    }
}

/// A position in a session's event history: the event numbered `seq` (the first event recorded
/// in a session is 1, so `seq` 0 means "nothing delivered yet").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The session the events belong to.
    pub session: SessionId,
    /// The sequence number of the last event the client has.
    pub seq: u64,
}

impl Cursor {
    /// The cursor at `seq` in `session`.
    pub fn new(session: SessionId, seq: u64) -> Cursor {
        Cursor { session, seq }
    }

    /// Parse a wire cursor (a `Last-Event-ID` header): split at the last `.`, validate the session,
    /// read `seq` as a canonical decimal `u64`.
    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::CursorTooLong(text.len()));
        }
        let (session, seq) = text.rsplit_once('.').ok_or(CursorError::MissingSeparator)?;
        let seq = parse_seq(seq)?;
        Ok(Cursor {
            session: SessionId::parse(session)?,
            seq,
        })
    }

    /// The cursor of the following event; `None` once `seq` is `u64::MAX` (a forged cursor can
    /// carry it), so the caller refuses it instead of repeating a number.
    pub fn next(&self) -> Option<Cursor> {
        Some(Cursor {
            session: self.session.clone(),
            seq: self.seq.checked_add(1)?,
        })
    }
}

impl fmt::Display for Cursor {
    /// The wire form `<session>.<seq>`, which [`Cursor::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.session, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Cursor::parse(text)
    }
}

fn validate_session(text: &str) -> Result<(), CursorError> {
    if text.is_empty() {
        return Err(CursorError::EmptySession);
    }
    if text.len() > MAX_SESSION_LEN {
        return Err(CursorError::SessionTooLong(text.len()));
    }
    match text
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        Some(at) => Err(CursorError::SessionCharacter(at)),
        None => Ok(()),
    }
}

/// Digits only, no sign, no leading zero (one wire form per cursor), fits in a `u64`.
fn parse_seq(text: &str) -> Result<u64, CursorError> {
    let canonical = !text.is_empty()
        && text.len() <= MAX_SEQ_DIGITS
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(CursorError::InvalidSeq);
    }
    text.parse().map_err(|_| CursorError::InvalidSeq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(SessionId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn cursor_wire_form() {
        let cursor = Cursor::parse("abc_-9.42").unwrap();
        assert_eq!(cursor.session.as_str(), "abc_-9");
        assert_eq!(cursor.seq, 42);
        assert_eq!(cursor.to_string(), "abc_-9.42");
        assert_eq!(cursor.next().unwrap().to_string(), "abc_-9.43");
        assert_eq!(Cursor::parse("s.0").unwrap().seq, 0);
        assert_eq!(
            Cursor::parse("s.18446744073709551615").unwrap().next(),
            None
        );
    }

    #[test]
    fn forged_cursors_are_typed_errors() {
        use CursorError::*;
        let cases: &[(&str, CursorError)] = &[
            ("", MissingSeparator),
            ("abc", MissingSeparator),
            (".1", EmptySession),
            ("a.b.1", SessionCharacter(1)),
            ("a{b}.1", SessionCharacter(1)),
            ("s.", InvalidSeq),
            ("s.+1", InvalidSeq),
            ("s.-1", InvalidSeq),
            ("s.01", InvalidSeq),
            ("s.1 ", InvalidSeq),
            ("s.18446744073709551616", InvalidSeq),
            ("s.١", InvalidSeq),
            ("é.1", SessionCharacter(0)),
        ];
        for (input, error) in cases {
            assert_eq!(Cursor::parse(input), Err(error.clone()), "{input:?}");
        }
        let long = format!("{}.1", "a".repeat(MAX_SESSION_LEN + 1));
        assert_eq!(
            Cursor::parse(&long),
            Err(SessionTooLong(MAX_SESSION_LEN + 1))
        );
        let huge = "a".repeat(10_000);
        assert_eq!(Cursor::parse(&huge), Err(CursorTooLong(10_000)));
    }

    #[test]
    fn external_keys_are_kept_or_hashed() {
        let uuid = "0b9f6f8e-4c1a-4bb2-9a8e-2f1f6b0c9d11";
        assert_eq!(SessionId::from_external(uuid).unwrap().as_str(), uuid);
        let odd = SessionId::from_external("user{1}.chat").unwrap();
        assert!(odd.as_str().starts_with("h_"));
        assert_eq!(odd.as_str().len(), 2 + 32);
        assert_eq!(SessionId::from_external("user{1}.chat").unwrap(), odd);
        // A key that looks like a hashed id is hashed as well, so it cannot take over `odd`.
        let mimic = SessionId::from_external(odd.as_str()).unwrap();
        assert_ne!(mimic, odd);
        assert!(mimic.as_str().starts_with("h_"));
        // A valid key longer than a session id is hashed rather than refused.
        let long = "k".repeat(200);
        assert!(
            SessionId::from_external(&long)
                .unwrap()
                .as_str()
                .starts_with("h_")
        );
        assert_eq!(SessionId::from_external(""), Err(CursorError::EmptyKey));
        assert_eq!(
            SessionId::from_external(&"k".repeat(257)),
            Err(CursorError::KeyTooLong(257))
        );
        assert_eq!(
            SessionId::from_external("a b"),
            Err(CursorError::KeyCharacter(1))
        );
        assert_eq!(
            SessionId::from_external("a\u{7f}"),
            Err(CursorError::KeyCharacter(1))
        );
    }

    fn session_strategy() -> impl Strategy<Value = SessionId> {
        "[A-Za-z0-9_-]{1,128}".prop_map(|text| SessionId::parse(&text).unwrap())
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(session in session_strategy(), seq in any::<u64>()) {
            let cursor = Cursor::new(session, seq);
            prop_assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
        }

        #[test]
        fn parse_never_panics_and_accepted_input_displays_back(text in "\\PC{0,160}") {
            if let Ok(cursor) = Cursor::parse(&text) {
                prop_assert_eq!(cursor.to_string(), text);
            }
        }

        #[test]
        fn parse_near_valid_input(
            session in "[A-Za-z0-9_.{}+-]{0,130}",
            seq in "[0-9+-]{0,22}",
        ) {
            let text = format!("{session}.{seq}");
            if let Ok(cursor) = Cursor::parse(&text) {
                prop_assert_eq!(cursor.to_string(), text);
            }
        }

        #[test]
        fn external_keys_map_to_valid_ids_deterministically(key in "[!-~]{1,256}") {
            let id = SessionId::from_external(&key).unwrap();
            prop_assert_eq!(SessionId::parse(id.as_str()), Ok(id.clone()));
            prop_assert_eq!(SessionId::from_external(&key), Ok(id));
        }

        #[test]
        fn from_external_never_panics(key in "\\PC{0,300}") {
            if let Ok(id) = SessionId::from_external(&key) {
                prop_assert!(SessionId::parse(id.as_str()).is_ok());
            }
        }
    }
}
