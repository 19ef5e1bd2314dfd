//! What the sidecar does not parse still passes: a protocol upgrade (`Connection: Upgrade`, a
//! WebSocket handshake) on the client port is sent to the app with its upgrade headers intact,
//! and once the app answers `101 Switching Protocols` both connections are joined byte for byte.
//! Apps that serve SSE and WebSocket side by side keep working behind the sidecar.
//!
//! A tunnel is registered like a request stream: the drain leaves it open and closes it only at
//! the request deadline.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::http::body::{ProxyBody, empty, full};
use crate::http::client::outbound;
use crate::http::kind::{KindCell, StreamKind};
use crate::metrics::ErrorKind;
use crate::session::Sessions;

/// Whether a request asks to switch protocols: a `Connection` header naming `upgrade` and an
/// `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

fn status(code: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(text));
    *r.status_mut() = code;
    r
}

/// Send the upgrade request to the app; on `101`, join the client's and the app's connections in
/// the background and answer the client with the app's `101`. Anything else the app answers is
/// passed back as it is (the handshake was refused).
pub async fn handle<B>(shared: &Sessions, mut req: Request<B>, path: &str) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
{
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let Some(guard) = shared
        .clients
        .streams()
        .open(KindCell::new(StreamKind::Request))
    else {
        shared.metrics.error(ErrorKind::TooManyStreams);
        return status(StatusCode::SERVICE_UNAVAILABLE, "too many streams\n");
    };
    let mut headers = parts.headers.clone();
    // The handshake's own hop-by-hop headers are what the app must see.
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let upstream = outbound(parts.method, path, headers, empty(), shared.app.addr());
    let mut resp = match shared.app.send(upstream).await {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.error(e.kind());
            tracing::warn!(error = %e, "app refused the upgrade request");
            return status(StatusCode::BAD_GATEWAY, "app unavailable\n");
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, crate::http::body::boxed(body));
    }
    let app_side = hyper::upgrade::on(&mut resp);
    let metrics = shared.metrics.clone();
    metrics.tunnels.inc();
    metrics.active_tunnels.inc();
    let close = guard.token();
    tokio::spawn(async move {
        let _registered = guard;
        let joined = async {
            let (client, app) = tokio::try_join!(client_side, app_side)?;
            let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
            tokio::io::copy_bidirectional(&mut client, &mut app).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        tokio::select! {
            r = joined => if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended with an error");
            },
            // The drain's request deadline.
            _ = close.cancelled() => tracing::info!("tunnel closed at the request deadline"),
        }
        metrics.active_tunnels.dec();
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
        h.remove(header::UPGRADE);
        assert!(!is_upgrade(&h));
    }
}
