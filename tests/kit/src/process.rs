//! A child process with its output in a log file, signalled by pid, and never leaked: it is
//! killed and reaped when dropped, and the kernel kills it if the test process dies first.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Why a process could not be had: it did not start, or it started and never became ready.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was being started.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A process started but never became ready.
    #[error("{what} not ready within {timeout:?} (log: {log})")]
    NotReady {
        /// What was being started.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// Where its output went.
        log: String,
    },
}

/// `name` on `PATH` or in the sbin directories Debian installs daemons into (`redis-server`,
/// `haproxy`), which a plain user's `PATH` often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One running process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: i32,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Start `program args...` with `envs`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
    ) -> Result<Self, LaunchError> {
        let spawn_err = |source| LaunchError::Spawn {
            what: format!("{name} ({})", program.display()),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        Ok(Self {
            name: name.to_string(),
            pid,
            child,
            log: log.to_path_buf(),
            exit: None,
        })
    }

    /// The process id (for signals a test sends itself, e.g. SIGSTOP to simulate a hang).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The name given at spawn (for reports).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its output goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Send `sig` unless it already exited (its pid cannot be reused before we reap it).
    pub fn signal(&mut self, sig: i32) {
        if self.try_exit().is_none() {
            // SAFETY: kill(2) on our own unreaped child's pid.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    /// SIGTERM.
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL.
    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait for it to exit, for at most `timeout`.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_exit() {
            return Some(s);
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()?;
        self.exit = Some(status);
        Some(status)
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        self.sigkill();
        self.wait_timeout(Duration::from_secs(5)).await
    }

    /// The last `n` lines of its log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    /// SIGKILL and reap right here (bounded), so no zombie outlives the test even when the
    /// runtime that would have reaped it is shutting down.
    fn drop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        self.sigkill();
        for _ in 0..200 {
            if self.try_exit().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
