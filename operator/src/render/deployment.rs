//! The Deployment: the app's template with the sidecar injected and the kubelet's termination
//! order arranged so that streams drain and sessions are handed over before the app stops.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use ssekeeper_contract::{self as contract, SidecarArgs, env, paths};

use super::{CONFIG_HASH_ANNOTATION, Ctx, RenderInput, TEMPLATE_HASH_ANNOTATION};
use crate::api::SseService;

pub(super) fn render(ctx: &Ctx<'_>, input: &RenderInput<'_>) -> Deployment {
    let spec = &ctx.svc.spec;
    let args = sidecar_args(ctx.svc, &ctx.namespace, &ctx.name);

    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(ctx.selector());
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(
        CONFIG_HASH_ANNOTATION.into(),
        config_hash(&args, &input.secrets_fingerprint),
    );

    let pod = template.spec.get_or_insert_with(PodSpec::default);
    let grace = i64::from(contract::termination_grace_period_seconds(
        spec.drain.pre_stop_delay_seconds,
        spec.drain.drain_seconds,
        spec.drain.request_seconds,
    ));
    pod.termination_grace_period_seconds =
        Some(pod.termination_grace_period_seconds.unwrap_or(0).max(grace));
    if let Some(i) = app_container_index(ctx.svc) {
        let app = &mut pod.containers[i];
        if !spec.broadcast.is_empty() {
            // Where and with what the app publishes to its broadcast paths.
            let app_env = app.env.get_or_insert_with(Vec::new);
            app_env.retain(|e| e.name != env::APP_PUBLISH_URL && e.name != env::APP_PUBLISH_TOKEN);
            app_env.push(EnvVar {
                name: env::APP_PUBLISH_URL.into(),
                value: Some(format!(
                    "http://127.0.0.1:{}{}",
                    contract::ADMIN_PORT,
                    paths::BROADCAST_PUBLISH
                )),
                ..EnvVar::default()
            });
            app_env.push(secret_env(
                env::APP_PUBLISH_TOKEN,
                &contract::forward_secret_name(&ctx.name),
                contract::PUBLISH_TOKEN_SECRET_KEY,
            ));
        }
        let lifecycle = app.lifecycle.get_or_insert_with(Lifecycle::default);
        // A preStop the app already has is its own business; without one, the app keeps serving
        // until the sidecar no longer needs it (every stream handed over or finished): the hook
        // waits on the sidecar's admin port and returns then, so the app is not kept longer.
        lifecycle.pre_stop.get_or_insert_with(|| LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some(paths::APP_PRESTOP.into()),
                port: IntOrString::Int(i32::from(contract::ADMIN_PORT)),
                scheme: Some("HTTP".into()),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        });
    }
    pod.containers.push(sidecar_container(ctx, input, &args));
    // The lifecycle socket's directory: memory-backed, mounted in the sidecar container only.
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: contract::LIFECYCLE_VOLUME_NAME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(contract::LIFECYCLE_VOLUME_SIZE_LIMIT.into())),
        }),
        ..Volume::default()
    });

    let mut metadata = ctx.meta(ctx.name.clone());
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH_ANNOTATION.into(), template_hash(&template));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.selector()),
                ..LabelSelector::default()
            },
            min_ready_seconds: Some(spec.rollout.min_ready_seconds),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(spec.rollout.max_surge)),
                    max_unavailable: Some(IntOrString::Int(spec.rollout.max_unavailable)),
                }),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Which container is "the app": the one exposing `appPort`, else the first.
pub fn app_container_index(svc: &SseService) -> Option<usize> {
    let containers = &svc.spec.template.spec.as_ref()?.containers;
    containers
        .iter()
        .position(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == svc.spec.app_port)
        })
        .or(if containers.is_empty() { None } else { Some(0) })
}

/// The sidecar's configuration for this SseService: what the sidecar will parse from its args.
pub fn sidecar_args(svc: &SseService, namespace: &str, name: &str) -> SidecarArgs {
    let spec = &svc.spec;
    let mut args =
        SidecarArgs::defaults(u16::try_from(spec.app_port).unwrap_or(0), namespace, name);
    args.store = spec.sessions.store.into();
    args.session_ttl_seconds = spec.sessions.ttl_seconds;
    args.history_limit = spec.sessions.history_limit;
    args.history_max_entries = spec.sessions.history_max_entries;
    args.on_history_gap = spec.sessions.on_history_gap.into();
    args.session_keys = spec
        .sessions
        .key
        .iter()
        .filter_map(|k| k.to_source())
        .collect();
    args.identity = contract::IdentitySources(
        spec.sessions
            .identity
            .iter()
            .filter_map(|k| k.to_source())
            .collect(),
    );
    args.broadcast = spec
        .broadcast
        .iter()
        .map(|b| contract::BroadcastPath {
            path: b.path.clone(),
            history_limit: b.history_limit,
        })
        .collect();
    if let Some(r) = spec.rebalance.as_ref().filter(|r| r.enabled) {
        args.rebalance = true;
        args.rebalance_tolerance_percent = r.tolerance_percent;
        args.rebalance_max_shed_per_second = r.max_shed_per_second;
    }
    args.prestop_delay_seconds = spec.drain.pre_stop_delay_seconds;
    args.drain_seconds = spec.drain.drain_seconds;
    args.request_seconds = spec.drain.request_seconds;
    args.reconnect_delay_millis = spec.drain.reconnect_delay_millis;
    // Explicit, derived from the drain above when unset (as the sidecar would derive it).
    args.history_seconds = Some(
        spec.sessions
            .history_seconds
            .unwrap_or_else(|| args.history_floor_seconds()),
    );
    args
}

/// Hash of the rendered pod template, kept on the Deployment: the live template carries the API
/// server's defaults, so comparing this hash (not the templates) tells whether an apply would roll
/// the pods, which the rollout queue must know before it applies.
pub fn template_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

/// Hash of everything that should roll the pods but is not visible in the template itself.
fn config_hash(args: &SidecarArgs, secrets_fingerprint: &str) -> String {
    let mut hasher = Sha256::new();
    for arg in args.to_args() {
        hasher.update(arg.as_bytes());
        hasher.update([0]);
    }
    hasher.update(secrets_fingerprint.as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

fn sidecar_container(ctx: &Ctx<'_>, input: &RenderInput<'_>, args: &SidecarArgs) -> Container {
    let overrides = ctx.svc.spec.sidecar.clone().unwrap_or_default();
    let admin = IntOrString::String(contract::ADMIN_PORT_NAME.into());
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        port: admin.clone(),
        ..HTTPGetAction::default()
    };

    let mut env = vec![
        field_env(env::POD_NAME, "metadata.name"),
        field_env(env::POD_NAMESPACE, "metadata.namespace"),
        field_env(env::POD_IP, "status.podIP"),
        secret_env(
            env::FORWARD_KEY,
            &contract::forward_secret_name(&ctx.name),
            contract::FORWARD_KEY_SECRET_KEY,
        ),
    ];
    if !args.broadcast.is_empty() {
        env.push(secret_env(
            env::BROADCAST_PUBLISH_TOKEN,
            &contract::forward_secret_name(&ctx.name),
            contract::PUBLISH_TOKEN_SECRET_KEY,
        ));
    }
    if let Some(redis) = &ctx.svc.spec.sessions.redis
        && args.store == contract::StoreKind::Redis
    {
        env.push(secret_env(
            env::REDIS_URL,
            &redis.secret_ref.name,
            &redis.secret_ref.key,
        ));
    }

    Container {
        name: contract::SIDECAR_CONTAINER_NAME.into(),
        image: Some(
            overrides
                .image
                .unwrap_or_else(|| input.defaults.image.clone()),
        ),
        image_pull_policy: input.defaults.image_pull_policy.clone(),
        args: Some(args.to_args()),
        env: Some(env),
        ports: Some(vec![
            container_port(contract::SSE_PORT_NAME, contract::SSE_PORT),
            container_port(contract::ADMIN_PORT_NAME, contract::ADMIN_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(http_get(paths::READY)),
            period_seconds: Some(2),
            failure_threshold: Some(1),
            timeout_seconds: Some(1),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get(paths::LIVE)),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            timeout_seconds: Some(2),
            ..Probe::default()
        }),
        // An exec of the sidecar's own `prestop` subcommand over the lifecycle socket: only the
        // kubelet can run it, where an httpGet would be open to anything that reaches the port.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(contract::prestop_command(args)),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: contract::LIFECYCLE_VOLUME_NAME.into(),
            mount_path: lifecycle_socket_dir(args),
            ..VolumeMount::default()
        }]),
        resources: Some(
            overrides
                .resources
                .unwrap_or_else(|| input.defaults.resources.clone()),
        ),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Where the lifecycle volume is mounted: the directory of the socket the sidecar is told to use.
fn lifecycle_socket_dir(args: &SidecarArgs) -> String {
    args.lifecycle_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| contract::LIFECYCLE_SOCKET_DIR.into())
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}
