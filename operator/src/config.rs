//! Operator configuration: flags, each also read from an `SSEKEEPER_*` environment variable (the
//! Helm chart sets those).

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use ssekeeper_contract::LogFormat;

use crate::controller::Settings;
use crate::render::SidecarDefaults;

/// Every setting of the operator.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ssekeeper-operator",
    version,
    about = "Kubernetes operator for SseService"
)]
pub struct OperatorArgs {
    /// Sidecar image injected into every SseService's pods (unless the spec sets one).
    #[arg(long, env = "SSEKEEPER_SIDECAR_IMAGE", default_value = concat!("ghcr.io/ssekeeper/sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Pull policy of the sidecar image.
    #[arg(long, env = "SSEKEEPER_SIDECAR_IMAGE_PULL_POLICY")]
    pub sidecar_image_pull_policy: Option<String>,
    /// Default sidecar resources, as JSON or YAML (a core/v1 ResourceRequirements).
    #[arg(long, env = "SSEKEEPER_SIDECAR_RESOURCES", value_parser = parse_resources,
          default_value = "{requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}")]
    pub sidecar_resources: ResourceRequirements,
    /// Address of the `/metrics`, `/healthz` and `/readyz` server.
    #[arg(long, env = "SSEKEEPER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "SSEKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Run the controller only while holding a Lease, so several replicas can run safely.
    #[arg(long, env = "SSEKEEPER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "SSEKEEPER_LEASE_NAME",
        default_value = "ssekeeper-operator"
    )]
    pub lease_name: String,
    /// The operator's own Deployment (in the Lease's namespace), made the Lease's owner so the
    /// Lease goes when the operator is uninstalled. Unset: the Lease has no owner.
    #[arg(long, env = "SSEKEEPER_LEASE_OWNER_DEPLOYMENT")]
    pub lease_owner_deployment: Option<String>,
    /// Namespace of the leader-election Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch only these namespaces (comma-separated; default: all). With a list the operator
    /// needs Roles in those namespaces only (the chart renders them).
    #[arg(long, env = "SSEKEEPER_WATCH_NAMESPACE", value_delimiter = ',')]
    pub watch_namespace: Vec<String>,
    /// Seconds after deletion during which the finalizer retries purging sessions from Redis.
    #[arg(long, env = "SSEKEEPER_PURGE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub purge_timeout_seconds: u64,
    /// Seconds between periodic re-reconciles of an unchanged SseService.
    #[arg(long, env = "SSEKEEPER_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// At most this many SseServices roll their pods at once for a change that is not their own
    /// spec's (this operator's new sidecar image or defaults, a rotated Redis Secret); the others
    /// wait in a queue. 0 rolls everything at once.
    #[arg(long, env = "SSEKEEPER_MAX_CONCURRENT_ROLLOUTS", default_value_t = 2)]
    pub max_concurrent_rollouts: usize,
    /// Seconds the leader Lease is valid without renewal (a crashed leader's successor takes
    /// over after about this long).
    #[arg(long, env = "SSEKEEPER_LEASE_DURATION_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(5..))]
    pub lease_duration_seconds: u64,
    /// Seconds before the Lease expires that the leader renews it.
    #[arg(long, env = "SSEKEEPER_LEASE_RENEW_BEFORE_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_renew_before_seconds: u64,
}

fn parse_resources(text: &str) -> Result<ResourceRequirements, String> {
    serde_yaml::from_str(text).map_err(|e| format!("not a ResourceRequirements: {e}"))
}

impl OperatorArgs {
    /// What clap cannot check alone: the flags' relations.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_renew_before_seconds >= self.lease_duration_seconds {
            return Err(format!(
                "--lease-renew-before-seconds ({}) must be less than --lease-duration-seconds ({}): the leader renews before the Lease expires",
                self.lease_renew_before_seconds, self.lease_duration_seconds
            ));
        }
        Ok(())
    }

    /// The reconciler's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            sidecar: SidecarDefaults {
                image: self.sidecar_image.clone(),
                image_pull_policy: self.sidecar_image_pull_policy.clone(),
                resources: self.sidecar_resources.clone(),
            },
            purge_timeout: Duration::from_secs(self.purge_timeout_seconds),
            resync: Duration::from_secs(self.resync_seconds.max(1)),
            namespaces: self
                .watch_namespace
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            max_concurrent_rollouts: self.max_concurrent_rollouts,
        }
    }
}
