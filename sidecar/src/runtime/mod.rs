//! The composition root: builds every part, serves the ports and the lifecycle socket, and
//! follows the kubelet's termination order.

pub mod admin;
pub mod admission;
pub mod descriptors;
pub mod drain;
pub mod health;
pub mod lifecycle;
pub mod rebalance;
pub mod server;
pub mod state;
pub mod telemetry;
