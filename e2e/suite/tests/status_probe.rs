//! A ChatCluster in a namespace where the operator may not probe pods (its data-plane
//! RoleBinding is missing: the namespace is not in the Helm value `rbac.dataPlaneNamespaces`)
//! does not sit `Pending` without a word: once its pods run, it is `Degraded` with reason
//! `StatusProbeForbidden`, naming a pod and the ClusterRole to bind. Binding it there lets the
//! same ChatCluster reach `Running`.

use std::time::Duration;

use chat_cluster_e2e::cluster::{TestCluster, test_spec};
use chat_cluster_e2e::harness::{Harness, data_plane_role_binding, wait_for};
use chat_cluster_operator::crd::Phase;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn a_namespace_the_operator_may_not_probe_is_named_in_degraded() {
    let h = Harness::from_env().await.unwrap();
    h.install_operator().await.unwrap();
    let ns = h.namespace("noprobe").await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(h.client.clone(), &ns.name);
    let binding = data_plane_role_binding(&ns.name);
    let name = binding.metadata.name.clone().unwrap_or_default();
    bindings
        .delete(&name, &DeleteParams::default())
        .await
        .expect("removing the data-plane RoleBinding");
    let mut spec = test_spec(&h);
    spec.replicas = 1;
    spec.replication_log.replicas = 1;
    let cluster = TestCluster::create(&h, &ns.name, "demo", spec)
        .await
        .unwrap();

    // The first Degraded reason must be the forbidden probe; a transient kubelet cause seen on
    // the way (the kubelet retries it by itself) is printed, not failed on, so one slow start of
    // the node cannot fail the suite — the operator's classification of transient causes is
    // table-tested in operator/src/reconcile/health.rs.
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let condition = wait_for(
        "Degraded with reason StatusProbeForbidden",
        Duration::from_secs(240),
        || {
            let seen = &seen;
            let cluster = &cluster;
            async move {
                let cc = cluster.get().await?;
                let Some(c) = cc
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                    .filter(|c| c.status == "True")
                    .cloned()
                else {
                    return Ok(None);
                };
                if c.reason == "StatusProbeForbidden" {
                    return Ok(Some(c));
                }
                let mut seen = seen.lock().unwrap();
                if !seen.contains(&c.message) {
                    eprintln!("Degraded on the way: {}: {}", c.reason, c.message);
                    seen.push(c.message.clone());
                }
                Ok(None)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        cluster.get().await.unwrap().status.and_then(|s| s.phase),
        Some(Phase::Degraded)
    );
    assert!(
        condition
            .message
            .contains("chat-cluster-operator-data-plane")
            && condition.message.contains(&ns.name),
        "{}",
        condition.message
    );

    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding the data-plane role again");
    cluster
        .wait_running("1/1", Duration::from_secs(240))
        .await
        .unwrap();
    ns.delete(Duration::from_secs(300)).await.unwrap();
}
