//! Routing and graceful shutdown of the demo app; the HTTP plumbing is the test kit's
//! ([`ssekeeper_testkit::app::serve`]), shared with the in-process fake app.
//!
//! Shutdown follows what a well-behaved app does on SIGTERM: stop accepting, end every open
//! stream, let in-flight requests finish for a bounded time, exit 0.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use ssekeeper_testkit::app::serve::Ending;
use ssekeeper_testkit::app::testing;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use ssekeeper_testkit::app::serve::{Body, last_event_id, query_param, sse, text};

use super::{answer, clock, completions, events, mcp};

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

async fn route(req: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/events") => events::handle(&req, &state).await,
        (&Method::GET, "/sse") => mcp::open(&state),
        (&Method::POST, "/messages") => mcp::post(req, &state).await,
        (&Method::GET, "/answer") => answer::handle(&req, &state),
        (&Method::GET, "/clock") => clock::handle(&req, &state),
        (&Method::POST, "/v1/chat/completions") => completions::handle(req, &state).await,
        (&Method::GET, path) if path.starts_with("/testing/") => testing::handle(&req),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serve on `listener` until `state.shutdown` is cancelled, then drain connections for at most
/// [`SHUTDOWN_GRACE`].
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let stop = state.shutdown.clone();
    let ending = Ending::Graceful(SHUTDOWN_GRACE);
    ssekeeper_testkit::app::serve::serve(listener, stop, ending, move |req| {
        route(req, state.clone())
    })
    .await;
}
