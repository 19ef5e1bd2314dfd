//! The client-facing handler: resume, route, proxy, and turn SSE responses into recorded streams.
//!
//! Order of decisions for one request:
//! 1. `Last-Event-ID` is a cursor → resume (any pod can). A `Last-Event-ID` that is not a cursor
//!    is passed to the app unchanged (it may be the app's own id from before the sidecar).
//! 2. It names a session another live pod owns → forward it there (signed); owner gone → 404,
//!    unless the request opens a stream (then this pod becomes the owner).
//! 3. Proxy it to the app. Non-SSE responses stream back unchanged; a `200 text/event-stream`
//!    response gets a recorder and the client gets the re-emitted stream.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::contract::SessionKeySource;
use crate::cursor::{Cursor, SessionId};
use crate::http::body::{ProxyBody, boxed, full};
use crate::http::client::HttpClient;
use crate::http::client::{RequestTemplate, UpstreamError, outbound};
use crate::http::headers::{
    LAST_EVENT_ID, accepts_event_stream, append_forwarded_for, has_body,
    has_foreign_transfer_coding, is_event_stream, last_event_id, last_event_id_value,
    strip_hop_by_hop,
};
use crate::http::kind::{KindCell, StreamKind};
use crate::http::session_key;
use crate::metrics::{ErrorKind, ForwardOutcome, ResumeOutcome, Route};
use crate::routing::forward;
use crate::routing::owner::{self as routing, Location};
use crate::routing::tunnel;
use crate::session::Sessions;
use crate::session::recorder::{self, Reservation, StreamStart};
use crate::session::replay::Overlap;
use crate::session::resume::{self, Resumed, too_many_streams};
use crate::store::SessionStore as _;

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client, on the sse port.
    Client,
    /// Another sidecar, forwarded (never forwarded again).
    Forwarded,
}

fn status(code: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(text));
    *r.status_mut() = code;
    r
}

/// What the request handler is handed.
pub struct Router {
    /// The session layer.
    pub sessions: Arc<Sessions>,
    /// Broadcast paths: served from their shared stream, never proxied per client.
    pub broadcasts: Arc<crate::session::broadcast::Broadcasts>,
    /// Client for other sidecars' admin ports.
    pub peers: HttpClient,
    /// Where requests name sessions, and how this pod signs what it forwards.
    pub settings: RouteSettings,
}

/// The handler's own settings.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Where a request names its session, in order.
    pub session_keys: Vec<SessionKeySource>,
    /// Key signing `/internal/forward` (none: forwarding disabled).
    pub forward_key: Option<Vec<u8>>,
    /// This pod's name, sent with what it forwards.
    pub owner_name: String,
    /// The headers a forward's signature covers (see [`forward::signed_headers`]).
    pub signed_headers: Vec<http::HeaderName>,
}

/// Handle one request (from a client, or forwarded by another sidecar).
pub async fn handle<B>(
    router: Arc<Router>,
    req: Request<B>,
    peer: SocketAddr,
    origin: Origin,
) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::http::body::BoxError>,
{
    let shared = &router.sessions;
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    // A protocol upgrade (WebSocket) is tunnelled, not parsed.
    if origin == Origin::Client && tunnel::is_upgrade(req.headers()) {
        let mut req = req;
        append_forwarded_for(req.headers_mut(), peer.ip());
        return tunnel::handle(shared, req, &path).await;
    }
    let (mut parts, body) = req.into_parts();
    if let Some(answer) = refuse_early(&parts) {
        return answer;
    }
    // Answers given before the body is read end the connection: its unread body would
    // otherwise be taken for the next request (or reset it).
    let close_early = has_body(&parts.headers);
    let early = |r: Response<ProxyBody>| if close_early { closing(r) } else { r };
    strip_hop_by_hop(&mut parts.headers);
    if origin == Origin::Client {
        // Only sidecars speak `x-ssekeeper-*` (a forwarded request had its own removed once
        // verified): a client must not pose as one to the app.
        forward::strip(&mut parts.headers);
    }
    append_forwarded_for(&mut parts.headers, peer.ip());

    if accepts_event_stream(&parts.headers) || parts.headers.contains_key(LAST_EVENT_ID) {
        // A compressed event stream could not be parsed (nor resumed): ask for it plain.
        parts
            .headers
            .insert(ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
    }

    // A broadcast path: served from the path's stream (one upstream for every client); the
    // match is on the path alone (see `contract::BroadcastPath`).
    if parts.method == Method::GET
        && router.broadcasts.is_broadcast(parts.uri.path())
        && let Some(r) = router
            .broadcasts
            .serve(parts.uri.path(), last_event_id(&parts.headers))
    {
        shared.metrics.request(Route::Local);
        return early(r);
    }

    // What this request's cursors are bound to (its credentials and path): computed before the
    // resume strips anything.
    let binding = shared.settings.binding(&parts.headers, &parts.uri);

    // 1. Resume.
    let prefix = match try_resume(shared, &mut parts, &path, binding).await {
        Some(Resume::Answered(r)) => return early(r),
        Some(Resume::ToApp { prefix }) => Some(prefix),
        None => None,
    };

    // 2. Route by session key.
    let key = session_key_of(&router, &parts);
    if let (Some(k), Origin::Client) = (&key, origin) {
        match where_to(&router, k, &parts).await {
            Where::Here => {}
            Where::Owner { addr, owner } => {
                return to_owner(&router, parts, &path, boxed(body), addr, &owner).await;
            }
            Where::Gone => return early(status(StatusCode::NOT_FOUND, "session not found\n")),
        }
    }

    // A keyed request that is not a stream of its own is answered on its session's stream (MCP:
    // `202`, then the reply as an event): refused once that session is being handed over here,
    // and counted while in flight so the handover waits for its reply to be captured.
    let opens_stream = parts.method == Method::GET && accepts_event_stream(&parts.headers);
    if let (Some(k), true) = (&key, opens_stream)
        && let Some(r) = resume::attach_live(shared, k, binding).await
    {
        return early(r);
    }
    let _pass = match (&key, opens_stream) {
        (Some(k), false) => match shared.gates.enter(k) {
            Some(pass) => Some(pass),
            None => {
                shared.metrics.request(Route::NotFound);
                return early(status(StatusCode::NOT_FOUND, "session not found\n"));
            }
        },
        _ => None,
    };

    // 3. Proxy to the app. A stream over the bound is refused before the app opens one for
    // nobody (a client flooding the pod costs the app nothing).
    if accepts_event_stream(&parts.headers) && shared.clients.streams().is_full() {
        return early(too_many_streams(&shared.metrics));
    }
    shared.metrics.request(match origin {
        Origin::Client => Route::Local,
        Origin::Forwarded => Route::ForwardedIn,
    });
    to_app(&router, parts, &path, boxed(body), key, prefix, binding).await
}

/// Requests the sidecar answers itself, before anything else: `OPTIONS *` (about the server,
/// not a resource: the app has nothing to say), `CONNECT` (a proxy is not a tunnel to
/// anywhere), and a body in a transfer coding it would have to decode first.
fn refuse_early(parts: &Parts) -> Option<Response<ProxyBody>> {
    const ALLOW: http::HeaderValue =
        http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
    let asterisk = parts.uri.path() == "*";
    if parts.method == Method::OPTIONS && asterisk {
        let mut r = status(StatusCode::OK, "");
        r.headers_mut().insert(http::header::ALLOW, ALLOW);
        return Some(r);
    }
    if parts.method == Method::CONNECT {
        let mut r = closing(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served\n",
        ));
        r.headers_mut().insert(http::header::ALLOW, ALLOW);
        return Some(r);
    }
    if asterisk {
        return Some(closing(status(
            StatusCode::BAD_REQUEST,
            "* is for OPTIONS only\n",
        )));
    }
    if has_foreign_transfer_coding(&parts.headers) {
        return Some(closing(status(
            StatusCode::NOT_IMPLEMENTED,
            "transfer codings other than chunked are not accepted\n",
        )));
    }
    None
}

/// `r` with `Connection: close`.
fn closing(mut r: Response<ProxyBody>) -> Response<ProxyBody> {
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

/// A request with a `Last-Event-ID`: answered from the session when it is one of our cursors
/// (`Some`); otherwise it goes on to the app, carrying the app's own last id if the session has
/// one.
async fn try_resume(
    shared: &Arc<Sessions>,
    parts: &mut Parts,
    path: &str,
    binding: crate::cursor::Binding,
) -> Option<Resume> {
    parts.headers.get(LAST_EVENT_ID)?;
    let Some(Ok(cursor)) = last_event_id(&parts.headers).map(Cursor::parse) else {
        shared.metrics.resume(ResumeOutcome::Foreign);
        return None;
    };
    shared.metrics.request(Route::Resume);
    parts.headers.remove(LAST_EVENT_ID);
    let template = RequestTemplate {
        method: parts.method.clone(),
        path: path.to_string(),
        headers: parts.headers.clone(),
    };
    let sent = cursor.to_string();
    match resume::resume(shared, template, cursor, binding).await {
        Resumed::Respond(r) => Some(Resume::Answered(r)),
        Resumed::Fresh(app_id) => {
            if let Some(v) = app_id.as_deref().and_then(last_event_id_value) {
                parts.headers.insert(LAST_EVENT_ID, v);
            }
            None
        }
        // A fresh stream from the app, begun with the event saying the history is gone.
        Resumed::Expired => Some(Resume::ToApp {
            prefix: crate::sse::encode_gap("expired", &sent),
        }),
    }
}

/// What a resume decided, when it is not "go on to the app as if there were none".
enum Resume {
    /// Answered here (replay, tail, refusal).
    Answered(Response<ProxyBody>),
    /// On to the app, the client's stream begun with `prefix`.
    ToApp { prefix: bytes::Bytes },
}

/// The session a request names, if it names a usable one.
fn session_key_of(router: &Router, parts: &Parts) -> Option<SessionId> {
    let Some(k) = session_key::from_request(
        parts.uri.query(),
        &parts.headers,
        &router.settings.session_keys,
    ) else {
        if let Some(name) = session_key::unmatched_session_name(parts.uri.query(), &parts.headers) {
            router.sessions.metrics.unrouted_session_key(&name);
        }
        return None;
    };
    match router.sessions.settings.cursor_key.session_for_key(&k) {
        Ok(id) => Some(id),
        Err(_) => {
            router.sessions.metrics.error(ErrorKind::InvalidSessionKey);
            None
        }
    }
}

/// Where a keyed client request goes.
enum Where {
    /// Served here (this pod owns the session, nobody does and it opens a stream, the store is
    /// down, or forwarding is off).
    Here,
    /// Forwarded to the session's owner.
    Owner {
        /// The owner's admin address.
        addr: SocketAddr,
        /// The owner's name.
        owner: String,
    },
    /// The session's owner is gone: `404` (the MCP re-initialise signal).
    Gone,
}

async fn where_to(router: &Router, key: &SessionId, parts: &Parts) -> Where {
    let shared = &router.sessions;
    match routing::locate(shared, key).await {
        Location::Local => Where::Here,
        Location::Unknown => {
            shared.metrics.request(Route::Unrouted);
            Where::Here
        }
        Location::Remote { addr, owner } => {
            if router.settings.forward_key.is_some() {
                return Where::Owner { addr, owner };
            }
            shared.metrics.forward(ForwardOutcome::Disabled);
            Where::Here
        }
        Location::Gone => {
            let opens_stream = parts.method == Method::GET && accepts_event_stream(&parts.headers);
            if opens_stream {
                return Where::Here;
            }
            shared.metrics.request(Route::NotFound);
            shared.metrics.forward(ForwardOutcome::OwnerGone);
            Where::Gone
        }
    }
}

/// Send the request to the app and answer with its response (recorded if it is a stream).
async fn to_app(
    router: &Router,
    parts: Parts,
    path: &str,
    body: ProxyBody,
    key: Option<SessionId>,
    prefix: Option<bytes::Bytes>,
    binding: crate::cursor::Binding,
) -> Response<ProxyBody> {
    let shared = &router.sessions;
    let sticky = last_event_id(&parts.headers)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let upstream_req = outbound(
        parts.method.clone(),
        path,
        parts.headers.clone(),
        body,
        shared.app.addr(),
    );
    match shared.app.send(upstream_req).await {
        Ok(resp) => respond(router, &parts, resp, key, sticky, prefix, binding).await,
        Err(e) => upstream_failed(shared, e),
    }
}

fn upstream_failed(shared: &Sessions, e: UpstreamError) -> Response<ProxyBody> {
    shared.metrics.error(e.kind());
    tracing::warn!(error = %e, "app request failed");
    match e {
        UpstreamError::Timeout(_) => status(StatusCode::GATEWAY_TIMEOUT, "app timed out\n"),
        _ => status(StatusCode::BAD_GATEWAY, "app unavailable\n"),
    }
}

/// The app answered: learn a session key it handed out, then pass the response through or make
/// it a recorded stream.
async fn respond(
    router: &Router,
    req: &Parts,
    resp: Response<Incoming>,
    key: Option<SessionId>,
    sticky: Option<String>,
    prefix: Option<bytes::Bytes>,
    binding: crate::cursor::Binding,
) -> Response<ProxyBody> {
    let shared = &router.sessions;
    let (mut parts, body) = resp.into_parts();
    if has_foreign_transfer_coding(&parts.headers) {
        // Its bytes would reach the client without the coding that makes sense of them.
        shared.metrics.error(ErrorKind::UpstreamTransferCoding);
        tracing::warn!("the app answered with a transfer coding other than chunked: 502");
        return status(
            StatusCode::BAD_GATEWAY,
            "app used an unsupported transfer coding\n",
        );
    }
    strip_hop_by_hop(&mut parts.headers);
    if let Some(learned) = session_key::from_response(&parts.headers, &router.settings.session_keys)
        .and_then(|k| shared.settings.cursor_key.session_for_key(&k).ok())
        && key.as_ref() != Some(&learned)
    {
        // Own the key before the client can use it, so its next request is routed here.
        if let Err(e) = shared.book.register(&learned).await {
            shared.metrics.error(e.kind());
            tracing::warn!(error = %e, "could not register a session key the app handed out");
        }
    }
    if parts.status != StatusCode::OK
        || !is_event_stream(&parts.headers)
        || req.method == Method::HEAD
    {
        return Response::from_parts(parts, boxed(body));
    }
    if parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        // Encoded although it was asked plain (`Accept-Encoding: identity`): pass it on
        // untouched, unrecorded, and say so once: such a stream cannot be resumed.
        shared.metrics.error(ErrorKind::SseEncoded);
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                path = req.uri.path(),
                "the app compressed an event stream although asked for identity: passed through unrecorded (no resume, no handoff); configure the app not to compress text/event-stream"
            );
        }
        return Response::from_parts(parts, boxed(body));
    }

    let kind = KindCell::new(StreamKind::of_request(
        &req.method,
        &req.headers,
        key.is_some(),
    ));
    let Some((tx, mut client_body)) = shared.clients.open(kind.clone()) else {
        return too_many_streams(&shared.metrics);
    };
    if let Some(p) = prefix {
        client_body.set_prefix(std::collections::VecDeque::from([p]));
    }
    shared.metrics.stream_opened(kind.get());
    parts.headers.remove(CONTENT_LENGTH);
    let (session, next_seq, reservation) = stream_session(shared, key).await;
    recorder::spawn(
        shared,
        StreamStart {
            session,
            upstream: boxed(body),
            next_seq,
            sticky,
            overlap: Overlap::default(),
            client: Some(tx),
            kind,
            claim: None,
            learn_endpoint: true,
            binding,
        },
    );
    if let Some(r) = reservation {
        r.started();
    }
    Response::from_parts(parts, boxed(client_body))
}

/// The session a new stream records under: the request's key when no other stream of this pod
/// records it (continuing its history), otherwise a fresh random id. A key comes with its
/// reservation, which `recorder::spawn` takes over.
async fn stream_session(
    shared: &Sessions,
    key: Option<SessionId>,
) -> (SessionId, u64, Option<Reservation<'_>>) {
    let usable = shared.store.is_up();
    // Reserved before the store call: a concurrent stream with the same key (MCP clients send
    // parallel requests with one `Mcp-Session-Id`) gets its own session instead of a second
    // recorder numbering the same history.
    let Some((key, reservation)) = key
        .filter(|_| usable)
        .and_then(|k| shared.recorders.reserve(&k).map(|r| (k, r)))
    else {
        return (SessionId::random(), 1, None);
    };
    let r = shared.store.last(&key).await;
    match r {
        Ok(last) => (key, last.map_or(1, |l| l.seq + 1), Some(reservation)),
        Err(_) => (SessionId::random(), 1, None),
    }
}

/// Copy an owner's stream to the client until either side ends; a client that does not keep up
/// is cut like any other.
async fn relay(mut body: ProxyBody, tx: crate::http::body::ClientTx) {
    use http_body_util::BodyExt as _;
    loop {
        let frame = tokio::select! {
            _ = tx.closed() => return,
            f = body.frame() => f,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && tx.send(data, RELAY_PATIENCE).await.is_err()
                {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// How long a relayed stream waits for a slow client before cutting it.
const RELAY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Send a request to the pod that owns its session, signed; stream the answer back.
async fn to_owner(
    router: &Router,
    mut parts: Parts,
    path: &str,
    body: ProxyBody,
    addr: SocketAddr,
    owner: &str,
) -> Response<ProxyBody> {
    let shared = &router.sessions;
    // A relayed GET stream is resumable even when keyed: its cursors lead a reconnecting client
    // back to the owner, which keeps the session; a relayed request stream finishes in place.
    let kind = StreamKind::classify(&parts.method, false);
    let Some(key) = router.settings.forward_key.as_deref() else {
        return status(StatusCode::BAD_GATEWAY, "forwarding disabled\n");
    };
    shared.metrics.request(Route::ForwardedOut);
    // The body is signed by its digest, so it is read first (keyed requests are small).
    let body = match crate::http::body::read_bounded(body, forward::MAX_BODY_BYTES).await {
        Some(bytes) => bytes,
        None => {
            shared.metrics.forward(ForwardOutcome::TooLarge);
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large to forward\n",
            );
        }
    };
    forward::strip(&mut parts.headers);
    forward::add_signature(
        &mut parts.headers,
        key,
        &router.settings.signed_headers,
        (parts.method.as_str(), path, forward::body_digest(&body)),
        owner,
        &router.settings.owner_name,
    );
    let req = outbound(
        parts.method,
        &forward::forward_path(path),
        parts.headers,
        full(body),
        addr,
    );
    match router.peers.send(req).await {
        Ok(resp) => {
            shared.metrics.forward(ForwardOutcome::Ok);
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if !is_event_stream(&parts.headers) {
                return Response::from_parts(parts, boxed(body));
            }
            // A stream the owner serves: relay it so this pod's drain can close it too.
            let Some((tx, client_body)) = shared.clients.open(KindCell::new(kind)) else {
                return too_many_streams(&shared.metrics);
            };
            tokio::spawn(relay(boxed(body), tx));
            Response::from_parts(parts, boxed(client_body))
        }
        Err(UpstreamError::Connect(e)) => {
            tracing::info!(owner, %addr, error = %e, "session owner unreachable: 404");
            shared.metrics.forward(ForwardOutcome::OwnerGone);
            status(StatusCode::NOT_FOUND, "session not found\n")
        }
        Err(UpstreamError::Timeout(_)) => {
            shared.metrics.forward(ForwardOutcome::Timeout);
            status(StatusCode::GATEWAY_TIMEOUT, "session owner timed out\n")
        }
        Err(e) => {
            tracing::warn!(owner, %addr, error = %e, "forward failed");
            shared.metrics.forward(ForwardOutcome::Error);
            status(StatusCode::BAD_GATEWAY, "session owner failed\n")
        }
    }
}
