//! Claims kept from an earlier ChatCluster of the same name. With `spec.storage.claimRetention`
//! `Retain` (the default) deleting a ChatCluster keeps the broker's and the replication log's
//! PersistentVolumeClaims; a ChatCluster created later with the same name in the same namespace
//! gets them back through the StatefulSets' claim templates, and with them the old history and
//! broker data. That is what `Retain` is for, but it must not be silent: this module decides
//! (pure, table-tested) which of the claims the dereference step listed predate the ChatCluster,
//! and the status step reports them in the `ReusedClaims` condition and an Event.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
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
