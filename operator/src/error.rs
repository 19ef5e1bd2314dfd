//! Reconcile errors. Each has a short `kind` used as the `errors_total{kind}` metric label and as
//! the reason of the Degraded condition, so a person reading `kubectl describe` and a dashboard
//! see the same word.

use ssekeeper_contract as contract;

use crate::purge::PurgeFailure;
use crate::render::RenderError;
use crate::validate::SpecError;

/// Why the Redis URL could not be read from the user's Secret (the message says what to do).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `store: redis` without a `secretRef`.
    #[error("sessions.store is redis but sessions.redis.secretRef is not set")]
    NotReferenced,
    /// The Secret does not exist.
    #[error(
        "Secret {namespace}/{name} (sessions.redis.secretRef) not found; create it with the Redis URL under key {key:?}"
    )]
    Missing {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key that should hold the URL.
        key: String,
    },
    /// The Secret has no such key.
    #[error("Secret {namespace}/{name} has no key {key:?} (sessions.redis.secretRef.key)")]
    MissingKey {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// The value is not a Redis URL the sidecar accepts.
    #[error("Secret {namespace}/{name} key {key:?} does not hold a Redis URL ({source})")]
    NotAUrl {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
        /// What the sidecar's parser says.
        source: contract::redis::UrlError,
    },
}

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
