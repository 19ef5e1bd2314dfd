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
