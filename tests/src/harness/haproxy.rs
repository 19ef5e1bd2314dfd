//! A real HAProxy in front of the pods, standing in for a Service / Ingress.
//!
//! The backend has a fixed number of server *slots*; a pod takes a slot through the runtime API
//! (address, port, health-check port, then `ready`), and gives it back when it is gone. That is
//! how an ingress controller follows Endpoints without reloading, and it lets a rolling restart
//! put new pods on new addresses. Health checks hit each pod's readiness endpoint, so a draining
//! pod leaves the rotation by itself, as it would leave a Service's endpoints.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use ssekeeper_testkit::Patience;
use ssekeeper_testkit::ports::free_port_on as free_port;
use ssekeeper_testkit::process::{LaunchError, Proc};

use super::HarnessError;

/// The pace of the waits on HAProxy (each look is a runtime-API command).
const POLL: Duration = Duration::from_millis(50);

/// Name of the backend in the rendered config.
pub const BACKEND: &str = "pods";

/// How HAProxy picks a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Hash of the client's source address (ClientIP affinity).
    Source,
    /// Round robin per request (no affinity at all).
    RoundRobin,
}

/// What the config is rendered from.
#[derive(Debug, Clone)]
pub struct HaProxyConfig {
    /// Frontend port on 127.0.0.1.
    pub port: u16,
    /// Runtime API socket.
    pub socket: PathBuf,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Health-check path on each pod's check port.
    pub check_path: String,
    /// Number of server slots.
    pub slots: usize,
    /// Health-check interval (a down pod leaves after two failed checks).
    pub check_interval: Duration,
}

/// The server name of slot `i`.
pub fn slot_name(i: usize) -> String {
    format!("s{i}")
}

/// The HAProxy configuration: HTTP mode, one log line per request (into the test's log, which
/// names the pod that served it), timeouts long enough for idle SSE streams, no send
/// coalescing (`http-no-delay`: without it small SSE events wait up to 200 ms in the kernel),
/// connect failures retried on another pod, every slot disabled until a pod takes it.
pub fn render_config(c: &HaProxyConfig) -> String {
    let mut s = String::new();
    let ms = c.check_interval.as_millis().max(10);
    let balance = match c.balance {
        Balance::Source => "source",
        Balance::RoundRobin => "roundrobin",
    };
    let _ = write!(
        s,
        "global\n\
         \x20   maxconn 4000\n\
         \x20   stats socket {sock} mode 600 level admin\n\
         \x20   stats timeout 10s\n\
         \x20   log stdout format raw local0 info\n\
         defaults\n\
         \x20   mode http\n\
         \x20   log global\n\
         \x20   option httplog\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout http-request 10s\n\
         \x20   timeout http-keep-alive 10s\n\
         \x20   timeout queue 2s\n\
         \x20   timeout check 500ms\n\
         \x20   retries 2\n\
         \x20   option redispatch\n\
         \x20   option http-no-delay\n\
         frontend fe\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend {BACKEND}\n\
         backend {BACKEND}\n\
         \x20   balance {balance}\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri {path}\n\
         \x20   http-check expect status 200\n\
         \x20   default-server inter {ms}ms fastinter {ms}ms downinter {ms}ms rise 1 fall 2\n",
        sock = c.socket.display(),
        port = c.port,
        path = c.check_path,
    );
    for i in 0..c.slots {
        let _ = writeln!(s, "    server {} 127.0.0.1:9 check disabled", slot_name(i));
    }
    s
}

/// A running HAProxy and its slot table.
#[derive(Debug)]
pub struct HaProxy {
    addr: SocketAddr,
    socket: PathBuf,
    proc: Mutex<Proc>,
    free: Mutex<Vec<bool>>,
}

/// How long HAProxy gets to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl HaProxy {
    /// Render the config into `dir` and start HAProxy in the foreground.
    pub async fn start(
        program: &Path,
        dir: &Path,
        balance: Balance,
        check_path: &str,
        slots: usize,
    ) -> Result<Arc<Self>, HarnessError> {
        let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let cfg = HaProxyConfig {
            port,
            socket: dir.join("haproxy.sock"),
            balance,
            check_path: check_path.to_string(),
            slots,
            check_interval: Duration::from_millis(200),
        };
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, render_config(&cfg))?;
        let args = vec![
            "-db".to_string(),
            "-f".to_string(),
            cfg_path.display().to_string(),
        ];
        let log = dir.join("haproxy.log");
        let proc = Proc::spawn("haproxy", program, &args, &[], &log)?;
        let hp = Arc::new(Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            socket: cfg.socket,
            proc: Mutex::new(proc),
            free: Mutex::new(vec![true; slots]),
        });
        let started = ssekeeper_testkit::poll(Patience::within(READY_TIMEOUT).every(POLL), || {
            let hp = &hp;
            async move {
                if hp.command("show info").await.is_ok()
                    && tokio::net::TcpStream::connect(hp.addr).await.is_ok()
                {
                    return Some(Ok(()));
                }
                let mut proc = hp.proc.lock().await;
                let status = proc.try_exit()?;
                Some(Err(HarnessError::HaProxy(format!(
                    "exited at start ({status}): {}",
                    proc.log_tail(20)
                ))))
            }
        })
        .await;
        match started {
            Some(Ok(())) => Ok(hp),
            Some(Err(e)) => Err(e),
            None => Err(LaunchError::NotReady {
                what: "haproxy".into(),
                timeout: READY_TIMEOUT,
                log: log.display().to_string(),
            }
            .into()),
        }
    }

    /// The frontend clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Run one runtime-API command and return its output.
    pub async fn command(&self, cmd: &str) -> Result<String, HarnessError> {
        let exchange = async {
            let mut s = UnixStream::connect(&self.socket).await?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| HarnessError::HaProxy(format!("{cmd}: timed out")))?
            .map_err(|e| HarnessError::HaProxy(format!("{cmd}: {e}")))
    }

    async fn command_ok(&self, cmd: &str) -> Result<(), HarnessError> {
        let out = self.command(cmd).await?;
        let t = out.trim();
        // Successful `set server` commands print nothing or an informational line.
        if t.is_empty() || t.contains("changed from") || t.contains("no need to change") {
            Ok(())
        } else {
            Err(HarnessError::HaProxy(format!("{cmd}: {t}")))
        }
    }

    /// Put a pod serving at `serve` (health-checked on `check_port`) into a free slot, enabled.
    pub async fn attach(&self, serve: SocketAddr, check_port: u16) -> Result<usize, HarnessError> {
        let slot = {
            let mut free = self.free.lock().await;
            let i = free
                .iter()
                .position(|f| *f)
                .ok_or_else(|| HarnessError::HaProxy("no free server slot".into()))?;
            free[i] = false;
            i
        };
        let srv = format!("{BACKEND}/{}", slot_name(slot));
        self.command_ok(&format!("set server {srv} state maint"))
            .await?;
        self.command_ok(&format!(
            "set server {srv} addr {} port {}",
            serve.ip(),
            serve.port()
        ))
        .await?;
        self.command_ok(&format!("set server {srv} check-port {check_port}"))
            .await?;
        self.command_ok(&format!("set server {srv} state ready"))
            .await?;
        Ok(slot)
    }

    /// Stop sending new requests to `slot` (the endpoint was removed) without cutting open ones.
    pub async fn drain(&self, slot: usize) -> Result<(), HarnessError> {
        self.command_ok(&format!(
            "set server {BACKEND}/{} state drain",
            slot_name(slot)
        ))
        .await
    }

    /// Give `slot` back (its pod is gone).
    pub async fn detach(&self, slot: usize) -> Result<(), HarnessError> {
        let r = self
            .command_ok(&format!(
                "set server {BACKEND}/{} state maint",
                slot_name(slot)
            ))
            .await;
        self.free.lock().await[slot] = true;
        r
    }

    /// The status HAProxy reports for each slot (`UP`, `DOWN`, `MAINT`, `DRAIN`, `UP 1/2` ...).
    pub async fn statuses(&self) -> Result<Vec<String>, HarnessError> {
        let csv = self.command("show stat").await?;
        Ok(parse_statuses(&csv, BACKEND))
    }

    /// Wait until `slot` reports exactly `want`, for at most `timeout`.
    pub async fn wait_status(&self, slot: usize, want: &str, timeout: Duration) -> bool {
        ssekeeper_testkit::poll(Patience::within(timeout).every(POLL), || async {
            let s = self.statuses().await.ok()?;
            s.get(slot).is_some_and(|s| s == want).then_some(())
        })
        .await
        .is_some()
    }

    /// Kill HAProxy now (the harness's teardown).
    pub async fn kill(&self) {
        self.proc.lock().await.kill().await;
    }
}

/// Slot statuses of `backend` from `show stat` CSV, indexed by slot number.
pub fn parse_statuses(csv: &str, backend: &str) -> Vec<String> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let idx = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(st)) = (idx("pxname"), idx("svname"), idx("status")) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, String)> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&backend))
        .filter_map(|f| {
            let slot = f.get(sv)?.strip_prefix('s')?.parse().ok()?;
            Some((slot, f.get(st)?.to_string()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_checks_timeouts_and_disabled_slots() {
        let c = HaProxyConfig {
            port: 1234,
            socket: "/tmp/x.sock".into(),
            balance: Balance::Source,
            check_path: "/ready".into(),
            slots: 3,
            check_interval: Duration::from_millis(200),
        };
        let s = render_config(&c);
        assert!(s.contains("bind 127.0.0.1:1234"));
        assert!(s.contains("balance source"));
        assert!(s.contains("http-check send meth GET uri /ready"));
        assert!(s.contains("timeout server 1h"));
        assert!(s.contains("inter 200ms"));
        assert_eq!(s.matches("check disabled").count(), 3);
        assert!(s.contains("server s2 "));
    }

    #[test]
    fn statuses_are_read_by_column_name() {
        let csv = "# pxname,svname,qcur,status,x\n\
                   fe,FRONTEND,,OPEN,\n\
                   pods,s1,0,DOWN,\n\
                   pods,s0,0,UP,\n\
                   pods,BACKEND,0,UP,\n";
        assert_eq!(parse_statuses(csv, "pods"), vec!["UP", "DOWN"]);
    }
}
