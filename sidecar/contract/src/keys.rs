//! Redis key layout. Every key of one SseService starts with [`keys::service_prefix`], so the
//! operator's finalizer can purge exactly that service's sessions, and every per-session key
//! carries the session in a `{hash tag}` so all of a session's keys land in one Redis Cluster slot.

/// Prefix shared by every key of the SseService `namespace/name`.
pub fn service_prefix(namespace: &str, name: &str) -> String {
    format!("ssekeeper:{namespace}/{name}:")
}

/// `SCAN MATCH` pattern for every key of one SseService. Kubernetes names contain no glob
/// characters, so the prefix needs no escaping.
pub fn service_pattern(namespace: &str, name: &str) -> String {
    format!("{}*", service_prefix(namespace, name))
}

/// A per-session key: `<prefix>{<session>}:<suffix>`. `session` must not contain `{` or `}`
/// (session ids are validated before they reach the store).
pub fn session_key(namespace: &str, name: &str, session: &str, suffix: &str) -> String {
    format!("{}{{{session}}}:{suffix}", service_prefix(namespace, name))
}

/// Prefix of the session id a broadcast path's stream is kept under.
pub const BROADCAST_SESSION_PREFIX: &str = "b_";

/// The session id of a broadcast path: `b_` and 32 hex digits of SHA-256 over the path. A hash,
/// not the path, because session ids are `[A-Za-z0-9_-]` (safe in a Cluster hash tag and a
/// cursor) and a path is not; every pod computes the same one, so the path's stream, lease and
/// epoch are the session keys under it: `<prefix>{b_<hash>}:events|epoch|lease|appid|marks`,
/// plus [`BROADCAST_TURN_SUFFIX`] and [`BROADCAST_TOKEN_SUFFIX`].
pub fn broadcast_session(path: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(path.as_bytes());
    format!("{BROADCAST_SESSION_PREFIX}{}", hex::encode(&digest[..16]))
}

/// Suffix of a broadcast's takeover turn (`SET NX PX`): the one pod that opens a second upstream
/// to take the path over from a draining holder, so the app never sees a third.
pub const BROADCAST_TURN_SUFFIX: &str = "turn";
/// Suffix of a broadcast's last applied holder batch (`<epoch>:<nonce>:<n>`): a retried append
/// whose first attempt was applied is not applied twice.
pub const BROADCAST_TOKEN_SUFFIX: &str = "btoken";

#[cfg(test)]
mod broadcast_tests {
    #[test]
    fn broadcast_sessions_are_stable_valid_ids() {
        let a = super::broadcast_session("/events/prices");
        assert_eq!(a, super::broadcast_session("/events/prices"));
        assert_ne!(a, super::broadcast_session("/events/prices2"));
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("b_"));
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
