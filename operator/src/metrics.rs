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

    /// Start timing one reconcile: counted when the guard drops, however the reconcile ends
    /// (an early `?` included).
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            started: std::time::Instant::now(),
        }
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

/// Times one reconcile; see [`Metrics::reconcile_timer`].
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.observe(self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_counts_a_reconcile_however_it_ends() {
        let metrics = Metrics::register(&mut Registry::default());
        let early = |fail: bool| -> Result<(), ()> {
            let _timer = metrics.reconcile_timer();
            if fail {
                return Err(());
            }
            Ok(())
        };
        assert!(early(true).is_err());
        assert!(early(false).is_ok());
        assert_eq!(metrics.reconciles.get(), 2);
    }
}
