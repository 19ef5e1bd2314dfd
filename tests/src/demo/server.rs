//! HTTP/1 server, routing and graceful shutdown of the demo app.
//!
//! Shutdown follows what a well-behaved app does on SIGTERM: stop accepting, end every open
//! stream, let in-flight requests finish for a bounded time, exit 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{answer, events, mcp, testing};

/// The response body every handler returns: a whole body or an SSE stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request handler may need, shared by all connections.
pub struct AppState {
    /// This pod's name, echoed in payloads so a test sees which pod served what.
    pub pod: String,
    /// The chat room fan-out; `None` when the app was started without Redis.
    pub hub: Option<events::Hub>,
    /// The MCP sessions held in this process's memory.
    pub sessions: mcp::Sessions,
    /// Cancelled on SIGTERM: every stream producer ends its stream.
    pub shutdown: CancellationToken,
}

/// Bound on request bodies (`POST /messages`): the app is small and says so.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Bound on how long open connections get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A complete response with a plain-text body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()).boxed_unsync())
        .expect("static response parts are valid")
}

/// An SSE response whose body is whatever the producer sends on the channel; the stream ends
/// when the producer drops its sender, and the producer learns the client left when `send` fails.
/// `guard` lives as long as the body (used to forget an MCP session when its stream closes).
pub fn sse<G: Send + 'static>(rx: mpsc::Receiver<Bytes>, guard: G) -> Response<Body> {
    let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), (rx, guard)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(stream.boxed()).boxed_unsync())
        .expect("static response parts are valid")
}

/// The query parameter `name` of `req`, if present (no percent-decoding: the demo's values are
/// plain tokens, and a mangled one must simply not match).
pub fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// The request's `Last-Event-ID` as the app's own numeric id; anything else counts as absent.
pub fn last_event_id(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn route(req: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/events") => events::handle(&req, &state).await,
        (&Method::GET, "/sse") => mcp::open(&state),
        (&Method::POST, "/messages") => mcp::post(req, &state).await,
        (&Method::GET, "/answer") => answer::handle(&req, &state),
        (&Method::GET, path) if path.starts_with("/testing/") => testing::handle(&req, &state),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serve on `listener` until `state.shutdown` is cancelled, then drain connections for at most
/// [`SHUTDOWN_GRACE`].
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tracker.spawn(async move {
            let svc_state = state.clone();
            let svc = hyper::service::service_fn(move |req| {
                let st = svc_state.clone();
                async move { Ok::<_, Infallible>(route(req, st).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = state.shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; exiting anyway");
    }
}
