//! Real Redis servers for tests: `redis-server` on a free loopback port, in memory only, its
//! files and log in a directory of its own, killed on drop (and by the kernel should the test
//! process die first). Every wait is bounded; a server that does not come up fails with its log.
//!
//! One server can be stopped and started again on the same port (a store outage); there are also
//! a Redis Cluster ([`RedisCluster`]) and a master watched by a Sentinel ([`RedisSentinel`]).
//! Needs `redis-server` (on `PATH` or in an sbin directory) and `redis-cli` (Debian:
//! `redis-server`, `redis-tools`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::eventually::{Patience, eventually_true, poll};
use crate::ports::free_port;
use crate::process::{LaunchError, Proc, find_program};
use crate::tempdir::TestDir;

/// How long a starting server gets to answer PING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The waits on a cluster's state: each look runs `redis-cli`.
const CLUSTER_STATE: Patience = Patience::within(READY_TIMEOUT).every(Duration::from_millis(50));
/// The waits on replication and the sentinel, failovers included: twice as long.
const SENTINEL_STATE: Patience = Patience::within(Duration::from_secs(2 * READY_TIMEOUT.as_secs()))
    .every(Duration::from_millis(50));

/// How to start a [`RedisServer`]: defaults suit a test on its own.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    name: String,
    program: PathBuf,
    dir: Option<PathBuf>,
    args: Vec<String>,
}

impl RedisOptions {
    /// A server named `name` (in reports and log names), `redis-server` found on `PATH` or in
    /// an sbin directory, files in a scratch directory of its own.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            program: find_program("redis-server").unwrap_or_else(|| "redis-server".into()),
            dir: None,
            args: Vec::new(),
        }
    }

    /// Run this `redis-server` binary.
    pub fn program(mut self, program: &Path) -> Self {
        self.program = program.to_path_buf();
        self
    }

    /// Keep the files under `dir/<name>`, left for the owner of `dir` (a test's scratch
    /// directory, which keeps them when the test fails).
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Extra `--option value` arguments (`--requirepass`, `--cluster-enabled` ...).
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }
}

/// One `redis-server` process (or none, while stopped: the port is kept).
#[derive(Debug)]
pub struct RedisServer {
    opts: RedisOptions,
    dir: PathBuf,
    port: u16,
    password: Option<String>,
    proc: Option<Proc>,
    starts: u32,
    // Last, so the process is gone before its directory is removed.
    _scratch: Option<TestDir>,
}

impl RedisServer {
    /// A plain server on a free port; panics (with its log) if it does not come up.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server with extra `--option value` arguments (e.g. `--requirepass`); panics (with its
    /// log) if it does not come up.
    pub async fn start_with(extra: &[&str]) -> Self {
        match Self::launch(RedisOptions::new("redis").args(extra)).await {
            Ok(s) => s,
            Err(e) => panic!("{e}{}", log_of(&e)),
        }
    }

    /// Start one as `opts` say, for callers that report failures themselves.
    pub async fn launch(opts: RedisOptions) -> Result<Self, LaunchError> {
        let (dir, scratch) = match &opts.dir {
            Some(parent) => (parent.join(&opts.name), None),
            None => {
                let scratch = TestDir::new(&opts.name).map_err(|e| spawn_error(&opts, e))?;
                (scratch.path().to_path_buf(), Some(scratch))
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| spawn_error(&opts, e))?;
        let password = opts
            .args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| opts.args.get(i + 1))
            .cloned();
        let mut s = Self {
            port: free_port(),
            opts,
            dir,
            password,
            proc: None,
            starts: 0,
            _scratch: scratch,
        };
        s.up().await?;
        Ok(s)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The process id, for signalling it (e.g. SIGSTOP to simulate a hung server).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("server is stopped").pid()
    }

    /// Start it again (same port) after [`RedisServer::stop`]; a no-op while it runs.
    pub async fn up(&mut self) -> Result<(), LaunchError> {
        if self.proc.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let mut args: Vec<String> = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &dir,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.opts.args.iter().cloned());
        let log = self.dir.join(format!("redis-{}.log", self.starts));
        let proc = Proc::spawn(&self.opts.name, &self.opts.program, &args, &[], &log)?;
        self.proc = Some(proc);
        await_pong(&self.opts.name, self.port, self.password.as_deref(), &log).await
    }

    /// Kill it (an outage: no shutdown courtesy, and nothing persisted).
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    /// Stop it and start it again on the same port (empty); panics if it does not come back.
    pub async fn restart(&mut self) {
        self.stop().await;
        if let Err(e) = self.up().await {
            panic!("{e}{}", log_of(&e));
        }
    }

    /// Whether it answers PING right now.
    pub async fn ping(&self) -> bool {
        ping(self.port, self.password.as_deref()).await
    }

    /// Run `redis-cli` against it and return stdout, trimmed (for tests that plant or inspect
    /// raw keys); panics when `redis-cli` fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = redis_cli(self.port);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn spawn_error(opts: &RedisOptions, source: std::io::Error) -> LaunchError {
    LaunchError::Spawn {
        what: format!("{} ({})", opts.name, opts.program.display()),
        source,
    }
}

/// The log a failed start names, to put in the panic message.
fn log_of(e: &LaunchError) -> String {
    match e {
        LaunchError::NotReady { log, .. } => {
            format!(
                "; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        }
        LaunchError::Spawn { .. } => {
            "; install it (Debian: apt-get install -y redis-server redis-tools)".into()
        }
    }
}

fn redis_cli(port: u16) -> Command {
    let mut cmd = Command::new(find_program("redis-cli").unwrap_or_else(|| "redis-cli".into()));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    cmd
}

/// Wait (bounded by [`READY_TIMEOUT`]) until the server on `port` answers PING.
async fn await_pong(
    what: &str,
    port: u16,
    password: Option<&str>,
    log: &Path,
) -> Result<(), LaunchError> {
    match poll(READY_TIMEOUT, || async {
        ping(port, password).await.then_some(())
    })
    .await
    {
        Some(()) => Ok(()),
        None => Err(LaunchError::NotReady {
            what: format!("{what} on port {port}"),
            timeout: READY_TIMEOUT,
            log: log.display().to_string(),
        }),
    }
}

/// One PING in raw RESP (after AUTH when there is a password), no client library; `false` on
/// any error or after half a second.
async fn ping(port: u16, password: Option<&str>) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .ok()?;
        let mut req = String::new();
        if let Some(p) = password {
            req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
        }
        req.push_str("*1\r\n$4\r\nPING\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return Some(false);
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(5).any(|w| w == b"+PONG") {
                return Some(true);
            }
            if got.starts_with(b"-") && got.ends_with(b"\r\n") {
                return Some(false);
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A Redis Cluster of `n` masters (no replicas) on free ports, created with `redis-cli --cluster`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) cluster-enabled servers, joins them and waits for `cluster_state:ok`.
    pub async fn start(n: usize) -> Self {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let out = Command::new(find_program("redis-cli").unwrap_or_else(|| "redis-cli".into()))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli not found (Debian: apt-get install -y redis-tools)");
        assert!(out.status.success(), "cluster create failed: {out:?}");
        eventually_true("cluster_state:ok on every node", CLUSTER_STATE, || {
            nodes
                .iter()
                .all(|s| s.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        })
        .await;
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
    port: u16,
    _proc: Proc,
    // Last, so the sentinel is gone before its directory is removed.
    _dir: TestDir,
}

impl RedisSentinel {
    /// Starts a master and a sentinel and waits until the sentinel reports the master.
    pub async fn start() -> Self {
        Self::start_inner(false).await
    }

    /// Like [`RedisSentinel::start`] with a replica in sync, known to the sentinel, so
    /// [`RedisSentinel::failover`] can promote it.
    pub async fn start_replicated() -> Self {
        Self::start_inner(true).await
    }

    async fn start_inner(with_replica: bool) -> Self {
        let master = RedisServer::start().await;
        let replica = match with_replica {
            false => None,
            true => {
                let port = master.port().to_string();
                let r = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
                eventually_true("replica in sync", SENTINEL_STATE, || {
                    r.cli(&["info", "replication"])
                        .contains("master_link_status:up")
                })
                .await;
                Some(r)
            }
        };
        let port = free_port();
        let dir = TestDir::new("sentinel").expect("create temp dir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 2000\n\
                 sentinel failover-timeout mymaster 10000\n",
                dir.path().display(),
                master.port()
            ),
        )
        .expect("write sentinel.conf");
        let log = dir.path().join("sentinel.log");
        let program = find_program("redis-server").unwrap_or_else(|| "redis-server".into());
        let args = [conf.display().to_string(), "--sentinel".into()];
        let proc = Proc::spawn("sentinel", &program, &args, &[], &log)
            .unwrap_or_else(|e| panic!("{e}{}", log_of(&e)));
        if let Err(e) = await_pong("sentinel", port, None, &log).await {
            panic!("{e}{}", log_of(&e));
        }
        let s = Self {
            master,
            replica,
            port,
            _proc: proc,
            _dir: dir,
        };
        let want = s.master.port().to_string();
        eventually_true("sentinel sees the master", SENTINEL_STATE, || {
            s.master_addr().contains(&want)
        })
        .await;
        if let Some(r) = &s.replica {
            let rp = r.port().to_string();
            // Promotable = the sentinel has connected to it and read its INFO (link to the
            // master up, no "disconnected"/"s_down" flags); before that, a failover answers
            // NOGOODSLAVE.
            eventually_true("sentinel can promote the replica", SENTINEL_STATE, || {
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
            })
            .await;
        }
        s
    }

    /// `redis+sentinel://127.0.0.1:<sentinel port>/mymaster`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.port)
    }

    /// Forces a failover to the replica and waits until the sentinel names it as the master.
    pub async fn failover(&self) {
        let replica = self.replica.as_ref().expect("started without a replica");
        let out = self.sentinel_cli(&["sentinel", "failover", "mymaster"]);
        assert!(out.contains("OK"), "sentinel failover: {out}");
        let want = replica.port().to_string();
        eventually_true("failover to the replica", SENTINEL_STATE, || {
            self.master_addr().contains(&want)
        })
        .await;
    }

    fn master_addr(&self) -> String {
        self.sentinel_cli(&["sentinel", "get-master-addr-by-name", "mymaster"])
    }

    fn sentinel_cli(&self, args: &[&str]) -> String {
        let out = redis_cli(self.port)
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_server_comes_back_empty_on_its_port() {
        if find_program("redis-server").is_none() {
            eprintln!("redis-server not installed; skipped");
            return;
        }
        let mut s = RedisServer::start_with(&["--requirepass", "pw"]).await;
        let port = s.port();
        s.cli(&["set", "k", "v"]);
        assert_eq!(s.cli(&["get", "k"]), "v");
        s.stop().await;
        assert!(!s.ping().await);
        s.restart().await;
        assert_eq!(s.port(), port);
        assert!(s.ping().await);
        assert_eq!(s.cli(&["exists", "k"]), "0");
    }
}
