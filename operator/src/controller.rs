//! The reconciler: validate -> render (pure) -> apply (server-side) -> status, plus the finalizer
//! that purges an SseService's sessions from Redis when it is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use ssekeeper_sidecar::contract;
use tracing::{info, instrument, warn};

use crate::api::{SseService, StoreType};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::render::{self, MANAGER, RenderInput, SidecarDefaults};
use crate::status::{self, Problem};

/// Finalizer that purges the SseService's sessions from Redis before it goes away.
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
    /// Namespace to watch, or all.
    pub namespace: Option<String>,
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
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, reporter: Reporter, metrics: Metrics, settings: Settings) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            failures: Mutex::default(),
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

/// Run the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (svcs, deployments, services, ingresses, pdbs, secrets) = match &ctx.settings.namespace {
        Some(ns) => (
            Api::<SseService>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<Ingress>::namespaced(client.clone(), ns),
            Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
        ),
        None => (
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
    let controller = Controller::new(svcs, watcher::Config::default().any_semantic())
        .owns(deployments, owned.clone())
        .owns(services, owned.clone())
        .owns(ingresses, owned.clone())
        .owns(pdbs, owned);
    // Secrets: metadata only (a cluster's Secrets can be large), both the forwarding-key Secret we
    // own and the Redis Secrets that SseServices reference, so a Secret that appears or changes
    // heals a Degraded SseService at once.
    let store = controller.store();
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

#[instrument(skip_all, fields(namespace = svc.namespace().unwrap_or_default(), name = svc.name_any()))]
async fn reconcile(svc: Arc<SseService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<SseService> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, svc.clone(), |event| async {
        match event {
            Finalizer::Apply(svc) => apply(&svc, &ctx).await,
            Finalizer::Cleanup(svc) => cleanup(&svc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.observe(started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&svc);
    }
    result
}

fn error_policy(svc: Arc<SseService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.kind());
    let delay = ctx.backoff(&svc);
    warn!(name = %svc.name_any(), kind = error.kind(), error = %error, retry_in = ?delay, "reconcile error");
    Action::requeue(delay)
}

/// The phases: read what render needs, render, apply, report.
async fn apply(svc: &SseService, ctx: &Context) -> Result<Action> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();

    // Validate what the CRD cannot: the referenced Secret.
    let redis_url = match redis_url(&ctx.client, svc).await {
        Ok(url) => url,
        Err(Error::RedisSecret(message)) => {
            let problem = Problem {
                reason: "RedisSecretInvalid".into(),
                message: message.clone(),
            };
            let was_degraded = status::condition_status(svc.status.as_ref(), status::DEGRADED);
            let deployment = get_opt::<Deployment>(&ctx.client, &ns, &name).await?;
            write_status(ctx, svc, deployment.as_ref(), Some(&problem)).await?;
            if was_degraded != Some("True") {
                ctx.publish(svc, EventType::Warning, "Degraded", message.clone())
                    .await;
            }
            return Err(Error::RedisSecret(message));
        }
        Err(e) => return Err(e),
    };

    let forward_key = forward_key(&ctx.client, &ns, &name).await?;
    let input = RenderInput {
        svc,
        defaults: &ctx.settings.sidecar,
        redis_url_digest: redis_url.as_deref().map(digest),
    };
    let rendered = render::render(&input)?;

    let before = get_opt::<Deployment>(&ctx.client, &ns, &name).await?;
    apply_object(
        &ctx.client,
        &ns,
        &render::render_forward_secret(svc, &forward_key)?,
    )
    .await?;
    apply_object(&ctx.client, &ns, &rendered.service).await?;
    let deployment = apply_object(&ctx.client, &ns, &rendered.deployment).await?;
    apply_or_delete(&ctx.client, &ns, &name, rendered.ingress.as_ref()).await?;
    apply_or_delete(&ctx.client, &ns, &name, rendered.pdb.as_ref()).await?;

    publish_changes(ctx, svc, before.as_ref(), &deployment).await;
    write_status(ctx, svc, Some(&deployment), None).await?;
    Ok(Action::requeue(ctx.settings.resync))
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
    match before {
        None => {
            ctx.publish(
                svc,
                EventType::Normal,
                "Created",
                "created Deployment, Service and forwarding-key Secret".into(),
            )
            .await;
        }
        Some(old) => {
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
                    format!(
                        "replicas {} -> {}",
                        spec(old).replicas.unwrap_or(1),
                        spec(after).replicas.unwrap_or(1)
                    ),
                )
                .await;
            }
        }
    }
}

/// Compute and write the status if it changed (an unchanged status is not written, so the status
/// write does not trigger another reconcile forever). Publishes transitions as Events.
async fn write_status(
    ctx: &Context,
    svc: &SseService,
    deployment: Option<&Deployment>,
    problem: Option<&Problem>,
) -> Result<()> {
    let now = Time(jiff_now());
    let previous = svc.status.as_ref();
    let new = status::compute(svc, deployment, problem, previous, &now);
    if previous == Some(&new) {
        return Ok(());
    }
    let was = |ty| status::condition_status(previous, ty).map(str::to_owned);
    let is = |ty| status::condition_status(Some(&new), ty).map(str::to_owned);
    if was(status::DEGRADED).as_deref() == Some("True")
        && is(status::DEGRADED).as_deref() == Some("False")
    {
        ctx.publish(
            svc,
            EventType::Normal,
            "Recovered",
            "no longer degraded".into(),
        )
        .await;
    }
    if was(status::PROGRESSING).as_deref() == Some("True")
        && is(status::PROGRESSING).as_deref() == Some("False")
        && is(status::READY).as_deref() == Some("True")
    {
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

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The Redis URL from the referenced Secret; `Ok(None)` for the memory store.
async fn redis_url(client: &Client, svc: &SseService) -> Result<Option<String>> {
    if svc.spec.sessions.store != StoreType::Redis {
        return Ok(None);
    }
    let Some(redis) = &svc.spec.sessions.redis else {
        return Err(Error::RedisSecret(
            "sessions.store is redis but sessions.redis.secretRef is not set".into(),
        ));
    };
    let ns = svc.namespace().unwrap_or_default();
    let reference = &redis.secret_ref;
    let secret = get_opt::<Secret>(client, &ns, &reference.name).await?.ok_or_else(|| {
        Error::RedisSecret(format!(
            "Secret {ns}/{} (sessions.redis.secretRef) not found; create it with the Redis URL under key {:?}",
            reference.name, reference.key
        ))
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .ok_or_else(|| {
            Error::RedisSecret(format!(
                "Secret {ns}/{} has no key {:?} (sessions.redis.secretRef.key)",
                reference.name, reference.key
            ))
        })?;
    let url = String::from_utf8(value.0.clone()).map_err(|_| {
        Error::RedisSecret(format!(
            "Secret {ns}/{} key {:?} is not UTF-8",
            reference.name, reference.key
        ))
    })?;
    let url = url.trim().to_string();
    let scheme_ok = [
        "redis://",
        "rediss://",
        "redis+sentinel://",
        "rediss+sentinel://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|s| url.starts_with(s));
    if !scheme_ok {
        return Err(Error::RedisSecret(format!(
            "Secret {ns}/{} key {:?} does not hold a Redis URL (expected redis://, rediss://, redis+sentinel:// or redis+cluster://)",
            reference.name, reference.key
        )));
    }
    Ok(Some(url))
}

/// The forwarding key: the existing one if the Secret has it, else a new random one.
async fn forward_key(client: &Client, ns: &str, name: &str) -> Result<String> {
    let secret_name = contract::forward_secret_name(name);
    let existing = get_opt::<Secret>(client, ns, &secret_name)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(contract::FORWARD_KEY_SECRET_KEY).cloned())
        .and_then(|v| String::from_utf8(v.0).ok())
        .filter(|k| k.len() >= 32);
    Ok(existing.unwrap_or_else(|| {
        let bytes: [u8; 32] = rand::random();
        hex::encode(bytes)
    }))
}

async fn get_opt<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    let params = PatchParams::apply(MANAGER).force();
    Ok(api
        .patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await?)
}

/// Apply an optional object, or delete it if the spec no longer asks for it.
async fn apply_or_delete<K>(client: &Client, ns: &str, name: &str, obj: Option<&K>) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    match obj {
        Some(obj) => {
            apply_object(client, ns, obj).await?;
        }
        None => {
            let api = Api::<K>::namespaced(client.clone(), ns);
            if let Some(existing) = api.get_opt(name).await? {
                let ours = existing
                    .labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some(MANAGER);
                if ours {
                    api.delete(name, &DeleteParams::background()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Finalizer: purge the sessions of this SseService from Redis. Retries with backoff while Redis
/// is unreachable, but never blocks deletion for longer than `purge_timeout` after the delete.
async fn cleanup(svc: &SseService, ctx: &Context) -> Result<Action> {
    if svc.spec.sessions.store != StoreType::Redis {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let outcome = match redis_url(&ctx.client, svc).await {
        Ok(Some(url)) => crate::purge::purge(&url, &ns, &name).await,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => Err(e.to_string()),
    };
    match outcome {
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
                .map(|t| jiff_now().duration_since(t.0).unsigned_abs())
                .unwrap_or_default();
            if deleting_for >= ctx.settings.purge_timeout {
                warn!(%message, "giving up purging sessions; releasing the finalizer");
                ctx.publish(
                    svc,
                    EventType::Warning,
                    "PurgeAbandoned",
                    format!(
                        "could not purge sessions from Redis within {:?} ({message}); keys under {} expire by their TTL",
                        ctx.settings.purge_timeout,
                        contract::keys::service_prefix(&ns, &name)
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
