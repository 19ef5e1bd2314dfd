//! Leader election on a coordination.k8s.io Lease (kube-lease-manager): the controller runs only
//! while this replica holds the Lease and stops as soon as it loses it, so two replicas never
//! reconcile at once.

use std::future::Future;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Where the Lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// Seconds the Lease is valid without renewal; a crashed leader is replaced after about this
    /// long.
    pub duration_seconds: u64,
    /// Seconds before expiry the holder renews it.
    pub renew_before_seconds: u64,
    /// The operator's own Deployment, made the Lease's owner (see [`own_lease`]).
    pub owner_deployment: Option<String>,
}

impl LeaseConfig {
    /// How long a leader keeps reconciling without a read that confirms its hold: less than the
    /// Lease's duration, so it has stepped down before a successor can take over.
    fn confirm_limit(&self) -> Duration {
        Duration::from_secs(self.duration_seconds.saturating_sub(3).max(2))
    }
}

/// A future that resolves when `rx` turns true. It is `Sync` (the controller's shutdown trigger
/// must be), so the waiting happens in a task that fires a oneshot.
pub fn stopped(mut rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    let (tx, done) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = rx.wait_for(|s| *s).await;
        let _ = tx.send(());
    });
    async move {
        let _ = done.await;
    }
}

/// Resolves when this replica must stop acting as leader although the lease manager has not said
/// so: another holder appears in the Lease, or no read has confirmed our hold for almost a Lease
/// duration (the manager retries failed renewals forever and never reports them, so a leader cut
/// off from the API server would otherwise keep reconciling next to its successor).
async fn confirm_while_leading(client: Client, lease: LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &lease.namespace);
    let mut confirmed = Instant::now();
    let limit = lease.confirm_limit();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match tokio::time::timeout(Duration::from_secs(2), api.get_opt(&lease.name)).await {
            Ok(Ok(Some(l))) => {
                let holder = l.spec.and_then(|s| s.holder_identity);
                if holder.as_deref() == Some(lease.identity.as_str()) {
                    confirmed = Instant::now();
                } else {
                    warn!(?holder, "the Lease names another holder; stepping down");
                    return;
                }
            }
            Ok(Ok(None)) => {
                warn!("the Lease was deleted; stepping down");
                return;
            }
            Ok(Err(_)) | Err(_) if confirmed.elapsed() > limit => {
                warn!("could not confirm the Lease for {limit:?}; stepping down");
                return;
            }
            _ => {}
        }
    }
}

/// Make the operator's Deployment the Lease's owner, so the garbage collector deletes the Lease
/// when the operator is uninstalled (Helm does not know the Lease: the operator creates it). Best
/// effort: without the permission, or outside a cluster, the Lease just stays.
async fn own_lease(client: &Client, lease: &LeaseConfig) {
    use k8s_openapi::api::apps::v1::Deployment;
    let Some(owner) = lease.owner_deployment.as_deref() else {
        return;
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &lease.namespace);
    let uid = match deployments.get(owner).await {
        Ok(d) => d.metadata.uid.unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, deployment = owner, "cannot read the operator's Deployment; the Lease gets no owner and stays after an uninstall");
            return;
        }
    };
    let patch = serde_json::json!({
        "metadata": { "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": owner,
            "uid": uid,
        }]}
    });
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    match leases
        .patch(
            &lease.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => info!(
            deployment = owner,
            "the Lease is owned by the operator's Deployment"
        ),
        Err(e) => warn!(error = %e, "could not set the Lease's owner; it stays after an uninstall"),
    }
}

/// Hold the Lease and run `controller(lost)` each time we become leader, until `stop` turns true.
/// `lost` resolves when leadership is lost or shutdown begins; the controller must then return.
pub async fn run_while_leader<F, Fut>(
    client: Client,
    lease: LeaseConfig,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
    controller: F,
) -> Result<(), LeaseManagerError>
where
    F: Fn(std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.renew_before_seconds)
        // The library's default field manager is per identity; that is what makes two replicas'
        // acquisitions conflict. Never set a shared one.
        .build()
        .await?;
    own_lease(&client, &lease).await;
    let (mut is_leader, task) = manager.watch().await;
    loop {
        let mut stop_wait = stop.clone();
        tokio::select! {
            _ = stop_wait.wait_for(|s| *s) => break,
            res = is_leader.wait_for(|l| *l) => if res.is_err() { break },
        }
        info!(lease = %lease.name, "became leader; starting the controller");
        metrics.leader.set(1);
        let mut leadership = is_leader.clone();
        let mut stop_wait = stop.clone();
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let guard = confirm_while_leading(client.clone(), lease.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = leadership.wait_for(|l| !*l) => warn!("lost the leader lease; stopping the controller"),
                _ = guard => {}
                _ = stop_wait.wait_for(|s| *s) => {}
            }
            let _ = lost_tx.send(());
        });
        let lost = Box::pin(async move {
            let _ = lost_rx.await;
        });
        controller(lost).await;
        metrics.leader.set(0);
        if *stop.borrow() {
            break;
        }
    }
    // Closing the channel makes the manager release the Lease, so a standby takes over at once.
    drop(is_leader);
    match task.await {
        Ok(Ok(_)) => info!("released the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "releasing the leader lease"),
        Err(e) => warn!(error = %e, "lease task panicked"),
    }
    Ok(())
}
