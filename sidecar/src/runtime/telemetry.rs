//! Logging setup: JSON lines in clusters, readable text in terminals, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::contract::LogFormat;

/// Install the global subscriber once; later calls (tests starting several sidecars) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
