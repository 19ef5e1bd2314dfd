//! The fake SSE app the proxy is tested against, in process on 127.0.0.1: a deterministic event
//! feed that honours `Last-Event-ID` (app instances share one feed, like replicas sharing a
//! backend), plain endpoints, the MCP shapes (an SSE transport whose replies do not use the
//! stream, one whose replies do, and a Streamable-HTTP session), and the heavy and malformed
//! streams of [`testing`].
//!
//! Every instance records the requests it saw, so a test can tell which instance served what.

pub mod serve;
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::serve::{Body, Ending, body, query_param};
use crate::sse;

/// Feeds shared by app instances: a feed's event `k` is due at `t0 + k * interval`, `t0` being
/// when any instance first served the feed. Instances sharing one `Feeds` stream one sequence.
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

/// One running app instance; dropping it stops it like [`TestApp::kill`].
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (the `x-app-name` of its answers).
    pub name: String,
    /// Requests seen, as "METHOD uri last-event-id".
    pub seen: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
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
        let stop = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = AppState {
            name: name.to_string(),
            feeds,
            mcp_sessions: Arc::default(),
            rpc_streams: Arc::default(),
            seen: seen.clone(),
        };
        tokio::spawn(serve::serve(
            listener,
            stop.clone(),
            Ending::Abrupt,
            move |req| route(state.clone(), req),
        ));
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

/// A fresh session id: 128 random bits, hex (what MCP servers hand out).
pub fn session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn named(state: &AppState, status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("x-app-name", state.name.as_str())
        .body(body(text))
        .unwrap()
}

fn not_found(text: &'static str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(body(text))
        .unwrap()
}

/// `GET /ws`: a WebSocket echo (each text message back as `name: text`), served next to the SSE
/// routes as many apps do; anything but a valid handshake gets `400`.
fn websocket_echo(state: &AppState, mut req: Request<Incoming>) -> Response<Body> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(body("not a websocket handshake\n"))
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let name = state.name.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{name}: {t}")),
                Message::Close(_) => return,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(body(""))
        .unwrap()
}

async fn route(state: AppState, req: Request<Incoming>) -> Response<Body> {
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
    if path == "/ws" {
        return websocket_echo(&state, req);
    }
    match (req.method().as_str(), path.as_str()) {
        // `POST /events`: the same stream as the answer of a request (a request stream).
        ("GET" | "POST", "/events") => events(&state, &req, lei),
        // The same feed as a shared "now" sequence that ignores `Last-Event-ID` (what many
        // broadcast apps do), for paths that cannot carry `?ignore_lei=1`.
        ("GET", "/events-shared") => events(&state, &req, lei),
        // `/private/<user>`: the same stream, for the client whose `Authorization` is `<user>`
        // only (an app that authorises every request; the thief's is refused with 401). The
        // stream's events name the user, so a leak is visible.
        ("GET", p) if p.starts_with("/private/") => {
            let user = &p["/private/".len()..];
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth != Some(user) {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .body(body("who are you?\n"))
                    .unwrap();
            }
            events(&state, &req, lei)
        }
        ("GET", "/plain") => Response::builder()
            .header("x-app-name", state.name.as_str())
            .header("content-length", "6")
            .body(body("hello\n"))
            .unwrap(),
        ("POST", "/echo") => {
            let header = |name| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let xff = header("x-forwarded-for");
            let secret = req.headers().contains_key("x-secret");
            let echoed = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .header("x-seen-xff", xff)
                .header("x-seen-secret", secret.to_string())
                .header("x-app-name", state.name.as_str())
                .body(body(echoed))
                .unwrap()
        }
        // Every header name the app received, one per line: what reached it.
        ("GET", "/headers") => {
            let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
            Response::builder().body(body(names.join("\n"))).unwrap()
        }
        ("GET", "/mixed") => testing::mixed(),
        ("GET", "/firehose") => testing::firehose(&req),
        ("GET", "/garbage") => testing::garbage(),
        ("GET", p) if p.starts_with("/testing/") => testing::handle(&req),
        // The MCP SSE transport with replies off the stream: `/sse` announces
        // `/messages?sessionId=<id>` and then only pings; a POST there is accepted by the
        // instance that holds the session. Sessions outlive their streams.
        ("GET", "/sse") => {
            let id = session_id();
            state.mcp_sessions.lock().unwrap().insert(id.clone());
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let endpoint = format!("/messages?sessionId={id}");
                if tx
                    .send(sse::event(None, Some("endpoint"), &endpoint))
                    .await
                    .is_err()
                {
                    return;
                }
                for _ in 0..600 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                        return;
                    }
                }
            });
            serve::sse(rx, ())
        }
        ("POST", "/messages") => {
            let known = query_param(&req, "sessionId")
                .is_some_and(|s| state.mcp_sessions.lock().unwrap().contains(s));
            if known {
                let accepted = format!("accepted by {}\n", state.name);
                named(&state, StatusCode::ACCEPTED, accepted)
            } else {
                named(&state, StatusCode::NOT_FOUND, "unknown session\n")
            }
        }
        // The MCP SSE transport as the SDKs run it: `POST /rpc` is answered `202` (after
        // `delay` ms of work), and its reply `reply <n>` follows as an event on the session's
        // stream a moment later. The session lives only in this instance and its stream.
        ("GET", "/mcp-sse") => {
            let id = session_id();
            let (tx, rx) = mpsc::channel(16);
            let endpoint = format!("/rpc?sessionId={id}");
            let _ = tx.try_send(sse::event(None, Some("endpoint"), &endpoint));
            state.rpc_streams.lock().unwrap().insert(id, tx);
            serve::sse(rx, ())
        }
        ("POST", "/rpc") => {
            let tx = query_param(&req, "sessionId")
                .and_then(|s| state.rpc_streams.lock().unwrap().get(s).cloned())
                .filter(|tx| !tx.is_closed());
            let Some(tx) = tx else {
                return not_found("unknown session\n");
            };
            let n = query_param(&req, "n").unwrap_or_default().to_string();
            let delay = query_param(&req, "delay")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let reply = format!("reply {n}");
                let _ = tx.send(sse::event(None, Some("message"), &reply)).await;
            });
            named(&state, StatusCode::ACCEPTED, "accepted\n")
        }
        // MCP Streamable HTTP: the first `POST /mcp` (no `Mcp-Session-Id`) initialises a session
        // and names it in the response header; later ones carry it.
        ("POST", "/mcp") => {
            match req
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                None => {
                    let id = session_id();
                    state.mcp_sessions.lock().unwrap().insert(id.clone());
                    Response::builder()
                        .header("mcp-session-id", id)
                        .header("content-type", "application/json")
                        .body(body("{\"result\":\"initialized\"}"))
                        .unwrap()
                }
                Some(id) if state.mcp_sessions.lock().unwrap().contains(id) => {
                    let ok = format!("ok from {}\n", state.name);
                    named(&state, StatusCode::OK, ok)
                }
                Some(_) => not_found("unknown session\n"),
            }
        }
        _ => not_found("no such path\n"),
    }
}

/// `/events?feed=F&interval_ms=I&total=N`: event `k` (`id: k`, `data: event k`) is due at
/// `t0(F) + k*I`. Without `Last-Event-ID` the stream starts at the next due event; with
/// `Last-Event-ID: k` it replays from `k+1` at once (unless `ignore_lei=1`). After event `N` the
/// response ends.
fn events(state: &AppState, req: &Request<Incoming>, lei: Option<String>) -> Response<Body> {
    let feed = query_param(req, "feed").unwrap_or("default");
    let interval = Duration::from_millis(
        query_param(req, "interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let total: Option<u64> = query_param(req, "total").and_then(|v| v.parse().ok());
    let t0 = state.feeds.t0(feed);
    let current = (t0.elapsed().as_nanos() / interval.as_nanos().max(1)) as u64;
    // `ignore_lei=1`: like many real apps, a shared sequence that starts at "now" whatever the
    // client had.
    let honours_lei =
        query_param(req, "ignore_lei") != Some("1") && req.uri().path() != "/events-shared";
    let start = match lei
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| honours_lei)
    {
        Some(k) => k + 1,
        None => current + 1,
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut k = start;
        loop {
            if total.is_some_and(|n| k > n) {
                return;
            }
            let due = t0 + interval * (k as u32);
            tokio::time::sleep_until(due.into()).await;
            let ev = sse::event(Some(&k.to_string()), None, &format!("event {k}"));
            if tx.send(ev).await.is_err() {
                return;
            }
            k += 1;
        }
    });
    serve::sse(rx, ())
}

/// `event from`, `event from+1`, ... `event to`: what `/events` sends.
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
