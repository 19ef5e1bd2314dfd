//! `sse-crowd`: a crowd of browser-like chat clients for `make demo`. They stream the chat room
//! through a Service's ClusterIP (kube-proxy), reconnect with `Last-Event-ID` as an `EventSource`
//! does, and report per group how many events arrived, were lost and were duplicated.
//!
//! It runs until SIGINT/SIGTERM (or `--max-seconds`); then it reads the room's last sequence
//! number from Redis, waits for every client to catch up to it, and prints the summary. The exit
//! code is 0 only if no client lost or repeated an event.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Parser;
use ssekeeper_tests::demo::events::room_tail;
use ssekeeper_tests::scenario::{ChatCrowd, ChatSummary};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "sse-crowd",
    about = "Browser-like SSE chat clients with Last-Event-ID resume, and their verdict"
)]
struct Cli {
    /// Where to connect: the Service's ClusterIP and port.
    #[arg(long)]
    target: SocketAddr,
    /// The chat room's Redis (to read the last published sequence number at the end).
    #[arg(long)]
    redis_url: String,
    /// Number of clients.
    #[arg(long, default_value_t = 60)]
    clients: usize,
    /// Clients are reported in this many groups (client i is in group i % groups).
    #[arg(long, default_value_t = 3)]
    groups: usize,
    /// Source addresses, comma separated (client i binds the i-th modulo their number), so
    /// ClientIP affinity spreads the clients over the pods.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_seconds: u64,
    /// Stop by itself after this long.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
}

fn group_line(name: &str, s: &ChatSummary) -> String {
    format!(
        "{name}: clients {}, events received {}, lost {}, duplicated {}, reconnects {}",
        s.clients.len(),
        s.events(),
        s.missing(),
        s.duplicates(),
        s.reconnects()
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let groups = cli.groups.max(1);
    let ips = cli.source_ips.clone();
    let crowd = ChatCrowd::spawn(cli.target, cli.clients, |i, mut c| {
        c.source_ip = (!ips.is_empty()).then(|| ips[i % ips.len()]);
        c.time_limit = Duration::from_secs(cli.max_seconds + 120);
        c.max_connects = 1_000;
        c
    });
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("sse-crowd: cannot install signal handlers");
        return std::process::ExitCode::from(2);
    };
    let started = Instant::now();
    if !crowd.wait_all_receiving(Duration::from_secs(60)).await {
        eprintln!("sse-crowd: not every client received an event within 60 s");
    }
    println!(
        "sse-crowd: {} clients streaming through {} ({} source addresses)",
        cli.clients,
        cli.target,
        ips.len().max(1)
    );
    let deadline = tokio::time::sleep(Duration::from_secs(cli.max_seconds));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(cli.progress_seconds.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut deadline => break,
            _ = tick.tick() => println!("sse-crowd: {:>4.0} s, {}", started.elapsed().as_secs_f64(), crowd.progress()),
        }
    }
    let last = match room_tail(&cli.redis_url).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("sse-crowd: cannot read the room's last sequence number: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let caught_up = crowd.wait_caught_up(last, Duration::from_secs(30)).await;
    let summary = crowd.finish(last).await;
    let all = group_line("all", &summary);
    let (missing, duplicates, worst) = (summary.missing(), summary.duplicates(), summary.worst(5));
    let mut parts: Vec<Vec<_>> = (0..groups).map(|_| Vec::new()).collect();
    for (i, c) in summary.clients.into_iter().enumerate() {
        parts[i % groups].push(c);
    }
    for (g, clients) in parts.into_iter().enumerate() {
        println!(
            "{}",
            group_line(&format!("group {}", g + 1), &ChatSummary { clients })
        );
    }
    println!("{all}");
    println!("sse-crowd: last sequence number {last}, every client caught up: {caught_up}");
    if missing == 0 && duplicates == 0 && caught_up {
        std::process::ExitCode::SUCCESS
    } else {
        println!("{worst}");
        std::process::ExitCode::from(1)
    }
}
