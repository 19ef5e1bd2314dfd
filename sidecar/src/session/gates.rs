//! Keyed requests in flight through this pod, and the keys it no longer accepts.
//!
//! A request such as MCP's `POST /messages?sessionId=X` is answered `202` by the app, and its
//! real answer is an event on the session's stream, which a recorder here captures. Once that
//! recorder has recorded `Handover`, the new owner may take the stream over at any moment and the
//! recorder is fenced: an answer the app emits after that is never delivered. So a recorder that
//! hands over first *closes* its keys (later requests get `404`, MCP's "re-initialise"), then
//! waits until the requests already accepted are answered and their events captured, and only
//! then records `Handover`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cursor::SessionId;

#[derive(Default)]
struct Gate {
    inflight: u32,
    /// When the key was closed (`None`: open).
    closed_at: Option<Instant>,
    /// When the last request that entered before the close left.
    last_exit: Option<Instant>,
}

/// Every key with a request in flight or closed by a handover.
#[derive(Default)]
pub struct Gates {
    inner: Mutex<HashMap<SessionId, Gate>>,
}

/// A keyed request in flight; leaving (drop) lets a waiting handover go on.
pub struct Pass {
    gates: Arc<Gates>,
    key: SessionId,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut map = self.gates.lock();
        if let Some(g) = map.get_mut(&self.key) {
            g.inflight = g.inflight.saturating_sub(1);
            if g.closed_at.is_some() {
                g.last_exit = Some(Instant::now());
            } else if g.inflight == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Gates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Gate>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let a keyed request through, or `None` when its key was handed over (answer `404`).
    pub fn enter(self: &Arc<Self>, key: &SessionId) -> Option<Pass> {
        let mut map = self.lock();
        let g = map.entry(key.clone()).or_default();
        if g.closed_at.is_some() {
            return None;
        }
        g.inflight += 1;
        Some(Pass {
            gates: self.clone(),
            key: key.clone(),
        })
    }

    /// Refuse new requests for these keys from now on.
    pub fn close(&self, keys: &[SessionId]) {
        let now = Instant::now();
        let mut map = self.lock();
        for k in keys {
            let g = map.entry(k.clone()).or_default();
            g.closed_at.get_or_insert(now);
        }
    }

    /// Whether every request accepted for these (closed) keys has left at least `settle` ago,
    /// and the keys were closed at least `settle` ago: the app's answers to them had time to
    /// reach the recorder.
    pub fn quiet(&self, keys: &[SessionId], settle: Duration) -> bool {
        self.quiet_at(keys, settle)
            .is_some_and(|at| at <= Instant::now())
    }

    /// When these keys turn [`Gates::quiet`] if no request enters or leaves meanwhile; `None`
    /// while one is in flight (when it leaves is not known). A waiting handover sleeps until
    /// then instead of polling: thousands of sessions hand over at once when their clients leave
    /// or the pod drains, and each poll wakes a recorder and takes this lock.
    pub fn quiet_at(&self, keys: &[SessionId], settle: Duration) -> Option<Instant> {
        let map = self.lock();
        let mut latest: Option<Instant> = None;
        for g in keys.iter().filter_map(|k| map.get(k)) {
            if g.inflight > 0 {
                return None;
            }
            for t in [g.closed_at, g.last_exit].into_iter().flatten() {
                latest = latest.max(Some(t + settle));
            }
        }
        Some(latest.unwrap_or_else(Instant::now))
    }

    /// Whether no request for these keys is in flight (open or closed).
    pub fn idle(&self, keys: &[SessionId]) -> bool {
        let map = self.lock();
        keys.iter()
            .all(|k| map.get(k).is_none_or(|g| g.inflight == 0))
    }

    /// Forget closed keys whose requests are gone (their recorder ended; the app has let the
    /// session go). Requests still in flight keep their entry until they leave.
    pub fn forget(&self, keys: &[SessionId]) {
        let mut map = self.lock();
        for k in keys {
            if map.get(k).is_some_and(|g| g.inflight == 0) {
                map.remove(k);
            } else if let Some(g) = map.get_mut(k) {
                g.closed_at = None;
            }
        }
    }

    #[cfg(test)]
    /// Keys tracked (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionId {
        crate::cursor::CursorKey::derive(b"k")
            .session_for_key(s)
            .unwrap()
    }

    #[test]
    fn closed_keys_refuse_and_wait_for_inflight() {
        let gates = Arc::new(Gates::default());
        let k = key("abc");
        let pass = gates.enter(&k).expect("open key passes");
        assert!(!gates.idle(std::slice::from_ref(&k)));
        gates.close(std::slice::from_ref(&k));
        assert!(gates.enter(&k).is_none(), "closed key refuses");
        assert!(!gates.quiet(std::slice::from_ref(&k), Duration::ZERO));
        drop(pass);
        assert!(gates.idle(std::slice::from_ref(&k)));
        assert!(gates.quiet(std::slice::from_ref(&k), Duration::ZERO));
        assert!(!gates.quiet(std::slice::from_ref(&k), Duration::from_secs(60)));
        gates.forget(std::slice::from_ref(&k));
        assert!(gates.is_empty());
        assert!(gates.enter(&k).is_some());
    }

    #[test]
    fn quiet_at_is_the_settle_time_after_the_later_of_close_and_last_exit() {
        let gates = Arc::new(Gates::default());
        let (a, b) = (key("qa"), key("qb"));
        let settle = Duration::from_secs(1);
        let before = Instant::now();
        assert!(
            gates.quiet_at(std::slice::from_ref(&a), settle).unwrap() >= before,
            "a key never seen is quiet now"
        );
        let pass = gates.enter(&b).unwrap();
        gates.close(&[a.clone(), b.clone()]);
        let closed = Instant::now();
        assert_eq!(
            gates.quiet_at(&[a.clone(), b.clone()], settle),
            None,
            "b in flight"
        );
        std::thread::sleep(Duration::from_millis(5));
        drop(pass);
        let at = gates.quiet_at(&[a.clone(), b.clone()], settle).unwrap();
        assert!(
            at >= closed + Duration::from_millis(5) + settle,
            "b's exit, not the close"
        );
        assert!(!gates.quiet(&[a, b], settle));
    }

    #[test]
    fn open_keys_leave_no_entry() {
        let gates = Arc::new(Gates::default());
        let a = gates.enter(&key("a")).unwrap();
        let b = gates.enter(&key("a")).unwrap();
        assert_eq!(gates.len(), 1);
        drop(a);
        drop(b);
        assert!(gates.is_empty());
    }
}
