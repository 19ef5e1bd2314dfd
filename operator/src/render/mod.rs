//! Pure rendering: `SseService` (+ the few facts read from the cluster) -> the objects to apply.
//!
//! No I/O happens here, so every decision about what the cluster should look like is covered by
//! golden-file tests (`operator/testdata/render`).

mod deployment;
mod extras;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ResourceRequirements, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::SseService;

pub use deployment::{app_container_index, sidecar_args, template_hash};
pub use service::affinity_text;

/// Label that selects an SseService's pods. Our own key, so it never collides with the
/// `app.kubernetes.io/instance` label Helm (or the user) puts on other workloads.
pub const SELECTOR_LABEL: &str = "ssekeeper.dev/service";
/// Pod annotation whose change rolls the pods when configuration outside the template changes
/// (e.g. the Redis URL inside its Secret, which env `secretKeyRef` does not refresh).
pub const CONFIG_HASH_ANNOTATION: &str = "ssekeeper.dev/config-hash";
/// Deployment annotation: [`template_hash`] of the pod template last applied.
pub const TEMPLATE_HASH_ANNOTATION: &str = "ssekeeper.dev/template-hash";
/// Field manager for server-side apply; also the `managed-by` label value.
pub const MANAGER: &str = "ssekeeper";

/// What the operator itself brings to every SseService (from its flags / Helm values).
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarDefaults {
    /// Sidecar image when the spec does not set one.
    pub image: String,
    /// Pull policy for the sidecar image.
    pub image_pull_policy: Option<String>,
    /// Sidecar resources when the spec does not set them.
    pub resources: ResourceRequirements,
}

/// Everything render needs besides the SseService: facts the reconciler read from the cluster.
#[derive(Debug, Clone)]
pub struct RenderInput<'a> {
    /// The object being reconciled.
    pub svc: &'a SseService,
    /// The operator's sidecar defaults.
    pub defaults: &'a SidecarDefaults,
    /// Fingerprint of the secrets the pods read through env (forwarding key, Redis URL): env
    /// `secretKeyRef` is not refreshed in running pods, so a change must roll them. Keyed (see
    /// [`secrets_fingerprint`]) so the pod annotation reveals nothing about a weak password.
    pub secrets_fingerprint: String,
}

/// The objects one SseService owns. `None` means "must not exist" (deleted if it does).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// App + sidecar pods.
    pub deployment: Deployment,
    /// ClientIP-affinity Service targeting the sidecar's `sse` port.
    pub service: Service,
    /// Optional Ingress with cookie affinity.
    pub ingress: Option<Ingress>,
    /// Optional PodDisruptionBudget.
    pub pdb: Option<PodDisruptionBudget>,
    /// Optional NetworkPolicy guarding the admin port.
    pub network_policy: Option<NetworkPolicy>,
}

/// Why an SseService could not be rendered (the API server's validation catches the rest).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    /// Objects from the API server always have these; a hand-made object may not.
    #[error("SseService has no {0}")]
    MissingMetadata(&'static str),
}

/// Render every owned object.
pub fn render(input: &RenderInput<'_>) -> Result<Rendered, RenderError> {
    let ctx = Ctx::new(input.svc)?;
    Ok(Rendered {
        deployment: deployment::render(&ctx, input),
        service: service::render(&ctx),
        ingress: extras::ingress(&ctx),
        pdb: extras::pdb(&ctx),
        network_policy: extras::network_policy(&ctx),
    })
}

/// Facts every renderer needs, computed once.
pub(crate) struct Ctx<'a> {
    pub svc: &'a SseService,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
}

impl<'a> Ctx<'a> {
    fn new(svc: &'a SseService) -> Result<Self, RenderError> {
        let name = svc
            .metadata
            .name
            .clone()
            .ok_or(RenderError::MissingMetadata("name"))?;
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .ok_or(RenderError::MissingMetadata("namespace"))?;
        let owner = svc
            .controller_owner_ref(&())
            .ok_or(RenderError::MissingMetadata("uid"))?;
        Ok(Self {
            svc,
            name,
            namespace,
            owner,
        })
    }

    /// Labels that select the pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(SELECTOR_LABEL.to_string(), self.name.clone())])
    }

    /// Labels on every owned object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
        labels.insert("app.kubernetes.io/instance".into(), self.name.clone());
        labels
    }

    /// Metadata of an owned object named `name`.
    pub fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// HMAC-SHA256, keyed with the forwarding key, over the Redis URL: changes when either changes,
/// and cannot be used to test guesses of the Redis password by anyone who can read pods.
pub fn secrets_fingerprint(forward_key: &str, redis_url: Option<&str>) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(forward_key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(redis_url.unwrap_or("").as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Name of the operator-owned Secret that keeps a copy of the Redis URL, so the finalizer can
/// purge sessions even after the user's Secret is gone (`kubectl delete -f` of a file that lists
/// the Secret first, or a namespace deletion).
pub fn purge_secret_name(name: &str) -> String {
    format!("{name}-ssekeeper-redis")
}

/// Key of the Redis URL in [`purge_secret_name`].
pub const PURGE_SECRET_KEY: &str = "url";

/// Render the operator-owned copy of the Redis URL (see [`purge_secret_name`]).
pub fn render_purge_secret(svc: &SseService, url: &str) -> Result<Secret, RenderError> {
    Ok(extras::purge_secret(&Ctx::new(svc)?, url))
}

/// The selector as a label-selector string, for the scale subresource and `status.selector`.
pub fn selector_string(name: &str) -> String {
    format!("{SELECTOR_LABEL}={name}")
}

/// Render the forwarding-key Secret. The reconciler generates the key once and passes the existing
/// one back in afterwards, so re-applying never rotates it under running pods.
pub fn render_forward_secret(svc: &SseService, key: &str) -> Result<Secret, RenderError> {
    Ok(extras::forward_secret(&Ctx::new(svc)?, key))
}
