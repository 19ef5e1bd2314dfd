//! The load client: real HTTP/1 over TCP from a chosen source address, so HAProxy's
//! `balance source` spreads clients the way it spreads real users.

pub mod eventsource;
pub mod http;
pub mod mcp;

pub use eventsource::{EventSource, EventSourceConfig, EventSourceReport, Outcome, Received};
pub use http::{HttpReply, request};

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
