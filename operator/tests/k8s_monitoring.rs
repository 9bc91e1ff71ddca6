//! Against a real control plane with the real Prometheus Operator CRD
//! (`monitoring.coreos.com_podmonitors.yaml` of github.com/prometheus-operator/prometheus-operator,
//! fetched by `e2e/prometheus-operator/crds` through the Go module proxy): `spec.monitoring`.
//!
//! - While the API server does not serve PodMonitors, a ChatCluster with `enablePodMonitor: true`
//!   reports `PodMonitorMissing=True` (`PrometheusOperatorAbsent`) and one Warning Event. The CRD
//!   stays installed once a run has applied it (the control plane is shared), so this part runs
//!   only on a control plane without it; the decision itself is unit-tested
//!   (`reconcile::monitoring::tests::the_decision_for_each_case`, and the condition's words in
//!   `reconcile::status::tests::pod_monitor_missing_condition_and_its_event`) on every run.
//! - Once served, the PodMonitor `{name}` is created (selector, port, labels, controller owner
//!   reference) within the periodic reconcile, with `PodMonitorMissing=False` (`Created`); one
//!   deleted by hand comes back; `enablePodMonitor: false` deletes it and drops the condition;
//!   the ChatCluster's deletion removes it through the owner reference.
//! - A PodMonitor of the same name that the ChatCluster does not control (the hand-applied
//!   `docs/monitoring/podmonitor.yaml`, named `chat-cluster`) is left as it is, with
//!   `PodMonitorMissing=True` (`NameConflict`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use chat_cluster_operator::crd::ChatCluster;
use chat_cluster_operator::crd::pod_monitor::PodMonitor;
use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

const CRD_NAME: &str = "podmonitors.monitoring.coreos.com";
const CONDITION: &str = "PodMonitorMissing";
/// Longer than the operator's requeue of a cluster that is not Running (10 s; no nodes here).
const WITHIN: Duration = Duration::from_secs(45);

/// The condition `PodMonitorMissing` of `name` once it has `reason`.
async fn condition(clusters: &Api<ChatCluster>, name: &str, reason: &str) -> Condition {
    wait_for(
        &format!("{name} has {CONDITION} with reason {reason}"),
        WITHIN,
        || async {
            let status = clusters.get(name).await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == CONDITION && c.reason == reason)
        },
    )
    .await
}

/// The Warning Events of `ns` with `reason` regarding `name`, once there is one.
async fn warnings(kc: &std::path::Path, ns: &str, reason: &str, name: &str) -> Vec<String> {
    wait_for(
        &format!("a {reason} Event on {name}"),
        Duration::from_secs(20),
        || async {
            let selector = format!("reason={reason},regarding.name={name},type=Warning");
            let (ok, out) = events_lines(kc, ns, &selector, "{.note}");
            let lines: Vec<String> = out.lines().map(str::to_owned).collect();
            (ok && !lines.is_empty()).then_some(lines)
        },
    )
    .await
}

/// Fetches the Prometheus Operator's PodMonitor CRD (cached) and applies it; waits until the API
/// server serves the kind.
async fn install_pod_monitor_crd(kc: &std::path::Path, client: &kube::Client) {
    let out = Command::new(repo_root().join("e2e/prometheus-operator/crds"))
        .stderr(Stdio::inherit())
        .output()
        .expect("e2e/prometheus-operator/crds runs");
    assert!(out.status.success(), "e2e/prometheus-operator/crds failed");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (ok, _, err) = kubectl(
        kc,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=chat-cluster-tests",
            "-f",
            &path,
        ],
    );
    assert!(ok, "kubectl apply -f {path}: {err}");
    wait_established(client, CRD_NAME).await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn pod_monitors_follow_spec_monitoring() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-monitoring").await;
    let _op = Operator::start_leading(&client, &kc, &ns.name, "op-monitoring").await;
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let monitors: Api<PodMonitor> = Api::namespaced(client.clone(), &ns.name);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let spec = |enabled: bool| {
        json!({"replicas": 1, "monitoring": {
            "enablePodMonitor": enabled,
            "podMonitorInterval": "15s",
            "podMonitorLabels": {"release": "prometheus"},
        }})
    };
    clusters
        .create(
            &PostParams::default(),
            &cluster("metrics", &ns.name, spec(true)),
        )
        .await
        .expect("chatcluster");

    let installed = crds.get_opt(CRD_NAME).await.expect("CRD get").is_some();
    if installed {
        eprintln!(
            "{CRD_NAME} is already installed (an earlier run applied it): the absent case is \
             covered by the unit tests only"
        );
    } else {
        let absent = condition(&clusters, "metrics", "PrometheusOperatorAbsent").await;
        assert_eq!(absent.status, "True");
        assert!(
            absent
                .message
                .contains("install the Prometheus Operator's CRDs"),
            "{}",
            absent.message
        );
        let events = warnings(&kc, &ns.name, "PrometheusOperatorAbsent", "metrics").await;
        assert_eq!(events.len(), 1, "{events:?}");
    }
    install_pod_monitor_crd(&kc, &client).await;

    // Created within the periodic reconcile, as built.
    let created = condition(&clusters, "metrics", "Created").await;
    assert_eq!(created.status, "False");
    assert_eq!(
        created.message,
        "PodMonitor metrics scrapes the chat-server and replication-log pods"
    );
    let uid = clusters
        .get("metrics")
        .await
        .expect("chatcluster")
        .metadata
        .uid
        .expect("uid");
    let monitor = monitors.get("metrics").await.expect("PodMonitor metrics");
    let refs = monitor
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert!(
        refs.iter()
            .any(|r| r.uid == uid && r.controller == Some(true) && r.kind == "ChatCluster"),
        "{refs:?}"
    );
    let labels = monitor.metadata.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("release", "prometheus"),
        ("app.kubernetes.io/name", "chat-cluster"),
        ("app.kubernetes.io/instance", "metrics"),
        ("app.kubernetes.io/managed-by", "chat-cluster-operator"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    assert_eq!(
        json!(monitor.spec),
        json!({
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": "metrics",
                    "app.kubernetes.io/name": "chat-cluster",
                },
                "matchExpressions": [{
                    "key": "app.kubernetes.io/component",
                    "operator": "In",
                    "values": ["chat-server", "replication-log"],
                }],
            },
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            "podTargetLabels": ["app.kubernetes.io/instance", "app.kubernetes.io/component"],
        })
    );

    // Nothing watches PodMonitors: one deleted by hand comes back with the periodic reconcile.
    monitors
        .delete("metrics", &DeleteParams::default())
        .await
        .expect("delete PodMonitor");
    wait_for("PodMonitor metrics recreated", WITHIN, || async {
        let m = monitors.get_opt("metrics").await.ok()??;
        (m.metadata.uid != monitor.metadata.uid).then_some(())
    })
    .await;

    // enablePodMonitor: false deletes it and drops the condition.
    clusters
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"monitoring": {"enablePodMonitor": false}}})),
        )
        .await
        .expect("disable");
    wait_for(
        "PodMonitor metrics deleted and the condition gone",
        WITHIN,
        || async {
            let gone = monitors.get_opt("metrics").await.ok()?.is_none();
            let status = clusters.get("metrics").await.ok()?.status?;
            let no_condition = !status.conditions.iter().any(|c| c.type_ == CONDITION);
            (gone && no_condition).then_some(())
        },
    )
    .await;

    // A PodMonitor of the ChatCluster's name that it does not control is left as it is.
    let docs = repo_root().join("docs/monitoring/podmonitor.yaml");
    let docs = docs.to_string_lossy();
    let (ok, _, err) = kubectl(&kc, &["apply", "-n", &ns.name, "-f", &docs]);
    assert!(ok, "kubectl apply docs/monitoring/podmonitor.yaml: {err}");
    let foreign_before = pod_monitor_json(&client, &ns.name, "chat-cluster").await;
    clusters
        .create(
            &PostParams::default(),
            &cluster("chat-cluster", &ns.name, spec(true)),
        )
        .await
        .expect("chatcluster chat-cluster");
    let conflict = condition(&clusters, "chat-cluster", "NameConflict").await;
    assert_eq!(conflict.status, "True");
    assert!(
        conflict.message.starts_with(
            "PodMonitor chat-cluster exists and is not controlled by this ChatCluster (no controller)"
        ),
        "{}",
        conflict.message
    );
    warnings(&kc, &ns.name, "NameConflict", "chat-cluster").await;
    let foreign_after = pod_monitor_json(&client, &ns.name, "chat-cluster").await;
    assert_eq!(
        foreign_after["metadata"]["resourceVersion"], foreign_before["metadata"]["resourceVersion"],
        "the foreign PodMonitor was written: {foreign_after}"
    );
    assert!(foreign_after["metadata"]["ownerReferences"].is_null());

    // Enabled again, then the ChatCluster deleted: the garbage collector removes its PodMonitor.
    clusters
        .patch(
            "metrics",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"monitoring": {"enablePodMonitor": true}}})),
        )
        .await
        .expect("enable");
    condition(&clusters, "metrics", "Created").await;
    assert!(monitors.get_opt("metrics").await.expect("get").is_some());
    clusters
        .delete("metrics", &DeleteParams::background())
        .await
        .expect("delete chatcluster");
    wait_for("PodMonitor metrics garbage-collected", WITHIN, || async {
        monitors
            .get_opt("metrics")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The CRD stays installed: the control plane is shared, and nothing else minds it.
}

/// The PodMonitor `name` as JSON (untyped: a foreign one may hold fields the typed one lacks).
async fn pod_monitor_json(client: &kube::Client, ns: &str, name: &str) -> serde_json::Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<PodMonitor>(&()));
    json!(api.get(name).await.expect("PodMonitor"))
}
