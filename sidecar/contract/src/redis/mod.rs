//! Reaching the Redis a URL names, the same way on both sides: the sidecar records sessions
//! through it, the operator's finalizer purges a deleted service's sessions with it.
//!
//! - [`url`]: which deployment a URL names (single node, Sentinel, Cluster), checked before
//!   anything connects; the operator validates a Secret's value with the same parser.
//! - [`conn`]: connections to that deployment behind one interface.
//! - [`purge_service`]: removes every key of one SseService (see [`crate::keys`]).

pub mod conn;
mod purge;
pub mod url;

pub use self::purge::{PurgeError, purge_service};
pub use self::url::{RedisTarget, UrlError, parse as parse_url};
