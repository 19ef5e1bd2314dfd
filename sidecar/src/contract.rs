//! The contract between the operator and the sidecar.
//!
//! The operator renders a pod and the sidecar runs in it; if the two disagreed on a port, a flag,
//! an environment variable or a Redis key, the failure would only show in a live cluster. So every
//! such name lives here, once: the operator renders [`SidecarArgs::to_args`] and the sidecar parses
//! the same struct with clap, and tests on both sides prove the round trip.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Name of the injected container; the operator refuses a template that already uses it.
pub const SIDECAR_CONTAINER_NAME: &str = "ssekeeper";

/// Port the Service targets: client traffic enters here and is proxied to the app.
pub const SSE_PORT: u16 = 8800;
/// Port name for [`SSE_PORT`]; the Service targets it by name so a port change needs no Service edit.
pub const SSE_PORT_NAME: &str = "sse";
/// Port for probes, metrics and sidecar-to-sidecar forwarding (never the preStop hook: see
/// [`LIFECYCLE_SOCKET_PATH`]).
pub const ADMIN_PORT: u16 = 8801;
/// Port name for [`ADMIN_PORT`].
pub const ADMIN_PORT_NAME: &str = "admin";

/// Where the sidecar's binary is installed in its image. The kubelet's `exec` preStop hook runs it
/// ([`prestop_command`]), so the image needs no shell and the path must not move.
pub const SIDECAR_BINARY_PATH: &str = "/usr/local/bin/ssekeeper-sidecar";
/// The binary's subcommand the preStop hook runs: it asks the running sidecar, over
/// [`LIFECYCLE_SOCKET_PATH`], to flip readiness and hold, and exits when the hold is over.
pub const PRESTOP_SUBCOMMAND: &str = "prestop";

/// Directory of the lifecycle socket. The operator mounts a small memory-backed `emptyDir`
/// ([`LIFECYCLE_VOLUME_NAME`]) here in the sidecar container only, so nothing outside that
/// container (not the app, not another pod) can reach the socket.
pub const LIFECYCLE_SOCKET_DIR: &str = "/run/ssekeeper";
/// The unix socket the sidecar serves its preStop hook on (`POST /prestop`). The drain is
/// triggered only through it: a network endpoint would let any pod that reaches the admin port
/// take a replica out of service.
pub const LIFECYCLE_SOCKET_PATH: &str = "/run/ssekeeper/lifecycle.sock";
/// Environment variable naming the lifecycle socket, read by the sidecar and by its
/// [`PRESTOP_SUBCOMMAND`] alike (the flag is `--lifecycle-socket`).
pub const LIFECYCLE_SOCKET_ENV: &str = "SSEKEEPER_LIFECYCLE_SOCKET";
/// Name of the `emptyDir` volume holding the lifecycle socket; the operator refuses a template
/// that already uses it (as a volume or a mount), so no other container can be given the socket.
pub const LIFECYCLE_VOLUME_NAME: &str = "ssekeeper-run";
/// `sizeLimit` of [`LIFECYCLE_VOLUME_NAME`] (memory-backed: it holds one socket, nothing else).
pub const LIFECYCLE_VOLUME_SIZE_LIMIT: &str = "1Mi";
/// How long the preStop subcommand waits for the sidecar's answer when not told otherwise: longer
/// than the largest `preStopDelaySeconds` (300), so only a wedged sidecar makes it give up.
pub const PRESTOP_DEFAULT_TIMEOUT_SECONDS: u32 = 600;
/// Seconds the rendered preStop subcommand waits beyond the preStop hold before it gives up, so
/// a wedged sidecar still gets its SIGTERM (and drains) well within the grace period.
pub const PRESTOP_ANSWER_MARGIN_SECONDS: u32 = 10;
/// The body the admin port answers `/prestop` with (status 404): the drain cannot be triggered
/// over the network, and whoever tries learns where the hook lives.
pub const PRESTOP_REFUSED_BODY: &str = concat!(
    "not found: /prestop is not served on the network; ",
    "the preStop hook runs `ssekeeper-sidecar prestop` on the sidecar's lifecycle socket\n"
);

/// Seconds after the drain window during which a draining pod keeps capturing upstreams until
/// every new owner has taken its sessions over. Part of the grace period the operator renders.
pub const HANDOVER_MARGIN_SECONDS: u32 = 10;
/// Seconds the app gets after SIGTERM (it receives it only once every stream was handed over).
pub const APP_SHUTDOWN_MARGIN_SECONDS: u32 = 5;

/// The pod's `terminationGracePeriodSeconds`: preStop hold, drain window, handover, app shutdown.
/// The sidecar uses the same sum to know its own deadline.
pub fn termination_grace_period_seconds(prestop_delay_seconds: u32, drain_seconds: u32) -> u32 {
    app_prestop_sleep_seconds(prestop_delay_seconds, drain_seconds) + APP_SHUTDOWN_MARGIN_SECONDS
}

/// How long the app container's native `sleep` preStop lasts, so the app keeps serving until the
/// sidecar has closed every client stream and handed every session over.
pub fn app_prestop_sleep_seconds(prestop_delay_seconds: u32, drain_seconds: u32) -> u32 {
    prestop_delay_seconds + drain_seconds + HANDOVER_MARGIN_SECONDS
}

/// HTTP paths served on the admin port (and, for [`paths::PRESTOP`], on the lifecycle socket only).
pub mod paths {
    /// Readiness: false while draining or while the app is not ready.
    pub const READY: &str = "/ready";
    /// Liveness: false only when the sidecar itself is wedged.
    pub const LIVE: &str = "/live";
    /// Prometheus metrics (OpenMetrics text).
    pub const METRICS: &str = "/metrics";
    /// The preStop hook (`POST`, on the lifecycle socket only; the admin port refuses it): flips
    /// readiness and holds `preStopDelaySeconds`.
    pub const PRESTOP: &str = "/prestop";
    /// Sidecar-to-sidecar forwarding of a request to the pod that owns its session.
    pub const FORWARD: &str = "/internal/forward";
}

/// Environment variables the operator sets from Secrets and the downward API (never as flags:
/// secrets must not appear in `ps` or in the pod spec, pod identity is only known at run time).
pub mod env {
    /// Redis URL, from the Secret named in `spec.sessions.redis.secretRef`.
    pub const REDIS_URL: &str = "SSEKEEPER_REDIS_URL";
    /// Per-SseService key authenticating `/internal/forward`, from the operator-made Secret.
    pub const FORWARD_KEY: &str = "SSEKEEPER_FORWARD_KEY";
    /// Pod name (downward API `metadata.name`).
    pub const POD_NAME: &str = "POD_NAME";
    /// Pod IP (downward API `status.podIP`); other sidecars forward to it.
    pub const POD_IP: &str = "POD_IP";
    /// Pod namespace (downward API `metadata.namespace`).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
}

/// The Secret the operator creates per SseService for the forwarding key.
pub fn forward_secret_name(service_name: &str) -> String {
    format!("{service_name}-ssekeeper")
}

/// The key inside [`forward_secret_name`] holding the forwarding key.
pub const FORWARD_KEY_SECRET_KEY: &str = "forward-key";

/// Redis key layout. Every key of one SseService starts with [`keys::service_prefix`], so the
/// operator's finalizer can purge exactly that service's sessions, and every per-session key
/// carries the session in a `{hash tag}` so all of a session's keys land in one Redis Cluster slot.
pub mod keys {
    /// Prefix shared by every key of the SseService `namespace/name`.
    pub fn service_prefix(namespace: &str, name: &str) -> String {
        format!("ssekeeper:{namespace}/{name}:")
    }

    /// `SCAN MATCH` pattern for every key of one SseService. Kubernetes names contain no glob
    /// characters, so the prefix needs no escaping.
    pub fn service_pattern(namespace: &str, name: &str) -> String {
        format!("{}*", service_prefix(namespace, name))
    }

    /// A per-session key: `<prefix>{<session>}:<suffix>`. `session` must not contain `{` or `}`
    /// (session ids are validated before they reach the store).
    pub fn session_key(namespace: &str, name: &str, session: &str, suffix: &str) -> String {
        format!("{}{{{session}}}:{suffix}", service_prefix(namespace, name))
    }
}

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
    #[arg(long, env = "SSEKEEPER_SESSION_TTL_SECONDS", default_value_t = 300)]
    pub session_ttl_seconds: u32,
    /// Events kept per session for replay.
    #[arg(long, env = "SSEKEEPER_HISTORY_LIMIT", default_value_t = 1000)]
    pub history_limit: u32,
    /// Where a request names its session, in order (`query:NAME`, `header:NAME`, `cookie:NAME`).
    #[arg(
        long = "session-key",
        env = "SSEKEEPER_SESSION_KEYS",
        value_delimiter = ','
    )]
    pub session_keys: Vec<SessionKeySource>,
    /// Unix socket the preStop hook (`ssekeeper-sidecar prestop`) reaches this sidecar on; a stale
    /// socket file is replaced at start-up, the new one is made `0600`.
    #[arg(long, env = LIFECYCLE_SOCKET_ENV, default_value = LIFECYCLE_SOCKET_PATH)]
    pub lifecycle_socket: PathBuf,
    /// Seconds the preStop hook holds after flipping readiness, so load balancers forget the pod.
    #[arg(long, env = "SSEKEEPER_PRESTOP_DELAY_SECONDS", default_value_t = 5)]
    pub prestop_delay_seconds: u32,
    /// Seconds over which stream closes are spread after SIGTERM.
    #[arg(long, env = "SSEKEEPER_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u32,
    /// The `retry:` hint sent to clients before their stream is closed.
    #[arg(long, env = "SSEKEEPER_RECONNECT_DELAY_MILLIS", default_value_t = 1000)]
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
    /// Seconds a forwarding signature stays valid (either side of the receiver's clock).
    #[arg(long, env = "SSEKEEPER_FORWARD_MAX_SKEW_SECONDS", default_value_t = 30)]
    pub forward_max_skew_seconds: u32,
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
            format!("--session-ttl-seconds={}", self.session_ttl_seconds),
            format!("--history-limit={}", self.history_limit),
            format!("--lifecycle-socket={}", self.lifecycle_socket.display()),
        ];
        args.extend(
            self.session_keys
                .iter()
                .map(|k| format!("--session-key={k}")),
        );
        args.extend([
            format!("--prestop-delay-seconds={}", self.prestop_delay_seconds),
            format!("--drain-seconds={}", self.drain_seconds),
            format!("--reconnect-delay-millis={}", self.reconnect_delay_millis),
            format!("--handover-margin-seconds={}", self.handover_margin_seconds),
            format!("--lease-ttl-seconds={}", self.lease_ttl_seconds),
            format!("--resume-window-seconds={}", self.resume_window_seconds),
            format!("--max-streams={}", self.max_streams),
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
            format!(
                "--forward-max-skew-seconds={}",
                self.forward_max_skew_seconds
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn rendered_args_parse_back_to_the_same_config() {
        let mut cfg = SidecarArgs::defaults(8080, "prod", "chat");
        cfg.store = StoreKind::Redis;
        cfg.session_keys = vec![
            SessionKeySource::Query("sessionId".into()),
            SessionKeySource::Header("Mcp-Session-Id".into()),
            SessionKeySource::Cookie("sid".into()),
        ];
        cfg.drain_seconds = 42;
        cfg.lease_ttl_seconds = 7;
        cfg.resume_window_seconds = 11;
        cfg.max_streams = 12;
        cfg.max_event_bytes = 4096;
        cfg.client_buffer_bytes = 8192;
        cfg.client_stall_millis = 77;
        cfg.resume_buffer_events = 3;
        cfg.max_header_bytes = 9000;
        cfg.batch_window_millis = 2;
        cfg.batch_max_entries = 17;
        cfg.upstream_timeout_millis = 1234;
        cfg.forward_timeout_millis = 2345;
        cfg.store_timeout_millis = 345;
        cfg.forward_max_skew_seconds = 9;
        cfg.log_format = LogFormat::Pretty;
        cfg.lifecycle_socket = "/tmp/x/life.sock".into();
        let argv = std::iter::once("ssekeeper-sidecar".to_string()).chain(cfg.to_args());
        assert_eq!(SidecarArgs::try_parse_from(argv).unwrap(), cfg);
    }

    #[test]
    fn the_prestop_command_parses_back_and_names_the_sidecars_socket() {
        let mut cfg = SidecarArgs::defaults(8080, "prod", "chat");
        assert_eq!(cfg.lifecycle_socket, PathBuf::from(LIFECYCLE_SOCKET_PATH));
        assert_eq!(
            std::path::Path::new(LIFECYCLE_SOCKET_PATH).parent(),
            Some(std::path::Path::new(LIFECYCLE_SOCKET_DIR))
        );
        cfg.lifecycle_socket = "/elsewhere/l.sock".into();
        cfg.prestop_delay_seconds = 7;
        let command = prestop_command(&cfg);
        assert_eq!(command[0], SIDECAR_BINARY_PATH);
        assert_eq!(command[1], PRESTOP_SUBCOMMAND);
        let parsed = PrestopArgs::try_parse_from(&command[1..]).unwrap();
        assert_eq!(parsed, PrestopArgs::for_sidecar(&cfg));
        assert_eq!(parsed.lifecycle_socket, cfg.lifecycle_socket);
        assert_eq!(parsed.timeout_seconds, 7 + PRESTOP_ANSWER_MARGIN_SECONDS);
        let bare = PrestopArgs::try_parse_from([PRESTOP_SUBCOMMAND]).unwrap();
        assert_eq!(bare.lifecycle_socket, PathBuf::from(LIFECYCLE_SOCKET_PATH));
        assert_eq!(bare.timeout_seconds, PRESTOP_DEFAULT_TIMEOUT_SECONDS);
    }

    #[test]
    fn session_key_sources_round_trip_and_reject_garbage() {
        for s in ["query:sessionId", "header:Mcp-Session-Id", "cookie:sid"] {
            assert_eq!(s.parse::<SessionKeySource>().unwrap().to_string(), s);
        }
        for bad in ["sessionId", "path:x", "query:", "header:a b"] {
            assert!(bad.parse::<SessionKeySource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn grace_period_covers_prestop_drain_handover_and_app() {
        assert_eq!(app_prestop_sleep_seconds(5, 20), 35);
        assert_eq!(termination_grace_period_seconds(5, 20), 40);
    }

    #[test]
    fn session_keys_share_the_service_prefix_and_a_hash_tag() {
        let k = keys::session_key("ns", "chat", "abc", "events");
        assert_eq!(k, "ssekeeper:ns/chat:{abc}:events");
        assert!(k.starts_with(&keys::service_prefix("ns", "chat")));
        assert_eq!(keys::service_pattern("ns", "chat"), "ssekeeper:ns/chat:*");
    }
}
