//! The ssekeeper sidecar: an SSE-aware reverse proxy that sits in front of an unchanged app.
//!
//! `contract` is the single source of truth shared with the operator: what the operator renders
//! into the pod is exactly what this crate parses.

pub mod contract;
pub mod cursor;
pub mod sse;
