//! Events per second through one sidecar (parse, re-id, record into the memory store, forward)
//! against the same app read directly. Ignored by default (a measurement, not a check of
//! behaviour); run with `cargo test --release -p ssekeeper-sidecar --test throughput -- --ignored
//! --nocapture`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{args, memory_store, start_sidecar};
use ssekeeper_testkit::app::{Feeds, TestApp};
use ssekeeper_testkit::client::{Log, Stream};

async fn drain_firehose(addr: SocketAddr, size: usize) -> (usize, Duration) {
    let t = Instant::now();
    let mut s = Stream::open(addr, &format!("/firehose?size={size}"), None).await;
    let mut log = Log::default();
    s.read_to_end(&mut log, Duration::from_secs(120)).await;
    (log.events.len(), t.elapsed())
}

#[tokio::test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn events_per_second_through_the_sidecar() {
    let app = TestApp::start("app", Arc::new(Feeds::default())).await;
    let sc = start_sidecar(args(app.addr, "pod-a"), memory_store()).await;
    for size in [100, 1000] {
        let (n_direct, t_direct) = drain_firehose(app.addr, size).await;
        let (n_proxy, t_proxy) = drain_firehose(sc.sse, size).await;
        assert_eq!(n_direct, n_proxy, "every event arrives");
        println!(
            "{size:>5} B events: direct {:>8.0} ev/s, through the sidecar {:>8.0} ev/s ({n_proxy} events)",
            n_direct as f64 / t_direct.as_secs_f64(),
            n_proxy as f64 / t_proxy.as_secs_f64(),
        );
    }
    println!(
        "recorded {} entries, unrecorded {}",
        sc.shared.metrics.events_recorded.get(),
        sc.shared.metrics.events_unrecorded.get()
    );
}
