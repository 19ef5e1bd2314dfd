//! The ssekeeper operator: turns an `SseService` into a Deployment with the sidecar injected, a
//! Service with ClientIP affinity, a forwarding-key Secret and optional Ingress and PDB.
//!
//! Reconcile runs in phases (validate -> render, pure -> apply -> status), so everything that
//! decides what the cluster should look like is a pure function tested with golden files.

pub mod api;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod purge;
pub mod render;
pub mod schema;
pub mod selftest;
pub mod server;
pub mod status;
pub mod store_check;
pub mod telemetry;
pub mod validate;
