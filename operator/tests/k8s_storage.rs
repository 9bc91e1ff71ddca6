//! Against a real control plane: a ChatCluster created over claims kept from an earlier
//! ChatCluster of the same name (`claimRetention: Retain`, the default) says so. A claim
//! `data-keep-broker-0` that predates the ChatCluster `keep` makes its `ReusedClaims` condition
//! True (reason `RetainedClaims`, naming the claim) and records one `RetainedClaims` Event; a
//! ChatCluster with no such claim reports `ReusedClaims=False` (`NewClaims`). A storage size far
//! above any disk (`900Pi`) is applied as written but raises `StorageSizeWarning=True`
//! (`AboveBound`, naming the field) and one Warning Event.
//!
//! Growing `storage.size` expands the existing claims whose StorageClass sets
//! `allowVolumeExpansion: true` (their request is patched, one `ExpandingClaim` Event each) and
//! leaves the others as they are with `StorageExpansionBlocked=True` naming the claim and its class.

mod common;

use std::time::Duration;

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
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
            let selector = format!("reason={reason}");
            let (ok, out) = events_lines(kc, ns, &selector, "{.regarding.name} {.note}");
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

/// Deletes the cluster-scoped objects a test made (StorageClasses, PersistentVolumes) when it
/// ends, also when it fails.
struct ClusterScoped {
    kubeconfig: std::path::PathBuf,
    objects: Vec<String>,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for object in &self.objects {
            let _ = kubectl(
                &self.kubeconfig,
                &["delete", object, "--ignore-not-found", "--wait=false"],
            );
        }
    }
}

/// The storage request of claim `name`, once it exists and is `Bound`.
async fn bound_request(claims: &Api<PersistentVolumeClaim>, name: &str) -> String {
    wait_for(
        &format!("claim {name} Bound"),
        Duration::from_secs(60),
        || async {
            let claim = claims.get_opt(name).await.ok()??;
            let bound = claim.status.as_ref()?.phase.as_deref() == Some("Bound");
            let request = claim.spec?.resources?.requests?.get("storage")?.0.clone();
            bound.then_some(request)
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn growing_storage_size_expands_the_claims_whose_class_allows_it() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-resize").await;
    let _op = Operator::start_leading(&client, &kc, &ns.name, "op-resize").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let classes: Api<StorageClass> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());

    // Two classes, one that allows expansion and one that does not, each with one volume
    // reserved for the claim the StatefulSet will make (the control plane runs no provisioner).
    let grows = format!("grows-{}", ns.name);
    let fixed = format!("fixed-{}", ns.name);
    let mut made = ClusterScoped {
        kubeconfig: kc.clone(),
        objects: vec![],
    };
    for (class, allows) in [(&grows, true), (&fixed, false)] {
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": class},
            "provisioner": "kubernetes.io/no-provisioner",
            "allowVolumeExpansion": allows,
            "volumeBindingMode": "Immediate",
        }))
        .expect("class");
        classes
            .create(&PostParams::default(), &sc)
            .await
            .expect("class");
        made.objects.push(format!("storageclass/{class}"));
    }
    for (claim, class) in [
        ("data-grow-log-0", &grows),
        ("data-grow-log-1", &grows),
        ("data-grow-broker-0", &fixed),
    ] {
        let pv_name = format!("{claim}-{}", ns.name);
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": class,
                "hostPath": {"path": format!("/tmp/chat-cluster-test-pv/{pv_name}")},
                "claimRef": {"namespace": ns.name, "name": claim},
            },
        }))
        .expect("volume");
        volumes
            .create(&PostParams::default(), &pv)
            .await
            .expect("volume");
        made.objects.push(format!("persistentvolume/{pv_name}"));
    }

    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "grow",
                &ns.name,
                json!({
                    "replicas": 1,
                    "replicationLog": {"replicas": 2, "storage": {"size": "1Gi", "storageClassName": grows}},
                    "broker": {"storage": {"size": "1Gi", "storageClassName": fixed}},
                }),
            ),
        )
        .await
        .expect("chatcluster");
    assert_eq!(bound_request(&claims, "data-grow-log-0").await, "1Gi");
    // (The StatefulSet creates the second replica's claim only once the first pod is Ready,
    // which never happens without nodes: the test makes it as the controller would.)
    let second: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-grow-log-1", "labels": {
            "app.kubernetes.io/instance": "grow",
            "app.kubernetes.io/component": "replication-log",
        }},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": grows,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .expect("claim");
    claims
        .create(&PostParams::default(), &second)
        .await
        .expect("second claim");
    assert_eq!(bound_request(&claims, "data-grow-log-1").await, "1Gi");
    assert_eq!(bound_request(&claims, "data-grow-broker-0").await, "1Gi");
    let quiet = condition(&clusters, "grow", "StorageExpansionBlocked").await;
    assert_eq!(
        (quiet.status.as_str(), quiet.reason.as_str()),
        ("False", "NothingBlocked")
    );

    let grow = json!({"spec": {
        "replicationLog": {"storage": {"size": "2Gi"}},
        "broker": {"storage": {"size": "2Gi"}},
    }});
    clusters
        .patch("grow", &PatchParams::default(), &Patch::Merge(grow))
        .await
        .expect("growing storage.size is allowed");

    // The log's class allows expansion: both claims' requests follow the spec, one Event each
    // (each names its claim as the related object, so the recorder does not fold them).
    for name in ["data-grow-log-0", "data-grow-log-1"] {
        wait_for(
            &format!("{name} requests 2Gi"),
            Duration::from_secs(30),
            || async {
                let claim = claims.get(name).await.ok()?;
                let request = claim.spec?.resources?.requests?.get("storage")?.0.clone();
                (request == "2Gi").then_some(())
            },
        )
        .await;
    }
    let mut found = events(&kc, &ns.name, "ExpandingClaim", "data-grow-log-1").await;
    if !found.contains("data-grow-log-0") {
        found = events(&kc, &ns.name, "ExpandingClaim", "data-grow-log-0").await;
    }
    assert_eq!(found.lines().count(), 2, "one Event per claim: {found}");
    for name in ["data-grow-log-0", "data-grow-log-1"] {
        assert!(
            found.contains(&format!("claim {name}: requested 2Gi (was 1Gi)")),
            "{found}"
        );
    }

    // The broker's class does not: the claim stays, the condition and a Warning say why.
    let blocked = wait_for(
        "StorageExpansionBlocked=True",
        Duration::from_secs(30),
        || async {
            let status = clusters.get("grow").await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "StorageExpansionBlocked" && c.status == "True")
        },
    )
    .await;
    assert_eq!(blocked.reason, "ExpansionBlocked");
    assert!(
        blocked.message.starts_with(&format!(
            "claim data-grow-broker-0 stays at 1Gi: its StorageClass {fixed} does not set \
             allowVolumeExpansion: true"
        )),
        "{}",
        blocked.message
    );
    assert!(
        !blocked.message.contains("data-grow-log-0"),
        "{}",
        blocked.message
    );
    let warned = events(&kc, &ns.name, "ExpansionBlocked", "data-grow-broker-0").await;
    assert_eq!(warned.lines().count(), 1, "one Event: {warned}");
    let broker_claim = claims.get("data-grow-broker-0").await.expect("claim");
    let request = broker_claim
        .spec
        .and_then(|s| s.resources)
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").map(|q| q.0.clone()));
    assert_eq!(request.as_deref(), Some("1Gi"));

    clusters
        .delete("grow", &DeleteParams::default())
        .await
        .expect("delete");
    drop(made);
}
