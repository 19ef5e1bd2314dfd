//! An MCP SSE-transport client: open `/sse`, learn the `endpoint`, post messages there and match
//! each reply (which echoes the body) on the stream. It measures what the MCP failure reports are
//! about: replies that land on the wrong pod, requests that hang.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::sync::mpsc;

use ssekeeper_testkit::client::{
    EventSource, EventSourceConfig, EventSourceReport, Received, request,
};

use crate::demo::payload::McpReply;

/// How one POST fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostResult {
    /// 202, and the reply arrived on the stream after `reply_after`.
    Answered {
        /// Time from sending the POST to its reply arriving on the stream.
        reply_after: Duration,
    },
    /// 202, but no reply arrived on the stream within the bound.
    AcceptedNoReply,
    /// Any other status (404 = the session is gone: re-initialise).
    Status(u16),
    /// No response within the bound, or a network error.
    Failed(String),
}

/// One POST's record.
#[derive(Debug, Clone)]
pub struct PostRecord {
    /// The session it was sent to.
    pub session: String,
    /// How long the POST itself took.
    pub took: Duration,
    /// What happened.
    pub result: PostResult,
}

/// An open MCP session.
pub struct McpSession {
    /// The session id the server announced.
    pub session_id: String,
    /// Where to post.
    pub endpoint: String,
    stream: EventSource,
    replies: mpsc::UnboundedReceiver<Received>,
    /// Replies that arrived but whose POST has not been matched yet, by echo.
    pending: HashMap<String, Instant>,
    /// How often the server announced a new endpoint on the same stream (after a handover the
    /// new owner's app opens a new session there); the client follows it, as MCP SDKs do.
    pub endpoint_changes: usize,
}

/// Find `sessionId=` in an endpoint path.
pub fn session_of(endpoint: &str) -> Option<&str> {
    endpoint
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix("sessionId="))
}

impl McpSession {
    /// Open `/sse` (an EventSource that reconnects like any other) and wait for the endpoint.
    pub async fn open(
        target: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cfg = EventSourceConfig::new(target, "/sse");
        cfg.source_ip = source;
        cfg.tap = Some(tx);
        cfg.time_limit = Duration::from_secs(600);
        let stream = EventSource::spawn(cfg);
        let endpoint = tokio::time::timeout(timeout, async {
            while let Some(ev) = rx.recv().await {
                if ev.event.as_deref() == Some("endpoint") {
                    return Some(ev.data);
                }
            }
            None
        })
        .await;
        let Ok(Some(endpoint)) = endpoint else {
            stream.stop().await;
            return Err(format!("no endpoint event within {timeout:?}"));
        };
        let Some(session_id) = session_of(&endpoint).map(str::to_string) else {
            stream.stop().await;
            return Err(format!("endpoint without sessionId: {endpoint}"));
        };
        Ok(Self {
            session_id,
            endpoint,
            stream,
            replies: rx,
            pending: HashMap::new(),
            endpoint_changes: 0,
        })
    }

    /// POST `body` through `target` and wait (bounded) for its echo on the stream.
    pub async fn post(
        &mut self,
        target: SocketAddr,
        source: Option<IpAddr>,
        body: &str,
        timeout: Duration,
    ) -> PostRecord {
        while let Ok(ev) = self.replies.try_recv() {
            self.absorb(ev);
        }
        // The session this POST goes to (a new endpoint may arrive while it waits for the reply).
        let session = self.session_id.clone();
        let started = Instant::now();
        let reply = request(
            target,
            source,
            Method::POST,
            &self.endpoint,
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
            timeout,
            64 * 1024,
        )
        .await;
        let took = started.elapsed();
        let result = match reply {
            Err(e) => PostResult::Failed(e.to_string()),
            Ok(r) if r.status.as_u16() != 202 => PostResult::Status(r.status.as_u16()),
            Ok(_) => match self.await_reply(body, started, timeout).await {
                Some(at) => PostResult::Answered {
                    reply_after: at.saturating_duration_since(started),
                },
                None => PostResult::AcceptedNoReply,
            },
        };
        PostRecord {
            session,
            took,
            result,
        }
    }

    /// Take note of one stream event: a new endpoint is followed, a reply is remembered.
    /// Returns the reply's echo and arrival time.
    fn absorb(&mut self, ev: Received) -> Option<(String, Instant)> {
        match ev.event.as_deref() {
            Some("endpoint") => {
                if let Some(id) = session_of(&ev.data)
                    && id != self.session_id
                {
                    self.session_id = id.to_string();
                    self.endpoint = ev.data.clone();
                    self.endpoint_changes += 1;
                }
                None
            }
            Some("message") => {
                let reply = serde_json::from_str::<McpReply>(&ev.data).ok()?;
                self.pending.insert(reply.echo.clone(), ev.at);
                Some((reply.echo, ev.at))
            }
            _ => None,
        }
    }

    async fn await_reply(
        &mut self,
        body: &str,
        started: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        if let Some(at) = self.pending.remove(body) {
            return Some(at);
        }
        let deadline = tokio::time::Instant::from_std(started + timeout);
        loop {
            let ev = tokio::time::timeout_at(deadline, self.replies.recv())
                .await
                .ok()??;
            if let Some((echo, at)) = self.absorb(ev)
                && echo == body
            {
                self.pending.remove(body);
                return Some(at);
            }
        }
    }

    /// Close the stream and return what it saw.
    pub async fn close(self) -> EventSourceReport {
        self.stream.stop().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_is_read_from_the_endpoint() {
        assert_eq!(session_of("/messages?sessionId=abc"), Some("abc"));
        assert_eq!(session_of("/messages?x=1&sessionId=abc"), Some("abc"));
        assert_eq!(session_of("/messages"), None);
    }
}
