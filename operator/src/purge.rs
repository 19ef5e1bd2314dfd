//! The finalizer's Redis purge: one bounded attempt, using the contract's purge (the same key
//! layout and connections the sidecar writes with, `contract::keys`).

use std::time::Duration;

/// One purge attempt may take at most this long; the finalizer retries with backoff. Just above
/// the store's own purge deadline, so a large keyspace ends with the store's clean "incomplete"
/// answer rather than a cut-off scan.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(65);

/// Why one purge attempt failed (the finalizer retries, then gives up after its timeout).
#[derive(Debug, thiserror::Error)]
pub enum PurgeFailure {
    /// The purge itself failed (unreachable Redis, a deadline, a bad URL).
    #[error("store unavailable: {0}")]
    Store(#[from] ssekeeper_contract::redis::PurgeError),
    /// The attempt ran out of time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Delete every key of the SseService `namespace/name`; the number deleted, or why it failed.
pub async fn purge(url: &str, namespace: &str, name: &str) -> Result<u64, PurgeFailure> {
    // Boxed: the store's connect future is deep, and the reconcile future embeds this one.
    let attempt = Box::pin(ssekeeper_contract::redis::purge_service(
        url, namespace, name,
    ));
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(Ok(deleted)) => Ok(deleted),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(PurgeFailure::Timeout(ATTEMPT_TIMEOUT)),
    }
}
