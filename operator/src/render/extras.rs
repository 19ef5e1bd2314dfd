//! The optional and auxiliary objects: Ingress, PodDisruptionBudget, NetworkPolicy,
//! forwarding-key Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ssekeeper_contract as contract;

use super::Ctx;

/// ingress-nginx annotations: cookie affinity (a browser sticks to one pod) and the settings an
/// SSE response needs through nginx (no buffering, long read timeout).
fn ingress_annotations(ctx: &Ctx<'_>, cookie_affinity: bool) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-buffering".into(),
            "off".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".into(),
            "3600".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".into(),
            "3600".into(),
        ),
    ]);
    if cookie_affinity {
        let max_age = ctx.svc.spec.service.session_affinity.timeout_seconds;
        a.extend([
            (
                "nginx.ingress.kubernetes.io/affinity".into(),
                "cookie".into(),
            ),
            (
                "nginx.ingress.kubernetes.io/affinity-mode".into(),
                "persistent".into(),
            ),
            (
                "nginx.ingress.kubernetes.io/session-cookie-name".into(),
                format!("ssekeeper-{}", ctx.name),
            ),
            (
                "nginx.ingress.kubernetes.io/session-cookie-max-age".into(),
                max_age.to_string(),
            ),
        ]);
    }
    a
}

pub(super) fn ingress(ctx: &Ctx<'_>) -> Option<Ingress> {
    let cfg = ctx.svc.spec.ingress.as_ref()?;
    let mut annotations = ingress_annotations(ctx, cfg.cookie_affinity);
    annotations.extend(cfg.annotations.clone());
    let mut metadata = ctx.meta(ctx.name.clone());
    metadata.annotations = Some(annotations);
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: cfg.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(cfg.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: ctx.name.clone(),
                                port: Some(ServiceBackendPort {
                                    number: Some(ctx.svc.spec.service.port),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            tls: cfg.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![cfg.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

pub(super) fn pdb(ctx: &Ctx<'_>) -> Option<PodDisruptionBudget> {
    let cfg = ctx.svc.spec.disruption_budget.as_ref()?;
    Some(PodDisruptionBudget {
        metadata: ctx.meta(ctx.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(cfg.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The NetworkPolicy of the SseService's pods, when asked for: the admin port only from the
/// same SseService's pods (forwards) and the configured monitoring peers; the client port and
/// every port the app's containers declare from anywhere (the policy must not take away what
/// the pods served before it). Traffic from the node (kubelet probes) is always allowed by
/// Kubernetes' NetworkPolicy semantics.
pub(super) fn network_policy(ctx: &Ctx<'_>) -> Option<NetworkPolicy> {
    let cfg = ctx.svc.spec.network_policy.as_ref()?;
    let selector = || LabelSelector {
        match_labels: Some(ctx.selector()),
        ..LabelSelector::default()
    };
    let labels = |m: &BTreeMap<String, String>| LabelSelector {
        match_labels: (!m.is_empty()).then(|| m.clone()),
        ..LabelSelector::default()
    };
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    let mut peers = vec![NetworkPolicyPeer {
        pod_selector: Some(selector()),
        ..NetworkPolicyPeer::default()
    }];
    peers.extend(cfg.metrics_from.iter().map(|p| NetworkPolicyPeer {
        namespace_selector: (!p.namespace_labels.is_empty()).then(|| labels(&p.namespace_labels)),
        pod_selector: Some(labels(&p.pod_labels)),
        ..NetworkPolicyPeer::default()
    }));
    let mut open: Vec<i32> = vec![i32::from(contract::SSE_PORT)];
    let containers = ctx
        .svc
        .spec
        .template
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for c in containers {
        for p in c.ports.iter().flatten() {
            let n = p.container_port;
            if n != i32::from(contract::ADMIN_PORT) && !open.contains(&n) {
                open.push(n);
            }
        }
    }
    Some(NetworkPolicy {
        metadata: ctx.meta(ctx.name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(peers),
                    ports: Some(vec![port(i32::from(contract::ADMIN_PORT))]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(open.into_iter().map(port).collect()),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The Secret holding the per-SseService forwarding key. The reconciler generates the key once
/// and passes the existing one back in afterwards, so re-applying never rotates it under running
/// pods.
pub(super) fn forward_secret(ctx: &Ctx<'_>, key: &str) -> Secret {
    Secret {
        metadata: ctx.meta(contract::forward_secret_name(&ctx.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                contract::FORWARD_KEY_SECRET_KEY.into(),
                ByteString(key.as_bytes().to_vec()),
            ),
            (
                contract::PUBLISH_TOKEN_SECRET_KEY.into(),
                ByteString(publish_token(key).into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The broadcast publish token: derived from the forwarding key (one-way), so the Secret holds
/// both without a second random value to keep, and knowing the token (the app's container has
/// it) tells nothing about the forwarding key.
pub fn publish_token(forward_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"ssekeeper broadcast publish token\0");
    h.update(forward_key.as_bytes());
    hex::encode(h.finalize())
}

/// The operator-owned copy of the Redis URL, read by the finalizer.
pub(super) fn purge_secret(ctx: &Ctx<'_>, url: &str) -> Secret {
    Secret {
        metadata: ctx.meta(super::purge_secret_name(&ctx.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            super::PURGE_SECRET_KEY.into(),
            ByteString(url.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}
