//! Prometheus metrics of the sidecar.
//!
//! The per-event path must stay lean, so every labelled series the proxy touches per event is
//! resolved once here (a `Counter` clone shares its atomic) and the hot path only does atomic adds.
//! Labels with open-ended values (error kinds, outcomes) go through [`Metrics::error`] and friends,
//! which are called on rare paths only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One label named `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The label value.
    pub kind: &'static str,
}

/// One label named `name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// The label value.
    pub name: String,
}

/// One label named `path` (a configured broadcast path: a bounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// The label value.
    pub path: String,
}

/// The metrics of broadcast paths, labelled by path (only configured paths: a bounded set) or
/// by outcome. Separate from the session metrics so the fan-out can be watched on its own.
#[derive(Default)]
pub struct BroadcastMetrics {
    /// Clients served from the path's stream on this pod right now.
    pub subscribers: Family<PathLabel, Gauge>,
    /// 1 while this pod holds the path's one upstream to the app.
    pub upstream_held: Family<PathLabel, Gauge>,
    /// Upstream requests this pod opened to the app for the path (holding, reopening, taking over).
    pub upstreams_opened: Family<PathLabel, Counter>,
    /// Entries this pod appended to the path's stream (from its upstream or a publish).
    pub events_appended: Family<PathLabel, Counter>,
    /// Events from a (re)opened upstream dropped because the stream already holds them.
    pub overlap_dropped: Family<PathLabel, Counter>,
    /// Publish requests, by outcome.
    pub publish: Family<OutcomeLabel, Counter>,
    /// Clients cut because they fell behind their buffer (they resume from history).
    pub slow_clients_cut: Family<PathLabel, Counter>,
    /// Entries the path's tail found waiting beyond the first on its last read: 0 when it keeps
    /// up, growing when it falls behind the stream.
    pub tail_lag_entries: Family<PathLabel, Gauge>,
    /// Takeovers of the upstream by this pod, by how they went.
    pub takeovers: Family<OutcomeLabel, Counter>,
}

impl BroadcastMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("broadcast");
        r.register(
            "subscribers",
            "Clients of a broadcast path served on this pod",
            self.subscribers.clone(),
        );
        r.register(
            "upstream_held",
            "1 while this pod holds the broadcast path's upstream",
            self.upstream_held.clone(),
        );
        r.register(
            "upstreams_opened",
            "Upstream requests opened to the app for a broadcast path",
            self.upstreams_opened.clone(),
        );
        r.register(
            "events_appended",
            "Entries this pod appended to a broadcast path's stream",
            self.events_appended.clone(),
        );
        r.register(
            "overlap_dropped",
            "Events of a reopened upstream dropped as already recorded",
            self.overlap_dropped.clone(),
        );
        r.register(
            "publish_requests",
            "Publish requests, by outcome",
            self.publish.clone(),
        );
        r.register(
            "slow_clients_cut",
            "Broadcast clients cut for falling behind (they resume from history)",
            self.slow_clients_cut.clone(),
        );
        r.register(
            "tail_lag_entries",
            "Entries the broadcast tail found waiting beyond the first on its last read",
            self.tail_lag_entries.clone(),
        );
        r.register(
            "takeovers",
            "Takeovers of a broadcast upstream by this pod, by outcome",
            self.takeovers.clone(),
        );
    }

    /// A path's label.
    pub fn path(path: &str) -> PathLabel {
        PathLabel {
            path: path.to_string(),
        }
    }

    /// Count a publish request.
    pub fn published(&self, outcome: &'static str) {
        self.publish.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Count a takeover.
    pub fn takeover(&self, outcome: &'static str) {
        self.takeovers
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A labelled counter's value, for tests and logs.
    pub fn outcome(&self, family: &str, outcome: &'static str) -> u64 {
        let fam = match family {
            "publish" => &self.publish,
            "takeovers" => &self.takeovers,
            _ => return 0,
        };
        fam.get(&OutcomeLabel { outcome })
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

/// Distinct names `unrouted_session_keys` reports before the rest are counted as `other`.
const MAX_UNROUTED_NAMES: usize = 16;

/// One label named `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The label value.
    pub outcome: &'static str,
}

/// One label named `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The label value.
    pub reason: &'static str,
}

/// One label named `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The label value.
    pub route: &'static str,
}

/// A closed set of label values: one enum per labelled family, so every value a metric can carry
/// is written once, here, and a caller cannot misspell one.
macro_rules! labels {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $l:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// The label value.
            pub fn label(self) -> &'static str {
                match self { $(Self::$v => $l),+ }
            }
        }
    };
}

labels! {
    /// `requests{route}`: what the sse port did with a request.
    Route {
        /// A `Last-Event-ID` resume.
        Resume => "resume",
        /// Keyed, but no pod owns the key.
        Unrouted => "unrouted",
        /// Keyed to a session that is gone: `404`.
        NotFound => "not_found",
        /// Proxied to the app, from a client.
        Local => "local",
        /// Proxied to the app, forwarded by another sidecar.
        ForwardedIn => "forwarded_in",
        /// Forwarded to the session's owner.
        ForwardedOut => "forwarded_out",
    }
}

labels! {
    /// `errors{kind}`.
    ErrorKind {
        /// A session key the app or a client sent is not usable.
        InvalidSessionKey => "invalid_session_key",
        /// The store holds data this version does not write.
        Malformed => "malformed",
        /// A newer epoch owns the session.
        Fenced => "fenced",
        /// The store did not answer (one call).
        Unavailable => "unavailable",
        /// The app's response is an event stream with a content encoding (passed through).
        SseEncoded => "sse_encoded",
        /// The app answered in a transfer coding other than chunked (502).
        UpstreamTransferCoding => "upstream_transfer_coding",
        /// The store lost a session this pod holds (restart, flush).
        StoreStateLost => "store_state_lost",
        /// The store went down (counted once per outage).
        StoreUnavailable => "store_unavailable",
        /// A tail lost the store.
        TailStoreUnavailable => "tail_store_unavailable",
        /// Refused: `--max-streams` reached.
        TooManyStreams => "too_many_streams",
        /// The app's body failed mid-stream.
        UpstreamBody => "upstream_body",
        /// The app did not answer in time.
        UpstreamTimeout => "upstream_timeout",
        /// The app's port refused the connection.
        UpstreamConnect => "upstream_connect",
        /// The request to the app failed otherwise.
        UpstreamFailed => "upstream_failed",
    }
}

labels! {
    /// `takeovers{outcome}`.
    TakeoverOutcome {
        /// Taken over.
        Ok => "ok",
        /// Another pod won the race.
        Lost => "lost",
        /// The session ended meanwhile.
        Ended => "ended",
        /// The store did not answer.
        StoreUnavailable => "store_unavailable",
        /// The app refused the fresh upstream.
        UpstreamRefused => "upstream_refused",
        /// The app could not be reached.
        UpstreamUnreachable => "upstream_unreachable",
        /// The client went away during the takeover.
        Client => "client",
    }
}

labels! {
    /// `takeover_overlap{outcome}`: how a takeover met the old owner's record.
    OverlapOutcome {
        /// The fresh stream's first event was in the record before the old owner was fenced.
        Overlapped => "overlapped",
        /// The record did not reach it in time (or the owner was gone): taken over without.
        NotReached => "not_reached",
        /// The fresh stream's first event has no id: it cannot be matched.
        NoId => "no_id",
    }
}

labels! {
    /// `handovers{reason}`.
    HandoverReason {
        /// The pod drains.
        Drain => "drain",
        /// The client stayed away past the resume window.
        ResumeWindow => "resume_window",
        /// The app's stream failed.
        UpstreamError => "upstream_error",
        /// Rebalancing closed the session's client (this pod held more than its fair share).
        Rebalance => "rebalance",
    }
}

labels! {
    /// `rebalance_shed{reason}`: why a stream was shed.
    ShedReason {
        /// This pod held more than the mean of the serving pods by more than the tolerance.
        OverShare => "over_share",
    }
}

labels! {
    /// `rebalance_skipped{reason}`: why a rebalancing round shed nothing.
    SkipReason {
        /// This pod is draining (preStop or SIGTERM): the drain moves every stream anyway.
        Draining => "draining",
        /// This pod is not ready (its app is down): it is not counted and sheds nothing.
        Unready => "unready",
        /// The store does not answer: no count to compare, and no handoff possible.
        StoreDown => "store_down",
        /// Another pod drains: the set is in flux, its streams are moving already.
        PeerDraining => "peer_draining",
        /// No other serving pod to move streams to.
        Alone => "alone",
        /// This pod holds no more than its share plus the tolerance.
        WithinTolerance => "within_tolerance",
        /// Over its share, but nothing it holds may be shed (only session and request streams).
        NothingSheddable => "nothing_sheddable",
    }
}

/// One label named `pod`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabel {
    /// The pod's name.
    pub pod: String,
}

/// The metrics of rebalancing: the spread as this pod last read it from the store, and what it
/// did about it. Apart from the session metrics so the spread can be graphed on its own.
#[derive(Default)]
pub struct RebalanceMetrics {
    /// Streams per live pod as this pod last read them (its own entry included); pods that
    /// went stale are removed from the family.
    pub pod_streams: Family<PodLabel, Gauge>,
    /// This pod's resumable streams (what it could shed), as last published.
    pub own_resumable: Gauge,
    /// Busiest serving pod over the mean of the serving pods (1 = perfectly even).
    pub imbalance_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The mean of the serving pods: this pod's fair share.
    pub fair_share: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Serving pods counted in the fair share.
    pub serving_pods: Gauge,
    /// Streams shed, by reason.
    pub shed: Family<ReasonLabel, Counter>,
    /// Rounds that shed nothing, by reason.
    pub skipped: Family<ReasonLabel, Counter>,
}

impl RebalanceMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rebalance");
        r.register(
            "pod_streams",
            "Client streams per live pod, as this pod last read them from the store",
            self.pod_streams.clone(),
        );
        r.register(
            "own_resumable_streams",
            "This pod's resumable streams (the ones it may shed), as last published",
            self.own_resumable.clone(),
        );
        r.register(
            "imbalance_ratio",
            "Busiest serving pod's streams over the mean of the serving pods (1 = even)",
            self.imbalance_ratio.clone(),
        );
        r.register(
            "fair_share_streams",
            "Mean streams of the serving pods: this pod's fair share",
            self.fair_share.clone(),
        );
        r.register(
            "serving_pods",
            "Serving pods counted in the fair share",
            self.serving_pods.clone(),
        );
        r.register(
            "shed",
            "Resumable streams closed by rebalancing (retry hint, handed over), by reason",
            self.shed.clone(),
        );
        r.register(
            "skipped",
            "Rebalancing rounds that shed nothing, by reason",
            self.skipped.clone(),
        );
    }

    /// Count a shed stream.
    pub fn shed(&self, reason: ShedReason) {
        self.shed
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Count a round that shed nothing.
    pub fn skipped(&self, reason: SkipReason) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Streams shed for `reason` so far.
    pub fn shed_count(&self, reason: ShedReason) -> u64 {
        self.shed
            .get(&ReasonLabel {
                reason: reason.label(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Rounds skipped for `reason` so far.
    pub fn skipped_count(&self, reason: SkipReason) -> u64 {
        self.skipped
            .get(&ReasonLabel {
                reason: reason.label(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

labels! {
    /// `forwards{outcome}`.
    ForwardOutcome {
        /// Forwarded and answered.
        Ok => "ok",
        /// Accepted from another sidecar.
        Accepted => "accepted",
        /// The owner is gone: `404`.
        OwnerGone => "owner_gone",
        /// The owner did not answer in time.
        Timeout => "timeout",
        /// Forwarding failed otherwise.
        Error => "error",
        /// No forwarding key configured.
        Disabled => "disabled",
        /// A forwarded request without a signature.
        Missing => "missing",
        /// A forwarded request whose signature is too old or too new.
        Expired => "expired",
        /// A forwarded request with a bad signature (or addressed to another pod).
        Forged => "forged",
        /// A forwarded request whose nonce was seen already.
        Replayed => "replayed",
        /// A keyed request whose body is over the forward bound: `413` at the sender.
        TooLarge => "too_large",
    }
}

labels! {
    /// `resumes{outcome}`.
    ResumeOutcome {
        /// Served from this pod's recorder.
        Local => "local",
        /// Served from the store.
        Store => "store",
        /// The session ended.
        Ended => "ended",
        /// The store is down: a fresh stream.
        StoreDown => "store_down",
        /// The store does not know the session.
        Unknown => "unknown",
        /// The cursor is not one of ours.
        Forged => "forged",
        /// A `Last-Event-ID` that is not a cursor (the app's own id).
        Foreign => "foreign",
        /// A keyed stream reconnecting without `Last-Event-ID`, attached to the recording of
        /// its session here instead of opening a second upstream.
        Reattached => "reattached",
        /// A cursor (or a keyed reattach) not made for this client: other credentials, another
        /// path, an edited seq, another SseService. Treated as an unknown session.
        Unverified => "unverified",
    }
}

labels! {
    /// `connections_refused{reason}`: client connections answered 503 and closed at accept.
    ConnRefusal {
        /// `--max-connections` held.
        Total => "total",
        /// `--max-connections-per-ip` held by the connection's address.
        PerAddress => "per_address",
        /// The process had no descriptor left for it (accept failed).
        Descriptors => "descriptors",
    }
}

labels! {
    /// `admin_refused{reason}`.
    AdminRefusal {
        /// `/prestop` on the network.
        Prestop => "prestop",
        /// `/app-prestop` while as many callers as allowed already wait.
        AppPrestopBusy => "app_prestop_busy",
    }
}

/// Labels `op` and `outcome` of `store_calls`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreCallLabel {
    /// The store operation.
    pub op: &'static str,
    /// How it ended.
    pub outcome: &'static str,
}

/// The drain phases, as the `drain_phase` gauge reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// Serving normally.
    Serving = 0,
    /// preStop received: not ready, still serving.
    PreStop = 1,
    /// SIGTERM received: closing client streams, capturing upstreams.
    Draining = 2,
    /// Drain window over: handover recorded, waiting for new owners.
    Handover = 3,
    /// Everything released; about to exit.
    Done = 4,
}

impl DrainPhase {
    const ALL: [DrainPhase; 5] = [
        DrainPhase::Serving,
        DrainPhase::PreStop,
        DrainPhase::Draining,
        DrainPhase::Handover,
        DrainPhase::Done,
    ];

    /// The `drain_state{state}` label.
    pub fn label(self) -> &'static str {
        match self {
            DrainPhase::Serving => "serving",
            DrainPhase::PreStop => "prestop",
            DrainPhase::Draining => "draining",
            DrainPhase::Handover => "handover",
            DrainPhase::Done => "done",
        }
    }
}

/// Label of `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// Label of the `drain_state` state-set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Every metric of the sidecar, registered in one registry served on `/metrics`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabel, Counter>,
    /// Client streams open right now.
    pub active_streams: Gauge,
    /// Events written to clients (live and replayed).
    pub events_forwarded: Counter,
    /// Entries written to the store.
    pub events_recorded: Counter,
    /// Entries that could not be recorded (store down for too long, or the backlog was full).
    pub events_unrecorded: Counter,
    /// Times a recorder stopped reading its app's stream because the store lagged by the bound
    /// (backpressure instead of memory growth).
    pub record_backpressure: Counter,
    /// Time of one store append (one batch).
    pub record_batch_seconds: Histogram,
    /// Events delivered from the store or the resume buffer on a resume.
    pub replayed_events: Counter,
    /// Events from a new upstream dropped because the client already had them (the overlap).
    pub overlap_dropped: Counter,
    /// Events bigger than the parser bound, dropped.
    pub oversized_events: Counter,
    /// Resumes whose history had a hole (trimmed, or lost while the store was down).
    pub replay_gaps: Counter,
    takeovers: Family<OutcomeLabel, Counter>,
    takeover_overlap: Family<OutcomeLabel, Counter>,
    handovers: Family<ReasonLabel, Counter>,
    forwards: Family<OutcomeLabel, Counter>,
    resumes: Family<OutcomeLabel, Counter>,
    /// Clients cut because they did not read fast enough.
    pub slow_consumers: Counter,
    streams_opened: Family<KindLabel, Counter>,
    unrouted_keys: Family<NameLabel, Counter>,
    /// The names counted in `unrouted_keys` so far (bounded: clients choose them).
    unrouted_names: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Entries a recorder captured but the store refused because another pod had taken the
    /// session over (fenced): the new owner's fresh upstream has to cover them.
    pub fenced_entries: Counter,
    /// Appends whose trim, at the history cap (`historyMaxEntries`), removed entries the time
    /// floor (`historySeconds`) or a drain wanted kept: resumes may find holes.
    pub history_floor_cuts: Counter,
    /// Protocol upgrades (WebSocket) tunnelled to the app.
    pub tunnels: Counter,
    /// Tunnels open right now.
    pub active_tunnels: Gauge,
    /// Request streams (the SSE answer of a `POST` …) still running at the request deadline of
    /// a drain, cut there.
    pub request_streams_cut: Counter,
    errors: Family<KindLabel, Counter>,
    store_calls: Family<StoreCallLabel, Counter>,
    admin_refused: Family<ReasonLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    /// Client connections held now.
    pub client_connections: Gauge,
    /// Recorders capturing for a client that left (or that never had one).
    pub detached_recorders: Gauge,
    /// 1 while the store answers, 0 while it does not.
    pub store_up: Gauge,
    /// 1 while the app's port accepts connections.
    pub app_up: Gauge,
    /// The current [`DrainPhase`].
    pub drain_phase: Gauge,
    /// The drain phase as a state-set: 1 for the current state, 0 for the others.
    drain_state: Family<StateLabel, Gauge>,
    /// Sessions this pod owns (leases held).
    pub leases_held: Gauge,
    /// Recorders capturing an upstream right now.
    pub recorders: Gauge,
    /// Broadcast paths.
    pub broadcast: BroadcastMetrics,
    /// Rebalancing.
    pub rebalance: RebalanceMetrics,
}

impl Metrics {
    /// All metrics, registered under the `ssekeeper` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ssekeeper");
        let m = Metrics {
            requests: Family::default(),
            active_streams: Gauge::default(),
            events_forwarded: Counter::default(),
            events_recorded: Counter::default(),
            events_unrecorded: Counter::default(),
            record_backpressure: Counter::default(),
            record_batch_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            replayed_events: Counter::default(),
            overlap_dropped: Counter::default(),
            oversized_events: Counter::default(),
            replay_gaps: Counter::default(),
            takeovers: Family::default(),
            takeover_overlap: Family::default(),
            handovers: Family::default(),
            forwards: Family::default(),
            resumes: Family::default(),
            slow_consumers: Counter::default(),
            streams_opened: Family::default(),
            unrouted_keys: Family::default(),
            unrouted_names: Default::default(),
            request_streams_cut: Counter::default(),
            fenced_entries: Counter::default(),
            history_floor_cuts: Counter::default(),
            tunnels: Counter::default(),
            active_tunnels: Gauge::default(),
            errors: Family::default(),
            store_calls: Family::default(),
            admin_refused: Family::default(),
            connections_refused: Family::default(),
            client_connections: Gauge::default(),
            detached_recorders: Gauge::default(),
            store_up: Gauge::default(),
            app_up: Gauge::default(),
            drain_phase: Gauge::default(),
            drain_state: Family::default(),
            leases_held: Gauge::default(),
            recorders: Gauge::default(),
            broadcast: BroadcastMetrics::default(),
            rebalance: RebalanceMetrics::default(),
            registry: Registry::default(),
        };
        m.broadcast.register(&mut registry);
        m.rebalance.register(&mut registry);
        registry.register(
            "streams_opened",
            "SSE streams opened from the app, by kind (resumable, session, request: how the drain ends them)",
            m.streams_opened.clone(),
        );
        registry.register(
            "unrouted_session_keys",
            "Requests carrying a session-looking query parameter or header that no configured session key matched, by name (16 names at most, then \"other\")",
            m.unrouted_keys.clone(),
        );
        registry.register(
            "fenced_entries",
            "Entries captured after another pod took the session over, refused by the store (the new owner's upstream covers them)",
            m.fenced_entries.clone(),
        );
        registry.register(
            "history_floor_cuts",
            "Appends whose trim at historyMaxEntries removed events younger than historySeconds (or of a draining session): resumes may find holes",
            m.history_floor_cuts.clone(),
        );
        registry.register(
            "tunnels",
            "Protocol upgrades (WebSocket) tunnelled byte for byte to the app",
            m.tunnels.clone(),
        );
        registry.register(
            "active_tunnels",
            "Tunnels open right now (closed only at a drain's request deadline)",
            m.active_tunnels.clone(),
        );
        registry.register(
            "request_streams_cut",
            "Request streams still running at a drain's request deadline, cut there",
            m.request_streams_cut.clone(),
        );
        registry.register(
            "requests",
            "Requests received on the sse port, by route",
            m.requests.clone(),
        );
        registry.register(
            "active_streams",
            "Client SSE streams open",
            m.active_streams.clone(),
        );
        registry.register(
            "events_forwarded",
            "Events written to clients",
            m.events_forwarded.clone(),
        );
        registry.register(
            "events_recorded",
            "Entries written to the session store",
            m.events_recorded.clone(),
        );
        registry.register(
            "events_unrecorded",
            "Entries that could not be written to the store",
            m.events_unrecorded.clone(),
        );
        registry.register(
            "record_backpressure",
            "Times a recorder paused its app's stream until the store caught up",
            m.record_backpressure.clone(),
        );
        registry.register(
            "record_batch_seconds",
            "Latency of one store append batch",
            m.record_batch_seconds.clone(),
        );
        registry.register(
            "replayed_events",
            "Events replayed to resuming clients",
            m.replayed_events.clone(),
        );
        registry.register(
            "overlap_dropped",
            "Upstream events dropped after a takeover because the client had them",
            m.overlap_dropped.clone(),
        );
        registry.register(
            "oversized_events",
            "App events over the size bound, dropped",
            m.oversized_events.clone(),
        );
        registry.register(
            "replay_gaps",
            "Resumes whose history had a hole",
            m.replay_gaps.clone(),
        );
        registry.register(
            "takeovers",
            "Session takeovers, by outcome",
            m.takeovers.clone(),
        );
        registry.register(
            "takeover_overlap",
            "How takeovers met the old owner's record: overlapped (nothing lost even for apps that ignore Last-Event-ID), not_reached, no_id",
            m.takeover_overlap.clone(),
        );
        registry.register(
            "handovers",
            "Handovers recorded, by reason",
            m.handovers.clone(),
        );
        registry.register(
            "forwards",
            "Requests forwarded between sidecars, by outcome",
            m.forwards.clone(),
        );
        registry.register(
            "resumes",
            "Resume requests (Last-Event-ID), by outcome",
            m.resumes.clone(),
        );
        registry.register(
            "slow_consumers",
            "Clients cut for not reading fast enough",
            m.slow_consumers.clone(),
        );
        registry.register("errors", "Errors, by kind", m.errors.clone());
        registry.register(
            "store_calls",
            "Session store calls, by operation and outcome",
            m.store_calls.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections answered 503 and closed at accept, by reason (total, per_address, descriptors)",
            m.connections_refused.clone(),
        );
        registry.register(
            "client_connections",
            "Client connections held now",
            m.client_connections.clone(),
        );
        registry.register(
            "detached_recorders",
            "Recorders capturing an app stream for a client that left (its resume window), or that never had one",
            m.detached_recorders.clone(),
        );
        registry.register(
            "admin_refused",
            "Admin-port requests refused, by reason (prestop: the preStop hook is not served on the network)",
            m.admin_refused.clone(),
        );
        registry.register(
            "store_up",
            "Whether the session store answers",
            m.store_up.clone(),
        );
        registry.register(
            "app_up",
            "Whether the app's port accepts connections",
            m.app_up.clone(),
        );
        registry.register(
            "drain_phase",
            "0 serving, 1 preStop, 2 draining, 3 handover, 4 done",
            m.drain_phase.clone(),
        );
        registry.register(
            "drain_state",
            "The drain phase as a state-set: 1 for the current state (serving, prestop, draining, handover, done)",
            m.drain_state.clone(),
        );
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The sidecar's version (always 1)", build);
        registry.register(
            "leases_held",
            "Session leases this pod holds",
            m.leases_held.clone(),
        );
        registry.register("recorders", "Upstreams being captured", m.recorders.clone());
        Metrics { registry, ..m }
    }

    /// Count a request on the sse port by the route it took.
    pub fn request(&self, route: Route) {
        self.requests
            .get_or_create(&RouteLabel {
                route: route.label(),
            })
            .inc();
    }

    /// Count an error by kind.
    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.label() })
            .inc();
    }

    /// Count a client connection refused at accept.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.connections_refused
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Count an admin-port request refused on purpose (e.g. `/prestop` from the network), so an
    /// attempt to drain a pod from outside shows up.
    pub fn admin_refused(&self, reason: AdminRefusal) {
        self.admin_refused
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Count a takeover attempt by outcome.
    pub fn takeover(&self, outcome: TakeoverOutcome) {
        self.takeovers
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Count a request whose session-looking key `name` no configured source matched; log each
    /// name the first time (at most [`MAX_UNROUTED_NAMES`] names, then `other`).
    pub fn unrouted_session_key(&self, name: &str) {
        let label = {
            let mut names = self
                .unrouted_names
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if names.contains(name) {
                name.to_string()
            } else if names.len() < MAX_UNROUTED_NAMES {
                names.insert(name.to_string());
                tracing::warn!(
                    name,
                    "requests carry a session-looking key that no configured session key (spec.sessions.key) matches: they are not routed to their session's pod"
                );
                name.to_string()
            } else {
                "other".to_string()
            }
        };
        self.unrouted_keys
            .get_or_create(&NameLabel { name: label })
            .inc();
    }

    /// Count a stream opened from the app, by kind.
    pub fn stream_opened(&self, kind: crate::http::kind::StreamKind) {
        self.streams_opened
            .get_or_create(&KindLabel { kind: kind.label() })
            .inc();
    }

    /// Count how a takeover met the old owner's record.
    pub fn takeover_overlap(&self, outcome: OverlapOutcome) {
        self.takeover_overlap
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Count a recorded handover by reason.
    pub fn handover(&self, reason: HandoverReason) {
        self.handovers
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Count a forward (either side) by outcome.
    pub fn forward(&self, outcome: ForwardOutcome) {
        self.forwards
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Count a resume request by outcome.
    pub fn resume(&self, outcome: ResumeOutcome) {
        self.resumes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// The counter of one store operation and outcome (resolved once by the store's guard).
    pub fn store_call(&self, op: &'static str, outcome: &'static str) -> Counter {
        self.store_calls
            .get_or_create(&StoreCallLabel { op, outcome })
            .clone()
    }

    /// How many store calls of `op` ended with `outcome`.
    pub fn store_calls(&self, op: &'static str, outcome: &'static str) -> u64 {
        self.store_calls
            .get(&StoreCallLabel { op, outcome })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Set the drain phase gauge and state-set.
    pub fn set_phase(&self, phase: DrainPhase) {
        self.drain_phase.set(phase as i64);
        for p in DrainPhase::ALL {
            self.drain_state
                .get_or_create(&StateLabel { state: p.label() })
                .set(i64::from(p == phase));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Value of a labelled counter, for tests and logs.
    pub fn count(&self, family: &str, label: &'static str) -> u64 {
        let fam = match family {
            "takeovers" => &self.takeovers,
            "takeover_overlap" => &self.takeover_overlap,
            "forwards" => &self.forwards,
            "resumes" => &self.resumes,
            _ => return self.other_count(family, label),
        };
        fam.get(&OutcomeLabel { outcome: label })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    fn other_count(&self, family: &str, label: &'static str) -> u64 {
        match family {
            "handovers" => self
                .handovers
                .get(&ReasonLabel { reason: label })
                .map(|c| c.get())
                .unwrap_or(0),
            "streams_opened" => self
                .streams_opened
                .get(&KindLabel { kind: label })
                .map(|c| c.get())
                .unwrap_or(0),
            "connections_refused" => self
                .connections_refused
                .get(&ReasonLabel { reason: label })
                .map(|c| c.get())
                .unwrap_or(0),
            "admin_refused" => self
                .admin_refused
                .get(&ReasonLabel { reason: label })
                .map(|c| c.get())
                .unwrap_or(0),
            "errors" => self
                .errors
                .get(&KindLabel { kind: label })
                .map(|c| c.get())
                .unwrap_or(0),
            "requests" => self
                .requests
                .get(&RouteLabel { route: label })
                .map(|c| c.get())
                .unwrap_or(0),
            _ => 0,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_phase_is_a_state_set_and_the_build_is_named() {
        let m = Metrics::new();
        m.set_phase(DrainPhase::Draining);
        let text = m.encode();
        assert!(
            text.contains(r#"ssekeeper_drain_state{state="draining"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ssekeeper_drain_state{state="serving"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"ssekeeper_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    #[test]
    fn unrouted_key_names_are_bounded() {
        let m = Metrics::new();
        m.unrouted_session_key("query:session_id");
        m.unrouted_session_key("query:session_id");
        for i in 0..40 {
            m.unrouted_session_key(&format!("header:x-session-{i}"));
        }
        let text = m.encode();
        assert!(
            text.contains(r#"ssekeeper_unrouted_session_keys_total{name="query:session_id"} 2"#),
            "{text}"
        );
        let names = text
            .lines()
            .filter(|l| l.starts_with("ssekeeper_unrouted_session_keys_total{"))
            .count();
        assert_eq!(names, MAX_UNROUTED_NAMES + 1, "16 names, then other");
        assert!(text.contains(r#"ssekeeper_unrouted_session_keys_total{name="other"} 25"#));
    }
}
