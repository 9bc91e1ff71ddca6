//! Apply step: makes the cluster match the built children with server-side apply under the one
//! field manager `chat-cluster-operator`, and deletes children the spec no longer asks for.
//!
//! [`apply`] takes [`Children`] apart without `..`, so a new child that is built but not applied
//! is a compile error; every child goes through the one generic [`Applier::always`] /
//! [`Applier::optional`], which remember the names kept per kind. Each child is first stamped
//! with the hash of what is applied ([`stamp`], annotation
//! [`ANNOTATION_APPLIED_HASH`](crate::names::ANNOTATION_APPLIED_HASH)); a child whose live object
//! already contains every stamped field is not patched at all, so a steady cluster sees no write
//! requests (a no-op apply would not change the object, but it still is a PATCH). The stamp makes
//! a spec change that only removes a field visible: the subset check alone would find the old
//! live object still "containing" the smaller desired one and never send the apply that lets
//! server-side apply delete the dropped field.
//! [`expand_claims`] carries out the storage step's [`Resize::Expand`] decisions (a merge patch of
//! each claim's `spec.resources.requests.storage`).
//! Pruning then lists each kind in [`PRUNED_KINDS`] by the instance and managed-by labels and
//! deletes what carries our controller owner reference but was not kept (today only a PDB can go,
//! when a component drops below two replicas).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::Resource as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::children::{ChildKind, Children, Desired, Existing, Live};
use super::storage::Resize;
use super::validate::Validated;
use crate::names::{ANNOTATION_APPLIED_HASH, managed_selector};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "chat-cluster-operator";

/// The kinds whose unwanted objects are deleted: the optional children (PDBs, NetworkPolicies)
/// and the Services (whose set has changed between versions). The operator may delete only these
/// (`manifests/rbac.yaml`); the Secrets and the workloads go only with the ChatCluster.
pub const PRUNED_KINDS: [&str; 3] = [
    Service::KIND,
    PodDisruptionBudget::KIND,
    NetworkPolicy::KIND,
];

/// What the apply step did to one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// The child was created.
    Created,
    /// An existing child was patched.
    Updated,
    /// A child the spec no longer asks for was deleted.
    Deleted,
}

impl Verb {
    /// The Event reason (`Created`, `Updated`, `Deleted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Created => "Created",
            Verb::Updated => "Updated",
            Verb::Deleted => "Deleted",
        }
    }
}

/// What the apply step changed, for Events and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What was done.
    pub verb: Verb,
    /// Kind of the child.
    pub kind: &'static str,
    /// apiVersion of the child (`v1`, `apps/v1`, `policy/v1`).
    pub api_version: String,
    /// Name of the child.
    pub name: String,
}

/// The Event recording `change` on the ChatCluster in `namespace`: reason `Created`/`Updated`/
/// `Deleted`, note `created Secret demo-broker`, related object the child. kube-runtime's
/// recorder keys its Event series by type, reason, action, regarding and related object — not by
/// note — so the child must be the related object for each child to get its own Event (a
/// repeat of the same change is then counted in that Event's series).
pub fn change_event(change: &Change, namespace: &str) -> Event {
    let reason = change.verb.as_str();
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(format!(
            "{} {} {}",
            reason.to_lowercase(),
            change.kind,
            change.name
        )),
        action: "Apply".into(),
        secondary: Some(ObjectReference {
            api_version: Some(change.api_version.clone()),
            kind: Some(change.kind.into()),
            name: Some(change.name.clone()),
            namespace: Some(namespace.into()),
            ..ObjectReference::default()
        }),
    }
}

/// The children after apply, as the API server returned them, and what changed.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The live children.
    pub children: Children<Live>,
    /// What changed, in order.
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

/// Applies `desired` (compared with `existing`, as read by the dereference step) and prunes what
/// is no longer wanted.
pub async fn apply(
    client: &Client,
    cluster: &Validated,
    desired: Children<Desired>,
    existing: Children<Existing>,
) -> Result<Applied, ApplyError> {
    let mut applier = Applier::new(client, &cluster.namespace);
    // Destructured without `..`: a new child fails to compile here until it is applied.
    let Children {
        broker_secret,
        broker_service,
        broker,
        log_headless_service,
        log_service,
        log,
        log_pdb,
        chat_server,
        chat_service,
        chat_pdb,
        auth_secret,
        internal_secret,
        broker_policy,
        log_policy,
        chat_policy,
    } = desired;
    let seen = existing;
    let children = Children {
        broker_secret: applier.always(broker_secret, seen.broker_secret).await?,
        broker_service: applier.always(broker_service, seen.broker_service).await?,
        broker: applier.always(broker, seen.broker).await?,
        log_headless_service: applier
            .always(log_headless_service, seen.log_headless_service)
            .await?,
        log_service: applier.always(log_service, seen.log_service).await?,
        log: applier.always(log, seen.log).await?,
        log_pdb: applier.optional(log_pdb, seen.log_pdb).await?,
        chat_server: applier.always(chat_server, seen.chat_server).await?,
        chat_service: applier.always(chat_service, seen.chat_service).await?,
        chat_pdb: applier.optional(chat_pdb, seen.chat_pdb).await?,
        auth_secret: applier.optional(auth_secret, seen.auth_secret).await?,
        internal_secret: applier
            .always(internal_secret, seen.internal_secret)
            .await?,
        broker_policy: applier.optional(broker_policy, seen.broker_policy).await?,
        log_policy: applier.optional(log_policy, seen.log_policy).await?,
        chat_policy: applier.optional(chat_policy, seen.chat_policy).await?,
    };
    applier.prune(&cluster.name, &cluster.owner_ref.uid).await?;
    Ok(Applied {
        children,
        changes: applier.changes,
    })
}

/// The names kept of one kind, and how to reach that kind's API.
struct Kept {
    resource: ApiResource,
    names: BTreeSet<String>,
}

/// Applies children one at a time and remembers, per kind, which names it kept.
pub struct Applier<'a> {
    client: &'a Client,
    namespace: &'a str,
    kept: BTreeMap<&'static str, Kept>,
    changes: Vec<Change>,
}

impl ApplyError {
    /// Whether the write was refused because the namespace is being deleted (403 with cause
    /// `NamespaceTerminating`): the namespace controller is removing the children and the
    /// ChatCluster with them, so there is nothing to do and no error to report.
    pub fn namespace_terminating(&self) -> bool {
        let source = match self {
            ApplyError::Patch { source, .. } | ApplyError::Prune { source, .. } => source,
            ApplyError::Serialize { .. } => return false,
        };
        is_namespace_terminating(source)
    }
}

/// Whether `error` is the API server's 403 for a write into a terminating namespace.
pub fn is_namespace_terminating(error: &kube::Error) -> bool {
    let kube::Error::Api(status) = error else {
        return false;
    };
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

impl<'a> Applier<'a> {
    /// An applier for the children in `namespace`.
    pub fn new(client: &'a Client, namespace: &'a str) -> Applier<'a> {
        Applier {
            client,
            namespace,
            kept: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    /// Applies a child every ChatCluster has; returns the live object.
    pub async fn always<K: ChildKind>(
        &mut self,
        desired: K,
        existing: Option<K>,
    ) -> Result<K, ApplyError> {
        self.keep::<K>(Some(&desired));
        self.ensure(desired, existing).await
    }

    /// Applies a child the spec may not ask for; when it does not, the existing one is left for
    /// [`Applier::prune`].
    pub async fn optional<K: ChildKind>(
        &mut self,
        desired: Option<K>,
        existing: Option<K>,
    ) -> Result<Option<K>, ApplyError> {
        self.keep::<K>(desired.as_ref());
        match desired {
            Some(desired) => self.ensure(desired, existing).await.map(Some),
            None => Ok(None),
        }
    }

    /// Records the kind `K` (so prune lists it) and the name of `desired`, if any.
    fn keep<K: ChildKind>(&mut self, desired: Option<&K>) {
        let kept = self.kept.entry(K::KIND).or_insert_with(|| Kept {
            resource: ApiResource::erase::<K>(&()),
            names: BTreeSet::new(),
        });
        kept.names.extend(desired.map(ResourceExt::name_any));
    }

    /// Server-side applies `desired` unless `existing` already contains it; returns the live object.
    async fn ensure<K: ChildKind>(
        &mut self,
        desired: K,
        existing: Option<K>,
    ) -> Result<K, ApplyError> {
        let kind = K::KIND;
        let name = desired.name_any();
        let desired = stamp(desired);
        if let Some(live) = existing.as_ref() {
            let want = serde_json::to_value(&desired)
                .map_err(|source| ApplyError::Serialize { kind, source })?;
            let have = serde_json::to_value(live)
                .map_err(|source| ApplyError::Serialize { kind, source })?;
            if contains(&have, &want) {
                return Ok(live.clone());
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let live = Api::<K>::namespaced(self.client.clone(), self.namespace)
            .patch(&name, &params, &Patch::Apply(&desired))
            .await
            .map_err(|source| ApplyError::Patch {
                kind,
                name: name.clone(),
                source,
            })?;
        tracing::info!(kind, name, created = existing.is_none(), "applied child");
        self.changes.push(Change {
            verb: match existing {
                None => Verb::Created,
                Some(_) => Verb::Updated,
            },
            kind,
            api_version: K::API_VERSION.into(),
            name,
        });
        Ok(live)
    }

    /// Deletes, for every applied kind in [`PRUNED_KINDS`], the objects labelled as ours for
    /// `instance` and controlled by `owner_uid` whose names were not kept.
    pub async fn prune(&mut self, instance: &str, owner_uid: &str) -> Result<(), ApplyError> {
        let selector = managed_selector(instance);
        let pruned = self
            .kept
            .iter()
            .filter(|(kind, _)| PRUNED_KINDS.contains(*kind));
        for (kind, kept) in pruned {
            let kind = *kind;
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), self.namespace, &kept.resource);
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
                if !ours || kept.names.contains(&name) {
                    continue;
                }
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => continue,
                    Err(source) => return Err(ApplyError::Prune { kind, source }),
                }
                tracing::info!(kind, name, "deleted child the spec no longer asks for");
                self.changes.push(Change {
                    verb: Verb::Deleted,
                    kind,
                    api_version: kept.resource.api_version.clone(),
                    name,
                });
            }
        }
        Ok(())
    }
}

/// The first 16 hex digits of the SHA-256 of `value`'s JSON (k8s-openapi serializes fields in a
/// fixed order and maps sorted, so equal objects hash equal).
pub fn json_hash<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `desired` with the annotation [`ANNOTATION_APPLIED_HASH`] set to the [`json_hash`] of
/// `desired` as built (without that annotation).
pub fn stamp<K: ChildKind>(mut desired: K) -> K {
    if let Some(annotations) = desired.meta_mut().annotations.as_mut() {
        annotations.remove(ANNOTATION_APPLIED_HASH);
    }
    let hash = json_hash(&desired);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_APPLIED_HASH.to_owned(), hash);
    desired
}

/// Whether `have` already holds every field of `want`: objects by key, arrays element by
/// element (same length), scalars by equality. A wanted empty list matches an absent field: the
/// API server omits empty lists (Go's `omitempty`), so `ingress: []` is stored as no `ingress`.
/// (Builders spell "none" as an empty list rather than leaving the field out, so a change to none
/// is still a difference: an absent wanted field is never compared.)
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) => contains(h, w),
            None => w.as_array().is_some_and(Vec::is_empty),
        }),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| contains(h, w))
        }
        (have, want) => have == want,
    }
}

/// Carries out `plan` in `namespace`: each [`Resize::Expand`] patches the claim's
/// `spec.resources.requests.storage` (a merge patch; the StatefulSet's claim template stays as it
/// was created, it is immutable). Returns the plan as it turned out: an expansion the API server
/// refused (for example the `PersistentVolumeClaimResize` admission plugin when the class does not
/// allow expansion, or a namespaced install's missing `patch` on claims) becomes
/// [`Resize::Blocked`] with the API server's message; [`Resize::Blocked`] entries pass through.
pub async fn expand_claims(client: &Client, namespace: &str, plan: Vec<Resize>) -> Vec<Resize> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut done = Vec::with_capacity(plan.len());
    for resize in plan {
        let Resize::Expand { claim, from, to } = resize else {
            done.push(resize);
            continue;
        };
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": to}}}});
        match api
            .patch(&claim, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(claim, from, to, "expansion requested");
                done.push(Resize::Expand { claim, from, to });
            }
            Err(e) => {
                let why = match &e {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                tracing::warn!(claim, error = %e, "claim expansion refused");
                done.push(Resize::Blocked {
                    reason: format!(
                        "claim {claim} stays at {from}: expanding it to {to} was refused: {why}"
                    ),
                    claim,
                });
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each child written gets its own Event (its own recorder key): the related object differs.
    #[test]
    fn change_events_name_the_child_as_related_object() {
        let change = |verb, kind, api_version: &str, name: &str| Change {
            verb,
            kind,
            api_version: api_version.into(),
            name: name.into(),
        };
        let cases = [
            (
                change(Verb::Created, "Secret", "v1", "demo-broker"),
                "Created",
                "created Secret demo-broker",
            ),
            (
                change(Verb::Updated, "StatefulSet", "apps/v1", "demo-log"),
                "Updated",
                "updated StatefulSet demo-log",
            ),
            (
                change(
                    Verb::Deleted,
                    "PodDisruptionBudget",
                    "policy/v1",
                    "demo-log",
                ),
                "Deleted",
                "deleted PodDisruptionBudget demo-log",
            ),
        ];
        let mut related = Vec::new();
        for (c, reason, note) in cases {
            let e = change_event(&c, "ns");
            assert_eq!(e.reason, reason);
            assert_eq!(e.note.as_deref(), Some(note));
            let r = e.secondary.expect("related");
            assert_eq!(r.kind.as_deref(), Some(c.kind));
            assert_eq!(r.api_version.as_deref(), Some(c.api_version.as_str()));
            assert_eq!(r.namespace.as_deref(), Some("ns"));
            related.push((r.kind, r.name));
        }
        related.dedup();
        assert_eq!(related.len(), 3);
    }

    #[test]
    fn writes_into_a_terminating_namespace_are_recognised() {
        let status = |code: u16, cause: &str| {
            let status: kube::core::Status = serde_json::from_value(json!({
                "status": "Failure", "code": code, "reason": "Forbidden",
                "message": "unable to create new content in namespace ns because it is being terminated",
                "details": {"name": "demo-broker", "kind": "networkpolicies",
                    "causes": [{"reason": cause, "field": "metadata.namespace"}]},
            }))
            .expect("status");
            kube::Error::Api(status.boxed())
        };
        let patch = |source| ApplyError::Patch {
            kind: "NetworkPolicy",
            name: "demo-broker".into(),
            source,
        };
        assert!(patch(status(403, "NamespaceTerminating")).namespace_terminating());
        assert!(!patch(status(403, "SomethingElse")).namespace_terminating());
        assert!(!patch(status(409, "NamespaceTerminating")).namespace_terminating());
        let serialize = ApplyError::Serialize {
            kind: "Secret",
            source: serde_json::from_str::<Value>("{").expect_err("bad json"),
        };
        assert!(!serialize.namespace_terminating());
    }

    /// Dropping a field from the built object changes the stamp, so the old live object no longer
    /// contains the new desired one and the apply goes out; an unchanged object keeps its stamp.
    #[test]
    fn a_dropped_field_changes_the_stamp_and_forces_the_apply() {
        use k8s_openapi::api::apps::v1::Deployment;
        let built = |annotations: &[(&str, &str)]| {
            let mut d = Deployment::default();
            d.metadata.name = Some("demo-chat-server".into());
            d.metadata.annotations = (!annotations.is_empty()).then(|| {
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            });
            d
        };
        let value = |d: &Deployment| serde_json::to_value(d).unwrap();
        let before = stamp(built(&[("team", "chat")]));
        let after = stamp(built(&[]));
        // (case, live, desired, skipped)
        let cases = [
            (
                "unchanged",
                &before,
                stamp(built(&[("team", "chat")])),
                true,
            ),
            ("annotation dropped", &before, after.clone(), false),
            ("annotation added back", &after, before.clone(), false),
            ("stamping twice", &before, stamp(before.clone()), true),
        ];
        for (case, live, desired, skipped) in cases {
            assert_eq!(contains(&value(live), &value(&desired)), skipped, "{case}");
        }
        // Without the stamp the subset check would have skipped the drop.
        assert!(contains(
            &value(&built(&[("team", "chat")])),
            &value(&built(&[]))
        ));
    }

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
        // An empty list is what the API server stores as an absent field; a non-empty one is not.
        assert!(contains(&have, &json!({"b": {"absent": []}})));
        assert!(!contains(&have, &json!({"b": {"absent": [1]}})));
        assert!(
            !contains(&have, &json!({"b": {"c": []}})),
            "a stored list is not empty"
        );
        assert!(!contains(&have, &json!({"absent": {}})));
    }
}
