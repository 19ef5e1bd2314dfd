//! One-shot HTTP requests and the connection set-up the EventSource shares.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::ClientError;

/// Aborts the task driving a client connection when the request's owner is done with it, so
/// no connection outlives its client.
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

/// An HTTP/1 connection ready for requests, plus the guard that ends it.
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
        let (mut sender, _guard) = open::<Full<Bytes>>(target, source, timeout).await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, target.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body))
            .expect("caller-supplied header names are valid");
        let resp = sender.send_request(req).await?;
        let (parts, mut incoming) = resp.into_parts();
        let mut buf = BytesMut::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > max_body {
                    return Err(ClientError::BodyTooLarge(max_body));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(HttpReply {
            status: parts.status,
            headers: parts.headers,
            body: buf.freeze(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}
