//! The official SDKs as clients and servers (`tests/clients/`): the `openai` and `mcp` Python
//! packages pinned in `requirements.txt`, installed once by `setup.sh` into a venv cached outside
//! the repo.

use std::path::PathBuf;
use std::process::Stdio;

/// The interpreter of the cached venv with the SDKs (created on first use; panics with the
/// setup script's output when it cannot be).
pub fn python() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(script("setup.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "tests/clients/setup.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A file of `tests/clients/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}
