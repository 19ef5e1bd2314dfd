//! A whole data plane: the app's Redis (its own database, holding the chat room), the sidecars'
//! store Redis, a publisher, HAProxy, and N pods - plus what a Deployment controller does to
//! them (rolling restart with maxSurge 1 / maxUnavailable 0, replacement after a crash).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use super::haproxy::Balance;
use super::haproxy::HaProxy;
use super::kubelet::{self, TerminationPlan, TerminationReport};
use super::pod::{AppLaunch, Pod, SidecarSettings};
use ssekeeper_testkit::process::{LaunchError, Proc};
use ssekeeper_testkit::redis::{RedisOptions, RedisServer};
use ssekeeper_testkit::tempdir::TestDir;

use super::ports::pod_ip;
use super::{Binaries, HarnessError};

/// Whether pods carry the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HAProxy talks to the apps directly: today's deployments, the baseline.
    Direct,
    /// HAProxy talks to the sidecars, which talk to their apps.
    Sidecar,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Test name (names the scratch directory).
    pub label: String,
    /// Pods kept running.
    pub replicas: usize,
    /// With or without the sidecar.
    pub mode: Mode,
    /// HAProxy's algorithm.
    pub balance: Balance,
    /// `--prestop-delay-seconds` (and the plain pod's preStop sleep).
    pub prestop_delay_seconds: u32,
    /// `--drain-seconds`.
    pub drain_seconds: u32,
    /// `--reconnect-delay-millis`.
    pub reconnect_delay_millis: u32,
    /// Adjusts each sidecar's settings (e.g. `|a| a.lease_ttl_seconds = 2`).
    pub sidecar_tweak: fn(&mut ssekeeper_sidecar::contract::SidecarArgs),
    /// Chat-room entries per second; `None` runs no publisher.
    pub publish_rate: Option<f64>,
    /// The Deployment's `minReadySeconds` between rolling steps.
    pub min_ready: Duration,
    /// When the endpoint of a terminating pod is removed from HAProxy (as the EndpointSlice
    /// controller and the proxies following it do, a little after termination starts); `None`
    /// leaves it to the health checks alone.
    pub endpoint_removal_delay: Option<Duration>,
    /// The pods' app: `None` runs the demo app.
    pub app: Option<AppLaunch>,
}

impl ClusterConfig {
    /// Short drain settings (preStop 1 s, drain 2 s) so tests stay quick.
    pub fn new(label: &str, mode: Mode, balance: Balance, replicas: usize) -> Self {
        Self {
            label: label.to_string(),
            replicas,
            mode,
            balance,
            prestop_delay_seconds: 1,
            drain_seconds: 2,
            reconnect_delay_millis: 200,
            sidecar_tweak: |_| {},
            publish_rate: None,
            min_ready: Duration::from_millis(500),
            endpoint_removal_delay: Some(Duration::from_millis(300)),
            app: None,
        }
    }
}

/// A Redis of the data plane: its files in the test's directory, room for every client.
fn redis_options(bins: &Binaries, dir: &TestDir, name: &str) -> RedisOptions {
    RedisOptions::new(name)
        .program(&bins.redis_server)
        .dir(dir.path())
        .args(["--maxclients", "4000"])
}

/// Server slots in HAProxy: room for every pod plus surge plus pods still terminating.
const SLOTS: usize = 24;

/// A running pod and the HAProxy slot it holds.
#[derive(Debug)]
struct Member {
    pod: Pod,
    slot: usize,
}

/// The running data plane. Dropping it kills every process.
pub struct Cluster {
    cfg: ClusterConfig,
    bins: Binaries,
    app_redis: RedisServer,
    store_redis: Option<RedisServer>,
    haproxy: Arc<HaProxy>,
    sidecar: Option<SidecarSettings>,
    members: Vec<Member>,
    publisher: Option<Proc>,
    next_pod: u8,
    terminating: Vec<JoinHandle<TerminationReport>>,
    cleanups: Vec<JoinHandle<()>>,
    // Last, so the processes above are gone before their directory is removed.
    dir: TestDir,
}

impl Cluster {
    /// Start Redis, the store, HAProxy, the pods (each attached and UP), then the publisher.
    pub async fn start(bins: Binaries, cfg: ClusterConfig) -> Result<Self, HarnessError> {
        let dir = TestDir::new(&cfg.label)?;
        let app_redis = RedisServer::launch(redis_options(&bins, &dir, "app-redis")).await?;
        let (store_redis, sidecar) = match cfg.mode {
            Mode::Direct => (None, None),
            Mode::Sidecar => {
                let binary = bins.sidecar()?.to_path_buf();
                let store = RedisServer::launch(redis_options(&bins, &dir, "store-redis")).await?;
                let settings = SidecarSettings {
                    binary,
                    store_redis_url: store.url(),
                    service_namespace: "dataplane".into(),
                    service_name: "demo".into(),
                    forward_key: format!("{:032x}", rand::random::<u128>()),
                    prestop_delay_seconds: cfg.prestop_delay_seconds,
                    drain_seconds: cfg.drain_seconds,
                    reconnect_delay_millis: cfg.reconnect_delay_millis,
                    tweak: cfg.sidecar_tweak,
                };
                (Some(store), Some(settings))
            }
        };
        let haproxy = HaProxy::start(
            &bins.haproxy,
            dir.path(),
            cfg.balance,
            Pod::check_path(sidecar.is_some()),
            SLOTS,
        )
        .await?;
        let mut c = Self {
            cfg,
            bins,
            app_redis,
            store_redis,
            haproxy,
            sidecar,
            members: Vec::new(),
            publisher: None,
            next_pod: 0,
            terminating: Vec::new(),
            cleanups: Vec::new(),
            dir,
        };
        for _ in 0..c.cfg.replicas {
            c.add_pod().await?;
        }
        if let Some(rate) = c.cfg.publish_rate {
            c.start_publisher(rate)?;
        }
        Ok(c)
    }

    fn start_publisher(&mut self, rate: f64) -> Result<(), HarnessError> {
        let args = vec![
            "publish".to_string(),
            format!("--redis-url={}", self.app_redis.url()),
            format!("--rate={rate}"),
        ];
        let log = self.dir.path().join("publisher.log");
        self.publisher = Some(Proc::spawn(
            "publisher",
            &self.bins.demo_app,
            &args,
            &[],
            &log,
        )?);
        Ok(())
    }

    /// Where clients connect (HAProxy's frontend).
    pub fn frontend(&self) -> SocketAddr {
        self.haproxy.addr()
    }

    /// HAProxy, for status queries.
    pub fn haproxy(&self) -> &HaProxy {
        &self.haproxy
    }

    /// The scratch directory (logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Names of the running (not terminating) pods, oldest first.
    pub fn pod_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.pod.name.clone()).collect()
    }

    /// The running pod named `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.members.iter().map(|m| &m.pod).find(|p| p.name == name)
    }

    /// The sidecars' store, in sidecar mode.
    pub fn store_redis(&mut self) -> Option<&mut RedisServer> {
        self.store_redis.as_mut()
    }

    /// The app's own Redis (the chat room).
    pub fn app_redis(&mut self) -> &mut RedisServer {
        &mut self.app_redis
    }

    /// Start one more pod on the next address and wait until HAProxy has it UP.
    pub async fn add_pod(&mut self) -> Result<String, HarnessError> {
        self.next_pod = self
            .next_pod
            .checked_add(1)
            .filter(|n| *n <= 240)
            .ok_or_else(|| HarnessError::Missing("out of pod addresses".into()))?;
        let name = format!("pod-{}", self.next_pod);
        let launch = self
            .cfg
            .app
            .clone()
            .unwrap_or_else(|| AppLaunch::demo(&self.bins.demo_app));
        let pod = Pod::start(
            &name,
            pod_ip(self.next_pod),
            &launch,
            &self.app_redis.url(),
            self.sidecar.as_ref(),
            self.dir.path(),
        )
        .await?;
        let slot = self
            .haproxy
            .attach(pod.serving_addr(), pod.check_port())
            .await?;
        if !self
            .haproxy
            .wait_status(slot, "UP", Duration::from_secs(10))
            .await
        {
            return Err(LaunchError::NotReady {
                what: format!(
                    "{name} in haproxy ({:?})",
                    self.haproxy.statuses().await.ok()
                ),
                timeout: Duration::from_secs(10),
                log: self.dir.path().display().to_string(),
            }
            .into());
        }
        self.members.push(Member { pod, slot });
        Ok(name)
    }

    fn plan(&self, pod: &Pod) -> TerminationPlan {
        let (p, d) = (self.cfg.prestop_delay_seconds, self.cfg.drain_seconds);
        TerminationPlan::for_pod(pod, p, d)
    }

    fn take(&mut self, name: &str) -> Option<Member> {
        let i = self.members.iter().position(|m| m.pod.name == name)?;
        Some(self.members.remove(i))
    }

    /// Begin terminating `name` (kubelet order) in the background; the pod's slot is given back
    /// when it is gone. Collect the report with [`Cluster::wait_terminations`].
    pub fn begin_termination(&mut self, name: &str) -> bool {
        let Some(mut m) = self.take(name) else {
            return false;
        };
        let plan = self.plan(&m.pod);
        let haproxy = self.haproxy.clone();
        let removal = self.cfg.endpoint_removal_delay;
        self.terminating.push(tokio::spawn(async move {
            let remove_endpoint = async {
                if let Some(d) = removal {
                    tokio::time::sleep(d).await;
                    let _ = haproxy.drain(m.slot).await;
                }
            };
            let (report, ()) = tokio::join!(kubelet::terminate(&mut m.pod, &plan), remove_endpoint);
            let _ = haproxy.detach(m.slot).await;
            report
        }));
        true
    }

    /// Wait for every termination begun so far.
    pub async fn wait_terminations(&mut self) -> Vec<TerminationReport> {
        let mut out = Vec::new();
        for h in self.terminating.drain(..) {
            out.push(h.await.expect("termination task never panics"));
        }
        out
    }

    /// Terminate `name` and wait for it.
    pub async fn terminate(&mut self, name: &str) -> Option<TerminationReport> {
        if !self.begin_termination(name) {
            return None;
        }
        self.terminating.pop()?.await.ok()
    }

    /// Roll every pod, oldest first, the way a Deployment with maxSurge 1 / maxUnavailable 0
    /// does: start a new pod, wait until it is ready plus `min_ready`, then begin terminating an
    /// old one (without waiting for it to finish), and so on. Returns the termination reports.
    pub async fn rolling_restart(&mut self) -> Result<Vec<TerminationReport>, HarnessError> {
        let old = self.pod_names();
        for name in old {
            self.add_pod().await?;
            tokio::time::sleep(self.cfg.min_ready).await;
            self.begin_termination(&name);
        }
        Ok(self.wait_terminations().await)
    }

    /// SIGKILL every container of `name` at once and drop it from HAProxy once its checks fail.
    pub async fn kill_pod(&mut self, name: &str) -> bool {
        let Some(mut m) = self.take(name) else {
            return false;
        };
        m.pod.kill().await;
        let hp = self.haproxy.clone();
        self.cleanups.push(tokio::spawn(async move {
            let _ = hp.wait_status(m.slot, "DOWN", Duration::from_secs(5)).await;
            let _ = hp.detach(m.slot).await;
        }));
        true
    }

    /// Stop the publisher (SIGTERM, reaped) and return the last sequence number it published.
    pub async fn stop_publisher(&mut self) -> Result<u64, HarnessError> {
        if let Some(mut p) = self.publisher.take() {
            p.sigterm();
            if p.wait_timeout(Duration::from_secs(5)).await.is_none() {
                p.kill().await;
            }
        }
        self.last_published().await
    }

    /// The chat room's last sequence number, read from the app's Redis.
    pub async fn last_published(&self) -> Result<u64, HarnessError> {
        let client = redis::Client::open(self.app_redis.url())
            .map_err(|e| HarnessError::Missing(format!("redis url: {e}")))?;
        let mut con = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| HarnessError::Missing(format!("app redis: {e}")))?;
        crate::demo::publisher::tail_seq(&mut con)
            .await
            .map_err(|e| HarnessError::Missing(format!("app redis: {e}")))
    }

    /// The sidecar's metrics text from pod `name`, in sidecar mode.
    pub async fn metrics(&self, name: &str) -> Option<String> {
        let admin = self.pod(name)?.admin_addr()?;
        let r = ssekeeper_testkit::client::request(
            admin,
            None,
            http::Method::GET,
            ssekeeper_sidecar::contract::paths::METRICS,
            &[],
            bytes::Bytes::new(),
            Duration::from_secs(2),
            4 * 1024 * 1024,
        )
        .await
        .ok()?;
        Some(String::from_utf8_lossy(&r.body).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &self.terminating {
            h.abort();
        }
        for h in &self.cleanups {
            h.abort();
        }
    }
}
