//! The test bed on the real node: the chart installed once per test binary (the operator runs in
//! the cluster), and per test a namespace of its own under PodSecurity `restricted` with Redis and
//! the chat example (3 pods of the demo app with the injected sidecar, and the publisher). Clients
//! run on the host and reach the Service through its ClusterIP (kube-proxy), bound to the bridge's
//! client addresses so ClientIP affinity spreads them over the pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use ssekeeper_testkit::Patience;
use ssekeeper_tests::demo::events::room_tail;
use ssekeeper_tests::scenario::{ChatCrowd, ChatSummary};

use crate::support::*;

/// The operator's namespace and release.
pub const OPERATOR_NS: &str = "ssekeeper-system";
/// Bound on one rollout of the chat example (3 pods × preStop + drain + handover, plus starts).
pub const ROLLOUT: Duration = Duration::from_secs(240);

/// The images on the node: the examples name the public registry, the node has ours.
pub fn local_images(text: &str) -> String {
    text.replace("ghcr.io/ssekeeper/", "localhost/ssekeeper/")
}

/// kubectl, failing the test with its stderr when it fails.
pub fn k(args: &[&str]) -> String {
    kubectl_ok(args)
}

/// A jsonpath of an object, trimmed ("" when absent).
pub fn jsonpath(ns: &str, object: &str, path: &str) -> String {
    let out = kubectl(&["-n", ns, "get", object, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn helm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cluster_bin("helm"))
        .args(args)
        .envs(cluster_env())
        .output()
        .expect("run helm")
}

/// Label a namespace so that PodSecurity `restricted` is enforced in it.
pub fn restrict(ns: &str) {
    k(&[
        "label",
        "namespace",
        ns,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
}

/// Install the chart once per test binary: the operator (2 replicas, leader election) in its
/// own restricted namespace, as a user would with `helm install`.
pub fn operator_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let _ = kubectl(&["create", "namespace", OPERATOR_NS]);
        restrict(OPERATOR_NS);
        adopt_crd();
        install_chart(&repo().join("charts/ssekeeper"));
    });
}

/// The CRD was applied with kubectl (as the operator tests do, and as installs before the chart
/// managed it did): hand it to the release, the way the README's upgrade section says.
pub fn adopt_crd() {
    let crd = "crd/sseservices.ssekeeper.dev";
    if !kubectl(&["get", crd]).status.success() {
        return;
    }
    k(&[
        "label",
        crd,
        "app.kubernetes.io/managed-by=Helm",
        "--overwrite",
    ]);
    k(&[
        "annotate",
        crd,
        "meta.helm.sh/release-name=ssekeeper",
        &format!("meta.helm.sh/release-namespace={OPERATOR_NS}"),
        "--overwrite",
    ]);
}

/// Run helm with the cluster's environment (its stdout, failing the test with stderr on error).
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl auth can-i VERB RESOURCE --as USER` in `ns` (`None`: every namespace).
pub fn can_i(user: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("-A"),
    }
    String::from_utf8_lossy(&kubectl(&args).stdout).trim() == "yes"
}

/// `helm upgrade --install` of `chart` as the test release, with the images built here.
pub fn install_chart(chart: &std::path::Path) {
    install_chart_with(chart, &[]);
}

/// [`install_chart`] with more `helm` arguments (e.g. `--set` values); values not given return to
/// the chart's defaults.
pub fn install_chart_with(chart: &std::path::Path, extra: &[&str]) {
    let mut args = vec![
        "upgrade",
        "--install",
        "ssekeeper",
        chart.to_str().unwrap(),
        "--namespace",
        OPERATOR_NS,
        "--set",
        "imageRegistry=localhost/ssekeeper",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "sidecar.image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "180s",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm install: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        kubectl(&["-n", OPERATOR_NS, "get", "pods,events"])
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect::<String>()
    );
}

/// `helm test` of the installed release: its output.
pub fn helm_test() -> (bool, String) {
    let out = helm(&["test", "ssekeeper", "-n", OPERATOR_NS, "--logs"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The bridge addresses clients bind to (from the cluster's env file).
pub fn client_ips() -> Vec<IpAddr> {
    cluster_env()["SSEKEEPER_CLIENT_IPS"]
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A namespace with Redis and the chat example running, deleted when dropped.
pub struct Chat {
    /// Every pod's log followed into `tests/.run/node-logs/<ns>/` (a terminated pod's log is
    /// gone with it otherwise); stopped on drop, before the namespace goes.
    _logs: PodLogs,
    /// The namespace (deleted on drop).
    pub ns: TestNamespace,
    /// The chat Service's ClusterIP and port.
    pub service: SocketAddr,
    /// The Redis Service, for reading the room's tail and for the app's own stream.
    pub redis_url: String,
}

impl Chat {
    /// Create the namespace and apply examples/redis.yaml and examples/chat.yaml, with `edit`
    /// applied to the chat manifest's text; wait until the SseService is Ready.
    pub async fn start(prefix: &str, edit: impl Fn(String) -> String) -> Self {
        operator_installed();
        let client = client().await;
        let ns = TestNamespace::create(&client, prefix).await;
        restrict(&ns.name);
        let logs = PodLogs::follow(&ns.name).await;
        let redis = local_images(&manifest("examples/redis.yaml", &ns.name));
        let out = apply_text(&redis);
        assert!(
            out.status.success(),
            "redis: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        k(&[
            "-n",
            &ns.name,
            "rollout",
            "status",
            "deploy/redis",
            "--timeout=120s",
        ]);
        let chat = edit(local_images(&manifest("examples/chat.yaml", &ns.name)));
        let out = apply_text(&chat);
        assert!(
            out.status.success(),
            "chat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_ready(&ns.name, "chat", Duration::from_secs(180)).await;
        k(&[
            "-n",
            &ns.name,
            "rollout",
            "status",
            "deploy/chat-publisher",
            "--timeout=60s",
        ]);
        let ip = jsonpath(&ns.name, "svc/chat", "{.spec.clusterIP}");
        let port = jsonpath(&ns.name, "svc/chat", "{.spec.ports[0].port}");
        let redis_ip = jsonpath(&ns.name, "svc/redis", "{.spec.clusterIP}");
        Self {
            service: format!("{ip}:{port}").parse().expect("service address"),
            redis_url: format!("redis://{redis_ip}:6379/1"),
            _logs: logs,
            ns,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// `n` chat clients through the ClusterIP, spread over the client addresses.
    pub fn crowd(&self, n: usize) -> ChatCrowd {
        let ips = client_ips();
        ChatCrowd::spawn(self.service, n, |i, mut c| {
            c.source_ip = (!ips.is_empty()).then(|| ips[i % ips.len()]);
            c.time_limit = Duration::from_secs(600);
            c.max_connects = 1_000;
            // A loaded 2-core node can hold a response's headers for seconds; a browser waits.
            c.connect_timeout = Duration::from_secs(15);
            c.idle_timeout = Some(Duration::from_secs(20));
            c
        })
    }

    /// Save every container's log of the namespace under `tests/.run/node-logs/<ns>/` (for a
    /// failing test) and return the directory.
    pub fn save_logs(&self) -> std::path::PathBuf {
        let dir = repo().join("tests/.run/node-logs").join(self.name());
        let _ = std::fs::create_dir_all(&dir);
        let names = kubectl(&[
            "-n",
            self.name(),
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        for pod in String::from_utf8_lossy(&names.stdout).split_whitespace() {
            let out = kubectl(&[
                "-n",
                self.name(),
                "logs",
                pod,
                "--all-containers",
                "--prefix",
                "--timestamps",
            ]);
            let _ = std::fs::write(dir.join(format!("{pod}.log")), &out.stdout);
        }
        let ev = kubectl(&[
            "-n",
            self.name(),
            "get",
            "events",
            "--sort-by=.lastTimestamp",
        ]);
        let _ = std::fs::write(dir.join("events.txt"), &ev.stdout);
        dir
    }

    /// Let the last handover settle, then [`Chat::finish`] and assert the promise: every client
    /// got the whole sequence once, in order.
    pub async fn judge_whole(&self, crowd: ChatCrowd, what: &str) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (last, caught_up, summary) = self.finish(crowd).await;
        assert_whole(what, last, caught_up, &summary);
    }

    /// Stop the publisher, read the room's last number and judge every client against it.
    pub async fn finish(&self, crowd: ChatCrowd) -> (u64, bool, ChatSummary) {
        k(&[
            "-n",
            self.name(),
            "scale",
            "deploy/chat-publisher",
            "--replicas=0",
        ]);
        eventually(
            "the publisher's pod is gone",
            paced(Duration::from_secs(60)),
            || async {
                // A terminating publisher still publishes until its process exits, so wait for
                // the pod object itself to go, not only for it to be marked for deletion.
                let n = pod_objects(self.name(), "app.kubernetes.io/name=chat-publisher").len();
                (n == 0).then_some(())
            },
        )
        .await;
        let last = room_tail(&self.redis_url)
            .await
            .expect("read the room's tail");
        let caught_up = crowd.wait_caught_up(last, Duration::from_secs(30)).await;
        let summary = crowd.finish(last).await;
        if !caught_up || summary.missing() > 0 || summary.duplicates() > 0 {
            println!("container logs saved in {}", self.save_logs().display());
        }
        (last, caught_up, summary)
    }
}

fn logs_dir(ns: &str) -> std::path::PathBuf {
    let dir = repo().join("tests/.run/node-logs").join(ns);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `kubectl logs -f` of every pod of a namespace as it starts, each into its own file.
pub struct PodLogs {
    task: tokio::task::JoinHandle<()>,
}

impl PodLogs {
    /// Follow the pods of `ns` (those there now and those to come).
    pub async fn follow(ns: &str) -> Self {
        let api: Api<Pod> = Api::namespaced(client().await, ns);
        let dir = logs_dir(ns);
        let ns = ns.to_string();
        let task = tokio::spawn(async move {
            let mut followed: BTreeMap<String, tokio::process::Child> = BTreeMap::new();
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = events.next().await {
                let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = ev else {
                    continue;
                };
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let name = pod.metadata.name.unwrap_or_default();
                if !running || followed.contains_key(&name) {
                    continue;
                }
                let Ok(file) = std::fs::File::create(dir.join(format!("{name}.log"))) else {
                    continue;
                };
                let child = tokio::process::Command::new(cluster_bin("kubectl"))
                    .args([
                        "-n",
                        &ns,
                        "logs",
                        "-f",
                        &name,
                        "--all-containers",
                        "--prefix",
                        "--timestamps",
                    ])
                    .envs(cluster_env())
                    .stdout(file)
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn();
                if let Ok(child) = child {
                    followed.insert(name, child);
                }
            }
        });
        Self { task }
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        // Aborting the task drops its children, which kill_on_drop stops.
        self.task.abort();
    }
}

/// Every pod object matching `selector`, terminating ones included.
pub fn pod_objects(ns: &str, selector: &str) -> Vec<String> {
    pod_rows(ns, selector)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Names of the pods matching `selector` that are not being deleted.
pub fn pods(ns: &str, selector: &str) -> Vec<String> {
    pod_rows(ns, selector)
        .into_iter()
        .filter_map(|(name, terminating)| (!terminating).then_some(name))
        .collect()
}

/// Each matching pod's name and whether it is being deleted.
fn pod_rows(ns: &str, selector: &str) -> Vec<(String, bool)> {
    let out = kubectl(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?.to_string();
            Some((name, parts.next().is_some()))
        })
        .collect()
}

/// Wait for the SseService's Ready condition.
pub async fn wait_ready(ns: &str, name: &str, timeout: Duration) {
    let what = format!("SseService {ns}/{name} Ready");
    let patience = Patience::within(timeout).every(Duration::from_millis(500));
    let ready = ssekeeper_testkit::poll(patience, || async {
        let ready = jsonpath(
            ns,
            &format!("ssesvc/{name}"),
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        );
        (ready == "True").then_some(())
    })
    .await;
    if ready.is_none() {
        let d = kubectl(&["-n", ns, "describe", &format!("ssesvc/{name}")]);
        let p = kubectl(&["-n", ns, "get", "pods", "-o", "wide"]);
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}\n{}",
            String::from_utf8_lossy(&d.stdout),
            String::from_utf8_lossy(&p.stdout)
        );
    }
}

/// The Deployment's `metadata.generation` (0 when absent).
pub fn deployment_generation(ns: &str, name: &str) -> u64 {
    jsonpath(ns, &format!("deploy/{name}"), "{.metadata.generation}")
        .parse()
        .unwrap_or(0)
}

/// Wait until the Deployment `name` is past generation `after` (the operator applied the change)
/// and has rolled out completely: every replica updated and ready, no old pod left (terminating
/// ones included).
pub async fn wait_rolled_out(ns: &str, name: &str, replicas: usize, after: u64, timeout: Duration) {
    let what = format!("Deployment {ns}/{name} rolled out to {replicas} (past generation {after})");
    eventually(&what, paced(timeout), || async {
        let generation = deployment_generation(ns, name);
        if generation <= after {
            return None;
        }
        let status = jsonpath(
            ns,
            &format!("deploy/{name}"),
            "{.status.observedGeneration} {.status.updatedReplicas} {.status.readyReplicas} {.status.replicas}",
        );
        let want = format!("{generation} {replicas} {replicas} {replicas}");
        let all = kubectl(&["-n", ns, "get", "pods", "-l", &format!("ssekeeper.dev/service={name}"), "--no-headers"]);
        let count = String::from_utf8_lossy(&all.stdout).lines().count();
        (status == want && count == replicas).then_some(())
    })
    .await;
}

/// Change the SseService's pod template (an annotation), which rolls every pod. Returns the
/// Deployment's generation before the change (for [`wait_rolled_out`]).
pub fn roll(ns: &str, name: &str) -> u64 {
    let before = deployment_generation(ns, name);
    let patch = format!(
        r#"{{"spec":{{"template":{{"metadata":{{"annotations":{{"test.ssekeeper.dev/rolled":"{}"}}}}}}}}}}"#,
        rand::random::<u32>()
    );
    k(&[
        "-n",
        ns,
        "patch",
        &format!("ssesvc/{name}"),
        "--type=merge",
        "-p",
        &patch,
    ]);
    before
}

/// How a container ended, as the kubelet reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// `<pod>/<container>`.
    pub container: String,
    /// Its exit code.
    pub exit_code: i32,
    /// The kubelet's reason (Completed, Error, OOMKilled ...).
    pub reason: String,
}

/// Every container termination the kubelet reports in a namespace, recorded from a watch on
/// its pods (a pod's last status, with each container's exit code, precedes its deletion).
pub struct Terminations {
    seen: Arc<Mutex<BTreeMap<String, Ended>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Terminations {
    /// Start watching the pods of `ns`.
    pub async fn watch(ns: &str) -> Self {
        let api: Api<Pod> = Api::namespaced(client().await, ns);
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = events.next().await {
                let pods = match ev {
                    Ok(
                        watcher::Event::Apply(p)
                        | watcher::Event::InitApply(p)
                        | watcher::Event::Delete(p),
                    ) => vec![p],
                    _ => continue,
                };
                for pod in pods {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let statuses = pod
                        .status
                        .and_then(|s| s.container_statuses)
                        .unwrap_or_default();
                    for cs in statuses {
                        let term = cs
                            .state
                            .and_then(|s| s.terminated)
                            .or_else(|| cs.last_state.and_then(|s| s.terminated));
                        if let Some(t) = term {
                            let key = format!("{name}/{}", cs.name);
                            record.lock().unwrap().insert(
                                key.clone(),
                                Ended {
                                    container: key,
                                    exit_code: t.exit_code,
                                    reason: t.reason.unwrap_or_default(),
                                },
                            );
                        }
                    }
                }
            }
        });
        Self { seen, task }
    }

    /// What was recorded so far.
    pub fn ended(&self) -> Vec<Ended> {
        self.seen.lock().unwrap().values().cloned().collect()
    }
}

impl Drop for Terminations {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Warning Events in `ns` whose reason is one of `reasons`, as "reason: message" lines.
pub fn warnings(ns: &str, reasons: &[&str]) -> Vec<String> {
    let out = kubectl(&[
        "-n",
        ns,
        "get",
        "events",
        "--field-selector=type=Warning",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\t\"}{.message}{\"\\n\"}{end}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| reasons.iter().any(|r| l.starts_with(&format!("{r}\t"))))
        .map(str::to_string)
        .collect()
}

/// Assert the promise over a crowd's verdict and print it.
pub fn assert_whole(what: &str, last: u64, caught_up: bool, summary: &ChatSummary) {
    println!("{what}: last seq {last}, caught up {caught_up}; {summary}");
    assert!(
        caught_up
            && summary.missing() == 0
            && summary.duplicates() == 0
            && summary.perfect() == summary.clients.len(),
        "{what}: not every client got the whole sequence exactly once, in order:\n{}",
        summary.worst(5)
    );
}
