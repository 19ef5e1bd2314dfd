//! Fan-out to the attached client: the live bytes (never waiting on the client: a full queue
//! pauses the app's stream, as a plain proxy's TCP backpressure would, until the client reads or
//! is cut as too slow), and a ring of recent events for a same-pod resume.

use std::collections::VecDeque;
use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::registry::Attached;
use crate::http::body::{ClientTx, Cut, Room};
use crate::metrics::Metrics;
use crate::store::Seq;

/// What fan-out is told at the start.
pub(super) struct Settings {
    /// Recent events kept for a same-pod resume.
    pub ring: usize,
    /// How long the session stays captured after its client left.
    pub resume_window: Duration,
    /// Above this many recorders a client that leaves gets no resume window.
    pub max_streams: usize,
    /// At this many recorders whose client left, a client that leaves gets no resume window.
    pub max_detached: usize,
    /// The resume window of a client rebalancing closed: long enough for it to reconnect (to
    /// this pod, where it simply re-attaches), short so the session moves to where the client
    /// went.
    pub shed_window: Duration,
}

/// The client side of a recorder.
pub(super) struct Fanout {
    settings: Settings,
    metrics: Arc<Metrics>,
    client: Option<ClientTx>,
    /// Chunks waiting for room in the client's queue (the app's stream is paused meanwhile),
    /// with the number of entries each carries.
    backlog: VecDeque<(Bytes, u64)>,
    /// Since when the client's queue has been full.
    stalled_since: Option<Instant>,
    detached_at: Option<Instant>,
    /// The resume window granted when the client left (see `window_on_detach`).
    window: Duration,
    ring: VecDeque<(Seq, Bytes)>,
    /// Whether any entry was handed to a client: a stream that never delivered one gets no
    /// resume window (nobody holds a cursor of it).
    delivered_any: bool,
    /// Counted in `detached_recorders` (its client left, or it never had one).
    counted_detached: bool,
    /// The client that left was closed by rebalancing (its session is handed over at the end
    /// of the shorter `shed_window`).
    shed: bool,
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.count_detached(false);
    }
}

impl Fanout {
    pub(super) fn new(settings: Settings, metrics: Arc<Metrics>, client: Option<ClientTx>) -> Self {
        let mut f = Fanout {
            detached_at: client.is_none().then(Instant::now),
            window: settings.resume_window,
            settings,
            metrics,
            client,
            backlog: VecDeque::new(),
            stalled_since: None,
            // Grown on demand: thousands of mostly idle sessions must not each preallocate.
            ring: VecDeque::new(),
            delivered_any: false,
            counted_detached: false,
            shed: false,
        };
        f.count_detached(f.client.is_none());
        f
    }

    /// Keep `detached_recorders` in step with this recorder's state.
    fn count_detached(&mut self, detached: bool) {
        if detached != self.counted_detached {
            self.counted_detached = detached;
            if detached {
                self.metrics.detached_recorders.inc();
            } else {
                self.metrics.detached_recorders.dec();
            }
        }
    }

    /// Whether a client is attached.
    #[cfg(test)]
    pub(super) fn has_client(&self) -> bool {
        self.client.is_some()
    }

    /// Whether the app's stream must wait for the client to read.
    pub(super) fn is_backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Send an entry's bytes to the client and keep them for a same-pod resume.
    #[cfg(test)]
    pub(super) fn deliver(&mut self, seq: Seq, bytes: Bytes) {
        self.remember(seq, bytes.clone());
        self.send(bytes, 1);
    }

    /// Keep an entry's bytes for a same-pod resume (they reach the client in a chunk of their
    /// own, see [`Fanout::send`]).
    pub(super) fn remember(&mut self, seq: Seq, bytes: Bytes) {
        let cap = self.settings.ring;
        if cap > 0 {
            if self.ring.len() >= cap {
                self.ring.pop_front();
            }
            self.ring.push_back((seq, bytes));
        }
    }

    /// Queue a chunk of `entries` entries for the client without waiting; a full queue
    /// backlogs it.
    pub(super) fn send(&mut self, bytes: Bytes, entries: u64) {
        let Some(c) = &self.client else { return };
        if !self.backlog.is_empty() {
            self.backlog.push_back((bytes, entries));
            return;
        }
        self.delivered_any |= entries > 0;
        match c.try_send(bytes.clone()) {
            Ok(()) => {
                self.metrics.events_forwarded.inc_by(entries);
            }
            Err(Cut::Full) => {
                self.backlog.push_back((bytes, entries));
                self.stalled_since = Some(Instant::now());
            }
            Err(Cut::Closed) => self.detach(),
        }
    }

    /// Room in the client's queue for the first chunk that waits; pending when nothing waits.
    pub(super) async fn room(&self) -> Result<Room, Cut> {
        match (&self.client, self.backlog.front()) {
            (Some(c), Some((b, _))) => c.room(b.len()).await,
            _ => pending().await,
        }
    }

    /// The client has room again: hand it what waited.
    pub(super) fn on_room(&mut self, room: Result<Room, Cut>) {
        match room {
            Ok(room) => {
                if let Some((bytes, entries)) = self.backlog.pop_front() {
                    room.send(bytes);
                    self.metrics.events_forwarded.inc_by(entries);
                }
                if self.backlog.is_empty() {
                    self.stalled_since = None;
                }
            }
            Err(_) => self.detach(),
        }
    }

    /// Notice a client that left, and cut one that left its queue full for `stall`.
    pub(super) fn check(&mut self, stall: Duration, session: &impl std::fmt::Display) {
        if self.client.as_ref().is_some_and(ClientTx::is_closed) {
            self.detach();
        }
        if self.stalled_since.is_some_and(|t| t.elapsed() >= stall) {
            tracing::info!(session = %session, "client too slow: cut (it resumes from its cursor)");
            self.metrics.slow_consumers.inc();
            self.detach();
        }
    }

    /// When the resume window of a client that left is over.
    /// Whether a client is attached and still reading.
    pub(super) fn has_live_client(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    pub(super) fn detached_until(&self) -> Option<Instant> {
        Some(self.detached_at? + self.window)
    }

    /// Whether the client that left was closed by rebalancing.
    pub(super) fn was_shed(&self) -> bool {
        self.shed
    }

    /// The client is gone (or was let go): its queue ends after what it holds.
    pub(super) fn release(&mut self) {
        self.client = None;
    }

    fn detach(&mut self) {
        self.backlog.clear();
        self.stalled_since = None;
        if let Some(client) = self.client.take() {
            self.detached_at = Some(Instant::now());
            self.shed = client.was_shed();
            self.window = self.window_on_detach();
            if self.shed {
                self.window = self.window.min(self.settings.shed_window);
            }
            self.count_detached(true);
        }
    }

    /// How long a recorder whose client left keeps capturing: the resume window, or nothing
    /// when this pod already runs more recorders than it admits streams. Clients that connect
    /// and leave must not pile up captured upstreams (each an open connection to the app)
    /// beyond the stream bound; a later resume takes the session over from the store instead.
    ///
    /// Nor when `max_detached` recorders already capture for a client that left, nor when the
    /// stream never delivered an entry: connect-and-leave costs the app nothing past the leave.
    fn window_on_detach(&self) -> Duration {
        let running = usize::try_from(self.metrics.recorders.get()).unwrap_or(0);
        let detached = usize::try_from(self.metrics.detached_recorders.get()).unwrap_or(0);
        if running > self.settings.max_streams
            || detached >= self.settings.max_detached
            || !self.delivered_any
        {
            Duration::ZERO
        } else {
            self.settings.resume_window
        }
    }

    /// Attach a client resuming after `after` (at most `last`, the newest seq numbered): what it
    /// missed comes from the ring, and what the ring no longer holds from the store.
    pub(super) fn attach(&mut self, after: Seq, last: Seq, client: ClientTx) -> Attached {
        self.client = Some(client);
        self.detached_at = None;
        self.shed = false;
        self.count_detached(false);
        let first_in_ring = self.ring.front().map(|(s, _)| *s);
        let (from_store, ring_from) = if after == last {
            (None, Seq::MAX)
        } else {
            match first_in_ring {
                Some(first) if after + 1 >= first => (None, after + 1),
                Some(first) => (Some((after, first - 1)), first),
                None => (Some((after, last)), Seq::MAX),
            }
        };
        let prefix = self
            .ring
            .iter()
            .filter(|(s, _)| *s >= ring_from)
            .map(|(_, b)| b.clone())
            .collect();
        Attached { prefix, from_store }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::client_channel;
    use crate::http::streams::Streams;

    fn fanout(ring: usize, client: Option<ClientTx>) -> Fanout {
        Fanout::new(
            Settings {
                ring,
                resume_window: Duration::from_secs(30),
                max_streams: 100,
                max_detached: 2,
                shed_window: Duration::from_secs(2),
            },
            Arc::new(Metrics::new()),
            client,
        )
    }

    fn client(budget: usize) -> (ClientTx, crate::http::body::ClientBody) {
        let streams = Streams::new(10, Arc::new(Metrics::new()));
        client_channel(
            streams
                .open(crate::http::kind::KindCell::default())
                .unwrap(),
            budget,
            1000,
        )
    }

    #[test]
    fn a_resume_gets_the_ring_and_the_store_covers_what_it_lost() {
        let mut f = fanout(2, None);
        for seq in 1..=4 {
            f.deliver(seq, Bytes::from(format!("e{seq}")));
        }
        let (tx, _body) = client(1 << 16);
        let a = f.attach(1, 4, tx);
        assert_eq!(a.from_store, Some((1, 2)));
        assert_eq!(a.prefix, vec![Bytes::from("e3"), Bytes::from("e4")]);
        let (tx, _body) = client(1 << 16);
        let a = f.attach(3, 4, tx);
        assert_eq!(
            (a.from_store, a.prefix),
            (None, vec![Bytes::from("e4")].into())
        );
        let (tx, _body) = client(1 << 16);
        let a = f.attach(4, 4, tx);
        assert!(a.from_store.is_none() && a.prefix.is_empty());
    }

    #[test]
    fn a_full_queue_backlogs_and_a_client_that_left_opens_the_resume_window() {
        let (tx, body) = client(8);
        let mut f = fanout(0, Some(tx));
        assert!(f.detached_until().is_none());
        f.send(Bytes::from("12345678"), 1);
        f.send(Bytes::from("more"), 1);
        assert!(f.is_backlogged(), "the second chunk waits for room");
        drop(body);
        f.check(Duration::from_secs(60), &"s");
        assert!(!f.has_client() && !f.is_backlogged());
        assert!(f.detached_until().unwrap() > Instant::now() + Duration::from_secs(29));
    }

    #[test]
    fn a_shed_client_gets_the_short_window_and_a_reattach_forgets_it() {
        let streams = Streams::new(10, Arc::new(Metrics::new()));
        let (tx, body) = client_channel(
            streams
                .open(crate::http::kind::KindCell::default())
                .unwrap(),
            1 << 16,
            1000,
        );
        let mut f = fanout(0, Some(tx));
        f.send(Bytes::from("e"), 1);
        assert!(streams.shed_oldest());
        drop(body);
        f.check(Duration::from_secs(60), &"s");
        assert!(f.was_shed());
        let left = f.detached_until().unwrap() - Instant::now();
        assert!(left <= Duration::from_secs(2), "{left:?}");
        let (tx, _body) = client(1 << 16);
        f.attach(1, 1, tx);
        assert!(!f.was_shed() && f.detached_until().is_none());
    }

    #[test]
    fn connect_and_leave_gets_no_resume_window() {
        let metrics = Arc::new(Metrics::new());
        let settings = || Settings {
            ring: 0,
            resume_window: Duration::from_secs(30),
            max_streams: 100,
            max_detached: 2,
            shed_window: Duration::from_secs(2),
        };
        let window = |f: &Fanout| {
            f.detached_until()
                .map(|t| t.saturating_duration_since(Instant::now()))
        };
        // Left before any entry: nobody holds a cursor of it.
        let (tx, body) = client(1 << 16);
        let mut silent = Fanout::new(settings(), metrics.clone(), Some(tx));
        drop(body);
        silent.check(Duration::from_secs(60), &"s");
        assert_eq!(window(&silent), Some(Duration::ZERO));
        assert_eq!(metrics.detached_recorders.get(), 1);
        // Two that delivered and left fill the detached bound; the next gets no window.
        let mut left = Vec::new();
        for i in 0..2 {
            let (tx, body) = client(1 << 16);
            let mut f = Fanout::new(settings(), metrics.clone(), Some(tx));
            f.send(Bytes::from("e"), 1);
            drop(body);
            f.check(Duration::from_secs(60), &"s");
            if i == 0 {
                assert!(window(&f).unwrap() > Duration::from_secs(29));
            }
            left.push(f);
        }
        assert_eq!(
            window(&left[1]),
            Some(Duration::ZERO),
            "the bound was reached"
        );
        assert_eq!(metrics.detached_recorders.get(), 3);
        drop(left);
        drop(silent);
        assert_eq!(
            metrics.detached_recorders.get(),
            0,
            "ended recorders are not counted"
        );
    }
}
