//! A real `redis-server` on a free loopback port, in memory only, that a test can stop and start
//! again on the same port (a store outage).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::HarnessError;
use super::ports::free_port;
use super::process::Proc;

/// How long a starting Redis gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One Redis server.
#[derive(Debug)]
pub struct RedisServer {
    name: String,
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
    starts: u32,
}

impl RedisServer {
    /// Start one named `name` with its files under `dir`.
    pub async fn start(program: &Path, dir: &Path, name: &str) -> Result<Self, HarnessError> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut r = Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            port: free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
            dir,
            proc: None,
            starts: 0,
        };
        r.up().await?;
        Ok(r)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Start it again (same port) after [`RedisServer::stop`]; a no-op when running.
    pub async fn up(&mut self) -> Result<(), HarnessError> {
        if self.proc.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
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
            &self.dir.display().to_string(),
            "--maxclients",
            "4000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.join(format!("redis-{}.log", self.starts));
        let proc = Proc::spawn(&self.name, &self.program, &args, &[], &log)?;
        self.proc = Some(proc);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Err(HarnessError::NotReady {
            what: self.name.clone(),
            timeout: READY_TIMEOUT,
            log: log.display().to_string(),
        })
    }

    /// Kill it (an outage: no shutdown courtesy, and nothing persisted).
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    /// Whether it answers PING right now.
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(self.addr()).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        tokio::time::timeout(Duration::from_millis(300), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }
}
