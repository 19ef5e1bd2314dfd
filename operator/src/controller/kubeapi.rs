//! Thin helpers over the Kubernetes API for namespaced objects the SseService owns: read,
//! server-side apply that refuses to take over somebody else's object, delete-if-ours.

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::render::MANAGER;

/// A namespaced, typed Kubernetes object.
pub trait Object:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Object for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// The object `name` in `ns`, if it exists.
pub async fn get_opt<K: Object>(client: &Client, ns: &str, name: &str) -> Result<Option<K>> {
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// Whether `obj` is controlled by the owner with `uid`.
pub fn controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Refuse to touch an existing object that another owner (or a person) made: a forced apply
/// would silently take its fields over and the garbage collector would later delete it.
pub async fn ensure_ours<K: Object>(
    client: &Client,
    ns: &str,
    obj: &K,
    uid: &str,
) -> Result<Option<K>> {
    let name = obj.name_any();
    let existing = get_opt::<K>(client, ns, &name).await?;
    match &existing {
        Some(e) if !controlled_by(e, uid) => Err(Error::NameConflict(format!(
            "{} {ns}/{name} already exists and is not owned by this SseService; rename the SseService or delete that object",
            K::kind(&())
        ))),
        _ => Ok(existing),
    }
}

/// Server-side apply `obj` as [`MANAGER`] (forced: the operator owns every field it renders).
pub async fn apply<K: Object>(client: &Client, ns: &str, obj: &K, uid: &str) -> Result<K> {
    ensure_ours(client, ns, obj, uid).await?;
    let params = PatchParams::apply(MANAGER).force();
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await?)
}

/// Apply an optional object, or delete ours if the spec no longer asks for it.
pub async fn apply_or_delete<K: Object>(
    client: &Client,
    ns: &str,
    name: &str,
    obj: Option<&K>,
    uid: &str,
) -> Result<()> {
    match obj {
        Some(obj) => {
            apply(client, ns, obj, uid).await?;
        }
        None => {
            if let Some(existing) = get_opt::<K>(client, ns, name).await?
                && controlled_by(&existing, uid)
            {
                Api::<K>::namespaced(client.clone(), ns)
                    .delete(name, &DeleteParams::background())
                    .await?;
            }
        }
    }
    Ok(())
}
