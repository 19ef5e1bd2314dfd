//! Pod termination in the kubelet's exact order: every container's preStop hook starts at once;
//! each container gets SIGTERM when *its own* hook returns; whatever still runs at the grace
//! deadline (counted from the start of termination) gets SIGKILL. The report says when each step
//! happened, so a test can assert that nothing needed the SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ssekeeper_sidecar::contract::{self, SidecarArgs};

use ssekeeper_testkit::process::Proc;

use super::pod::Pod;

/// A container's preStop hook.
#[derive(Debug, Clone)]
pub enum PreStop {
    /// The native `sleep` action.
    Sleep(Duration),
    /// The `exec` action: a program run to completion in the container; a non-zero exit is the
    /// hook failing (the kubelet records it and carries on with SIGTERM).
    Exec {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
    /// The `httpGet` action: a GET the kubelet waits on (no timeout but the grace deadline); an
    /// error or a status outside 2xx/3xx is the hook failing.
    HttpGet {
        /// The pod's address and the hook's port.
        addr: SocketAddr,
        /// The path.
        path: String,
    },
}

impl PreStop {
    /// The sidecar's hook exactly as the operator renders it (`contract::prestop_command`: the
    /// binary's `prestop` subcommand on that sidecar's lifecycle socket), with the binary under
    /// test in place of the image's path.
    pub fn sidecar(binary: &Path, sidecar: &SidecarArgs) -> Self {
        let mut command = contract::prestop_command(sidecar);
        command.remove(0);
        Self::Exec {
            program: binary.to_path_buf(),
            args: command,
        }
    }
}

/// What the operator renders for one pod's termination.
#[derive(Debug, Clone)]
pub struct TerminationPlan {
    /// The app container's hook.
    pub app: PreStop,
    /// The sidecar's hook (sidecar mode).
    pub sidecar: Option<PreStop>,
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
}

impl TerminationPlan {
    /// The plan the operator renders for `pod`: [`TerminationPlan::sidecar_pod`] with the pod's
    /// own hooks, or [`TerminationPlan::plain_pod`] without a sidecar.
    pub fn for_pod(pod: &Pod, prestop_delay_seconds: u32, drain_seconds: u32) -> Self {
        match (&pod.sidecar_prestop, pod.admin_addr()) {
            (Some(hook), Some(admin)) => Self::sidecar_pod(
                hook.clone(),
                admin,
                prestop_delay_seconds,
                drain_seconds,
                pod.request_seconds.unwrap_or(0),
            ),
            _ => Self::plain_pod(prestop_delay_seconds, drain_seconds),
        }
    }

    /// The plan the operator renders for a sidecar pod: the app's hook waits on the sidecar's
    /// admin port (`admin`) until the drain is done with it, the sidecar's hook is `sidecar_hook`
    /// (see [`PreStop::sidecar`]), and the grace period is
    /// `contract::termination_grace_period_seconds`.
    pub fn sidecar_pod(
        sidecar_hook: PreStop,
        admin: SocketAddr,
        prestop_delay_seconds: u32,
        drain_seconds: u32,
        request_seconds: u32,
    ) -> Self {
        let grace = contract::termination_grace_period_seconds(
            prestop_delay_seconds,
            drain_seconds,
            request_seconds,
        );
        Self {
            app: PreStop::HttpGet {
                addr: admin,
                path: contract::paths::APP_PRESTOP.into(),
            },
            sidecar: Some(sidecar_hook),
            grace: Duration::from_secs(grace.into()),
        }
    }

    /// A pod without the sidecar, as people deploy SSE apps today: a `sleep` preStop so the
    /// endpoint can go away, then SIGTERM, within the same grace period.
    pub fn plain_pod(prestop_delay_seconds: u32, drain_seconds: u32) -> Self {
        let grace =
            contract::termination_grace_period_seconds(prestop_delay_seconds, drain_seconds, 0);
        Self {
            app: PreStop::Sleep(Duration::from_secs(prestop_delay_seconds.into())),
            sidecar: None,
            grace: Duration::from_secs(grace.into()),
        }
    }
}

/// How one container's termination went (times from the start of the pod's termination).
#[derive(Debug, Clone)]
pub struct ContainerTermination {
    /// Container name.
    pub name: String,
    /// When its preStop hook returned (or was cut at the deadline).
    pub prestop_done: Duration,
    /// The hook's failure, if any (the kubelet logs it and carries on).
    pub prestop_error: Option<String>,
    /// When it exited.
    pub exited: Duration,
    /// Its exit status.
    pub status: Option<ExitStatus>,
    /// Whether the grace deadline's SIGKILL was needed.
    pub killed: bool,
}

impl ContainerTermination {
    /// Exited by itself with code 0.
    pub fn clean(&self) -> bool {
        !self.killed && self.status.is_some_and(|s| s.success())
    }
}

/// How one pod's termination went.
#[derive(Debug, Clone)]
pub struct TerminationReport {
    /// The pod.
    pub pod: String,
    /// The app container.
    pub app: ContainerTermination,
    /// The sidecar container.
    pub sidecar: Option<ContainerTermination>,
    /// Time until the last container exited.
    pub took: Duration,
}

impl TerminationReport {
    /// Every container exited by itself with code 0.
    pub fn clean(&self) -> bool {
        self.app.clean() && self.sidecar.as_ref().is_none_or(|s| s.clean())
    }
}

impl std::fmt::Display for TerminationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let one = |c: &ContainerTermination| {
            format!(
                "{}: preStop {:.1}s{} exit {:.1}s {:?}{}",
                c.name,
                c.prestop_done.as_secs_f64(),
                c.prestop_error
                    .as_deref()
                    .map(|e| format!(" (failed: {e})"))
                    .unwrap_or_default(),
                c.exited.as_secs_f64(),
                c.status.and_then(|s| s.code()),
                if c.killed { " SIGKILLED" } else { "" }
            )
        };
        write!(
            f,
            "{} in {:.1}s [{}",
            self.pod,
            self.took.as_secs_f64(),
            one(&self.app)
        )?;
        if let Some(s) = &self.sidecar {
            write!(f, "; {}", one(s))?;
        }
        write!(f, "]")
    }
}

async fn run_hook(hook: &PreStop, deadline: tokio::time::Instant) -> Option<String> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match hook {
        PreStop::Sleep(d) => {
            tokio::time::sleep((*d).min(left)).await;
            None
        }
        PreStop::HttpGet { addr, path } => {
            let reply = ssekeeper_testkit::client::request(
                *addr,
                None,
                http::Method::GET,
                path,
                &[],
                bytes::Bytes::new(),
                left,
                64 * 1024,
            )
            .await;
            match reply {
                Ok(r) if r.status.is_success() || r.status.is_redirection() => None,
                Ok(r) => Some(format!(
                    "GET {path}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                )),
                Err(e) => Some(format!("GET {path}: {e}")),
            }
        }
        PreStop::Exec { program, args } => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            match tokio::time::timeout(left, cmd.output()).await {
                Err(_) => Some("cut at the grace deadline".into()),
                Ok(Err(e)) => Some(format!("cannot run {}: {e}", program.display())),
                Ok(Ok(out)) if out.status.success() => None,
                Ok(Ok(out)) => Some(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            }
        }
    }
}

async fn terminate_container(
    proc: &mut Proc,
    hook: &PreStop,
    start: Instant,
    deadline: tokio::time::Instant,
) -> ContainerTermination {
    let prestop_error = run_hook(hook, deadline).await;
    let prestop_done = start.elapsed();
    proc.sigterm();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut status = proc.wait_timeout(left).await;
    let killed = status.is_none();
    if killed {
        status = proc.kill().await;
    }
    ContainerTermination {
        name: proc.name().to_string(),
        prestop_done,
        prestop_error,
        exited: start.elapsed(),
        status,
        killed,
    }
}

/// Terminate `pod` by `plan`.
pub async fn terminate(pod: &mut Pod, plan: &TerminationPlan) -> TerminationReport {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + plan.grace;
    let sidecar_proc = pod.sidecar.as_mut();
    let app = terminate_container(&mut pod.app, &plan.app, start, deadline);
    let sidecar = async move {
        match (sidecar_proc, plan.sidecar.as_ref()) {
            (Some(p), Some(h)) => Some(terminate_container(p, h, start, deadline).await),
            _ => None,
        }
    };
    let (app, sidecar) = tokio::join!(app, sidecar);
    TerminationReport {
        pod: pod.name.clone(),
        app,
        sidecar,
        took: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssekeeper_testkit::tempdir::TestDir;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;

    fn sh(name: &str, script: &str, dir: &TestDir) -> Proc {
        let args = vec!["-c".to_string(), script.to_string()];
        let log = dir.path().join(format!("{name}.log"));
        Proc::spawn(name, Path::new("/bin/sh"), &args, &[], &log).expect("sh starts")
    }

    #[tokio::test]
    async fn sigterm_follows_each_own_hook_and_sigkill_comes_at_the_deadline() {
        let dir = TestDir::new("kubelet-unit").expect("dir");
        let mut pod = Pod {
            name: "p".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_port: 0,
            sse_port: None,
            admin_port: None,
            // Exits 0 on SIGTERM.
            app: sh(
                "app",
                "trap 'exit 0' TERM; while :; do sleep 0.02; done",
                &dir,
            ),
            // Ignores SIGTERM: only the deadline's SIGKILL ends it.
            sidecar: Some(sh("sidecar", "trap '' TERM; exec sleep 30", &dir)),
            sidecar_prestop: None,
            request_seconds: None,
        };
        let plan = TerminationPlan {
            app: PreStop::Sleep(Duration::from_millis(400)),
            sidecar: Some(PreStop::Sleep(Duration::from_millis(100))),
            grace: Duration::from_millis(1200),
        };
        let r = terminate(&mut pod, &plan).await;
        let sidecar = r.sidecar.clone().expect("sidecar report");
        assert!(r.app.clean(), "{r}");
        assert!(r.app.prestop_done >= Duration::from_millis(400), "{r}");
        assert!(
            r.app.exited < Duration::from_millis(1000),
            "exits soon after its SIGTERM: {r}"
        );
        assert!(
            sidecar.prestop_done < Duration::from_millis(400),
            "its own hook, not the app's: {r}"
        );
        assert!(sidecar.killed, "{r}");
        assert!(sidecar.exited >= Duration::from_millis(1200), "{r}");
        assert!(!r.clean());
    }

    #[tokio::test]
    async fn a_failing_exec_hook_is_reported_and_sigterm_still_comes() {
        let dir = TestDir::new("kubelet-exec").expect("dir");
        let mut pod = Pod {
            name: "p".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_port: 0,
            sse_port: None,
            admin_port: None,
            app: sh(
                "app",
                "trap 'exit 0' TERM; while :; do sleep 0.02; done",
                &dir,
            ),
            sidecar: Some(sh(
                "sidecar",
                "trap 'exit 0' TERM; while :; do sleep 0.02; done",
                &dir,
            )),
            sidecar_prestop: None,
            request_seconds: None,
        };
        let exec = |script: &str| PreStop::Exec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        };
        let plan = TerminationPlan {
            app: exec("exit 0"),
            sidecar: Some(exec("echo no socket >&2; exit 3")),
            grace: Duration::from_secs(5),
        };
        // Let both shells install their TERM trap first (a SIGTERM before it kills them).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = terminate(&mut pod, &plan).await;
        let sidecar = r.sidecar.clone().expect("sidecar report");
        assert!(r.app.prestop_error.is_none(), "{r}");
        let error = sidecar.prestop_error.clone().unwrap_or_default();
        assert!(error.contains('3') && error.contains("no socket"), "{r}");
        assert!(r.clean(), "SIGTERM followed the failed hook: {r}");
    }
}
