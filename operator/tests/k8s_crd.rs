//! Against a real kube-apiserver: the CRD installs, `kubectl get chatclusters` prints the
//! columns, invalid specs are rejected with messages naming the field, and the manifests apply.

mod common;

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn crd_installs_and_kubectl_shows_the_columns() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "crd-columns").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let created = api
        .create(
            &PostParams::default(),
            &cluster("demo", &ns.name, json!({})),
        )
        .await
        .expect("created");
    // Defaults from the schema.
    assert_eq!(created.spec.replicas, 3);
    assert_eq!(created.spec.image, "chat-cluster/chat-server:0.1.0");
    assert_eq!(created.spec.broker.image, "redis:7.2");
    assert_eq!(created.spec.replication_log.replicas, 2);
    assert_eq!(created.spec.rollout.catch_up_timeout, "5m");
    assert_eq!(created.spec.max_message_bytes, 4096);

    let (ok, out, err) = kubectl(&kc, &["get", "chatclusters", "-n", &ns.name]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "PHASE", "MESSAGES", "AGE"],
        "{out}"
    );
    for short in ["cc", "chat"] {
        let (ok, out, err) = kubectl(&kc, &["get", short, "-n", &ns.name, "-o", "name"]);
        assert!(
            ok && out.contains("chatcluster.chat-cluster.io/demo"),
            "{short}: {out} {err}"
        );
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn invalid_specs_are_rejected_with_a_message_naming_the_field() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "crd-invalid").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);

    let on_create = [
        (
            "negative-replicas",
            json!({"replicas": -1}),
            "spec.replicas",
        ),
        (
            "zero-log-replicas",
            json!({"replicationLog": {"replicas": 0}}),
            "spec.replicationLog.replicas",
        ),
        (
            "bad-quantity",
            json!({"broker": {"storage": {"size": "lots"}}}),
            "spec.broker.storage.size",
        ),
        (
            "zero-quantity",
            json!({"replicationLog": {"storage": {"size": "0"}}}),
            "spec.replicationLog.storage.size",
        ),
        (
            "bad-duration",
            json!({"rollout": {"catchUpTimeout": "soon"}}),
            "spec.rollout.catchUpTimeout",
        ),
        (
            "short-duration",
            json!({"rollout": {"catchUpTimeout": "0s"}}),
            "spec.rollout.catchUpTimeout",
        ),
        (
            "zero-message-bytes",
            json!({"maxMessageBytes": 0}),
            "spec.maxMessageBytes",
        ),
    ];
    for (name, spec, field) in on_create {
        let err = api
            .create(&PostParams::default(), &cluster(name, &ns.name, spec))
            .await
            .expect_err(name);
        let text = err.to_string();
        assert!(
            text.contains(field),
            "{name}: message does not name {field}: {text}"
        );
    }
    let long = "x".repeat(45);
    let err = api
        .create(&PostParams::default(), &cluster(&long, &ns.name, json!({})))
        .await
        .expect_err("long name");
    assert!(err.to_string().contains("metadata.name"), "{err}");

    // Transition rules: storage may grow, never shrink; the class is immutable.
    api.create(
        &PostParams::default(),
        &cluster("storage", &ns.name, json!({"broker": {"storage": {"size": "1Gi"}}, "replicationLog": {"storage": {"size": "1Gi", "storageClassName": "slow"}}})),
    )
    .await
    .expect("valid cluster");
    let merge = |spec| Patch::Merge(json!({"spec": spec}));
    let pp = PatchParams::default();
    let err = api
        .patch(
            "storage",
            &pp,
            &merge(json!({"broker": {"storage": {"size": "512Mi"}}})),
        )
        .await
        .expect_err("shrink");
    assert!(
        err.to_string().contains("spec.broker.storage.size") && err.to_string().contains("shrink"),
        "{err}"
    );
    let err = api
        .patch(
            "storage",
            &pp,
            &merge(json!({"replicationLog": {"storage": {"storageClassName": "fast"}}})),
        )
        .await
        .expect_err("class change");
    assert!(
        err.to_string()
            .contains("spec.replicationLog.storage.storageClassName"),
        "{err}"
    );
    let err = api
        .patch(
            "storage",
            &pp,
            &merge(json!({"broker": {"storage": {"storageClassName": "fast"}}})),
        )
        .await
        .expect_err("class added");
    assert!(
        err.to_string()
            .contains("spec.broker.storage.storageClassName"),
        "{err}"
    );
    api.patch(
        "storage",
        &pp,
        &merge(json!({"broker": {"storage": {"size": "2Gi"}}})),
    )
    .await
    .expect("growing is allowed");
    // `storageClassName: null` means unset (pruned), as in the contract's example.
    api.create(
        &PostParams::default(),
        &cluster(
            "null-class",
            &ns.name,
            json!({"broker": {"storage": {"size": "1Gi", "storageClassName": null}}}),
        ),
    )
    .await
    .expect("null storage class accepted");
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn manifests_build_and_pass_server_side_dry_run() {
    let (kc, _client, _serial) = k8s_session().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let (ok, out, err) = kubectl(&kc, &["kustomize", &format!("{root}/manifests")]);
    assert!(ok, "{err}");
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(
            out.contains(&format!("kind: {kind}\n")),
            "manifests lack {kind}"
        );
    }
    assert!(
        !out.contains("\nkind: ChatCluster\n"),
        "installing the operator must not create a cluster"
    );
    // A server-side dry run does not create the namespace, so the namespaced objects would be
    // refused on a fresh cluster: create it for real first (idempotent), then dry-run everything.
    let (ok, _, err) = kubectl(
        &kc,
        &["apply", "-f", &format!("{root}/manifests/namespace.yaml")],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "-k",
            &format!("{root}/manifests"),
            "--dry-run=server",
        ],
    );
    assert!(ok, "{err}");
    let sample = std::fs::read_to_string(format!("{root}/manifests/sample-chatcluster.yaml"))
        .expect("sample");
    let copy = std::fs::read_to_string(format!("{root}/manifests/sample/chatcluster.yaml"))
        .expect("sample copy");
    assert_eq!(
        sample, copy,
        "manifests/sample/chatcluster.yaml must equal manifests/sample-chatcluster.yaml"
    );
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "-f",
            &format!("{root}/manifests/sample-chatcluster.yaml"),
            "--dry-run=server",
        ],
    );
    assert!(ok, "{err}");
}
