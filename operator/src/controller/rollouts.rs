//! The fleet's rollout queue: a change that is not an SseService's own (an operator upgrade's new
//! sidecar image or defaults, a rotated Redis Secret) reaches every SseService at the same moment,
//! and rolling them all at once would move every stream in the cluster at once. The queue lets
//! `maxConcurrentRollouts` of them roll, holds the others' pod templates as they are and admits
//! them oldest first as slots free. A spec change by the SseService's owner rolls at once (they
//! asked for it) but still occupies a slot while it rolls. A paused SseService
//! (`ssekeeper.dev/paused: "true"`) keeps its pod template whatever changes.
//!
//! The queue is in memory, shared by every namespace's controller of the leader. A new leader
//! admits nothing for [`WARM_UP`], time enough for the initial reconcile of every SseService to
//! register the rollouts already under way, so a failover does not exceed the limit.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::SseService;

/// The annotation that holds an SseService's pod template as it is.
pub const PAUSED_ANNOTATION: &str = "ssekeeper.dev/paused";

/// How long a new leader waits before admitting queued rollouts.
pub const WARM_UP: Duration = Duration::from_secs(10);

/// What a held SseService's status says during the warm-up (no Event: it lasts seconds).
pub const WARM_UP_MESSAGE: &str =
    "the operator just became leader; counting the rollouts under way before starting new ones";

/// How often a held SseService is looked at again (a slot may have freed).
pub const RECHECK: Duration = Duration::from_secs(5);

/// Whether the SseService asks for its template to be held.
pub fn paused(svc: &SseService) -> bool {
    svc.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// What the reconciler knows about one SseService's pod template before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Applying the rendered Deployment would change the live pod template.
    pub template_changes: bool,
    /// The SseService's spec changed since its status last said (its owner's own change).
    pub own_spec_change: bool,
    /// The SseService carries the pause annotation.
    pub paused: bool,
    /// The live Deployment still has pods of an older template (a rollout under way).
    pub rolling_now: bool,
}

/// The queue's answer for one SseService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply as rendered.
    Apply,
    /// Keep the live pod template (apply everything else); `reason` and `message` go to the
    /// Progressing condition and an Event.
    Hold {
        /// `RolloutQueued` or `RolloutPaused`.
        reason: &'static str,
        /// Why, and what the SseService waits for.
        message: String,
    },
}

/// How many SseServices the queue counts in each state (the `rollouts` metric).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Holding a slot.
    pub rolling: usize,
    /// Waiting for one.
    pub queued: usize,
    /// Held by the pause annotation.
    pub paused: usize,
}

/// An SseService in the queue: namespace and name, ordered (the tie-break between equal times).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    namespace: String,
    name: String,
}

impl From<&ObjectRef<SseService>> for Key {
    fn from(r: &ObjectRef<SseService>) -> Self {
        Self {
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

struct State {
    /// When this process last became leader (the warm-up counts from there).
    started: Instant,
    /// SseServices rolling, with when they got their slot.
    rolling: BTreeMap<Key, Instant>,
    /// SseServices waiting, with when they started to wait (admitted oldest first).
    waiting: BTreeMap<Key, Instant>,
    /// SseServices whose template change is held by the pause annotation.
    paused: BTreeMap<Key, ()>,
}

impl State {
    fn new(started: Instant) -> Self {
        Self {
            started,
            rolling: BTreeMap::new(),
            waiting: BTreeMap::new(),
            paused: BTreeMap::new(),
        }
    }
}

/// The queue (one per operator process).
pub struct RolloutQueue {
    /// At most this many rolling at once; 0 means no limit.
    max: usize,
    state: Mutex<State>,
}

impl RolloutQueue {
    /// A queue admitting `max` rollouts at once (0: unlimited).
    pub fn new(max: usize) -> Self {
        Self::starting_at(max, Instant::now())
    }

    fn starting_at(max: usize, started: Instant) -> Self {
        Self {
            max,
            state: Mutex::new(State::new(started)),
        }
    }

    /// Start over, as a leader that has just taken over: what a previous term knew may be stale,
    /// and the rollouts under way are counted again during the warm-up.
    pub fn restart(&self) {
        *self.state.lock().expect("rollout queue lock") = State::new(Instant::now());
    }

    /// Decide for `svc` given what its apply would change, at `now`.
    pub fn decide(&self, svc: &ObjectRef<SseService>, change: Change, now: Instant) -> Verdict {
        let svc = &Key::from(svc);
        let mut state = self.state.lock().expect("rollout queue lock");
        if !change.template_changes || change.paused {
            state.waiting.remove(svc);
        }
        if change.paused && change.template_changes {
            state.rolling.remove(svc);
            state.paused.insert(svc.clone(), ());
            return Verdict::Hold {
                reason: "RolloutPaused",
                message: format!(
                    "the pod template changed but the {PAUSED_ANNOTATION} annotation holds it; remove the annotation to roll"
                ),
            };
        }
        state.paused.remove(svc);
        if !change.template_changes {
            if change.rolling_now {
                // A rollout this process did not start (an earlier leader's): count it.
                state.rolling.entry(svc.clone()).or_insert(now);
            }
            return Verdict::Apply;
        }
        if self.max == 0 || change.own_spec_change || state.rolling.contains_key(svc) {
            state.rolling.entry(svc.clone()).or_insert(now);
            return Verdict::Apply;
        }
        let since = *state.waiting.entry(svc.clone()).or_insert(now);
        let warming = now.duration_since(state.started) < WARM_UP;
        let free = self.max.saturating_sub(state.rolling.len());
        let ahead = state
            .waiting
            .iter()
            .filter(|(other, t)| (**t, *other) < (since, svc))
            .count();
        if !warming && ahead < free {
            state.waiting.remove(svc);
            state.rolling.insert(svc.clone(), now);
            return Verdict::Apply;
        }
        let rolling: Vec<String> = state.rolling.keys().take(5).map(Key::to_string).collect();
        let message = if warming {
            WARM_UP_MESSAGE.to_string()
        } else {
            format!(
                "the pod template changed (not by this SseService's spec); waiting for one of {} rollout slots (maxConcurrentRollouts), {ahead} ahead in the queue; rolling: {}",
                self.max,
                rolling.join(", ")
            )
        };
        Verdict::Hold {
            reason: "RolloutQueued",
            message,
        }
    }

    /// The SseService's pods all run its current template (or it went away): free its slot.
    pub fn finished(&self, svc: &ObjectRef<SseService>) {
        let svc = &Key::from(svc);
        self.state
            .lock()
            .expect("rollout queue lock")
            .rolling
            .remove(svc);
    }

    /// Forget every SseService for which `exists` says no (deleted without a last reconcile: an
    /// SseService without a finalizer is gone before the controller sees it again).
    pub fn retain(&self, exists: impl Fn(&ObjectRef<SseService>) -> bool) {
        let mut state = self.state.lock().expect("rollout queue lock");
        let keep = |key: &Key| exists(&ObjectRef::new(&key.name).within(&key.namespace));
        state.rolling.retain(|k, _| keep(k));
        state.waiting.retain(|k, _| keep(k));
        state.paused.retain(|k, _| keep(k));
    }

    /// The SseService is deleted: forget it everywhere.
    pub fn forget(&self, svc: &ObjectRef<SseService>) {
        let svc = &Key::from(svc);
        let mut state = self.state.lock().expect("rollout queue lock");
        state.rolling.remove(svc);
        state.waiting.remove(svc);
        state.paused.remove(svc);
    }

    /// How many are in each state.
    pub fn counts(&self) -> Counts {
        let state = self.state.lock().expect("rollout queue lock");
        Counts {
            rolling: state.rolling.len(),
            queued: state.waiting.len(),
            paused: state.paused.len(),
        }
    }
}

/// Whether the live Deployment still has pods of an older template.
pub fn rolling_now(deployment: &Deployment) -> bool {
    let Some(status) = deployment.status.as_ref() else {
        return false;
    };
    let behind = status.observed_generation.is_none()
        || status.observed_generation < deployment.metadata.generation;
    behind || status.replicas.unwrap_or(0) > status.updated_replicas.unwrap_or(0)
}

/// The rendered Deployment with the live pod template (and its hash) put back: everything else
/// (replicas, strategy, labels) is applied, the pods are not rolled.
pub fn hold_template(rendered: &mut Deployment, live: &Deployment, hash_annotation: &str) {
    let live_template = live.spec.as_ref().map(|s| s.template.clone());
    if let (Some(spec), Some(template)) = (rendered.spec.as_mut(), live_template) {
        spec.template = template;
    }
    let live_hash = live.annotations().get(hash_annotation).cloned();
    let annotations = rendered
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match live_hash {
        Some(hash) => annotations.insert(hash_annotation.into(), hash),
        None => annotations.remove(hash_annotation),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ObjectRef<SseService> {
        ObjectRef::new(name).within("ns")
    }

    const OPERATOR_CHANGE: Change = Change {
        template_changes: true,
        own_spec_change: false,
        paused: false,
        rolling_now: false,
    };
    const NO_CHANGE: Change = Change {
        template_changes: false,
        own_spec_change: false,
        paused: false,
        rolling_now: false,
    };

    fn warm(max: usize) -> (RolloutQueue, Instant) {
        let start = Instant::now();
        (RolloutQueue::starting_at(max, start), start + WARM_UP)
    }

    fn held(v: &Verdict) -> Option<&'static str> {
        match v {
            Verdict::Apply => None,
            Verdict::Hold { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn admits_max_then_queues_oldest_first_as_slots_free() {
        let (q, t) = warm(2);
        let names = ["a", "b", "c", "d"];
        let verdicts: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                q.decide(
                    &svc(n),
                    OPERATOR_CHANGE,
                    t + Duration::from_millis(i as u64),
                )
            })
            .collect();
        assert_eq!(
            verdicts.iter().map(held).collect::<Vec<_>>(),
            [None, None, Some("RolloutQueued"), Some("RolloutQueued")]
        );
        assert_eq!(
            q.counts(),
            Counts {
                rolling: 2,
                queued: 2,
                paused: 0
            }
        );
        // d asks again before c: still behind c, and no slot is free.
        let later = t + Duration::from_secs(1);
        assert!(held(&q.decide(&svc("d"), OPERATOR_CHANGE, later)).is_some());
        q.finished(&svc("a"));
        // One slot: d is second in line, c gets it.
        assert!(held(&q.decide(&svc("d"), OPERATOR_CHANGE, later)).is_some());
        assert_eq!(q.decide(&svc("c"), OPERATOR_CHANGE, later), Verdict::Apply);
        // A rolling SseService asking again keeps its slot.
        assert_eq!(q.decide(&svc("c"), OPERATOR_CHANGE, later), Verdict::Apply);
        q.finished(&svc("b"));
        assert_eq!(q.decide(&svc("d"), OPERATOR_CHANGE, later), Verdict::Apply);
        assert_eq!(q.counts().queued, 0);
    }

    #[test]
    fn the_owners_own_change_rolls_at_once_and_takes_a_slot() {
        let (q, t) = warm(1);
        let own = Change {
            own_spec_change: true,
            ..OPERATOR_CHANGE
        };
        assert_eq!(q.decide(&svc("a"), own, t), Verdict::Apply);
        assert_eq!(q.decide(&svc("b"), own, t), Verdict::Apply);
        assert_eq!(q.counts().rolling, 2);
        assert!(held(&q.decide(&svc("c"), OPERATOR_CHANGE, t)).is_some());
    }

    #[test]
    fn a_rollout_already_under_way_is_counted() {
        let (q, t) = warm(1);
        let rolling = Change {
            rolling_now: true,
            ..NO_CHANGE
        };
        assert_eq!(q.decide(&svc("a"), rolling, t), Verdict::Apply);
        assert!(held(&q.decide(&svc("b"), OPERATOR_CHANGE, t)).is_some());
    }

    #[test]
    fn a_new_leader_admits_nothing_while_it_warms_up() {
        let start = Instant::now();
        let q = RolloutQueue::starting_at(5, start);
        let v = q.decide(&svc("a"), OPERATOR_CHANGE, start + Duration::from_secs(1));
        assert_eq!(held(&v), Some("RolloutQueued"));
        assert_eq!(
            q.decide(&svc("a"), OPERATOR_CHANGE, start + WARM_UP),
            Verdict::Apply
        );
    }

    #[test]
    fn pause_holds_every_change_and_frees_the_slot() {
        let (q, t) = warm(1);
        assert_eq!(q.decide(&svc("a"), OPERATOR_CHANGE, t), Verdict::Apply);
        let paused = Change {
            paused: true,
            ..OPERATOR_CHANGE
        };
        let own_paused = Change {
            own_spec_change: true,
            ..paused
        };
        assert_eq!(held(&q.decide(&svc("a"), paused, t)), Some("RolloutPaused"));
        assert_eq!(
            held(&q.decide(&svc("b"), own_paused, t)),
            Some("RolloutPaused")
        );
        assert_eq!(q.counts().paused, 2);
        assert_eq!(q.decide(&svc("c"), OPERATOR_CHANGE, t), Verdict::Apply);
        // Unpaused, with nothing left to change: out of every list.
        q.decide(&svc("b"), NO_CHANGE, t);
        assert_eq!(q.counts().paused, 1);
    }

    #[test]
    fn a_deleted_sseservice_frees_its_slot() {
        let (q, t) = warm(1);
        q.decide(&svc("a"), OPERATOR_CHANGE, t);
        assert!(held(&q.decide(&svc("b"), OPERATOR_CHANGE, t)).is_some());
        q.retain(|r| r.name != "a");
        assert_eq!(q.decide(&svc("b"), OPERATOR_CHANGE, t), Verdict::Apply);
    }

    #[test]
    fn unlimited_admits_everything() {
        let (q, t) = warm(0);
        for n in ["a", "b", "c"] {
            assert_eq!(q.decide(&svc(n), OPERATOR_CHANGE, t), Verdict::Apply);
        }
    }

    #[test]
    fn a_change_that_went_away_leaves_the_queue() {
        let (q, t) = warm(1);
        q.decide(&svc("a"), OPERATOR_CHANGE, t);
        q.decide(&svc("b"), OPERATOR_CHANGE, t);
        assert_eq!(q.counts().queued, 1);
        q.decide(&svc("b"), NO_CHANGE, t);
        assert_eq!(q.counts().queued, 0);
        q.decide(&svc("c"), OPERATOR_CHANGE, t);
        q.forget(&svc("c"));
        assert_eq!(q.counts().queued, 0);
    }

    #[test]
    fn paused_annotation_is_true_only() {
        let mut s = SseService::new(
            "x",
            serde_json::from_value(serde_json::json!({
                "appPort": 8080,
                "template": {"spec": {"containers": [{"name": "app", "image": "a"}]}}
            }))
            .unwrap(),
        );
        assert!(!paused(&s));
        s.annotations_mut()
            .insert(PAUSED_ANNOTATION.into(), "True".into());
        assert!(paused(&s));
        s.annotations_mut()
            .insert(PAUSED_ANNOTATION.into(), "no".into());
        assert!(!paused(&s));
    }
}
