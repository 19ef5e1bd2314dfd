//! A test SSE client: one HTTP/1 connection per stream, parsed with the sidecar's own codec,
//! remembering the last id like an EventSource. Dropping a stream closes its connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ssekeeper_sidecar::sse::{Event, Frame, SseParser};
use tokio::net::TcpStream;

/// An open response being read as SSE.
pub struct Stream {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    body: Incoming,
    parser: SseParser,
    queued: std::collections::VecDeque<Frame>,
    ended: bool,
}

/// What reading a stream produced.
#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<Event>,
    pub retries: Vec<u64>,
    pub comments: Vec<String>,
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

/// Send a request on a fresh connection; the response body streams.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = match body {
        Some(text) => b
            .body(Full::new(Bytes::from(text.to_string())).boxed())
            .unwrap(),
        None => b
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap(),
    };
    sender.send_request(req).await.expect("response")
}

/// A complete non-streaming response: status, headers, body text.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        request(addr, method, path, headers, body),
    )
    .await
    .expect("response in time");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body in time")
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
        .unwrap_or_default();
    (status, headers, body)
}

impl Stream {
    /// Open `path` as an EventSource would (with `Last-Event-ID` when resuming).
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Stream {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        Self::open_with(addr, path, &headers).await
    }

    /// Open with explicit headers.
    pub async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            request(addr, "GET", path, headers, None),
        )
        .await
        .expect("stream response in time");
        Stream {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.into_body(),
            parser: SseParser::new(16 << 20),
            queued: Default::default(),
            ended: false,
        }
    }

    /// The next frame, `None` at the end of the response (or on a connection error), panics
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
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .expect("no frame in time");
            let mut out = Vec::new();
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.parser.push(&data, &mut out);
                    }
                }
                _ => {
                    self.parser.finish(&mut out);
                    self.ended = true;
                }
            }
            self.queued.extend(out);
        }
    }

    /// Read into `log` until it holds `events` events or the response ends; returns whether
    /// the response ended.
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

    /// Read everything until the response ends.
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

/// `event 1`, `event 2`, ... `event n` after `from`.
pub fn expected(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|k| format!("event {k}")).collect()
}

/// Assert a received sequence is `event a, event a+1, ...` with no gap and no duplicate, and
/// return the first number.
pub fn assert_contiguous(data: &[String]) -> u64 {
    assert!(!data.is_empty(), "no events");
    let nums: Vec<u64> = data
        .iter()
        .map(|d| {
            d.strip_prefix("event ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("odd event {d:?}"))
        })
        .collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap or duplicate in {nums:?}");
    }
    nums[0]
}
