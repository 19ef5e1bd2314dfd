//! `ssekeeper-operator selftest`: what `helm test` runs in the cluster. It proves the two things a
//! newcomer needs before applying an SseService: the operator answers on its Service, and the API
//! server serves the SseService API to the operator's service account.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, ListParams};

use crate::api::SseService;

/// The flags of `selftest`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "selftest",
    about = "Check that the operator answers and the SseService CRD is served"
)]
pub struct SelftestArgs {
    /// The operator's readiness URL (its metrics Service).
    #[arg(long)]
    pub url: String,
    /// List SseServices in this namespace only (a `watchNamespace` install); default: all.
    #[arg(long)]
    pub namespace: Option<String>,
    /// How long to keep trying before failing (the operator may still be starting).
    #[arg(long, default_value_t = 60)]
    pub timeout_seconds: u64,
}

/// Why a self-test failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// The operator's readiness endpoint did not answer 200 in time.
    #[error("the operator did not answer ready at {url}: {last}")]
    NotReady {
        /// The URL asked.
        url: String,
        /// The last answer or error.
        last: String,
    },
    /// The SseService API could not be listed.
    #[error("the SseService API is not served (is the CRD installed? RBAC?): {0}")]
    NoCrd(String),
}

/// Run both checks; print one line per check.
pub async fn run(args: SelftestArgs) -> Result<(), SelftestError> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    wait_ready(&args.url, deadline).await?;
    println!("ok: the operator answers ready at {}", args.url);
    let n = list_sseservices(args.namespace.as_deref(), deadline).await?;
    println!("ok: the SseService API is served ({n} SseService(s) visible)");
    Ok(())
}

async fn wait_ready(url: &str, deadline: Instant) -> Result<(), SelftestError> {
    let uri: http::Uri = url.parse().map_err(|e| SelftestError::NotReady {
        url: url.into(),
        last: format!("bad URL: {e}"),
    })?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let req = http::Request::get(uri.clone()).body(Empty::new());
        let Ok(req) = req else { break };
        match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                    .unwrap_or_default();
                if status.is_success() {
                    return Ok(());
                }
                last = format!("{status}: {body}");
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out after 5 s".into(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(SelftestError::NotReady {
        url: url.into(),
        last,
    })
}

async fn list_sseservices(
    namespace: Option<&str>,
    deadline: Instant,
) -> Result<usize, SelftestError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| SelftestError::NoCrd(e.to_string()))?;
    let api: Api<SseService> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    loop {
        match api.list(&ListParams::default().limit(50)).await {
            Ok(list) => return Ok(list.items.len()),
            Err(e) if Instant::now() >= deadline => {
                return Err(SelftestError::NoCrd(e.to_string()));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
