//! The demo SSE app (`serve`) and the chat room's publisher (`publish`), in one binary so the
//! harness has a single thing to find. See `ssekeeper_tests::demo` for what each endpoint does.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ssekeeper_tests::demo::{events, mcp, publisher, server};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "demo-app",
    about = "Demo SSE app for the ssekeeper data-plane tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve /events, /sse + /messages, /answer, /healthz and /testing/*.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Redis holding the chat room's stream (without it /events answers 503).
        #[arg(long, env = "DEMO_REDIS_URL")]
        redis_url: Option<String>,
        /// Name shown in payloads.
        #[arg(long, env = "POD_NAME", default_value = "demo")]
        pod_name: String,
    },
    /// Append the chat room's global sequence to Redis at a fixed rate.
    Publish {
        /// Redis holding the chat room's stream.
        #[arg(long, env = "DEMO_REDIS_URL")]
        redis_url: String,
        /// Entries per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Stop after this many entries.
        #[arg(long)]
        count: Option<u64>,
    },
    /// One HTTP request (as a hostile neighbour pod would send): prints `status <code>` and the
    /// body's first line. The images have no shell or curl; the node tests use this.
    Fetch {
        /// `IP:port` to connect to.
        target: SocketAddr,
        /// Path (and query).
        path: String,
        /// Method.
        #[arg(long, default_value = "GET")]
        method: http::Method,
    },
}

/// Cancelled on the first SIGTERM or SIGINT.
fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        t.cancel();
    });
    Ok(token)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let shutdown = shutdown_on_signal()?;
    match Cli::parse().cmd {
        Cmd::Serve {
            listen,
            redis_url,
            pod_name,
        } => {
            let hub = match redis_url {
                Some(url) => Some(events::Hub::start(&url, shutdown.clone()).await?),
                None => None,
            };
            let state = Arc::new(server::AppState {
                pod: pod_name,
                hub,
                sessions: mcp::Sessions::default(),
                shutdown: shutdown.clone(),
            });
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(%listen, "demo app serving");
            let sessions = state.sessions.clone();
            let t = shutdown.clone();
            tokio::spawn(async move {
                t.cancelled().await;
                sessions.clear();
            });
            server::serve(listener, state).await;
            tracing::info!("demo app stopped");
        }
        Cmd::Publish {
            redis_url,
            rate,
            count,
        } => {
            let last = publisher::run(&redis_url, rate, count, shutdown).await?;
            tracing::info!(last, "publisher stopped");
        }
        Cmd::Fetch {
            target,
            path,
            method,
        } => {
            let reply = ssekeeper_testkit::client::request(
                target,
                None,
                method,
                &path,
                &[],
                bytes::Bytes::new(),
                std::time::Duration::from_secs(10),
                64 * 1024,
            )
            .await?;
            let body = String::from_utf8_lossy(&reply.body);
            println!("status {}", reply.status.as_u16());
            println!("{}", body.lines().next().unwrap_or(""));
        }
    }
    Ok(())
}
