//! Against a real control plane: a ChatCluster created over claims kept from an earlier
//! ChatCluster of the same name (`claimRetention: Retain`, the default) says so. A claim
//! `data-keep-broker-0` that predates the ChatCluster `keep` makes its `ReusedClaims` condition
//! True (reason `RetainedClaims`, naming the claim) and records one `RetainedClaims` Event; a
//! ChatCluster with no such claim reports `ReusedClaims=False` (`NewClaims`). A storage size far
//! above any disk (`900Pi`) is applied as written but raises `StorageSizeWarning=True`
//! (`AboveBound`, naming the field) and one Warning Event.

mod common;

use std::time::Duration;

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// The condition `type_` of `name` once the operator has written one.
async fn condition(clusters: &Api<ChatCluster>, name: &str, type_: &str) -> Condition {
    wait_for(
        &format!("{name} has a {type_} condition"),
        Duration::from_secs(30),
        || async {
            let status = clusters.get(name).await.ok()?.status?;
            status.conditions.into_iter().find(|c| c.type_ == type_)
        },
    )
    .await
}

/// The Events of `ns` with `reason`, as `regarding-name note` lines, once one names `needle`.
async fn events(kc: &std::path::Path, ns: &str, reason: &str, needle: &str) -> String {
    wait_for(
        &format!("a {reason} Event"),
        Duration::from_secs(20),
        || async {
            let (ok, out, _) = kubectl(
                kc,
                &[
                    "get",
                    "events.events.k8s.io",
                    "-n",
                    ns,
                    "--field-selector",
                    &format!("reason={reason}"),
                    "-o",
                    "jsonpath={range .items[*]}{.regarding.name} {.note}{\"\\n\"}{end}",
                ],
            );
            (ok && out.contains(needle)).then_some(out)
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn a_chatcluster_over_retained_claims_says_so() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-storage").await;
    let _op = Operator::start_leading(&client, &kc, &ns.name, "op-storage").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);

    // What an earlier `keep` left behind: its broker claim, with the StatefulSet's labels.
    let kept: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": "data-keep-broker-0",
            "labels": {
                "app.kubernetes.io/name": "chat-cluster",
                "app.kubernetes.io/instance": "keep",
                "app.kubernetes.io/component": "broker",
            },
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }))
    .expect("claim");
    claims
        .create(&PostParams::default(), &kept)
        .await
        .expect("kept claim");
    // Creation times have one-second resolution: the ChatCluster must come a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for name in ["keep", "fresh"] {
        clusters
            .create(
                &PostParams::default(),
                &cluster(name, &ns.name, json!({"replicas": 1})),
            )
            .await
            .expect("chatcluster");
    }

    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "huge",
                &ns.name,
                json!({"replicas": 1, "broker": {"storage": {"size": "900Pi"}}}),
            ),
        )
        .await
        .expect("a 900Pi ChatCluster is accepted");

    let kept = condition(&clusters, "keep", "ReusedClaims").await;
    assert_eq!(kept.status, "True", "{kept:?}");
    assert_eq!(kept.reason, "RetainedClaims");
    assert!(
        kept.message
            .starts_with("data-keep-broker-0 kept from an earlier ChatCluster named keep"),
        "{}",
        kept.message
    );
    let fresh = condition(&clusters, "fresh", "ReusedClaims").await;
    assert_eq!(
        (fresh.status.as_str(), fresh.reason.as_str()),
        ("False", "NewClaims")
    );
    let found = events(&kc, &ns.name, "RetainedClaims", "data-keep-broker-0").await;
    assert_eq!(found.lines().count(), 1, "one Event: {found}");
    assert!(found.starts_with("keep "), "{found}");

    let huge = condition(&clusters, "huge", "StorageSizeWarning").await;
    assert_eq!(
        (huge.status.as_str(), huge.reason.as_str()),
        ("True", "AboveBound")
    );
    assert!(
        huge.message
            .starts_with("spec.broker.storage.size 900Pi above 64Ti"),
        "{}",
        huge.message
    );
    let normal = condition(&clusters, "fresh", "StorageSizeWarning").await;
    assert_eq!(normal.status, "False", "{normal:?}");
    let found = events(&kc, &ns.name, "AboveBound", "900Pi").await;
    assert_eq!(found.lines().count(), 1, "one Event: {found}");
    assert!(found.starts_with("huge "), "{found}");
}
