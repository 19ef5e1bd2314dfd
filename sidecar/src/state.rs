//! What every task of the sidecar shares, built once at start.

use std::sync::Arc;

use crate::config::Settings;
use crate::drain::Lifecycle;
use crate::health::{AppProbe, Heartbeat};
use crate::leases::LeaseBook;
use crate::metrics::Metrics;
use crate::recorder::Recorders;
use crate::store::GuardedStore;
use crate::streams::Streams;
use crate::upstream::HttpClient;

/// The sidecar's shared state: settings, store, leases, streams, recorders, clients, lifecycle.
pub struct Shared {
    /// Runtime settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The session store, every call bounded, observed for health and counted.
    pub store: Arc<GuardedStore>,
    /// Leases this pod holds.
    pub book: Arc<LeaseBook>,
    /// Open client streams.
    pub streams: Arc<Streams>,
    /// Recorders running here.
    pub recorders: Recorders,
    /// Keyed requests in flight, and keys refused after their session's handover.
    pub gates: Arc<crate::gates::Gates>,
    /// Client for the app.
    pub app: HttpClient,
    /// Client for other sidecars' admin ports.
    pub peers: HttpClient,
    /// Drain phase and readiness.
    pub lifecycle: Lifecycle,
    /// Whether the app's port accepts connections.
    pub app_probe: Arc<AppProbe>,
    /// Whether the runtime and the shared locks still make progress (`/live`).
    pub heartbeat: Arc<Heartbeat>,
}
