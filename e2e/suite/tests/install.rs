//! Install and lifecycle scenarios: the operator from `manifests/` (RBAC exercised in-cluster),
//! the sample ChatCluster reaching `Running 3/3`, invalid specs rejected by the API server with
//! the field named, and deleting a ChatCluster garbage-collecting its children.

use std::time::{Duration, Instant};

use chat_cluster_e2e::cluster::{Component, TestCluster, test_spec};
use chat_cluster_e2e::harness::{Harness, wait_for};
use chat_cluster_operator::crd::ChatCluster;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource};

/// `kubectl apply -k` of the operator, then `manifests/sample` (namespace and images adjusted to
/// the cluster under test) reaches Running with READY 3/3 in `kubectl get chatclusters`.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn operator_installs_and_sample_reaches_running() {
    let h = Harness::from_env().await.unwrap();
    let started = Instant::now();
    h.install_operator().await.unwrap();
    eprintln!(
        "operator installed and Available in {:.1?}",
        started.elapsed()
    );

    let ns = h.namespace("sample").await.unwrap();
    let yaml =
        std::fs::read_to_string(h.repo_root.join("manifests/sample/chatcluster.yaml")).unwrap();
    let mut sample: ChatCluster = serde_yaml::from_str(&yaml).unwrap();
    sample.metadata.namespace = Some(ns.name.clone());
    sample.spec.image = h.images.chat_server.clone();
    sample.spec.broker.image = h.images.redis.clone();
    let name = sample.metadata.name.clone().unwrap();
    let api: Api<ChatCluster> = Api::namespaced(h.client.clone(), &ns.name);
    api.create(&PostParams::default(), &sample).await.unwrap();
    let cluster = TestCluster {
        harness: h.clone(),
        namespace: ns.name.clone(),
        name,
    };
    let t = Instant::now();
    let row = cluster
        .wait_running("3/3", Duration::from_secs(300))
        .await
        .unwrap();
    eprintln!("sample Running after {:.1?}: {row:?}", t.elapsed());
    assert_eq!(row.ready, "3/3");
    assert_eq!(cluster.pods(Component::ChatServer).await.unwrap().len(), 3);
    assert_eq!(
        cluster.pods(Component::ReplicationLog).await.unwrap().len(),
        2
    );
    assert_eq!(cluster.pods(Component::Broker).await.unwrap().len(), 1);
    ns.delete(Duration::from_secs(300)).await.unwrap();
}

/// Each invalid spec is refused with 422 and a message naming the field; shrinking storage is
/// refused on update; deleting the ChatCluster removes every child it owns.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn invalid_specs_rejected_and_delete_removes_children() {
    let h = Harness::from_env().await.unwrap();
    h.install_operator().await.unwrap();
    let ns = h.namespace("validation").await.unwrap();
    let api: Api<ChatCluster> = Api::namespaced(h.client.clone(), &ns.name);

    let base = serde_json::to_value(test_spec(&h)).unwrap();
    let cases: [(&str, &str, serde_json::Value); 5] = [
        (
            "negative-replicas",
            "spec.replicas",
            serde_json::json!({"replicas": -1}),
        ),
        (
            "zero-log",
            "spec.replicationLog.replicas",
            serde_json::json!({"replicationLog": {"replicas": 0}}),
        ),
        (
            "bad-size",
            "spec.broker.storage.size",
            serde_json::json!({"broker": {"storage": {"size": "lots"}}}),
        ),
        (
            "bad-timeout",
            "spec.rollout.catchUpTimeout",
            serde_json::json!({"rollout": {"catchUpTimeout": "5 minutes"}}),
        ),
        (
            "bad-log-size",
            "spec.replicationLog.storage.size",
            serde_json::json!({"replicationLog": {"storage": {"size": "-1Gi"}}}),
        ),
    ];
    for (name, field, change) in cases {
        let mut spec = base.clone();
        merge(&mut spec, &change);
        let object = serde_json::json!({
            "apiVersion": "chat-cluster.io/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": name}, "spec": spec,
        });
        let cc: ChatCluster = serde_json::from_value(object).unwrap();
        match api.create(&PostParams::default(), &cc).await {
            Err(kube::Error::Api(s)) => {
                eprintln!("{name}: rejected ({}) {}", s.code, s.message);
                assert_eq!(s.code, 422, "{name}: {}", s.message);
                assert!(
                    s.message.contains(field),
                    "{name}: message does not name {field}: {}",
                    s.message
                );
            }
            other => panic!("{name} was not rejected: {other:?}"),
        }
    }

    let cluster = TestCluster::create(&h, &ns.name, "demo", test_spec(&h))
        .await
        .unwrap();
    cluster
        .wait_running("3/3", Duration::from_secs(300))
        .await
        .unwrap();
    let shrink = cluster
        .patch_spec(serde_json::json!({"replicationLog": {"storage": {"size": "128Mi"}}}))
        .await;
    let message = format!("{shrink:?}");
    assert!(shrink.is_err(), "shrinking the log volume was accepted");
    assert!(
        message.contains("spec.replicationLog.storage.size"),
        "{message}"
    );
    eprintln!("shrink rejected: {message}");

    let uid = cluster.get().await.unwrap().meta().uid.clone().unwrap();
    let selector = "app.kubernetes.io/instance=demo";
    let owned = children(&h, &ns.name, selector).await;
    eprintln!("children before delete: {owned:?}");
    for kind in ["StatefulSet", "Deployment", "Service", "Secret"] {
        assert!(
            owned.iter().any(|c| c.starts_with(kind)),
            "no {kind} child: {owned:?}"
        );
    }
    let t = Instant::now();
    api.delete("demo", &DeleteParams::default()).await.unwrap();
    wait_for(
        "children garbage-collected",
        Duration::from_secs(180),
        || async {
            let left = children(&h, &ns.name, selector).await;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await
    .unwrap();
    eprintln!(
        "ChatCluster {uid} and all children gone {:.1?} after delete",
        t.elapsed()
    );
    ns.delete(Duration::from_secs(300)).await.unwrap();
}

/// `Kind/name` of every object of the owned kinds (and pods) carrying `selector`.
async fn children(h: &Harness, ns: &str, selector: &str) -> Vec<String> {
    let lp = ListParams::default().labels(selector);
    let mut out = Vec::new();
    let names = |kind: &str, items: Vec<Option<String>>| {
        items
            .into_iter()
            .flatten()
            .map(|n| format!("{kind}/{n}"))
            .collect::<Vec<_>>()
    };
    if let Ok(l) = Api::<StatefulSet>::namespaced(h.client.clone(), ns)
        .list(&lp)
        .await
    {
        out.extend(names(
            "StatefulSet",
            l.items.into_iter().map(|o| o.metadata.name).collect(),
        ));
    }
    if let Ok(l) = Api::<Deployment>::namespaced(h.client.clone(), ns)
        .list(&lp)
        .await
    {
        out.extend(names(
            "Deployment",
            l.items.into_iter().map(|o| o.metadata.name).collect(),
        ));
    }
    if let Ok(l) = Api::<Service>::namespaced(h.client.clone(), ns)
        .list(&lp)
        .await
    {
        out.extend(names(
            "Service",
            l.items.into_iter().map(|o| o.metadata.name).collect(),
        ));
    }
    if let Ok(l) = Api::<Secret>::namespaced(h.client.clone(), ns)
        .list(&lp)
        .await
    {
        out.extend(names(
            "Secret",
            l.items.into_iter().map(|o| o.metadata.name).collect(),
        ));
    }
    if let Ok(l) = Api::<Pod>::namespaced(h.client.clone(), ns).list(&lp).await {
        out.extend(names(
            "Pod",
            l.items.into_iter().map(|o| o.metadata.name).collect(),
        ));
    }
    out
}

/// Deep-merges `change` into `into` (objects merge, everything else replaces).
fn merge(into: &mut serde_json::Value, change: &serde_json::Value) {
    match (into, change) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}
