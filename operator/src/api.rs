//! The `SseService` API (group `ssekeeper.dev`, version `v1alpha1`).
//!
//! Everything a person can get wrong is refused by the API server itself: ranges and enums in the
//! structural schema, cross-field rules as `x-kubernetes-validations` CEL with a message that says
//! what to change. The operator then never has to guess what a half-valid object meant.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ssekeeper_contract::{
    self as contract, ADMIN_PORT, APP_SHUTDOWN_MARGIN_SECONDS, DRAIN_STOP_MARGIN_SECONDS,
    HANDOVER_MARGIN_SECONDS, MAX_GRACE_PERIOD_SECONDS, MAX_PRESTOP_AND_DRAIN_SECONDS,
    MAX_PRESTOP_AND_REQUEST_SECONDS, MAX_PRESTOP_DELAY_SECONDS, SIDECAR_CONTAINER_NAME, SSE_PORT,
    defaults,
};

/// Desired state of an SSE service: the app's pod template plus how to serve, drain and resume it.
// The printcolumn(...) entries repeat `type_ = "string"`, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ssekeeper.dev",
    version = "v1alpha1",
    kind = "SseService",
    namespaced,
    shortname = "ssesvc",
    category = "ssekeeper",
    status = "SseServiceStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "string", json_path = ".status.ready"),
    printcolumn(
        name = "Status",
        type_ = "string",
        description = "The Degraded condition's reason: AsExpected, or what is wrong",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason"
    ),
    printcolumn(
        name = "Rollout",
        type_ = "string",
        description = "The Progressing condition's reason: RollingOut, RolloutComplete, RolloutQueued (waiting for a fleet slot), RolloutPaused, ProgressDeadlineExceeded",
        json_path = ".status.conditions[?(@.type==\"Progressing\")].reason"
    ),
    printcolumn(name = "Affinity", type_ = "string", json_path = ".status.affinity"),
    printcolumn(
        name = "Store",
        type_ = "string",
        priority = 1,
        json_path = ".spec.sessions.store"
    ),
    printcolumn(
        name = "Service",
        type_ = "string",
        priority = 1,
        json_path = ".status.serviceName"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        priority = 1,
        json_path = ".spec.replicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "An SSE service whose replicas roll without losing an event or a session",
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63")
        .message("metadata.name must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter, at most 63 characters): it names the Service")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.sessions.store != 'memory' || self.replicas <= 1")
        .message("sessions.store 'memory' keeps sessions inside one pod: set replicas to 0 or 1, or use sessions.store 'redis'")
        .field_path(".sessions.store"),
    validation = Rule::new("!has(self.broadcast) || size(self.broadcast) == 0 || self.sessions.store == 'redis'")
        .message("broadcast paths are shared by the pods through Redis: set sessions.store to 'redis'")
        .field_path(".broadcast"),
    validation = Rule::new("!has(self.rebalance) || !self.rebalance.enabled || self.sessions.store == 'redis'")
        .message("rebalance moves sessions between pods through Redis: set sessions.store to 'redis'")
        .field_path(".rebalance"),
    validation = Rule::new("!has(self.rebalance) || !self.rebalance.enabled || (has(self.service.sessionAffinity) && !self.service.sessionAffinity.enabled && (!has(self.ingress) || !self.ingress.cookieAffinity))")
        .message("rebalance needs reconnects to be free to land on another pod: set service.sessionAffinity.enabled to false (and ingress.cookieAffinity to false); the sidecar routes a session's requests itself")
        .field_path(".rebalance"),
    validation = Rule::new("self.sessions.store != 'redis' || has(self.sessions.redis)")
        .message("sessions.store 'redis' needs sessions.redis.secretRef naming the Secret that holds the Redis URL")
        .field_path(".sessions.store"),
    validation = Rule::new("has(self.template.spec) && size(self.template.spec.containers) > 0")
        .message("template.spec.containers must name at least one container (the app)")
        .field_path(".template"),
    validation = Rule::new(format!("!has(self.template.spec) || self.template.spec.containers.all(c, c.name != '{SIDECAR_CONTAINER_NAME}')"))
        .message(Message::Message(format!("the container name '{SIDECAR_CONTAINER_NAME}' is reserved for the injected sidecar; rename the app container")))
        .field_path(".template.spec.containers"),
    validation = Rule::new(format!("self.appPort != {SSE_PORT} && self.appPort != {ADMIN_PORT}"))
        .message(Message::Message(format!("appPort {SSE_PORT} and {ADMIN_PORT} are the sidecar's sse and admin ports inside the pod; move the app to another port")))
        .field_path(".appPort"),
    validation = Rule::new(format!("self.drain.preStopDelaySeconds + self.drain.drainSeconds <= {MAX_PRESTOP_AND_DRAIN_SECONDS}"))
        .message(Message::Message(format!("drain.preStopDelaySeconds + drain.drainSeconds must be at most {MAX_PRESTOP_AND_DRAIN_SECONDS}: the pod's grace period adds {} s for handover, the drain's stop and app shutdown and is capped at {MAX_GRACE_PERIOD_SECONDS} s", HANDOVER_MARGIN_SECONDS + DRAIN_STOP_MARGIN_SECONDS + APP_SHUTDOWN_MARGIN_SECONDS)))
        .field_path(".drain"),
    validation = Rule::new(format!("self.drain.preStopDelaySeconds + self.drain.requestSeconds <= {MAX_PRESTOP_AND_REQUEST_SECONDS}"))
        .message(Message::Message(format!("drain.preStopDelaySeconds + drain.requestSeconds must be at most {MAX_PRESTOP_AND_REQUEST_SECONDS}: the pod's grace period adds {} s for the drain's stop and app shutdown and is capped at {MAX_GRACE_PERIOD_SECONDS} s", DRAIN_STOP_MARGIN_SECONDS + APP_SHUTDOWN_MARGIN_SECONDS)))
        .field_path(".drain.requestSeconds"),
)]
pub struct SseServiceSpec {
    /// Number of pods. `kubectl scale ssesvc/NAME --replicas=N` and HPAs set it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The app's pod template (unchanged app; the sidecar is injected next to it).
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
    /// Port the app listens on inside the pod; the sidecar proxies 127.0.0.1:appPort.
    #[schemars(range(min = 1, max = 65535))]
    pub app_port: i32,
    /// How the Service exposes the pods.
    #[serde(default)]
    pub service: ServiceConfig,
    /// Optional Ingress with cookie affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressConfig>,
    /// Rolling-update settings of the Deployment.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// How pods drain their streams when they terminate.
    #[serde(default)]
    pub drain: DrainConfig,
    /// Where sessions are recorded and how requests name them.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Optional PodDisruptionBudget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudgetConfig>,
    /// Optional NetworkPolicy for the pods: the sidecar's admin port (forwards between
    /// sidecars, `/metrics`) only from this SseService's own pods and `metricsFrom`; the client
    /// port and the app's own ports from anywhere. Defence in depth on top of the signed
    /// forwards; it needs a CNI that enforces NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicyConfig>,
    /// Overrides for the injected sidecar (defaults come from the operator's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarConfig>,
    /// Paths whose stream is the same for every client (prices, notifications): one upstream
    /// to the app per SseService, recorded once in Redis and served to every client on every
    /// pod with the same ids, so a client resumes with `Last-Event-ID` on any pod. The match is
    /// exact on the request path (the query is ignored and not sent to the app). The app may also
    /// publish to these paths (`POST $SSEKEEPER_PUBLISH_URL?path=...` with
    /// `Authorization: Bearer $SSEKEEPER_PUBLISH_TOKEN`, both set in the app container).
    /// Clients of a broadcast path are not asked of the app: it serves whoever reaches it.
    /// Needs `sessions.store: redis`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(b, self.filter(c, c.path == b.path).size() == 1)")
        .message("broadcast paths must be unique"))]
    pub broadcast: Vec<BroadcastConfig>,
    /// Move resumable streams off pods holding more than their share (after a scale-up or a
    /// rollout the first pods keep most streams for hours): such a pod closes some of them, a
    /// few per second, with the `retry:` hint and hands their sessions over, so the clients
    /// reconnect with `Last-Event-ID` and land on less loaded pods. Session and request streams
    /// are never moved. Off by default: it disconnects healthy clients on purpose. Needs
    /// `sessions.store: redis` and no client affinity (`service.sessionAffinity.enabled: false`,
    /// and no Ingress cookie affinity), or the reconnect lands on the same pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceConfig>,
}

/// Stream rebalancing between the pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceConfig {
    /// Turn it on.
    #[serde(default)]
    pub enabled: bool,
    /// A pod sheds when it holds more than the pods' mean by this percent, down to half of it
    /// above the mean (so pods do not hand streams back and forth).
    #[serde(default = "default_rebalance_tolerance")]
    #[schemars(range(min = 1, max = 1000))]
    pub tolerance_percent: u32,
    /// Most streams one pod closes per second (each a client reconnect).
    #[serde(default = "default_rebalance_rate")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_shed_per_second: u32,
}

fn default_rebalance_tolerance() -> u32 {
    ssekeeper_contract::defaults::REBALANCE_TOLERANCE_PERCENT
}

fn default_rebalance_rate() -> u32 {
    ssekeeper_contract::defaults::REBALANCE_MAX_SHED_PER_SECOND
}

/// One broadcast path.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastConfig {
    /// The exact request path, e.g. `/events/prices`: absolute, no query or fragment, no
    /// whitespace.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^/[^?#\s]*$"))]
    pub path: String,
    /// Events kept for resumes (trimmed approximately, oldest first).
    #[serde(default = "default_broadcast_history")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub history_limit: u32,
}

fn default_broadcast_history() -> u32 {
    ssekeeper_contract::defaults::BROADCAST_HISTORY_LIMIT
}

fn default_replicas() -> i32 {
    1
}

/// The PodTemplateSpec schema without nested descriptions: the full one would push the CRD past
/// the 256 KiB annotation that client-side `kubectl apply` stores. Structure and types stay, so the
/// API server still validates and prunes the template.
fn pod_template_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::schema::schema_without_descriptions::<PodTemplateSpec>(generator)
}

/// Service type, as in core/v1 Service.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ServiceType {
    /// Cluster-internal virtual IP.
    #[default]
    ClusterIP,
    /// Also a port on every node.
    NodePort,
    /// Also an external load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The core/v1 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The rendered Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Port clients connect to.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// ClientIP session affinity: keeps a client on one pod while that pod lives.
    #[serde(default)]
    pub session_affinity: SessionAffinityConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            port: default_service_port(),
            type_: ServiceType::default(),
            session_affinity: SessionAffinityConfig::default(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// ClientIP affinity settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// Whether the Service uses `sessionAffinity: ClientIP`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a client sticks to its pod after its last request.
    #[serde(default = "default_affinity_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
}

impl Default for SessionAffinityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout_seconds: default_affinity_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_affinity_timeout() -> i32 {
    10800
}

/// The optional Ingress.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressConfig {
    /// Host name routed to the Service.
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub host: String,
    /// IngressClass name (e.g. `nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Add cookie-affinity annotations (ingress-nginx), so a browser sticks to one pod.
    #[serde(default = "default_true")]
    pub cookie_affinity: bool,
    /// Secret with the TLS certificate for `host`, if TLS terminates at the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations, merged over the rendered ones (for other ingress controllers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Rolling-update settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxSurge > 0 || self.maxUnavailable > 0")
    .message("rollout.maxSurge and rollout.maxUnavailable cannot both be 0: the rollout could never make progress"))]
pub struct RolloutConfig {
    /// Extra pods allowed during a rollout.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 100))]
    pub max_surge: i32,
    /// Pods allowed to be unavailable during a rollout.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub max_unavailable: i32,
    /// Seconds a new pod must be ready before it counts as available.
    #[serde(default = "default_min_ready")]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            max_surge: 1,
            max_unavailable: 0,
            min_ready_seconds: default_min_ready(),
        }
    }
}

fn default_one() -> i32 {
    1
}

fn default_min_ready() -> i32 {
    5
}

/// Drain timing (see DESIGN.md "Drain").
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainConfig {
    /// Seconds the pod keeps serving after turning unready, so every load balancer forgets it.
    #[serde(default = "default_prestop_delay")]
    #[schemars(range(min = 0, max = MAX_PRESTOP_DELAY_SECONDS))]
    pub pre_stop_delay_seconds: u32,
    /// Seconds over which stream closes are spread (jittered), before sessions are handed over.
    #[serde(default = "default_drain")]
    #[schemars(range(min = 0, max = MAX_PRESTOP_AND_DRAIN_SECONDS))]
    pub drain_seconds: u32,
    /// Seconds after termination starts (after the preStop hold) that request streams (the SSE
    /// answer of a `POST`: an LLM completion, an MCP call) and session streams may still run to
    /// their end; one still running then is cut. Sized for LLM answers. Only an upper bound:
    /// the pod goes as soon as its last stream is done.
    #[serde(default = "default_request")]
    #[schemars(range(min = 0, max = MAX_PRESTOP_AND_REQUEST_SECONDS))]
    pub request_seconds: u32,
    /// The `retry:` hint (milliseconds) sent to clients before their stream is closed.
    #[serde(default = "default_reconnect_delay")]
    #[schemars(range(min = 0, max = 600000))]
    pub reconnect_delay_millis: u32,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            pre_stop_delay_seconds: default_prestop_delay(),
            drain_seconds: default_drain(),
            request_seconds: default_request(),
            reconnect_delay_millis: default_reconnect_delay(),
        }
    }
}

fn default_prestop_delay() -> u32 {
    defaults::PRESTOP_DELAY_SECONDS
}

fn default_drain() -> u32 {
    defaults::DRAIN_SECONDS
}

fn default_request() -> u32 {
    defaults::REQUEST_SECONDS
}

fn default_reconnect_delay() -> u32 {
    defaults::RECONNECT_DELAY_MILLIS
}

/// Which store records sessions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    /// Redis: shared by every replica.
    Redis,
    /// In-pod memory: one replica only.
    #[default]
    Memory,
}

impl From<StoreType> for contract::StoreKind {
    fn from(s: StoreType) -> Self {
        match s {
            StoreType::Redis => contract::StoreKind::Redis,
            StoreType::Memory => contract::StoreKind::Memory,
        }
    }
}

/// What a resuming client is told about a hole in its history.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum HistoryGapSignal {
    /// An `ssekeeper-gap` event where the hole is.
    #[default]
    Event,
    /// Nothing.
    None,
}

impl From<HistoryGapSignal> for contract::HistoryGap {
    fn from(s: HistoryGapSignal) -> Self {
        match s {
            HistoryGapSignal::Event => contract::HistoryGap::Event,
            HistoryGapSignal::None => contract::HistoryGap::None,
        }
    }
}

/// Session recording and naming.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.historyMaxEntries >= self.historyLimit")
    .message("sessions.historyMaxEntries must be at least sessions.historyLimit: it is the most a session keeps")
    .field_path(".historyMaxEntries"))]
pub struct SessionsConfig {
    /// `redis` (any number of replicas) or `memory` (one replica).
    #[serde(default)]
    pub store: StoreType,
    /// The Redis connection, required when `store` is `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// Seconds a disconnected session stays resumable (sliding).
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 10, max = 86400))]
    pub ttl_seconds: u32,
    /// Events kept per session for replay, whatever their age.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 1000000))]
    pub history_limit: u32,
    /// Events younger than this are kept too, however many, so that every client a drain moves
    /// finds its events when it resumes, whatever the stream's rate. Unset: the drain window +
    /// 10 s handover margin + the reconnect delay + 5 s. `historyMaxEntries` bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub history_seconds: Option<u32>,
    /// Events kept per session at most, whatever `historySeconds` or a drain wants: the memory
    /// bound (about 150 bytes each in Redis for a 100-byte event). When it cuts into the time
    /// floor, `ssekeeper_history_floor_cuts_total` counts it and the sidecar logs a warning.
    #[serde(default = "default_history_max")]
    #[schemars(range(min = 1, max = 10000000))]
    pub history_max_entries: u32,
    /// What a client resuming across a hole in its history (trimmed past its cursor, expired,
    /// unrecorded during a store outage) is told: `event` — an event of type `ssekeeper-gap` where
    /// the hole is (data: `{"reason", "after"}`; browsers ignore it unless they listen for it) —
    /// or `none` (the stream just goes on; counted in `ssekeeper_replay_gaps_total` either way).
    #[serde(default)]
    pub on_history_gap: HistoryGapSignal,
    /// How a request names its session; the first match wins.
    #[serde(default = "default_session_keys")]
    #[schemars(length(max = 8))]
    pub key: Vec<SessionKey>,
    /// Whose a session is: the request values its cursors are bound to (a keyed hash of them,
    /// never the values). A resume — replay, attach or takeover — must present the same values
    /// on the same path, or it is treated as a new stream and the app decides. Default: the
    /// `Authorization` header; a browser app that authenticates with a cookie names it (e.g.
    /// `cookie: sid`; never the whole `Cookie` header: affinity cookies of load balancers change
    /// it between reconnects). Name a stable credential if a token rotates while a stream is
    /// open; `[]` binds cursors to the path only.
    #[serde(default = "default_identity")]
    #[schemars(length(max = 8))]
    pub identity: Vec<SessionKey>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            store: StoreType::default(),
            redis: None,
            ttl_seconds: default_ttl(),
            history_limit: default_history(),
            history_seconds: None,
            history_max_entries: default_history_max(),
            on_history_gap: HistoryGapSignal::default(),
            key: default_session_keys(),
            identity: default_identity(),
        }
    }
}

fn default_ttl() -> u32 {
    defaults::SESSION_TTL_SECONDS
}

fn default_history() -> u32 {
    defaults::HISTORY_LIMIT
}

fn default_history_max() -> u32 {
    defaults::HISTORY_MAX_ENTRIES
}

fn default_identity() -> Vec<SessionKey> {
    contract::IdentitySources::default()
        .0
        .into_iter()
        .map(SessionKey::from_source)
        .collect()
}

fn default_session_keys() -> Vec<SessionKey> {
    defaults::session_keys()
        .into_iter()
        .map(SessionKey::from_source)
        .collect()
}

/// Redis connection settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisConfig {
    /// The Secret (same namespace) and key holding the Redis URL: `redis://`, `rediss://`,
    /// `redis+sentinel://`, or a cluster list.
    pub secret_ref: SecretKeySelector,
}

/// A key of a Secret in the SseService's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".into()
}

/// One place a request may name its session. Exactly one field is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.query), has(self.header), has(self.cookie)].filter(x, x).size() == 1")
    .message("each sessions.key entry sets exactly one of query, header or cookie"))]
pub struct SessionKey {
    /// A query parameter (MCP's SSE transport uses `sessionId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.~-]+$"))]
    pub query: Option<String>,
    /// A request header (MCP Streamable HTTP uses `Mcp-Session-Id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header: Option<String>,
    /// A cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub cookie: Option<String>,
}

impl SessionKey {
    /// The CRD's form of a sidecar key source.
    pub fn from_source(source: contract::SessionKeySource) -> Self {
        use contract::SessionKeySource as S;
        match source {
            S::Query(q) => SessionKey {
                query: Some(q),
                ..SessionKey::default()
            },
            S::Header(h) => SessionKey {
                header: Some(h),
                ..SessionKey::default()
            },
            S::Cookie(c) => SessionKey {
                cookie: Some(c),
                ..SessionKey::default()
            },
        }
    }

    /// The sidecar's form of this key, `None` if no field is set (the CRD refuses that).
    pub fn to_source(&self) -> Option<contract::SessionKeySource> {
        use contract::SessionKeySource as S;
        self.query
            .clone()
            .map(S::Query)
            .or_else(|| self.header.clone().map(S::Header))
            .or_else(|| self.cookie.clone().map(S::Cookie))
    }
}

/// The optional NetworkPolicy (see `SseServiceSpec::network_policy`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyConfig {
    /// Who else may reach the admin port (a Prometheus, an agent): each entry matches pods by
    /// labels, in namespaces by labels (an empty `namespaceLabels` means this namespace).
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub metrics_from: Vec<PeerSelector>,
}

/// Pods by labels, optionally in other namespaces by labels.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerSelector {
    /// Labels of the namespaces (empty: this namespace only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the pods (empty: every pod of those namespaces).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
}

/// The optional PodDisruptionBudget.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudgetConfig {
    /// Pods that voluntary disruptions (node drains) may take down at once.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

/// Overrides for the injected sidecar container.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarConfig {
    /// Sidecar image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Sidecar resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

fn resources_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::schema::schema_without_descriptions::<ResourceRequirements>(generator)
}

/// Observed state, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SseServiceStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods running the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// `ClientIP/<timeout>s` or `None`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// The Service clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Label selector of the pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready, Progressing and Degraded, with metav1.Condition semantics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// How the client streams are spread over the pods, as the sidecars last published it in
    /// Redis (with `spec.rebalance` on; refreshed at most every 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamSpread>,
}

/// The streams per pod, for `kubectl describe`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpread {
    /// When the operator read it (RFC 3339).
    pub observed_at: String,
    /// Streams per live pod: `pod=total(resumable) state`.
    pub pods: Vec<String>,
    /// The busiest serving pod's streams over the serving pods' mean, e.g. `1.08`.
    pub imbalance: String,
}

fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = crate::schema::schema_without_descriptions::<Vec<Condition>>(generator);
    let map = schema.ensure_object();
    map.insert("x-kubernetes-list-type".into(), "map".into());
    map.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
