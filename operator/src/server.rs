//! The operator's HTTP endpoints: `/metrics` (OpenMetrics), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

fn metrics_reply(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => warp::reply::with_header(
            body,
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .into_response(),
        Err(_) => warp::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The routes, built outside any async context (warp filters and async fns don't mix well).
pub fn routes(
    registry: Arc<Registry>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let metrics = warp::path!("metrics").map(move || metrics_reply(&registry));
    let healthz = warp::path!("healthz").map(|| "ok".into_response());
    let readyz = warp::path!("readyz").map(|| "ok".into_response());
    warp::get().and(metrics.or(healthz).unify().or(readyz).unify())
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(registry))
        .bind(addr)
        .await
        .graceful(shutdown)
        .run()
        .await;
}
