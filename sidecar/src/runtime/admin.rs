//! The admin port: probes, metrics, and forwarded requests from other sidecars.
//!
//! Not the sidecar's preStop hook: anything that reaches this port could then drain the pod, so
//! `/prestop` is refused here (counted) and served on the lifecycle socket only (see
//! [`crate::runtime::lifecycle`]). The *app's* preStop hook is served here (`/app-prestop`): it
//! only waits until the drain is done with the app, so calling it changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::contract::{PRESTOP_REFUSED_BODY, paths};
use crate::http::body::{ProxyBody, full};
use crate::metrics::{AdminRefusal, ForwardOutcome};
use crate::routing::forward;
use crate::routing::handler::{self as proxy, Origin};
use crate::runtime::state::Sidecar;

fn text(code: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r
}

/// Handle one admin request.
pub async fn handle(
    shared: Arc<Sidecar>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, paths::LIVE) => live(&shared),
        (&Method::GET, paths::READY) => ready(&shared),
        (&Method::GET, paths::METRICS) => {
            let mut r = text(StatusCode::OK, shared.router.sessions.metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, paths::APP_PRESTOP) => app_prestop(&shared).await,
        (_, paths::BROADCAST_PUBLISH) => shared.router.broadcasts.publish(req, peer).await,
        (_, paths::PRESTOP) => {
            tracing::debug!(%peer, "refused /prestop on the admin port");
            shared
                .router
                .sessions
                .metrics
                .admin_refused(AdminRefusal::Prestop);
            text(StatusCode::NOT_FOUND, PRESTOP_REFUSED_BODY)
        }
        _ if path == paths::FORWARD || path.starts_with(&format!("{}/", paths::FORWARD)) => {
            forwarded(shared, req, peer).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The app container's preStop hook: answered once the drain no longer needs the app, so the
/// kubelet sends the app its SIGTERM then. A bounded number of callers wait at once.
async fn app_prestop(shared: &Sidecar) -> Response<ProxyBody> {
    let Ok(_waiting) = shared.app_prestop_waiters.clone().try_acquire_owned() else {
        shared
            .router
            .sessions
            .metrics
            .admin_refused(AdminRefusal::AppPrestopBusy);
        return text(StatusCode::TOO_MANY_REQUESTS, "too many waiting\n");
    };
    shared.lifecycle.app_released().await;
    text(StatusCode::OK, "the drain is done with the app\n")
}

/// Live while the heartbeat beats (see [`crate::runtime::health::Heartbeat`]).
fn live(shared: &Sidecar) -> Response<ProxyBody> {
    if shared.heartbeat.is_fresh() {
        text(StatusCode::OK, "live\n")
    } else {
        let age = shared.heartbeat.age().as_secs();
        tracing::error!(age_secs = age, "heartbeat stale: reporting not live");
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: no heartbeat for {age} s\n"),
        )
    }
}

fn ready(shared: &Sidecar) -> Response<ProxyBody> {
    if !shared.lifecycle.ready() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n");
    }
    if !shared.app_probe.is_up() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: app not accepting connections\n",
        );
    }
    if shared.router.sessions.store.is_up() {
        text(StatusCode::OK, "ready\n")
    } else {
        // Still ready: the pod serves without replay; the store outage is reported, not hidden.
        text(
            StatusCode::OK,
            "ready (session store unavailable: no replay)\n",
        )
    }
}

/// A request another sidecar forwarded because this pod owns its session.
async fn forwarded(
    shared: Arc<Sidecar>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let full_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(paths::FORWARD);
    let Some(original) = forward::original_path(full_path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let (mut parts, body) = req.into_parts();
    // The signature covers the body's digest: read it first (bounded as the sender bounds it).
    let Some(body) = crate::http::body::read_bounded(body, forward::MAX_BODY_BYTES).await else {
        shared
            .router
            .sessions
            .metrics
            .forward(ForwardOutcome::TooLarge);
        return text(StatusCode::PAYLOAD_TOO_LARGE, "forwarded body too large\n");
    };
    let check = forward::Check {
        key: shared.settings.forward_key.as_deref(),
        names: &shared.router.settings.signed_headers,
        me: &shared.settings.owner.name,
        now_ms: forward::unix_millis(),
        max_age_ms: u64::try_from(shared.settings.forward_max_age.as_millis()).unwrap_or(u64::MAX),
    };
    let verdict = forward::verify(
        &check,
        parts.method.as_str(),
        &original,
        &parts.headers,
        forward::body_digest(&body),
        &shared.forwards_seen,
    );
    if let Err(rejection) = verdict {
        tracing::warn!(%peer, reason = rejection.kind().label(), "forwarded request refused");
        shared.router.sessions.metrics.forward(rejection.kind());
        return text(StatusCode::FORBIDDEN, format!("forbidden: {rejection}\n"));
    }
    shared
        .router
        .sessions
        .metrics
        .forward(ForwardOutcome::Accepted);
    let body = http_body_util::Full::new(body);
    forward::strip(&mut parts.headers);
    parts.uri = match Uri::try_from(original) {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad path\n"),
    };
    proxy::handle(
        shared.router.clone(),
        Request::from_parts(parts, body),
        peer,
        Origin::Forwarded,
    )
    .await
}
