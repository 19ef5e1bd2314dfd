//! Rebalancing (`--rebalance`): a pod holding more than its fair share of streams sheds
//! resumable ones, slowly, through the drain's own handoff, so their clients reconnect to the
//! less loaded pods without losing an event.
//!
//! One task per pod:
//! - every interval (jittered) it publishes its counts to the store and reads the others' in
//!   one script call ([`crate::store::StreamCountStore`]; the key layout is
//!   [`crate::contract::rebalance`]), sets the spread metrics and decides
//!   ([`decision::decide`]: how many to keep, with hysteresis);
//! - between rounds it sheds while more than `keep` streams are open here: the oldest
//!   resumable stream each time, one at a time, spaced at least `1 / maxShedPerSecond` apart
//!   plus up to half of that again at random (never a burst, never in step with another pod);
//! - before every shed it checks again that the pod serves and the store answers: a drain or an
//!   outage stops shedding at once, not at the next round.
//!
//! A shed stream is closed exactly like a drained one (what is queued, then the `retry:` hint);
//! its recorder waits a moment for the client to come back here, otherwise records `Handover`
//! and keeps capturing until the pod the client reconnected to has taken the session over by
//! overlap (see `session::recorder`). Its client reconnects with `Last-Event-ID` wherever the
//! load balancer sends it: with client-IP affinity that is this pod again, so rebalancing needs
//! affinity off (the sidecar routes keyed requests to their session's pod itself).

pub mod decision;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RebalanceSettings;
use crate::contract::rebalance::{self as layout, PodState};
use crate::http::streams::Streams;
use crate::metrics::{Metrics, PodLabel, ShedReason, SkipReason};
use crate::phase::Lifecycle;
use crate::runtime::health::AppProbe;
use crate::store::{CountsReport, GuardedStore, SessionStore as _, Spread};

use self::decision::{Decision, Observation};

/// What the rebalancing task works with.
pub struct Rebalancer {
    /// This pod's name (its field in the hash).
    pub pod: String,
    /// The open client streams (counted, and shed from).
    pub streams: Arc<Streams>,
    /// The store (its health decides whether shedding is possible).
    pub store: Arc<GuardedStore>,
    /// Readiness and the drain phase.
    pub lifecycle: Arc<Lifecycle>,
    /// Whether the app accepts connections.
    pub app_probe: Arc<AppProbe>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tuning.
    pub settings: RebalanceSettings,
}

/// Longest the final withdrawal of this pod's entry may take.
const WITHDRAW_BUDGET: Duration = Duration::from_secs(1);

impl Rebalancer {
    /// Start the task; it ends (withdrawing this pod's entry) once `stop` is cancelled.
    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }

    fn own_state(&self) -> PodState {
        if !self.lifecycle.ready() || self.lifecycle.is_draining() {
            PodState::Draining
        } else if !self.app_probe.is_up() {
            PodState::Unready
        } else {
            PodState::Serving
        }
    }

    /// Whether a shed may happen right now (checked before every one).
    fn may_shed(&self) -> bool {
        self.own_state() == PodState::Serving && self.store.is_up()
    }

    async fn run(self, stop: CancellationToken) {
        let s = self.settings;
        // The first round soon (a new pod must show up quickly), at a random moment so pods
        // started together do not write in step; later ones every interval ± 10%.
        let mut next_round = Instant::now() + s.interval.mul_f64(rand::random::<f64>() * 0.5);
        let mut next_shed = Instant::now();
        let mut engaged = false;
        let mut keep: Option<usize> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next_round) => {
                    let (k, e) = self.round(engaged).await;
                    keep = k;
                    engaged = e;
                    next_round = Instant::now() + s.interval.mul_f64(0.9 + rand::random::<f64>() * 0.2);
                }
                _ = tokio::time::sleep_until(next_shed), if keep.is_some() => {
                    let limit = keep.unwrap_or(usize::MAX);
                    if !self.may_shed() {
                        keep = None;
                        engaged = false;
                        continue;
                    }
                    let gap = s.min_gap();
                    if decision::excess(self.streams.counts(), limit) > 0 && self.streams.shed_oldest() {
                        self.metrics.rebalance.shed(ShedReason::OverShare);
                        next_shed = Instant::now() + gap.mul_f64(1.0 + rand::random::<f64>() * 0.5);
                    } else {
                        // Down to `keep` (or only unsheddable streams left): look again later.
                        next_shed = Instant::now() + gap;
                    }
                }
            }
        }
        self.withdraw().await;
    }

    /// Publish, read, decide. Returns `keep` (shed while more are open) and the hysteresis
    /// state.
    async fn round(&self, engaged: bool) -> (Option<usize>, bool) {
        let Some(counts_store) = self.store.stream_counts() else {
            return (None, false);
        };
        let counts = self.streams.counts();
        let own_state = self.own_state();
        self.metrics
            .rebalance
            .own_resumable
            .set(i64::try_from(counts.resumable).unwrap_or(i64::MAX));
        let stale_ms = layout::stale_after_ms(self.settings.interval_seconds);
        let report = CountsReport {
            pod: &self.pod,
            total: u32::try_from(counts.total).unwrap_or(u32::MAX),
            resumable: u32::try_from(counts.resumable).unwrap_or(u32::MAX),
            state: own_state,
            stale_ms,
            key_ttl_ms: layout::key_ttl_ms(self.settings.interval_seconds),
        };
        let published =
            crate::store::guard::timed(self.store.timeout(), counts_store.publish_counts(report))
                .await;
        let spread = match published {
            Ok(spread) => Some(spread),
            Err(e) => {
                tracing::debug!(error = %e, "rebalance: could not publish the stream count");
                None
            }
        };
        let store_up = spread.is_some() && self.store.is_up();
        let peers = spread.as_ref().map(|sp| self.peers(sp)).unwrap_or_default();
        if let Some(sp) = &spread {
            self.show(sp);
        }
        let obs = Observation {
            own: counts,
            own_state,
            store_up,
            peers,
        };
        if let Some(view) = decision::spread(&obs) {
            let m = &self.metrics.rebalance;
            m.fair_share.set(view.mean);
            m.imbalance_ratio.set(view.imbalance);
            m.serving_pods
                .set(i64::try_from(view.serving).unwrap_or(i64::MAX));
        }
        let (d, now_engaged) = decision::decide(&obs, self.settings.tolerance, engaged);
        if now_engaged != engaged {
            let view = decision::spread(&obs);
            tracing::info!(
                own = counts.total,
                resumable = counts.resumable,
                fair_share = view.map(|v| v.mean).unwrap_or(0.0),
                serving_pods = view.map(|v| v.serving).unwrap_or(0),
                decision = ?d,
                "rebalance: {}",
                if now_engaged { "over the fair share: shedding" } else { "shedding stopped" }
            );
        }
        match d {
            Decision::Shed { keep } => (Some(keep), now_engaged),
            Decision::Skip(reason) => {
                self.metrics.rebalance.skipped(reason);
                if reason == SkipReason::StoreDown {
                    tracing::debug!("rebalance: store down, nothing shed");
                }
                (None, now_engaged)
            }
        }
    }

    /// The other pods' totals and states.
    fn peers(&self, spread: &Spread) -> Vec<(usize, PodState)> {
        spread
            .pods
            .iter()
            .filter(|(name, _)| *name != self.pod)
            .map(|(_, p)| (p.total as usize, p.state))
            .collect()
    }

    /// The spread as read, per pod (pods no longer listed leave the family).
    fn show(&self, spread: &Spread) {
        let fam = &self.metrics.rebalance.pod_streams;
        fam.clear();
        for (name, p) in &spread.pods {
            fam.get_or_create(&PodLabel { pod: name.clone() })
                .set(i64::from(p.total));
        }
    }

    /// This pod no longer serves: take its entry out so the others stop counting it now, not
    /// three intervals later.
    async fn withdraw(&self) {
        let Some(counts_store) = self.store.stream_counts() else {
            return;
        };
        let stale_ms = layout::stale_after_ms(self.settings.interval_seconds);
        let r = crate::store::guard::timed(
            WITHDRAW_BUDGET,
            counts_store.withdraw_counts(&self.pod, stale_ms),
        )
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "rebalance: could not withdraw the stream count (it goes stale)");
        }
    }
}
