//! The sidecar's flags: [`SidecarArgs`] (the proxy) and [`PrestopArgs`] (its preStop
//! subcommand), parsed by the sidecar with clap and rendered by the operator with `to_args`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{
    ADMIN_PORT, HANDOVER_MARGIN_SECONDS, LIFECYCLE_SOCKET_ENV, LIFECYCLE_SOCKET_PATH,
    PRESTOP_ANSWER_MARGIN_SECONDS, PRESTOP_DEFAULT_TIMEOUT_SECONDS, PRESTOP_SUBCOMMAND,
    SIDECAR_BINARY_PATH, SSE_PORT, defaults, env,
};

/// Where the sessions live.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Redis (streams): shared by every replica, the only choice for more than one.
    Redis,
    /// In-process memory: one replica only, lost on restart.
    Memory,
}

impl StoreKind {
    /// The value as written on the command line and in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Memory => "memory",
        }
    }
}

/// The request values a stream's cursors are bound to (`--identity`): whoever resumes must
/// present the same ones. A comma-separated list of `header:NAME`, `cookie:NAME` or
/// `query:NAME`; empty binds cursors to the path only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySources(pub Vec<SessionKeySource>);

impl Default for IdentitySources {
    /// `Authorization` (bearer tokens: the SDKs, `fetch`-based clients). Not the whole `Cookie`
    /// header: load balancers' affinity cookies (ingress-nginx's, AWS ALB's, which rotates on
    /// every response) and page scripts change it between a stream and its reconnect, and a
    /// binding that changes turns every resume into a fresh stream. Browser apps that
    /// authenticate with a cookie name it (`cookie:NAME`).
    fn default() -> Self {
        IdentitySources(vec![SessionKeySource::Header("Authorization".into())])
    }
}

impl FromStr for IdentitySources {
    type Err = InvalidSessionKeySource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(IdentitySources)
    }
}

impl fmt::Display for IdentitySources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// What a client resuming across a hole in its session's history is told (the history was
/// trimmed past its cursor, expired, or not recorded while the store was down).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HistoryGap {
    /// An event of type [`crate::GAP_EVENT_TYPE`] where the hole is (browsers ignore it unless
    /// they listen for that type; an app's client can re-sync on it).
    Event,
    /// Nothing: the stream continues after the hole (counted in `replay_gaps_total` only).
    None,
}

impl HistoryGap {
    /// The value as written on the command line and in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryGap::Event => "event",
            HistoryGap::None => "none",
        }
    }
}

/// Where a request names its session. The first source that matches wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionKeySource {
    /// A query parameter, e.g. MCP's SSE transport `?sessionId=`.
    Query(String),
    /// A request header, e.g. MCP Streamable HTTP's `Mcp-Session-Id`.
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// A `--session-key` value that is not `query:NAME`, `header:NAME` or `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session key source {0:?}: expected query:NAME, header:NAME or cookie:NAME")]
pub struct InvalidSessionKeySource(pub String);

impl FromStr for SessionKeySource {
    type Err = InvalidSessionKeySource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSessionKeySource(s.to_string());
        let (kind, name) = s.split_once(':').ok_or_else(invalid)?;
        if name.is_empty() || name.contains([',', ' ']) {
            return Err(invalid());
        }
        match kind {
            "query" => Ok(Self::Query(name.to_string())),
            "header" => Ok(Self::Header(name.to_string())),
            "cookie" => Ok(Self::Cookie(name.to_string())),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for SessionKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Query(n) => write!(f, "query:{n}"),
            Self::Header(n) => write!(f, "header:{n}"),
            Self::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// How the sidecar writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for clusters.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// One `--broadcast` value: a path whose stream is the same for every client, and how many of
/// its events are kept for resumes.
///
/// Syntax `<path>[=<historyLimit>]`. The match is exact on the request's path (its query is not
/// part of the match and not sent to the app: the one upstream is `GET <path>`), because a
/// broadcast must mean one stream; a prefix or pattern would merge different streams into one
/// id sequence. The path must be absolute (`/…`), carry no query or fragment, no whitespace or
/// control characters, and be at most [`BroadcastPath::MAX_LEN`] bytes; the limit is 1..=10,000,000.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastPath {
    /// The exact request path.
    pub path: String,
    /// Events kept in its stream (trimmed approximately, like a session's history).
    pub history_limit: u32,
}

impl BroadcastPath {
    /// Longest accepted path: it becomes a metric label and is hashed into a Redis key.
    pub const MAX_LEN: usize = 512;
    /// Largest accepted history limit (memory bound in Redis).
    pub const MAX_HISTORY: u32 = 10_000_000;
}

/// Why a `--broadcast` value (or the set of them) was refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBroadcast {
    /// The path does not start with `/`.
    #[error("broadcast path {0:?} must be absolute (start with '/')")]
    NotAbsolute(String),
    /// The path carries a query or fragment.
    #[error(
        "broadcast path {0:?} must not carry a query or fragment (the match is on the path alone)"
    )]
    Query(String),
    /// The path has whitespace or control characters, or is too long.
    #[error(
        "broadcast path {0:?} has whitespace or control characters, or is longer than 512 bytes"
    )]
    Characters(String),
    /// The history limit is not a number in range.
    #[error("broadcast history limit {0:?} must be a whole number from 1 to 10000000")]
    Limit(String),
    /// The same path was given twice.
    #[error("broadcast path {0:?} is given more than once")]
    Duplicate(String),
    /// Broadcast needs the Redis store.
    #[error("--broadcast needs --store=redis: the memory store has no stream shared by the pods")]
    NeedsRedis,
}

impl FromStr for BroadcastPath {
    type Err = InvalidBroadcast;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (path, limit) = match s.rsplit_once('=') {
            Some((p, l)) if !p.contains('?') => (p, Some(l)),
            _ => (s, None),
        };
        if path.contains(['?', '#']) {
            return Err(InvalidBroadcast::Query(path.to_string()));
        }
        if !path.starts_with('/') {
            return Err(InvalidBroadcast::NotAbsolute(path.to_string()));
        }
        if path.len() > Self::MAX_LEN || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidBroadcast::Characters(path.to_string()));
        }
        let history_limit = match limit {
            None => crate::defaults::BROADCAST_HISTORY_LIMIT,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=Self::MAX_HISTORY).contains(n))
                .ok_or_else(|| InvalidBroadcast::Limit(l.to_string()))?,
        };
        Ok(BroadcastPath {
            path: path.to_string(),
            history_limit,
        })
    }
}

impl fmt::Display for BroadcastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.path, self.history_limit)
    }
}

/// Check a set of `--broadcast` values as a whole: no path twice, and a store that can share
/// one stream between pods. Clap checks each value alone; this is the rest.
pub fn validate_broadcast(
    paths: &[BroadcastPath],
    store: StoreKind,
) -> Result<(), InvalidBroadcast> {
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        if !seen.insert(p.path.as_str()) {
            return Err(InvalidBroadcast::Duplicate(p.path.clone()));
        }
    }
    if !paths.is_empty() && store != StoreKind::Redis {
        return Err(InvalidBroadcast::NeedsRedis);
    }
    Ok(())
}

/// Every setting of the sidecar. Flags for what the operator renders into `args`, environment
/// variables for secrets and pod identity; every flag also reads an `SSEKEEPER_*` variable.
#[derive(Debug, Clone, PartialEq, clap::Parser)]
#[command(
    name = "ssekeeper-sidecar",
    version,
    about = "SSE-aware sidecar proxy",
    after_help = "The preStop hook: `ssekeeper-sidecar prestop [--lifecycle-socket PATH]` (see `ssekeeper-sidecar prestop --help`)."
)]
pub struct SidecarArgs {
    /// Port of the app on 127.0.0.1.
    #[arg(long, env = "SSEKEEPER_APP_PORT")]
    pub app_port: u16,
    /// Address of the app (loopback in a pod; tests run several "pods" on 127.0.0.x).
    #[arg(long, env = "SSEKEEPER_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: IpAddr,
    /// Address to listen on for client and admin traffic.
    #[arg(long, env = "SSEKEEPER_LISTEN_HOST", default_value = "0.0.0.0")]
    pub listen_host: IpAddr,
    /// Client traffic port.
    #[arg(long, env = "SSEKEEPER_SSE_PORT", default_value_t = SSE_PORT)]
    pub sse_port: u16,
    /// Admin port.
    #[arg(long, env = "SSEKEEPER_ADMIN_PORT", default_value_t = ADMIN_PORT)]
    pub admin_port: u16,
    /// Namespace of the SseService (namespaces the store keys).
    #[arg(long, env = "SSEKEEPER_SERVICE_NAMESPACE")]
    pub service_namespace: String,
    /// Name of the SseService (namespaces the store keys).
    #[arg(long, env = "SSEKEEPER_SERVICE_NAME")]
    pub service_name: String,
    /// Session store.
    #[arg(long, env = "SSEKEEPER_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// Redis URL (redis://, rediss://, redis+sentinel://, or a comma-separated cluster list).
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Seconds a disconnected session stays resumable (sliding).
    #[arg(long, env = "SSEKEEPER_SESSION_TTL_SECONDS", default_value_t = defaults::SESSION_TTL_SECONDS)]
    pub session_ttl_seconds: u32,
    /// Events kept per session for replay, whatever their age.
    #[arg(long, env = "SSEKEEPER_HISTORY_LIMIT", default_value_t = defaults::HISTORY_LIMIT)]
    pub history_limit: u32,
    /// Events younger than this many seconds are kept too, so a handoff's resumes find them at
    /// any rate (default: derived from the drain, see `history_floor_seconds`).
    #[arg(long, env = "SSEKEEPER_HISTORY_SECONDS")]
    pub history_seconds: Option<u32>,
    /// Events kept per session at most, whatever the time floor or a drain wants (memory bound).
    #[arg(long, env = "SSEKEEPER_HISTORY_MAX_ENTRIES", default_value_t = defaults::HISTORY_MAX_ENTRIES)]
    pub history_max_entries: u32,
    /// What a client resuming across a hole in its history is told.
    #[arg(long, env = "SSEKEEPER_ON_HISTORY_GAP", value_enum, default_value_t = HistoryGap::Event)]
    pub on_history_gap: HistoryGap,
    /// Where a request names its session, in order (`query:NAME`, `header:NAME`, `cookie:NAME`).
    #[arg(
        long = "session-key",
        env = "SSEKEEPER_SESSION_KEYS",
        value_delimiter = ','
    )]
    pub session_keys: Vec<SessionKeySource>,
    /// What a stream's cursors are bound to (see [`IdentitySources`]).
    #[arg(long, env = "SSEKEEPER_IDENTITY", default_value_t = IdentitySources::default())]
    pub identity: IdentitySources,
    /// Unix socket the preStop hook (`ssekeeper-sidecar prestop`) reaches this sidecar on; a stale
    /// socket file is replaced at start-up, the new one is made `0600`.
    #[arg(long, env = LIFECYCLE_SOCKET_ENV, default_value = LIFECYCLE_SOCKET_PATH)]
    pub lifecycle_socket: PathBuf,
    /// Seconds the preStop hook holds after flipping readiness, so load balancers forget the pod.
    #[arg(long, env = "SSEKEEPER_PRESTOP_DELAY_SECONDS", default_value_t = defaults::PRESTOP_DELAY_SECONDS)]
    pub prestop_delay_seconds: u32,
    /// Seconds over which stream closes are spread after SIGTERM.
    #[arg(long, env = "SSEKEEPER_DRAIN_SECONDS", default_value_t = defaults::DRAIN_SECONDS)]
    pub drain_seconds: u32,
    /// Seconds after SIGTERM that request streams (the SSE answer of a `POST`: an LLM
    /// completion) and session streams may still run to their end; cut there.
    #[arg(long, env = "SSEKEEPER_REQUEST_SECONDS", default_value_t = defaults::REQUEST_SECONDS)]
    pub request_seconds: u32,
    /// The `retry:` hint sent to clients before their stream is closed.
    #[arg(long, env = "SSEKEEPER_RECONNECT_DELAY_MILLIS", default_value_t = defaults::RECONNECT_DELAY_MILLIS)]
    pub reconnect_delay_millis: u32,
    /// Seconds after the drain window to keep capturing until new owners take over.
    #[arg(long, env = "SSEKEEPER_HANDOVER_MARGIN_SECONDS", default_value_t = HANDOVER_MARGIN_SECONDS)]
    pub handover_margin_seconds: u32,
    /// Log format.
    #[arg(long, env = "SSEKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Key authenticating `/internal/forward` between sidecars of one SseService.
    #[arg(long, env = env::FORWARD_KEY, hide_env_values = true)]
    pub forward_key: Option<String>,
    /// This pod's name.
    #[arg(long, env = env::POD_NAME, default_value = "")]
    pub pod_name: String,
    /// This pod's IP, advertised to other sidecars for forwarding.
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<IpAddr>,
    /// Seconds an owner's lease lives without renewal: how long a crashed pod's sessions wait
    /// before another pod takes them over. Renewed every third of it.
    #[arg(long, env = "SSEKEEPER_LEASE_TTL_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=3600))]
    pub lease_ttl_seconds: u32,
    /// Seconds a recorder keeps capturing the app's stream after its client went away, so the
    /// client can come back (to any pod) without a gap; then it records a handover and stops.
    #[arg(long, env = "SSEKEEPER_RESUME_WINDOW_SECONDS", default_value_t = 30)]
    pub resume_window_seconds: u32,
    /// Most concurrent client streams; more are refused with 503.
    #[arg(long, env = "SSEKEEPER_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: u32,
    /// Most client connections at once (streams, requests and idle keep-alives alike); more are
    /// answered 503 and closed at accept. Sized for the default 128 Mi memory limit (about
    /// 40 KiB a connection at worst); lowered at start when `RLIMIT_NOFILE` cannot hold it.
    #[arg(long, env = "SSEKEEPER_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: u32,
    /// Most client connections from one address (0: no per-address bound). Behind an ingress or a
    /// load balancer that rewrites source addresses every client shares one: leave it 0 there.
    #[arg(long, env = "SSEKEEPER_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,
    /// Milliseconds a client has to send a whole request head.
    #[arg(long, env = "SSEKEEPER_HEADER_TIMEOUT_MILLIS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub header_timeout_millis: u32,
    /// Most recorders kept capturing after their client left (for its resume); a client that
    /// leaves beyond it gets no resume window, so connect-and-leave cannot pile up app streams.
    #[arg(long, env = "SSEKEEPER_MAX_DETACHED", default_value_t = defaults::MAX_DETACHED)]
    pub max_detached: u32,
    /// Largest event the parser accepts from the app; bigger ones are dropped (metric).
    #[arg(long, env = "SSEKEEPER_MAX_EVENT_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_event_bytes: u32,
    /// Bytes queued for one client; when they are used up the app's stream is paused (as a plain
    /// proxy's TCP backpressure would) until the client reads.
    #[arg(long, env = "SSEKEEPER_CLIENT_BUFFER_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..))]
    pub client_buffer_bytes: u32,
    /// Milliseconds a client may leave its queue full before it is cut as a slow consumer (it then
    /// resumes from its cursor and the app's stream is captured again).
    #[arg(long, env = "SSEKEEPER_CLIENT_STALL_MILLIS", default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_stall_millis: u32,
    /// Recent events a recorder keeps in memory to resume a client on the same pod without the
    /// store (the store covers anything older).
    #[arg(long, env = "SSEKEEPER_RESUME_BUFFER_EVENTS", default_value_t = 64)]
    pub resume_buffer_events: u32,
    /// Largest request head (request line and headers) accepted from a client.
    #[arg(long, env = "SSEKEEPER_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,
    /// Milliseconds a recorded event may wait before its batch is written to the store: the
    /// most a SIGKILL can lose.
    #[arg(long, env = "SSEKEEPER_BATCH_WINDOW_MILLIS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_window_millis: u32,
    /// Most entries written to the store in one batch.
    #[arg(long, env = "SSEKEEPER_BATCH_MAX_ENTRIES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_max_entries: u32,
    /// Milliseconds to wait for the app's response head (connect included); 504 after.
    #[arg(
        long,
        env = "SSEKEEPER_UPSTREAM_TIMEOUT_MILLIS",
        default_value_t = 60_000
    )]
    pub upstream_timeout_millis: u32,
    /// Milliseconds to wait for another sidecar's response head when forwarding to a session's owner.
    #[arg(
        long,
        env = "SSEKEEPER_FORWARD_TIMEOUT_MILLIS",
        default_value_t = 5_000
    )]
    pub forward_timeout_millis: u32,
    /// Milliseconds a store call on a request's path may take before the sidecar serves without it.
    #[arg(long, env = "SSEKEEPER_STORE_TIMEOUT_MILLIS", default_value_t = 1_000)]
    pub store_timeout_millis: u32,
    /// Seconds a forwarding signature stays valid after it was made (one-sided: at most 1 s in
    /// the receiver's future is accepted, for clock skew); each forward is accepted once.
    #[arg(long, env = "SSEKEEPER_FORWARD_MAX_AGE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub forward_max_age_seconds: u32,
    /// A broadcast path, `<path>[=<historyLimit>]` (repeatable; see [`BroadcastPath`]): one
    /// upstream per SseService, fanned out to every client on every pod through Redis.
    #[arg(long = "broadcast", env = "SSEKEEPER_BROADCAST", value_delimiter = ',')]
    pub broadcast: Vec<BroadcastPath>,
    /// Bearer token the app presents to publish to a broadcast path (`POST /broadcast` on the
    /// admin port, from loopback only); unset: publishing is refused.
    #[arg(
        long,
        env = env::BROADCAST_PUBLISH_TOKEN,
        hide_env_values = true
    )]
    pub broadcast_publish_token: Option<String>,
    /// Move resumable streams from a pod holding more than its fair share to the others
    /// (slowly, through the drain's handoff: `retry:` hint, close, resume with `Last-Event-ID`
    /// elsewhere). Off by default: it disconnects healthy clients on purpose, which only pays
    /// when they really reconnect with `Last-Event-ID`, the Service has no client-IP affinity
    /// (a reconnect must be able to land on another pod) and the store is Redis.
    #[arg(long, env = "SSEKEEPER_REBALANCE", default_value_t = false)]
    pub rebalance: bool,
    /// Percent above the mean of the serving pods a pod may hold before it sheds; it then sheds
    /// down to half of this above the mean (hysteresis).
    #[arg(long, env = "SSEKEEPER_REBALANCE_TOLERANCE_PERCENT", default_value_t = defaults::REBALANCE_TOLERANCE_PERCENT, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rebalance_tolerance_percent: u32,
    /// Most streams this pod sheds per second (each a client reconnect), spaced and jittered.
    #[arg(long, env = "SSEKEEPER_REBALANCE_MAX_SHED_PER_SECOND", default_value_t = defaults::REBALANCE_MAX_SHED_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rebalance_max_shed_per_second: u32,
    /// Seconds between two publications of this pod's stream count (each also reads the
    /// others' and re-decides); an entry three intervals old is stale.
    #[arg(long, env = "SSEKEEPER_REBALANCE_INTERVAL_SECONDS", default_value_t = defaults::REBALANCE_INTERVAL_SECONDS, value_parser = clap::value_parser!(u32).range(1..=300))]
    pub rebalance_interval_seconds: u32,
}

impl SidecarArgs {
    /// The command-line flags for every non-secret setting, as the operator renders them into the
    /// container's `args`. Secrets and pod identity are left out on purpose: they come from `env`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--app-port={}", self.app_port),
            format!("--app-host={}", self.app_host),
            format!("--listen-host={}", self.listen_host),
            format!("--sse-port={}", self.sse_port),
            format!("--admin-port={}", self.admin_port),
            format!("--service-namespace={}", self.service_namespace),
            format!("--service-name={}", self.service_name),
            format!("--store={}", self.store.as_str()),
            format!("--on-history-gap={}", self.on_history_gap.as_str()),
            format!("--session-ttl-seconds={}", self.session_ttl_seconds),
            format!("--history-limit={}", self.history_limit),
            format!("--history-seconds={}", self.history_floor_seconds()),
            format!("--history-max-entries={}", self.history_max_entries),
            format!("--lifecycle-socket={}", self.lifecycle_socket.display()),
            format!("--identity={}", self.identity),
        ];
        args.extend(
            self.session_keys
                .iter()
                .map(|k| format!("--session-key={k}")),
        );
        args.extend(self.broadcast.iter().map(|b| format!("--broadcast={b}")));
        // Only when on: off, the other three mean nothing, and pods rendered before rebalancing
        // existed keep the same arguments (no rollout for a feature they do not use).
        if self.rebalance {
            args.extend([
                "--rebalance".to_string(),
                format!(
                    "--rebalance-tolerance-percent={}",
                    self.rebalance_tolerance_percent
                ),
                format!(
                    "--rebalance-max-shed-per-second={}",
                    self.rebalance_max_shed_per_second
                ),
                format!(
                    "--rebalance-interval-seconds={}",
                    self.rebalance_interval_seconds
                ),
            ]);
        }
        args.extend([
            format!("--prestop-delay-seconds={}", self.prestop_delay_seconds),
            format!("--drain-seconds={}", self.drain_seconds),
            format!("--request-seconds={}", self.request_seconds),
            format!("--reconnect-delay-millis={}", self.reconnect_delay_millis),
            format!("--handover-margin-seconds={}", self.handover_margin_seconds),
            format!("--lease-ttl-seconds={}", self.lease_ttl_seconds),
            format!("--resume-window-seconds={}", self.resume_window_seconds),
            format!("--max-streams={}", self.max_streams),
            format!("--max-connections={}", self.max_connections),
            format!("--max-connections-per-ip={}", self.max_connections_per_ip),
            format!("--header-timeout-millis={}", self.header_timeout_millis),
            format!("--max-detached={}", self.max_detached),
            format!("--max-event-bytes={}", self.max_event_bytes),
            format!("--client-buffer-bytes={}", self.client_buffer_bytes),
            format!("--client-stall-millis={}", self.client_stall_millis),
            format!("--resume-buffer-events={}", self.resume_buffer_events),
            format!("--max-header-bytes={}", self.max_header_bytes),
            format!("--batch-window-millis={}", self.batch_window_millis),
            format!("--batch-max-entries={}", self.batch_max_entries),
            format!("--upstream-timeout-millis={}", self.upstream_timeout_millis),
            format!("--forward-timeout-millis={}", self.forward_timeout_millis),
            format!("--store-timeout-millis={}", self.store_timeout_millis),
            format!("--forward-max-age-seconds={}", self.forward_max_age_seconds),
            format!(
                "--log-format={}",
                match self.log_format {
                    LogFormat::Json => "json",
                    LogFormat::Pretty => "pretty",
                }
            ),
        ]);
        args
    }

    /// The history's time floor: `--history-seconds`, or by default long enough for every client
    /// a drain moves to resume — the drain window, the handover margin, the reconnect delay, and
    /// [`crate::HISTORY_FLOOR_SLACK_SECONDS`] for a slow reconnect.
    pub fn history_floor_seconds(&self) -> u32 {
        self.history_seconds.unwrap_or_else(|| {
            crate::history_floor_seconds(
                self.drain_seconds,
                self.handover_margin_seconds,
                self.reconnect_delay_millis,
            )
        })
    }

    /// A configuration with every default, for the given app port and SseService. The operator
    /// starts from this and overrides what the spec sets.
    pub fn defaults(app_port: u16, service_namespace: &str, service_name: &str) -> Self {
        use clap::Parser;
        Self::parse_from([
            "ssekeeper-sidecar".to_string(),
            format!("--app-port={app_port}"),
            format!("--service-namespace={service_namespace}"),
            format!("--service-name={service_name}"),
        ])
    }
}

/// `ssekeeper-sidecar prestop`: what the kubelet's `exec` preStop hook runs. It asks the sidecar
/// of its own container, over the lifecycle socket, to flip readiness and hold, and exits 0 once
/// the hold is over (non-zero, with the reason, if the sidecar cannot be reached or refuses).
#[derive(Debug, Clone, PartialEq, clap::Parser)]
#[command(
    name = "prestop",
    bin_name = "ssekeeper-sidecar prestop",
    version,
    about = "Run the sidecar's preStop hook: readiness off, then hold (the kubelet's exec preStop)"
)]
pub struct PrestopArgs {
    /// The running sidecar's lifecycle socket (its `--lifecycle-socket`).
    #[arg(long, env = LIFECYCLE_SOCKET_ENV, default_value = LIFECYCLE_SOCKET_PATH)]
    pub lifecycle_socket: PathBuf,
    /// Seconds to wait for the sidecar's answer (the preStop hold) before giving up.
    #[arg(long, env = "SSEKEEPER_PRESTOP_TIMEOUT_SECONDS", default_value_t = PRESTOP_DEFAULT_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout_seconds: u32,
}

impl PrestopArgs {
    /// The hook's settings for a sidecar configured by `sidecar`: its socket, and an answer
    /// expected within the preStop hold plus [`PRESTOP_ANSWER_MARGIN_SECONDS`].
    pub fn for_sidecar(sidecar: &SidecarArgs) -> Self {
        Self {
            lifecycle_socket: sidecar.lifecycle_socket.clone(),
            timeout_seconds: sidecar.prestop_delay_seconds + PRESTOP_ANSWER_MARGIN_SECONDS,
        }
    }

    /// The subcommand and its flags, as they follow the binary on the command line.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            PRESTOP_SUBCOMMAND.to_string(),
            format!("--lifecycle-socket={}", self.lifecycle_socket.display()),
            format!("--timeout-seconds={}", self.timeout_seconds),
        ]
    }
}

/// The preStop `exec` command the operator renders for a sidecar configured by `sidecar`: the
/// binary at [`SIDECAR_BINARY_PATH`] running [`PRESTOP_SUBCOMMAND`] on that sidecar's socket.
pub fn prestop_command(sidecar: &SidecarArgs) -> Vec<String> {
    std::iter::once(SIDECAR_BINARY_PATH.to_string())
        .chain(PrestopArgs::for_sidecar(sidecar).to_args())
        .collect()
}
