//! A tiny SSE app for the tests, on 127.0.0.1: a deterministic event feed that honours
//! `Last-Event-ID` (several app instances share one feed, like replicas sharing a backend),
//! plain endpoints, an MCP-like SSE transport and Streamable-HTTP session, a firehose and a
//! malformed stream.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type AppBody = UnsyncBoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> AppBody {
    Full::new(text.into()).boxed_unsync()
}

/// Feeds shared by app instances: a feed's event `k` is due at `t0 + k * interval`.
#[derive(Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<String, Instant>>,
}

impl Feeds {
    fn t0(&self, name: &str) -> Instant {
        *self
            .feeds
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(Instant::now)
    }
}

/// One running app instance.
pub struct TestApp {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests seen, as "METHOD path [last-event-id]".
    pub seen: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct AppState {
    name: String,
    feeds: Arc<Feeds>,
    mcp_sessions: Arc<Mutex<HashSet<String>>>,
    /// MCP sessions that answer on their stream (`/mcp-sse` + `/rpc`): the stream's sender.
    rpc_streams: Arc<Mutex<HashMap<String, mpsc::Sender<Bytes>>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl TestApp {
    /// Start an instance named `name` serving the shared `feeds`.
    pub async fn start(name: &str, feeds: Arc<Feeds>) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = AppState {
            name: name.to_string(),
            feeds,
            mcp_sessions: Arc::default(),
            rpc_streams: Arc::default(),
            seen: seen.clone(),
        };
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                };
                let state = state.clone();
                let conn_stop = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(state, req).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.cancelled() => {}
                    }
                });
            }
        });
        TestApp {
            addr,
            name: name.to_string(),
            seen,
            stop,
        }
    }

    /// Stop accepting and drop every connection (the app "crashes").
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn sse(body: AppBody) -> Response<AppBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap()
}

fn channel_body() -> (mpsc::Sender<Bytes>, AppBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    (tx, StreamBody::new(stream).boxed_unsync())
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn route(state: AppState, req: Request<Incoming>) -> Response<AppBody> {
    let lei = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.seen.lock().unwrap().push(format!(
        "{} {} {}",
        req.method(),
        req.uri(),
        lei.clone().unwrap_or_default()
    ));
    let path = req.uri().path().to_string();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/events") => events(&state, &req, lei),
        ("GET", "/plain") => Response::builder()
            .header("x-app-name", state.name.as_str())
            .header("content-length", "6")
            .body(full("hello\n"))
            .unwrap(),
        ("POST", "/echo") => {
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let secret = req.headers().contains_key("x-secret");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .header("x-seen-xff", xff)
                .header("x-seen-secret", secret.to_string())
                .header("x-app-name", state.name.as_str())
                .body(full(body))
                .unwrap()
        }
        ("GET", "/mixed") => {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let parts: [&[u8]; 5] = [
                    b": keep-alive\n\n",
                    b"retry: 1500\n\n",
                    b"id: a1\nevent: greet\ndata: line one\ndata: line two\n\n",
                    b"data: no id here\n\n",
                    b"id: a2\r\ndata: crlf\r\n\r\n",
                ];
                for p in parts {
                    if tx.send(Bytes::from_static(p)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            sse(body)
        }
        ("GET", "/sse") => {
            let id = format!("{:032x}", rand::random::<u128>());
            state.mcp_sessions.lock().unwrap().insert(id.clone());
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let ev = format!("event: endpoint\ndata: /messages?sessionId={id}\n\n");
                if tx.send(Bytes::from(ev)).await.is_err() {
                    return;
                }
                for _ in 0..600 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                        return;
                    }
                }
            });
            sse(body)
        }
        // The MCP SSE transport as the SDKs run it: `POST /rpc` is answered `202` (after
        // `delay` ms of work), and its reply `reply <n>` follows as an event on the session's
        // stream a moment later. The session lives only in this instance and its stream.
        ("GET", "/mcp-sse") => {
            let id = format!("{:032x}", rand::random::<u128>());
            let (tx, body) = channel_body();
            let ev = format!("event: endpoint\ndata: /rpc?sessionId={id}\n\n");
            let _ = tx.try_send(Bytes::from(ev));
            state.rpc_streams.lock().unwrap().insert(id, tx);
            sse(body)
        }
        ("POST", "/rpc") => {
            let tx = query(&req, "sessionId")
                .and_then(|s| state.rpc_streams.lock().unwrap().get(&s).cloned())
                .filter(|tx| !tx.is_closed());
            let Some(tx) = tx else {
                return Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(full("unknown session\n"))
                    .unwrap();
            };
            let n = query(&req, "n").unwrap_or_default();
            let delay = query(&req, "delay")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ev = format!("event: message\ndata: reply {n}\n\n");
                let _ = tx.send(Bytes::from(ev)).await;
            });
            Response::builder()
                .status(StatusCode::ACCEPTED)
                .header("x-app-name", state.name.as_str())
                .body(full("accepted\n"))
                .unwrap()
        }
        ("POST", "/messages") => {
            let known = query(&req, "sessionId")
                .is_some_and(|s| state.mcp_sessions.lock().unwrap().contains(&s));
            if known {
                Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .header("x-app-name", state.name.as_str())
                    .body(full(format!("accepted by {}\n", state.name)))
                    .unwrap()
            } else {
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header("x-app-name", state.name.as_str())
                    .body(full("unknown session\n"))
                    .unwrap()
            }
        }
        ("POST", "/mcp") => {
            match req
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                None => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    state.mcp_sessions.lock().unwrap().insert(id.clone());
                    Response::builder()
                        .header("mcp-session-id", id)
                        .header("content-type", "application/json")
                        .body(full("{\"result\":\"initialized\"}"))
                        .unwrap()
                }
                Some(id) if state.mcp_sessions.lock().unwrap().contains(id) => Response::builder()
                    .header("x-app-name", state.name.as_str())
                    .body(full(format!("ok from {}\n", state.name)))
                    .unwrap(),
                Some(_) => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(full("unknown session\n"))
                    .unwrap(),
            }
        }
        ("GET", "/firehose") => {
            let size: usize = query(&req, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1000);
            let count: u64 = query(&req, "count")
                .and_then(|s| s.parse().ok())
                .unwrap_or(20_000);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let data = "x".repeat(size);
                for i in 1..=count {
                    let ev = format!("id: {i}\ndata: {data}\n\n");
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        return;
                    }
                }
            });
            sse(body)
        }
        ("GET", "/garbage") => {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let mut huge = vec![b'a'; 3 << 20];
                huge.splice(0..0, b"data: ".iter().copied());
                let chunks: Vec<Bytes> = vec![
                    Bytes::from_static(b"\xff\xfe\x00garbage\x00\n"),
                    Bytes::from_static(b"id: bad\x00id\ndata: nul id\n\n"),
                    Bytes::from(huge),
                    Bytes::from_static(b"\n\nretry: abc\nevent\n:\n\n"),
                    Bytes::from_static(b"id: 1\ndata: ok\n\n"),
                ];
                for c in chunks {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
            });
            sse(body)
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("no such path\n"))
            .unwrap(),
    }
}

/// `/events?feed=F&interval_ms=I&total=N`: event `k` (`id: k`, `data: event k`) is due at
/// `t0(F) + k*I`. Without `Last-Event-ID` the stream starts at the next due event; with
/// `Last-Event-ID: k` it replays from `k+1` at once. After event `N` the response ends.
fn events(state: &AppState, req: &Request<Incoming>, lei: Option<String>) -> Response<AppBody> {
    let feed = query(req, "feed").unwrap_or_else(|| "default".into());
    let interval = Duration::from_millis(
        query(req, "interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let total: Option<u64> = query(req, "total").and_then(|v| v.parse().ok());
    let t0 = state.feeds.t0(&feed);
    let current = (t0.elapsed().as_nanos() / interval.as_nanos().max(1)) as u64;
    let start = match lei.as_deref().and_then(|v| v.parse::<u64>().ok()) {
        Some(k) => k + 1,
        None => current + 1,
    };
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut k = start;
        loop {
            if total.is_some_and(|n| k > n) {
                return;
            }
            let due = t0 + interval * (k as u32);
            tokio::time::sleep_until(due.into()).await;
            let ev = format!("id: {k}\ndata: event {k}\n\n");
            if tx.send(Bytes::from(ev)).await.is_err() {
                return;
            }
            k += 1;
        }
    });
    sse(body)
}
