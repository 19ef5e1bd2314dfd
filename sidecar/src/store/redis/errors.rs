//! How a Redis failure reaches the proxy: either the data is not ours (`Malformed`, do not retry)
//! or Redis cannot serve us right now (`Unavailable`, degrade and retry later).

use std::time::Duration;

use ::redis::{ErrorKind, RedisError};

use crate::store::StoreError;

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

/// Whether the connection that produced `e` should be thrown away rather than reused (the server
/// went away, or a failover demoted it).
pub(crate) fn is_connection_fault(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}
