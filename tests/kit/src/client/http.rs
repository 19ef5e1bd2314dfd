//! One-shot HTTP requests, and the connection set-up every request and stream shares.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::ClientError;

/// Aborts the task driving a client connection when the request's owner is done with it, so
/// no connection outlives its client.
#[derive(Debug)]
pub struct ConnGuard(JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// TCP connect to `target` from `source` (any port), bounded by `timeout`.
pub async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let sock = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, sock.connect(target))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP/1 connection ready for requests, plus the guard that ends it; connect and handshake
/// are each bounded by `timeout`.
pub async fn open<B>(
    target: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<(SendRequest<B>, ConnGuard), ClientError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connect(target, source, timeout).await?;
    let (sender, conn) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| ClientError::Timeout(timeout))??;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, ConnGuard(task)))
}

/// `method path` to `target` with `host` and then `headers` set, carrying `body`.
pub fn build(
    target: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, target.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body))
        .expect("caller-supplied header names are valid")
}

/// `req` on a fresh connection: the response with its body still streaming, and the guard that
/// ends the connection when dropped. Connect, handshake and the response head are each bounded
/// by `timeout`.
pub async fn send(
    target: SocketAddr,
    source: Option<IpAddr>,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(Response<Incoming>, ConnGuard), ClientError> {
    let (mut sender, guard) = open(target, source, timeout).await?;
    let resp = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    Ok((resp, guard))
}

/// The whole of a response body, refused past `max_body` bytes.
pub async fn collect(mut body: Incoming, max_body: usize) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > max_body {
                return Err(ClientError::BodyTooLarge(max_body));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// One request on a fresh connection; the whole exchange (connect to last body byte) is bounded
/// by `timeout`, and the body by `max_body` bytes.
#[allow(clippy::too_many_arguments)]
pub async fn request(
    target: SocketAddr,
    source: Option<IpAddr>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
    max_body: usize,
) -> Result<HttpReply, ClientError> {
    let exchange = async {
        let req = build(target, method, path, headers, body);
        let (resp, _guard) = send(target, source, req, timeout).await?;
        let (parts, incoming) = resp.into_parts();
        Ok(HttpReply {
            status: parts.status,
            headers: parts.headers,
            body: collect(incoming, max_body).await?,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// How long [`fetch`] gives the response head, and then the body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A test's plain request: status, headers and body text (lossy UTF-8; empty when the body
/// breaks off). Panics when no response head arrives within [`FETCH_TIMEOUT`], or no complete
/// body within the same again.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let method = Method::from_bytes(method.as_bytes()).expect("a valid method");
    let body = Bytes::from(body.unwrap_or_default().to_string());
    let req = build(addr, method.clone(), path, headers, body);
    let (resp, _guard) = tokio::time::timeout(FETCH_TIMEOUT, send(addr, None, req, FETCH_TIMEOUT))
        .await
        .map_err(|_| ClientError::Timeout(FETCH_TIMEOUT))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let (parts, incoming) = resp.into_parts();
    let body = tokio::time::timeout(FETCH_TIMEOUT, collect(incoming, usize::MAX))
        .await
        .expect("body in time")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    (parts.status, parts.headers, body)
}
