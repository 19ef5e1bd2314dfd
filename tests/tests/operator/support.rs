//! Test bed for the operator against the real control plane (tests/cluster): starts it once per
//! test binary (idempotent), gives each test its own namespace and its own operator process, and
//! bounded waits. Every wait has a deadline; every process is killed on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
pub use ssekeeper_testkit::eventually;
pub use ssekeeper_testkit::ports::free_port;
use ssekeeper_testkit::{Patience, eventually::poll_blocking};

/// How often the tests look at the cluster: every look asks the API server (or runs kubectl).
pub const API_POLL: Duration = Duration::from_millis(250);

/// Wait up to `timeout`, looking at the cluster every [`API_POLL`] (what every `eventually` of
/// these tests passes).
pub const fn paced(timeout: Duration) -> Patience {
    Patience::within(timeout).every(API_POLL)
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Environment of the running control plane (KUBECONFIG, PATH with kubectl and helm).
pub fn cluster_env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let up = Command::new("bash")
            .arg(repo().join("tests/cluster/up.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run tests/cluster/up.sh");
        assert!(
            up.success(),
            "tests/cluster/up.sh failed; see its output above"
        );
        let run_dir = std::env::var("SSEKEEPER_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join("tests/.run"));
        let text = std::fs::read_to_string(run_dir.join("cluster/env")).expect("cluster env file");
        let env = parse_env_file(&text);
        let crd = repo().join("crds/ssekeeper.dev_sseservices.yaml");
        let out = kubectl_with(
            &env,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                crd.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "apply CRD: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Poll rather than `kubectl wait`: on a fresh API server the CRD can briefly have no
        // `status.conditions`, which `kubectl wait` reports as an error instead of waiting.
        let mut stderr = String::new();
        let patience = Patience::within(Duration::from_secs(60)).every(Duration::from_millis(200));
        let established = poll_blocking(patience, || {
            let out = kubectl_with(
                &env,
                &[
                    "get",
                    "crd/sseservices.ssekeeper.dev",
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
                ],
            );
            stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(())
        });
        assert!(
            established.is_some(),
            "CRD not established within 60 s: {stderr}"
        );
        env
    })
}

/// `export KEY='value'` lines, as tests/cluster/up.sh writes them.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
        .collect()
}

/// A binary of the test control plane (kubectl, helm): never whatever else is on PATH.
pub fn cluster_bin(name: &str) -> PathBuf {
    PathBuf::from(&cluster_env()["SSEKEEPER_CLUSTER_BIN"]).join(name)
}

fn kubectl_with(env: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(PathBuf::from(&env["SSEKEEPER_CLUSTER_BIN"]).join("kubectl"))
        .args(args)
        .envs(env)
        .output()
        .expect("run kubectl")
}

/// Run kubectl against the test cluster.
pub fn kubectl(args: &[&str]) -> Output {
    kubectl_with(cluster_env(), args)
}

/// Run kubectl and return stdout, failing the test on a non-zero exit.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A client for the test cluster (one per test: clients are bound to their runtime).
pub async fn client() -> Client {
    let path = &cluster_env()["KUBECONFIG"];
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A namespace of the test's own, deleted (without waiting) when dropped.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Create `prefix-<random>`.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "ssekeeper.dev/test": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("SSEKEEPER_KEEP_NAMESPACES").is_none() {
            let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        }
    }
}

/// Delete a namespace and wait until it is gone (for tests that check cleanup).
#[allow(dead_code)]
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// A built binary of the workspace (`make test` builds them first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{bin:?} is missing: build it first (`cargo build --workspace --bins`, which `make test` does)"
    );
    bin
}

/// An operator process running out of cluster against the test cluster, killed on drop.
pub struct Operator {
    child: Child,
    /// Its metrics address.
    pub metrics_port: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl Operator {
    /// Start an operator that watches `namespace` and elects its leader there.
    pub fn start(namespace: &str, identity: &str, extra: &[&str]) -> Self {
        Self::start_with_kubeconfig(namespace, identity, extra, &cluster_env()["KUBECONFIG"])
    }

    /// Same, with another kubeconfig (e.g. the chart's service account).
    pub fn start_with_kubeconfig(
        namespace: &str,
        identity: &str,
        extra: &[&str],
        kubeconfig: &str,
    ) -> Self {
        let metrics_port = free_port();
        let log =
            std::env::temp_dir().join(format!("ssekeeper-operator-{namespace}-{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(workspace_bin("ssekeeper-operator"))
            .args([
                "--log-format=pretty",
                &format!("--metrics-addr=127.0.0.1:{metrics_port}"),
                &format!("--watch-namespace={namespace}"),
                &format!("--lease-namespace={namespace}"),
                &format!("--identity={identity}"),
                "--sidecar-image=ssekeeper/sidecar:test",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start operator");
        Self {
            child,
            metrics_port,
            log,
        }
    }

    /// Stop it the way the kubelet would (SIGTERM) and wait, bounded.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let patience = Patience::within(Duration::from_secs(20)).every(Duration::from_millis(100));
        match poll_blocking(patience, || self.child.try_wait().unwrap()) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                panic!(
                    "operator did not stop within 20 s of SIGTERM; log: {:?}",
                    self.log
                );
            }
        }
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        http_get(&format!("127.0.0.1:{}", self.metrics_port), "/metrics").await
    }

    /// Its log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `GET path` on `addr` (any status), `None` when it cannot be had within 5 s.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    let reply = ssekeeper_testkit::client::request(
        addr.parse().ok()?,
        None,
        http::Method::GET,
        path,
        &[],
        bytes::Bytes::new(),
        Duration::from_secs(5),
        16 << 20,
    )
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&reply.body).into_owned())
}

/// Read a manifest from the repository, with `namespace: default` replaced by `ns`.
pub fn manifest(path: &str, ns: &str) -> String {
    std::fs::read_to_string(repo().join(path))
        .unwrap()
        .replace("namespace: default", &format!("namespace: {ns}"))
        .replace(".default.svc", &format!(".{ns}.svc"))
}

/// `kubectl apply` a manifest given as text.
pub fn apply_text(text: &str) -> Output {
    kubectl_stdin(&["apply", "--server-side", "-f", "-"], text)
}

/// Run kubectl with `text` on its standard input.
pub fn kubectl_stdin(args: &[&str], text: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(cluster_bin("kubectl"))
        .args(args)
        .envs(cluster_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
