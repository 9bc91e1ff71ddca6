//! Ownership check between dereference and apply: the operator never adopts an object it did not
//! create. A child name that already exists without this ChatCluster as its controller (its
//! `metadata.ownerReferences` entry with `controller: true` and this ChatCluster's uid) is a
//! [`NameConflict`]; the reconcile then applies nothing, reads nothing from the foreign object
//! (not the password of a foreign Secret) and reports `Degraded=True`, reason `NameConflict`,
//! naming each kind/name.
//!
//! Without this check, forced server-side apply would take over a Deployment or Secret someone
//! else made, the garbage collector would delete it with the ChatCluster, and a foreign Secret's
//! password would be injected into pods whose image the ChatCluster's author chooses.
//! Pure: [`conflicts`] decides from the objects the dereference step read.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

use super::children::{ChildKind, Children, Existing};

/// The Degraded condition's reason when a child name is taken by an object this ChatCluster does
/// not control.
pub const NAME_CONFLICT: &str = "NameConflict";

/// An existing object with a child's name that this ChatCluster does not control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict {
    /// Kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// metadata.name.
    pub name: String,
    /// Its controller, as `Kind/name`, when it has one (another ChatCluster, a Helm-less
    /// controller, …); None when nothing controls it.
    pub controller: Option<String>,
}

impl fmt::Display for NameConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)?;
        match &self.controller {
            Some(controller) => write!(f, " (controlled by {controller})"),
            None => write!(f, " (no controller)"),
        }
    }
}

/// Whether `object`'s controller owner reference is the ChatCluster with uid `owner_uid`.
/// Only the controller reference counts: a plain (non-controller) owner reference to us does not
/// make an object ours.
pub fn controlled_by(references: &[OwnerReference], owner_uid: &str) -> bool {
    references
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// The existing children that this ChatCluster (uid `owner_uid`) does not control, in the order
/// of [`Children`]'s fields. Absent children are no conflict: they will be created.
pub fn conflicts(existing: &Children<Existing>, owner_uid: &str) -> Vec<NameConflict> {
    // Destructured without `..`: a new child kind fails to compile here until it is checked.
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
    } = existing;
    [
        conflict(broker_secret.as_ref(), owner_uid),
        conflict(broker_service.as_ref(), owner_uid),
        conflict(broker.as_ref(), owner_uid),
        conflict(log_headless_service.as_ref(), owner_uid),
        conflict(log_service.as_ref(), owner_uid),
        conflict(log.as_ref(), owner_uid),
        conflict(log_pdb.as_ref(), owner_uid),
        conflict(chat_server.as_ref(), owner_uid),
        conflict(chat_service.as_ref(), owner_uid),
        conflict(chat_pdb.as_ref(), owner_uid),
        conflict(auth_secret.as_ref(), owner_uid),
        conflict(internal_secret.as_ref(), owner_uid),
        conflict(broker_policy.as_ref(), owner_uid),
        conflict(log_policy.as_ref(), owner_uid),
        conflict(chat_policy.as_ref(), owner_uid),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The Degraded condition's message for `conflicts` (not empty).
pub fn message(conflicts: &[NameConflict]) -> String {
    let list = conflicts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "objects with this ChatCluster's child names exist and are not controlled by it: {list}; \
         nothing was applied — delete or rename them, or rename the ChatCluster"
    )
}

fn conflict<K: ChildKind>(object: Option<&K>, owner_uid: &str) -> Option<NameConflict> {
    let object = object?;
    let references = object.owner_references();
    if controlled_by(references, owner_uid) {
        return None;
    }
    Some(NameConflict {
        kind: K::KIND,
        name: object.name_any(),
        controller: references
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| format!("{}/{}", r.kind, r.name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;

    const OURS: &str = "uid-ours";

    fn reference(uid: &str, kind: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "chat-cluster.io/v1alpha1".into(),
            kind: kind.into(),
            name: "owner".into(),
            uid: uid.into(),
            controller,
            block_owner_deletion: Some(true),
        }
    }

    fn empty() -> Children<Existing> {
        Children {
            broker_secret: None,
            broker_service: None,
            broker: None,
            log_headless_service: None,
            log_service: None,
            log: None,
            log_pdb: None,
            chat_server: None,
            chat_service: None,
            chat_pdb: None,
            auth_secret: None,
            internal_secret: None,
            broker_policy: None,
            log_policy: None,
            chat_policy: None,
        }
    }

    fn meta(name: &str, references: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            owner_references: (!references.is_empty()).then_some(references),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_our_controller_reference_makes_an_object_ours() {
        // (case, owner references of the live object, conflict?, controller named)
        let table: Vec<(&str, Vec<OwnerReference>, bool, Option<&str>)> = vec![
            ("no owner references", vec![], true, None),
            (
                "our controller reference",
                vec![reference(OURS, "ChatCluster", Some(true))],
                false,
                None,
            ),
            (
                "another ChatCluster controls it",
                vec![reference("uid-other", "ChatCluster", Some(true))],
                true,
                Some("ChatCluster/owner"),
            ),
            (
                "a ReplicaSet-style controller of another kind",
                vec![reference("uid-x", "HelmRelease", Some(true))],
                true,
                Some("HelmRelease/owner"),
            ),
            (
                "a non-controller reference to us only",
                vec![reference(OURS, "ChatCluster", Some(false))],
                true,
                None,
            ),
            (
                "controller unset on a reference to us",
                vec![reference(OURS, "ChatCluster", None)],
                true,
                None,
            ),
            (
                "a plain reference elsewhere and our controller reference",
                vec![
                    reference("uid-x", "ConfigMap", None),
                    reference(OURS, "ChatCluster", Some(true)),
                ],
                false,
                None,
            ),
        ];
        for (case, references, want_conflict, want_controller) in table {
            let mut existing = empty();
            existing.chat_server = Some(Deployment {
                metadata: meta("foo-chat-server", references),
                ..Deployment::default()
            });
            let found = conflicts(&existing, OURS);
            assert_eq!(!found.is_empty(), want_conflict, "{case}");
            if want_conflict {
                assert_eq!(
                    found,
                    vec![NameConflict {
                        kind: "Deployment",
                        name: "foo-chat-server".into(),
                        controller: want_controller.map(String::from),
                    }],
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn absent_children_are_no_conflict_and_every_foreign_one_is_named() {
        assert_eq!(conflicts(&empty(), OURS), vec![]);
        let mut existing = empty();
        existing.broker_secret = Some(Secret {
            metadata: meta("foo-broker", vec![]),
            ..Secret::default()
        });
        existing.chat_server = Some(Deployment {
            metadata: meta(
                "foo-chat-server",
                vec![reference("uid-other", "ChatCluster", Some(true))],
            ),
            ..Deployment::default()
        });
        let found = conflicts(&existing, OURS);
        assert_eq!(found.len(), 2);
        let text = message(&found);
        assert!(text.contains("Secret foo-broker (no controller)"), "{text}");
        assert!(
            text.contains("Deployment foo-chat-server (controlled by ChatCluster/owner)"),
            "{text}"
        );
    }
}
