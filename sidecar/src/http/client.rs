//! Outbound HTTP: to the app, and to other sidecars' admin ports.
//!
//! One pooled hyper client per destination kind, with a time budget for the response head
//! (connect included). Bodies are never time-limited: an SSE response lives as long as it lives.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderMap;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::http::body::{ProxyBody, empty};
use crate::http::headers::LAST_EVENT_ID;
use crate::metrics::ErrorKind;

/// Why an outbound request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response head within the budget.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The destination refused or could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The exchange failed after connecting.
    #[error("request failed: {0}")]
    Failed(String),
}

impl UpstreamError {
    /// Label for the `errors_total{kind}` metric.
    pub fn kind(&self) -> ErrorKind {
        match self {
            UpstreamError::Timeout(_) => ErrorKind::UpstreamTimeout,
            UpstreamError::Connect(_) => ErrorKind::UpstreamConnect,
            UpstreamError::Failed(_) => ErrorKind::UpstreamFailed,
        }
    }
}

/// A pooled client with a response-head budget.
pub struct HttpClient {
    client: Client<HttpConnector, ProxyBody>,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose requests fail after `timeout` without a response head.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient { client, timeout }
    }

    /// Send a request and wait for the response head.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(e.to_string())),
            Ok(Err(e)) => Err(UpstreamError::Failed(e.to_string())),
        }
    }
}

/// The app: a client with the upstream budget and the address it listens on.
pub struct App {
    client: HttpClient,
    addr: SocketAddr,
}

impl App {
    /// The app at `addr`, with requests failing after `timeout` without a response head.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        App {
            client: HttpClient::new(timeout),
            addr,
        }
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Send a request to the app and wait for the response head.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        self.client.send(req).await
    }
}

/// A request to `target` for the origin-form `path` (path and query), with the given head.
pub fn outbound(
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: ProxyBody,
    target: SocketAddr,
) -> Request<ProxyBody> {
    let uri = Uri::try_from(format!("http://{target}{path}"))
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"));
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// The head of a client's stream request, kept to open the same stream again from the app
/// (a takeover), with the app's own last event id.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    /// Method (GET for an EventSource).
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers, already stripped of hop-by-hop headers and `Last-Event-ID`.
    pub headers: HeaderMap,
}

impl RequestTemplate {
    /// The request to `target`, carrying `Last-Event-ID: last_event_id` if there is one.
    pub fn build(&self, last_event_id: Option<&str>, target: SocketAddr) -> Request<ProxyBody> {
        let mut headers = self.headers.clone();
        headers.remove(LAST_EVENT_ID);
        if let Some(id) = last_event_id.and_then(crate::http::headers::last_event_id_value) {
            headers.insert(LAST_EVENT_ID, id);
        }
        outbound(self.method.clone(), &self.path, headers, empty(), target)
    }
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    #[test]
    fn template_sets_only_the_app_id() {
        let mut headers = HeaderMap::new();
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static("sess.4"));
        headers.insert("accept", HeaderValue::from_static("text/event-stream"));
        let t = RequestTemplate {
            method: Method::GET,
            path: "/events?x=1".into(),
            headers,
        };
        let target = "127.0.0.1:9".parse().unwrap();
        let r = t.build(Some("app-17"), target);
        assert_eq!(r.uri(), "http://127.0.0.1:9/events?x=1");
        assert_eq!(r.headers()[LAST_EVENT_ID], "app-17");
        assert_eq!(r.headers()["accept"], "text/event-stream");
        assert!(t.build(None, target).headers().get(LAST_EVENT_ID).is_none());
    }
}
