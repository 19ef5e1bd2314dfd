//! The resumable cursor `<session>.<seq>.<tag>` the sidecar writes as every event's `id:`.
//!
//! A reconnecting EventSource sends the last id it saw as `Last-Event-ID`, so the cursor is all
//! any pod needs to find the session in the store and replay what came after `seq`. It arrives
//! from the network, so parsing treats it as hostile: bounded length, a strict alphabet, and a
//! typed error for anything else, never a panic.
//!
//! The `tag` makes a cursor unforgeable and binds it to whoever opened the stream: SipHash-2-4
//! under a per-SseService key ([`CursorKey`], derived from the forwarding secret every pod of the
//! SseService shares) over the session, the seq and the stream's [`Binding`] (a keyed hash of the
//! credentials the SseService names and of the path). A cursor another client sends (stolen,
//! edited, or for another path) does not verify and is treated as an unknown one. Session ids of
//! keyed streams are keyed hashes of the key ([`CursorKey::session_for_key`]), so no cookie or
//! header value ever appears in an event id, a store key or a log line.
//!
//! Session ids never contain `.`, `{` or `}`: the cursor splits unambiguously and a session is
//! safe inside a Redis Cluster hash tag (`contract::keys::session_key`).

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use siphasher::sip::SipHasher24;
use std::hash::Hasher as _;

/// Longest session id: a random id is 32 characters, an app's own key is hashed if longer.
pub const MAX_SESSION_LEN: usize = 128;
/// Longest app-provided session key [`SessionId::from_external`] accepts.
pub const MAX_EXTERNAL_KEY_LEN: usize = 256;
/// Decimal digits of `u64::MAX`: the longest `seq`.
const MAX_SEQ_DIGITS: usize = 20;
/// Hex digits of a cursor's tag (64 bits).
const TAG_DIGITS: usize = 16;
/// Longest cursor on the wire; longer input is refused before it is scanned.
pub const MAX_CURSOR_LEN: usize = MAX_SESSION_LEN + 1 + MAX_SEQ_DIGITS + 1 + TAG_DIGITS;
/// Prefix of a session id derived from an app's key.
const KEYED_PREFIX: &str = "k_";
/// Bytes of the keyed hash kept in a key-derived session id (128 bits, as many as a random id).
const KEYED_BYTES: usize = 16;

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
    /// The cursor is not `<session>.<seq>.<tag>`.
    #[error("cursor is not <session>.<seq>.<tag>")]
    MissingSeparator,
    /// The tag is not 16 lowercase hex digits.
    #[error("cursor tag is not 16 lowercase hex digits")]
    InvalidTag,
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

/// A position in a session's event history as the client holds it: the event numbered `seq`
/// (the first event recorded in a session is 1, so `seq` 0 means "nothing delivered yet") and
/// the tag that proves this sidecar fleet wrote it for this client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The session the events belong to.
    pub session: SessionId,
    /// The sequence number of the last event the client has.
    pub seq: u64,
    /// SipHash of session, seq and binding under the [`CursorKey`]; see [`CursorKey::verify`].
    pub tag: u64,
}

impl Cursor {
    /// Parse a wire cursor (a `Last-Event-ID` header): three `.`-separated parts, the session
    /// validated, `seq` a canonical decimal `u64`, the tag 16 lowercase hex digits. Parsing says
    /// nothing about authenticity: that is [`CursorKey::verify`].
    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::CursorTooLong(text.len()));
        }
        let (rest, tag) = text.rsplit_once('.').ok_or(CursorError::MissingSeparator)?;
        let (session, seq) = rest.rsplit_once('.').ok_or(CursorError::MissingSeparator)?;
        let seq = parse_seq(seq)?;
        let session = SessionId::parse(session)?;
        Ok(Cursor {
            session,
            seq,
            tag: parse_tag(tag)?,
        })
    }
}

impl fmt::Display for Cursor {
    /// The wire form `<session>.<seq>.<tag>`, which [`Cursor::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{:016x}", self.session, self.seq, self.tag)
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Cursor::parse(text)
    }
}

/// What a stream's cursors are bound to: a keyed hash of the identity values of the request that
/// opened it (`--identity`: by default its `Authorization` header) and of its path.
/// A resume verifies the cursor against the binding of the resuming request, so only a client
/// presenting the same credentials for the same path continues the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding(u64);

/// The per-SseService secret behind cursor tags, bindings and key-derived session ids. Every pod
/// of one SseService derives the same one from the shared forwarding secret, so any pod verifies
/// any pod's cursors.
#[derive(Clone)]
pub struct CursorKey {
    sip: (u64, u64),
    ids: [u8; 32],
}

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// One HMAC-SHA256 output under `secret` for `label` (key separation).
fn derive(secret: &[u8], label: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

impl CursorKey {
    /// Derived from the SseService's shared secret (`--forward-key`).
    pub fn derive(secret: &[u8]) -> Self {
        let sip = derive(secret, "ssekeeper cursor tag v1");
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        Self {
            sip: (word(&sip[..8]), word(&sip[8..16])),
            ids: derive(secret, "ssekeeper session id v1"),
        }
    }

    /// A key of this process only (no shared secret): cursors verify on this pod alone.
    pub fn random() -> Self {
        Self::derive(&rand::random::<[u8; 32]>())
    }

    fn hasher(&self, domain: u8) -> SipHasher24 {
        let mut h = SipHasher24::new_with_keys(self.sip.0, self.sip.1);
        h.write_u8(domain);
        h
    }

    /// The binding of a request: each identity value (or its absence) in order, then the path.
    pub fn binding<'a>(
        &self,
        identity: impl IntoIterator<Item = Option<&'a str>>,
        path: &str,
    ) -> Binding {
        let mut h = self.hasher(b'b');
        for value in identity {
            match value {
                Some(v) => {
                    h.write_u8(1);
                    h.write_usize(v.len());
                    h.write(v.as_bytes());
                }
                None => h.write_u8(0),
            }
        }
        h.write_usize(path.len());
        h.write(path.as_bytes());
        Binding(h.finish())
    }

    /// The hash state of every tag of one stream: all but the seq, absorbed once.
    fn prefix(&self, session: &SessionId, binding: Binding) -> SipHasher24 {
        let mut h = self.hasher(b'c');
        h.write_usize(session.0.len());
        h.write(session.0.as_bytes());
        h.write_u64(binding.0);
        h
    }

    fn tag(&self, session: &SessionId, seq: u64, binding: Binding) -> u64 {
        finish_tag(self.prefix(session, binding), seq)
    }

    /// The cursor of event `seq` of `session` for a client bound by `binding`.
    pub fn cursor(&self, session: &SessionId, seq: u64, binding: Binding) -> Cursor {
        Cursor {
            session: session.clone(),
            seq,
            tag: self.tag(session, seq, binding),
        }
    }

    /// Whether `cursor` was written by this fleet for a client bound by `binding` (constant
    /// time is not needed: the tag is compared once per resume, never in a loop an attacker can
    /// time finely, and a mismatch costs a fresh stream).
    pub fn verify(&self, cursor: &Cursor, binding: Binding) -> bool {
        self.tag(&cursor.session, cursor.seq, binding) == cursor.tag
    }

    /// Write the wire cursor of event `seq` into `buf` (cleared first), reusing its allocation:
    /// the per-event path.
    pub fn write(&self, buf: &mut String, session: &SessionId, seq: u64, binding: Binding) {
        write_wire(buf, session.as_str(), seq, self.tag(session, seq, binding));
    }

    /// The session for a key the app chose (an MCP `sessionId`, a header, a cookie), which may
    /// hold any visible ASCII: `k_` and 32 hex digits of its keyed hash. Deterministic for one
    /// SseService, so every pod finds the same session; the key itself is never stored or shown.
    pub fn session_for_key(&self, key: &str) -> Result<SessionId, CursorError> {
        if key.is_empty() {
            return Err(CursorError::EmptyKey);
        }
        if key.len() > MAX_EXTERNAL_KEY_LEN {
            return Err(CursorError::KeyTooLong(key.len()));
        }
        if let Some(at) = key.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(CursorError::KeyCharacter(at));
        }
        let mac = derive(&self.ids, key);
        Ok(SessionId(format!(
            "{KEYED_PREFIX}{}",
            hex::encode(&mac[..KEYED_BYTES])
        )))
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

/// What writes one stream's cursors: the fleet's key and the stream's binding.
#[derive(Debug, Clone)]
pub struct Signer {
    /// The fleet's key.
    pub key: CursorKey,
    /// The stream's binding.
    pub binding: Binding,
}

impl Signer {
    /// The writer of one session's cursors, with what every tag of it shares hashed once: the
    /// per-event path of recording and replay.
    pub fn for_session(&self, session: &SessionId) -> SessionSigner {
        SessionSigner {
            prefix: self.key.prefix(session, self.binding),
            session: session.clone(),
            binding: self.binding,
        }
    }
}

/// Writes the cursors of one session for one binding (see [`Signer::for_session`]).
#[derive(Debug, Clone)]
pub struct SessionSigner {
    prefix: SipHasher24,
    session: SessionId,
    binding: Binding,
}

impl SessionSigner {
    /// The binding its cursors carry (a takeover's recorder keeps it).
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// The cursor of event `seq`.
    pub fn cursor(&self, seq: u64) -> Cursor {
        Cursor {
            session: self.session.clone(),
            seq,
            tag: finish_tag(self.prefix, seq),
        }
    }

    /// Write the wire cursor of event `seq` into `buf` (cleared first).
    pub fn write(&self, buf: &mut String, seq: u64) {
        write_wire(
            buf,
            self.session.as_str(),
            seq,
            finish_tag(self.prefix, seq),
        );
    }
}

/// The tag from a stream's hash prefix and the seq.
fn finish_tag(mut prefix: SipHasher24, seq: u64) -> u64 {
    prefix.write_u64(seq);
    prefix.finish()
}

/// `<session>.<seq>.<tag as 16 lowercase hex digits>` into `buf` (cleared first), without the
/// formatting machinery: this runs once per event.
fn write_wire(buf: &mut String, session: &str, seq: u64, tag: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.clear();
    buf.push_str(session);
    buf.push('.');
    buf.push_str(itoa::Buffer::new().format(seq));
    buf.push('.');
    let mut hex = [0u8; TAG_DIGITS];
    for (i, d) in hex.iter_mut().enumerate() {
        *d = HEX[((tag >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are ASCII.
    buf.push_str(std::str::from_utf8(&hex).expect("ASCII"));
}

/// A signer with a fixed key and the binding of an anonymous request for `/`, for unit tests.
#[cfg(test)]
pub(crate) fn test_signer() -> Signer {
    let key = CursorKey::derive(b"unit tests");
    let binding = key.binding([None], "/");
    Signer { key, binding }
}

/// `text` with the tag cut from every `id:` line's cursor, for comparing wire bytes in tests.
#[cfg(test)]
pub(crate) fn untag(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_prefix("id: ") {
            Some(v) if v.matches('.').count() == 2 => {
                let cut = v.rfind('.').expect("two dots");
                format!(
                    "id: {}{}",
                    &v[..cut],
                    if line.ends_with('\n') { "\n" } else { "" }
                )
            }
            _ => line.to_string(),
        })
        .collect()
}

/// Exactly 16 lowercase hex digits (one wire form per tag).
fn parse_tag(text: &str) -> Result<u64, CursorError> {
    let canonical = text.len() == TAG_DIGITS
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !canonical {
        return Err(CursorError::InvalidTag);
    }
    u64::from_str_radix(text, 16).map_err(|_| CursorError::InvalidTag)
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

    fn key() -> CursorKey {
        CursorKey::derive(b"per-service secret")
    }

    fn alice() -> Binding {
        key().binding([Some("Bearer alice"), None], "/events")
    }

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
        let s = SessionId::parse("abc_-9").unwrap();
        let c = key().cursor(&s, 42, alice());
        let text = c.to_string();
        assert!(text.starts_with("abc_-9.42."), "{text}");
        assert_eq!(text.len(), "abc_-9.42.".len() + 16);
        assert_eq!(Cursor::parse(&text), Ok(c.clone()));
        let mut buf = String::from("junk");
        key().write(&mut buf, &s, 42, alice());
        assert_eq!(buf, text);
        let per_session = Signer {
            key: key(),
            binding: alice(),
        }
        .for_session(&s);
        per_session.write(&mut buf, 42);
        assert_eq!(buf, text, "the per-session writer writes the same cursor");
        per_session.write(&mut buf, u64::MAX);
        assert_eq!(Cursor::parse(&buf).unwrap().seq, u64::MAX);
        assert!(key().verify(&Cursor::parse(&buf).unwrap(), alice()));
        assert_eq!(Cursor::parse("s.0.0000000000000000").unwrap().seq, 0);
    }

    #[test]
    fn only_the_binding_that_opened_a_stream_verifies_its_cursors() {
        let k = key();
        let s = SessionId::random();
        let c = k.cursor(&s, 7, alice());
        assert!(k.verify(&c, alice()));
        let bob = k.binding([Some("Bearer bob"), None], "/events");
        assert!(!k.verify(&c, bob), "another client's credentials");
        let other_path = k.binding([Some("Bearer alice"), None], "/admin");
        assert!(!k.verify(&c, other_path), "another path");
        let anonymous = k.binding([None, None], "/events");
        assert!(!k.verify(&c, anonymous));
        // An edited seq (replay everything: `.0`) does not verify.
        let edited = Cursor {
            seq: 0,
            ..c.clone()
        };
        assert!(!k.verify(&edited, alice()));
        // Another fleet's key does not verify it either.
        assert!(!CursorKey::derive(b"another service").verify(&c, alice()));
        // A value moved between identity sources is another identity.
        assert_ne!(
            k.binding([Some("x"), None], "/p"),
            k.binding([None, Some("x")], "/p")
        );
    }

    #[test]
    fn forged_cursors_are_typed_errors() {
        use CursorError::*;
        let tag = ".0123456789abcdef";
        let cases: Vec<(String, CursorError)> = vec![
            (String::new(), MissingSeparator),
            ("abc".into(), MissingSeparator),
            ("s.1".into(), MissingSeparator),
            (format!(".1{tag}"), EmptySession),
            (format!("a.b.1{tag}"), SessionCharacter(1)),
            (format!("a{{b}}.1{tag}"), SessionCharacter(1)),
            (format!("s.{tag}"), InvalidSeq),
            (format!("s.+1{tag}"), InvalidSeq),
            (format!("s.01{tag}"), InvalidSeq),
            (format!("s.18446744073709551616{tag}"), InvalidSeq),
            (format!("é.1{tag}"), SessionCharacter(0)),
            ("s.1.0123456789ABCDEF".into(), InvalidTag),
            ("s.1.0123456789abcde".into(), InvalidTag),
            ("s.1.".into(), InvalidTag),
        ];
        for (input, error) in cases {
            assert_eq!(Cursor::parse(&input), Err(error.clone()), "{input:?}");
        }
        let long = format!("{}.1{tag}", "a".repeat(MAX_SESSION_LEN + 1));
        assert_eq!(
            Cursor::parse(&long),
            Err(SessionTooLong(MAX_SESSION_LEN + 1))
        );
        let huge = "a".repeat(10_000);
        assert_eq!(Cursor::parse(&huge), Err(CursorTooLong(10_000)));
    }

    #[test]
    fn keys_become_keyed_hashes_never_themselves() {
        let k = key();
        let uuid = "0b9f6f8e-4c1a-4bb2-9a8e-2f1f6b0c9d11";
        let id = k.session_for_key(uuid).unwrap();
        assert!(id.as_str().starts_with("k_"));
        assert_eq!(id.as_str().len(), 2 + 32);
        assert!(!id.as_str().contains(uuid));
        assert_eq!(k.session_for_key(uuid).unwrap(), id, "deterministic");
        assert_ne!(
            CursorKey::derive(b"other").session_for_key(uuid).unwrap(),
            id,
            "per SseService"
        );
        assert_eq!(k.session_for_key(""), Err(CursorError::EmptyKey));
        assert_eq!(
            k.session_for_key(&"k".repeat(257)),
            Err(CursorError::KeyTooLong(257))
        );
        assert_eq!(k.session_for_key("a b"), Err(CursorError::KeyCharacter(1)));
        assert_eq!(
            k.session_for_key("a\u{7f}"),
            Err(CursorError::KeyCharacter(1))
        );
    }

    fn session_strategy() -> impl Strategy<Value = SessionId> {
        "[A-Za-z0-9_-]{1,128}".prop_map(|text| SessionId::parse(&text).unwrap())
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(session in session_strategy(), seq in any::<u64>(), tag in any::<u64>()) {
            let cursor = Cursor { session, seq, tag };
            prop_assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
        }

        #[test]
        fn parse_never_panics_and_accepted_input_displays_back(text in "\\PC{0,180}") {
            if let Ok(cursor) = Cursor::parse(&text) {
                prop_assert_eq!(cursor.to_string(), text);
            }
        }

        #[test]
        fn parse_near_valid_input(
            session in "[A-Za-z0-9_.{}+-]{0,130}",
            seq in "[0-9+-]{0,22}",
            tag in "[0-9a-fA-F]{0,17}",
        ) {
            let text = format!("{session}.{seq}.{tag}");
            if let Ok(cursor) = Cursor::parse(&text) {
                prop_assert_eq!(cursor.to_string(), text);
            }
        }

        #[test]
        fn keys_map_to_valid_ids_deterministically(key in "[!-~]{1,256}") {
            let k = super::tests::key();
            let id = k.session_for_key(&key).unwrap();
            prop_assert_eq!(SessionId::parse(id.as_str()), Ok(id.clone()));
            prop_assert_eq!(k.session_for_key(&key), Ok(id));
        }

        #[test]
        fn session_for_key_never_panics(key in "\\PC{0,300}") {
            if let Ok(id) = super::tests::key().session_for_key(&key) {
                prop_assert!(SessionId::parse(id.as_str()).is_ok());
            }
        }
    }
}
