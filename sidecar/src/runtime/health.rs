//! Health of what the sidecar depends on besides the store (whose health its guard keeps, see
//! `store::guard`): the app's port, and the sidecar's own liveness. The app's readiness is a TCP connect every second: cheap, and enough to keep traffic off a pod
//! whose app is not listening yet or any more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the app accepts TCP connections, refreshed every second.
pub struct AppProbe {
    up: AtomicBool,
}

impl AppProbe {
    /// Start probing `addr`; the first probe runs at once.
    pub fn spawn(addr: SocketAddr, metrics: Arc<Metrics>, stop: CancellationToken) -> Arc<Self> {
        let probe = Arc::new(AppProbe {
            up: AtomicBool::new(false),
        });
        let p = probe.clone();
        tokio::spawn(async move {
            loop {
                let up = matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect(addr)
                    )
                    .await,
                    Ok(Ok(_))
                );
                if p.up.swap(up, Ordering::Relaxed) != up {
                    metrics.app_up.set(i64::from(up));
                    tracing::info!(app = %addr, up, "app port readiness changed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        probe
    }

    /// Whether the last probe connected.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// How often the liveness heartbeat beats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How old the last beat may be before `/live` fails. Generous on purpose: a loaded node can
/// delay a timer by seconds, and restarting a pod that is only slow loses its streams' capture;
/// only a runtime or a shared lock that is stuck for this long is worth a restart.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(20);

/// Proof that the runtime still runs timers and the shared state's locks can be taken: a task
/// beats every [`HEARTBEAT_EVERY`] after visiting those locks, and `/live` fails once the last
/// beat is older than [`HEARTBEAT_STALE`]. A deadlocked mutex or a starved runtime stops the
/// beats while the admin listener may still answer, so the kubelet restarts the pod instead of
/// leaving it up doing nothing.
pub struct Heartbeat {
    origin: tokio::time::Instant,
    /// Milliseconds since `origin` of the last beat.
    last_ms: std::sync::atomic::AtomicU64,
    stale_after: Duration,
}

impl Heartbeat {
    /// A heartbeat that counts as beating now.
    pub fn new(stale_after: Duration) -> Arc<Self> {
        Arc::new(Heartbeat {
            origin: tokio::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            stale_after,
        })
    }

    /// Record a beat now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Whether the last beat is recent enough.
    pub fn is_fresh(&self) -> bool {
        self.age() <= self.stale_after
    }

    /// Beat every `every` until `stop`, after running `visit` (which takes the shared locks: if
    /// one of them is stuck, so are the beats).
    pub fn spawn(
        self: &Arc<Self>,
        every: Duration,
        visit: impl Fn() + Send + 'static,
        stop: CancellationToken,
    ) {
        let hb = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                visit();
                hb.beat();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_goes_stale_without_beats_and_recovers_with_one() {
        let hb = Heartbeat::new(Duration::from_secs(20));
        assert!(hb.is_fresh());
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(hb.is_fresh(), "within the threshold");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!hb.is_fresh(), "stale after the threshold");
        hb.beat();
        assert!(hb.is_fresh());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_lock_stops_the_beats() {
        let hb = Heartbeat::new(Duration::from_millis(300));
        let lock = Arc::new(std::sync::Mutex::new(()));
        let visited = lock.clone();
        let stop = CancellationToken::new();
        hb.spawn(
            Duration::from_millis(20),
            move || drop(visited.lock().unwrap_or_else(|e| e.into_inner())),
            stop.clone(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(hb.is_fresh(), "beating");
        let held = lock.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while hb.is_fresh() {
            assert!(std::time::Instant::now() < deadline, "never went stale");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !hb.is_fresh() {
            assert!(std::time::Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }
}
