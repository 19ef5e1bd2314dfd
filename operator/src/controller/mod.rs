//! The reconciler, as explicit phases: validate -> dereference (the Secrets) -> render (pure) ->
//! apply (server-side) -> events -> status, inside the finalizer that purges an SseService's
//! sessions from Redis when it is deleted. Errors are typed ([`Error`]), each with a metric label
//! and a backoff in `error_policy`; every reconcile is timed by a drop guard.

mod kubeapi;
pub mod rollouts;
mod secrets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self as ctrl, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use ssekeeper_contract as contract;
use tracing::{info, instrument, warn};

use crate::api::{SseService, StoreType};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::render::{self, MANAGER, RenderInput, SidecarDefaults};
use crate::status::{self, Held, Problem};
use crate::store_check::{self, StoreCheck};
use kubeapi::get_opt;
use rollouts::{Change, RolloutQueue, Verdict};

/// Finalizer that purges the SseService's sessions from Redis before it goes away. Only
/// SseServices with `store: redis` carry it: with nothing to purge, a finalizer would only make
/// deletion hang while the operator is down.
pub const FINALIZER: &str = "ssekeeper.dev/purge-sessions";

/// Settings of the reconciler (from the operator's flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sidecar image and resources applied when a spec does not set them.
    pub sidecar: SidecarDefaults,
    /// How long after deletion the finalizer keeps retrying a Redis purge before it gives up.
    pub purge_timeout: Duration,
    /// Periodic re-reconcile, even without changes.
    pub resync: Duration,
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// At most this many SseServices roll at once for changes that are not their own spec's;
    /// 0 means no limit.
    pub max_concurrent_rollouts: usize,
}

/// Shared state of every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events (events.k8s.io/v1) shown by `kubectl describe`.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: Settings,
    /// Consecutive failures per object, for exponential backoff that resets on success.
    failures: Mutex<HashMap<ObjectRef<SseService>, u32>>,
    /// Redis URL last seen per SseService uid: the finalizer's first choice, since during a
    /// namespace deletion every Secret may already be gone.
    redis_urls: Mutex<HashMap<String, String>>,
    /// The fleet's rollout queue, shared by every namespace's controller.
    rollouts: RolloutQueue,
    /// Every controller's cache of SseServices: which ones still exist, for the queue.
    stores: Mutex<Vec<Store<SseService>>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, reporter: Reporter, metrics: Metrics, settings: Settings) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            rollouts: RolloutQueue::new(settings.max_concurrent_rollouts),
            stores: Mutex::default(),
            settings,
            failures: Mutex::default(),
            redis_urls: Mutex::default(),
        }
    }

    fn backoff(&self, obj: &SseService) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(ObjectRef::from(obj)).or_insert(0);
        *n = n.saturating_add(1);
        // 1 s, 2 s, 4 s ... capped at 5 minutes: a broken object never hot-loops.
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, obj: &SseService) {
        self.failures
            .lock()
            .expect("failures lock")
            .remove(&ObjectRef::from(obj));
    }

    fn remember_url(&self, svc: &SseService, url: Option<&str>) {
        let uid = svc.uid().unwrap_or_default();
        let mut urls = self.redis_urls.lock().expect("urls lock");
        match url {
            Some(u) => urls.insert(uid, u.to_string()),
            None => urls.remove(&uid),
        };
    }

    fn remembered_url(&self, svc: &SseService) -> Option<String> {
        let uid = svc.uid().unwrap_or_default();
        self.redis_urls
            .lock()
            .expect("urls lock")
            .get(&uid)
            .cloned()
    }

    fn forget(&self, svc: &SseService) {
        self.remember_url(svc, None);
        self.succeeded(svc);
        self.rollouts.forget(&ObjectRef::from(svc));
        self.metrics.set_rollouts(self.rollouts.counts());
    }

    async fn publish(&self, svc: &SseService, type_: EventType, reason: &str, note: String) {
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &svc.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Run the controller until `shutdown` resolves: one over the whole cluster, or one per watched
/// namespace (so a namespaced install needs only Roles in those namespaces).
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    ctx.rollouts.restart();
    ctx.stores.lock().expect("stores lock").clear();
    if ctx.settings.namespaces.is_empty() {
        run_scope(ctx, None, shutdown).await;
        return;
    }
    let scopes = ctx
        .settings
        .namespaces
        .clone()
        .into_iter()
        .map(|ns| run_scope(ctx.clone(), Some(ns), shutdown.clone()));
    futures::future::join_all(scopes).await;
}

/// One controller over `scope` (a namespace, or the cluster).
async fn run_scope(
    ctx: Arc<Context>,
    scope: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (svcs, deployments, services, ingresses, pdbs, policies, secrets) = match &scope {
        Some(ns) => (
            Api::<SseService>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<Ingress>::namespaced(client.clone(), ns),
            Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // Debounce: a rollout changes the Deployment's status many times a second; one reconcile per
    // burst is enough.
    let config = ctrl::Config::default().debounce(Duration::from_millis(500));
    let controller = Controller::new(svcs, watcher::Config::default().any_semantic())
        .with_config(config)
        .owns(deployments, owned.clone())
        .owns(services, owned.clone())
        .owns(ingresses, owned.clone())
        .owns(pdbs, owned.clone())
        .owns(policies, owned);
    // Secrets: metadata only (a cluster's Secrets can be large), both the Secrets we own and the
    // Redis Secrets that SseServices reference, so a Secret that appears or changes heals a
    // Degraded SseService at once.
    let store = controller.store();
    ctx.stores.lock().expect("stores lock").push(store.clone());
    let secret_events = watcher(secrets, watcher::Config::default()).touched_objects();
    controller
        .watches_stream(secret_events, move |secret| {
            services_for_secret(&store, &secret)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn services_for_secret(
    store: &Store<SseService>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<SseService>> {
    let (Some(ns), Some(name)) = (
        secret.metadata.namespace.as_deref(),
        secret.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|svc| svc.metadata.namespace.as_deref() == Some(ns))
        .filter(|svc| {
            let svc_name = svc.name_any();
            contract::forward_secret_name(&svc_name) == name
                || render::purge_secret_name(&svc_name) == name
                || svc
                    .spec
                    .sessions
                    .redis
                    .as_ref()
                    .is_some_and(|r| r.secret_ref.name == name)
        })
        .map(|svc| ObjectRef::from(svc.as_ref()))
        .collect()
}

fn has_finalizer(svc: &SseService) -> bool {
    svc.finalizers().iter().any(|f| f == FINALIZER)
}

#[instrument(skip_all, fields(namespace = svc.namespace().unwrap_or_default(), name = svc.name_any()))]
async fn reconcile(svc: Arc<SseService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<SseService> = Api::namespaced(ctx.client.clone(), &ns);
    let needs_finalizer = svc.spec.sessions.store == StoreType::Redis;
    let deleting = svc.metadata.deletion_timestamp.is_some();

    let result = if needs_finalizer || has_finalizer(&svc) {
        finalizer(&api, FINALIZER, svc.clone(), |event| async {
            match event {
                Finalizer::Apply(svc) => apply(&svc, &ctx).await,
                Finalizer::Cleanup(svc) => cleanup(&svc, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        })
    } else if deleting {
        Ok(Action::await_change())
    } else {
        apply(&svc, &ctx).await
    };
    // Switched from redis to memory: nothing to purge any more, so drop the finalizer.
    if result.is_ok() && !needs_finalizer && !deleting && has_finalizer(&svc) {
        remove_finalizer(&api, &svc).await?;
    }

    if result.is_ok() {
        if deleting {
            ctx.forget(&svc);
            ctx.metrics.forget_conditions(&ns, &svc.name_any());
        } else {
            ctx.succeeded(&svc);
        }
    }
    result
}

async fn remove_finalizer(api: &Api<SseService>, svc: &SseService) -> Result<()> {
    let kept: Vec<_> = svc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": kept, "resourceVersion": svc.resource_version() }
    });
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

fn error_policy(svc: Arc<SseService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.kind());
    let delay = ctx.backoff(&svc);
    warn!(name = %svc.name_any(), kind = error.kind(), error = %error, retry_in = ?delay, "reconcile error");
    Action::requeue(delay)
}

/// The condition a failed apply deserves, if it is something a person must fix (a transient
/// error, like a timeout or a 5xx, only backs off).
fn problem_of(error: &Error) -> Option<Problem> {
    let (reason, message) = match error {
        Error::RedisSecret(e) => ("RedisSecretInvalid", e.to_string()),
        Error::NameConflict(m) => ("NameConflict", m.clone()),
        Error::InvalidSpec(e) => ("InvalidSpec", e.to_string()),
        Error::Kube(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 409 => (
            "ApplyFailed",
            format!("the API server refused an owned object: {}", e.message),
        ),
        _ => return None,
    };
    Some(Problem {
        reason: reason.into(),
        message,
    })
}

/// The phases, with a failure turned into the Degraded condition and a Warning.
async fn apply(svc: &SseService, ctx: &Context) -> Result<Action> {
    match apply_phases(svc, ctx).await {
        Ok((deployment, held)) => {
            let store = check_store(svc, ctx).await;
            let observed = Observed {
                deployment: Some(&deployment),
                problem: None,
                held: held.as_ref(),
                store: store.as_ref(),
            };
            write_status(ctx, svc, observed).await?;
            let mut next = next_check(ctx, store.as_ref());
            if held.is_some_and(|h| h.reason == "RolloutQueued") {
                next = next.min(rollouts::RECHECK);
            }
            Ok(Action::requeue(next))
        }
        Err(error) => {
            if let Some(problem) = problem_of(&error) {
                let ns = svc.namespace().unwrap_or_default();
                let deployment = get_opt::<Deployment>(&ctx.client, &ns, &svc.name_any())
                    .await
                    .ok()
                    .flatten();
                let observed = Observed {
                    deployment: deployment.as_ref(),
                    problem: Some(&problem),
                    held: None,
                    store: None,
                };
                write_status(ctx, svc, observed).await?;
            }
            Err(error)
        }
    }
}

/// How long a store ping may take; how often a Redis-backed SseService's store is checked while
/// it answers, and while it does not.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);
const STORE_CHECK_EVERY: Duration = Duration::from_secs(30);
const STORE_RECHECK_DOWN: Duration = Duration::from_secs(5);

/// Ping the session store of a Redis-backed SseService (with the URL this apply dereferenced).
async fn check_store(svc: &SseService, ctx: &Context) -> Option<StoreCheck> {
    if svc.spec.sessions.store != StoreType::Redis {
        return None;
    }
    let url = ctx.remembered_url(svc)?;
    // Boxed: the store's connect future is deep, and the reconcile future embeds this one.
    // With rebalancing on, the sidecars publish their stream counts: read them with the ping.
    let spread =
        svc.spec
            .rebalance
            .as_ref()
            .filter(|r| r.enabled)
            .map(|_| store_check::SpreadSource {
                key: contract::rebalance::stream_counts_key(
                    &svc.namespace().unwrap_or_default(),
                    &svc.name_any(),
                ),
                stale_ms: contract::rebalance::stale_after_ms(
                    contract::defaults::REBALANCE_INTERVAL_SECONDS,
                ),
            });
    Some(Box::pin(store_check::ping(&url, STORE_PING_TIMEOUT, spread.as_ref())).await)
}

/// When to reconcile again: the periodic resync, sooner while the store is watched.
fn next_check(ctx: &Context, store: Option<&StoreCheck>) -> Duration {
    match store {
        None => ctx.settings.resync,
        Some(c) if c.reachable => ctx.settings.resync.min(STORE_CHECK_EVERY),
        Some(_) => ctx.settings.resync.min(STORE_RECHECK_DOWN),
    }
}

/// What the Secrets an SseService refers to hold.
struct Dereferenced {
    /// The Redis URL (`None` for the memory store).
    redis_url: Option<String>,
    /// The forwarding key.
    forward_key: String,
}

/// The phases of one apply. Returns the applied Deployment, and the template change the rollout
/// queue held back, if it did.
async fn apply_phases(svc: &SseService, ctx: &Context) -> Result<(Deployment, Option<Held>)> {
    let uid = svc
        .uid()
        .ok_or(Error::Render(render::RenderError::MissingMetadata("uid")))?;
    // Validate what the CRD cannot: ports and volumes of every container.
    crate::validate::validate(svc)?;
    let refs = dereference(svc, ctx).await?;
    let (mut rendered, purge_copy) = render_all(svc, ctx, &refs)?;
    let ns = svc.namespace().unwrap_or_default();
    let before = get_opt::<Deployment>(&ctx.client, &ns, &svc.name_any()).await?;
    let held = before
        .as_ref()
        .and_then(|live| queue_rollout(ctx, svc, &mut rendered.deployment, live));
    let deployment = apply_all(ctx, svc, &uid, &rendered, purge_copy.as_ref()).await?;
    if status::rollout_complete(&deployment, svc.spec.replicas) {
        ctx.rollouts.finished(&ObjectRef::from(svc));
    }
    ctx.metrics.set_rollouts(ctx.rollouts.counts());
    publish_changes(ctx, svc, before.as_ref(), &deployment).await;
    Ok((deployment, held))
}

/// Ask the fleet's rollout queue whether the rendered pod template may replace the live one; if
/// not, put the live template back into `rendered` and say why.
fn queue_rollout(
    ctx: &Context,
    svc: &SseService,
    rendered: &mut Deployment,
    live: &Deployment,
) -> Option<Held> {
    let hash = |d: &Deployment| {
        d.annotations()
            .get(render::TEMPLATE_HASH_ANNOTATION)
            .cloned()
    };
    let observed = svc.status.as_ref().and_then(|s| s.observed_generation);
    let change = Change {
        template_changes: hash(rendered) != hash(live),
        own_spec_change: observed != svc.metadata.generation,
        paused: rollouts::paused(svc),
        rolling_now: rollouts::rolling_now(live),
    };
    {
        let stores = ctx.stores.lock().expect("stores lock");
        ctx.rollouts
            .retain(|r| stores.iter().any(|store| store.get(r).is_some()));
    }
    let verdict = ctx
        .rollouts
        .decide(&ObjectRef::from(svc), change, std::time::Instant::now());
    match verdict {
        Verdict::Apply => None,
        Verdict::Hold { reason, message } => {
            rollouts::hold_template(rendered, live, render::TEMPLATE_HASH_ANNOTATION);
            Some(Held {
                reason: reason.into(),
                message,
            })
        }
    }
}

/// Read the Secrets the spec refers to (and make the forwarding key on first use).
async fn dereference(svc: &SseService, ctx: &Context) -> Result<Dereferenced> {
    let redis_url = secrets::redis_url(&ctx.client, svc).await?;
    ctx.remember_url(svc, redis_url.as_deref());
    let forward_key = secrets::forward_key(&ctx.client, svc).await?;
    Ok(Dereferenced {
        redis_url,
        forward_key,
    })
}

/// Render every owned object (pure): the Deployment and friends, and the purge URL's copy.
fn render_all(
    svc: &SseService,
    ctx: &Context,
    refs: &Dereferenced,
) -> Result<(render::Rendered, Option<Secret>)> {
    let input = RenderInput {
        svc,
        defaults: &ctx.settings.sidecar,
        secrets_fingerprint: render::secrets_fingerprint(
            &refs.forward_key,
            refs.redis_url.as_deref(),
        ),
    };
    let rendered = render::render(&input)?;
    let purge_copy = refs
        .redis_url
        .as_deref()
        .map(|url| render::render_purge_secret(svc, url))
        .transpose()?;
    Ok((rendered, purge_copy))
}

/// Apply what was rendered (server-side), deleting the optional objects the spec no longer asks
/// for. Returns the Deployment as applied.
async fn apply_all(
    ctx: &Context,
    svc: &SseService,
    uid: &str,
    rendered: &render::Rendered,
    purge_copy: Option<&Secret>,
) -> Result<Deployment> {
    let client = &ctx.client;
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    kubeapi::apply_or_delete(
        client,
        &ns,
        &render::purge_secret_name(&name),
        purge_copy,
        uid,
    )
    .await?;
    kubeapi::apply(client, &ns, &rendered.service, uid).await?;
    let deployment = kubeapi::apply(client, &ns, &rendered.deployment, uid).await?;
    kubeapi::apply_or_delete(client, &ns, &name, rendered.ingress.as_ref(), uid).await?;
    kubeapi::apply_or_delete(client, &ns, &name, rendered.pdb.as_ref(), uid).await?;
    kubeapi::apply_or_delete(client, &ns, &name, rendered.network_policy.as_ref(), uid).await?;
    Ok(deployment)
}

/// Events for what this apply changed, so `kubectl describe` tells the story.
async fn publish_changes(
    ctx: &Context,
    svc: &SseService,
    before: Option<&Deployment>,
    after: &Deployment,
) {
    let spec = |d: &Deployment| d.spec.clone().unwrap_or_default();
    let generation = svc.metadata.generation.unwrap_or(0);
    let observed = svc.status.as_ref().and_then(|s| s.observed_generation);
    let Some(old) = before else {
        ctx.publish(
            svc,
            EventType::Normal,
            "Created",
            "created Deployment, Service and forwarding-key Secret".into(),
        )
        .await;
        return;
    };
    if observed.is_some_and(|g| g < generation) {
        ctx.publish(
            svc,
            EventType::Normal,
            "Updated",
            format!("applied generation {generation}"),
        )
        .await;
    }
    if spec(old).template != spec(after).template {
        ctx.publish(
            svc,
            EventType::Normal,
            "RolloutStarted",
            "pod template changed; rolling the pods with drain and session handoff".into(),
        )
        .await;
    }
    if spec(old).replicas != spec(after).replicas {
        ctx.publish(
            svc,
            EventType::Normal,
            "Scaled",
            format!("replicas set to {}", spec(after).replicas.unwrap_or(1)),
        )
        .await;
    }
}

/// What one reconcile found, for the status.
struct Observed<'a> {
    /// The Deployment as applied (or as it is, after a failure).
    deployment: Option<&'a Deployment>,
    /// What a person must fix.
    problem: Option<&'a Problem>,
    /// The template change the rollout queue holds back.
    held: Option<&'a Held>,
    /// The session store's ping.
    store: Option<&'a StoreCheck>,
}

/// Compute and write the status if it changed (an unchanged status is not written, so the status
/// write does not trigger another reconcile forever). Publishes transitions as Events.
async fn write_status(ctx: &Context, svc: &SseService, observed: Observed<'_>) -> Result<()> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = svc.status.as_ref();
    let computed = status::compute(svc, observed.deployment, observed.problem, previous, &now);
    let new = status::with_spread(
        status::with_store(
            status::with_held(computed, observed.held, previous, &now),
            observed.store,
            previous,
            &now,
        ),
        observed.store.and_then(|c| c.spread.as_ref()),
        previous,
        &now,
    );
    let store = observed.store;
    ctx.metrics.set_conditions(
        &svc.namespace().unwrap_or_default(),
        &svc.name_any(),
        new.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str())),
    );
    if previous == Some(&new) {
        return Ok(());
    }
    let was = |ty| status::condition(previous, ty).map(|c| (c.status.clone(), c.reason.clone()));
    let is = |ty| status::condition(Some(&new), ty).map(|c| (c.status.clone(), c.reason.clone()));
    let true_ = |c: &Option<(String, String)>| c.as_ref().is_some_and(|c| c.0 == "True");
    let (was_degraded, is_degraded) = (was(status::DEGRADED), is(status::DEGRADED));
    if true_(&is_degraded)
        && was_degraded != is_degraded
        && let Some(cond) = status::condition(Some(&new), status::DEGRADED)
    {
        // The Event says which problem (its reason is the condition's: RedisSecretInvalid,
        // NameConflict, ProgressDeadlineExceeded, ...) and always what it is.
        let note = if cond.message.is_empty() {
            format!("degraded: {}", cond.reason)
        } else {
            cond.message.clone()
        };
        ctx.publish(svc, EventType::Warning, &cond.reason, note)
            .await;
    }
    if true_(&was_degraded) && !true_(&is_degraded) {
        ctx.publish(
            svc,
            EventType::Normal,
            "Recovered",
            "no longer degraded".into(),
        )
        .await;
    }
    let (was_store, is_store) = (was(status::STORE_REACHABLE), is(status::STORE_REACHABLE));
    if was_store != is_store
        && let Some((state, _)) = &is_store
    {
        let message = store.map(|c| c.message.clone()).unwrap_or_default();
        if state == "False" {
            ctx.publish(svc, EventType::Warning, "SessionStoreUnreachable", message)
                .await;
        } else if was_store.is_some() {
            ctx.publish(svc, EventType::Normal, "SessionStoreReachable", message)
                .await;
        }
    }
    let (was_progressing, is_progressing) = (was(status::PROGRESSING), is(status::PROGRESSING));
    let was_warming = status::condition(previous, status::PROGRESSING)
        .is_some_and(|c| c.message == rollouts::WARM_UP_MESSAGE);
    if let (Some(held), Some((_, reason))) = (observed.held, &is_progressing)
        && (was_progressing.as_ref().map(|p| &p.1) != Some(reason) || was_warming)
        && reason == &held.reason
        && held.message != rollouts::WARM_UP_MESSAGE
    {
        ctx.publish(svc, EventType::Normal, &held.reason, held.message.clone())
            .await;
    }
    if true_(&was_progressing) && !true_(&is_progressing) && true_(&is(status::READY)) {
        ctx.publish(
            svc,
            EventType::Normal,
            "RolloutComplete",
            format!("{} replicas ready", new.ready_replicas),
        )
        .await;
    }
    let api: Api<SseService> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    api.patch_status(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": new })),
    )
    .await?;
    Ok(())
}

/// Finalizer: purge the sessions of this SseService from Redis. Retries with backoff while Redis
/// is unreachable, but never blocks deletion for longer than `purge_timeout` after the delete.
async fn cleanup(svc: &SseService, ctx: &Context) -> Result<Action> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let prefix = contract::keys::service_prefix(&ns, &name);
    let url = match ctx.remembered_url(svc) {
        Some(url) => Some(url),
        None => secrets::purge_url(&ctx.client, svc).await,
    };
    let Some(url) = url else {
        // Nothing left to connect with (every Secret already gone): waiting cannot help.
        ctx.publish(
            svc,
            EventType::Warning,
            "PurgeAbandoned",
            format!("no Redis URL is available any more; keys under {prefix} expire by their TTL"),
        )
        .await;
        return Ok(Action::await_change());
    };
    match crate::purge::purge(&url, &ns, &name).await {
        Ok(deleted) => {
            info!(deleted, "purged sessions from Redis");
            ctx.publish(
                svc,
                EventType::Normal,
                "SessionsPurged",
                format!("deleted {deleted} Redis keys of this SseService"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(message) => {
            let deleting_for = svc
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| {
                    k8s_openapi::jiff::Timestamp::now()
                        .duration_since(t.0)
                        .unsigned_abs()
                })
                .unwrap_or_default();
            if deleting_for >= ctx.settings.purge_timeout {
                warn!(%message, "giving up purging sessions; releasing the finalizer");
                ctx.publish(
                    svc,
                    EventType::Warning,
                    "PurgeAbandoned",
                    format!(
                        "could not purge sessions from Redis within {:?} ({message}); keys under {prefix} expire by their TTL",
                        ctx.settings.purge_timeout
                    ),
                )
                .await;
                Ok(Action::await_change())
            } else {
                ctx.publish(
                    svc,
                    EventType::Warning,
                    "PurgeFailed",
                    format!("{message}; retrying"),
                )
                .await;
                Err(Error::Purge(message))
            }
        }
    }
}
