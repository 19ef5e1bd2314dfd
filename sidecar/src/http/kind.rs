//! What kind of stream a proxied SSE response is, which decides how the drain may end it.
//!
//! Ending a stream is harmless only to a client that reconnects with `Last-Event-ID`. So:
//! - a **resumable** stream (a `GET` with no session of its own) is closed with a `retry:` hint
//!   during the drain window and resumed elsewhere;
//! - a **request** stream (the SSE response of any other method: an LLM completion, an MCP
//!   Streamable HTTP `POST`) is never closed by the drain: closing it means *cancel* to its client,
//!   so it finishes in place and is cut only at the request deadline;
//! - a **session** stream (a `GET` that carries a session key, or that announces one in an MCP
//!   `endpoint` event, or an MCP 2026-07-28 `subscriptions/listen` request) stays open until the
//!   calls in flight on its session are answered, and ends last with a clean close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use http::Method;

/// The header MCP 2026-07-28 clients name each request's method in, for intermediaries.
const MCP_METHOD: &str = "mcp-method";
/// The long-lived request whose stream carries a session's notifications (MCP 2026-07-28).
const LISTEN_METHOD: &str = "subscriptions/listen";

/// How the drain treats a stream (see the module doc for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Closed with a `retry:` hint during the drain window; the client resumes elsewhere.
    Resumable,
    /// Carries a session other requests are keyed to: ends once its calls are answered.
    Session,
    /// The response to one request: finishes in place, cut only at the request deadline.
    Request,
}

impl StreamKind {
    /// The kind of the stream answering a request with `method`, keyed (`keyed`: it names a
    /// session) or not.
    pub fn classify(method: &Method, keyed: bool) -> Self {
        if method != Method::GET {
            StreamKind::Request
        } else if keyed {
            StreamKind::Session
        } else {
            StreamKind::Resumable
        }
    }

    /// The kind of the stream answering this request: as [`StreamKind::classify`], except that
    /// an MCP 2026-07-28 `subscriptions/listen` request (named in its `Mcp-Method` header) opens
    /// a session stream: long-lived, it ends with a clean close once the drain window is over
    /// (its client re-issues it elsewhere) instead of holding the pod to the request deadline.
    pub fn of_request(method: &Method, headers: &http::HeaderMap, keyed: bool) -> Self {
        let listen = headers
            .get(MCP_METHOD)
            .is_some_and(|v| v.as_bytes() == LISTEN_METHOD.as_bytes());
        if listen {
            StreamKind::Session
        } else {
            Self::classify(method, keyed)
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Resumable => "resumable",
            StreamKind::Session => "session",
            StreamKind::Request => "request",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => StreamKind::Session,
            2 => StreamKind::Request,
            _ => StreamKind::Resumable,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            StreamKind::Resumable => 0,
            StreamKind::Session => 1,
            StreamKind::Request => 2,
        }
    }
}

/// A stream's kind, shared by the client stream and its recorder: a resumable stream becomes a
/// session stream once the app announces a session on it (the MCP `endpoint` event).
#[derive(Debug, Clone)]
pub struct KindCell(Arc<AtomicU8>);

impl KindCell {
    /// A stream of `kind`.
    pub fn new(kind: StreamKind) -> Self {
        KindCell(Arc::new(AtomicU8::new(kind.to_u8())))
    }

    /// The kind now.
    pub fn get(&self) -> StreamKind {
        StreamKind::from_u8(self.0.load(Ordering::Acquire))
    }

    /// The app announced a session on this stream: a resumable stream becomes a session stream
    /// (a request stream stays one: its client cannot resume either way).
    pub fn announce_session(&self) {
        let _ = self.0.compare_exchange(
            StreamKind::Resumable.to_u8(),
            StreamKind::Session.to_u8(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

impl Default for KindCell {
    fn default() -> Self {
        KindCell::new(StreamKind::Resumable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_and_a_session_key_decide() {
        use StreamKind::*;
        let cases = [
            (Method::GET, false, Resumable),
            (Method::GET, true, Session),
            (Method::POST, false, Request),
            (Method::POST, true, Request),
            (Method::PUT, false, Request),
            (Method::DELETE, true, Request),
        ];
        for (method, keyed, want) in cases {
            assert_eq!(
                StreamKind::classify(&method, keyed),
                want,
                "{method} keyed={keyed}"
            );
        }
    }

    #[test]
    fn an_mcp_listen_request_opens_a_session_stream() {
        let mut h = http::HeaderMap::new();
        assert_eq!(
            StreamKind::of_request(&Method::POST, &h, false),
            StreamKind::Request
        );
        h.insert(MCP_METHOD, http::HeaderValue::from_static("tools/call"));
        assert_eq!(
            StreamKind::of_request(&Method::POST, &h, false),
            StreamKind::Request
        );
        h.insert(
            MCP_METHOD,
            http::HeaderValue::from_static("subscriptions/listen"),
        );
        assert_eq!(
            StreamKind::of_request(&Method::POST, &h, false),
            StreamKind::Session
        );
    }

    #[test]
    fn an_announced_session_upgrades_only_a_resumable_stream() {
        let c = KindCell::new(StreamKind::Resumable);
        c.announce_session();
        assert_eq!(c.get(), StreamKind::Session);
        let r = KindCell::new(StreamKind::Request);
        r.announce_session();
        assert_eq!(r.get(), StreamKind::Request);
        for k in [
            StreamKind::Resumable,
            StreamKind::Session,
            StreamKind::Request,
        ] {
            assert_eq!(StreamKind::from_u8(k.to_u8()), k);
        }
    }
}
