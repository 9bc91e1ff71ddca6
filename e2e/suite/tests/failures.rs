//! Failure scenario: under a steady load, delete a chat-server pod, then a log pod, then the
//! broker pod. Each comes back, the ChatCluster goes through Degraded or Progressing and returns
//! to Running, and no accepted message is lost.

use std::time::{Duration, Instant};

use chat_cluster_e2e::cluster::Component;
use chat_cluster_e2e::harness::wait_for;
use chat_cluster_e2e::load::Pace;
use chat_cluster_e2e::scenario::Scenario;
use kube::ResourceExt;

const CHANNEL: &str = "e2e";

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn pod_deletions_under_load() {
    let s = Scenario::start("failures", |_| {}).await.unwrap();
    let ns = s.cluster.namespace.clone();
    let phases = s.cluster.record_phases();
    let load = s.load(CHANNEL, 8, Pace::Rate(50.0), "steady");
    tokio::time::sleep(Duration::from_secs(10)).await;

    for component in [
        Component::ChatServer,
        Component::ReplicationLog,
        Component::Broker,
    ] {
        let pods = s.cluster.pods(component).await.unwrap();
        let victim = pods.first().unwrap();
        let (name, uid) = (victim.name_any(), victim.uid().unwrap());
        let seen = phases.snapshot().len();
        let t = Instant::now();
        s.harness
            .kubectl(&["-n", &ns, "delete", "pod", &name, "--wait=false"])
            .await
            .unwrap();
        let count = pods.len();
        wait_for("replacement pod", Duration::from_secs(240), || async {
            let now = s.cluster.pods(component).await?;
            Ok(
                (now.len() == count
                    && now.iter().all(|p| p.uid().as_deref() != Some(uid.as_str())))
                .then_some(()),
            )
        })
        .await
        .unwrap();
        // Let the operator notice before waiting for Running again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.cluster
            .wait_running("3/3", Duration::from_secs(300))
            .await
            .unwrap();
        let passed: Vec<String> = phases.snapshot()[seen..]
            .iter()
            .map(|r| r.phase.clone())
            .collect();
        eprintln!(
            "{} pod {name} deleted: Running again after {:.1?}; phases on the way {passed:?}; {} accepted so far",
            component.label(),
            t.elapsed(),
            load.accepted_so_far()
        );
        assert!(
            passed.iter().any(|p| p == "Degraded" || p == "Progressing"),
            "the ChatCluster never reported the loss of {name}: {passed:?}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let report = load.stop().await.unwrap();
    eprintln!("load: {}", report.summary());
    for r in phases.stop() {
        eprintln!("  {} {} {} {}", r.at_ms, r.phase, r.ready, r.conditions);
    }
    assert!(report.rejected.is_empty(), "{}", report.summary());
    // The broker pod's restart starts a new epoch past every position its previous Redis process
    // may have handed out: one void range.
    s.check_histories_with_voids(CHANNEL, &report.accepted, 1)
        .await
        .unwrap();
    s.finish().await.unwrap();
}
