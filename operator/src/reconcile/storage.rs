//! Storage facts the status reports: claims kept from an earlier ChatCluster of the same name,
//! and claim sizes above a sane bound.
//!
//! Claims kept from an earlier ChatCluster of the same name. With `spec.storage.claimRetention`
//! `Retain` (the default) deleting a ChatCluster keeps the broker's and the replication log's
//! PersistentVolumeClaims; a ChatCluster created later with the same name in the same namespace
//! gets them back through the StatefulSets' claim templates, and with them the old history and
//! broker data. That is what `Retain` is for, but it must not be silent: this module decides
//! (pure, table-tested) which of the claims the dereference step listed predate the ChatCluster,
//! and the status step reports them in the `ReusedClaims` condition and an Event.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::crd::ChatClusterSpec;
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
}
