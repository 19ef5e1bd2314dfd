//! The bounded set of dedicated connections that blocking tails (`XREAD BLOCK`) run on.
//!
//! Why a pool and not the shared connection: see `conn.rs`. Why bounded: each blocked tail holds
//! one server connection for up to its block time, and every replica of every service shares the
//! same Redis `maxclients` (10 000 by default). At most `max` tails block at once per store; a
//! tail that finds no free slot within its block time falls back to one ordinary read, so it
//! returns late but never loses anything. Up to `idle_max` connections are kept for reuse, so a
//! steady set of tails does not reconnect (and, with TLS, re-handshake) on every wait.

use std::sync::{Mutex, PoisonError};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::io_thread::IoConn;

/// Slots for blocking reads plus the idle connections kept for them.
pub(crate) struct BlockingPool {
    permits: Semaphore,
    max: usize,
    idle: Mutex<Vec<IoConn>>,
    idle_max: usize,
}

impl BlockingPool {
    /// At most `max` blocking reads at once (at least 1), keeping up to `idle_max` connections.
    pub(crate) fn new(max: usize, idle_max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Semaphore::new(max),
            max,
            idle: Mutex::new(Vec::new()),
            idle_max: idle_max.min(max),
        }
    }

    /// A slot, waiting until `deadline` at most.
    pub(crate) async fn slot(&self, deadline: Instant) -> Option<SemaphorePermit<'_>> {
        tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .ok()?
            .ok()
    }

    /// A kept connection, if any.
    pub(crate) fn take_idle(&self) -> Option<IoConn> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Keeps a healthy connection for the next tail, or closes it if enough are kept.
    pub(crate) fn put_back(&self, conn: IoConn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.idle_max {
            idle.push(conn);
        }
    }

    /// Closes every kept connection (after one turned out dead, the others likely are too).
    pub(crate) fn clear_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Tails blocked right now (for metrics).
    pub(crate) fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Connections kept idle right now (for metrics).
    pub(crate) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
