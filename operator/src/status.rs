//! Pure status computation: from the SseService, its Deployment and what went wrong (if anything)
//! to the `status` block, with `metav1.Condition` semantics (`lastTransitionTime` moves only when
//! a condition's status changes; `observedGeneration` says which spec it describes).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{SseService, SseServiceStatus};
use crate::render;

/// Condition type: every replica runs the current spec and is ready.
pub const READY: &str = "Ready";
/// Condition type: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the operator could not do what the spec asks (reason says why).
pub const DEGRADED: &str = "Degraded";

/// Condition type (Redis-backed SseServices only): the session store answers the operator's ping.
/// False means the sidecars stream without recording or replay until it is back.
pub const STORE_REACHABLE: &str = "SessionStoreReachable";

/// Something the operator could not do, surfaced as `Degraded=True`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason (also the metric label).
    pub reason: String,
    /// What a person should know or do.
    pub message: String,
}

/// Counts taken from the Deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    replicas: i32,
    ready: i32,
    updated: i32,
    available: i32,
    /// The Deployment controller has seen the Deployment's latest spec.
    observed: bool,
    deadline_exceeded: bool,
}

fn counts(deployment: Option<&Deployment>) -> Counts {
    let Some(d) = deployment else {
        return Counts::default();
    };
    let Some(s) = d.status.as_ref() else {
        return Counts::default();
    };
    Counts {
        replicas: s.replicas.unwrap_or(0),
        ready: s.ready_replicas.unwrap_or(0),
        updated: s.updated_replicas.unwrap_or(0),
        available: s.available_replicas.unwrap_or(0),
        observed: s.observed_generation.is_some() && s.observed_generation >= d.metadata.generation,
        deadline_exceeded: s.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
    }
}

/// The status the SseService should have now. `previous` supplies the transition times to keep.
pub fn compute(
    svc: &SseService,
    deployment: Option<&Deployment>,
    problem: Option<&Problem>,
    previous: Option<&SseServiceStatus>,
    now: &Time,
) -> SseServiceStatus {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let generation = svc.metadata.generation;
    let desired = svc.spec.replicas;
    let c = counts(deployment);
    let cond = |type_: &str, (status, reason, message): Judged| Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let conditions = [
        cond(READY, ready(&c, desired, deployment.is_some())),
        cond(PROGRESSING, progressing(&c, desired)),
        cond(DEGRADED, degraded(&c, problem)),
    ];
    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    SseServiceStatus {
        observed_generation: generation,
        replicas: c.replicas,
        ready_replicas: c.ready,
        updated_replicas: c.updated,
        ready: Some(format!("{}/{desired}", c.ready)),
        affinity: Some(render::affinity_text(svc)),
        streams: None,
        service_name: Some(name.clone()),
        selector: Some(render::selector_string(&name)),
        conditions: conditions
            .into_iter()
            .map(|c| keep_transition_time(old, c))
            .collect(),
    }
}

/// A condition's status, reason and message.
type Judged = (bool, String, String);

/// Like a Deployment's own Progressing: done only when the new pods are available and no old pod
/// is left.
fn rolled_out(c: &Counts, desired: i32) -> bool {
    c.observed && c.updated >= desired && c.replicas == c.updated && c.available >= desired
}

fn ready(c: &Counts, desired: i32, deployment_exists: bool) -> Judged {
    if rolled_out(c, desired) && c.ready >= desired {
        let reason = if desired == 0 {
            "ScaledToZero"
        } else {
            "AllReplicasReady"
        };
        (
            true,
            reason.into(),
            format!("{}/{desired} replicas ready", c.ready),
        )
    } else if !deployment_exists {
        (
            false,
            "DeploymentMissing".into(),
            "the Deployment does not exist yet".into(),
        )
    } else {
        (
            false,
            "ReplicasNotReady".into(),
            format!(
                "{}/{desired} replicas ready, {} updated",
                c.ready, c.updated
            ),
        )
    }
}

fn progressing(c: &Counts, desired: i32) -> Judged {
    if c.deadline_exceeded {
        (
            false,
            "ProgressDeadlineExceeded".into(),
            "the Deployment made no progress within its deadline; check the pods' events".into(),
        )
    } else if rolled_out(c, desired) {
        (
            false,
            "RolloutComplete".into(),
            format!("{} replicas on the current spec", c.updated),
        )
    } else {
        (
            true,
            "RollingOut".into(),
            format!("{}/{desired} replicas updated", c.updated),
        )
    }
}

fn degraded(c: &Counts, problem: Option<&Problem>) -> Judged {
    match (problem, c.deadline_exceeded) {
        (Some(p), _) => (true, p.reason.clone(), p.message.clone()),
        (None, true) => (
            true,
            "ProgressDeadlineExceeded".into(),
            "the rollout is stuck; check the pods' events".into(),
        ),
        (None, false) => (
            false,
            "AsExpected".into(),
            "all owned objects applied".into(),
        ),
    }
}

/// Add the session store's condition from `check`; without a check (this reconcile could not
/// ping) the previous one is kept as it was, so the condition does not flap.
pub fn with_store(
    mut status: SseServiceStatus,
    check: Option<&crate::store_check::StoreCheck>,
    previous: Option<&SseServiceStatus>,
    now: &Time,
) -> SseServiceStatus {
    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let cond = match check {
        Some(c) => keep_transition_time(
            old,
            Condition {
                type_: STORE_REACHABLE.into(),
                status: if c.reachable { "True" } else { "False" }.into(),
                reason: if c.reachable {
                    "Reachable"
                } else {
                    "Unreachable"
                }
                .into(),
                message: c.message.clone(),
                observed_generation: status.observed_generation,
                last_transition_time: now.clone(),
            },
        ),
        None => match old.iter().find(|c| c.type_ == STORE_REACHABLE) {
            Some(prev) => prev.clone(),
            None => return status,
        },
    };
    status.conditions.push(cond);
    status
}

/// A pod-template change the rollout queue holds back (reason `RolloutQueued` or
/// `RolloutPaused`), shown on the Progressing condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// CamelCase reason.
    pub reason: String,
    /// What the SseService waits for.
    pub message: String,
}

/// Say on the Progressing condition that a template change waits: nothing progresses towards
/// it (whatever the pods of the current template do, Ready and Degraded say).
pub fn with_held(
    mut status: SseServiceStatus,
    held: Option<&Held>,
    previous: Option<&SseServiceStatus>,
    now: &Time,
) -> SseServiceStatus {
    let Some(held) = held else {
        return status;
    };
    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    if let Some(c) = status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == PROGRESSING)
    {
        c.status = "False".into();
        c.reason.clone_from(&held.reason);
        c.message.clone_from(&held.message);
        c.last_transition_time = now.clone();
        *c = keep_transition_time(old, c.clone());
    }
    status
}

/// How often the stream spread in the status is refreshed at most: the counts change all the
/// time, and every status write is a watch event (another reconcile).
pub const SPREAD_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Put the sidecars' stream spread into the status, keeping the previous one while it is younger
/// than [`SPREAD_REFRESH`] (so a changing count does not rewrite the status on every reconcile).
pub fn with_spread(
    mut status: SseServiceStatus,
    spread: Option<&crate::store_check::Spread>,
    previous: Option<&SseServiceStatus>,
    now: &Time,
) -> SseServiceStatus {
    let kept = previous.and_then(|p| p.streams.clone());
    let fresh = kept.as_ref().is_some_and(|k| {
        k.observed_at
            .parse::<k8s_openapi::jiff::Timestamp>()
            .is_ok_and(|t| now.0.duration_since(t).unsigned_abs() < SPREAD_REFRESH)
    });
    status.streams = match spread {
        Some(_) if fresh => kept,
        Some(s) => Some(crate::api::StreamSpread {
            observed_at: now.0.to_string(),
            pods: s.lines(),
            imbalance: format!("{:.2}", s.imbalance()),
        }),
        // Rebalancing off, or the store did not answer: no counts to show.
        None => None,
    };
    status
}

/// Whether every pod of the Deployment runs its current template and is available.
pub fn rollout_complete(deployment: &Deployment, desired: i32) -> bool {
    rolled_out(&counts(Some(deployment)), desired)
}

/// `lastTransitionTime` changes only when the status does.
fn keep_transition_time(old: &[Condition], mut new: Condition) -> Condition {
    if let Some(prev) = old.iter().find(|c| c.type_ == new.type_)
        && prev.status == new.status
    {
        new.last_transition_time = prev.last_transition_time.clone();
    }
    new
}

/// Condition `type_`, if present.
pub fn condition<'a>(status: Option<&'a SseServiceStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::store_check::StoreCheck;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn store_condition_follows_the_check_and_keeps_its_transition_time() {
        let base = SseServiceStatus::default();
        let up = StoreCheck {
            reachable: true,
            message: "up".into(),
            spread: None,
        };
        let down = StoreCheck {
            reachable: false,
            message: "down".into(),
            spread: None,
        };
        let first = with_store(base.clone(), Some(&up), None, &at("2026-01-01T00:00:00Z"));
        let c = condition(Some(&first), STORE_REACHABLE).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Reachable")
        );
        let same = with_store(
            base.clone(),
            Some(&up),
            Some(&first),
            &at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            condition(Some(&same), STORE_REACHABLE)
                .unwrap()
                .last_transition_time,
            at("2026-01-01T00:00:00Z")
        );
        let gone = with_store(
            base.clone(),
            Some(&down),
            Some(&same),
            &at("2026-01-01T00:02:00Z"),
        );
        let c = condition(Some(&gone), STORE_REACHABLE).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Unreachable")
        );
        assert_eq!(c.last_transition_time, at("2026-01-01T00:02:00Z"));
        // No check this time: the last word stands.
        let kept = with_store(base.clone(), None, Some(&gone), &at("2026-01-01T00:03:00Z"));
        assert_eq!(
            condition(Some(&kept), STORE_REACHABLE),
            condition(Some(&gone), STORE_REACHABLE)
        );
        // Never checked (memory store): no condition at all.
        assert!(
            condition(
                Some(&with_store(base, None, None, &at("2026-01-01T00:00:00Z"))),
                STORE_REACHABLE
            )
            .is_none()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(replicas: i32) -> SseService {
        let mut s: SseService = serde_yaml::from_str(
            "apiVersion: ssekeeper.dev/v1alpha1\nkind: SseService\nmetadata: {name: chat, namespace: d, generation: 3}\nspec: {appPort: 8080, template: {spec: {containers: [{name: app}]}}}",
        )
        .unwrap();
        s.spec.replicas = replicas;
        s
    }

    fn dep(replicas: i32, ready: i32, updated: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                available_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn get<'a>(s: &'a SseServiceStatus, ty: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == ty).unwrap()
    }

    #[test]
    fn all_ready_means_ready_and_not_progressing() {
        let s = compute(
            &svc(3),
            Some(&dep(3, 3, 3)),
            None,
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(s.ready.as_deref(), Some("3/3"));
        assert_eq!(s.selector.as_deref(), Some("ssekeeper.dev/service=chat"));
        assert_eq!(get(&s, READY).observed_generation, Some(3));
    }

    #[test]
    fn old_pods_still_running_means_progressing() {
        let s = compute(
            &svc(3),
            Some(&dep(4, 3, 3)),
            None,
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, READY).status, "False");
    }

    #[test]
    fn unavailable_new_pods_are_still_progressing() {
        let s = compute(
            &svc(3),
            Some(&dep(3, 0, 3)),
            None,
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, READY).reason, "ReplicasNotReady");
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = compute(
            &svc(3),
            Some(&dep(3, 2, 3)),
            None,
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        let same = compute(
            &svc(3),
            Some(&dep(3, 2, 3)),
            None,
            Some(&first),
            &t("2026-01-01T00:05:00Z"),
        );
        assert_eq!(
            get(&same, READY).last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
        let flipped = compute(
            &svc(3),
            Some(&dep(3, 3, 3)),
            None,
            Some(&same),
            &t("2026-01-01T00:09:00Z"),
        );
        assert_eq!(
            get(&flipped, READY).last_transition_time,
            t("2026-01-01T00:09:00Z")
        );
        assert_eq!(
            get(&flipped, DEGRADED).last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_problem_is_degraded_with_its_reason() {
        let p = Problem {
            reason: "RedisSecretInvalid".into(),
            message: "Secret chat-redis not found".into(),
        };
        let s = compute(&svc(1), None, Some(&p), None, &t("2026-01-01T00:00:00Z"));
        let d = get(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "RedisSecretInvalid")
        );
        assert_eq!(get(&s, READY).reason, "DeploymentMissing");
    }
}
