//! The HTTP side of a fake app: the response helpers its handlers share and the accept loop,
//! which stops the way the test needs: abruptly (a crash) or gracefully (what a well-behaved app
//! does on SIGTERM: stop accepting, end its streams, let requests finish for a bounded time).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The response body every handler returns: a whole body or an SSE stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A whole body.
pub fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A complete response with a plain-text body.
pub fn text(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body(text))
        .expect("static response parts are valid")
}

/// An SSE response whose body is whatever the producer sends on the channel; the stream ends
/// when the producer drops its sender, and the producer learns the client left when `send` fails.
/// `guard` lives as long as the body (e.g. to forget a session when its stream closes).
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

/// The query parameter `name` of `req`, if present (no percent-decoding: the fake apps' values
/// are plain tokens, and a mangled one must simply not match).
pub fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// The request's `Last-Event-ID` as an app's own numeric id; anything else counts as absent.
pub fn last_event_id(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How [`serve`] ends once its stop token is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every connection is dropped at once: the app crashed.
    Abrupt,
    /// Open connections are shut down gracefully and get this long to finish.
    Graceful(Duration),
}

/// Serve HTTP/1 on `listener` with `handler` until `stop` is cancelled, then end as `ending`
/// says.
pub async fn serve<H, F>(listener: TcpListener, stop: CancellationToken, ending: Ending, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let tracker = TaskTracker::new();
    loop {
        let (stream, _peer) = tokio::select! {
            _ = stop.cancelled() => break,
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
        let (handler, stop) = (handler.clone(), stop.clone());
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let reply = handler(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    if let Ending::Graceful(_) = ending {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if let Ending::Graceful(grace) = ending
        && tokio::time::timeout(grace, tracker.wait()).await.is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; exiting anyway");
    }
}
