//! Against a real kube-apiserver: two operator processes elect one leader on a Lease; only the
//! leader reconciles; after the leader is killed the other takes over within the lease duration;
//! SIGTERM releases the lease and exits 0.

mod common;

use std::time::{Duration, Instant};

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn one_leader_reconciles_and_the_other_takes_over_after_it_dies() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "op-leader").await;
    let mut first = Operator::start_leading(&client, &kc, &ns.name, "first").await;
    let second = Operator::start(&kc, &ns.name, "chat-cluster-operator", "second");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &cluster("demo", &ns.name, json!({})),
    )
    .await
    .expect("created");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    wait_for("children", Duration::from_secs(10), || async {
        services.get_opt("demo-log").await.ok()?.map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(first.metric("chat_cluster_operator_leader").await, 1.0);
    assert_eq!(second.metric("chat_cluster_operator_leader").await, 0.0);
    assert!(first.metric("chat_cluster_operator_reconciles_total").await > 0.0);
    assert_eq!(
        second
            .metric("chat_cluster_operator_reconciles_total")
            .await,
        0.0,
        "the follower reconciled"
    );
    assert_eq!(
        http_get(second.metrics_port, "/readyz").await.as_deref(),
        Some("ready"),
        "a follower is ready"
    );

    // Kill the leader without letting it release the lease.
    let _ = first.child.kill();
    let _ = first.child.wait();
    let killed = Instant::now();
    wait_for_leader(
        &client,
        &ns.name,
        "chat-cluster-operator",
        "second",
        Duration::from_secs(25),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("takeover after {took:?}");
    assert!(
        took <= Duration::from_secs(15 + 2 + 2),
        "takeover took {took:?}"
    );

    // The new leader reconciles: a deleted child comes back.
    services
        .delete("demo-log", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "new leader recreates the Service",
        Duration::from_secs(15),
        || async { services.get_opt("demo-log").await.ok()?.map(|_| ()) },
    )
    .await;
    // The reconcile that recreated it is counted when it ends (after the status step).
    wait_for(
        "the new leader counts its reconciles",
        Duration::from_secs(10),
        || async {
            let n = second
                .metric("chat_cluster_operator_reconciles_total")
                .await;
            (n > 0.0).then_some(())
        },
    )
    .await;

    // SIGTERM: the lease is released and the process exits 0.
    second.terminate();
    let mut second = second;
    let status = wait_for("second exits", Duration::from_secs(20), || {
        let s = second.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        second.log_text()
    );
    let lease = Api::<Lease>::namespaced(client.clone(), &ns.name)
        .get("chat-cluster-operator")
        .await
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "lease not released"
    );
}
