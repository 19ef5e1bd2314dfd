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
