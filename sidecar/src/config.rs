//! Runtime settings derived from [`SidecarArgs`].
//!
//! The contract struct speaks in flags (seconds, millis, `u32`s); the proxy wants durations,
//! socket addresses and this pod's identity as an owner. Deriving them once, purely, keeps that
//! arithmetic out of the request path and lets tests build settings without a command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::contract::{SessionKeySource, SidecarArgs, StoreKind};
use crate::cursor::CursorKey;
use crate::store::Owner;

/// Everything the sidecar's tasks need to know, in the units they use.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the app listens.
    pub app_addr: SocketAddr,
    /// Where client traffic is accepted.
    pub sse_listen: SocketAddr,
    /// Where the admin endpoints are served.
    pub admin_listen: SocketAddr,
    /// The unix socket the preStop hook is served on (never a network port).
    pub lifecycle_socket: PathBuf,
    /// This pod as a session owner: its name and the admin address other sidecars forward to.
    pub owner: Owner,
    /// `namespace/name` of the SseService, for logs.
    pub service: String,
    /// Which store backs the sessions.
    pub store: StoreKind,
    /// Where requests name their session, in order.
    pub session_keys: Vec<SessionKeySource>,
    /// The request values a stream's cursors are bound to.
    pub identity: Vec<SessionKeySource>,
    /// Signs cursors and derives keyed session ids: from the forwarding secret, so every pod of
    /// the SseService agrees; random (this pod only) without one.
    pub cursor_key: CursorKey,
    /// Lease lifetime without renewal.
    pub lease_ttl: Duration,
    /// How often held leases are renewed.
    pub renew_every: Duration,
    /// How long a routing registration (a learned key) stays held after its last request.
    pub session_ttl: Duration,
    /// How long a detached recorder keeps capturing.
    pub resume_window: Duration,
    /// preStop hold.
    pub prestop_delay: Duration,
    /// Window over which client streams are closed after SIGTERM.
    pub drain: Duration,
    /// Time after the drain window to wait for new owners.
    pub handover_margin: Duration,
    /// Time after SIGTERM request and session streams may still run (`--request-seconds`).
    pub request_deadline: Duration,
    /// The `retry:` hint sent before a drain close.
    pub reconnect_delay_millis: u64,
    /// Most concurrent client streams.
    pub max_streams: usize,
    /// Most client connections at once (lowered at start to what the fd limit holds).
    pub max_connections: usize,
    /// Most client connections from one address (0: no bound).
    pub max_connections_per_ip: usize,
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// Most recorders capturing for a client that left.
    pub max_detached: usize,
    /// Parser bound on one event.
    pub max_event_bytes: usize,
    /// Bytes queued per client; when full, the app's stream is paused.
    pub client_buffer_bytes: usize,
    /// How long a client may keep its queue full before it is cut.
    pub client_stall: Duration,
    /// Recent events kept per recorder for same-pod resumes.
    pub resume_buffer_events: usize,
    /// Bound on a request head.
    pub max_header_bytes: usize,
    /// Longest wait of an entry before its batch is written.
    pub batch_window: Duration,
    /// Most entries per batch.
    pub batch_max_entries: usize,
    /// Most entries a recorder holds unwritten while the store is down before it drops the oldest.
    pub max_unrecorded: usize,
    /// Most entries forwarded but not yet recorded while the store answers: at this lag the
    /// recorder stops reading the app's stream until the store catches up.
    pub max_record_lag: usize,
    /// Events kept per session in the store (the store trims to it).
    pub history_limit: usize,
    /// Whether a resume across a hole in the history gets the gap event.
    pub gap_event: bool,
    /// Wait for the app's response head.
    pub upstream_timeout: Duration,
    /// Wait for an owner's response head when forwarding.
    pub forward_timeout: Duration,
    /// Budget of a store call on a request's path.
    pub store_timeout: Duration,
    /// Validity of a forwarding signature.
    pub forward_max_age: Duration,
    /// Key authenticating forwarding; `None` disables forwarding both ways.
    pub forward_key: Option<Vec<u8>>,
    /// Broadcast paths (`--broadcast`): one upstream per SseService, fanned out through Redis.
    pub broadcast: Vec<crate::contract::BroadcastPath>,
    /// Bearer token of the publish endpoint; `None`: publishing is refused.
    pub broadcast_publish_token: Option<String>,
    /// Rebalancing (`--rebalance`), if on.
    pub rebalance: Option<RebalanceSettings>,
}

/// How rebalancing is tuned (from `--rebalance-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceSettings {
    /// Fraction above the mean a pod may hold before it sheds (`tolerancePercent / 100`).
    pub tolerance: f64,
    /// Most sheds per second.
    pub max_shed_per_second: u32,
    /// Between two publications of this pod's counts.
    pub interval: Duration,
    /// `--rebalance-interval-seconds`, for the staleness arithmetic shared with the operator.
    pub interval_seconds: u32,
}

impl RebalanceSettings {
    /// The smallest gap between two sheds.
    pub fn min_gap(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.max_shed_per_second.max(1)))
    }
}

impl Settings {
    /// Derive the settings; pure except for naming an unnamed pod.
    pub fn from_args(args: &SidecarArgs) -> Settings {
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let millis = |s: u32| Duration::from_millis(u64::from(s));
        let advertised_ip = args.pod_ip.unwrap_or(if args.listen_host.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            args.listen_host
        });
        let name = if args.pod_name.is_empty() {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("sidecar-{:08x}", rand::random::<u32>()))
        } else {
            args.pod_name.clone()
        };
        let batch_max_entries = args.batch_max_entries.max(1) as usize;
        let lease_ttl = secs(args.lease_ttl_seconds.max(2));
        Settings {
            app_addr: SocketAddr::new(args.app_host, args.app_port),
            sse_listen: SocketAddr::new(args.listen_host, args.sse_port),
            admin_listen: SocketAddr::new(args.listen_host, args.admin_port),
            lifecycle_socket: args.lifecycle_socket.clone(),
            owner: Owner {
                name,
                addr: SocketAddr::new(advertised_ip, args.admin_port),
            },
            service: format!("{}/{}", args.service_namespace, args.service_name),
            store: args.store,
            session_keys: args.session_keys.clone(),
            identity: args.identity.0.clone(),
            cursor_key: args
                .forward_key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map_or_else(CursorKey::random, |k| CursorKey::derive(k.as_bytes())),
            lease_ttl,
            renew_every: lease_ttl / 3,
            session_ttl: secs(args.session_ttl_seconds.max(1)),
            resume_window: secs(args.resume_window_seconds),
            prestop_delay: secs(args.prestop_delay_seconds),
            drain: secs(args.drain_seconds),
            handover_margin: secs(args.handover_margin_seconds),
            request_deadline: secs(args.request_seconds),
            reconnect_delay_millis: u64::from(args.reconnect_delay_millis),
            max_streams: args.max_streams as usize,
            max_connections: args.max_connections.max(1) as usize,
            max_connections_per_ip: args.max_connections_per_ip as usize,
            header_timeout: millis(args.header_timeout_millis),
            max_detached: args.max_detached as usize,
            max_event_bytes: args.max_event_bytes as usize,
            client_buffer_bytes: args.client_buffer_bytes as usize,
            client_stall: millis(args.client_stall_millis.max(1)),
            resume_buffer_events: args.resume_buffer_events as usize,
            max_header_bytes: args.max_header_bytes as usize,
            batch_window: millis(args.batch_window_millis.max(1)),
            batch_max_entries,
            max_unrecorded: batch_max_entries * 16,
            max_record_lag: batch_max_entries * 4,
            history_limit: args.history_limit as usize,
            gap_event: args.on_history_gap == crate::contract::HistoryGap::Event,
            upstream_timeout: millis(args.upstream_timeout_millis.max(1)),
            forward_timeout: millis(args.forward_timeout_millis.max(1)),
            store_timeout: millis(args.store_timeout_millis.max(1)),
            forward_max_age: secs(args.forward_max_age_seconds.max(1)),
            forward_key: args
                .forward_key
                .as_ref()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec()),
            broadcast: args.broadcast.clone(),
            broadcast_publish_token: args
                .broadcast_publish_token
                .clone()
                .filter(|t| !t.is_empty()),
            rebalance: args.rebalance.then(|| RebalanceSettings {
                tolerance: f64::from(args.rebalance_tolerance_percent) / 100.0,
                max_shed_per_second: args.rebalance_max_shed_per_second.max(1),
                interval: secs(args.rebalance_interval_seconds.max(1)),
                interval_seconds: args.rebalance_interval_seconds.max(1),
            }),
        }
    }

    /// How long after SIGTERM the sidecar exits at the latest: what is left of the grace period
    /// once preStop has run, less a second so the exit is never raced by SIGKILL.
    pub fn exit_deadline(&self) -> Duration {
        let margin = u64::from(crate::contract::APP_SHUTDOWN_MARGIN_SECONDS).saturating_sub(1);
        self.drain + self.handover_margin + Duration::from_secs(margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_advertise_loopback_and_derive_renewal() {
        let mut args = SidecarArgs::defaults(8080, "ns", "chat");
        args.pod_name = "pod-a".into();
        let s = Settings::from_args(&args);
        assert_eq!(s.owner.name, "pod-a");
        assert_eq!(s.owner.addr, "127.0.0.1:8801".parse().unwrap());
        assert!(s.renew_every * 2 < s.lease_ttl);
        assert_eq!(s.batch_window, Duration::from_millis(5));
        assert_eq!(s.service, "ns/chat");
        assert!(s.forward_key.is_none());
        assert!(s.rebalance.is_none(), "rebalancing is off by default");
        args.rebalance = true;
        args.rebalance_tolerance_percent = 25;
        args.rebalance_max_shed_per_second = 4;
        let r = Settings::from_args(&args).rebalance.unwrap();
        assert_eq!(r.tolerance, 0.25);
        assert_eq!(r.min_gap(), Duration::from_millis(250));
        assert_eq!(r.interval, Duration::from_secs(5));
    }

    #[test]
    fn pod_ip_and_listen_host_decide_the_advertised_address() {
        let mut args = SidecarArgs::defaults(8080, "ns", "chat");
        args.listen_host = "127.0.0.7".parse().unwrap();
        assert_eq!(
            Settings::from_args(&args).owner.addr,
            "127.0.0.7:8801".parse().unwrap()
        );
        args.pod_ip = Some("198.18.0.9".parse().unwrap());
        args.forward_key = Some("k".into());
        let s = Settings::from_args(&args);
        assert_eq!(s.owner.addr, "198.18.0.9:8801".parse().unwrap());
        assert_eq!(s.forward_key.as_deref(), Some(&b"k"[..]));
    }
}
