//! Where the programs under test are. Tests never build anything: `make test` builds the sidecar
//! before running them, and a missing binary is a clear failure naming the command to run.

use std::path::{Path, PathBuf};

use ssekeeper_testkit::process::find_program;

use super::HarnessError;

/// Name of the sidecar's binary in the cargo target directory.
pub const SIDECAR_BIN: &str = "ssekeeper-sidecar";
/// Overrides where the sidecar binary is looked for.
pub const SIDECAR_BIN_ENV: &str = "SSEKEEPER_SIDECAR_BIN";

/// The programs a data-plane test runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The demo app (and publisher).
    pub demo_app: PathBuf,
    /// The sidecar, when built.
    pub sidecar: Option<PathBuf>,
    /// HAProxy.
    pub haproxy: PathBuf,
    /// redis-server.
    pub redis_server: PathBuf,
}

impl Binaries {
    /// Locate everything, given the demo app's path (`env!("CARGO_BIN_EXE_demo-app")` in an
    /// integration test). The sidecar is looked for beside it, in the same target profile.
    pub fn locate(demo_app: &str) -> Result<Self, HarnessError> {
        let demo_app = PathBuf::from(demo_app);
        let sidecar = std::env::var_os(SIDECAR_BIN_ENV)
            .map(PathBuf::from)
            .or_else(|| demo_app.parent().map(|d| d.join(SIDECAR_BIN)))
            .filter(|p| p.is_file());
        let missing = |what: &str, how: &str| {
            HarnessError::Missing(format!("{what} not found; install it: {how}"))
        };
        Ok(Self {
            demo_app,
            sidecar,
            haproxy: find_program("haproxy")
                .ok_or_else(|| missing("haproxy", "apt-get install -y haproxy"))?,
            redis_server: find_program("redis-server")
                .ok_or_else(|| missing("redis-server", "apt-get install -y redis-server"))?,
        })
    }

    /// The sidecar, or an error telling how to build it.
    pub fn sidecar(&self) -> Result<&Path, HarnessError> {
        self.sidecar.as_deref().ok_or_else(|| {
            HarnessError::Missing(format!(
                "{SIDECAR_BIN} not built next to {}; run `cargo build -p ssekeeper-sidecar` \
                 (same profile) first, or set {SIDECAR_BIN_ENV}",
                self.demo_app.display()
            ))
        })
    }
}
