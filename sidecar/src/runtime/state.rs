//! What the runtime's own tasks (listeners, admin port, heartbeat) share: the request handler,
//! the drain phase, the probes and the settings. Nothing below the runtime sees it.

use std::sync::Arc;

use crate::config::Settings;
use crate::phase::Lifecycle;
use crate::routing::handler::Router;
use crate::runtime::health::{AppProbe, Heartbeat};

/// The runtime's context.
pub struct Sidecar {
    /// The request handler (and through it the session layer).
    pub router: Arc<Router>,
    /// Drain phase and readiness.
    pub lifecycle: Arc<Lifecycle>,
    /// Whether the app's port accepts connections.
    pub app_probe: Arc<AppProbe>,
    /// Whether the runtime and the shared locks still make progress (`/live`).
    pub heartbeat: Arc<Heartbeat>,
    /// Runtime settings.
    pub settings: Settings,
    /// Callers of the app's preStop endpoint waiting at once: bounded, since anyone who reaches
    /// the admin port can call it.
    pub app_prestop_waiters: Arc<tokio::sync::Semaphore>,
    /// Nonces of the forwards accepted within their window (each is accepted once).
    pub forwards_seen: crate::routing::forward::ReplayCache,
}

/// How many callers may wait on the app's preStop endpoint at once (the kubelet is one).
pub const APP_PRESTOP_WAITERS: usize = 8;
