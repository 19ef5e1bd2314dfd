//! `ssekeeper-operator`: reconciles SseServices. Runs the controller only while it holds the
//! leader Lease (so the chart can run two replicas), serves metrics and health, and shuts down
//! gracefully on SIGTERM/SIGINT, releasing the Lease.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::Client;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use ssekeeper_operator::config::OperatorArgs;
use ssekeeper_operator::controller::{self, Context};
use ssekeeper_operator::metrics::Metrics;
use ssekeeper_operator::{leader, selftest, server, telemetry};
use tokio::sync::watch;
use tracing::info;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `ssekeeper-operator selftest --url ...`: what `helm test` runs (see the selftest module).
    if std::env::args().nth(1).as_deref() == Some("selftest") {
        let args = selftest::SelftestArgs::parse_from(std::env::args().skip(1));
        if let Err(e) = selftest::run(args).await {
            eprintln!("selftest failed: {e}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let args = OperatorArgs::parse();
    if let Err(message) = args.check() {
        use clap::CommandFactory as _;
        OperatorArgs::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    telemetry::init(args.log_format);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(server::serve(
        args.metrics_addr,
        Arc::new(registry),
        leader::stopped(stop_rx.clone()),
    ));

    let client = Client::try_default().await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(telemetry::default_identity);
    let reporter = Reporter {
        controller: "ssekeeper-operator".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        reporter,
        metrics.clone(),
        args.settings(),
    ));
    info!(%identity, leader_election = args.leader_election, "starting");

    if args.leader_election {
        let lease = leader::LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
            duration_seconds: args.lease_duration_seconds,
            renew_before_seconds: args.lease_renew_before_seconds,
            owner_deployment: args.lease_owner_deployment.clone(),
        };
        leader::run_while_leader(client, lease, metrics, stop_rx, move |lost| {
            controller::run(ctx.clone(), lost)
        })
        .await?;
    } else {
        metrics.leader.set(1);
        controller::run(ctx, leader::stopped(stop_rx)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    info!("stopped");
    Ok(())
}
