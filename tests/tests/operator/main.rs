//! The operator against a real kube-apiserver + etcd + kube-controller-manager (tests/cluster).
//! Each test has its own namespace and its own operator process (`--watch-namespace`), so they run
//! in parallel without seeing each other.

mod monitoring;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use ssekeeper_operator::api::SseService;
use ssekeeper_sidecar::contract;
use ssekeeper_testkit::redis::RedisServer;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

async fn get<K>(client: &Client, ns: &str, name: &str) -> Option<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> (String, String, String) {
    eventually(
        &format!("event {reason} on {name}"),
        paced(WAIT),
        || async {
            events(client, ns, name)
                .await
                .into_iter()
                .find(|e| e.1 == reason)
        },
    )
    .await
}

fn condition(svc: &SseService, ty: &str) -> Option<(String, String)> {
    svc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Wait until the object `name` of kind `K` no longer exists.
async fn wait_gone<K>(client: &Client, ns: &str, name: &str, what: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    eventually(what, paced(WAIT), || async {
        get::<K>(client, ns, name).await.is_none().then_some(())
    })
    .await
}

/// Delete an SseService and wait until it is gone (its finalizer, if any, has run).
async fn delete_and_wait_gone(client: &Client, ns: &str, name: &str, what: &str) {
    Api::<SseService>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone::<SseService>(client, ns, name, what).await;
}

/// Wait until the SseService's Degraded condition has `status`; returns (status, reason).
async fn wait_degraded(client: &Client, ns: &str, name: &str, status: &str) -> (String, String) {
    eventually(
        &format!("{name}: Degraded={status}"),
        paced(WAIT),
        || async {
            let s: SseService = get(client, ns, name).await?;
            condition(&s, "Degraded").filter(|c| c.0 == status)
        },
    )
    .await
}

fn pod_spec(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_a_clear_message() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "invalid").await;
    let dir = repo().join("tests/testdata/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "at least 10 invalid manifests");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{file:?} lacks '# expect: ' first line"));
        let out = kubectl(&[
            "create",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            file.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_string_lossy();
        if out.status.success() {
            failures.push(format!(
                "{name}: accepted, expected refusal with {expect:?}"
            ));
        } else if !stderr.contains(expect) {
            failures.push(format!(
                "{name}: refused, but message lacks {expect:?}:\n  {stderr}"
            ));
        } else {
            println!("refused as expected: {name}: {expect}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // And the examples are valid.
    for example in [
        "examples/chat.yaml",
        "examples/mcp.yaml",
        "examples/minimal.yaml",
    ] {
        let out = kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            &manifest(example, &ns.name),
        );
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn examples_render_children_that_follow_the_spec() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "examples").await;
    let _op = Operator::start(&ns.name, "op-a", &["--purge-timeout-seconds=3"]);
    for example in [
        "examples/chat.yaml",
        "examples/mcp.yaml",
        "examples/minimal.yaml",
    ] {
        let out = apply_text(&manifest(example, &ns.name));
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // chat: Deployment with the sidecar, the grace period and the app preStop of the contract.
    let dep: Deployment = eventually("chat Deployment", paced(WAIT), || {
        get(&client, &ns.name, "chat")
    })
    .await;
    let pod = pod_spec(&dep);
    assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(i64::from(contract::termination_grace_period_seconds(
            3,
            6,
            contract::defaults::REQUEST_SECONDS
        )))
    );
    let sidecar = pod
        .containers
        .iter()
        .find(|c| c.name == contract::SIDECAR_CONTAINER_NAME)
        .expect("sidecar");
    assert_eq!(sidecar.image.as_deref(), Some("ssekeeper/sidecar:test"));
    assert!(
        sidecar
            .args
            .as_ref()
            .unwrap()
            .contains(&"--store=redis".to_string())
    );
    let app = pod.containers.iter().find(|c| c.name == "app").unwrap();
    // The app's preStop waits on the sidecar's admin port until the drain is done with it.
    let hook = app
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(hook.path.as_deref(), Some(contract::paths::APP_PRESTOP));
    assert_eq!(hook.port, IntOrString::Int(i32::from(contract::ADMIN_PORT)));
    assert_eq!(dep.owner_references()[0].kind, "SseService");

    // Service: ClientIP affinity, targets the sidecar.
    let svc: Service = get(&client, &ns.name, "chat").await.expect("chat Service");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(
        spec.session_affinity_config
            .unwrap()
            .client_ip
            .unwrap()
            .timeout_seconds,
        Some(10800)
    );
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.port, 80);
    assert_eq!(
        port.target_port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                contract::SSE_PORT
            ))
        )
    );

    // Forwarding key Secret and PDB (applied after the Deployment: waited for, not assumed).
    let secret_name = contract::forward_secret_name("chat");
    let secret: Secret = eventually("forward key Secret", paced(WAIT), || {
        get(&client, &ns.name, &secret_name)
    })
    .await;
    assert!(
        secret.data.unwrap()[contract::FORWARD_KEY_SECRET_KEY]
            .0
            .len()
            >= 32
    );
    let pdb: PodDisruptionBudget =
        eventually("PDB", paced(WAIT), || get(&client, &ns.name, "chat")).await;
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // mcp: Ingress, no affinity; minimal: memory store, no Ingress/PDB.
    let _ing: Ingress =
        eventually("mcp Ingress", paced(WAIT), || get(&client, &ns.name, "mcp")).await;
    let mcp_svc: Service =
        eventually("mcp Service", paced(WAIT), || get(&client, &ns.name, "mcp")).await;
    assert_eq!(
        mcp_svc.spec.unwrap().session_affinity.as_deref(),
        Some("None")
    );
    let _: Deployment = eventually("ticker Deployment", paced(WAIT), || {
        get(&client, &ns.name, "ticker")
    })
    .await;
    let ticker: SseService = get(&client, &ns.name, "ticker").await.unwrap();
    assert!(
        ticker.finalizers().is_empty(),
        "memory store: nothing to purge, no finalizer"
    );
    assert!(
        get::<PodDisruptionBudget>(&client, &ns.name, "ticker")
            .await
            .is_none()
    );

    // Status: observedGeneration, selector, conditions (no node: pods stay Pending).
    let chat: SseService = eventually("chat status", paced(WAIT), || async {
        let s: SseService = get(&client, &ns.name, "chat").await?;
        (s.status.as_ref()?.observed_generation == s.metadata.generation).then_some(s)
    })
    .await;
    let status = chat.status.as_ref().unwrap();
    assert_eq!(
        status.selector.as_deref(),
        Some("ssekeeper.dev/service=chat")
    );
    assert_eq!(status.service_name.as_deref(), Some("chat"));
    assert_eq!(condition(&chat, "Ready").unwrap().0, "False");
    assert_eq!(condition(&chat, "Progressing").unwrap().0, "True");
    assert_eq!(
        condition(&chat, "Degraded").unwrap(),
        ("False".into(), "AsExpected".into())
    );
    wait_event(&client, &ns.name, "chat", "Created").await;

    // kubectl get shows the columns; describe shows conditions and events.
    let table = kubectl_ok(&["get", "ssesvc", "-n", &ns.name]);
    println!("{table}");
    let header = table.lines().next().unwrap();
    for col in ["NAME", "READY", "PODS", "STATUS", "AFFINITY", "AGE"] {
        assert!(header.contains(col), "column {col} missing in {header:?}");
    }
    let chat_row = table.lines().find(|l| l.starts_with("chat ")).unwrap();
    assert!(
        chat_row.contains("False")
            && chat_row.contains("0/3")
            && chat_row.contains("AsExpected")
            && chat_row.contains("ClientIP/10800s"),
        "{chat_row}"
    );
    let wide = kubectl_ok(&["get", "ssesvc", "-n", &ns.name, "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    for col in ["STORE", "SERVICE", "REPLICAS"] {
        assert!(
            header.contains(col),
            "-o wide column {col} missing in {header:?}"
        );
    }
    let chat_wide = wide.lines().find(|l| l.starts_with("chat ")).unwrap();
    assert!(chat_wide.contains("redis"), "{chat_wide}");
    let describe = kubectl_ok(&["describe", "ssesvc", "chat", "-n", &ns.name]);
    for needle in [
        "Conditions:",
        "Progressing",
        "RollingOut",
        "Events:",
        "Created",
    ] {
        assert!(
            describe.contains(needle),
            "describe lacks {needle:?}:\n{describe}"
        );
    }

    // A spec change updates the children and says so.
    let api: Api<SseService> = Api::namespaced(client.clone(), &ns.name);
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {
            "drain": {"drainSeconds": 30},
            "service": {"sessionAffinity": {"enabled": false}},
            "disruptionBudget": null,
            "networkPolicy": {"metricsFrom": [{"podLabels": {"app": "prometheus"}}]}
        }})),
    )
    .await
    .unwrap();
    let grace = i64::from(contract::termination_grace_period_seconds(
        3,
        30,
        contract::defaults::REQUEST_SECONDS,
    ));
    eventually("grace period follows drainSeconds", paced(WAIT), || async {
        let d: Deployment = get(&client, &ns.name, "chat").await?;
        (pod_spec(&d).termination_grace_period_seconds == Some(grace)).then_some(())
    })
    .await;
    eventually("affinity off", paced(WAIT), || async {
        let s: Service = get(&client, &ns.name, "chat").await?;
        let spec = s.spec?;
        (spec.session_affinity.as_deref() == Some("None") && spec.session_affinity_config.is_none())
            .then_some(())
    })
    .await;
    wait_gone::<PodDisruptionBudget>(&client, &ns.name, "chat", "PDB removed").await;
    // The NetworkPolicy asked for: the admin port from the SseService's pods and Prometheus.
    let policy: NetworkPolicy = eventually("NetworkPolicy", paced(WAIT), || {
        get(&client, &ns.name, "chat")
    })
    .await;
    let rules = policy.spec.unwrap().ingress.unwrap();
    let admin_rule = &rules[0];
    assert_eq!(
        admin_rule.ports.as_ref().unwrap()[0].port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                contract::ADMIN_PORT
            ))
        )
    );
    assert_eq!(admin_rule.from.as_ref().unwrap().len(), 2);
    assert!(rules[1].from.is_none(), "the client port is open to all");
    wait_event(&client, &ns.name, "chat", "RolloutStarted").await;
    wait_event(&client, &ns.name, "chat", "Updated").await;

    // kubectl scale reaches the Deployment through the scale subresource.
    kubectl_ok(&["scale", "ssesvc/chat", "--replicas=5", "-n", &ns.name]);
    eventually("Deployment scaled to 5", paced(WAIT), || async {
        let d: Deployment = get(&client, &ns.name, "chat").await?;
        (d.spec?.replicas == Some(5)).then_some(())
    })
    .await;
    wait_event(&client, &ns.name, "chat", "Scaled").await;

    // Deletion: the finalizer gives up on the unreachable Redis after the purge timeout, then
    // the controller-manager's garbage collector removes every child.
    api.delete("chat", &DeleteParams::default()).await.unwrap();
    wait_gone::<SseService>(&client, &ns.name, "chat", "chat deleted").await;
    eventually(
        "children garbage-collected",
        paced(Duration::from_secs(90)),
        || async {
            let dep = get::<Deployment>(&client, &ns.name, "chat").await;
            let svc = get::<Service>(&client, &ns.name, "chat").await;
            let sec =
                get::<Secret>(&client, &ns.name, &contract::forward_secret_name("chat")).await;
            (dep.is_none() && svc.is_none() && sec.is_none()).then_some(())
        },
    )
    .await;
    let (ty, _, note) = wait_event(&client, &ns.name, "chat", "PurgeAbandoned").await;
    assert_eq!(ty, "Warning");
    assert!(note.contains("ssekeeper:"), "{note}");
}

#[tokio::test]
async fn missing_redis_secret_degrades_then_heals_when_it_appears() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "secret").await;
    let op = Operator::start(&ns.name, "op-a", &[]);
    let text = manifest("examples/chat.yaml", &ns.name);
    let only_svc = text.split("---").nth(1).unwrap();
    let out = apply_text(only_svc);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let degraded = wait_degraded(&client, &ns.name, "chat", "True").await;
    assert_eq!(degraded.1, "RedisSecretInvalid");
    let (ty, _, note) = wait_event(&client, &ns.name, "chat", "RedisSecretInvalid").await;
    assert_eq!(ty, "Warning");
    assert!(
        note.contains("chat-redis") && note.contains("not found"),
        "{note}"
    );
    assert!(get::<Deployment>(&client, &ns.name, "chat").await.is_none());

    // No hot loop: a handful of reconciles over a few seconds (backoff), not hundreds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = op.metrics().await.unwrap();
    let reconciles = metric_value(&metrics, "ssekeeper_operator_reconciles_total");
    assert!(
        reconciles < 20.0,
        "{reconciles} reconciles in ~5 s: hot loop?\n{}",
        op.log_text()
    );
    assert!(metrics.contains("kind=\"RedisSecretInvalid\""), "{metrics}");

    // A malformed Secret is reported as such.
    let bad: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chat-redis"}, "stringData": {"url": "http://not-redis"}
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets.create(&PostParams::default(), &bad).await.unwrap();
    eventually("malformed URL reported", paced(WAIT), || async {
        let s: SseService = get(&client, &ns.name, "chat").await?;
        let msg = s
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded")?
            .message;
        msg.contains("does not hold a Redis URL").then_some(())
    })
    .await;

    // Fix it: the Secret watch heals it without waiting for the backoff.
    secrets
        .patch(
            "chat-redis",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"url": "redis://127.0.0.1:1/0"}})),
        )
        .await
        .unwrap();
    wait_degraded(&client, &ns.name, "chat", "False").await;
    let _: Deployment = eventually("Deployment created", paced(WAIT), || {
        get(&client, &ns.name, "chat")
    })
    .await;
    wait_event(&client, &ns.name, "chat", "Recovered").await;
}

/// A namespaced install watches a list of namespaces: their SseServices are reconciled, one
/// outside the list is left alone.
#[tokio::test]
async fn an_operator_watching_two_namespaces_reconciles_those_only() {
    let client = client().await;
    let one = TestNamespace::create(&client, "watch-a").await;
    let two = TestNamespace::create(&client, "watch-b").await;
    let other = TestNamespace::create(&client, "watch-c").await;
    let _op = Operator::start(
        &one.name,
        "op-w",
        &[&format!("--watch-namespace={}", two.name)],
    );
    for ns in [&one.name, &two.name, &other.name] {
        let out = apply_text(&manifest("examples/minimal.yaml", ns));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for ns in [&one.name, &two.name] {
        let _: Deployment = eventually(&format!("Deployment in {ns}"), paced(WAIT), || {
            get(&client, ns, "ticker")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        get::<Deployment>(&client, &other.name, "ticker")
            .await
            .is_none(),
        "a namespace outside the list is not touched"
    );
}

#[tokio::test]
async fn an_object_that_is_not_ours_is_never_taken_over() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "conflict").await;
    let theirs: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ticker", "labels": {"owner": "someone-else"}},
        "spec": {"ports": [{"port": 9999}], "selector": {"app": "other"}}
    }))
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let _op = Operator::start(&ns.name, "op-a", &[]);
    let out = apply_text(&manifest("examples/minimal.yaml", &ns.name));
    assert!(out.status.success());

    let degraded = wait_degraded(&client, &ns.name, "ticker", "True").await;
    assert_eq!(degraded.1, "NameConflict");
    let (ty, _, note) = wait_event(&client, &ns.name, "ticker", "NameConflict").await;
    assert_eq!(ty, "Warning");
    assert!(
        note.contains("Service") && note.contains("not owned"),
        "{note}"
    );
    let untouched: Service = get(&client, &ns.name, "ticker").await.unwrap();
    assert_eq!(untouched.spec.unwrap().ports.unwrap()[0].port, 9999);
    assert!(untouched.metadata.owner_references.is_none());

    services
        .delete("ticker", &DeleteParams::default())
        .await
        .unwrap();
    wait_degraded(&client, &ns.name, "ticker", "False").await;
    let ours: Service = get(&client, &ns.name, "ticker").await.unwrap();
    assert_eq!(ours.owner_references()[0].kind, "SseService");

    // What the CRD cannot check cheaply (every container's ports) is reported the same way.
    let bad = manifest("examples/minimal.yaml", &ns.name)
        .replace("name: ticker", "name: clash")
        .replace(
            "image: registry.example/ticker:1.0",
            "image: x\n          ports: [{ name: sse, containerPort: 9000 }]",
        );
    let out = apply_text(&bad);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invalid = wait_degraded(&client, &ns.name, "clash", "True").await;
    assert_eq!(invalid.1, "InvalidSpec");
    assert!(
        get::<Deployment>(&client, &ns.name, "clash")
            .await
            .is_none()
    );
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn finalizer_purges_exactly_this_services_sessions_from_redis() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "purge").await;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let prefix = contract::keys::service_prefix(&ns.name, "chat");
    let other = contract::keys::service_prefix(&ns.name, "other");
    for i in 0..250 {
        redis.cli(&["SET", &format!("{prefix}{{s{i}}}:events"), "x"]);
    }
    redis.cli(&["SET", &format!("{other}{{s1}}:events"), "keep"]);
    redis.cli(&["SET", "unrelated", "keep"]);

    let op = Operator::start(&ns.name, "op-a", &[]);
    let text = manifest("examples/chat.yaml", &ns.name)
        .replace(&format!("redis://redis.{}.svc:6379/0", ns.name), &url);
    let out = apply_text(&text);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _: Deployment =
        eventually("Deployment", paced(WAIT), || get(&client, &ns.name, "chat")).await;
    eventually("finalizer added", paced(WAIT), || async {
        let s: SseService = get(&client, &ns.name, "chat").await?;
        s.finalizers()
            .iter()
            .any(|f| f == "ssekeeper.dev/purge-sessions")
            .then_some(())
    })
    .await;

    let _: Secret = eventually("operator's copy of the URL", paced(WAIT), || {
        get(&client, &ns.name, "chat-ssekeeper-redis")
    })
    .await;

    // `kubectl delete -f examples/chat.yaml` deletes the user's Secret first; and a restarted
    // operator has no memory of the URL: the purge must still happen, from the operator's copy.
    drop(op);
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .delete("chat-redis", &DeleteParams::default())
        .await
        .unwrap();
    let _op = Operator::start(&ns.name, "op-b", &[]);
    delete_and_wait_gone(&client, &ns.name, "chat", "chat deleted").await;
    assert_eq!(
        redis.cli(&["DBSIZE"]).trim(),
        "2",
        "only the other service's and unrelated keys remain"
    );
    assert_eq!(redis.cli(&["GET", "unrelated"]).trim(), "keep");
    let (_, _, note) = wait_event(&client, &ns.name, "chat", "SessionsPurged").await;
    assert!(note.contains("250"), "{note}");
}

#[tokio::test]
async fn operator_restart_and_standby_do_not_fight_over_objects() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "restart").await;
    let mut first = Operator::start(&ns.name, "op-a", &[]);
    let out = apply_text(&manifest("examples/minimal.yaml", &ns.name));
    assert!(out.status.success());
    let svc: SseService = eventually("status written", paced(WAIT), || async {
        let s: SseService = get(&client, &ns.name, "ticker").await?;
        s.status.as_ref()?.observed_generation.map(|_| s)
    })
    .await;
    // What the operator wrote: its managedFields entries (time and fields) on each child, and the
    // key. The controller-manager's own status updates move resourceVersions, not these.
    let versions = |client: Client, ns: String| async move {
        fn ours<K: kube::Resource>(obj: &K) -> Vec<String> {
            obj.meta()
                .managed_fields
                .iter()
                .flatten()
                .filter(|m| m.manager.as_deref() == Some("ssekeeper"))
                .map(|m| format!("{:?} {:?}", m.time, m.fields_v1))
                .collect()
        }
        let d: Deployment = get(&client, &ns, "ticker").await.unwrap();
        let s: Service = get(&client, &ns, "ticker").await.unwrap();
        let k: Secret = get(&client, &ns, &contract::forward_secret_name("ticker"))
            .await
            .unwrap();
        let key = k.data.clone().unwrap()[contract::FORWARD_KEY_SECRET_KEY].clone();
        (ours(&d), ours(&s), ours(&k), key, d.metadata.generation)
    };
    let before = versions(client.clone(), ns.name.clone()).await;

    // Graceful stop: exit 0, Lease released.
    let status = first.terminate();
    assert!(
        status.success(),
        "operator exited with {status}: {}",
        first.log_text()
    );

    // Two replicas at once: exactly one leads; the other stands by. The first released the
    // Lease, so a new leader is there well before the 15 s a crashed leader's Lease would last.
    let second = Operator::start(&ns.name, "op-b", &[]);
    let third = Operator::start(&ns.name, "op-c", &[]);
    let leaders = eventually("one leader", paced(Duration::from_secs(10)), || async {
        let b = metric_value(&second.metrics().await?, "ssekeeper_operator_leader");
        let c = metric_value(&third.metrics().await?, "ssekeeper_operator_leader");
        (b + c == 1.0).then_some((b, c))
    })
    .await;
    // Let the leader reconcile, then check nothing was rewritten (no fighting, no duplicates).
    let leader = if leaders.0 == 1.0 { &second } else { &third };
    eventually("leader reconciled", paced(WAIT), || async {
        (metric_value(
            &leader.metrics().await?,
            "ssekeeper_operator_reconciles_total",
        ) >= 1.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = versions(client.clone(), ns.name.clone()).await;
    assert_eq!(
        before, after,
        "a restarted operator rewrote objects (or rotated the key)"
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("ssekeeper.dev/service=ticker"))
        .await
        .unwrap();
    assert_eq!(deployments.items.len(), 1);
    let standby = if leaders.0 == 1.0 { &third } else { &second };
    assert_eq!(
        metric_value(
            &standby.metrics().await.unwrap(),
            "ssekeeper_operator_reconciles_total"
        ),
        0.0,
        "the standby reconciled"
    );
    assert_eq!(
        svc.metadata.generation,
        get::<SseService>(&client, &ns.name, "ticker")
            .await
            .unwrap()
            .metadata
            .generation
    );
}

#[tokio::test]
async fn helm_chart_lints_templates_installs_and_its_rbac_is_enough() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "helm").await;
    let chart = repo().join("charts/ssekeeper");
    let chart = chart.to_str().unwrap();
    let env = cluster_env();
    let helm = |args: &[&str]| {
        std::process::Command::new(cluster_bin("helm"))
            .args(args)
            .envs(env)
            .output()
            .expect("run helm")
    };
    let lint = helm(&["lint", "--strict", chart]);
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let template = helm(&["template", "sk", chart, "--namespace", &ns.name]);
    assert!(
        template.status.success(),
        "{}",
        String::from_utf8_lossy(&template.stderr)
    );
    let rendered = String::from_utf8_lossy(&template.stdout);
    for kind in [
        "kind: Deployment",
        "kind: ClusterRole",
        "kind: ServiceAccount",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(rendered.contains(kind), "helm template lacks {kind}");
    }
    assert!(
        rendered.contains("kind: CustomResourceDefinition"),
        "the CRD is a template"
    );
    let scoped = helm(&[
        "template",
        "sk",
        chart,
        "--set",
        "operator.watchNamespaces={team-a,team-b}",
    ]);
    let scoped = String::from_utf8_lossy(&scoped.stdout);
    assert!(
        !scoped.contains("kind: ClusterRoleBinding")
            && scoped.matches("kind: RoleBinding").count() == 3,
        "a namespaced install binds Roles in its two namespaces (and the leader-election one)"
    );
    let bad = helm(&["template", "sk", chart, "--set", "operator.logFormat=xml"]);
    assert!(
        !bad.status.success(),
        "values.schema.json must refuse logFormat=xml"
    );

    let release = ns.name.clone();
    let install = helm(&[
        "install",
        &release,
        chart,
        "--namespace",
        &ns.name,
        // The CRD is applied by these tests (and is a template of the chart, not a file Helm
        // would skip): this release leaves it alone.
        "--set",
        "crds.enabled=false",
    ]);
    assert!(
        install.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let operator_name = format!("{release}-ssekeeper");
    let dep: Deployment = eventually("operator Deployment", paced(WAIT), || {
        get(&client, &ns.name, &operator_name)
    })
    .await;
    let pod = pod_spec(&dep);
    assert_eq!(dep.spec.unwrap().replicas, Some(2));
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));

    // Run the operator out of cluster as the chart's service account: the chart's RBAC must be
    // enough for everything it does (create children, status, events, finalizer, lease).
    let sa = format!("{release}-ssekeeper");
    let token = kubectl_ok(&["create", "token", &sa, "-n", &ns.name, "--duration=1h"]);
    let kubeconfig = service_account_kubeconfig(token.trim(), &ns.name);
    let _op = Operator::start_with_kubeconfig(
        &ns.name,
        "chart-sa",
        &["--purge-timeout-seconds=2"],
        kubeconfig.to_str().unwrap(),
    );
    let out = apply_text(&manifest("examples/minimal.yaml", &ns.name));
    assert!(out.status.success());
    let _: Deployment = eventually("Deployment made with the chart's RBAC", paced(WAIT), || {
        get(&client, &ns.name, "ticker")
    })
    .await;
    eventually(
        "status written with the chart's RBAC",
        paced(WAIT),
        || async {
            let s: SseService = get(&client, &ns.name, "ticker").await?;
            s.status?.observed_generation.map(|_| ())
        },
    )
    .await;
    wait_event(&client, &ns.name, "ticker", "Created").await;
    // Ingress, Redis Secret read, purge-URL copy, finalizer: all with the chart's RBAC.
    let out = apply_text(&manifest("examples/mcp.yaml", &ns.name));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _: Ingress = eventually("Ingress made with the chart's RBAC", paced(WAIT), || {
        get(&client, &ns.name, "mcp")
    })
    .await;
    let _: Secret = eventually("URL copy made with the chart's RBAC", paced(WAIT), || {
        get(&client, &ns.name, "mcp-ssekeeper-redis")
    })
    .await;
    Api::<SseService>::namespaced(client.clone(), &ns.name)
        .patch(
            "mcp",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"ingress": null}})),
        )
        .await
        .unwrap();
    wait_gone::<Ingress>(
        &client,
        &ns.name,
        "mcp",
        "Ingress deleted with the chart's RBAC",
    )
    .await;
    delete_and_wait_gone(
        &client,
        &ns.name,
        "mcp",
        "finalizer released with the chart's RBAC",
    )
    .await;
    let can = |verb: &str, res: &str| {
        kubectl(&[
            "auth",
            "can-i",
            verb,
            res,
            "--as",
            &format!("system:serviceaccount:{}:{sa}", ns.name),
            "-n",
            &ns.name,
        ])
        .status
        .success()
    };
    assert!(
        !can("delete", "deployments"),
        "least privilege: no deployment deletes"
    );
    assert!(!can("create", "pods"), "least privilege: no pods");

    Api::<SseService>::namespaced(client.clone(), &ns.name)
        .delete("ticker", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "deleted with the chart's RBAC (finalizer removed)",
        paced(WAIT),
        || async {
            get::<SseService>(&client, &ns.name, "ticker")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    let uninstall = helm(&["uninstall", &release, "--namespace", &ns.name]);
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
}

/// A kubeconfig that authenticates with a service-account token against the test cluster.
fn service_account_kubeconfig(token: &str, ns: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(&cluster_env()["KUBECONFIG"]).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    let users = doc["users"].as_sequence_mut().unwrap();
    for user in users.iter_mut() {
        let mut m = BTreeMap::new();
        m.insert("token".to_string(), token.to_string());
        user["user"] = serde_yaml::to_value(m).unwrap();
    }
    let path = std::env::temp_dir().join(format!("ssekeeper-sa-{ns}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

/// The fleet's rollout queue against the real API server (no pod here ever becomes ready, so a
/// rollout that starts never finishes and holds its slot): an operator restarted with new sidecar
/// defaults rolls one SseService (`--max-concurrent-rollouts=1`), queues the others with the
/// reason in status and an Event, holds a paused one whatever happens, admits the next when the
/// rolling one goes away, and rolls an owner's own spec change at once.
#[tokio::test]
async fn an_operator_upgrade_rolls_the_fleet_a_slot_at_a_time() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "fleet").await;
    let names = ["fleet-a", "fleet-b", "fleet-c", "fleet-d"];
    let mut op = Operator::start(&ns.name, "op-a", &["--max-concurrent-rollouts=1"]);
    for name in names {
        let text = manifest("examples/minimal.yaml", &ns.name)
            .replace("name: ticker", &format!("name: {name}"));
        let out = apply_text(&text);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let svcs: Api<SseService> = Api::namespaced(client.clone(), &ns.name);
    let hash = |d: &Deployment| {
        d.annotations()
            .get("ssekeeper.dev/template-hash")
            .cloned()
            .unwrap_or_default()
    };
    let mut before = BTreeMap::new();
    for name in names {
        let d: Deployment = eventually(&format!("{name}'s Deployment"), paced(WAIT), || async {
            get::<Deployment>(&client, &ns.name, name).await
        })
        .await;
        assert!(
            !hash(&d).is_empty(),
            "the template hash is on the Deployment"
        );
        before.insert(name, hash(&d));
    }
    // fleet-d is paused before the upgrade.
    svcs.patch(
        "fleet-d",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"ssekeeper.dev/paused": "true"}}}),
        ),
    )
    .await
    .unwrap();
    op.terminate();
    drop(op);

    // The "upgrade": new default sidecar resources, which every pod template carries.
    let op = Operator::start(
        &ns.name,
        "op-b",
        &[
            "--max-concurrent-rollouts=1",
            "--sidecar-resources={requests: {cpu: 61m, memory: 33Mi}, limits: {memory: 128Mi}}",
        ],
    );
    let changed = || async {
        let mut out = Vec::new();
        for name in names {
            let Some(d) = deployments.get_opt(name).await.unwrap() else {
                continue;
            };
            if hash(&d) != before[name] {
                out.push(name);
            }
        }
        out
    };
    let first = eventually("one SseService rolls", paced(WAIT), || async {
        let c = changed().await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(first.len(), 1, "one slot: {first:?}");
    let rolling = first[0];
    assert_ne!(rolling, "fleet-d", "a paused SseService never rolls");
    let reason = |name: &'static str| {
        let svcs = svcs.clone();
        async move {
            let s = svcs.get(name).await.ok()?;
            condition(&s, "Progressing").map(|c| c.1)
        }
    };
    let queued: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| *n != rolling && *n != "fleet-d")
        .collect();
    for name in &queued {
        eventually(&format!("{name} queued"), paced(WAIT), || async {
            (reason(name).await.as_deref() == Some("RolloutQueued")).then_some(())
        })
        .await;
        let (ty, _, note) = wait_event(&client, &ns.name, name, "RolloutQueued").await;
        assert_eq!(ty, "Normal");
        // The Event is the queue as it was when this one started to wait (maybe before the
        // first admission); the condition follows the queue and names the one rolling.
        assert!(note.contains("maxConcurrentRollouts"), "{note}");
        eventually(
            &format!("{name}'s condition names {rolling}"),
            paced(WAIT),
            || async {
                let s = svcs.get(name).await.ok()?;
                let c = s
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Progressing")?;
                (c.reason == "RolloutQueued" && c.message.contains(rolling)).then_some(())
            },
        )
        .await;
    }
    eventually("fleet-d paused", paced(WAIT), || async {
        (reason("fleet-d").await.as_deref() == Some("RolloutPaused")).then_some(())
    })
    .await;
    let (_, _, note) = wait_event(&client, &ns.name, "fleet-d", "RolloutPaused").await;
    assert!(note.contains("ssekeeper.dev/paused"), "{note}");
    // Held, not just slow: still one after several rechecks.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(changed().await, vec![rolling], "still one rolling");
    let metrics = op.metrics().await.unwrap_or_default();
    assert_eq!(
        metric_value(&metrics, r#"ssekeeper_operator_rollouts{state="rolling"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, r#"ssekeeper_operator_rollouts{state="queued"}"#),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, r#"ssekeeper_operator_rollouts{state="paused"}"#),
        1.0,
        "{metrics}"
    );

    // The owner's own change to a queued SseService rolls it at once.
    let own = queued[0];
    svcs.patch(
        own,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"owner": "changed"}}}}})),
    )
    .await
    .unwrap();
    eventually(
        &format!("{own} rolls for its own change"),
        paced(WAIT),
        || async { changed().await.contains(&own).then_some(()) },
    )
    .await;

    // The first rolling one goes away: its slot frees; the last queued one is admitted (the
    // owner-changed one still holds a slot, so one at a time means after it too is gone).
    delete_and_wait_gone(&client, &ns.name, rolling, "rolling one deleted").await;
    let last = queued[1];
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !changed().await.contains(&last),
        "{last} waits for {own}'s slot"
    );
    delete_and_wait_gone(&client, &ns.name, own, "owner-changed one deleted").await;
    eventually(&format!("{last} admitted"), paced(WAIT), || async {
        changed().await.contains(&last).then_some(())
    })
    .await;
    assert!(!changed().await.contains(&"fleet-d"), "paused stays");
    // Unpaused, it queues behind the one rolling.
    svcs.patch(
        "fleet-d",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"ssekeeper.dev/paused": null}}}),
        ),
    )
    .await
    .unwrap();
    eventually("fleet-d queued once unpaused", paced(WAIT), || async {
        (reason("fleet-d").await.as_deref() == Some("RolloutQueued")).then_some(())
    })
    .await;
}

/// With `spec.rebalance` on, the status shows how the streams are spread over the pods, read from
/// the hash the sidecars publish in Redis (the contract's format; stale entries left out).
#[tokio::test]
async fn the_stream_spread_the_sidecars_publish_is_in_the_status() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "spread").await;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let key = contract::rebalance::stream_counts_key(&ns.name, "chat");
    let now_ms = |r: &RedisServer| {
        let out = r.cli(&["TIME"]);
        let mut it = out.split_whitespace();
        let secs: u64 = it.next().unwrap().parse().unwrap();
        let micros: u64 = it.next().unwrap().parse().unwrap();
        secs * 1000 + micros / 1000
    };
    let t = now_ms(&redis);
    redis.cli(&["HSET", &key, "chat-a", &format!("v1 {t} 120 110 serving")]);
    redis.cli(&["HSET", &key, "chat-b", &format!("v1 {t} 80 70 serving")]);
    redis.cli(&[
        "HSET",
        &key,
        "chat-gone",
        &format!("v1 {} 999 999 serving", t - 600_000),
    ]);
    let _op = Operator::start(&ns.name, "op-a", &[]);
    let text = manifest("examples/chat.yaml", &ns.name)
        .replace(&format!("redis://redis.{}.svc:6379/0", ns.name), &url)
        .replace(
            "sessionAffinity: { enabled: true, timeoutSeconds: 10800 }",
            "sessionAffinity: { enabled: false }",
        )
        .replace(
            "  disruptionBudget:",
            "  rebalance: { enabled: true }\n  disruptionBudget:",
        );
    let out = apply_text(&text);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spread = eventually("the spread in the status", paced(WAIT), || async {
        let s: SseService = get(&client, &ns.name, "chat").await?;
        s.status?.streams
    })
    .await;
    println!("status.streams: {spread:?}");
    assert_eq!(
        spread.pods,
        ["chat-a=120(110) serving", "chat-b=80(70) serving"]
    );
    assert_eq!(spread.imbalance, "1.20");
    let d: Deployment = get(&client, &ns.name, "chat").await.unwrap();
    let args = d.spec.unwrap().template.spec.unwrap().containers[1]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--rebalance".to_string()), "{args:?}");
}
