//! The Secrets the reconciler reads or makes: the user's Redis URL, the forwarding key (made
//! once, never overwritten) and the operator's copy of the Redis URL for the finalizer.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use ssekeeper_contract as contract;

use super::kubeapi::{self, get_opt};
use crate::api::{SseService, StoreType};
use crate::error::{Error, Result, SecretError};
use crate::render;

/// The Redis URL from the Secret `spec.sessions.redis.secretRef` names; `Ok(None)` for the memory
/// store. A missing Secret, key or a value that is not a Redis URL (by the sidecar's own parser,
/// [`contract::redis::parse_url`]) is `Error::RedisSecret` with a message a person can act on.
pub async fn redis_url(client: &Client, svc: &SseService) -> Result<Option<String>> {
    if svc.spec.sessions.store != StoreType::Redis {
        return Ok(None);
    }
    let Some(redis) = &svc.spec.sessions.redis else {
        return Err(SecretError::NotReferenced.into());
    };
    let ns = svc.namespace().unwrap_or_default();
    let r = &redis.secret_ref;
    let (namespace, name, key) = (ns.clone(), r.name.clone(), r.key.clone());
    let Some(secret) = get_opt::<Secret>(client, &ns, &r.name).await? else {
        return Err(SecretError::Missing {
            namespace,
            name,
            key,
        }
        .into());
    };
    let Some(value) = secret_value(&secret, &r.key) else {
        return Err(SecretError::MissingKey {
            namespace,
            name,
            key,
        }
        .into());
    };
    if let Err(source) = contract::redis::parse_url(&value) {
        return Err(SecretError::NotAUrl {
            namespace,
            name,
            key,
            source,
        }
        .into());
    }
    Ok(Some(value))
}

/// A Secret's value as trimmed UTF-8.
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .map(|v| v.trim().to_string())
}

/// The forwarding key: the stored one, or a new one created with POST (never applied over an
/// existing value, so two writers can never replace a key the pods already use: a losing
/// create reads the winner's key).
pub async fn forward_key(client: &Client, svc: &SseService) -> Result<String> {
    let ns = svc.namespace().unwrap_or_default();
    let uid = svc.uid().unwrap_or_default();
    let name = contract::forward_secret_name(&svc.name_any());
    let valid =
        |s: &Secret| secret_value(s, contract::FORWARD_KEY_SECRET_KEY).filter(|k| k.len() >= 32);

    let probe = render::render_forward_secret(svc, "")?;
    if let Some(existing) = kubeapi::ensure_ours(client, &ns, &probe, &uid).await? {
        // Ours but emptied by hand: a fresh key (the pods roll: it is in the config hash). Made
        // by a version without the publish token: the token added, the key kept.
        let (key, rewrite) = match valid(&existing) {
            Some(key) => {
                let has_token =
                    secret_value(&existing, contract::PUBLISH_TOKEN_SECRET_KEY).is_some();
                (key, !has_token)
            }
            None => (new_key(), true),
        };
        if rewrite {
            let secret = render::render_forward_secret(svc, &key)?;
            kubeapi::apply(client, &ns, &secret, &uid).await?;
        }
        return Ok(key);
    }
    let key = new_key();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    match api
        .create(
            &PostParams::default(),
            &render::render_forward_secret(svc, &key)?,
        )
        .await
    {
        Ok(_) => Ok(key),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let winner = api.get(&name).await?;
            valid(&winner).ok_or_else(|| {
                Error::NameConflict(format!("Secret {ns}/{name} has no usable forwarding key"))
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The Redis URL the finalizer should purge with: the operator's own copy first (it outlives the
/// user's Secret during `kubectl delete -f` or namespace deletion), then the user's Secret.
pub async fn purge_url(client: &Client, svc: &SseService) -> Option<String> {
    let ns = svc.namespace().unwrap_or_default();
    let copy = get_opt::<Secret>(client, &ns, &render::purge_secret_name(&svc.name_any()))
        .await
        .ok()
        .flatten()
        .and_then(|s| secret_value(&s, render::PURGE_SECRET_KEY));
    match copy {
        Some(url) => Some(url),
        None => redis_url(client, svc).await.ok().flatten(),
    }
}
