//! The rebalancing decision, pure: given this pod's counts, what the others published and the
//! tolerance, whether to shed and down to how many streams. No clock, no store, no sockets, so
//! every rule below is a unit test.
//!
//! - **Fair share** = the mean of the *serving* pods' open streams (this one included). Pods
//!   that are not ready receive no new streams, so they are left out; while any pod drains,
//!   nobody sheds (its streams are moving already, and the set of pods is changing).
//! - **Engage** when this pod holds more than `mean × (1 + tolerance)`.
//! - **Shed down to** `keep = mean × (1 + tolerance / 2)` (rounded up), never below the mean + 1:
//!   the gap between where shedding starts and where it stops is the hysteresis, so a pod that
//!   just stopped is not pushed back over the line by the next reconnects, and the pods that
//!   received its streams (at most about the mean each) never cross the line and shed back
//!   (no ping-pong). While engaged, shedding goes on until `keep`, not only until the line.
//! - Only resumable streams are shed; a pod over its share with none of them skips.

use crate::contract::rebalance::PodState;
use crate::http::streams::Counts;
use crate::metrics::SkipReason;

/// Tolerances below this are treated as this (a 0% tolerance would shed on every reconnect).
const MIN_TOLERANCE: f64 = 0.01;
/// Slack for float rounding (`100 × 1.1` is `110.00000000000001`).
const EPSILON: f64 = 1e-9;

/// What this pod knows when it decides.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Its own streams, now.
    pub own: Counts,
    /// How it stands itself.
    pub own_state: PodState,
    /// Whether the store answers (no handoff without it).
    pub store_up: bool,
    /// The other pods' published totals and states (stale entries already left out).
    pub peers: Vec<(usize, PodState)>,
}

/// The spread of the serving pods (for the metrics; `None` without any).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Serving pods, this one included when it serves.
    pub serving: usize,
    /// Their mean: the fair share.
    pub mean: f64,
    /// The busiest of them over the mean (1 when even, or when the mean is 0).
    pub imbalance: f64,
}

/// What to do until the next round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Shed the oldest resumable streams while more than `keep` streams are open here.
    Shed {
        /// Streams to keep (the pacer re-checks the live count before every shed).
        keep: usize,
    },
    /// Shed nothing, for this reason.
    Skip(SkipReason),
}

/// The spread of the serving pods as `obs` describes it.
pub fn spread(obs: &Observation) -> Option<Spread> {
    let own = (obs.own_state == PodState::Serving).then_some(obs.own.total);
    let serving: Vec<usize> = own
        .into_iter()
        .chain(
            obs.peers
                .iter()
                .filter(|(_, s)| *s == PodState::Serving)
                .map(|(n, _)| *n),
        )
        .collect();
    if serving.is_empty() {
        return None;
    }
    let mean = serving.iter().sum::<usize>() as f64 / serving.len() as f64;
    let max = serving.iter().copied().max().unwrap_or(0) as f64;
    Some(Spread {
        serving: serving.len(),
        mean,
        imbalance: if mean > 0.0 { max / mean } else { 1.0 },
    })
}

/// Decide, given whether the previous round was shedding (`engaged`, the hysteresis state).
/// Returns the decision and whether this pod is engaged now.
pub fn decide(obs: &Observation, tolerance: f64, engaged: bool) -> (Decision, bool) {
    let skip = |r| (Decision::Skip(r), false);
    match obs.own_state {
        PodState::Draining => return skip(SkipReason::Draining),
        _ if !obs.store_up => return skip(SkipReason::StoreDown),
        PodState::Unready => return skip(SkipReason::Unready),
        PodState::Serving => {}
    }
    if obs.peers.iter().any(|(_, s)| *s == PodState::Draining) {
        return skip(SkipReason::PeerDraining);
    }
    let Some(spread) = spread(obs).filter(|s| s.serving >= 2) else {
        return skip(SkipReason::Alone);
    };
    let tolerance = tolerance.max(MIN_TOLERANCE);
    let (own, mean) = (obs.own.total, spread.mean);
    let high = mean * (1.0 + tolerance);
    let keep = ((mean * (1.0 + tolerance / 2.0) - EPSILON).ceil() as usize)
        .max((mean - EPSILON).ceil() as usize + 1);
    let over = if engaged {
        own > keep
    } else {
        own as f64 > high + EPSILON && own > keep
    };
    if !over {
        return skip(SkipReason::WithinTolerance);
    }
    if obs.own.resumable == 0 {
        return (Decision::Skip(SkipReason::NothingSheddable), true);
    }
    (Decision::Shed { keep }, true)
}

/// How many streams the pacer may still shed to reach `keep`: the excess, at most the
/// resumable ones.
pub fn excess(own: Counts, keep: usize) -> usize {
    own.total.saturating_sub(keep).min(own.resumable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(total: usize, resumable: usize, peers: &[usize]) -> Observation {
        Observation {
            own: Counts { total, resumable },
            own_state: PodState::Serving,
            store_up: true,
            peers: peers.iter().map(|n| (*n, PodState::Serving)).collect(),
        }
    }

    #[test]
    fn a_pod_far_over_its_share_sheds_down_to_half_the_tolerance_above_the_mean() {
        // 300 on one pod, two new pods: mean 100, line 120, keep 110.
        let (d, engaged) = decide(&obs(300, 300, &[0, 0]), 0.2, false);
        assert_eq!(d, Decision::Shed { keep: 110 });
        assert!(engaged);
        assert_eq!(
            excess(
                Counts {
                    total: 300,
                    resumable: 300
                },
                110
            ),
            190
        );
        let s = spread(&obs(300, 300, &[0, 0])).unwrap();
        assert_eq!((s.serving, s.mean, s.imbalance), (3, 100.0, 3.0));
    }

    #[test]
    fn within_the_tolerance_nothing_is_shed() {
        // 120 is exactly the line: not over it.
        let (d, engaged) = decide(&obs(120, 120, &[90, 90]), 0.2, false);
        assert_eq!(d, Decision::Skip(SkipReason::WithinTolerance));
        assert!(!engaged);
        let (d, _) = decide(&obs(121, 121, &[90, 89]), 0.2, false);
        assert_eq!(
            d,
            Decision::Shed { keep: 110 },
            "just over the line (mean 100)"
        );
    }

    #[test]
    fn hysteresis_keeps_shedding_below_the_line_until_keep_and_not_after() {
        // Engaged at 300; now at 115 (below the line of 120, above keep 110): go on.
        let (d, engaged) = decide(&obs(115, 115, &[93, 92]), 0.2, true);
        assert_eq!(d, Decision::Shed { keep: 110 });
        assert!(engaged);
        // The same counts, not engaged before: within tolerance (no start below the line).
        let (d, engaged) = decide(&obs(115, 115, &[93, 92]), 0.2, false);
        assert_eq!(d, Decision::Skip(SkipReason::WithinTolerance));
        assert!(!engaged);
        // Reached keep: disengage.
        let (d, engaged) = decide(&obs(110, 110, &[95, 95]), 0.2, true);
        assert_eq!(d, Decision::Skip(SkipReason::WithinTolerance));
        assert!(!engaged);
    }

    #[test]
    fn the_pods_that_received_the_streams_never_shed_them_back() {
        // After a rebalance from 300/0/0: 110/95/95. Neither receiver is over the line.
        for own in [95, 100, 105] {
            let (d, _) = decide(&obs(own, own, &[110, 95]), 0.2, false);
            assert_eq!(d, Decision::Skip(SkipReason::WithinTolerance), "{own}");
        }
    }

    #[test]
    fn small_counts_are_not_churned_for_one_stream() {
        // 2/1/0: mean 1, line 1.2, keep max(ceil 1.1, 1 + 1) = 2: nothing to gain.
        let (d, _) = decide(&obs(2, 2, &[1, 0]), 0.2, false);
        assert_eq!(d, Decision::Skip(SkipReason::WithinTolerance));
        // 5/0/0: mean 1.67, keep 3.
        let (d, _) = decide(&obs(5, 5, &[0, 0]), 0.2, false);
        assert_eq!(d, Decision::Shed { keep: 3 });
        // Nothing anywhere.
        let (d, _) = decide(&obs(0, 0, &[0, 0]), 0.2, false);
        assert_eq!(d, Decision::Skip(SkipReason::WithinTolerance));
    }

    #[test]
    fn only_resumable_streams_count_as_sheddable() {
        // Over its share, but every stream is a session or request stream.
        let (d, engaged) = decide(&obs(300, 0, &[0, 0]), 0.2, false);
        assert_eq!(d, Decision::Skip(SkipReason::NothingSheddable));
        assert!(engaged, "still over: re-checked next round");
        assert_eq!(
            excess(
                Counts {
                    total: 300,
                    resumable: 40
                },
                110
            ),
            40
        );
        assert_eq!(
            excess(
                Counts {
                    total: 100,
                    resumable: 100
                },
                110
            ),
            0
        );
    }

    #[test]
    fn draining_a_store_outage_unready_peers_and_being_alone_skip() {
        let mut o = obs(300, 300, &[0, 0]);
        o.own_state = PodState::Draining;
        assert_eq!(
            decide(&o, 0.2, true),
            (Decision::Skip(SkipReason::Draining), false)
        );
        let mut o = obs(300, 300, &[0, 0]);
        o.store_up = false;
        assert_eq!(
            decide(&o, 0.2, true),
            (Decision::Skip(SkipReason::StoreDown), false)
        );
        let mut o = obs(300, 300, &[0, 0]);
        o.own_state = PodState::Unready;
        assert_eq!(
            decide(&o, 0.2, false).0,
            Decision::Skip(SkipReason::Unready)
        );
        let mut o = obs(300, 300, &[0, 0]);
        o.peers[1].1 = PodState::Draining;
        assert_eq!(
            decide(&o, 0.2, true),
            (Decision::Skip(SkipReason::PeerDraining), false)
        );
        assert_eq!(
            decide(&obs(300, 300, &[]), 0.2, false).0,
            Decision::Skip(SkipReason::Alone)
        );
        // An unready peer is not counted: 300 against one serving peer with 0.
        let mut o = obs(300, 300, &[0, 0]);
        o.peers[1].1 = PodState::Unready;
        assert_eq!(decide(&o, 0.2, false).0, Decision::Shed { keep: 165 });
        o.peers[0].1 = PodState::Unready;
        assert_eq!(decide(&o, 0.2, false).0, Decision::Skip(SkipReason::Alone));
    }

    #[test]
    fn the_tolerance_scales_the_line_and_keep() {
        // 50%: mean 100, line 150, keep 125.
        assert_eq!(
            decide(&obs(151, 151, &[75, 74]), 0.5, false).0,
            Decision::Shed { keep: 125 }
        );
        assert_eq!(
            decide(&obs(150, 150, &[75, 75]), 0.5, false).0,
            Decision::Skip(SkipReason::WithinTolerance)
        );
        // A zero tolerance is taken as 1%: keep is still at least the mean + 1.
        assert_eq!(
            decide(&obs(103, 103, &[99, 98]), 0.0, false).0,
            Decision::Shed { keep: 101 }
        );
    }
}
