//! A "pod": the demo app and (in sidecar mode) the sidecar, sharing one loopback address the way
//! the containers of a pod share a network namespace. The sidecar is configured through the very
//! `SidecarArgs::to_args` the operator renders, plus the environment the operator injects.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssekeeper_sidecar::contract::{self, SidecarArgs, StoreKind};

use ssekeeper_testkit::ports::free_port_on as free_port;
use ssekeeper_testkit::process::{LaunchError, Proc};

use super::HarnessError;
use super::kubelet::PreStop;
use super::wait_http_ok;

/// How long a container gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The sidecar's settings for every pod of a cluster.
#[derive(Debug, Clone)]
pub struct SidecarSettings {
    /// The binary.
    pub binary: PathBuf,
    /// The store (`SSEKEEPER_REDIS_URL`).
    pub store_redis_url: String,
    /// SseService namespace.
    pub service_namespace: String,
    /// SseService name.
    pub service_name: String,
    /// `SSEKEEPER_FORWARD_KEY`.
    pub forward_key: String,
    /// `--prestop-delay-seconds`.
    pub prestop_delay_seconds: u32,
    /// `--drain-seconds`.
    pub drain_seconds: u32,
    /// `--reconnect-delay-millis`.
    pub reconnect_delay_millis: u32,
    /// Adjusts the rendered settings (limits a test wants to provoke); runs before rendering,
    /// so every flag still goes through `SidecarArgs::to_args` exactly once.
    pub tweak: fn(&mut SidecarArgs),
}

impl SidecarSettings {
    /// The sidecar's configuration for a pod at `ip` whose app listens on `app_port`, with its
    /// lifecycle socket at `lifecycle_socket` (the pod's own "emptyDir"). The process gets
    /// `to_args()` of it; the preStop hook is derived from it as the operator derives it.
    pub fn config(
        &self,
        ip: IpAddr,
        app_port: u16,
        sse_port: u16,
        admin_port: u16,
        lifecycle_socket: &Path,
    ) -> SidecarArgs {
        let mut a = SidecarArgs::defaults(app_port, &self.service_namespace, &self.service_name);
        a.app_host = ip;
        a.listen_host = ip;
        a.sse_port = sse_port;
        a.admin_port = admin_port;
        a.store = StoreKind::Redis;
        a.session_keys = contract::defaults::session_keys();
        a.prestop_delay_seconds = self.prestop_delay_seconds;
        a.drain_seconds = self.drain_seconds;
        a.reconnect_delay_millis = self.reconnect_delay_millis;
        a.log_format = contract::LogFormat::Pretty;
        a.lifecycle_socket = lifecycle_socket.to_path_buf();
        (self.tweak)(&mut a);
        a
    }
}

/// How a pod's app process starts: the demo app, or any program (an official SDK's server)
/// whose arguments name its listen address. In `args`, `{host}`, `{port}`, `{pod}` and `{redis}`
/// are replaced by the pod's address, the app's port, the pod's name and the app's Redis URL.
#[derive(Debug, Clone)]
pub struct AppLaunch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments, with placeholders.
    pub args: Vec<String>,
    /// A path answering `200` once the app serves.
    pub ready_path: String,
}

impl AppLaunch {
    /// The demo app (`demo-app serve`).
    pub fn demo(demo_app: &Path) -> Self {
        Self {
            program: demo_app.to_path_buf(),
            args: [
                "serve",
                "--listen={host}:{port}",
                "--redis-url={redis}",
                "--pod-name={pod}",
            ]
            .map(String::from)
            .to_vec(),
            ready_path: "/healthz".into(),
        }
    }

    fn args_for(&self, ip: IpAddr, port: u16, pod: &str, redis: &str) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                a.replace("{host}", &ip.to_string())
                    .replace("{port}", &port.to_string())
                    .replace("{pod}", pod)
                    .replace("{redis}", redis)
            })
            .collect()
    }
}

/// One running pod.
#[derive(Debug)]
pub struct Pod {
    /// Pod name (`POD_NAME`).
    pub name: String,
    /// Pod address (`POD_IP`).
    pub ip: IpAddr,
    /// The app's port on `ip`.
    pub app_port: u16,
    /// The sidecar's client port, in sidecar mode.
    pub sse_port: Option<u16>,
    /// The sidecar's admin port, in sidecar mode.
    pub admin_port: Option<u16>,
    /// The app container.
    pub app: Proc,
    /// The sidecar container, in sidecar mode.
    pub sidecar: Option<Proc>,
    /// The sidecar's preStop hook as the operator renders it (the built binary's `prestop`
    /// subcommand on this pod's lifecycle socket), in sidecar mode.
    pub sidecar_prestop: Option<PreStop>,
    /// The sidecar's `--request-seconds` (part of the grace period), in sidecar mode.
    pub request_seconds: Option<u32>,
}

impl Pod {
    /// Start the app, wait for `/healthz`, then the sidecar (if any) and wait for its `/ready`.
    pub async fn start(
        name: &str,
        ip: IpAddr,
        launch: &AppLaunch,
        app_redis_url: &str,
        sidecar: Option<&SidecarSettings>,
        dir: &Path,
    ) -> Result<Self, HarnessError> {
        let app_port = free_port(ip)?;
        let app = Proc::spawn(
            &format!("{name}/app"),
            &launch.program,
            &launch.args_for(ip, app_port, name, app_redis_url),
            &[],
            &dir.join(format!("{name}.app.log")),
        )?;
        let ready = SocketAddr::new(ip, app_port);
        if !wait_http_ok(ready, &launch.ready_path, READY_TIMEOUT).await {
            return Err(LaunchError::NotReady {
                what: format!("{name}/app"),
                timeout: READY_TIMEOUT,
                log: app.log().display().to_string(),
            }
            .into());
        }
        let mut pod = Self {
            name: name.to_string(),
            ip,
            app_port,
            sse_port: None,
            admin_port: None,
            app,
            sidecar: None,
            sidecar_prestop: None,
            request_seconds: None,
        };
        if let Some(s) = sidecar {
            let (sse, admin) = (free_port(ip)?, free_port(ip)?);
            // The pod's own directory for the socket, as the emptyDir is in a real pod.
            let socket = dir.join(format!("{name}.run")).join("lifecycle.sock");
            let config = s.config(ip, app_port, sse, admin, &socket);
            let envs = vec![
                (
                    contract::env::REDIS_URL.to_string(),
                    s.store_redis_url.clone(),
                ),
                (
                    contract::env::FORWARD_KEY.to_string(),
                    s.forward_key.clone(),
                ),
                (contract::env::POD_NAME.to_string(), name.to_string()),
                (contract::env::POD_IP.to_string(), ip.to_string()),
                (
                    contract::env::POD_NAMESPACE.to_string(),
                    s.service_namespace.clone(),
                ),
                (
                    "RUST_LOG".to_string(),
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                ),
            ];
            let proc = Proc::spawn(
                &format!("{name}/sidecar"),
                &s.binary,
                &config.to_args(),
                &envs,
                &dir.join(format!("{name}.sidecar.log")),
            )?;
            pod.sse_port = Some(sse);
            pod.admin_port = Some(admin);
            pod.sidecar = Some(proc);
            pod.sidecar_prestop = Some(PreStop::sidecar(&s.binary, &config));
            pod.request_seconds = Some(config.request_seconds);
            let ready = SocketAddr::new(ip, admin);
            if !wait_http_ok(ready, contract::paths::READY, READY_TIMEOUT).await {
                let log = pod
                    .sidecar
                    .as_ref()
                    .map(|p| p.log_tail(30))
                    .unwrap_or_default();
                return Err(LaunchError::NotReady {
                    what: format!("{name}/sidecar (last log lines:\n{log}\n)"),
                    timeout: READY_TIMEOUT,
                    log: dir
                        .join(format!("{name}.sidecar.log"))
                        .display()
                        .to_string(),
                }
                .into());
            }
        }
        Ok(pod)
    }

    /// Where client traffic for this pod goes: the sidecar, or the app itself.
    pub fn serving_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.sse_port.unwrap_or(self.app_port))
    }

    /// The port HAProxy health-checks.
    pub fn check_port(&self) -> u16 {
        self.admin_port.unwrap_or(self.app_port)
    }

    /// The path HAProxy health-checks.
    pub fn check_path(sidecar: bool) -> &'static str {
        if sidecar {
            contract::paths::READY
        } else {
            "/healthz"
        }
    }

    /// The sidecar's admin address, in sidecar mode.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_port.map(|p| SocketAddr::new(self.ip, p))
    }

    /// SIGKILL every container at once (a node crash, an OOM of the whole pod) and reap them.
    pub async fn kill(&mut self) {
        if let Some(s) = self.sidecar.as_mut() {
            s.sigkill();
        }
        self.app.sigkill();
        if let Some(s) = self.sidecar.as_mut() {
            s.kill().await;
        }
        self.app.kill().await;
    }
}
