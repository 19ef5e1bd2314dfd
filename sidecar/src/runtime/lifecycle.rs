//! The lifecycle socket: how the kubelet's preStop hook reaches the sidecar without a network.
//!
//! A preStop served on the admin port would let any pod that can reach that port flip a replica's
//! readiness off (a denial of service on a flat pod network). So the hook is an `exec` of this
//! binary's own `prestop` subcommand ([`run_prestop`]), which talks HTTP/1 over a unix socket in
//! an `emptyDir` mounted in the sidecar container only; the socket file is `0600`, so even inside
//! the container only the sidecar's user can use it.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::contract::{PrestopArgs, paths};
use crate::http::body::{ProxyBody, full};
use crate::phase::Lifecycle;

/// Permissions of the socket file: only the sidecar's own user may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// Bind the lifecycle socket at `path`: create its directory if missing (`0700`), replace a stale
/// socket a previous run left behind (never a live one, never a file that is not a socket), and
/// restrict the new socket to [`SOCKET_MODE`].
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let context = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("lifecycle socket {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(context)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(context(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving it",
                )));
            }
            std::fs::remove_file(path).map_err(context)?;
        }
        Ok(_) => {
            return Err(context(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e)),
    }
    let listener = UnixListener::bind(path).map_err(context)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(context)?;
    Ok(listener)
}

/// Serve the preStop hook on `listener` until `stop`, then remove the socket file at `path`:
/// readiness off, then hold `hold` before answering.
pub async fn serve(
    lifecycle: Arc<Lifecycle>,
    hold: Duration,
    listener: UnixListener,
    path: PathBuf,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "lifecycle socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let lifecycle = lifecycle.clone();
        let service = service_fn(move |req| {
            let lifecycle = lifecycle.clone();
            async move { Ok::<_, Infallible>(handle(&lifecycle, hold, req).await) }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r
}

async fn handle(
    lifecycle: &Lifecycle,
    hold: Duration,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, paths::PRESTOP) => {
            lifecycle.prestop(hold).await;
            text(
                StatusCode::OK,
                format!("readiness off, held {} s\n", hold.as_secs()),
            )
        }
        (_, paths::PRESTOP) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /prestop\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Why the preStop subcommand failed; the message is what the kubelet records for the hook.
#[derive(Debug, thiserror::Error)]
pub enum PrestopError {
    /// Nothing listens on the socket (sidecar not running, or another path configured).
    #[error(
        "cannot reach the sidecar on {path}: {source} (is it running, with --lifecycle-socket={path}?)"
    )]
    Connect {
        /// The socket tried.
        path: String,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The connection broke before a complete answer.
    #[error("the sidecar's answer on {path} broke off: {source}")]
    Http {
        /// The socket used.
        path: String,
        /// The HTTP error.
        source: hyper::Error,
    },
    /// The sidecar answered, but not with success.
    #[error("the sidecar refused the preStop hook: HTTP {status}: {body}")]
    Refused {
        /// The status it answered.
        status: StatusCode,
        /// Its body, trimmed.
        body: String,
    },
    /// No answer within the timeout.
    #[error("no answer from the sidecar on {path} within {secs} s")]
    Timeout {
        /// The socket used.
        path: String,
        /// The timeout.
        secs: u32,
    },
}

/// The preStop hook, client side: `POST /prestop` on the lifecycle socket, waiting (at most the
/// timeout) for the sidecar to answer once its hold is over. Returns the sidecar's answer.
pub async fn run_prestop(args: &PrestopArgs) -> Result<String, PrestopError> {
    let path = args.lifecycle_socket.display().to_string();
    let secs = args.timeout_seconds;
    let call = async {
        let stream = UnixStream::connect(&args.lifecycle_socket)
            .await
            .map_err(|source| PrestopError::Connect {
                path: path.clone(),
                source,
            })?;
        let http = |source| PrestopError::Http {
            path: path.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::POST)
            .uri(paths::PRESTOP)
            .header(http::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .expect("a static request is valid");
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_string();
        if status.is_success() {
            Ok(body)
        } else {
            Err(PrestopError::Refused { status, body })
        }
    };
    match tokio::time::timeout(Duration::from_secs(u64::from(secs)), call).await {
        Ok(r) => r,
        Err(_) => Err(PrestopError::Timeout { path, secs }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("ssekeeper-lifecycle-unit-{}", std::process::id()))
            .join(name)
    }

    #[tokio::test]
    async fn bind_makes_a_private_socket_and_never_replaces_a_live_one_or_a_file() {
        let path = scratch("live.sock");
        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        let e = bind(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("live.sock"), "{e}");
        drop(live);
        // Now stale: replaced.
        drop(bind(&path).unwrap());

        let file = scratch("plain-file");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind(&file).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
