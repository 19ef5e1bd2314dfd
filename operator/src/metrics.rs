//! Operator metrics (prometheus-client), served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set for per-kind error counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::kind()`.
    pub kind: String,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconcile errors by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile wall time.
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease and runs the controller.
    pub leader: Gauge,
}

impl Metrics {
    /// Create the metrics and register them in `registry` under the `ssekeeper_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            leader: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("ssekeeper_operator");
        sub.register("reconciles", "Reconciles run", metrics.reconciles.clone());
        sub.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            metrics.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Reconcile wall time",
            metrics.duration.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica is the leader",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Count one reconcile that took `took`.
    pub fn observe(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Count one error.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }
}
