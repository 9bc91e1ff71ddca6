//! Storage decisions, all pure: claims kept from an earlier ChatCluster of the same name, claim
//! sizes above a sane bound, and which existing claims to expand when `storage.size` grows
//! ([`resize_plan`]; the apply step patches them, the status step reports what cannot grow).
//!
//! Claims kept from an earlier ChatCluster of the same name. With `spec.storage.claimRetention`
//! `Retain` (the default) deleting a ChatCluster keeps the broker's and the replication log's
//! PersistentVolumeClaims; a ChatCluster created later with the same name in the same namespace
//! gets them back through the StatefulSets' claim templates, and with them the old history and
//! broker data. That is what `Retain` is for, but it must not be silent: this module decides
//! (pure, table-tested) which of the claims the dereference step listed predate the ChatCluster,
//! and the status step reports them in the `ReusedClaims` condition and an Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::crd::ChatClusterSpec;
use crate::names::{Component, LABEL_COMPONENT};
use crate::quantity::to_units;

/// The claim size above which the status warns: 64 TiB, the largest single disk the common
/// clouds offer (GCE Persistent Disk; EBS volumes stop at 16 TiB, Azure managed disks at 32 TiB).
/// A larger request is almost always a typo (`900Pi` for `900Gi`) that leaves the claim `Pending`
/// or books a bill; the spec is still applied (a provider may offer more).
pub const CLAIM_SIZE_WARNING: &str = "64Ti";

/// The storage sizes of `spec` above [`CLAIM_SIZE_WARNING`], as `(field, size)` in spec order.
pub fn oversized_claims(spec: &ChatClusterSpec) -> Vec<(&'static str, String)> {
    let bound = to_units(CLAIM_SIZE_WARNING).unwrap_or(u128::MAX);
    [
        ("spec.broker.storage.size", &spec.broker.storage.size),
        (
            "spec.replicationLog.storage.size",
            &spec.replication_log.storage.size,
        ),
    ]
    .into_iter()
    // A size that does not parse (or overflows u128) is above every disk too.
    .filter(|(_, size)| to_units(size).is_none_or(|bytes| bytes > bound))
    .map(|(field, size)| (field, size.clone()))
    .collect()
}
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// What is known of a StorageClass a claim names, as the dereference step read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassFacts {
    /// Read: its `allowVolumeExpansion` (unset counts as false, as in the API server's
    /// `PersistentVolumeClaimResize` admission plugin).
    Read {
        /// `allowVolumeExpansion: true`.
        allows_expansion: bool,
    },
    /// The API server answered 404: no such class.
    Missing,
    /// Not readable (the operator installed in namespaced mode has no cluster-scoped grant): the
    /// expansion is requested and the API server's admission decides.
    Unknown,
}

/// One claim to act on when a component's `storage.size` is above what the claim requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Patch `spec.resources.requests.storage` of `claim` from `from` to `to`.
    Expand {
        /// Claim name.
        claim: String,
        /// Its request now (a quantity).
        from: String,
        /// The spec's size (a quantity).
        to: String,
    },
    /// The claim cannot grow; `reason` says why in words, for the `StorageExpansionBlocked`
    /// condition.
    Blocked {
        /// Claim name.
        claim: String,
        /// Why, naming the class or the state that prevents it.
        reason: String,
    },
}

/// Which of `claims` (the broker's and the replication log's, told apart by their
/// `app.kubernetes.io/component` label) to expand to the size `spec` asks for, in claim-name
/// order. A claim is left alone when it already requests at least that size, when it is being
/// deleted, or when it is not `Bound` yet (only a bound claim's request may change; it is
/// expanded on a later reconcile). A claim is [`Resize::Blocked`] when it names no StorageClass
/// (a statically provisioned volume), its class does not exist, or its class does not set
/// `allowVolumeExpansion: true`; otherwise (class allows it, or is [`ClassFacts::Unknown`]) it
/// is [`Resize::Expand`]ed. New replicas' claims are created at the size the StatefulSet was
/// created with (its claim template is immutable) and are expanded the same way once bound.
pub fn resize_plan(
    spec: &ChatClusterSpec,
    claims: &[PersistentVolumeClaim],
    classes: &BTreeMap<String, ClassFacts>,
) -> Vec<Resize> {
    let mut plan: Vec<Resize> = claims
        .iter()
        .filter_map(|claim| resize(spec, claim, classes))
        .collect();
    plan.sort_by(|a, b| a.claim().cmp(b.claim()));
    plan
}

impl Resize {
    /// The claim this decision is about.
    pub fn claim(&self) -> &str {
        match self {
            Resize::Expand { claim, .. } | Resize::Blocked { claim, .. } => claim,
        }
    }
}

/// The storage size `spec` asks for the component labelled `label`, if it has storage.
fn wanted_size<'a>(spec: &'a ChatClusterSpec, label: &str) -> Option<&'a str> {
    if label == Component::Broker.label() {
        Some(&spec.broker.storage.size)
    } else if label == Component::ReplicationLog.label() {
        Some(&spec.replication_log.storage.size)
    } else {
        None
    }
}

fn resize(
    spec: &ChatClusterSpec,
    claim: &PersistentVolumeClaim,
    classes: &BTreeMap<String, ClassFacts>,
) -> Option<Resize> {
    if claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let to = wanted_size(spec, claim.labels().get(LABEL_COMPONENT)?)?;
    let claim_spec = claim.spec.as_ref()?;
    let from = claim_spec
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?;
    if to_units(&from.0)? >= to_units(to)? {
        return None;
    }
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if !bound {
        return None;
    }
    let name = claim.name_any();
    let blocked = |reason: String| {
        Some(Resize::Blocked {
            claim: name.clone(),
            reason,
        })
    };
    let class = claim_spec
        .storage_class_name
        .as_deref()
        .filter(|c| !c.is_empty());
    let Some(class) = class else {
        return blocked(format!(
            "claim {name} names no StorageClass (a statically provisioned volume): expand its \
             PersistentVolume by hand"
        ));
    };
    match classes.get(class).copied().unwrap_or(ClassFacts::Unknown) {
        ClassFacts::Read {
            allows_expansion: false,
        } => blocked(format!(
            "claim {name} stays at {}: its StorageClass {class} does not set \
             allowVolumeExpansion: true",
            from.0
        )),
        ClassFacts::Missing => blocked(format!(
            "claim {name} stays at {}: its StorageClass {class} does not exist",
            from.0
        )),
        ClassFacts::Read {
            allows_expansion: true,
        }
        | ClassFacts::Unknown => Some(Resize::Expand {
            claim: name,
            from: from.0.clone(),
            to: to.to_owned(),
        }),
    }
}

/// The claims of `claims` that the StatefulSets of the ChatCluster `name` made: named
/// `data-{name}-broker-N` or `data-{name}-log-N` (N an ordinal) and labelled with that component.
/// The list call selects by the instance label alone, which any object may carry; a claim of
/// another application with that label must not be expanded, reported or counted as retained.
pub fn own_claims(name: &str, claims: Vec<PersistentVolumeClaim>) -> Vec<PersistentVolumeClaim> {
    let names = crate::names::Names::of(name);
    claims
        .into_iter()
        .filter(|claim| {
            let claim_name = claim.name_any();
            let component = claim.labels().get(LABEL_COMPONENT).map(String::as_str);
            [
                (&names.broker, Component::Broker),
                (&names.log, Component::ReplicationLog),
            ]
            .iter()
            .any(|(set, c)| {
                component == Some(c.label())
                    && claim_name
                        .strip_prefix(&format!("{}-{set}-", crate::names::DATA_VOLUME))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect()
}

/// The names (sorted) of the `claims` created before `created`, the ChatCluster's
/// `metadata.creationTimestamp`: they were kept from an earlier ChatCluster of the same name
/// (the claims of this one are made by its StatefulSets, after it). Empty when `created` is
/// unknown (an object not read from the API server).
pub fn retained_claims(
    created: Option<Timestamp>,
    claims: &[PersistentVolumeClaim],
) -> Vec<String> {
    let Some(created) = created else {
        return Vec::new();
    };
    let mut names: Vec<String> = claims
        .iter()
        .filter(|c| c.creation_timestamp().is_some_and(|t| t.0 < created))
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn claim(name: &str, created: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: created.map(|t| Time(t.parse().expect("timestamp"))),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        }
    }

    #[test]
    fn oversized_claims_table() {
        // (broker size, log size, fields warned about)
        let cases = [
            ("1Gi", "1Gi", vec![]),
            ("64Ti", "65536Gi", vec![]),
            ("900Pi", "10Gi", vec!["spec.broker.storage.size"]),
            ("10Gi", "1Ei", vec!["spec.replicationLog.storage.size"]),
            (
                "71T",
                "64.5Ti",
                vec![
                    "spec.broker.storage.size",
                    "spec.replicationLog.storage.size",
                ],
            ),
            // 70 T (decimal) is 63.7 TiB: within the bound.
            ("70T", "1Gi", vec![]),
        ];
        for (broker, log, want) in cases {
            let mut spec = crate::crd::ChatCluster::test().spec;
            spec.broker.storage.size = broker.into();
            spec.replication_log.storage.size = log.into();
            let got: Vec<&str> = oversized_claims(&spec)
                .into_iter()
                .map(|(f, _)| f)
                .collect();
            assert_eq!(got, want, "{broker} {log}");
        }
    }

    #[test]
    fn retained_claims_table() {
        let at = |t: &str| Some(t.parse::<Timestamp>().expect("timestamp"));
        let cluster = "2026-12-04T10:00:00Z";
        // (cluster created, claims as (name, created), retained)
        type Claims<'a> = Vec<(&'a str, Option<&'a str>)>;
        let cases: [(Option<Timestamp>, Claims, Vec<&str>); 6] = [
            (at(cluster), vec![], vec![]),
            // The cluster's own claims, made after it.
            (
                at(cluster),
                vec![("data-demo-broker-0", Some("2026-12-04T10:00:05Z"))],
                vec![],
            ),
            // Created in the same second: not before it.
            (
                at(cluster),
                vec![("data-demo-log-0", Some(cluster))],
                vec![],
            ),
            // Kept from last week's `demo`, listed in name order.
            (
                at(cluster),
                vec![
                    ("data-demo-log-0", Some("2026-11-27T09:00:00Z")),
                    ("data-demo-broker-0", Some("2026-11-27T09:00:00Z")),
                    ("data-demo-log-1", Some("2026-12-04T10:01:00Z")),
                ],
                vec!["data-demo-broker-0", "data-demo-log-0"],
            ),
            // A claim without a timestamp (not from the API server) is not counted.
            (at(cluster), vec![("data-demo-log-0", None)], vec![]),
            // No creation time for the cluster: nothing can be said.
            (
                None,
                vec![("data-demo-log-0", Some("2020-01-01T00:00:00Z"))],
                vec![],
            ),
        ];
        for (created, claims, want) in cases {
            let claims: Vec<_> = claims.into_iter().map(|(n, t)| claim(n, t)).collect();
            assert_eq!(retained_claims(created, &claims), want, "{claims:?}");
        }
    }

    /// A claim of `component` requesting `size`, in `phase`, of `class`.
    fn sized(
        name: &str,
        component: &str,
        size: &str,
        phase: &str,
        class: Option<&str>,
    ) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {LABEL_COMPONENT: component}},
            "spec": {"resources": {"requests": {"storage": size}}, "storageClassName": class},
            "status": {"phase": phase},
        }))
        .expect("claim")
    }

    #[test]
    fn resize_plan_table() {
        let classes = BTreeMap::from([
            (
                "grows".to_owned(),
                ClassFacts::Read {
                    allows_expansion: true,
                },
            ),
            (
                "fixed".to_owned(),
                ClassFacts::Read {
                    allows_expansion: false,
                },
            ),
            ("gone".to_owned(), ClassFacts::Missing),
        ]);
        let expand = |claim: &str, from: &str, to: &str| Resize::Expand {
            claim: claim.into(),
            from: from.into(),
            to: to.into(),
        };
        let blocked = |claim: &str, because: &str| (claim.to_owned(), because.to_owned());
        // (broker size, log size, claims, expansions, blocked claims with a phrase of the reason)
        type Case = (
            &'static str,
            &'static str,
            Vec<PersistentVolumeClaim>,
            Vec<Resize>,
            Vec<(String, String)>,
        );
        let log = "replication-log";
        let cases: Vec<Case> = vec![
            // Same size, or the claim already larger (grown by hand): nothing.
            (
                "1Gi",
                "1Gi",
                vec![sized("data-d-log-0", log, "1Gi", "Bound", Some("grows"))],
                vec![],
                vec![],
            ),
            (
                "1Gi",
                "1Gi",
                vec![sized("data-d-log-0", log, "2Gi", "Bound", Some("grows"))],
                vec![],
                vec![],
            ),
            // 1024Mi is 1Gi: equal quantities in other units are not a change.
            (
                "1Gi",
                "1024Mi",
                vec![sized("data-d-log-0", log, "1Gi", "Bound", Some("grows"))],
                vec![],
                vec![],
            ),
            // Grown: each component's claims follow its own size, in name order.
            (
                "3Gi",
                "2Gi",
                vec![
                    sized("data-d-log-1", log, "1Gi", "Bound", Some("grows")),
                    sized("data-d-broker-0", "broker", "1Gi", "Bound", Some("grows")),
                    sized("data-d-log-0", log, "1Gi", "Bound", Some("grows")),
                ],
                vec![
                    expand("data-d-broker-0", "1Gi", "3Gi"),
                    expand("data-d-log-0", "1Gi", "2Gi"),
                    expand("data-d-log-1", "1Gi", "2Gi"),
                ],
                vec![],
            ),
            // Not bound yet: its request cannot change; a later reconcile expands it.
            (
                "1Gi",
                "2Gi",
                vec![sized("data-d-log-0", log, "1Gi", "Pending", Some("grows"))],
                vec![],
                vec![],
            ),
            // The class forbids it, is gone, or there is none.
            (
                "1Gi",
                "2Gi",
                vec![
                    sized("data-d-log-0", log, "1Gi", "Bound", Some("fixed")),
                    sized("data-d-log-1", log, "1Gi", "Bound", Some("gone")),
                    sized("data-d-log-2", log, "1Gi", "Bound", None),
                    sized("data-d-log-3", log, "1Gi", "Bound", Some("")),
                ],
                vec![],
                vec![
                    blocked(
                        "data-d-log-0",
                        "StorageClass fixed does not set allowVolumeExpansion",
                    ),
                    blocked("data-d-log-1", "StorageClass gone does not exist"),
                    blocked("data-d-log-2", "names no StorageClass"),
                    blocked("data-d-log-3", "names no StorageClass"),
                ],
            ),
            // A class the operator may not read: ask, the API server's admission decides.
            (
                "1Gi",
                "2Gi",
                vec![sized(
                    "data-d-log-0",
                    log,
                    "1Gi",
                    "Bound",
                    Some("unreadable"),
                )],
                vec![expand("data-d-log-0", "1Gi", "2Gi")],
                vec![],
            ),
            // Claims of no known component (a chat-server has none) are not touched.
            (
                "1Gi",
                "2Gi",
                vec![sized("other", "chat-server", "1Gi", "Bound", Some("grows"))],
                vec![],
                vec![],
            ),
        ];
        for (broker, log_size, claims, want_expand, want_blocked) in cases {
            let mut spec = crate::crd::ChatCluster::test().spec;
            spec.broker.storage.size = broker.into();
            spec.replication_log.storage.size = log_size.into();
            let plan = resize_plan(&spec, &claims, &classes);
            let expanded: Vec<Resize> = plan
                .iter()
                .filter(|r| matches!(r, Resize::Expand { .. }))
                .cloned()
                .collect();
            assert_eq!(expanded, want_expand, "{broker} {log_size}");
            let got_blocked: Vec<(String, String)> = plan
                .iter()
                .filter_map(|r| match r {
                    Resize::Blocked { claim, reason } => Some((claim.clone(), reason.clone())),
                    Resize::Expand { .. } => None,
                })
                .collect();
            assert_eq!(got_blocked.len(), want_blocked.len(), "{got_blocked:?}");
            for ((claim, reason), (want_claim, phrase)) in got_blocked.iter().zip(&want_blocked) {
                assert_eq!(claim, want_claim);
                assert!(reason.contains(phrase.as_str()), "{reason}");
            }
        }
    }

    #[test]
    fn only_the_statefulsets_claims_are_the_clusters() {
        let claims = vec![
            sized("data-st-log-0", "replication-log", "1Gi", "Bound", None),
            sized("data-st-broker-0", "broker", "1Gi", "Bound", None),
            sized("data-st-log-12", "replication-log", "1Gi", "Bound", None),
            // Another application's claim with the instance and component labels.
            sized("foreign", "replication-log", "1Gi", "Bound", None),
            // The right name with the wrong component, and names that only look alike.
            sized("data-st-log-1", "broker", "1Gi", "Bound", None),
            sized("data-st-log-x", "replication-log", "1Gi", "Bound", None),
            sized("data-st-log-", "replication-log", "1Gi", "Bound", None),
            sized("data-stx-log-0", "replication-log", "1Gi", "Bound", None),
        ];
        let got: Vec<String> = own_claims("st", claims)
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        assert_eq!(got, ["data-st-log-0", "data-st-broker-0", "data-st-log-12"]);
    }

    #[test]
    fn a_claim_being_deleted_is_not_resized() {
        let mut claim = sized("data-d-log-0", "replication-log", "1Gi", "Bound", Some("x"));
        claim.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let mut spec = crate::crd::ChatCluster::test().spec;
        spec.replication_log.storage.size = "2Gi".into();
        assert_eq!(resize_plan(&spec, &[claim], &BTreeMap::new()), vec![]);
    }
}
