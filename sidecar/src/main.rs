//! `ssekeeper-sidecar`: parse the contract's flags, open the store, serve, and follow the
//! kubelet's termination order on SIGTERM; exit 0 once every session is handed over.
//!
//! `ssekeeper-sidecar prestop` is the kubelet's `exec` preStop hook: the same binary (the image
//! has no shell), asking the running sidecar over its lifecycle socket to flip readiness and hold.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use ssekeeper_sidecar::config::Settings;
use ssekeeper_sidecar::contract::{PRESTOP_SUBCOMMAND, PrestopArgs, SidecarArgs};
use ssekeeper_sidecar::{lifecycle, server, store, telemetry};
use tokio::signal::unix::{SignalKind, signal};

/// jemalloc instead of glibc's malloc: the data path allocates and frees small buffers per event
/// on several threads, where glibc's malloc and free were 39% of the CPU at 100 B events (profiles
/// in tests/bench/README.md); mimalloc was faster there but slower at 1 KiB and larger per stream.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // The sidecar's own flags all start with `--`, so a first argument `prestop` is unambiguous.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == PRESTOP_SUBCOMMAND)
    {
        return prestop(PrestopArgs::parse_from(std::env::args_os().skip(1)));
    }
    let args = SidecarArgs::parse();
    telemetry::init(args.log_format);
    if let Err(e) = ssekeeper_sidecar::contract::validate_broadcast(&args.broadcast, args.store) {
        tracing::error!(error = %e, "invalid --broadcast");
        eprintln!("ssekeeper-sidecar: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = ssekeeper_sidecar::contract::validate_rebalance(args.rebalance, args.store) {
        tracing::error!(error = %e, "invalid --rebalance");
        eprintln!("ssekeeper-sidecar: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// The preStop hook: one line on stdout when the hold is over (exit 0), or the reason on stderr
/// (exit 1), which the kubelet records in the pod's events.
fn prestop(args: PrestopArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssekeeper-sidecar prestop: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(lifecycle::run_prestop(&args)) {
        Ok(answer) => {
            println!("ssekeeper-sidecar prestop: {answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ssekeeper-sidecar prestop: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: SidecarArgs) -> ExitCode {
    let store = match store::open(&args).await {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the session store");
            return ExitCode::from(2);
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let settings = Settings::from_args(&args);
    let deadline = settings.exit_deadline();
    let running = match server::start(settings, store).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind the listeners");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    running.terminate();
    tokio::select! {
        r = tokio::time::timeout(deadline, running.wait()) => {
            if r.is_err() {
                tracing::warn!("drain did not finish before the deadline: exiting anyway");
            }
        }
        _ = int.recv() => tracing::warn!("second SIGINT: exiting without finishing the drain"),
    }
    ExitCode::SUCCESS
}
