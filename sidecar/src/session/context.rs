//! What the session layer is handed: the store, the leases, the recorders and gates, the app
//! and the client queues, and its own settings. Built once by the runtime.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::contract::SessionKeySource;
use crate::cursor::{Binding, CursorKey};
use crate::http::body::ClientQueues;
use crate::http::client::App;
use crate::http::streams::Streams;
use crate::metrics::Metrics;
use crate::session::gates::Gates;
use crate::session::leases::LeaseBook;
use crate::session::recorder::Recorders;
use crate::store::{GuardedStore, SessionStore};

/// Time a shed client gets, beyond its `retry:` delay, to reconnect before its session is
/// handed over (see [`Tuning::shed_window`]).
const SHED_RECONNECT_SLACK: Duration = Duration::from_secs(2);

/// The session layer's context.
pub struct Sessions {
    /// The session store, every call bounded, observed for health and counted.
    pub store: Arc<GuardedStore>,
    /// Leases this pod holds.
    pub book: Arc<LeaseBook>,
    /// Recorders running here.
    pub recorders: Arc<Recorders>,
    /// Keyed requests in flight, and keys refused after their session's handover.
    pub gates: Arc<Gates>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The app (a takeover opens a fresh upstream to it).
    pub app: App,
    /// Where client streams are opened.
    pub clients: ClientQueues,
    /// The settings sessions follow.
    pub settings: Tuning,
}

impl Sessions {
    /// The session layer over `store` (wrapped in the guard) as `settings` describe it. The
    /// caller starts the background work (the store's pinger, the lease renewer).
    pub fn new(settings: &Settings, store: Arc<dyn SessionStore>, metrics: Arc<Metrics>) -> Self {
        let store = Arc::new(GuardedStore::new(
            store,
            settings.store_timeout,
            metrics.clone(),
        ));
        let book = LeaseBook::new(
            store.clone(),
            settings.owner.clone(),
            settings.lease_ttl,
            settings.session_ttl,
            metrics.clone(),
        );
        let clients = ClientQueues::new(
            Streams::new(settings.max_streams, metrics.clone()),
            settings.client_buffer_bytes,
            settings.reconnect_delay_millis,
        );
        Sessions {
            store,
            book,
            recorders: Arc::new(Recorders::default()),
            gates: Default::default(),
            metrics,
            app: App::new(settings.app_addr, settings.upstream_timeout),
            clients,
            settings: Tuning::of(settings),
        }
    }
}

impl Tuning {
    /// The binding of a request (see [`Binding`]): its identity values and its path.
    pub fn binding(&self, headers: &http::HeaderMap, uri: &http::Uri) -> Binding {
        let values: Vec<Option<String>> = self
            .identity
            .iter()
            .map(|source| {
                crate::http::session_key::from_request(
                    uri.query(),
                    headers,
                    std::slice::from_ref(source),
                )
            })
            .collect();
        self.cursor_key
            .binding(values.iter().map(Option::as_deref), uri.path())
    }
}

/// The settings of recording, replay and resumes.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Where requests and responses name sessions (the `endpoint` event's key is learned with it).
    pub session_keys: Vec<SessionKeySource>,
    /// Largest event the parser accepts.
    pub max_event_bytes: usize,
    /// Longest a recorded entry waits before its batch is written.
    pub batch_window: Duration,
    /// Most entries in one batch.
    pub batch_max_entries: usize,
    /// Entries a recorder holds while the store does not take them.
    pub max_unrecorded: usize,
    /// Most entries forwarded but not yet recorded while the store answers (backpressure).
    pub max_record_lag: usize,
    /// Recent events kept for a same-pod resume.
    pub resume_buffer_events: usize,
    /// How long a recorder captures after its client left.
    pub resume_window: Duration,
    /// How long a client may leave its queue full before it is cut.
    pub client_stall: Duration,
    /// The stream bound (a recorder whose client left gets no resume window above it).
    pub max_streams: usize,
    /// Recorders capturing for a client that left, at most (beyond: no resume window).
    pub max_detached: usize,
    /// How long a drained session keeps being captured after its handover, for its new owner.
    pub handover_margin: Duration,
    /// How long a recorder whose client rebalancing closed waits for that client before it
    /// hands the session over: the `retry:` delay and 2 s for the reconnect, at most the
    /// resume window. A client back on this pod within it re-attaches (no takeover churn).
    pub shed_window: Duration,
    /// Whether a resume across a hole in the history gets the gap event.
    pub gap_event: bool,
    /// The request values a stream's cursors are bound to.
    pub identity: Vec<SessionKeySource>,
    /// Signs and verifies cursors; derives keyed session ids.
    pub cursor_key: CursorKey,
}

impl Tuning {
    /// The session settings of the sidecar's settings.
    pub fn of(s: &Settings) -> Self {
        Tuning {
            session_keys: s.session_keys.clone(),
            max_event_bytes: s.max_event_bytes,
            batch_window: s.batch_window,
            batch_max_entries: s.batch_max_entries,
            max_unrecorded: s.max_unrecorded,
            max_record_lag: s.max_record_lag,
            resume_buffer_events: s.resume_buffer_events,
            resume_window: s.resume_window,
            client_stall: s.client_stall,
            max_streams: s.max_streams,
            max_detached: s.max_detached,
            handover_margin: s.handover_margin,
            shed_window: (Duration::from_millis(s.reconnect_delay_millis) + SHED_RECONNECT_SLACK)
                .min(s.resume_window),
            gap_event: s.gap_event,
            identity: s.identity.clone(),
            cursor_key: s.cursor_key.clone(),
        }
    }
}
