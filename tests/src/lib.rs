//! Shared helpers for the integration and end-to-end tests.
//!
//! The data plane is tested against real parts: `demo` is the SSE app put behind the sidecar,
//! `client` is an EventSource-like load client, `verify` checks what clients received, and
//! `harness` runs real Redis, HAProxy and sidecar + app "pods" terminated in the kubelet's order.

pub mod client;
pub mod demo;
pub mod harness;
pub mod scenario;
pub mod verify;
