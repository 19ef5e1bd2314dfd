//! Logging setup and process signals.

use ssekeeper_contract::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber: JSON for clusters, pretty for terminals; `RUST_LOG` filters.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Resolves on SIGTERM (the kubelet) or SIGINT (a terminal).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A Lease identity when none is given: the host name plus a random suffix, unique per process.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ssekeeper".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}
