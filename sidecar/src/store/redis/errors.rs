//! How a Redis failure reaches the proxy: either the data is not ours (`Malformed`, do not retry)
//! or Redis cannot serve us right now (`Unavailable`, degrade and retry later).

use std::time::Duration;

use ::redis::{ErrorKind, RedisError};

use crate::contract::redis::PurgeError;
use crate::store::{StoreError, StoreResult};

/// Error code our Lua scripts raise when a key holds something this version never writes.
pub(crate) const MALFORMED_CODE: &str = "MALFORMED";

/// Classifies a client or server error.
pub(crate) fn from_redis(e: RedisError) -> StoreError {
    let code = e.code().unwrap_or("");
    let malformed = matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType)
        || code == "WRONGTYPE"
        || code == MALFORMED_CODE;
    if malformed {
        StoreError::Malformed(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

/// The call did not finish in time: Redis is down, partitioned or overloaded.
pub(crate) fn timed_out(what: &str, after: Duration) -> StoreError {
    StoreError::Unavailable(format!("{what} timed out after {} ms", after.as_millis()))
}

impl From<PurgeError> for StoreError {
    fn from(e: PurgeError) -> Self {
        match e {
            PurgeError::Redis(e) => from_redis(e),
            PurgeError::Malformed(_) => StoreError::Malformed(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Deletes every key of the SseService `namespace/name` (the contract's purge, in the store's
/// error terms): `Unavailable` when Redis cannot be reached, the deadline passed first (call
/// again) or the URL is invalid (the message says which).
pub async fn purge_service(url: &str, namespace: &str, name: &str) -> StoreResult<u64> {
    Ok(crate::contract::redis::purge_service(url, namespace, name).await?)
}
