//! End to end on the real node: pods run by the kubelet in containerd, the Service balanced by
//! kube-proxy, names from CoreDNS, the operator installed by the Helm chart and running in the
//! cluster, PodSecurity `restricted` enforced. Clients on the host stream through the Service's
//! ClusterIP and reconnect with `Last-Event-ID`, as browsers do. One cluster for every test
//! (`make test` brings it up with the node); the tests run one at a time.

#[path = "../operator/support.rs"]
#[allow(dead_code)]
mod support;

mod bed;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bed::*;
use ssekeeper_tests::mcp::{McpSession, PostResult};
use ssekeeper_tests::scenario::metric_sum;
use support::*;

const CLIENTS: usize = 100;

/// The chart's operator runs in the cluster: two replicas under `restricted`, one Lease holder,
/// and `helm test` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_runs_the_operator_in_the_cluster() {
    operator_installed();
    let ready = jsonpath(OPERATOR_NS, "deploy/ssekeeper", "{.status.readyReplicas}");
    assert_eq!(ready, "2", "two operator replicas ready");
    let holder = eventually(
        "a leader holds the Lease",
        paced(Duration::from_secs(60)),
        || async {
            let h = jsonpath(OPERATOR_NS, "lease/ssekeeper", "{.spec.holderIdentity}");
            (!h.is_empty()).then_some(h)
        },
    )
    .await;
    let operator_pods = pods(OPERATOR_NS, "app.kubernetes.io/name=ssekeeper");
    assert!(
        operator_pods.contains(&holder),
        "the holder {holder} is one of {operator_pods:?}"
    );
    let (ok, out) = helm_test();
    println!("{out}");
    assert!(ok, "helm test failed:\n{out}");
    assert!(out.contains("the SseService API is served"), "{out}");
}

/// `helm upgrade` upgrades the CRD (it is a template, not a file in crds/ that Helm installs once):
/// a chart whose CRD has a new field is served with it after the upgrade, SseServices keep it,
/// and the upgrade back restores the chart under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_upgrades_the_crd() {
    operator_installed();
    let dir = ssekeeper_testkit::tempdir::TestDir::new("chart").unwrap();
    let copy = dir.path().join("ssekeeper");
    let status = std::process::Command::new("cp")
        .args([
            "-r",
            repo().join("charts/ssekeeper").to_str().unwrap(),
            copy.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let crd_file = copy.join("files/ssekeeper.dev_sseservices.yaml");
    let crd = std::fs::read_to_string(&crd_file).unwrap();
    // A new optional field at the top of spec.properties: what a new version's CRD adds.
    let spec_properties = "          spec:\n            description:";
    assert!(
        crd.contains(spec_properties),
        "the generated CRD's layout changed"
    );
    let field = "              upgradeMarker:\n                description: added by the chart upgrade test\n                type: string\n";
    let changed = crd.replacen(
        "            properties:\n",
        &format!("            properties:\n{field}"),
        1,
    );
    std::fs::write(&crd_file, changed).unwrap();
    install_chart(&copy);
    let served = k(&[
        "get",
        "crd/sseservices.ssekeeper.dev",
        "-o",
        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.upgradeMarker.description}",
    ]);
    println!("after the upgrade the CRD serves spec.upgradeMarker: {served:?}");
    assert_eq!(served.trim(), "added by the chart upgrade test");
    // Back to the chart under test: the field is gone again (the CRD follows the chart).
    install_chart(&repo().join("charts/ssekeeper"));
    let served = k(&[
        "get",
        "crd/sseservices.ssekeeper.dev",
        "-o",
        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.upgradeMarker}",
    ]);
    assert_eq!(served.trim(), "", "downgraded with the chart");
    let keep = k(&[
        "get",
        "crd/sseservices.ssekeeper.dev",
        "-o",
        r#"jsonpath={.metadata.annotations.helm\.sh/resource-policy}"#,
    ]);
    assert_eq!(keep.trim(), "keep", "kept on uninstall");
}

/// Who may do what, asked of the real API server (`kubectl auth can-i`): the cluster-wide
/// release's operator, a namespaced release's operator (Roles in its two watched namespaces
/// only), and namespace users holding the built-in `edit` and `view` roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_for_both_install_modes_and_namespace_users() {
    operator_installed();
    let sse = "sseservices.ssekeeper.dev";
    let wide = format!("system:serviceaccount:{OPERATOR_NS}:ssekeeper");
    assert!(
        can_i(&wide, "list", sse, None),
        "cluster-wide: every namespace"
    );
    assert!(can_i(&wide, "get", "secrets", None));
    assert!(can_i(&wide, "patch", "deployments.apps", Some("default")));
    assert!(
        !can_i(&wide, "delete", "deployments.apps", Some("default")),
        "it never deletes a Deployment"
    );
    assert!(
        !can_i(&wide, "create", sse, Some("default")),
        "nor creates SseServices"
    );

    let (op_ns, a, b, c) = ("rbac-op", "rbac-a", "rbac-b", "rbac-c");
    for ns in [op_ns, a, b, c] {
        let _ = kubectl(&["create", "namespace", ns]);
    }
    let chart = repo().join("charts/ssekeeper");
    helm_ok(&[
        "upgrade",
        "--install",
        "ssekeeper-ns",
        chart.to_str().unwrap(),
        "-n",
        op_ns,
        "--set",
        "crds.enabled=false",
        "--set",
        "replicaCount=0",
        "--set",
        &format!("operator.watchNamespaces={{{a},{b}}}"),
        "--set",
        "rbac.aggregateToDefaultRoles=false",
    ]);
    let scoped = format!("system:serviceaccount:{op_ns}:ssekeeper-ns");
    let matrix: Vec<(&str, &str, Option<&str>, bool)> = vec![
        ("list", sse, Some(a), true),
        ("patch", "sseservices.ssekeeper.dev/status", Some(b), true),
        ("get", "secrets", Some(a), true),
        ("list", sse, Some(c), false),
        ("get", "secrets", Some(c), false),
        ("list", sse, None, false),
        ("get", "secrets", None, false),
        ("create", "leases.coordination.k8s.io", Some(op_ns), true),
        ("create", "leases.coordination.k8s.io", Some(a), false),
    ];
    for (verb, resource, ns, want) in &matrix {
        assert_eq!(
            can_i(&scoped, verb, resource, *ns),
            *want,
            "namespaced release: {verb} {resource} in {ns:?}"
        );
    }

    // Namespace users with the built-in roles (aggregated by the cluster-wide release).
    for (user, role) in [("dev", "edit"), ("viewer", "view")] {
        let _ = kubectl(&["-n", c, "create", "serviceaccount", user]);
        let _ = kubectl(&[
            "-n",
            c,
            "create",
            "rolebinding",
            user,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={c}:{user}"),
        ]);
    }
    let dev = format!("system:serviceaccount:{c}:dev");
    let viewer = format!("system:serviceaccount:{c}:viewer");
    let users: Vec<(&str, &str, &str, Option<&str>, bool)> = vec![
        (&dev, "create", sse, Some(c), true),
        (&dev, "delete", sse, Some(c), true),
        (
            &dev,
            "update",
            "sseservices.ssekeeper.dev/scale",
            Some(c),
            true,
        ),
        (&dev, "create", sse, Some(a), false),
        (&viewer, "get", sse, Some(c), true),
        (&viewer, "list", sse, Some(c), true),
        (&viewer, "create", sse, Some(c), false),
        (&viewer, "delete", sse, Some(c), false),
    ];
    for (user, verb, resource, ns, want) in &users {
        assert_eq!(
            can_i(user, verb, resource, *ns),
            *want,
            "{user}: {verb} {resource} in {ns:?}"
        );
    }
    println!(
        "RBAC: {} checks of a namespaced release and {} of namespace users hold",
        matrix.len(),
        users.len()
    );
    helm_ok(&["uninstall", "ssekeeper-ns", "-n", op_ns]);
    for ns in [op_ns, a, b, c] {
        let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// ≥ 100 clients through a rolling update of the SseService (a template change): every client
/// gets the whole sequence once, in order; every container that stopped exited 0 by itself (none
/// killed at the grace deadline); no preStop hook failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_loses_nothing_and_every_container_exits_cleanly() {
    let chat = Chat::start("roll", |t| t).await;
    let ended = Terminations::watch(chat.name()).await;
    let crowd = chat.crowd(CLIENTS);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(60)).await,
        "every client receives"
    );
    let before = pods(chat.name(), "ssekeeper.dev/service=chat");
    let t = Instant::now();
    let before_gen = roll(chat.name(), "chat");
    wait_rolled_out(chat.name(), "chat", 3, before_gen, ROLLOUT).await;
    println!("rolled 3 pods in {:.1} s", t.elapsed().as_secs_f64());
    chat.judge_whole(crowd, "rolling update").await;

    let ended = ended.ended();
    let old: Vec<_> = ended
        .iter()
        .filter(|e| {
            before
                .iter()
                .any(|p| e.container.starts_with(&format!("{p}/")))
        })
        .collect();
    println!("terminated containers: {old:?}");
    assert_eq!(
        old.len(),
        6,
        "both containers of the 3 old pods reported: {ended:?}"
    );
    assert!(
        old.iter().all(|e| e.exit_code == 0),
        "every container exits 0 (137 would be the grace deadline's SIGKILL): {old:?}"
    );
    let bad = warnings(
        chat.name(),
        &["FailedPreStopHook", "FailedKillPod", "ExceededGracePeriod"],
    );
    assert!(bad.is_empty(), "{bad:?}");
}

/// Session routing with affinity off: MCP-style sessions (GET /sse, then POSTs naming the session)
/// through kube-proxy's random balancing over 3 pods; every POST is answered on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_routed_with_affinity_disabled() {
    let chat = Chat::start("mcp", |t| {
        t.replace(
            "sessionAffinity: { enabled: true, timeoutSeconds: 10800 }",
            "sessionAffinity: { enabled: false }",
        )
    })
    .await;
    assert_eq!(
        jsonpath(chat.name(), "svc/chat", "{.spec.sessionAffinity}"),
        "None"
    );
    let ips = client_ips();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let ip = ips.get(i % ips.len().max(1)).copied();
        sessions.push((
            ip,
            McpSession::open(chat.service, ip, Duration::from_secs(10))
                .await
                .expect("MCP session opens"),
        ));
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut reply_ms = Vec::new();
    let posts = 50;
    for n in 0..posts {
        for (ip, s) in &mut sessions {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"ping"}}"#);
            let r = s
                .post(chat.service, *ip, &body, Duration::from_secs(5))
                .await;
            let key = match &r.result {
                PostResult::Answered { reply_after } => {
                    reply_ms.push(reply_after.as_millis());
                    "answered".to_string()
                }
                other => format!("{other:?}"),
            };
            *outcomes.entry(key).or_default() += 1;
        }
    }
    for (_, s) in sessions {
        s.close().await;
    }
    reply_ms.sort_unstable();
    let p99 = reply_ms
        .get(reply_ms.len() * 99 / 100)
        .copied()
        .unwrap_or(0);
    println!("MCP through kube-proxy, affinity off, 3 pods: {outcomes:?}, reply p99 {p99} ms");
    let forwarded: f64 = chat_pod_metrics(chat.name())
        .await
        .iter()
        .map(|m| metric_sum(m, "ssekeeper_forwards_total", Some("outcome=\"accepted\"")))
        .sum();
    println!("requests forwarded to their session's owner: {forwarded}");
    assert_eq!(outcomes.get("answered"), Some(&(posts * 6)), "{outcomes:?}");
    assert!(
        forwarded > 0.0,
        "random balancing over 3 pods must have needed forwarding"
    );
}

/// `kubectl scale ssesvc --replicas=1` under load: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_loses_nothing() {
    let chat = Chat::start("scale", |t| t).await;
    let crowd = chat.crowd(CLIENTS);
    assert!(crowd.wait_all_receiving(Duration::from_secs(60)).await);
    let before_gen = deployment_generation(chat.name(), "chat");
    k(&["-n", chat.name(), "scale", "ssesvc/chat", "--replicas=1"]);
    wait_rolled_out(chat.name(), "chat", 1, before_gen, ROLLOUT).await;
    assert_eq!(
        jsonpath(chat.name(), "ssesvc/chat", "{.status.replicas}"),
        "1"
    );
    chat.judge_whole(crowd, "scale 3 -> 1").await;
}

/// Eviction through the Eviction API with the operator's PodDisruptionBudget: an eviction beyond
/// the budget is refused (429), the evicted pods' clients lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_honours_the_budget_and_loses_nothing() {
    let chat = Chat::start("evict", |t| t).await;
    eventually(
        "the PDB allows one disruption",
        paced(Duration::from_secs(60)),
        || async {
            (jsonpath(chat.name(), "pdb/chat", "{.status.disruptionsAllowed}") == "1").then_some(())
        },
    )
    .await;
    let crowd = chat.crowd(CLIENTS);
    assert!(crowd.wait_all_receiving(Duration::from_secs(60)).await);
    let victims = pods(chat.name(), "ssekeeper.dev/service=chat");
    assert_eq!(victims.len(), 3);
    let first = evict(chat.name(), &victims[0]);
    assert_eq!(first, 201, "the first eviction is allowed");
    let second = evict(chat.name(), &victims[1]);
    assert_eq!(
        second, 429,
        "a second eviction while one pod is away exceeds maxUnavailable 1"
    );
    wait_replaced(chat.name(), &victims[0]).await;
    eventually(
        "the budget recovers",
        paced(Duration::from_secs(60)),
        || async {
            (jsonpath(chat.name(), "pdb/chat", "{.status.disruptionsAllowed}") == "1").then_some(())
        },
    )
    .await;
    assert_eq!(
        evict(chat.name(), &victims[1]),
        201,
        "allowed again once the pod is replaced"
    );
    wait_replaced(chat.name(), &victims[1]).await;
    chat.judge_whole(crowd, "two evictions").await;
}

/// `kubectl delete pod` of a serving pod: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_serving_pod_loses_nothing() {
    let chat = Chat::start("delete", |t| t).await;
    let crowd = chat.crowd(CLIENTS);
    assert!(crowd.wait_all_receiving(Duration::from_secs(60)).await);
    let victim = pods(chat.name(), "ssekeeper.dev/service=chat").remove(0);
    k(&[
        "-n",
        chat.name(),
        "delete",
        "pod",
        &victim,
        "--wait=true",
        "--timeout=120s",
    ]);
    wait_rolled_out(chat.name(), "chat", 3, 0, ROLLOUT).await;
    chat.judge_whole(crowd, &format!("kubectl delete pod {victim}"))
        .await;
}

/// The operator's leader pod deleted mid-rollout: the other replica takes the Lease, the rollout
/// completes and the SseService's status and conditions converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_leader_loss_mid_rollout_converges() {
    let chat = Chat::start("leader", |t| t).await;
    let leader = jsonpath(OPERATOR_NS, "lease/ssekeeper", "{.spec.holderIdentity}");
    assert!(!leader.is_empty());
    // A change only the operator can carry out: more replicas and a new template.
    let before_gen = deployment_generation(chat.name(), "chat");
    k(&["-n", OPERATOR_NS, "delete", "pod", &leader, "--wait=false"]);
    k(&[
        "-n",
        chat.name(),
        "patch",
        "ssesvc/chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    roll(chat.name(), "chat");
    let new_leader = eventually(
        "another replica takes the Lease",
        paced(Duration::from_secs(90)),
        || async {
            let h = jsonpath(OPERATOR_NS, "lease/ssekeeper", "{.spec.holderIdentity}");
            (!h.is_empty() && h != leader).then_some(h)
        },
    )
    .await;
    println!("leader {leader} deleted; {new_leader} took the Lease");
    wait_rolled_out(chat.name(), "chat", 4, before_gen, ROLLOUT).await;
    let generation = jsonpath(chat.name(), "ssesvc/chat", "{.metadata.generation}");
    eventually("status converges", paced(Duration::from_secs(60)), || async {
        let s = jsonpath(
            chat.name(),
            "ssesvc/chat",
            r#"{.status.observedGeneration} {.status.readyReplicas} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Progressing")].status} {.status.conditions[?(@.type=="Degraded")].status}"#,
        );
        (s == format!("{generation} 4 True False False")).then_some(())
    })
    .await;
    eventually(
        "the operator is back to 2 ready replicas",
        paced(Duration::from_secs(120)),
        || async {
            (jsonpath(OPERATOR_NS, "deploy/ssekeeper", "{.status.readyReplicas}") == "2")
                .then_some(())
        },
    )
    .await;
}

/// The session store's Redis pod deleted mid-stream (and recreated empty): streams keep flowing
/// through the outage (the app's own data is in another Redis), every sidecar reports it
/// (`/ready` says "session store unavailable", `ssekeeper_store_up 0`), recording resumes when
/// the store is back, and a rolling update afterwards loses nothing, for clients opened before
/// the outage and after it (as the README documents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_reported_and_streams_keep_flowing() {
    let chat = Chat::start("redis", |t| {
        t.replace("url: redis://redis.", "url: redis://sessions.")
    })
    .await;
    // The sessions' own Redis (the chat room stays in `redis`): examples/redis.yaml renamed.
    let sessions = local_images(&manifest("examples/redis.yaml", chat.name()))
        .replace(
            "  name: redis\n  namespace:",
            "  name: sessions\n  namespace:",
        )
        .replace(
            "app.kubernetes.io/name: redis",
            "app.kubernetes.io/name: sessions",
        );
    let out = apply_text(&sessions);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k(&[
        "-n",
        chat.name(),
        "rollout",
        "status",
        "deploy/sessions",
        "--timeout=120s",
    ]);
    wait_store_up(chat.name(), true, "every sidecar reaches its store").await;
    let before = chat.crowd(30);
    assert!(before.wait_all_receiving(Duration::from_secs(60)).await);
    let store = pods(chat.name(), "app.kubernetes.io/name=sessions").remove(0);
    k(&[
        "-n",
        chat.name(),
        "scale",
        "deploy/sessions",
        "--replicas=0",
    ]);
    k(&[
        "-n",
        chat.name(),
        "wait",
        "--for=delete",
        &format!("pod/{store}"),
        "--timeout=60s",
    ]);
    let reported = eventually(
        "every sidecar reports the store down",
        paced(Duration::from_secs(30)),
        || async {
            let ready = chat_pod_admin(chat.name(), "/ready").await;
            let metrics = chat_pod_metrics(chat.name()).await;
            let down = ready
                .iter()
                .all(|r| r.contains("session store unavailable"))
                && metrics
                    .iter()
                    .all(|m| metric_sum(m, "ssekeeper_store_up", None) == 0.0);
            (down && ready.len() == 3).then_some(ready)
        },
    )
    .await;
    let during = before.progress();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "during the outage /ready says {:?}; streams: {during} -> {}",
        reported.first(),
        before.progress()
    );
    // The SseService says so too (the operator pings the store every 30 s while it answers).
    let condition = |want: &'static str| {
        let ns = chat.name().to_string();
        move || {
            let ns = ns.clone();
            async move {
                let c = jsonpath(
                    &ns,
                    "ssesvc/chat",
                    r#"{.status.conditions[?(@.type=="SessionStoreReachable")].status}"#,
                );
                (c == want).then_some(())
            }
        }
    };
    eventually(
        "SseService condition SessionStoreReachable=False",
        paced(Duration::from_secs(60)),
        condition("False"),
    )
    .await;
    let warned = warnings(chat.name(), &["SessionStoreUnreachable"]);
    println!("SseService: {warned:?}");
    assert!(
        !warned.is_empty(),
        "a Warning Event says the store is unreachable"
    );
    k(&[
        "-n",
        chat.name(),
        "scale",
        "deploy/sessions",
        "--replicas=1",
    ]);
    k(&[
        "-n",
        chat.name(),
        "rollout",
        "status",
        "deploy/sessions",
        "--timeout=120s",
    ]);
    wait_store_up(
        chat.name(),
        true,
        "every sidecar reports the store up again",
    )
    .await;
    eventually(
        "SseService condition SessionStoreReachable=True",
        paced(Duration::from_secs(30)),
        condition("True"),
    )
    .await;
    let after = chat.crowd(30);
    assert!(
        after.wait_all_receiving(Duration::from_secs(60)).await,
        "new streams after the outage"
    );
    let before_gen = roll(chat.name(), "chat");
    wait_rolled_out(chat.name(), "chat", 3, before_gen, ROLLOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (last, caught_up, summary) = chat.finish(after).await;
    assert_whole(
        "opened after the outage, then a rolling update",
        last,
        caught_up,
        &summary,
    );
    let caught_up = before.wait_caught_up(last, Duration::from_secs(30)).await;
    let summary = before.finish(last).await;
    assert_whole(
        "opened before the outage, through it and a rolling update",
        last,
        caught_up,
        &summary,
    );
}

/// The app's process killed inside its container: the kubelet restarts the container, and the
/// clients lose at most what the README documents for a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_crash_is_restarted_by_the_kubelet() {
    let chat = Chat::start("crash", |t| t).await;
    let crowd = chat.crowd(30);
    assert!(crowd.wait_all_receiving(Duration::from_secs(60)).await);
    let victim = pods(chat.name(), "ssekeeper.dev/service=chat").remove(0);
    let pid = app_pid(chat.name(), &victim);
    nix_kill(pid);
    eventually(
        "the kubelet restarts the app container",
        paced(Duration::from_secs(60)),
        || async {
            let n = jsonpath(
                chat.name(),
                &format!("pod/{victim}"),
                r#"{.status.containerStatuses[?(@.name=="app")].restartCount}"#,
            );
            (n.parse::<u32>().unwrap_or(0) >= 1).then_some(())
        },
    )
    .await;
    k(&[
        "-n",
        chat.name(),
        "wait",
        "--for=condition=Ready",
        &format!("pod/{victim}"),
        "--timeout=90s",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (last, caught_up, summary) = chat.finish(crowd).await;
    println!("app killed in {victim}: last {last}, caught up {caught_up}; {summary}");
    assert!(
        caught_up,
        "every client goes on after the crash:\n{}",
        summary.worst(5)
    );
    assert_eq!(summary.duplicates(), 0, "{}", summary.worst(5));
    // The app's stream restarts from Redis with Last-Event-ID, so the shared sequence is whole.
    assert_eq!(summary.missing(), 0, "{}", summary.worst(5));
}

/// A neighbour pod cannot drain a sidecar: `/prestop` on the admin port is refused, and the
/// target stays Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestop_is_not_a_network_endpoint() {
    let chat = Chat::start("prestop", |t| t).await;
    let target = pods(chat.name(), "ssekeeper.dev/service=chat").remove(0);
    let ip = jsonpath(chat.name(), &format!("pod/{target}"), "{.status.podIP}");
    for method in ["GET", "POST"] {
        let out = neighbour_fetch(
            chat.name(),
            &format!("{ip}:{}", ssekeeper_sidecar::contract::ADMIN_PORT),
            "/prestop",
            method,
        )
        .await;
        println!("{method} /prestop from another pod: {out:?}");
        assert!(
            out.starts_with("status 404") || out.starts_with("status 405"),
            "{out}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = jsonpath(
        chat.name(),
        &format!("pod/{target}"),
        r#"{.status.conditions[?(@.type=="Ready")].status}"#,
    );
    assert_eq!(ready, "True", "the target stays Ready");
    let body = chat_pod_admin(chat.name(), "/ready").await;
    assert!(body.iter().all(|b| b.starts_with("ready")), "{body:?}");
}

/// A stolen cursor through the real Service: Bob sends Alice's `Last-Event-ID` with his own
/// credentials and gets a stream of his own from "now", none of her history; Alice resumes with
/// the same cursor and gets everything after it, on whichever pod kube-proxy picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_cursor_gets_the_thief_nothing_through_the_service() {
    use ssekeeper_sidecar::cursor::Cursor;
    use ssekeeper_testkit::client::{Log, Stream};
    use ssekeeper_tests::demo::payload::ChatEvent;
    let chat = Chat::start("thief", |t| t).await;
    let seqs = |log: &Log| -> Vec<u64> {
        log.events
            .iter()
            .filter_map(|e| serde_json::from_str::<ChatEvent>(&e.data).ok())
            .map(|e| e.seq)
            .collect()
    };
    let open = |auth: &'static str, cursor: Option<String>| {
        let service = chat.service;
        async move {
            let mut h = vec![
                ("accept", "text/event-stream".to_string()),
                ("authorization", auth.to_string()),
            ];
            if let Some(c) = cursor {
                h.push(("last-event-id", c));
            }
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Stream::open_with(service, "/events", &h).await
        }
    };
    let t = Duration::from_secs(30);
    let mut alice = open("Bearer alice", None).await;
    let mut hers = Log::default();
    alice.read_until(&mut hers, 5, t).await;
    drop(alice);
    let stolen = hers.events[0].id.clone().expect("a cursor");
    let her_seqs = seqs(&hers);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut bob = open("Bearer bob", Some(stolen.clone())).await;
    let mut his = Log::default();
    bob.read_until(&mut his, 3, t).await;
    drop(bob);
    let his_seqs = seqs(&his);
    // His stream opens with the gap event (an unknown session, as far as he is concerned).
    assert_eq!(
        his.events[0].event.as_deref(),
        Some(ssekeeper_sidecar::contract::GAP_EVENT_TYPE)
    );
    let his_session = Cursor::parse(his.events.iter().find_map(|e| e.id.as_deref()).unwrap())
        .unwrap()
        .session;
    println!("alice read {her_seqs:?}; bob with her cursor got {his_seqs:?}");
    assert_ne!(
        his_session,
        Cursor::parse(&stolen).unwrap().session,
        "a session of his own"
    );
    assert!(
        his_seqs[0] > her_seqs[1] + 5,
        "no replay of her history: he starts at now ({his_seqs:?} after {her_seqs:?})"
    );

    let mut again = open("Bearer alice", Some(stolen)).await;
    let mut resumed = Log::default();
    again.read_until(&mut resumed, 5, t).await;
    assert_eq!(
        seqs(&resumed)[0],
        her_seqs[0] + 1,
        "Alice resumes right after her cursor"
    );
    let unverified: f64 = chat_pod_metrics(chat.name())
        .await
        .iter()
        .map(|m| metric_sum(m, "ssekeeper_resumes_total", Some("outcome=\"unverified\"")))
        .sum();
    assert!(unverified >= 1.0, "counted: {unverified}");
}

/// Wait until `pod` is gone and the chat Deployment has its 3 replicas back.
async fn wait_replaced(ns: &str, pod: &str) {
    k(&[
        "-n",
        ns,
        "wait",
        "--for=delete",
        &format!("pod/{pod}"),
        "--timeout=120s",
    ]);
    wait_rolled_out(ns, "chat", 3, 0, ROLLOUT).await;
}

fn evict(ns: &str, pod: &str) -> u16 {
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"{ns}"}}}}"#
    );
    let out = kubectl_stdin(
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
            "-f",
            "-",
        ],
        &body,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        201
    } else if text.contains("429")
        || text.contains("disruption budget")
        || text.contains("TooManyRequests")
    {
        429
    } else {
        panic!("eviction of {pod}: {text}")
    }
}

/// The IPs of the Running chat pods (the host reaches pod IPs on the bridge).
fn chat_pod_ips(ns: &str) -> Vec<String> {
    let ips = kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        "ssekeeper.dev/service=chat",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    ips.split_whitespace().map(str::to_string).collect()
}

/// The admin endpoint `path` of every chat pod.
async fn chat_pod_admin(ns: &str, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ip in chat_pod_ips(ns) {
        let admin = format!("{ip}:{}", ssekeeper_sidecar::contract::ADMIN_PORT);
        out.extend(http_get(&admin, path).await);
    }
    out
}

/// Wait until every one of the 3 chat sidecars reports `ssekeeper_store_up` as `up`.
async fn wait_store_up(ns: &str, up: bool, what: &str) {
    let want = if up { 1.0 } else { 0.0 };
    eventually(what, paced(Duration::from_secs(60)), || async {
        let m = chat_pod_metrics(ns).await;
        (m.len() == 3
            && m.iter()
                .all(|m| metric_sum(m, "ssekeeper_store_up", None) == want))
        .then_some(())
    })
    .await;
}

async fn chat_pod_metrics(ns: &str) -> Vec<String> {
    chat_pod_admin(ns, "/metrics").await
}

/// Run `demo-app fetch` in a pod of its own (a neighbour in the same namespace) and return what
/// it printed.
async fn neighbour_fetch(ns: &str, target: &str, path: &str, method: &str) -> String {
    let name = format!("neighbour-{}", method.to_lowercase());
    let image = format!(
        "localhost/ssekeeper/demo-app:{}",
        cluster_env()["SSEKEEPER_IMAGE_TAG"]
    );
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "fetch", "image": image, "imagePullPolicy": "Never",
                "args": ["fetch", target, path, "--method", method],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    });
    let out = kubectl_stdin(&["apply", "-f", "-"], &pod.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        &format!("pod {name} completes"),
        paced(Duration::from_secs(60)),
        || async {
            let phase = jsonpath(ns, &format!("pod/{name}"), "{.status.phase}");
            (phase == "Succeeded" || phase == "Failed").then_some(())
        },
    )
    .await;
    kubectl_ok(&["-n", ns, "logs", &name]).trim().to_string()
}

/// The host PID of the app container's process (through the CRI).
fn app_pid(ns: &str, pod: &str) -> i32 {
    let id = jsonpath(
        ns,
        &format!("pod/{pod}"),
        r#"{.status.containerStatuses[?(@.name=="app")].containerID}"#,
    );
    let id = id.trim_start_matches("containerd://");
    let out = std::process::Command::new(cluster_bin("crictl"))
        .args([
            "inspect",
            "-o",
            "go-template",
            "--template",
            "{{.info.pid}}",
            id,
        ])
        .envs(cluster_env())
        .output()
        .expect("crictl inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid for {id}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn nix_kill(pid: i32) {
    // SAFETY: kill(2) with a pid read from the runtime; no memory is involved.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// A small SseService of the demo app (memory store, one replica) for tests of many of them.
fn small_service(ns: &str, name: &str) -> String {
    format!(
        r#"apiVersion: ssekeeper.dev/v1alpha1
kind: SseService
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  appPort: 8080
  template:
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext: {{ runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {{ type: RuntimeDefault }} }}
      containers:
        - name: app
          image: localhost/ssekeeper/demo-app:0.1.0
          imagePullPolicy: Never
          args: ["serve", "--listen=127.0.0.1:8080"]
          ports: [{{ name: http, containerPort: 8080 }}]
          securityContext: {{ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{ drop: [ALL] }} }}
          resources: {{ requests: {{ cpu: 10m, memory: 16Mi }}, limits: {{ memory: 64Mi }} }}
  rollout: {{ maxSurge: 1, maxUnavailable: 0, minReadySeconds: 3 }}
  drain: {{ preStopDelaySeconds: 1, drainSeconds: 2, reconnectDelayMillis: 500 }}
"#
    )
}

/// A `helm upgrade` that changes the sidecar's defaults (every pod template) rolls the fleet one
/// SseService at a time with `operator.maxConcurrentRollouts=1`: never two Deployments mid-rollout
/// at once, the waiting ones say `RolloutQueued`, a paused one keeps its pods until the
/// annotation goes, then it rolls too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_upgrade_rolls_the_fleet_one_sseservice_at_a_time() {
    operator_installed();
    let chart = repo().join("charts/ssekeeper");
    install_chart_with(&chart, &["--set", "operator.maxConcurrentRollouts=1"]);
    let client = client().await;
    let ns = TestNamespace::create(&client, "fleet").await;
    restrict(&ns.name);
    let names = ["fleet-a", "fleet-b", "fleet-c"];
    for name in names {
        let out = apply_text(&small_service(&ns.name, name));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in names {
        wait_ready(&ns.name, name, Duration::from_secs(180)).await;
    }
    k(&[
        "-n",
        &ns.name,
        "annotate",
        "ssesvc/fleet-c",
        "ssekeeper.dev/paused=true",
    ]);
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), &ns.name);
    let hash = |d: &k8s_openapi::api::apps::v1::Deployment| {
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ssekeeper.dev/template-hash").cloned())
            .unwrap_or_default()
    };
    let complete = |d: &k8s_openapi::api::apps::v1::Deployment| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let s = d.status.clone().unwrap_or_default();
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.replicas == Some(want)
            && s.available_replicas.unwrap_or(0) >= want
    };
    let old: BTreeMap<String, String> = deployments
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| (d.metadata.name.clone().unwrap(), hash(d)))
        .collect();

    // The upgrade: new default sidecar requests, in every SseService's pod template.
    install_chart_with(
        &chart,
        &[
            "--set",
            "operator.maxConcurrentRollouts=1",
            "--set",
            "sidecar.resources.requests.cpu=55m",
        ],
    );
    let started = Instant::now();
    let mut most_at_once = 0;
    let mut order = Vec::new();
    let mut queued_seen = BTreeMap::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the fleet did not roll within 300 s: done {order:?}"
        );
        let list = deployments.list(&Default::default()).await.unwrap().items;
        let mut rolling = 0;
        for d in &list {
            let name = d.metadata.name.clone().unwrap();
            let moved = hash(d) != old[&name];
            if moved && !complete(d) {
                rolling += 1;
            }
            if moved && complete(d) && !order.contains(&name) {
                order.push(name.clone());
            }
        }
        for name in ["fleet-a", "fleet-b"] {
            let reason = jsonpath(
                &ns.name,
                &format!("ssesvc/{name}"),
                r#"{.status.conditions[?(@.type=="Progressing")].reason}"#,
            );
            if reason == "RolloutQueued" {
                queued_seen.insert(name, true);
            }
        }
        most_at_once = most_at_once.max(rolling);
        if order.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "fleet: rolled {order:?} in {:?}, at most {most_at_once} at once, queued seen on {:?}",
        started.elapsed(),
        queued_seen.keys().collect::<Vec<_>>()
    );
    assert_eq!(most_at_once, 1, "one SseService rolls at a time");
    assert!(
        !queued_seen.is_empty(),
        "the one waiting said RolloutQueued"
    );
    let queued_events = k(&[
        "-n",
        &ns.name,
        "get",
        "events",
        "--field-selector=reason=RolloutQueued",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        queued_events.contains("maxConcurrentRollouts"),
        "{queued_events}"
    );
    // The paused one has not moved, and says why.
    let c = deployments.get("fleet-c").await.unwrap();
    assert_eq!(hash(&c), old["fleet-c"], "paused: its pods stay");
    let reason = jsonpath(
        &ns.name,
        "ssesvc/fleet-c",
        r#"{.status.conditions[?(@.type=="Progressing")].reason}"#,
    );
    assert_eq!(reason, "RolloutPaused");
    let columns = k(&["-n", &ns.name, "get", "ssesvc", "fleet-c", "--no-headers"]);
    assert!(
        columns.contains("RolloutPaused"),
        "the Rollout column: {columns}"
    );
    // Unpaused, it rolls.
    k(&[
        "-n",
        &ns.name,
        "annotate",
        "ssesvc/fleet-c",
        "ssekeeper.dev/paused-",
    ]);
    eventually(
        "fleet-c rolls once unpaused",
        paced(Duration::from_secs(120)),
        || async {
            let d = deployments.get("fleet-c").await.ok()?;
            (hash(&d) != old["fleet-c"] && complete(&d)).then_some(())
        },
    )
    .await;
    wait_ready(&ns.name, "fleet-c", Duration::from_secs(60)).await;
    // Back to the chart's defaults with no SseService left to roll.
    delete_namespace(&client, &ns.name).await;
    install_chart(&chart);
}

/// Uninstalling, as the README says: the Lease goes with the operator (its owner is the
/// operator's Deployment), the CRD and the SseServices stay (`crds.keep`), an SseService left
/// behind with the purge finalizer waits for an operator that is gone until the finalizer is
/// removed by hand (the README's step), and its children are garbage-collected. Then the chart
/// is installed again for the tests after this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_the_lease_and_leaves_what_the_readme_says() {
    operator_installed();
    let owner = eventually(
        "the Lease has its owner",
        paced(Duration::from_secs(60)),
        || async {
            let kind = jsonpath(
                OPERATOR_NS,
                "lease/ssekeeper",
                "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
            );
            (kind == "Deployment/ssekeeper").then_some(kind)
        },
    )
    .await;
    println!("lease owner: {owner}");
    let client = client().await;
    let ns = TestNamespace::create(&client, "uninstall").await;
    restrict(&ns.name);
    let left = small_service(&ns.name, "left-behind").replace(
        "  rollout:",
        "  sessions: { store: redis, redis: { secretRef: { name: nowhere, key: url } } }\n  replicas: 1\n  rollout:",
    );
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: nowhere, namespace: {} }}\nstringData: {{ url: \"redis://127.0.0.1:1/0\" }}\n",
        ns.name
    );
    assert!(apply_text(&secret).status.success());
    let out = apply_text(&left);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the finalizer is on",
        paced(Duration::from_secs(60)),
        || async {
            let f = jsonpath(&ns.name, "ssesvc/left-behind", "{.metadata.finalizers}");
            f.contains("ssekeeper.dev/purge-sessions").then_some(())
        },
    )
    .await;
    eventually(
        "its Deployment exists",
        paced(Duration::from_secs(60)),
        || async {
            (!jsonpath(&ns.name, "deploy/left-behind", "{.metadata.uid}").is_empty()).then_some(())
        },
    )
    .await;

    helm_ok(&[
        "uninstall",
        "ssekeeper",
        "-n",
        OPERATOR_NS,
        "--wait",
        "--timeout",
        "120s",
    ]);
    eventually(
        "the Lease is garbage-collected",
        paced(Duration::from_secs(90)),
        || async {
            (!kubectl(&["-n", OPERATOR_NS, "get", "lease/ssekeeper"])
                .status
                .success())
            .then_some(())
        },
    )
    .await;
    assert!(
        kubectl(&["get", "crd/sseservices.ssekeeper.dev"])
            .status
            .success(),
        "the CRD is kept"
    );
    assert!(
        kubectl(&["-n", &ns.name, "get", "ssesvc/left-behind"])
            .status
            .success(),
        "SseServices stay"
    );
    // Deleted with no operator: it waits on its finalizer.
    k(&[
        "-n",
        &ns.name,
        "delete",
        "ssesvc/left-behind",
        "--wait=false",
    ]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let deleting = jsonpath(
        &ns.name,
        "ssesvc/left-behind",
        "{.metadata.deletionTimestamp}",
    );
    assert!(!deleting.is_empty(), "still there, terminating");
    // The README's step for SseServices left behind.
    k(&[
        "-n",
        &ns.name,
        "patch",
        "ssesvc/left-behind",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually(
        "gone, with its children",
        paced(Duration::from_secs(90)),
        || async {
            let svc = kubectl(&["-n", &ns.name, "get", "ssesvc/left-behind"])
                .status
                .success();
            let dep = kubectl(&["-n", &ns.name, "get", "deploy/left-behind"])
                .status
                .success();
            (!svc && !dep).then_some(())
        },
    )
    .await;
    delete_namespace(&client, &ns.name).await;
    // Installed again for the tests after this one (the CRD kept is adopted as it was).
    install_chart(&repo().join("charts/ssekeeper"));
    eventually("a leader again", paced(Duration::from_secs(60)), || async {
        (!jsonpath(OPERATOR_NS, "lease/ssekeeper", "{.spec.holderIdentity}").is_empty())
            .then_some(())
    })
    .await;
}

/// A broadcast path on the real node: the chat's `/events` declared `spec.broadcast`, 300
/// clients spread over the 3 pods by kube-proxy, a rolling restart of every pod (the upstream's
/// holder included): each client gets the whole room sequence once, in order, every event under
/// one id on every pod, and the app serves one upstream for the path, not one per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_path_serves_300_clients_from_one_upstream_through_a_rolling_restart() {
    let chat = Chat::start("bcast", |t| {
        t.replace(
            "  disruptionBudget:",
            "  broadcast: [{ path: /events, historyLimit: 100000 }]\n  disruptionBudget:",
        )
    })
    .await;
    let crowd = chat.crowd(300);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(120)).await,
        "every client receives: {}",
        crowd.progress()
    );
    let upstreams = |texts: &[String]| {
        texts
            .iter()
            .map(|t| metric_sum(t, "ssekeeper_broadcast_upstream_held", None))
            .sum::<f64>()
    };
    let subscribers = |texts: &[String]| {
        texts
            .iter()
            .map(|t| metric_sum(t, "ssekeeper_broadcast_subscribers", None))
            .sum::<f64>()
    };
    let texts = chat_pod_metrics(chat.name()).await;
    println!(
        "before the roll: {} upstream(s) held for {} subscribers over {} pods",
        upstreams(&texts),
        subscribers(&texts),
        texts.len()
    );
    assert_eq!(upstreams(&texts), 1.0, "one upstream for the path");
    assert_eq!(subscribers(&texts), 300.0, "every client a subscriber");

    let t = Instant::now();
    let before_gen = roll(chat.name(), "chat");
    wait_rolled_out(chat.name(), "chat", 3, before_gen, ROLLOUT).await;
    println!("rolled 3 pods in {:.1} s", t.elapsed().as_secs_f64());
    let texts = eventually(
        "one upstream again on the new pods",
        paced(Duration::from_secs(60)),
        || async {
            let texts = chat_pod_metrics(&chat.ns.name).await;
            (texts.len() == 3 && upstreams(&texts) == 1.0).then_some(texts)
        },
    )
    .await;
    let opened: f64 = texts
        .iter()
        .map(|t| metric_sum(t, "ssekeeper_broadcast_upstreams_opened_total", None))
        .sum();
    println!("after the roll: upstreams opened on the new pods: {opened}");
    assert!(
        opened <= 3.0,
        "the new pods opened {opened} upstreams, not one per client"
    );
    let (conflicts, compared) = crowd.id_conflicts();
    println!(
        "{compared} events compared across 300 clients: {} with more than one id",
        conflicts.len()
    );
    assert!(
        conflicts.is_empty(),
        "one id per event everywhere: {:?}",
        &conflicts[..conflicts.len().min(5)]
    );
    chat.judge_whole(crowd, "broadcast rolling restart").await;
}

/// Each Running chat pod's open streams (its own `ssekeeper_active_streams`) and its sheds, by
/// pod IP.
async fn chat_pod_streams(ns: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    for ip in chat_pod_ips(ns) {
        let admin = format!("{ip}:{}", ssekeeper_sidecar::contract::ADMIN_PORT);
        if let Some(text) = http_get(&admin, "/metrics").await.into_iter().next() {
            out.insert(
                ip,
                (
                    metric_sum(&text, "ssekeeper_active_streams", None),
                    metric_sum(&text, "ssekeeper_rebalance_shed_total", None),
                ),
            );
        }
    }
    out
}

/// Busiest pod over the mean.
fn imbalance(c: &BTreeMap<String, (f64, f64)>) -> f64 {
    let total: f64 = c.values().map(|v| v.0).sum();
    let busiest = c.values().map(|v| v.0).fold(0.0, f64::max);
    if total == 0.0 {
        return f64::INFINITY;
    }
    busiest / (total / c.len() as f64)
}

/// Rebalancing on the real node: 300 chat clients through the ClusterIP (kube-proxy, no
/// affinity) on one pod, the SseService scaled to 3: within a bounded time the busiest pod holds
/// at most 1.2 × the mean, only the pod over its share shed, reconnects paced by
/// `maxShedPerSecond`, every client got the whole sequence once, and `status.streams` shows the
/// spread that `kubectl describe` prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_rebalances_300_streams_over_the_new_pods_without_loss() {
    const MAX_SHED: u32 = 10;
    let chat = Chat::start("rebal", |t| {
        t.replace("  replicas: 3\n", "  replicas: 1\n")
            .replace(
                "sessionAffinity: { enabled: true, timeoutSeconds: 10800 }",
                "sessionAffinity: { enabled: false }",
            )
            .replace(
                "  disruptionBudget:",
                &format!(
                    "  rebalance: {{ enabled: true, tolerancePercent: 20, maxShedPerSecond: {MAX_SHED} }}\n  disruptionBudget:"
                ),
            )
    })
    .await;
    let ns = chat.name().to_string();
    let crowd = chat.crowd(300);
    assert!(
        crowd.wait_all_receiving(Duration::from_secs(120)).await,
        "every client receives: {}",
        crowd.progress()
    );
    let before = chat_pod_streams(&ns).await;
    println!("before the scale-up: {before:?}");
    assert_eq!(before.len(), 1, "one pod");
    let first = before.keys().next().unwrap().clone();
    assert_eq!(before[&first].0, 300.0, "all 300 on it");

    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "sseservice",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    let scaled = Instant::now();
    let mut timeline = Vec::new();
    let balanced = loop {
        let c = chat_pod_streams(&ns).await;
        timeline.push((
            scaled.elapsed().as_secs(),
            c.values().map(|v| v.0).collect::<Vec<_>>(),
        ));
        if c.len() == 3 && imbalance(&c) <= 1.2 {
            break c;
        }
        assert!(
            scaled.elapsed() < Duration::from_secs(240),
            "the busiest pod within 1.2 × the mean in 240 s: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let balanced_after = scaled.elapsed();
    println!(
        "balanced after {:.1} s: {balanced:?}",
        balanced_after.as_secs_f64()
    );
    // Shedding stops on its own (hysteresis): no shed for 10 s, then the spread once more.
    let mut last = f64::NAN;
    let mut quiet_since = Instant::now();
    let settle = Instant::now();
    let settled = loop {
        let c = chat_pod_streams(&ns).await;
        let shed: f64 = c.values().map(|v| v.1).sum();
        if shed != last {
            last = shed;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(10) {
            break c;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "shedding stops: {c:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "settled: {settled:?} (imbalance {:.2})",
        imbalance(&settled)
    );
    assert!(imbalance(&settled) <= 1.2, "still balanced: {settled:?}");
    for (ip, (_, shed)) in &settled {
        if *ip != first {
            assert_eq!(*shed, 0.0, "a new pod shed back ({ip}): no ping-pong");
        }
    }
    let shed_sum: f64 = settled.values().map(|v| v.1).sum();
    // What `kubectl describe ssesvc` shows (refreshed at most every 30 s by the operator).
    let status = eventually(
        "status.streams shows the three pods balanced",
        paced(Duration::from_secs(120)),
        || async {
            let s = jsonpath(&ns, "sseservice/chat", "{.status.streams}");
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            let pods = v["pods"].as_array()?.len();
            let imbalance: f64 = v["imbalance"].as_str()?.parse().ok()?;
            (pods == 3 && imbalance <= 1.25).then_some(s)
        },
    )
    .await;
    println!("status.streams: {status}");
    let describe = k(&["-n", &ns, "describe", "sseservice", "chat"]);
    assert!(describe.contains("Streams"), "{describe}");

    let (last_seq, caught_up, summary) = chat.finish(crowd).await;
    let per_second = summary.reconnects_per_second(scaled);
    let max_per_second = per_second.values().copied().max().unwrap_or(0);
    println!(
        "rebalance 1 → 3 pods on the node, 300 clients: ≤ 1.2 × mean after {:.1} s; shed {shed_sum}; \
         reconnects {} with at most {max_per_second} in one second (max {MAX_SHED}/s per pod); {summary}",
        balanced_after.as_secs_f64(),
        summary.reconnects()
    );
    assert_whole("rebalance on the node", last_seq, caught_up, &summary);
    // Paced: one pod sheds, at most MAX_SHED a second (one more for a reconnect that lands in
    // the next second), and no reconnect but the shed ones (a few for a slow node).
    assert!(
        max_per_second <= MAX_SHED + 1,
        "reconnects per second: {per_second:?}"
    );
    assert!(
        summary.reconnects() as f64 <= shed_sum + 5.0,
        "no reconnect storm: {} reconnects, {shed_sum} shed",
        summary.reconnects()
    );
}
