//! The ssekeeper sidecar: an SSE-aware reverse proxy that sits in front of an unchanged app.
//!
//! `contract` is the single source of truth shared with the operator: what the operator renders
//! into the pod is exactly what this crate parses. The rest is small layers with one job each:
//! `proxy` decides what a request is (resume, forward, proxy), `recorder` owns a session's
//! upstream, `resume` replays and takes over, `leases` holds ownership, `drain` follows the
//! kubelet's termination order, `lifecycle` serves the preStop hook on a unix socket (never the
//! network), `admin` serves probes, metrics and forwarded requests.

pub mod admin;
pub use ssekeeper_contract as contract;

pub mod body;
pub mod config;
pub mod cursor;
pub mod drain;
pub mod forward;
pub mod gates;
pub mod headers;
pub mod health;
pub mod leases;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod recorder;
pub mod replay;
pub mod resume;
pub mod routing;
pub mod server;
pub mod session_key;
pub mod sse;
pub mod state;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod upstream;
