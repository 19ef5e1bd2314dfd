//! The MCP SSE transport's shape: `GET /sse` announces `/messages?sessionId=<id>`, and replies to
//! `POST /messages?sessionId=<id>` travel on that stream. The session exists only in this
//! process's memory - exactly what breaks behind a plain load balancer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::payload::McpReply;
use super::server::{self, AppState, Body, MAX_BODY_BYTES};
use ssekeeper_testkit::sse as wire;

/// Replies queued per session before a POST is refused with 503 (the client is not reading).
const SESSION_QUEUE: usize = 256;

/// The sessions of this process: id -> the sender feeding that session's stream.
#[derive(Default, Clone)]
pub struct Sessions(Arc<Mutex<HashMap<String, mpsc::Sender<Bytes>>>>);

impl Sessions {
    fn insert(&self, id: String, tx: mpsc::Sender<Bytes>) {
        self.0.lock().expect("sessions lock").insert(id, tx);
    }

    fn get(&self, id: &str) -> Option<mpsc::Sender<Bytes>> {
        self.0.lock().expect("sessions lock").get(id).cloned()
    }

    fn remove(&self, id: &str) {
        self.0.lock().expect("sessions lock").remove(id);
    }

    /// Drop every session (their streams end): what the process does on SIGTERM.
    pub fn clear(&self) {
        self.0.lock().expect("sessions lock").clear();
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.0.lock().expect("sessions lock").len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forgets the session when its stream's body is dropped (client gone or stream ended).
struct SessionGuard {
    sessions: Sessions,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.remove(&self.id);
    }
}

/// `GET /sse`: open a session and announce where to post.
pub fn open(state: &Arc<AppState>) -> Response<Body> {
    let id = ssekeeper_testkit::app::session_id();
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let endpoint = format!("/messages?sessionId={id}");
    tx.try_send(wire::event(None, Some("endpoint"), &endpoint))
        .expect("a fresh channel has room");
    state.sessions.insert(id.clone(), tx);
    let guard = SessionGuard {
        sessions: state.sessions.clone(),
        id,
    };
    server::sse(rx, guard)
}

/// `POST /messages?sessionId=<id>`: 202 and the reply on the stream, 404 for an unknown session.
pub async fn post(req: Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let Some(id) = server::query_param(&req, "sessionId").map(str::to_string) else {
        return server::text(StatusCode::BAD_REQUEST, "sessionId missing");
    };
    let Some(tx) = state.sessions.get(&id) else {
        return server::text(StatusCode::NOT_FOUND, "session not found");
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return server::text(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let reply = McpReply {
        echo: String::from_utf8_lossy(&body).into_owned(),
        pod: state.pod.clone(),
    };
    let data = serde_json::to_string(&reply).expect("plain struct serialises");
    match tx.try_send(wire::event(None, Some("message"), &data)) {
        Ok(()) => server::text(StatusCode::ACCEPTED, "Accepted"),
        Err(mpsc::error::TrySendError::Full(_)) => {
            server::text(StatusCode::SERVICE_UNAVAILABLE, "session queue full")
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            server::text(StatusCode::NOT_FOUND, "session not found")
        }
    }
}
