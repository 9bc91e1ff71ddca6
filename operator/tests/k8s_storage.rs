//! Against a real control plane: a ChatCluster created over claims kept from an earlier
//! ChatCluster of the same name (`claimRetention: Retain`, the default) says so. A claim
//! `data-keep-broker-0` that predates the ChatCluster `keep` makes its `ReusedClaims` condition
//! True (reason `RetainedClaims`, naming the claim) and records one `RetainedClaims` Event; a
//! ChatCluster with no such claim reports `ReusedClaims=False` (`NewClaims`).

mod common;

use std::time::Duration;

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// The `ReusedClaims` condition of `name` once the operator has written one.
async fn reused_claims(clusters: &Api<ChatCluster>, name: &str) -> Condition {
    wait_for(
        &format!("{name} has a ReusedClaims condition"),
        Duration::from_secs(30),
        || async {
            let status = clusters.get(name).await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ReusedClaims")
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

    let condition = reused_claims(&clusters, "keep").await;
    assert_eq!(condition.status, "True", "{condition:?}");
    assert_eq!(condition.reason, "RetainedClaims");
    assert!(
        condition
            .message
            .starts_with("data-keep-broker-0 kept from an earlier ChatCluster named keep"),
        "{}",
        condition.message
    );
    let fresh = reused_claims(&clusters, "fresh").await;
    assert_eq!(
        (fresh.status.as_str(), fresh.reason.as_str()),
        ("False", "NewClaims")
    );

    let events = wait_for(
        "a RetainedClaims Event",
        Duration::from_secs(20),
        || async {
            let (ok, out, _) = kubectl(
                &kc,
                &[
                    "get",
                    "events.events.k8s.io",
                    "-n",
                    &ns.name,
                    "--field-selector",
                    "reason=RetainedClaims",
                    "-o",
                    "jsonpath={range .items[*]}{.regarding.name} {.note}{\"\\n\"}{end}",
                ],
            );
            (ok && out.contains("data-keep-broker-0")).then_some(out)
        },
    )
    .await;
    assert_eq!(events.lines().count(), 1, "one Event: {events}");
    assert!(events.starts_with("keep "), "{events}");
}
