//! Golden-file tests of the pure renderer: `testdata/render/<case>.input.yaml` (an SseService)
//! renders to exactly `<case>.golden.yaml`. `UPDATE_GOLDEN=1 cargo test` rewrites the goldens;
//! review the diff before committing it.

use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::core::v1::Container;
use ssekeeper_contract::{self as contract, PrestopArgs, SidecarArgs};
use ssekeeper_operator::api::SseService;
use ssekeeper_operator::render::{self, RenderInput, SidecarDefaults};

fn defaults() -> SidecarDefaults {
    SidecarDefaults {
        image: "ghcr.io/ssekeeper/sidecar:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        resources: serde_yaml::from_str(
            "{requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}",
        )
        .unwrap(),
    }
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/render")
}

fn load(case: &str) -> SseService {
    let text = std::fs::read_to_string(testdata().join(format!("{case}.input.yaml"))).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn render_case(case: &str) -> (SseService, render::Rendered) {
    let svc = load(case);
    let url = svc
        .spec
        .sessions
        .redis
        .as_ref()
        .map(|_| "redis://redis.example:6379/0");
    let defaults = defaults();
    let rendered = render::render(&RenderInput {
        svc: &svc,
        defaults: &defaults,
        secrets_fingerprint: render::secrets_fingerprint("golden-forward-key", url),
    })
    .unwrap();
    (svc, rendered)
}

fn to_docs(svc: &SseService, r: &render::Rendered) -> String {
    let secret = render::render_forward_secret(svc, "golden-forward-key").unwrap();
    let mut docs = vec![
        serde_yaml::to_string(&r.deployment).unwrap(),
        serde_yaml::to_string(&r.service).unwrap(),
        serde_yaml::to_string(&secret).unwrap(),
    ];
    if svc.spec.sessions.redis.is_some() {
        let copy = render::render_purge_secret(svc, "redis://redis.example:6379/0").unwrap();
        docs.push(serde_yaml::to_string(&copy).unwrap());
    }
    if let Some(i) = &r.ingress {
        docs.push(serde_yaml::to_string(i).unwrap());
    }
    if let Some(p) = &r.pdb {
        docs.push(serde_yaml::to_string(p).unwrap());
    }
    if let Some(p) = &r.network_policy {
        docs.push(serde_yaml::to_string(p).unwrap());
    }
    docs.join("---\n")
}

fn check_golden(case: &str) {
    let (svc, rendered) = render_case(case);
    let actual = to_docs(&svc, &rendered);
    let path = testdata().join(format!("{case}.golden.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {path:?}; run with UPDATE_GOLDEN=1"));
    assert_eq!(
        actual, expected,
        "{case}: rendering changed; rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn golden_minimal() {
    check_golden("minimal");
}

#[test]
fn golden_full() {
    check_golden("full");
}

#[test]
fn golden_affinity_off() {
    check_golden("affinity-off");
}

#[test]
fn golden_ingress() {
    check_golden("ingress");
}

#[test]
fn golden_pdb() {
    check_golden("pdb");
}

#[test]
fn golden_network_policy() {
    check_golden("network-policy");
}

#[test]
fn golden_rebalance() {
    check_golden("rebalance");
}

#[test]
fn golden_broadcast() {
    check_golden("broadcast");
}

#[test]
fn golden_memory_store() {
    check_golden("memory-store");
}

fn sidecar_of(r: &render::Rendered) -> Container {
    let pod = r
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    pod.containers
        .iter()
        .find(|c| c.name == contract::SIDECAR_CONTAINER_NAME)
        .cloned()
        .expect("sidecar injected")
}

/// The contract, operator side: what the operator renders is what the sidecar parses.
#[test]
fn rendered_sidecar_args_parse_as_the_sidecar_parses_them() {
    for case in [
        "minimal",
        "full",
        "affinity-off",
        "ingress",
        "pdb",
        "memory-store",
    ] {
        let (svc, rendered) = render_case(case);
        let sidecar = sidecar_of(&rendered);
        let argv =
            std::iter::once("ssekeeper-sidecar".to_string()).chain(sidecar.args.clone().unwrap());
        let parsed = SidecarArgs::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{case}: sidecar refuses rendered args: {e}"));
        let ns = svc.metadata.namespace.as_deref().unwrap();
        let name = svc.metadata.name.as_deref().unwrap();
        assert_eq!(parsed, render::sidecar_args(&svc, ns, name), "{case}");
        assert_eq!(i32::from(parsed.app_port), svc.spec.app_port, "{case}");
        assert_eq!(parsed.drain_seconds, svc.spec.drain.drain_seconds, "{case}");

        let env: Vec<_> = sidecar.env.unwrap().into_iter().map(|e| e.name).collect();
        for required in [
            contract::env::POD_NAME,
            contract::env::POD_IP,
            contract::env::FORWARD_KEY,
        ] {
            assert!(
                env.iter().any(|e| e == required),
                "{case}: {required} missing"
            );
        }
        let has_redis = env.iter().any(|e| e == contract::env::REDIS_URL);
        assert_eq!(
            has_redis,
            parsed.store == contract::StoreKind::Redis,
            "{case}"
        );

        let ports: Vec<_> = sidecar
            .ports
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(
            ports,
            [
                i32::from(contract::SSE_PORT),
                i32::from(contract::ADMIN_PORT)
            ]
        );

        // The preStop hook is an exec of the binary's own subcommand on the socket the sidecar
        // was told to serve, never an httpGet.
        let pre_stop = sidecar.lifecycle.unwrap().pre_stop.unwrap();
        assert!(pre_stop.http_get.is_none(), "{case}");
        let command = pre_stop.exec.unwrap().command.unwrap();
        assert_eq!(command[0], contract::SIDECAR_BINARY_PATH, "{case}");
        let hook = PrestopArgs::try_parse_from(&command[1..])
            .unwrap_or_else(|e| panic!("{case}: the subcommand refuses the rendered hook: {e}"));
        assert_eq!(hook.lifecycle_socket, parsed.lifecycle_socket, "{case}");
        assert!(
            hook.timeout_seconds > svc.spec.drain.pre_stop_delay_seconds,
            "{case}: the hook outlasts the hold"
        );
        let mounts = sidecar.volume_mounts.unwrap();
        assert_eq!(mounts.len(), 1, "{case}");
        assert_eq!(mounts[0].name, contract::LIFECYCLE_VOLUME_NAME, "{case}");
        assert_eq!(
            Some(std::path::Path::new(&mounts[0].mount_path)),
            parsed.lifecycle_socket.parent(),
            "{case}: the socket is in the mounted directory"
        );
    }
}

/// The socket's volume is memory-backed, small, and mounted in the sidecar container only.
#[test]
fn the_lifecycle_volume_is_the_sidecars_alone() {
    for case in ["minimal", "full", "affinity-off"] {
        let (_, rendered) = render_case(case);
        let pod = rendered.deployment.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == contract::LIFECYCLE_VOLUME_NAME)
            .unwrap_or_else(|| panic!("{case}: no lifecycle volume"));
        let dir = volume.empty_dir.as_ref().expect("an emptyDir");
        assert_eq!(dir.medium.as_deref(), Some("Memory"));
        assert_eq!(
            dir.size_limit.as_ref().map(|q| q.0.as_str()),
            Some(contract::LIFECYCLE_VOLUME_SIZE_LIMIT)
        );
        for c in &pod.containers {
            let mounts_it = c
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == contract::LIFECYCLE_VOLUME_NAME);
            assert_eq!(
                mounts_it,
                c.name == contract::SIDECAR_CONTAINER_NAME,
                "{case}: {}",
                c.name
            );
        }
    }
}

#[test]
fn grace_period_and_app_prestop_follow_the_drain_settings() {
    let (svc, rendered) = render_case("full");
    let pod = rendered.deployment.spec.unwrap().template.spec.unwrap();
    let drain = &svc.spec.drain;
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(i64::from(contract::termination_grace_period_seconds(
            drain.pre_stop_delay_seconds,
            drain.drain_seconds,
            drain.request_seconds
        )))
    );
    let app = pod.containers.iter().find(|c| c.name == "app").unwrap();
    let hook = app
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .expect("the app waits on the sidecar's admin port");
    assert_eq!(hook.path.as_deref(), Some(contract::paths::APP_PRESTOP));
    assert_eq!(
        hook.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
            contract::ADMIN_PORT
        ))
    );
    let shipper = pod
        .containers
        .iter()
        .find(|c| c.name == "log-shipper")
        .unwrap();
    assert!(
        shipper.lifecycle.is_none(),
        "only the app container waits for the drain"
    );
}

#[test]
fn a_changed_secret_changes_the_config_hash_without_revealing_it() {
    let svc = load("full");
    let defaults = defaults();
    let hash = |key: &str, url: &str| {
        let r = render::render(&RenderInput {
            svc: &svc,
            defaults: &defaults,
            secrets_fingerprint: render::secrets_fingerprint(key, Some(url)),
        })
        .unwrap();
        r.deployment
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[render::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let base = hash("key-1", "redis://:pw@r:6379");
    assert_eq!(base, hash("key-1", "redis://:pw@r:6379"));
    assert_ne!(
        base,
        hash("key-1", "redis://:other@r:6379"),
        "new Redis URL rolls"
    );
    assert_ne!(
        base,
        hash("key-2", "redis://:pw@r:6379"),
        "new forwarding key rolls"
    );
}

#[test]
fn the_service_targets_the_sidecar_port_by_number() {
    let (_, rendered) = render_case("full");
    let port = &rendered.service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(
        port.target_port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                contract::SSE_PORT
            ))
        )
    );
}
