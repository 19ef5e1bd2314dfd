//! Authenticating sidecar-to-sidecar forwarding.
//!
//! A pod that receives a request for a session another pod owns sends it to the owner's admin
//! port at `/internal/forward<original path>`. The admin port is reachable inside the cluster,
//! so the owner must only act on requests a sidecar of the same SseService sent it, once: the
//! sender signs (HMAC-SHA256, per-SseService key) the method, the path, a millisecond timestamp,
//! a random nonce, the destination pod, the SHA-256 of the body and the headers that decide
//! what the request means (`Authorization`, `Cookie`, `Last-Event-ID`, `Content-Type` and every
//! header the SseService's session keys and identity name). The owner accepts a valid signature
//! addressed to itself, at most [`FUTURE_SLACK_MS`] in its future and `max_age` in its past,
//! whose nonce it has not seen within that window ([`ReplayCache`]). A captured forward can
//! therefore not be replayed, re-addressed, or sent with another body or other credentials.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest as _, Sha256};

use crate::contract::SessionKeySource;
use crate::contract::paths::FORWARD;
use crate::metrics::ForwardOutcome;

/// Unix milliseconds at which the sender signed.
pub const TS_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forward-ts");
/// Hex HMAC-SHA256 of the signed string.
pub const SIG_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forward-sig");
/// 128 random bits, hex: what makes each forward single-use.
pub const NONCE_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forward-nonce");
/// The pod the forward is addressed to (its name).
pub const TO_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forward-to");
/// The sending pod (for logs).
pub const BY_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forwarded-by");
/// Prefix of every header the sidecars use between themselves: stripped from what clients
/// send, so no client can pose as a sidecar to the app.
pub const INTERNAL_PREFIX: &str = "x-ssekeeper-";
/// How far in the receiver's future a timestamp may be (clock skew between nodes).
pub const FUTURE_SLACK_MS: u64 = 1_000;
/// Largest body a forward carries (it is hashed before it is sent): keyed requests are small
/// (MCP messages); a larger one is answered `413` by the sending pod.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Nonces remembered at once; beyond, forwards are refused until old ones expire.
pub const REPLAY_CACHE_ENTRIES: usize = 65_536;

/// Why a forwarded request was refused (403); each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// This sidecar has no forwarding key: forwarding is off.
    #[error("forwarding is disabled")]
    Disabled,
    /// The signature headers are missing or unreadable.
    #[error("missing signature")]
    Missing,
    /// The timestamp is outside the freshness window.
    #[error("signature expired")]
    Expired,
    /// The signature does not match (or the forward is addressed to another pod).
    #[error("signature invalid")]
    Forged,
    /// This nonce was seen already: a replay.
    #[error("forward replayed")]
    Replayed,
}

impl Rejection {
    /// Label for `forwards_total{outcome}`.
    pub fn kind(self) -> ForwardOutcome {
        match self {
            Rejection::Disabled => ForwardOutcome::Disabled,
            Rejection::Missing => ForwardOutcome::Missing,
            Rejection::Expired => ForwardOutcome::Expired,
            Rejection::Forged => ForwardOutcome::Forged,
            Rejection::Replayed => ForwardOutcome::Replayed,
        }
    }
}

/// The headers whose values a forward's signature covers, in a fixed order: what decides
/// whose request it is and what it means.
pub fn signed_headers(
    session_keys: &[SessionKeySource],
    identity: &[SessionKeySource],
) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = ["authorization", "cookie", "last-event-id", "content-type"]
        .into_iter()
        .map(HeaderName::from_static)
        .collect();
    for source in session_keys.iter().chain(identity) {
        if let SessionKeySource::Header(n) = source
            && let Ok(name) = HeaderName::from_bytes(n.as_bytes())
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// What a forward's signature covers.
#[derive(Debug, Clone)]
pub struct Signed<'a> {
    /// The method.
    pub method: &'a str,
    /// The original path and query.
    pub path: &'a str,
    /// Unix milliseconds at signing.
    pub ts_ms: u64,
    /// The nonce, hex.
    pub nonce: &'a str,
    /// The destination pod's name.
    pub to: &'a str,
    /// SHA-256 of the body.
    pub body_sha256: [u8; 32],
}

fn mac(key: &[u8], s: &Signed<'_>, headers: &HeaderMap, names: &[HeaderName]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(b"ssekeeper forward v2");
    field(s.method.as_bytes());
    field(s.path.as_bytes());
    field(s.ts_ms.to_string().as_bytes());
    field(s.nonce.as_bytes());
    field(s.to.as_bytes());
    field(&s.body_sha256);
    for name in names {
        field(name.as_str().as_bytes());
        let values: Vec<&[u8]> = headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        field(&(values.len() as u64).to_be_bytes());
        for v in values {
            field(v);
        }
    }
    mac
}

/// SHA-256 of a body.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The signature of a forward.
pub fn sign(key: &[u8], s: &Signed<'_>, headers: &HeaderMap, names: &[HeaderName]) -> String {
    hex::encode(mac(key, s, headers, names).finalize().into_bytes())
}

/// A fresh nonce (128 random bits, hex).
pub fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Sign a forward of `method path` with `body_sha256` to pod `to`, now, from pod `by`: adds the
/// timestamp, nonce, destination and signature headers (the signed headers are read from
/// `headers` as they are).
pub fn add_signature(
    headers: &mut HeaderMap,
    key: &[u8],
    names: &[HeaderName],
    forward: (&str, &str, [u8; 32]),
    to: &str,
    by: &str,
) {
    let (method, path, body_sha256) = forward;
    let nonce = nonce();
    let s = Signed {
        method,
        path,
        ts_ms: unix_millis(),
        nonce: &nonce,
        to,
        body_sha256,
    };
    let sig = sign(key, &s, headers, names);
    headers.insert(TS_HEADER, HeaderValue::from(s.ts_ms));
    for (name, value) in [
        (NONCE_HEADER, nonce.as_str()),
        (SIG_HEADER, &sig),
        (TO_HEADER, to),
        (BY_HEADER, by),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
}

/// What a receiver checks a forward against.
pub struct Check<'a> {
    /// The SseService's key (`None`: forwarding is off).
    pub key: Option<&'a [u8]>,
    /// The headers the signature covers.
    pub names: &'a [HeaderName],
    /// This pod's name: a forward addressed to another pod is refused.
    pub me: &'a str,
    /// Unix milliseconds now.
    pub now_ms: u64,
    /// The oldest a forward may be, in milliseconds.
    pub max_age_ms: u64,
}

/// Check a forwarded request (its signature in constant time, its age, its addressee), then
/// remember its nonce: a second use is [`Rejection::Replayed`].
pub fn verify(
    check: &Check<'_>,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body_sha256: [u8; 32],
    seen: &ReplayCache,
) -> Result<(), Rejection> {
    let key = check.key.ok_or(Rejection::Disabled)?;
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig), Some(nonce), Some(to)) = (
        text(&TS_HEADER).and_then(|v| v.parse::<u64>().ok()),
        text(&SIG_HEADER).and_then(|v| hex::decode(v).ok()),
        text(&NONCE_HEADER),
        text(&TO_HEADER),
    ) else {
        return Err(Rejection::Missing);
    };
    if ts > check.now_ms + FUTURE_SLACK_MS || check.now_ms.saturating_sub(ts) > check.max_age_ms {
        return Err(Rejection::Expired);
    }
    let s = Signed {
        method,
        path,
        ts_ms: ts,
        nonce,
        to,
        body_sha256,
    };
    mac(key, &s, headers, check.names)
        .verify_slice(&sig)
        .map_err(|_| Rejection::Forged)?;
    if to != check.me {
        return Err(Rejection::Forged);
    }
    seen.first_use(nonce, ts + check.max_age_ms + FUTURE_SLACK_MS, check.now_ms)
}

/// Nonces of accepted forwards until their timestamps leave the window (after that the age
/// check refuses them anyway). Bounded: when full of live nonces, forwards are refused as
/// replays until some expire, rather than forgetting one that could then be replayed.
#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<Nonces>,
}

#[derive(Default)]
struct Nonces {
    set: HashSet<String>,
    by_expiry: VecDeque<(u64, String)>,
}

impl ReplayCache {
    /// Record `nonce` (valid until `expires_ms`); `Replayed` if it was seen, or if the cache is
    /// full of nonces still valid at `now_ms`.
    pub fn first_use(&self, nonce: &str, expires_ms: u64, now_ms: u64) -> Result<(), Rejection> {
        let mut n = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while n.by_expiry.front().is_some_and(|(t, _)| *t < now_ms) {
            if let Some((_, old)) = n.by_expiry.pop_front() {
                n.set.remove(&old);
            }
        }
        if n.set.contains(nonce) || n.set.len() >= REPLAY_CACHE_ENTRIES {
            return Err(Rejection::Replayed);
        }
        n.set.insert(nonce.to_string());
        // Expiries are nearly in order (timestamps of forwards as they arrive); an early one
        // behind a later one only lives a little longer.
        n.by_expiry.push_back((expires_ms, nonce.to_string()));
        Ok(())
    }
}

/// Remove the forwarding headers before the request reaches the app; from a client's request,
/// every header of the sidecars' own (a client must not pose as a sidecar).
pub fn strip(headers: &mut HeaderMap) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(INTERNAL_PREFIX))
        .cloned()
        .collect();
    for k in internal {
        headers.remove(&k);
    }
}

/// The admin path a request for `path` is forwarded to.
pub fn forward_path(path: &str) -> String {
    format!("{FORWARD}{path}")
}

/// The original path of a forwarded request, or `None` if the path is not a forward.
pub fn original_path(forwarded: &str) -> Option<String> {
    let rest = forwarded.strip_prefix(FORWARD)?;
    if rest.is_empty() {
        Some("/".to_string())
    } else if rest.starts_with('/') {
        Some(rest.to_string())
    } else if rest.starts_with('?') {
        Some(format!("/{rest}"))
    } else {
        None
    }
}

/// Unix milliseconds now.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn names() -> Vec<HeaderName> {
        signed_headers(&[SessionKeySource::Header("Mcp-Session-Id".into())], &[])
    }

    fn signed(body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("alice"));
        h.insert("mcp-session-id", HeaderValue::from_static("s-1"));
        add_signature(
            &mut h,
            b"secret",
            &names(),
            ("POST", "/mcp", body_digest(body)),
            "pod-b",
            "pod-a",
        );
        h
    }

    fn check<'a>(key: Option<&'a [u8]>, names: &'a [HeaderName], now_ms: u64) -> Check<'a> {
        Check {
            key,
            names,
            me: "pod-b",
            now_ms,
            max_age_ms: 5_000,
        }
    }

    #[test]
    fn a_forward_verifies_once_and_nothing_it_covers_can_change() {
        let n = names();
        let h = signed(b"{}");
        // The receiver's clock reads the signing instant: the window edges below are exact.
        let now: u64 = h[&TS_HEADER].to_str().unwrap().parse().unwrap();
        let ok = |h: &HeaderMap, method, path, body: &[u8], seen: &ReplayCache| {
            verify(
                &check(Some(b"secret"), &n, now),
                method,
                path,
                h,
                body_digest(body),
                seen,
            )
        };
        let seen = ReplayCache::default();
        assert_eq!(ok(&h, "POST", "/mcp", b"{}", &seen), Ok(()));
        assert_eq!(
            ok(&h, "POST", "/mcp", b"{}", &seen),
            Err(Rejection::Replayed),
            "a replay"
        );
        let fresh = ReplayCache::default;
        assert_eq!(
            ok(&h, "POST", "/mcp", b"{\"x\":1}", &fresh()),
            Err(Rejection::Forged),
            "another body"
        );
        assert_eq!(
            ok(&h, "GET", "/mcp", b"{}", &fresh()),
            Err(Rejection::Forged),
            "another method"
        );
        assert_eq!(
            ok(&h, "POST", "/other", b"{}", &fresh()),
            Err(Rejection::Forged),
            "another path"
        );
        for (name, value) in [("authorization", "bob"), ("mcp-session-id", "s-2")] {
            let mut t = h.clone();
            t.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            assert_eq!(
                ok(&t, "POST", "/mcp", b"{}", &fresh()),
                Err(Rejection::Forged),
                "another {name}"
            );
        }
        let mut t = h.clone();
        t.append("authorization", HeaderValue::from_static("bob"));
        assert_eq!(
            ok(&t, "POST", "/mcp", b"{}", &fresh()),
            Err(Rejection::Forged),
            "an added value"
        );
        // Re-addressed to another pod (the signed destination no longer matches the receiver).
        let other_pod = Check {
            me: "pod-c",
            ..check(Some(b"secret"), &n, now)
        };
        assert_eq!(
            verify(&other_pod, "POST", "/mcp", &h, body_digest(b"{}"), &fresh()),
            Err(Rejection::Forged)
        );
        let wrong_key = check(Some(b"other"), &n, now);
        assert_eq!(
            verify(&wrong_key, "POST", "/mcp", &h, body_digest(b"{}"), &fresh()),
            Err(Rejection::Forged)
        );
        let late = check(Some(b"secret"), &n, now + 5_001);
        assert_eq!(
            verify(&late, "POST", "/mcp", &h, body_digest(b"{}"), &fresh()),
            Err(Rejection::Expired)
        );
        let early = check(Some(b"secret"), &n, now - FUTURE_SLACK_MS - 1);
        assert_eq!(
            verify(&early, "POST", "/mcp", &h, body_digest(b"{}"), &fresh()),
            Err(Rejection::Expired)
        );
        assert_eq!(
            verify(
                &check(None, &n, now),
                "POST",
                "/mcp",
                &h,
                body_digest(b"{}"),
                &fresh()
            ),
            Err(Rejection::Disabled)
        );
        let mut bare = h.clone();
        strip(&mut bare);
        assert!(
            bare.keys()
                .all(|k| !k.as_str().starts_with(INTERNAL_PREFIX))
        );
        assert_eq!(
            ok(&bare, "POST", "/mcp", b"{}", &fresh()),
            Err(Rejection::Missing)
        );
    }

    #[test]
    fn the_replay_cache_forgets_expired_nonces_and_never_a_live_one() {
        let c = ReplayCache::default();
        assert_eq!(c.first_use("a", 100, 0), Ok(()));
        assert_eq!(c.first_use("a", 100, 50), Err(Rejection::Replayed));
        assert_eq!(
            c.first_use("a", 300, 200),
            Ok(()),
            "expired: the age check guards it"
        );
    }

    #[test]
    fn forward_paths_round_trip() {
        assert_eq!(forward_path("/m?x=1"), "/internal/forward/m?x=1");
        assert_eq!(
            original_path("/internal/forward/m?x=1").as_deref(),
            Some("/m?x=1")
        );
        assert_eq!(original_path("/internal/forward").as_deref(), Some("/"));
        assert_eq!(original_path("/internal/forward?q").as_deref(), Some("/?q"));
        assert_eq!(original_path("/internal/forwardx"), None);
        assert_eq!(original_path("/ready"), None);
    }
}
