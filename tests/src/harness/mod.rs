//! Real parts for the data-plane tests: Redis, HAProxy, and "pods" of demo app + sidecar on
//! their own loopback addresses, terminated exactly as the kubelet does. Every process is a
//! child that dies with its owner (kill on drop, and the kernel's parent-death signal should the
//! test process itself be killed), so no run leaves anything behind.

pub mod binaries;
pub mod cluster;
pub mod haproxy;
pub mod kubelet;
pub mod pod;
pub mod ports;

pub use binaries::Binaries;
pub use cluster::{Balance, Cluster, ClusterConfig, Mode};
pub use pod::AppLaunch;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use ssekeeper_testkit::Patience;
use ssekeeper_testkit::process::LaunchError;

/// Poll `GET path` on `addr` until it answers 200, for at most `timeout`. True when it did.
pub async fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let patience = Patience::within(timeout).every(Duration::from_millis(50));
    ssekeeper_testkit::poll(patience, || async {
        let r = ssekeeper_testkit::client::request(
            addr,
            None,
            Method::GET,
            path,
            &[],
            Bytes::new(),
            Duration::from_millis(500),
            64 * 1024,
        )
        .await;
        r.is_ok_and(|r| r.status.is_success()).then_some(())
    })
    .await
    .is_some()
}

/// Why the harness could not set something up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A process could not be started, or never became ready.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A required program is not installed or not built.
    #[error("{0}")]
    Missing(String),
    /// HAProxy's runtime API refused a command.
    #[error("haproxy runtime API: {0}")]
    HaProxy(String),
    /// Any other I/O failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Run a whole test body under a time bound: a hang fails the test with a clear message instead
/// of stalling the suite (and dropping the body kills every process it started).
pub async fn bounded<F: std::future::Future>(limit: Duration, what: &str, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}
