//! `POST /broadcast?path=<path>` on the admin port: an app that pushes instead of streaming.
//!
//! The admin port is reachable by other pods (forwarding), so the endpoint answers only
//! connections from loopback (the app in the same pod) and only with the bearer token of
//! `--broadcast-publish-token` (compared in constant time); without a token configured it is
//! off. The event is appended to the path's stream like the holder's (numbered by the store, not
//! fenced: publishing needs no upstream), so every pod's tail delivers it to its clients.

use std::net::SocketAddr;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Broadcasts;
use super::ids::{MAX_PUBLISH_BYTES, bearer_matches, parse_publish, query_param};
use crate::http::body::{ProxyBody, full, read_bounded};
use crate::store::{BroadcastAppend, BroadcastAppended, SessionStore as _};

/// How the publish endpoint is protected.
#[derive(Clone, Default)]
pub struct PublishSettings {
    /// The bearer token apps present; `None`: publishing is refused.
    pub token: Option<String>,
}

impl std::fmt::Debug for PublishSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishSettings")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

fn answer(code: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(text));
    *r.status_mut() = code;
    r
}

impl Broadcasts {
    /// Handle one publish request (see the module docs for the rules and answers).
    pub async fn publish(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let m = &self.ctx.metrics.broadcast;
        let refuse = |outcome: &'static str, code: StatusCode, text: String| {
            m.published(outcome);
            answer(code, text)
        };
        if req.method() != Method::POST {
            let mut r = refuse(
                "method",
                StatusCode::METHOD_NOT_ALLOWED,
                "publish with POST\n".into(),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        if !peer.ip().is_loopback() {
            return refuse(
                "not_local",
                StatusCode::FORBIDDEN,
                "publishing is accepted from the pod itself (loopback) only\n".into(),
            );
        }
        let Some(token) = self.publish.token.as_deref().filter(|t| !t.is_empty()) else {
            return refuse(
                "disabled",
                StatusCode::FORBIDDEN,
                "publishing is off: set --broadcast-publish-token (SSEKEEPER_BROADCAST_PUBLISH_TOKEN)\n"
                    .into(),
            );
        };
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !bearer_matches(token, auth) {
            let mut r = refuse(
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                "a valid Authorization: Bearer <token> is required\n".into(),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let query = req.uri().query().map(str::to_string);
        let Some(path) = query_param(query.as_deref(), "path") else {
            return refuse(
                "bad_request",
                StatusCode::BAD_REQUEST,
                "name the broadcast path: ?path=/events/...\n".into(),
            );
        };
        let Some(ch) = self.channels.get(&path).cloned() else {
            return refuse(
                "unknown_path",
                StatusCode::NOT_FOUND,
                format!("{path:?} is not a broadcast path of this service\n"),
            );
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            refuse(
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an event is at most {MAX_PUBLISH_BYTES} bytes\n"),
            )
        };
        if declared.is_some_and(|n| n > MAX_PUBLISH_BYTES as u64) {
            return too_large();
        }
        let event_stream = crate::http::headers::is_event_stream(req.headers());
        let _ = CONTENT_TYPE;
        let Some(body) = read_bounded(req.into_body(), MAX_PUBLISH_BYTES).await else {
            return too_large();
        };
        let event = query_param(query.as_deref(), "event");
        let entries = match parse_publish(event_stream, &body, event.as_deref()) {
            Ok(e) => e,
            Err(e) => return refuse("bad_request", StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let Some(bstore) = self.ctx.sessions.store.broadcast() else {
            return refuse(
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "the store cannot serve broadcasts\n".into(),
            );
        };
        let a = BroadcastAppend {
            epoch: None,
            token: None,
            floor: ch.known_last(),
            limit: ch.limit,
            entries: &entries,
        };
        match bstore.append_broadcast(&ch.session, a).await {
            Ok(BroadcastAppended::Stored { first, last }) => {
                ch.raise(last);
                m.published("accepted");
                m.events_appended
                    .get_or_create(&ch.label)
                    .inc_by(entries.len() as u64);
                let mut r = answer(
                    StatusCode::OK,
                    format!("{{\"first\":\"{first}\",\"last\":\"{last}\"}}\n"),
                );
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Ok(BroadcastAppended::Repeated { .. }) | Err(_) => {
                let mut r = refuse(
                    "unavailable",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store did not take the event: publish again\n".into(),
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                r
            }
        }
    }
}
