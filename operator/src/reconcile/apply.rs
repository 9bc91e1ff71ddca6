//! Apply step: makes the cluster match the built children with server-side apply under the one
//! field manager `chat-cluster-operator`, and deletes children the spec no longer asks for.
//!
//! A child whose live object already contains every field we would apply is not patched at all,
//! so a steady cluster sees no write requests (a no-op apply would not change the object, but it
//! still is a PATCH). The only children the spec can drop today are the PDBs (fewer than two
//! replicas); pruning covers PDBs and Services, found by the instance and managed-by labels and
//! our owner uid.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::build::{Children, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};
use super::dereference::Observed;
use super::validate::Validated;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "chat-cluster-operator";

/// What the apply step changed, for Events and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A child was created.
    Created {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
    /// An existing child was patched.
    Updated {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
    /// A child the spec no longer asks for was deleted.
    Deleted {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
}

/// The children after apply, as the API server returned them.
#[derive(Clone, Debug)]
pub struct Applied {
    /// Broker StatefulSet.
    pub broker: StatefulSet,
    /// Log StatefulSet.
    pub log: StatefulSet,
    /// chat-server Deployment.
    pub chat_server: Deployment,
    /// What changed.
    pub changes: Vec<Change>,
}

/// Errors writing children.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Server-side apply of a child failed.
    #[error("applying {kind} {name}: {source}")]
    Patch {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Listing or deleting an obsolete child failed.
    #[error("pruning {kind}: {source}")]
    Prune {
        /// Kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A child did not serialize (a bug).
    #[error("serializing {kind}: {source}")]
    Serialize {
        /// Kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Applies `children` and prunes what is no longer wanted.
pub async fn apply(
    client: &Client,
    cluster: &Validated,
    children: Children,
    observed: &Observed,
) -> Result<Applied, ApplyError> {
    let ns = &cluster.namespace;
    let mut changes = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);

    ensure(
        &secrets,
        "Secret",
        &children.broker_secret,
        observed.broker_secret.as_ref(),
        &mut changes,
    )
    .await?;
    ensure(
        &services,
        "Service",
        &children.broker_service,
        observed.broker_service.as_ref(),
        &mut changes,
    )
    .await?;
    let broker = ensure(
        &sets,
        "StatefulSet",
        &children.broker,
        observed.broker.as_ref(),
        &mut changes,
    )
    .await?;
    ensure(
        &services,
        "Service",
        &children.log_headless_service,
        observed.log_headless_service.as_ref(),
        &mut changes,
    )
    .await?;
    ensure(
        &services,
        "Service",
        &children.log_service,
        observed.log_service.as_ref(),
        &mut changes,
    )
    .await?;
    let log = ensure(
        &sets,
        "StatefulSet",
        &children.log,
        observed.log.as_ref(),
        &mut changes,
    )
    .await?;
    let chat_server = ensure(
        &deployments,
        "Deployment",
        &children.chat_server,
        observed.chat_server.as_ref(),
        &mut changes,
    )
    .await?;
    ensure(
        &services,
        "Service",
        &children.chat_service,
        observed.chat_service.as_ref(),
        &mut changes,
    )
    .await?;

    let mut keep_pdbs = BTreeSet::new();
    for (pdb, seen) in [
        (&children.log_pdb, &observed.log_pdb),
        (&children.chat_pdb, &observed.chat_pdb),
    ] {
        if let Some(pdb) = pdb {
            ensure(
                &pdbs,
                "PodDisruptionBudget",
                pdb,
                seen.as_ref(),
                &mut changes,
            )
            .await?;
            keep_pdbs.insert(pdb.name_any());
        }
    }
    let keep_services: BTreeSet<String> = [
        &children.broker_service,
        &children.log_headless_service,
        &children.log_service,
        &children.chat_service,
    ]
    .iter()
    .map(|s| s.name_any())
    .collect();
    let uid = cluster.owner_ref.uid.as_str();
    prune(
        &pdbs,
        "PodDisruptionBudget",
        &cluster.name,
        uid,
        &keep_pdbs,
        &mut changes,
    )
    .await?;
    prune(
        &services,
        "Service",
        &cluster.name,
        uid,
        &keep_services,
        &mut changes,
    )
    .await?;

    Ok(Applied {
        broker,
        log,
        chat_server,
        changes,
    })
}

/// Server-side applies `desired` unless `observed` already contains it; returns the live object.
async fn ensure<K>(
    api: &Api<K>,
    kind: &'static str,
    desired: &K,
    observed: Option<&K>,
    changes: &mut Vec<Change>,
) -> Result<K, ApplyError>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = desired.name_any();
    if let Some(live) = observed {
        let want = serde_json::to_value(desired)
            .map_err(|source| ApplyError::Serialize { kind, source })?;
        let have =
            serde_json::to_value(live).map_err(|source| ApplyError::Serialize { kind, source })?;
        if contains(&have, &want) {
            return Ok(live.clone());
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let live = api
        .patch(&name, &params, &Patch::Apply(desired))
        .await
        .map_err(|source| ApplyError::Patch {
            kind,
            name: name.clone(),
            source,
        })?;
    tracing::info!(kind, name, created = observed.is_none(), "applied child");
    changes.push(match observed {
        None => Change::Created { kind, name },
        Some(_) => Change::Updated { kind, name },
    });
    Ok(live)
}

/// Deletes our children of this kind whose names are not in `keep`.
async fn prune<K>(
    api: &Api<K>,
    kind: &'static str,
    instance: &str,
    owner_uid: &str,
    keep: &BTreeSet<String>,
    changes: &mut Vec<Change>,
) -> Result<(), ApplyError>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let selector = format!("{LABEL_INSTANCE}={instance},{LABEL_MANAGED_BY}={MANAGED_BY}");
    let listed = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ApplyError::Prune { kind, source })?;
    for object in listed.items {
        let name = object.name_any();
        let ours = object
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        if !ours || keep.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(source) => return Err(ApplyError::Prune { kind, source }),
        }
        tracing::info!(kind, name, "deleted child the spec no longer asks for");
        changes.push(Change::Deleted { kind, name });
    }
    Ok(())
}

/// Whether `have` already holds every field of `want`: objects by key, arrays element by
/// element (same length), scalars by equality.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, w)| have.get(k).is_some_and(|h| contains(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| contains(h, w))
        }
        (have, want) => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn contains_is_a_deep_subset_check() {
        let have = json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}], "f": "x"}, "g": null});
        assert!(contains(&have, &json!({"a": 1})));
        assert!(contains(&have, &json!({"b": {"c": [1, {"d": 2}]}})));
        assert!(
            !contains(&have, &json!({"b": {"c": [1]}})),
            "shorter list must re-apply"
        );
        assert!(!contains(&have, &json!({"b": {"f": "y"}})));
        assert!(!contains(&have, &json!({"h": 1})));
        assert!(contains(&have, &json!({})));
    }
}
