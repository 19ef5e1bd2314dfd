//! The one set of test support every test of the workspace uses, so that each helper exists once
//! and a fix to it reaches every test.
//!
//! - [`eventually`](mod@eventually): bounded polling ("until this holds, for at most that long").
//! - [`redis`]: real `redis-server` processes (single, cluster, sentinel) on free loopback ports.
//! - [`app`]: the fake SSE app the proxy is tested against, in process.
//! - [`client`]: the HTTP and SSE client (one stream by hand, or an `EventSource` that reconnects
//!   with `Last-Event-ID`).
//! - [`sse`]: the SSE writer the app uses and the reader the client uses.
//! - [`process`], [`tempdir`], [`ports`]: child processes that never leak, scratch directories
//!   kept when a test fails, free ports.
//!
//! It depends on neither the sidecar nor the operator: the sidecar takes it as a dev-dependency,
//! and its SSE code is deliberately independent of the sidecar's codec, so a codec bug cannot
//! hide on both sides of the proxy at once.

#![warn(missing_docs)]

pub mod app;
pub mod client;
pub mod eventually;
pub mod ports;
pub mod process;
pub mod redis;
pub mod sse;
pub mod tempdir;

pub use eventually::{Patience, eventually, eventually_true, poll};
/// The WebSocket client (and server) the tunnel tests use: a real implementation, not ours.
pub use tokio_tungstenite;
