//! The contract between the operator and the sidecar.
//!
//! The operator renders a pod and the sidecar runs in it; if the two disagreed on a port, a flag,
//! an environment variable or a Redis key, the failure would only show in a live cluster. So every
//! such name lives here, once: the operator renders [`SidecarArgs::to_args`] and the sidecar parses
//! the same struct with clap, and tests on both sides prove the round trip.

pub mod args;
pub mod keys;
pub mod rebalance;
pub mod redis;

pub use self::args::{
    BroadcastPath, HistoryGap, IdentitySources, InvalidBroadcast, InvalidSessionKeySource,
    LogFormat, PrestopArgs, SessionKeySource, SidecarArgs, StoreKind, prestop_command,
    validate_broadcast,
};
pub use self::rebalance::{InvalidRebalance, validate_rebalance};

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
/// Seconds the drain may take after its last deadline to stop what is left, write it to the store
/// and release the app.
pub const DRAIN_STOP_MARGIN_SECONDS: u32 = 5;

/// Upper bound on the grace period a spec may imply (seconds). Longer would hold node drains and
/// cluster upgrades hostage to one service.
pub const MAX_GRACE_PERIOD_SECONDS: u32 = 1800;
/// The largest `preStopDelaySeconds + drainSeconds` a spec may ask for: what is left of
/// [`MAX_GRACE_PERIOD_SECONDS`] after the handover, stop and app-shutdown margins (1780).
pub const MAX_PRESTOP_AND_DRAIN_SECONDS: u32 = MAX_GRACE_PERIOD_SECONDS
    - HANDOVER_MARGIN_SECONDS
    - DRAIN_STOP_MARGIN_SECONDS
    - APP_SHUTDOWN_MARGIN_SECONDS;
/// The largest `preStopDelaySeconds + requestSeconds` a spec may ask for (1790).
pub const MAX_PRESTOP_AND_REQUEST_SECONDS: u32 =
    MAX_GRACE_PERIOD_SECONDS - DRAIN_STOP_MARGIN_SECONDS - APP_SHUTDOWN_MARGIN_SECONDS;
/// The largest `preStopDelaySeconds` a spec may ask for (the preStop subcommand's default timeout,
/// [`PRESTOP_DEFAULT_TIMEOUT_SECONDS`], is longer).
pub const MAX_PRESTOP_DELAY_SECONDS: u32 = 300;

/// The pod's `terminationGracePeriodSeconds`: preStop hold; then the longer of the drain window
/// with its handover margin (resumable streams) and the request deadline (request and session
/// streams finishing in place); the drain's stop; the app's shutdown. Only an upper bound: the
/// sidecar releases the app and exits as soon as its last stream is done.
pub fn termination_grace_period_seconds(
    prestop_delay_seconds: u32,
    drain_seconds: u32,
    request_seconds: u32,
) -> u32 {
    prestop_delay_seconds
        + (drain_seconds + HANDOVER_MARGIN_SECONDS).max(request_seconds)
        + DRAIN_STOP_MARGIN_SECONDS
        + APP_SHUTDOWN_MARGIN_SECONDS
}

/// Seconds of history kept beyond the drain, handover margin and reconnect delay by default: a
/// client that reconnects late (a browser's backoff, a slow network) still finds its events.
pub const HISTORY_FLOOR_SLACK_SECONDS: u32 = 5;

/// The default time floor of a session's history (`spec.sessions.historySeconds` unset): every
/// event a client moved by a drain can still be missing when it resumes. A client is closed at
/// the latest at the end of the drain window, waits its reconnect delay, and a session recorder
/// keeps capturing for the handover margin after the window.
pub fn history_floor_seconds(
    drain_seconds: u32,
    handover_margin_seconds: u32,
    reconnect_delay_millis: u32,
) -> u32 {
    drain_seconds
        + handover_margin_seconds
        + reconnect_delay_millis.div_ceil(1000)
        + HISTORY_FLOOR_SLACK_SECONDS
}

/// The defaults the sidecar's flags and the CRD's fields share (the operator renders every one of
/// them explicitly, so a changed default reaches running pods only through a new rollout).
pub mod defaults {
    /// `--prestop-delay-seconds` / `spec.drain.preStopDelaySeconds`.
    pub const PRESTOP_DELAY_SECONDS: u32 = 5;
    /// `--drain-seconds` / `spec.drain.drainSeconds`.
    pub const DRAIN_SECONDS: u32 = 20;
    /// `--request-seconds` / `spec.drain.requestSeconds`: long enough for an LLM's answer.
    pub const REQUEST_SECONDS: u32 = 120;
    /// `--reconnect-delay-millis` / `spec.drain.reconnectDelayMillis`.
    pub const RECONNECT_DELAY_MILLIS: u32 = 1000;
    /// `--session-ttl-seconds` / `spec.sessions.ttlSeconds`.
    pub const SESSION_TTL_SECONDS: u32 = 300;
    /// `--max-connections`: about 80 MiB of connections at their worst (a full 16 KiB head
    /// each, and hyper's buffers), inside the default 128 Mi limit with the streams' own memory.
    pub const MAX_CONNECTIONS: u32 = 2048;
    /// `--max-detached`: recorders capturing for a client that left.
    pub const MAX_DETACHED: u32 = 256;
    /// `--rebalance-tolerance-percent` / `spec.rebalance.tolerancePercent`: a pod sheds once it
    /// holds more than the mean of the serving pods by this much, and down to half of it above
    /// the mean (the gap is the hysteresis). 20%: on 3 pods a spread of 120/100/80 is left
    /// alone, 150/75/75 is not.
    pub const REBALANCE_TOLERANCE_PERCENT: u32 = 20;
    /// `--rebalance-max-shed-per-second` / `spec.rebalance.maxShedPerSecond`: each shed is one
    /// client reconnect (an app request, a replay from Redis, a lease) - 5 a second is a
    /// fraction of a percent of what one sidecar opens, yet moves 300 streams a minute.
    pub const REBALANCE_MAX_SHED_PER_SECOND: u32 = 5;
    /// `--rebalance-interval-seconds` / `spec.rebalance.intervalSeconds`: one Redis script call
    /// per pod per interval publishes its count and reads the others'.
    pub const REBALANCE_INTERVAL_SECONDS: u32 = 5;
    /// `--history-limit` / `spec.sessions.historyLimit`.
    pub const HISTORY_LIMIT: u32 = 1000;
    /// `--broadcast <path>` without `=<historyLimit>` / `spec.broadcast[].historyLimit`: a
    /// broadcast is shared by every client, so it affords a longer history than one session.
    pub const BROADCAST_HISTORY_LIMIT: u32 = 10_000;
    /// `--history-max-entries` / `spec.sessions.historyMaxEntries`: the default floor (36 s) at
    /// 5,000 events/s, and a margin.
    pub const HISTORY_MAX_ENTRIES: u32 = 250_000;

    /// `spec.sessions.key`: where the official MCP SDKs name a session, so both work with no
    /// configuration — the TypeScript SSE transport's `?sessionId=`, the Python one's
    /// `?session_id=`, and Streamable HTTP's `Mcp-Session-Id` header.
    pub fn session_keys() -> Vec<super::SessionKeySource> {
        use super::SessionKeySource as S;
        vec![
            S::Query("sessionId".into()),
            S::Query("session_id".into()),
            S::Header("Mcp-Session-Id".into()),
        ]
    }
}

/// The `event:` type of the event a resuming client gets where its history has a hole (see
/// [`HistoryGap`]); its data is JSON: `{"reason": "missing" | "expired", "after": "<the cursor it
/// sent>"}` — `missing`: events between the cursor and the next stored one are gone (trimmed past
/// `historyLimit`, or unrecorded during a store outage); `expired`: the whole session is gone
/// (its TTL ran out), and a fresh stream from the app follows. It carries no `id:`, so the
/// client's last event id stays what it was.
pub const GAP_EVENT_TYPE: &str = "ssekeeper-gap";

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
    /// The app container's preStop hook (`httpGet` on the admin port): answers once the drain
    /// no longer needs the app (nothing captures its streams), so the app gets its SIGTERM then
    /// and not a fixed time later. It only waits: calling it changes nothing.
    pub const APP_PRESTOP: &str = "/app-prestop";
    /// The app publishes an event to a broadcast path (`POST /broadcast?path=<path>`, bearer
    /// token, from loopback only): delivered to that path's clients on every pod.
    pub const BROADCAST_PUBLISH: &str = "/broadcast";
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
    /// The bearer token of the sidecar's publish endpoint, from the operator-made Secret.
    pub const BROADCAST_PUBLISH_TOKEN: &str = "SSEKEEPER_BROADCAST_PUBLISH_TOKEN";
    /// The same token, in the app container (set only with broadcast paths): what it presents.
    pub const APP_PUBLISH_TOKEN: &str = "SSEKEEPER_PUBLISH_TOKEN";
    /// Where the app publishes (`http://127.0.0.1:<admin>/broadcast`), in the app container.
    pub const APP_PUBLISH_URL: &str = "SSEKEEPER_PUBLISH_URL";
}

/// The Secret the operator creates per SseService for the forwarding key.
pub fn forward_secret_name(service_name: &str) -> String {
    format!("{service_name}-ssekeeper")
}

/// The key inside [`forward_secret_name`] holding the forwarding key.
pub const FORWARD_KEY_SECRET_KEY: &str = "forward-key";

/// The key inside [`forward_secret_name`] holding the broadcast publish token (derived from the
/// forwarding key by the operator, so it needs no state of its own).
pub const PUBLISH_TOKEN_SECRET_KEY: &str = "broadcast-publish-token";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::PathBuf;

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
        cfg.forward_max_age_seconds = 9;
        cfg.log_format = LogFormat::Pretty;
        cfg.lifecycle_socket = "/tmp/x/life.sock".into();
        cfg.broadcast = vec![
            "/events/prices=500".parse().unwrap(),
            "/events/news".parse().unwrap(),
        ];
        // Rendered explicitly, as resolved from the drain when unset.
        cfg.history_seconds = Some(cfg.history_floor_seconds());
        let argv = std::iter::once("ssekeeper-sidecar".to_string()).chain(cfg.to_args());
        assert_eq!(SidecarArgs::try_parse_from(argv).unwrap(), cfg);
        assert!(!cfg.to_args().iter().any(|a| a.starts_with("--rebalance")));
        cfg.rebalance = true;
        cfg.rebalance_tolerance_percent = 35;
        cfg.rebalance_max_shed_per_second = 9;
        cfg.rebalance_interval_seconds = 3;
        let argv = std::iter::once("ssekeeper-sidecar".to_string()).chain(cfg.to_args());
        assert_eq!(SidecarArgs::try_parse_from(argv).unwrap(), cfg);
    }

    #[test]
    fn rebalance_flags_default_off_and_refuse_out_of_range_values() {
        let d = SidecarArgs::defaults(8080, "ns", "chat");
        assert!(!d.rebalance);
        assert_eq!(
            (
                d.rebalance_tolerance_percent,
                d.rebalance_max_shed_per_second,
                d.rebalance_interval_seconds
            ),
            (
                defaults::REBALANCE_TOLERANCE_PERCENT,
                defaults::REBALANCE_MAX_SHED_PER_SECOND,
                defaults::REBALANCE_INTERVAL_SECONDS
            )
        );
        let base = [
            "ssekeeper-sidecar",
            "--app-port=1",
            "--service-namespace=n",
            "--service-name=s",
        ];
        for bad in [
            "--rebalance-tolerance-percent=0",
            "--rebalance-max-shed-per-second=0",
            "--rebalance-interval-seconds=0",
            "--rebalance-interval-seconds=301",
        ] {
            let argv = base.iter().copied().chain([bad]);
            assert!(SidecarArgs::try_parse_from(argv).is_err(), "{bad}");
        }
    }

    #[test]
    fn broadcast_values_parse_validate_and_refuse_garbage_clearly() {
        let p: BroadcastPath = "/events/prices=250".parse().unwrap();
        assert_eq!((p.path.as_str(), p.history_limit), ("/events/prices", 250));
        let d: BroadcastPath = "/events/news".parse().unwrap();
        assert_eq!(d.history_limit, defaults::BROADCAST_HISTORY_LIMIT);
        let q: BroadcastPath = "/a=b=7".parse().unwrap();
        assert_eq!((q.path.as_str(), q.history_limit), ("/a=b", 7));
        for (bad, want) in [
            ("events", "absolute"),
            ("/events?x=1", "query"),
            ("/events?x=1=5", "query"),
            ("/events#top", "query"),
            ("/ev ents", "whitespace"),
            ("/events=0", "1 to 10000000"),
            ("/events=ten", "1 to 10000000"),
            ("/events=99999999", "1 to 10000000"),
        ] {
            let e = bad.parse::<BroadcastPath>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let two = vec![p.clone(), d.clone()];
        assert_eq!(validate_broadcast(&two, StoreKind::Redis), Ok(()));
        assert_eq!(validate_broadcast(&[], StoreKind::Memory), Ok(()));
        assert_eq!(
            validate_broadcast(&two, StoreKind::Memory),
            Err(InvalidBroadcast::NeedsRedis)
        );
        let dup = vec![p.clone(), "/events/prices=9".parse().unwrap()];
        let e = validate_broadcast(&dup, StoreKind::Redis).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        // Repeatable flag and a comma-separated variable.
        let parsed = SidecarArgs::try_parse_from([
            "ssekeeper-sidecar",
            "--app-port=1",
            "--service-namespace=n",
            "--service-name=s",
            "--broadcast=/a",
            "--broadcast=/b=3",
        ])
        .unwrap();
        assert_eq!(parsed.broadcast.len(), 2);
        assert!(
            SidecarArgs::try_parse_from([
                "ssekeeper-sidecar",
                "--app-port=1",
                "--service-namespace=n",
                "--service-name=s",
                "--broadcast=nope",
            ])
            .unwrap_err()
            .to_string()
            .contains("absolute")
        );
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
    fn the_default_history_floor_covers_the_drain_margin_and_reconnect() {
        assert_eq!(history_floor_seconds(20, 10, 1000), 36);
        assert_eq!(history_floor_seconds(2, 10, 200), 18);
        let a = SidecarArgs::defaults(8080, "ns", "chat");
        assert_eq!(a.history_floor_seconds(), 36);
        assert!(a.to_args().contains(&"--history-seconds=36".to_string()));
    }

    #[test]
    fn grace_period_covers_prestop_the_longer_deadline_stop_and_app() {
        assert_eq!(termination_grace_period_seconds(5, 20, 0), 45);
        assert_eq!(termination_grace_period_seconds(5, 20, 120), 135);
        assert_eq!(MAX_PRESTOP_AND_DRAIN_SECONDS, 1780);
        assert_eq!(MAX_PRESTOP_AND_REQUEST_SECONDS, 1790);
        assert_eq!(
            termination_grace_period_seconds(
                MAX_PRESTOP_DELAY_SECONDS,
                MAX_PRESTOP_AND_DRAIN_SECONDS - MAX_PRESTOP_DELAY_SECONDS,
                0
            ),
            MAX_GRACE_PERIOD_SECONDS
        );
        assert_eq!(
            termination_grace_period_seconds(
                MAX_PRESTOP_DELAY_SECONDS,
                0,
                MAX_PRESTOP_AND_REQUEST_SECONDS - MAX_PRESTOP_DELAY_SECONDS
            ),
            MAX_GRACE_PERIOD_SECONDS
        );
    }

    #[test]
    fn session_keys_share_the_service_prefix_and_a_hash_tag() {
        let k = keys::session_key("ns", "chat", "abc", "events");
        assert_eq!(k, "ssekeeper:ns/chat:{abc}:events");
        assert!(k.starts_with(&keys::service_prefix("ns", "chat")));
        assert_eq!(keys::service_pattern("ns", "chat"), "ssekeeper:ns/chat:*");
    }
}
