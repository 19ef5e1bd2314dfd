//! The official SDKs as clients and servers (`tests/clients/`): the `openai` and `mcp` Python
//! packages pinned in `requirements.txt` and the TypeScript `@modelcontextprotocol/sdk` pinned in
//! `package-lock.json`, installed once by `setup.sh` into caches outside the repo.

use std::path::PathBuf;
use std::process::Stdio;

/// The interpreter of the cached venv with the Python SDKs (created on first use; panics with
/// the setup script's output when it cannot be).
pub fn python() -> PathBuf {
    setup("python")
}

/// The TypeScript MCP client (`mcp_calls.mjs`) beside its cached `node_modules` with the
/// official `@modelcontextprotocol/sdk`, to run with `node`.
pub fn node_mcp_calls() -> PathBuf {
    setup("node")
}

fn setup(what: &str) -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(script("setup.sh"))
        .arg(what)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "tests/clients/setup.sh {what} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A file of `tests/clients/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// A client script of `tests/clients/` running: it prints one line when its work is under way
/// (`ready`, `streaming`), then one JSON line with what it saw. Killed if dropped.
pub struct ClientRun {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ClientRun {
    /// Start `program args…` with its stdout read line by line.
    pub fn spawn(program: &std::path::Path, args: &[String]) -> Self {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        ClientRun { child, lines }
    }

    /// Wait (at most `within`) for the line saying the work is under way.
    pub async fn expect_line(&mut self, want: &str, within: std::time::Duration) {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within {within:?}"))
            .expect("stdout readable");
        assert_eq!(line.as_deref(), Some(want), "the client's first line");
    }

    /// The JSON report (at most `within`), once the script exits.
    pub async fn report<T: serde::de::DeserializeOwned>(
        mut self,
        within: std::time::Duration,
    ) -> T {
        let json = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no report within {within:?}"))
            .expect("stdout readable")
            .expect("a report line");
        let status = self.child.wait().await.expect("the client exits");
        assert!(status.success(), "the client script failed: {status}");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("the client's JSON ({e}): {json}"))
    }
}
