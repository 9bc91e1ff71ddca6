//! Against a real control plane (kube-apiserver + kube-controller-manager, no kubelet): the
//! operator, run as a child process, creates every child with owner references, follows spec
//! edits and `kubectl scale`, lets the garbage collector remove children, computes status from
//! child status (the test plays kubelet by patching pod status), and does no writes when
//! nothing changes, a ChatCluster deleted mid-reconcile is not an error, and the NetworkPolicies
//! follow `spec.networkPolicy`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_cluster_operator::crd::{ChatCluster, ChatClusterStatus, Phase};
use chat_cluster_operator::reconcile::status;
use common::*;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

async fn owned_by<K>(client: &Client, ns: &str, name: &str, uid: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(o)) => o
            .owner_references()
            .iter()
            .any(|r| r.uid == uid && r.controller == Some(true)),
        _ => false,
    }
}

async fn all_children_owned(client: &Client, ns: &str, uid: &str) -> bool {
    owned_by::<Secret>(client, ns, "demo-broker", uid).await
        && owned_by::<Service>(client, ns, "demo-broker", uid).await
        && owned_by::<StatefulSet>(client, ns, "demo-broker", uid).await
        && owned_by::<Service>(client, ns, "demo-log-headless", uid).await
        && owned_by::<Service>(client, ns, "demo-log", uid).await
        && owned_by::<StatefulSet>(client, ns, "demo-log", uid).await
        && owned_by::<PodDisruptionBudget>(client, ns, "demo-log", uid).await
        && owned_by::<Deployment>(client, ns, "demo-chat-server", uid).await
        && owned_by::<Service>(client, ns, "demo-chat-server", uid).await
        && owned_by::<PodDisruptionBudget>(client, ns, "demo-chat-server", uid).await
        && owned_by::<NetworkPolicy>(client, ns, "demo-broker", uid).await
        && owned_by::<NetworkPolicy>(client, ns, "demo-log", uid).await
        && owned_by::<NetworkPolicy>(client, ns, "demo-chat-server", uid).await
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn children_with_owner_references_follow_spec_edits_scale_and_deletion() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-children").await;
    let op = Operator::start_leading(&client, &kc, &ns.name, "op-children").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);

    let started = Instant::now();
    let created = api
        .create(
            &PostParams::default(),
            &cluster("demo", &ns.name, json!({"replicas": 3})),
        )
        .await
        .expect("created");
    let uid = created.uid().expect("uid");
    wait_for("every child, owned", Duration::from_secs(5), || async {
        all_children_owned(&client, &ns.name, &uid)
            .await
            .then_some(())
    })
    .await;
    eprintln!("all children present after {:?}", started.elapsed());

    // The Redis passwords (admin and one per data-plane ACL user) are generated once and kept.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let data = secrets
        .get("demo-broker")
        .await
        .expect("secret")
        .data
        .expect("data");
    for key in [
        "password",
        "chat-server-password",
        "replication-log-password",
    ] {
        assert_eq!(data.get(key).map(|v| v.0.len()), Some(32), "{key}");
    }
    let password = data["password"].clone();

    // A spec edit reaches the children and observedGeneration.
    let edited = api
        .patch("demo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"image": "chat-cluster/chat-server:0.2.0", "maxMessageBytes": 100}})))
        .await
        .expect("edit");
    let generation = edited.metadata.generation.expect("generation");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "new image on the Deployment and the log StatefulSet",
        Duration::from_secs(10),
        || async {
            let d = deployments.get("demo-chat-server").await.ok()?;
            let s = sets.get("demo-log").await.ok()?;
            let image = |spec: Option<k8s_openapi::api::core::v1::PodSpec>| {
                spec.map(|s| s.containers[0].image.clone())
            };
            let d_container = d.spec?.template.spec;
            let env = d_container.as_ref()?.containers[0].env.clone()?;
            let max = env
                .iter()
                .find(|e| e.name == "MAX_MESSAGE_BYTES")?
                .value
                .clone()?;
            (image(d_container).flatten().as_deref() == Some("chat-cluster/chat-server:0.2.0")
                && image(s.spec?.template.spec).flatten().as_deref()
                    == Some("chat-cluster/chat-server:0.2.0")
                && max == "100")
                .then_some(())
        },
    )
    .await;

    wait_for("observedGeneration", Duration::from_secs(10), || async {
        let c = api.get("demo").await.ok()?;
        (c.status?.observed_generation == Some(generation)).then_some(())
    })
    .await;

    // A field the spec drops goes from the child too (the applied-hash stamp sends the apply;
    // server-side apply removes what the operator's field manager no longer sets).
    let template_annotation = |d: Deployment| {
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("example.com/team")
            .cloned()
    };
    for (value, want) in [(json!("chat"), Some("chat")), (Value::Null, None)] {
        api.patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"chatServer": {"podAnnotations": {"example.com/team": value}}}}),
            ),
        )
        .await
        .expect("edit podAnnotations");
        wait_for(
            &format!("pod annotation on the Deployment's template: {want:?}"),
            Duration::from_secs(10),
            || async {
                let d = deployments.get("demo-chat-server").await.ok()?;
                (template_annotation(d).as_deref() == want).then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        secrets
            .get("demo-broker")
            .await
            .expect("secret")
            .data
            .expect("data")["password"],
        password,
        "password kept"
    );

    // `kubectl scale` goes through the scale subresource to the Deployment.
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "scale",
            "chatcluster",
            "demo",
            "-n",
            &ns.name,
            "--replicas=5",
        ],
    );
    assert!(ok, "{err}");
    wait_for(
        "Deployment scaled to 5",
        Duration::from_secs(10),
        || async {
            (deployments
                .get("demo-chat-server")
                .await
                .ok()?
                .spec?
                .replicas
                == Some(5))
            .then_some(())
        },
    )
    .await;
    let (ok, out, err) = kubectl(
        &kc,
        &[
            "get",
            "chatcluster",
            "demo",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.replicas} {.status.selector}",
        ],
    );
    assert!(ok, "{err}");
    // status.replicas mirrors the Deployment's pods (≥ 5: the stuck rollout keeps a surge pod).
    wait_for(
        "status.replicas follows the Deployment",
        Duration::from_secs(10),
        || async {
            let pods = deployments
                .get("demo-chat-server")
                .await
                .ok()?
                .status?
                .replicas?;
            let status = api.get("demo").await.ok()?.status?;
            (status.replicas == pods && pods >= 5 && status.ready == "0/5").then_some(())
        },
    )
    .await;
    assert!(
        out.contains("app.kubernetes.io/instance=demo,app.kubernetes.io/component=chat-server"),
        "{out}"
    );

    // Scaling to one replica drops the chat-server PDB: the operator prunes it.
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "scale",
            "chatcluster",
            "demo",
            "-n",
            &ns.name,
            "--replicas=1",
        ],
    );
    assert!(ok, "{err}");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "chat-server PDB pruned",
        Duration::from_secs(10),
        || async {
            pdbs.get_opt("demo-chat-server")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        pdbs.get_opt("demo-log").await.expect("get").is_some(),
        "log PDB stays"
    );

    // A deleted child comes back.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .delete("demo-log", &DeleteParams::default())
        .await
        .expect("delete service");
    wait_for(
        "deleted Service recreated",
        Duration::from_secs(10),
        || async { services.get_opt("demo-log").await.ok()?.map(|_| ()) },
    )
    .await;

    // Deleting the ChatCluster lets the garbage collector remove every child.
    api.delete("demo", &DeleteParams::background())
        .await
        .expect("delete");
    wait_for(
        "children garbage-collected",
        Duration::from_secs(30),
        || async {
            let d = deployments.get_opt("demo-chat-server").await.ok()?;
            let s = sets.list(&ListParams::default()).await.ok()?;
            let sv = services.list(&ListParams::default()).await.ok()?;
            let sc = secrets.get_opt("demo-broker").await.ok()?;
            (d.is_none() && s.items.is_empty() && sv.items.is_empty() && sc.is_none()).then_some(())
        },
    )
    .await;
    assert!(
        op.metric("chat_cluster_operator_reconcile_errors_total")
            .await
            == 0.0,
        "{}",
        op.log_text()
    );
}

/// Plays kubelet: marks a pod Running and Ready (or not).
async fn set_pod_ready(pods: &Api<Pod>, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now();
    let patch = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("pod status");
}

async fn pods_of(pods: &Api<Pod>, component: &str) -> Vec<String> {
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"
    ));
    pods.list(&lp)
        .await
        .map(|l| l.items.iter().map(|p| p.name_any()).collect())
        .unwrap_or_default()
}

fn condition(c: &ChatCluster, type_: &str) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone()))
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn status_follows_child_status_and_a_steady_cluster_does_no_writes() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-status").await;
    let op = Operator::start_leading(&client, &kc, &ns.name, "op-status").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &cluster(
            "demo",
            &ns.name,
            json!({"replicas": 2, "replicationLog": {"replicas": 1}}),
        ),
    )
    .await
    .expect("created");

    let pending = wait_for("phase Pending", Duration::from_secs(10), || async {
        let c = api.get("demo").await.ok()?;
        (c.status.as_ref()?.phase == Some(Phase::Pending)).then_some(c)
    })
    .await;
    assert_eq!(
        condition(&pending, "Available"),
        Some(("False".into(), "BrokerUnavailable".into()))
    );
    assert_eq!(
        condition(&pending, "Progressing").map(|c| c.0),
        Some("True".into())
    );

    // Broker and log pods (created one by one by the StatefulSet controller) become ready.
    for component in ["broker", "replication-log"] {
        let name = wait_for(
            &format!("{component} pod"),
            Duration::from_secs(20),
            || async { pods_of(&pods, component).await.into_iter().next() },
        )
        .await;
        set_pod_ready(&pods, &name, true).await;
    }
    let chat = wait_for("two chat-server pods", Duration::from_secs(20), || async {
        let p = pods_of(&pods, "chat-server").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    // Only the broker and the log are ready: still Pending (no chat-server serves).
    set_pod_ready(&pods, &chat[0], true).await;
    let progressing = wait_for(
        "phase Progressing with 1/2 ready",
        Duration::from_secs(15),
        || async {
            let c = api.get("demo").await.ok()?;
            let s = c.status.as_ref()?;
            (s.phase == Some(Phase::Progressing) && s.ready == "1/2").then_some(c)
        },
    )
    .await;
    assert_eq!(
        condition(&progressing, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    set_pod_ready(&pods, &chat[1], true).await;
    let running = wait_for(
        "phase Running with 2/2 ready",
        Duration::from_secs(15),
        || async {
            let c = api.get("demo").await.ok()?;
            let s = c.status.as_ref()?;
            (s.phase == Some(Phase::Running) && s.ready == "2/2" && s.ready_replicas == 2)
                .then_some(c)
        },
    )
    .await;
    assert_eq!(
        condition(&running, "Progressing"),
        Some(("False".into(), "RolloutComplete".into()))
    );
    assert_eq!(
        condition(&running, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    let (ok, out, _) = kubectl(&kc, &["get", "cc", "demo", "-n", &ns.name, "--no-headers"]);
    assert!(
        ok && out.contains("2/2") && out.contains("Running"),
        "{out}"
    );

    // Steady: over a quiet period the operator keeps reconciling (requeues, pod watch) but
    // writes nothing, and the ChatCluster and its children keep their resourceVersions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let versions = |_: ()| async {
        let mut v = BTreeMap::new();
        v.insert(
            "cc".to_owned(),
            api.get("demo")
                .await
                .ok()
                .and_then(|c| c.resource_version()),
        );
        for (kind, name) in [
            ("secret", "demo-broker"),
            ("svc", "demo-broker"),
            ("svc", "demo-log"),
            ("svc", "demo-log-headless"),
            ("svc", "demo-chat-server"),
        ] {
            let rv = if kind == "secret" {
                Api::<Secret>::namespaced(client.clone(), &ns.name)
                    .get(name)
                    .await
                    .ok()
                    .and_then(|o| o.resource_version())
            } else {
                Api::<Service>::namespaced(client.clone(), &ns.name)
                    .get(name)
                    .await
                    .ok()
                    .and_then(|o| o.resource_version())
            };
            v.insert(format!("{kind}/{name}"), rv);
        }
        v
    };
    let before = versions(()).await;
    let writes_before = op.metric("chat_cluster_operator_child_writes_total").await
        + op.metric("chat_cluster_operator_status_writes_total").await;
    let reconciles_before = op.metric("chat_cluster_operator_reconciles_total").await;
    // Poke it: an unrelated label change on a child triggers a reconcile that must write nothing.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .patch(
            "demo-chat-server",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .expect("poke");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = versions(()).await;
    let writes_after = op.metric("chat_cluster_operator_child_writes_total").await
        + op.metric("chat_cluster_operator_status_writes_total").await;
    let reconciles_after = op.metric("chat_cluster_operator_reconciles_total").await;
    assert!(
        reconciles_after > reconciles_before,
        "no reconcile happened in the quiet period"
    );
    assert_eq!(
        writes_after,
        writes_before,
        "operator wrote during a quiet period:\n{}",
        op.log_text()
    );
    assert_eq!(
        after, before,
        "resourceVersions changed during a quiet period"
    );

    // A pod losing readiness moves the status back.
    set_pod_ready(&pods, &chat[1], false).await;
    wait_for(
        "phase Progressing again with 1/2",
        Duration::from_secs(15),
        || async {
            let s = api.get("demo").await.ok()?.status?;
            (s.phase == Some(Phase::Progressing) && s.ready == "1/2").then_some(())
        },
    )
    .await;
    assert!(
        op.metric("chat_cluster_operator_reconcile_errors_total")
            .await
            == 0.0,
        "{}",
        op.log_text()
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn status_of_a_cluster_deleted_during_its_reconcile_is_not_an_error() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-gone").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let demo = || cluster("demo", &ns.name, json!({}));
    let next = ChatClusterStatus {
        phase: Some(Phase::Pending),
        ready: "0/3".into(),
        ..ChatClusterStatus::default()
    };

    // The reconcile read the object, then someone deleted it before the status step.
    let stale = api
        .create(&PostParams::default(), &demo())
        .await
        .expect("created");
    api.delete("demo", &DeleteParams::default())
        .await
        .expect("deleted");
    wait_for("ChatCluster gone", Duration::from_secs(10), || async {
        api.get_opt("demo").await.ok()?.is_none().then_some(())
    })
    .await;
    let written = status::patch_if_changed(&client, &stale, &next)
        .await
        .expect("a deleted ChatCluster is not a reconcile error");
    assert!(!written, "nothing can be written for a deleted object");

    // A live one is written, and only when the status changed.
    let live = api
        .create(&PostParams::default(), &demo())
        .await
        .expect("created again");
    assert!(
        status::patch_if_changed(&client, &live, &next)
            .await
            .expect("patched")
    );
    let read = api.get("demo").await.expect("read");
    assert_eq!(read.status.as_ref(), Some(&next));
    assert!(
        !status::patch_if_changed(&client, &read, &next)
            .await
            .expect("no-op")
    );
}

/// The three NetworkPolicies: created owned, selecting the right pods and admitting the right
/// peers (with a user's peer stored as the builder built it, so a steady cluster does not
/// re-apply them); `chatServerFrom: []` leaves the chat-server port to `apiServerFrom`, without
/// that it is closed, and unsetting `chatServerFrom` opens it again; `enabled: false` deletes them.
#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn network_policies_follow_the_spec() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-netpol").await;
    let op = Operator::start_leading(&client, &kc, &ns.name, "op-netpol").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let created = api
        .create(
            &PostParams::default(),
            &cluster(
                "demo",
                &ns.name,
                json!({"networkPolicy": {
                    // `except: []` is dropped by the API server: the builder drops it too.
                    "apiServerFrom": [{"ipBlock": {"cidr": "192.0.2.10/32", "except": []}}],
                }}),
            ),
        )
        .await
        .expect("created");
    let uid = created.uid().expect("uid");
    let own = |component: &str| {
        json!({"podSelector": {"matchLabels": {
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": "demo",
        }}})
    };
    let tcp = |port: u16| json!([{"port": port, "protocol": "TCP"}]);
    let want = [
        (
            "demo-broker",
            "broker",
            json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(6379)}]),
        ),
        (
            "demo-log",
            "replication-log",
            json!([{"from": [own("chat-server"), own("replication-log"),
                {"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": tcp(8090)}]),
        ),
        (
            "demo-chat-server",
            "chat-server",
            json!([{"ports": tcp(8080)}]),
        ),
    ];
    let live = |name: &'static str| {
        let policies = policies.clone();
        async move { policies.get_opt(name).await.ok().flatten() }
    };
    let mut versions = Vec::new();
    for (name, component, ingress) in &want {
        let policy = wait_for(name, Duration::from_secs(10), || live(name)).await;
        assert!(
            policy
                .owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true)),
            "{name} not controlled by the ChatCluster"
        );
        let spec = json!(policy.spec);
        assert_eq!(spec["podSelector"], own(component)["podSelector"], "{name}");
        assert_eq!(spec["policyTypes"], json!(["Ingress"]), "{name}");
        assert_eq!(&spec["ingress"], ingress, "{name}");
        versions.push(policy.resource_version());
    }
    // Steady: a reconcile triggered by a policy's own watch event applies nothing (the live
    // policies contain what the builder builds, the user's peer included).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = op.metric("chat_cluster_operator_child_writes_total").await;
    let reconciles_before = op.metric("chat_cluster_operator_reconciles_total").await;
    policies
        .patch(
            "demo-log",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .expect("poke");
    wait_for(
        "a reconcile after the poke",
        Duration::from_secs(10),
        || async {
            (op.metric("chat_cluster_operator_reconciles_total").await > reconciles_before)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        op.metric("chat_cluster_operator_child_writes_total").await,
        writes_before,
        "children re-applied in a steady state:\n{}",
        op.log_text()
    );
    for ((name, _, _), version) in want.iter().zip(&versions) {
        let now = live(name).await.expect("still there");
        if *name != "demo-log" {
            assert_eq!(&now.resource_version(), version, "{name} written");
        }
    }

    // An empty chatServerFrom restricts the chat-server port to apiServerFrom...
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"networkPolicy": {"chatServerFrom": []}}})),
    )
    .await
    .expect("restrict");
    let api_server_only =
        json!([{"from": [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": tcp(8080)}]);
    wait_for(
        "chat-server port open to the API server only",
        Duration::from_secs(10),
        || async {
            let spec = live("demo-chat-server").await?.spec?;
            (json!(spec.ingress) == api_server_only).then_some(())
        },
    )
    .await;
    // ...and without apiServerFrom closes it (no rule, not a rule without `from`, which is "all").
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"networkPolicy": {"apiServerFrom": []}}})),
    )
    .await
    .expect("close");
    wait_for(
        "chat-server port closed",
        Duration::from_secs(10),
        || async {
            let spec = live("demo-chat-server").await?.spec?;
            spec.ingress.is_none_or(|i| i.is_empty()).then_some(())
        },
    )
    .await;

    // Unset again: the port opens again (a change to "any source" is a difference too).
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"networkPolicy": {"chatServerFrom": null}}})),
    )
    .await
    .expect("open");
    wait_for(
        "chat-server port open again",
        Duration::from_secs(10),
        || async {
            let spec = live("demo-chat-server").await?.spec?;
            (json!(spec.ingress) == json!([{"ports": tcp(8080)}])).then_some(())
        },
    )
    .await;

    // Disabled: the operator deletes what it made.
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"networkPolicy": {"enabled": false}}})),
    )
    .await
    .expect("disable");
    wait_for("policies deleted", Duration::from_secs(10), || async {
        let left = policies.list(&ListParams::default()).await.ok()?.items;
        left.is_empty().then_some(())
    })
    .await;
}
