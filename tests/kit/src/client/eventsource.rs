//! A client that behaves like a browser's `EventSource`: it reconnects after every close or
//! error, waits the server's `retry:` hint first, and sends `Last-Event-ID` with the last id it
//! saw on the wire. Everything it receives is recorded for verification. It is bounded in
//! connection attempts and wall time, and stops when told to.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{StatusCode, header};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::stream::{Read, Stream};
use crate::sse::Frame;

/// How one client behaves and where its bounds are.
#[derive(Debug, Clone)]
pub struct EventSourceConfig {
    /// The load balancer (or pod) to connect to.
    pub target: SocketAddr,
    /// Path and query, e.g. `/events`.
    pub path: String,
    /// Source address to bind (so `balance source` sees distinct clients).
    pub source_ip: Option<IpAddr>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// `Last-Event-ID` for the first connection (a client resuming from elsewhere).
    pub last_event_id: Option<String>,
    /// Reconnection delay until the server sends `retry:`.
    pub default_retry: Duration,
    /// Most connection attempts before giving up.
    pub max_connects: u32,
    /// Longest the client runs.
    pub time_limit: Duration,
    /// Bound on TCP connect + response headers.
    pub connect_timeout: Duration,
    /// A stream silent this long is dropped and reconnected (and counted as a stall).
    pub idle_timeout: Option<Duration>,
    /// Events larger than this are dropped by the parser (and counted).
    pub max_event_bytes: usize,
    /// An event of this type ends the client for good (finite streams end with `done`).
    pub stop_on_event: Option<String>,
    /// Every event is also sent here as it arrives.
    pub tap: Option<mpsc::UnboundedSender<Received>>,
}

impl EventSourceConfig {
    /// Defaults suited to the tests: browser-like retry, generous bounds.
    pub fn new(target: SocketAddr, path: impl Into<String>) -> Self {
        Self {
            target,
            path: path.into(),
            source_ip: None,
            headers: Vec::new(),
            last_event_id: None,
            default_retry: Duration::from_millis(1000),
            max_connects: 100,
            time_limit: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: None,
            max_event_bytes: 16 * 1024 * 1024,
            stop_on_event: None,
            tap: None,
        }
    }
}

/// One event as the client received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which connection (1-based attempt number) delivered it.
    pub conn: u32,
    /// The wire `id:` of this event, if it set one.
    pub id: Option<String>,
    /// The event type, if set.
    pub event: Option<String>,
    /// The data.
    pub data: String,
    /// When it arrived.
    pub at: Instant,
}

/// What became of one connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// A 200 `text/event-stream` response; the stream later ended or failed.
    Streamed {
        /// Events it delivered.
        events: usize,
        /// How it ended: `None` for a clean end of body, else the error.
        error: Option<String>,
    },
    /// Any other response (an EventSource would fail here; this client counts and retries).
    HttpStatus(u16),
    /// No response: connect refused, reset, timeout.
    Network(String),
}

/// One connection attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it started.
    pub at: Instant,
    /// The `Last-Event-ID` it sent.
    pub last_event_id: Option<String>,
    /// What happened.
    pub result: AttemptResult,
}

/// Why the client stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The `stop_on_event` event arrived.
    Finished,
    /// The caller stopped it.
    Stopped,
    /// `time_limit` passed.
    TimeLimit,
    /// `max_connects` attempts were used up.
    ConnectLimit,
}

/// Everything one client saw.
#[derive(Debug, Clone)]
pub struct EventSourceReport {
    /// Events in arrival order.
    pub events: Vec<Received>,
    /// Connection attempts in order.
    pub attempts: Vec<Attempt>,
    /// `retry:` values received.
    pub retries: Vec<u64>,
    /// Events dropped as oversized.
    pub oversized: u32,
    /// Streams dropped for silence.
    pub stalls: u32,
    /// Why it stopped.
    pub outcome: Outcome,
}

impl EventSourceReport {
    /// Connection attempts after the first.
    pub fn reconnects(&self) -> usize {
        self.attempts.len().saturating_sub(1)
    }

    /// Attempts answered with something other than an event stream.
    pub fn http_errors(&self) -> Vec<u16> {
        self.attempts
            .iter()
            .filter_map(|a| match a.result {
                AttemptResult::HttpStatus(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Attempts that got no response at all.
    pub fn network_errors(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| matches!(a.result, AttemptResult::Network(_)))
            .count()
    }
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Received>>,
}

/// A running client.
pub struct EventSource {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: JoinHandle<EventSourceReport>,
}

impl EventSource {
    /// Start a client; it runs until a bound, its stop event, or [`EventSource::stop`].
    pub fn spawn(cfg: EventSourceConfig) -> Self {
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(cfg, shared.clone(), cancel.clone()));
        Self {
            shared,
            cancel,
            task,
        }
    }

    /// Apply `f` to the events received so far (without copying them).
    pub fn with_events<T>(&self, f: impl FnOnce(&[Received]) -> T) -> T {
        f(&self.shared.events.lock().expect("events lock"))
    }

    /// Whether the client has stopped on its own (stop event or a bound).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stop and collect the report.
    pub async fn stop(self) -> EventSourceReport {
        self.cancel.cancel();
        self.join().await
    }

    /// Wait for the client to stop on its own and collect the report.
    pub async fn join(self) -> EventSourceReport {
        self.task.await.expect("client task never panics")
    }
}

enum ConnEnd {
    /// The stream ended or failed; reconnect.
    Reconnect,
    /// The stop event arrived.
    Finished,
}

struct State {
    cfg: EventSourceConfig,
    shared: Arc<Shared>,
    last_event_id: Option<String>,
    retry: Duration,
    attempts: Vec<Attempt>,
    retries: Vec<u64>,
    oversized: u32,
    stalls: u32,
}

async fn run(
    cfg: EventSourceConfig,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> EventSourceReport {
    let deadline = tokio::time::Instant::now() + cfg.time_limit;
    let mut st = State {
        last_event_id: cfg.last_event_id.clone(),
        retry: cfg.default_retry,
        cfg,
        shared,
        attempts: Vec::new(),
        retries: Vec::new(),
        oversized: 0,
        stalls: 0,
    };
    let outcome = loop {
        if st.attempts.len() >= st.cfg.max_connects as usize {
            break Outcome::ConnectLimit;
        }
        let end = tokio::select! {
            _ = cancel.cancelled() => break Outcome::Stopped,
            _ = tokio::time::sleep_until(deadline) => break Outcome::TimeLimit,
            end = connect_once(&mut st) => end,
        };
        if let ConnEnd::Finished = end {
            break Outcome::Finished;
        }
        tokio::select! {
            _ = cancel.cancelled() => break Outcome::Stopped,
            _ = tokio::time::sleep_until(deadline) => break Outcome::TimeLimit,
            _ = tokio::time::sleep(st.retry) => {}
        }
    };
    let events = std::mem::take(&mut *st.shared.events.lock().expect("events lock"));
    EventSourceReport {
        events,
        attempts: st.attempts,
        retries: st.retries,
        oversized: st.oversized,
        stalls: st.stalls,
        outcome,
    }
}

/// One connection: request, then read and record until the stream ends. The attempt is
/// recorded before any await that may be cancelled, and updated in place as it progresses.
async fn connect_once(st: &mut State) -> ConnEnd {
    st.attempts.push(Attempt {
        at: Instant::now(),
        last_event_id: st.last_event_id.clone(),
        result: AttemptResult::Network("cancelled before a response".into()),
    });
    let conn = st.attempts.len() as u32;
    let idx = st.attempts.len() - 1;
    let mut headers = vec![
        (header::ACCEPT.as_str(), "text/event-stream"),
        (header::CACHE_CONTROL.as_str(), "no-cache"),
    ];
    if let Some(id) = st.last_event_id.as_deref().filter(|id| !id.is_empty()) {
        headers.push(("last-event-id", id));
    }
    headers.extend(st.cfg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let opened = Stream::connect(
        st.cfg.target,
        st.cfg.source_ip,
        &st.cfg.path,
        &headers,
        st.cfg.max_event_bytes,
        st.cfg.connect_timeout,
    )
    .await;
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            st.attempts[idx].result = AttemptResult::Network(e.to_string());
            return ConnEnd::Reconnect;
        }
    };
    let is_sse = stream
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if stream.status != StatusCode::OK || !is_sse {
        st.attempts[idx].result = AttemptResult::HttpStatus(stream.status.as_u16());
        return ConnEnd::Reconnect;
    }
    st.attempts[idx].result = AttemptResult::Streamed {
        events: 0,
        error: None,
    };
    let mut frames = Vec::new();
    let mut count = 0usize;
    let idle = st
        .cfg
        .idle_timeout
        .unwrap_or(Duration::from_secs(24 * 3600));
    let error = loop {
        match stream.read(idle, &mut frames).await {
            Read::Silent => {
                st.stalls += 1;
                break Some(format!("silent for {idle:?}"));
            }
            Read::Ended(error) => break error,
            Read::Data => {}
        }
        let end = st.absorb(&mut frames, conn, &mut count);
        st.attempts[idx].result = AttemptResult::Streamed {
            events: count,
            error: None,
        };
        if let Some(end) = end {
            return end;
        }
    };
    let end = st.absorb(&mut frames, conn, &mut count);
    st.attempts[idx].result = AttemptResult::Streamed {
        events: count,
        error,
    };
    end.unwrap_or(ConnEnd::Reconnect)
}

impl State {
    /// Record parsed frames; `Some(Finished)` when the stop event arrived.
    fn absorb(&mut self, frames: &mut Vec<Frame>, conn: u32, count: &mut usize) -> Option<ConnEnd> {
        let mut finished = false;
        let now = Instant::now();
        for f in frames.drain(..) {
            match f {
                Frame::Event(e) => {
                    if let Some(id) = &e.id {
                        self.last_event_id = Some(id.clone());
                    }
                    finished |= self
                        .cfg
                        .stop_on_event
                        .as_deref()
                        .is_some_and(|s| e.event.as_deref() == Some(s));
                    let r = Received {
                        conn,
                        id: e.id,
                        event: e.event,
                        data: e.data,
                        at: now,
                    };
                    if let Some(tap) = &self.cfg.tap {
                        let _ = tap.send(r.clone());
                    }
                    self.shared.events.lock().expect("events lock").push(r);
                    *count += 1;
                }
                Frame::Retry(ms) => {
                    self.retries.push(ms);
                    self.retry = Duration::from_millis(ms);
                }
                // An id-only block moves the last event id, as in a browser.
                Frame::SetId(id) => self.last_event_id = Some(id),
                Frame::Comment(_) => {}
                Frame::Oversized => self.oversized += 1,
            }
        }
        finished.then_some(ConnEnd::Finished)
    }
}
