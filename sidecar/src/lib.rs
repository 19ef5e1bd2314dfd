//! The ssekeeper sidecar: an SSE-aware reverse proxy that sits in front of an unchanged app.
//!
//! Layers by concern, imports running one way (DESIGN.md "Layout"):
//!
//! - [`runtime`]: start-up, the kubelet's termination order (drain), the preStop socket, the
//!   admin port, probes and logs. It builds every part and hands each the small context it needs.
//! - `routing`: what a request is (resume, forward to the session's owner, proxy to the app),
//!   where its session lives, and the signatures between sidecars.
//! - `session`: a session's recorder (the one task owning its upstream), resume and takeover,
//!   replay, the leases this pod holds and the gates of keyed requests.
//! - `http`: the pieces on the wire: bodies, headers, the client to the app and to peers, session
//!   keys in requests and responses, the bound on open client streams.
//! - [`store`] (sessions in Redis or memory, behind one guard), [`sse`] (the codec), [`cursor`],
//!   [`metrics`], [`config`], [`phase`], and [`contract`], shared with the operator.

pub use ssekeeper_contract as contract;

pub mod config;
pub mod cursor;
mod http;
pub mod metrics;
pub mod phase;
mod routing;
mod runtime;
mod session;
pub mod sse;
pub mod store;

pub use http::session_key;
pub use routing::forward;
pub use runtime::{lifecycle, server, telemetry};
