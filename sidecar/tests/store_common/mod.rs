//! Real Redis servers for tests: started on free loopback ports in temp dirs, killed on drop.
//!
//! Reusable by any test (`mod store_common;`, or `#[path = "…/store_common/mod.rs"] mod …;`
//! from another crate). Needs `redis-server` and `redis-cli` on PATH (Debian: `redis-server`,
//! `redis-tools`). Every wait is bounded; a server that does not come up fails the test with its
//! log attached.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server gets to answer PING after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A free TCP port on 127.0.0.1 (bound and released; the race with other processes is
/// negligible on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ssekeeper-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    password: Option<String>,
}

impl RedisServer {
    /// A plain server (no persistence) on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra `--option value` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Self {
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let mut s = Self {
            child: None,
            port: free_port(),
            dir: temp_dir("redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            password,
        };
        s.spawn();
        s
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, for signalling it (e.g. SIGSTOP to simulate a hung server).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is stopped").id()
    }

    /// Kills the server (SIGKILL) and waits for it to exit; data is lost (no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `redis-cli` against it and returns stdout (for tests that plant raw keys).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn spawn(&mut self) {
        let log = self.dir.join("redis.log");
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir.to_str().expect("utf-8 temp dir"),
            "--logfile",
            log.to_str().expect("utf-8 temp dir"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        self.child = Some(spawn_server(&args, &self.dir));
        wait_ready(self.port, self.password.as_deref(), &log);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_server(args: &[String], dir: &Path) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it (Debian: apt-get install -y redis-server)")
}

/// Polls PING (raw RESP, no client library) until `+PONG`, bounded by [`READY_TIMEOUT`].
fn wait_ready(port: u16, password: Option<&str>, log: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if ping(port, password) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("redis on port {port} not ready within {READY_TIMEOUT:?}; log:\n{log}");
}

fn ping(port: u16, password: Option<&str>) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut req = String::new();
    if let Some(p) = password {
        req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
    }
    req.push_str("*1\r\n$4\r\nPING\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(5).any(|w| w == b"+PONG") {
            return true;
        }
        if got.ends_with(b"\r\n") && got.starts_with(b"-") {
            return false;
        }
    }
    false
}

/// A Redis Cluster of `n` masters (no replicas) on free ports, created with `redis-cli --cluster`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) cluster-enabled servers, joins them and waits for `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli not found (Debian: apt-get install -y redis-tools)");
        assert!(out.status.success(), "cluster create failed: {out:?}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = nodes
                .iter()
                .all(|s| s.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The member servers.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// A master (optionally with one replica) plus one Sentinel monitoring it as `mymaster`.
pub struct RedisSentinel {
    /// The monitored master (after a failover: the demoted one).
    pub master: RedisServer,
    /// The replica, when started with one.
    pub replica: Option<RedisServer>,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisSentinel {
    /// Starts a master and a sentinel and waits until the sentinel reports the master.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Like [`RedisSentinel::start`] with a replica in sync, known to the sentinel, so
    /// [`RedisSentinel::failover`] can promote it.
    pub fn start_replicated() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(with_replica: bool) -> Self {
        let master = RedisServer::start();
        let replica = with_replica.then(|| {
            let r =
                RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
            wait_for("replica in sync", || {
                r.cli(&["info", "replication"])
                    .contains("master_link_status:up")
            });
            r
        });
        let port = free_port();
        let dir = temp_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 2000\n\
                 sentinel failover-timeout mymaster 10000\n",
                dir.display(),
                dir.join("sentinel.log").display(),
                master.port()
            ),
        )
        .expect("write sentinel.conf");
        let child = spawn_server(
            &[
                conf.to_str().expect("utf-8").to_string(),
                "--sentinel".into(),
            ],
            &dir,
        );
        let s = Self {
            master,
            replica,
            child: Some(child),
            port,
            dir,
        };
        wait_ready(port, None, &s.dir.join("sentinel.log"));
        let want = s.master.port().to_string();
        wait_for("sentinel sees the master", || {
            s.master_addr().contains(&want)
        });
        if let Some(r) = &s.replica {
            let rp = r.port().to_string();
            // Promotable = the sentinel has connected to it and read its INFO (link to the
            // master up, no "disconnected"/"s_down" flags); before that, a failover answers
            // NOGOODSLAVE.
            wait_for("sentinel can promote the replica", || {
                let out = s.sentinel_cli(&["sentinel", "replicas", "mymaster"]);
                let lines: Vec<&str> = out.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .copied()
                        .unwrap_or("")
                };
                field("port") == rp
                    && field("flags") == "slave"
                    && field("master-link-status") == "ok"
            });
        }
        s
    }

    /// `redis+sentinel://127.0.0.1:<sentinel port>/mymaster`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.port)
    }

    /// Forces a failover to the replica and waits until the sentinel names it as the master.
    pub fn failover(&self) {
        let replica = self.replica.as_ref().expect("started without a replica");
        let out = self.sentinel_cli(&["sentinel", "failover", "mymaster"]);
        assert!(out.contains("OK"), "sentinel failover: {out}");
        let want = replica.port().to_string();
        wait_for("failover to the replica", || {
            self.master_addr().contains(&want)
        });
    }

    fn master_addr(&self) -> String {
        self.sentinel_cli(&["sentinel", "get-master-addr-by-name", "mymaster"])
    }

    fn sentinel_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// Polls `cond` every 50 ms until true, failing after [`READY_TIMEOUT`] (doubled: failovers).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + 2 * READY_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
