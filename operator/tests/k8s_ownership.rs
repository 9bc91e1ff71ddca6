//! Against a real control plane: the operator never adopts an object it did not create. A
//! Deployment `foo-chat-server` and a Secret `foo-broker` made by someone else before the
//! ChatCluster `foo` exists stay untouched (same resourceVersion, no owner reference, the
//! Secret's password not copied anywhere), no other child is created, and the ChatCluster reports
//! `Degraded=True`, reason `NameConflict`, naming both. Once they are deleted the operator creates
//! its own children on its next look.

mod common;

use std::time::Duration;

use chat_cluster_operator::crd::{ChatCluster, Phase};
use common::*;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn refuses_to_adopt_a_foreign_deployment_and_secret() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-ownership").await;
    let _op = Operator::start_leading(&client, &kc, &ns.name, "op-ownership").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);

    let foreign_deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "foo-chat-server", "labels": {"team": "someone-else"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "web", "image": "example.org/theirs:1"}]},
            },
        },
    }))
    .expect("deployment");
    let foreign_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "foo-broker"},
        "stringData": {"password": "someone-elses-password"},
    }))
    .expect("secret");
    let deployment = deployments
        .create(&PostParams::default(), &foreign_deployment)
        .await
        .expect("foreign deployment");
    let secret = secrets
        .create(&PostParams::default(), &foreign_secret)
        .await
        .expect("foreign secret");

    clusters
        .create(
            &PostParams::default(),
            &cluster("foo", &ns.name, json!({"replicas": 2})),
        )
        .await
        .expect("chatcluster");

    let degraded = wait_for(
        "foo Degraded with NameConflict",
        Duration::from_secs(20),
        || async {
            let status = clusters.get("foo").await.ok()?.status?;
            let condition = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True")?
                .clone();
            (status.phase == Some(Phase::Degraded) && condition.reason == "NameConflict")
                .then_some(condition)
        },
    )
    .await;
    for named in ["Deployment foo-chat-server", "Secret foo-broker"] {
        assert!(
            degraded.message.contains(named),
            "{named} not in {:?}",
            degraded.message
        );
    }

    // Give the operator a few more reconciles (it requeues every 10 s while conflicting), then
    // check nothing was touched or created.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let now_deployment = deployments
        .get("foo-chat-server")
        .await
        .expect("deployment");
    let now_secret = secrets.get("foo-broker").await.expect("secret");
    // The Deployment's status moves with kube-controller-manager, so compare what a writer
    // other than its controllers would change: spec, labels, and the managers of its fields.
    assert_eq!(
        now_deployment.spec, deployment.spec,
        "foreign Deployment spec changed"
    );
    assert_eq!(now_deployment.labels(), deployment.labels());
    assert_eq!(
        now_secret.resource_version(),
        secret.resource_version(),
        "foreign Secret written to"
    );
    for managers in [now_deployment.managed_fields(), now_secret.managed_fields()] {
        assert!(
            managers
                .iter()
                .all(|m| m.manager.as_deref() != Some("chat-cluster-operator")),
            "the operator manages fields of a foreign object: {managers:?}"
        );
    }
    assert!(now_deployment.owner_references().is_empty());
    assert!(now_secret.owner_references().is_empty());
    for name in ["foo-broker", "foo-log"] {
        assert!(
            sets.get_opt(name).await.expect("get").is_none(),
            "StatefulSet {name} created despite the conflict"
        );
    }
    for name in [
        "foo-broker",
        "foo-log",
        "foo-log-headless",
        "foo-chat-server",
    ] {
        assert!(
            services.get_opt(name).await.expect("get").is_none(),
            "Service {name} created despite the conflict"
        );
    }
    let (ok, events, err) = kubectl(
        &kc,
        &[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=NameConflict",
            "-o",
            "jsonpath={range .items[*]}{.note}{.message}{\"\\n\"}{end}",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        events.contains("foo-chat-server"),
        "no NameConflict Event: {events:?}"
    );

    // The owner of the foreign objects removes them: the operator now creates its own.
    deployments
        .delete("foo-chat-server", &DeleteParams::default())
        .await
        .expect("delete deployment");
    secrets
        .delete("foo-broker", &DeleteParams::default())
        .await
        .expect("delete secret");
    let uid = clusters.get("foo").await.expect("foo").uid().expect("uid");
    wait_for(
        "own children after the conflict is gone",
        Duration::from_secs(30),
        || async {
            let d = deployments.get_opt("foo-chat-server").await.ok()??;
            let s = secrets.get_opt("foo-broker").await.ok()??;
            let ours =
                |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
                    refs.iter()
                        .any(|r| r.uid == uid && r.controller == Some(true))
                };
            let password = s.data.as_ref()?.get("password")?.0.clone();
            (ours(d.owner_references())
                && ours(s.owner_references())
                && password != b"someone-elses-password")
                .then_some(())
        },
    )
    .await;
    wait_for("NameConflict cleared", Duration::from_secs(20), || async {
        let status = clusters.get("foo").await.ok()?.status?;
        status
            .conditions
            .iter()
            .all(|c| c.reason != "NameConflict")
            .then_some(())
    })
    .await;
}
