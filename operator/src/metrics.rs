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

/// Label set of one SseService's condition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// The SseService's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The condition type (Ready, Progressing, Degraded, SessionStoreReachable).
    pub condition: String,
}

/// Label set of `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The operator's version.
    pub version: String,
}

/// Label set of the rollout queue's gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// `rolling` (holding a slot), `queued` (waiting for one) or `paused`.
    pub state: String,
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
    /// Each SseService's conditions as the leader last wrote them: 1 True, 0 otherwise. What
    /// alerts ("not Ready for 10 minutes", "Degraded") are written against.
    pub conditions: Family<ConditionLabels, Gauge>,
    /// SseServices in each state of the fleet's rollout queue: how far an operator upgrade has
    /// got, and whether a stuck rollout holds the rest back.
    pub rollouts: Family<RolloutLabels, Gauge>,
}

impl Metrics {
    /// Create the metrics and register them in `registry` under the `ssekeeper_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            leader: Gauge::default(),
            conditions: Family::default(),
            rollouts: Family::default(),
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
        sub.register(
            "sseservice_condition",
            "Each SseService's conditions (1 True, 0 False or Unknown), as the leader last wrote them",
            metrics.conditions.clone(),
        );
        sub.register(
            "rollouts",
            "SseServices rolling (holding one of maxConcurrentRollouts), queued or paused",
            metrics.rollouts.clone(),
        );
        metrics.set_rollouts(crate::controller::rollouts::Counts::default());
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        sub.register("build_info", "The operator's version (always 1)", build);
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

    /// Record an SseService's conditions `(type, status)`.
    pub fn set_conditions<'a>(
        &self,
        namespace: &str,
        name: &str,
        conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for (ty, status) in conditions {
            self.conditions
                .get_or_create(&ConditionLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    condition: ty.into(),
                })
                .set(i64::from(status == "True"));
        }
    }

    /// Record the rollout queue's counts.
    pub fn set_rollouts(&self, counts: crate::controller::rollouts::Counts) {
        for (state, n) in [
            ("rolling", counts.rolling),
            ("queued", counts.queued),
            ("paused", counts.paused),
        ] {
            self.rollouts
                .get_or_create(&RolloutLabels {
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Forget a deleted SseService's conditions (no series for what no longer exists).
    pub fn forget_conditions(&self, namespace: &str, name: &str) {
        for ty in ["Ready", "Progressing", "Degraded", "SessionStoreReachable"] {
            self.conditions.remove(&ConditionLabels {
                namespace: namespace.into(),
                name: name.into(),
                condition: ty.into(),
            });
        }
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
    fn conditions_are_one_series_each_and_go_with_their_sseservice() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_conditions("ns", "chat", [("Ready", "False"), ("Degraded", "True")]);
        let text = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        let t = text();
        assert!(
            t.contains(r#"ssekeeper_operator_sseservice_condition{namespace="ns",name="chat",condition="Degraded"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"condition="Ready"} 0"#), "{t}");
        assert!(t.contains("ssekeeper_operator_build_info{version="), "{t}");
        metrics.forget_conditions("ns", "chat");
        assert!(
            !text().contains("sseservice_condition{"),
            "gone with the SseService"
        );
    }

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
