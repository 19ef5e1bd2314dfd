//! The Service: targets the sidecar's port (never the app's) with ClientIP affinity.

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ssekeeper_contract as contract;

use super::Ctx;

pub(super) fn render(ctx: &Ctx<'_>) -> Service {
    let cfg = &ctx.svc.spec.service;
    let affinity = &cfg.session_affinity;
    Service {
        metadata: ctx.meta(ctx.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some(cfg.type_.as_str().into()),
            selector: Some(ctx.selector()),
            ports: Some(vec![ServicePort {
                name: Some(contract::SSE_PORT_NAME.into()),
                port: cfg.port,
                // By number: a named targetPort resolves to the first container port of that name,
                // and an app port named `sse` would silently bypass the sidecar.
                target_port: Some(IntOrString::Int(i32::from(contract::SSE_PORT))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            session_affinity: Some(if affinity.enabled { "ClientIP" } else { "None" }.into()),
            session_affinity_config: affinity.enabled.then_some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(affinity.timeout_seconds),
                }),
            }),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// How the Service's affinity reads in `kubectl get ssesvc`.
pub fn affinity_text(svc: &crate::api::SseService) -> String {
    let affinity = &svc.spec.service.session_affinity;
    if affinity.enabled {
        format!("ClientIP/{}s", affinity.timeout_seconds)
    } else {
        "None".into()
    }
}
