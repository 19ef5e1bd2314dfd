//! Reconcile errors. Each has a short `kind` used as the `errors_total{kind}` metric label and as
//! the reason of the Degraded condition, so a person reading `kubectl describe` and a dashboard
//! see the same word.

use crate::controller::SecretError;
use crate::purge::PurgeFailure;
use crate::render::RenderError;
use crate::validate::SpecError;

/// Why a reconcile did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object could not be rendered.
    #[error("render: {0}")]
    Render(#[from] RenderError),
    /// The Secret named in `spec.sessions.redis.secretRef` is missing or has no usable URL.
    #[error(transparent)]
    RedisSecret(#[from] SecretError),
    /// The spec asks for something that cannot work (checks the CRD cannot make cheaply).
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// An object with a name the SseService needs exists and belongs to someone else.
    #[error("{0}")]
    NameConflict(String),
    /// The finalizer could not purge the sessions from Redis (yet).
    #[error("purging sessions from Redis: {0}")]
    Purge(#[from] PurgeFailure),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Metric label and condition reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Render(_) => "RenderFailed",
            Error::RedisSecret(_) => "RedisSecretInvalid",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::NameConflict(_) => "NameConflict",
            Error::Purge(_) => "PurgeFailed",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
