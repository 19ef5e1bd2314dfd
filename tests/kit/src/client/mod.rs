//! The HTTP and SSE client every test uses: real HTTP/1 over TCP, one fresh connection per
//! request, from a chosen source address when asked (so HAProxy's `balance source` spreads
//! clients the way it spreads real users), every step bounded in time.
//!
//! - [`request`] / [`fetch`]: one whole exchange (a result to inspect, or a test's assertion).
//! - [`Stream`]: one response read as SSE frame by frame, for tests that steer every reconnect
//!   themselves (collecting into a [`Log`]).
//! - [`EventSource`]: a client that behaves like a browser's, reconnecting with `Last-Event-ID`
//!   and recording everything it saw.

pub mod eventsource;
pub mod http;
pub mod stream;

pub use eventsource::{EventSource, EventSourceConfig, EventSourceReport, Outcome, Received};
pub use http::{HttpReply, fetch, request};
pub use stream::{Log, Read, Stream};

/// Why a client request failed (as opposed to being answered with an error status).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or bind failed.
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    /// The HTTP exchange failed (reset, malformed response ...).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// A bound on time was hit.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The response body exceeded the bound the caller set.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
}
