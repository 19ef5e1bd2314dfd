//! One response read as SSE, frame by frame, remembering the last id like an EventSource; for
//! tests that open (and reopen, with `Last-Event-ID`) every stream themselves. Dropping a stream
//! closes its connection.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ClientError;
use super::http::{ConnGuard, build, send};
use crate::sse::{Event, Frame, Parser};

/// The event size bound of [`Stream::open`]: far above anything a test sends on purpose.
pub const MAX_EVENT_BYTES: usize = 16 << 20;
/// How long [`Stream::open`] gives the response head.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An open response being read as SSE.
#[derive(Debug)]
pub struct Stream {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    queued: VecDeque<Frame>,
    ended: bool,
    _conn: ConnGuard,
}

/// What one read of the body gave (see [`Stream::read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Bytes arrived; the frames they completed (maybe none) were appended.
    Data,
    /// The response ended: cleanly (`None`) or with this error.
    Ended(Option<String>),
    /// Nothing arrived in time.
    Silent,
}

impl Stream {
    /// `GET path` from `source` with `headers` (after `host`): bounded by `timeout` per step
    /// (connect, handshake, response head), events over `max_event_bytes` dropped.
    pub async fn connect(
        target: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
        headers: &[(&str, &str)],
        max_event_bytes: usize,
        timeout: Duration,
    ) -> Result<Stream, ClientError> {
        let req = build(target, Method::GET, path, headers, Bytes::new());
        Self::send_request(target, source, req, max_event_bytes, timeout).await
    }

    /// `POST path` with `body`: the SSE answer of a request (an LLM completion, an MCP call);
    /// panics without a response head within [`OPEN_TIMEOUT`].
    pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Stream {
        Self::post_with(addr, path, body, &[]).await
    }

    /// [`Stream::post`] with more headers (e.g. MCP's `Mcp-Method`).
    pub async fn post_with(
        addr: SocketAddr,
        path: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Stream {
        let mut headers = vec![
            ("accept", "text/event-stream"),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let req = build(
            addr,
            Method::POST,
            path,
            &headers,
            Bytes::from(body.to_string()),
        );
        let open = Self::send_request(addr, None, req, MAX_EVENT_BYTES, OPEN_TIMEOUT);
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| ClientError::Timeout(OPEN_TIMEOUT))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("POST {path} on {addr}: {e}"))
    }

    async fn send_request(
        target: SocketAddr,
        source: Option<IpAddr>,
        req: http::Request<http_body_util::Full<Bytes>>,
        max_event_bytes: usize,
        timeout: Duration,
    ) -> Result<Stream, ClientError> {
        let (resp, conn) = send(target, source, req, timeout).await?;
        Ok(Stream {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.into_body(),
            parser: Parser::new(max_event_bytes),
            queued: VecDeque::new(),
            ended: false,
            _conn: conn,
        })
    }

    /// Open `path` as an EventSource would (with `Last-Event-ID` when resuming); panics without
    /// a response head within [`OPEN_TIMEOUT`].
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Stream {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        Self::open_with(addr, path, &headers).await
    }

    /// Open with explicit headers; panics without a response head within [`OPEN_TIMEOUT`].
    pub async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
        let open = Self::connect(addr, None, path, headers, MAX_EVENT_BYTES, OPEN_TIMEOUT);
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| ClientError::Timeout(OPEN_TIMEOUT))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
    }

    /// Wait up to `wait` for the next piece of the body and parse it into `out`.
    pub async fn read(&mut self, wait: Duration, out: &mut Vec<Frame>) -> Read {
        let ended = match tokio::time::timeout(wait, self.body.frame()).await {
            Err(_) => return Read::Silent,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    self.parser.push(&data, out);
                }
                return Read::Data;
            }
            Ok(None) => None,
            Ok(Some(Err(e))) => Some(e.to_string()),
        };
        self.parser.finish();
        self.ended = true;
        Read::Ended(ended)
    }

    /// The next frame, `None` at the end of the response (or on a connection error); panics
    /// after `timeout` without one.
    pub async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.queued.pop_front() {
                return Some(f);
            }
            if self.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut out = Vec::new();
            let read = self.read(left, &mut out).await;
            assert!(read != Read::Silent, "no frame in time");
            self.queued.extend(out);
        }
    }

    /// Read into `log` until it holds `events` events or the response ends; returns whether
    /// the response ended. Panics when they do not arrive within `timeout`.
    pub async fn read_until(&mut self, log: &mut Log, events: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while log.events.len() < events {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {events} events in time",
                log.events.len()
            );
            match self.next(left).await {
                Some(f) => {
                    log.take(f);
                }
                None => return true,
            }
        }
        false
    }

    /// Read everything until the response ends; panics when it does not end within `timeout`.
    pub async fn read_to_end(&mut self, log: &mut Log, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the response did not end in time");
            match self.next(left).await {
                Some(f) => {
                    log.take(f);
                }
                None => return,
            }
        }
    }
}

/// What reading streams produced, across reconnects when a test keeps one log for several.
#[derive(Debug, Default)]
pub struct Log {
    /// Events in arrival order.
    pub events: Vec<Event>,
    /// `retry:` values in arrival order.
    pub retries: Vec<u64>,
    /// Comments in arrival order.
    pub comments: Vec<String>,
    /// The last event id seen (what a browser would send on reconnecting).
    pub last_id: Option<String>,
}

impl Log {
    /// The data of every event, in order.
    pub fn data(&self) -> Vec<String> {
        self.events.iter().map(|e| e.data.clone()).collect()
    }

    /// Append what a frame carries; returns whether it was an event.
    pub fn take(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::Event(e) => {
                if let Some(id) = &e.id {
                    self.last_id = Some(id.clone());
                }
                self.events.push(e);
                true
            }
            Frame::Retry(ms) => {
                self.retries.push(ms);
                false
            }
            Frame::Comment(c) => {
                self.comments.push(c);
                false
            }
            Frame::SetId(id) => {
                self.last_id = Some(id);
                false
            }
            Frame::Oversized => false,
        }
    }
}
