//! Which client connections are taken, decided at accept: a bound on all of them and one per
//! source address.
//!
//! Every connection costs memory (hyper's buffers, a request head up to `--max-header-bytes`)
//! and two descriptors (the client's and the app's), whether it carries a stream or only a
//! header trickling in. Without a bound one client holding thousands of unfinished requests
//! exhausts the sidecar's memory or descriptors for everyone, probes included. Over a bound the
//! connection gets a `503` written straight into the socket buffer (no task, no read) and is
//! closed; the admin port has its own listener and descriptors to spare, so `/live` and
//! `/ready` keep answering.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::metrics::{ConnRefusal, Metrics};

/// What an over-the-bound connection is told before it is closed.
pub const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";

/// The connection bounds and who holds them.
pub struct Admission {
    max: usize,
    per_ip: usize,
    held: Mutex<Held>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// At most `max` connections, `per_ip` from one address (0: no per-address bound).
    pub fn new(max: usize, per_ip: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            max: max.max(1),
            per_ip,
            held: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `ip`, or why there is none (counted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, ConnRefusal> {
        let mut held = self.lock();
        let refusal = if held.total >= self.max {
            Some(ConnRefusal::Total)
        } else if self.per_ip > 0 && held.by_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            Some(ConnRefusal::PerAddress)
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(held);
            self.metrics.connection_refused(r);
            return Err(r);
        }
        held.total += 1;
        *held.by_ip.entry(ip).or_default() += 1;
        drop(held);
        self.metrics.client_connections.inc();
        Ok(Admitted {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut held = self.admission.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.by_ip.remove(&self.ip);
            }
        }
        drop(held);
        self.admission.metrics.client_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_and_places_come_back() {
        let a = Admission::new(3, 2, Arc::new(Metrics::new()));
        let ip = |n| IpAddr::from([127, 0, 1, n]);
        let one = a.admit(ip(1)).unwrap();
        let _two = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).err(), Some(ConnRefusal::PerAddress));
        let _three = a.admit(ip(2)).unwrap();
        assert_eq!(a.admit(ip(3)).err(), Some(ConnRefusal::Total));
        drop(one);
        assert!(a.admit(ip(1)).is_ok(), "a freed place is reusable");
        assert_eq!(a.metrics.count("connections_refused", "per_address"), 1);
        assert_eq!(a.metrics.count("connections_refused", "total"), 1);
        let unbounded = Admission::new(10, 0, Arc::new(Metrics::new()));
        let held: Vec<_> = (0..10).map(|_| unbounded.admit(ip(9)).unwrap()).collect();
        assert_eq!(unbounded.held(), held.len());
    }
}
