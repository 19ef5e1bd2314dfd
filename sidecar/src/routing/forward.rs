//! Authenticating sidecar-to-sidecar forwarding.
//!
//! A pod that receives a request for a session another pod owns sends it to the owner's admin
//! port at `/internal/forward<original path>`. The admin port is reachable inside the cluster,
//! so the owner must only act on requests from sidecars of the same SseService: the sender signs
//! `method \n path \n timestamp` with the per-SseService key (HMAC-SHA256), and the owner accepts
//! only a valid signature whose timestamp is within the freshness window.

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::contract::paths::FORWARD;
use crate::metrics::ForwardOutcome;

/// Unix seconds at which the sender signed.
pub const TS_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forward-ts");
/// Hex HMAC-SHA256 of the signed string.
pub const SIG_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forward-sig");
/// The sending pod (for logs).
pub const BY_HEADER: HeaderName = HeaderName::from_static("x-ssekeeper-forwarded-by");

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
    /// The signature does not match.
    #[error("signature invalid")]
    Forged,
}

impl Rejection {
    /// Label for `forwards_total{outcome}`.
    pub fn kind(self) -> ForwardOutcome {
        match self {
            Rejection::Disabled => ForwardOutcome::Disabled,
            Rejection::Missing => ForwardOutcome::Missing,
            Rejection::Expired => ForwardOutcome::Expired,
            Rejection::Forged => ForwardOutcome::Forged,
        }
    }
}

fn mac(key: &[u8], method: &str, path: &str, ts: u64) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(ts.to_string().as_bytes());
    mac
}

/// The signature of a forwarded request.
pub fn sign(key: &[u8], method: &str, path: &str, ts: u64) -> String {
    hex::encode(mac(key, method, path, ts).finalize().into_bytes())
}

/// Add the signature headers for `method path` at `now` (unix seconds).
pub fn add_signature(
    headers: &mut HeaderMap,
    key: &[u8],
    method: &str,
    path: &str,
    now: u64,
    by: &str,
) {
    let sig = sign(key, method, path, now);
    headers.insert(TS_HEADER, HeaderValue::from(now));
    if let Ok(v) = HeaderValue::from_str(&sig) {
        headers.insert(SIG_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(by) {
        headers.insert(BY_HEADER, v);
    }
}

/// Check a forwarded request's signature, in constant time, against the freshness window.
pub fn verify(
    key: Option<&[u8]>,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    now: u64,
    max_skew_secs: u64,
) -> Result<(), Rejection> {
    let key = key.ok_or(Rejection::Disabled)?;
    let ts: u64 = headers
        .get(&TS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(Rejection::Missing)?;
    let sig = headers
        .get(&SIG_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .ok_or(Rejection::Missing)?;
    if now.abs_diff(ts) > max_skew_secs {
        return Err(Rejection::Expired);
    }
    mac(key, method, path, ts)
        .verify_slice(&sig)
        .map_err(|_| Rejection::Forged)
}

/// Remove the forwarding headers before the request reaches the app.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(&TS_HEADER);
    headers.remove(&SIG_HEADER);
    headers.remove(&BY_HEADER);
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

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
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

    #[test]
    fn signed_requests_verify_and_tampering_is_refused() {
        let key = b"secret";
        let mut h = HeaderMap::new();
        add_signature(&mut h, key, "POST", "/messages?sessionId=a", 1000, "pod-a");
        assert_eq!(
            verify(Some(key), "POST", "/messages?sessionId=a", &h, 1010, 30),
            Ok(())
        );
        assert_eq!(
            verify(Some(key), "POST", "/messages?sessionId=b", &h, 1010, 30),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(Some(key), "GET", "/messages?sessionId=a", &h, 1010, 30),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(
                Some(b"other"),
                "POST",
                "/messages?sessionId=a",
                &h,
                1010,
                30
            ),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(Some(key), "POST", "/messages?sessionId=a", &h, 1031, 30),
            Err(Rejection::Expired)
        );
        assert_eq!(
            verify(None, "POST", "/messages?sessionId=a", &h, 1010, 30),
            Err(Rejection::Disabled)
        );
        strip(&mut h);
        assert_eq!(
            verify(Some(key), "POST", "/messages?sessionId=a", &h, 1010, 30),
            Err(Rejection::Missing)
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
