//! Rollout scenarios. A rolling update to the second image tag under a steady ~200 messages/s:
//! no accepted message lost, no chat-server pod ready before its own `/status` shows it caught
//! up, never fewer ready chat-servers than `spec.replicas`, and the replication log rolled one pod
//! at a time, each ready only once caught up. Then a chat-server that cannot catch up (the log
//! made unreachable) leaves the rollout stopped and the ChatCluster Degraded with the reason. And a
//! broken replication-log image halts the log rollout with the last replica still serving, until
//! `rollout.autoRollback` restores the last good revision.

use std::time::Duration;

use chat_cluster_e2e::cluster::Component;
use chat_cluster_e2e::harness::wait_for;
use chat_cluster_e2e::load::Pace;
use chat_cluster_e2e::monitor::{MonitorSpec, NODE_NOT_CAUGHT_UP, PodMonitor, REPLICA_NOT_STARTED};
use chat_cluster_e2e::now_ms;
use chat_cluster_e2e::proxy::{CHAT_PORT, LOG_PORT, Target};
use chat_cluster_e2e::scenario::Scenario;
use chat_cluster_operator::crd::{CAUGHT_UP_CONDITION, ChatCluster, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

const CHANNEL: &str = "e2e";

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn rolling_update_under_load() {
    let s = Scenario::start("rollout", |_| {}).await.unwrap();
    let ns = s.cluster.namespace.clone();
    let next = s.harness.images.chat_server_next.clone();
    let spec = |component: Component, port, gate: Option<&str>| MonitorSpec {
        namespace: ns.clone(),
        selector: s.cluster.selector(component),
        port,
        sample_every: Duration::from_millis(500),
        gate: gate.map(str::to_owned),
    };
    let chat = PodMonitor::start(
        s.harness.client.clone(),
        spec(Component::ChatServer, CHAT_PORT, Some(CAUGHT_UP_CONDITION)),
    );
    let log = PodMonitor::start(
        s.harness.client.clone(),
        spec(Component::ReplicationLog, LOG_PORT, None),
    );
    let load = s.load(CHANNEL, 16, Pace::Rate(200.0), "steady");
    tokio::time::sleep(Duration::from_secs(10)).await;

    let t0 = now_ms();
    s.cluster
        .patch_spec(serde_json::json!({"image": next}))
        .await
        .unwrap();
    wait_for(
        "every pod on the new image",
        Duration::from_secs(600),
        || async {
            let chat = s.cluster.pods(Component::ChatServer).await?;
            let log = s.cluster.pods(Component::ReplicationLog).await?;
            let all_new = chat.len() == 3
                && log.len() == 2
                && chat.iter().chain(&log).all(|p| image_of(p) == next);
            Ok(all_new.then_some(()))
        },
    )
    .await
    .unwrap();
    s.cluster
        .wait_running("3/3", Duration::from_secs(300))
        .await
        .unwrap();
    let t1 = now_ms();
    eprintln!("rollout to {next} took {:.1}s", (t1 - t0) as f64 / 1000.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.stop().await.unwrap();
    let chat = chat.stop().await;
    let log = log.stop().await;
    eprintln!("load: {}", report.summary());
    eprintln!(
        "chat-server pods (times relative to the image change):\n{}",
        chat.report(t0)
    );
    eprintln!("replication-log pods:\n{}", log.report(t0));

    let mut failures = Vec::new();
    if report.rate() < 100.0 {
        eprintln!(
            "note: achieved {:.0} messages/s, below the 200/s asked for",
            report.rate()
        );
    }
    if !report.rejected.is_empty() {
        failures.push(format!(
            "rejected writes: {:?}",
            &report.rejected[..report.rejected.len().min(5)]
        ));
    }
    let min_ready = chat.min_ready(t0, t1);
    eprintln!("fewest ready chat-servers during the rollout: {min_ready:?} (spec.replicas 3)");
    if min_ready.is_none_or(|m| m < 3) {
        failures.push(format!("ready chat-servers dropped to {min_ready:?} < 3"));
    }
    let new_chat: Vec<_> = chat
        .new_pods(t0)
        .into_iter()
        .filter(|p| p.image == next)
        .collect();
    if new_chat.len() < 3 {
        failures.push(format!("only {} new chat-server pods seen", new_chat.len()));
    }
    let early = chat.ready_before_caught_up(&NODE_NOT_CAUGHT_UP, 1000);
    if !early.is_empty() {
        failures.push(format!("chat-server ready before caught up: {early:?}"));
    }
    let in_flight = log.max_in_flight(2, t0, t1);
    eprintln!("most log pods in flight at once: {in_flight:?}");
    if in_flight.is_none_or(|m| m > 1) {
        failures.push(format!("log rolled {in_flight:?} pods at once"));
    }
    let new_log = log.new_pods(t0);
    if new_log.len() < 2 {
        failures.push(format!("only {} new log pods seen", new_log.len()));
    }
    let early_log = log.ready_before_caught_up(&REPLICA_NOT_STARTED, 1000);
    if !early_log.is_empty() {
        failures.push(format!("log replica ready before caught up: {early_log:?}"));
    }
    match s.check_histories(CHANNEL, &report.accepted).await {
        Ok(held) => eprintln!(
            "{held} messages held everywhere; {} accepted",
            report.accepted.len()
        ),
        Err(e) => failures.push(format!("{e:#}")),
    }
    assert!(
        failures.is_empty(),
        "rolling update failed:\n{}",
        failures.join("\n")
    );
    s.finish().await.unwrap();
}

/// Moves every log pod out of (or back into) the log Services' selector by relabelling its
/// component, so the client Service has no endpoints while the pods keep running.
async fn set_log_component(s: &Scenario, pods: &[String], component: &str) {
    for pod in pods {
        let label = format!("app.kubernetes.io/component={component}");
        s.harness
            .kubectl(&[
                "-n",
                &s.cluster.namespace,
                "label",
                "pod",
                pod,
                &label,
                "--overwrite",
            ])
            .await
            .unwrap();
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn chat_server_that_cannot_catch_up_stops_the_rollout() {
    let s = Scenario::start("stuck", |spec| {
        spec.rollout.catch_up_timeout = "30s".to_owned()
    })
    .await
    .unwrap();
    let ns = s.cluster.namespace.clone();
    let report = s
        .load(CHANNEL, 4, Pace::Count(200), "before")
        .finish()
        .await
        .unwrap();
    assert_eq!(report.accepted.len(), 200, "{}", report.summary());
    let phases = s.cluster.record_phases();

    let log_pods = s
        .cluster
        .pod_names(Component::ReplicationLog)
        .await
        .unwrap();
    set_log_component(&s, &log_pods, "isolated-by-e2e").await;
    let log_service = Target::service(&ns, "demo-log", LOG_PORT);
    wait_for(
        "log Service without endpoints",
        Duration::from_secs(60),
        || async {
            let answer = s
                .harness
                .proxy
                .get::<serde_json::Value>(&log_service, "/status")
                .await;
            Ok(answer.is_err().then_some(()))
        },
    )
    .await
    .unwrap();
    let old: Vec<String> = s.cluster.pod_names(Component::ChatServer).await.unwrap();
    s.harness
        .kubectl(&[
            "-n",
            &ns,
            "rollout",
            "restart",
            "deployment/demo-chat-server",
        ])
        .await
        .unwrap();

    let reason = wait_for(
        "Degraded with reason CatchUpTimeout",
        Duration::from_secs(180),
        || async {
            let cc = s.cluster.get().await?;
            let status = cc.status.unwrap_or_default();
            let degraded = status
                .conditions
                .iter()
                .find(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "CatchUpTimeout"
                })
                .map(|c| format!("{}: {}", c.reason, c.message));
            Ok(degraded.filter(|_| status.phase == Some(Phase::Degraded)))
        },
    )
    .await
    .unwrap();
    eprintln!("Degraded: {reason}");

    tokio::time::sleep(Duration::from_secs(20)).await;
    let pods = s.cluster.pods(Component::ChatServer).await.unwrap();
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let old_ready = pods
        .iter()
        .filter(|p| old.contains(&p.name_any()) && ready(p))
        .count();
    let new: Vec<&Pod> = pods
        .iter()
        .filter(|p| !old.contains(&p.name_any()))
        .collect();
    eprintln!(
        "after the timeout: {old_ready} old pods ready, new pods {:?}",
        new.iter()
            .map(|p| (p.name_any(), ready(p)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        old_ready, 3,
        "old pods were taken down while the new one could not catch up"
    );
    assert_eq!(new.len(), 1, "the rollout went on past the stuck pod");
    assert!(!ready(new[0]), "the stuck pod became ready");
    let still = s
        .cluster
        .get()
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .phase;
    assert_eq!(still, Some(Phase::Degraded));

    // Recovery: the log is reachable again; a fresh pod catches up and the rollout completes.
    set_log_component(&s, &log_pods, "replication-log").await;
    s.harness
        .kubectl(&[
            "-n",
            &ns,
            "delete",
            "pod",
            &new[0].name_any(),
            "--wait=false",
        ])
        .await
        .unwrap();
    s.cluster
        .wait_running("3/3", Duration::from_secs(300))
        .await
        .unwrap();
    wait_for(
        "old chat-server pods replaced",
        Duration::from_secs(300),
        || async {
            let names = s.cluster.pod_names(Component::ChatServer).await?;
            Ok((names.len() == 3 && names.iter().all(|n| !old.contains(n))).then_some(()))
        },
    )
    .await
    .unwrap();
    s.cluster
        .wait_running("3/3", Duration::from_secs(120))
        .await
        .unwrap();
    for r in phases.stop() {
        eprintln!("  {} {} {} {}", r.at_ms, r.phase, r.ready, r.conditions);
    }
    s.check_histories(CHANNEL, &report.accepted).await.unwrap();
    s.finish().await.unwrap();
}

/// Whether the pod's Ready condition is True.
fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Degraded condition as `(status, reason, message)`.
fn degraded_condition(cc: &ChatCluster) -> Option<(String, String, String)> {
    cc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A replication-log image that is not on the node (pull policy `Never`: `ErrImageNeverPull`, no
/// registry asked): the operator replaces only the highest log replica; after `catchUpTimeout` the
/// log rollout halts with `demo-log-0` untouched and serving, and writes and history go on. With
/// `rollout.autoRollback` the log StatefulSet returns to its last good revision, the broken pod is
/// replaced and both replicas are Ready on the good image, while the spec keeps the broken one.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn broken_log_image_halts_the_log_rollout_and_auto_rollback_restores_it() {
    let s = Scenario::start("logroll", |spec| {
        spec.rollout.catch_up_timeout = "45s".to_owned()
    })
    .await
    .unwrap();
    let good = s.harness.images.chat_server.clone();
    let broken = format!("{good}-no-such-tag");
    let mut accepted = Vec::new();
    let before = s
        .load(CHANNEL, 4, Pace::Count(100), "before")
        .finish()
        .await
        .unwrap();
    assert_eq!(before.accepted.len(), 100, "{}", before.summary());
    accepted.extend(before.accepted);
    let cluster = &s.cluster;
    let log_pod = |name: &'static str| async move {
        cluster
            .pods(Component::ReplicationLog)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.name_any() == name)
    };
    let log0 = log_pod("demo-log-0").await.expect("demo-log-0");

    s.cluster
        .patch_spec(
            serde_json::json!({"replicationLog": {"image": broken, "imagePullPolicy": "Never"}}),
        )
        .await
        .unwrap();
    let message = wait_for(
        "Degraded naming the halted log rollout",
        Duration::from_secs(300),
        || async {
            let cc = s.cluster.get().await?;
            Ok(
                degraded_condition(&cc).and_then(|(status, reason, message)| {
                    (status == "True"
                        && (reason == "LogRolloutStalled"
                            || message.contains("; LogRolloutStalled: ")))
                    .then_some(format!("{reason}: {message}"))
                }),
            )
        },
    )
    .await
    .unwrap();
    eprintln!("Degraded: {message}");
    assert!(message.contains("demo-log-1"), "{message}");
    // Halted at the highest replica: demo-log-0 is the same pod, on the good image, Ready.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let p0 = log_pod("demo-log-0").await.expect("demo-log-0");
    assert_eq!(
        p0.uid(),
        log0.uid(),
        "demo-log-0 was replaced by a broken rollout"
    );
    assert_eq!(image_of(&p0), good);
    assert!(is_ready(&p0), "demo-log-0 not ready");
    let p1 = log_pod("demo-log-1").await.expect("demo-log-1");
    assert_eq!(image_of(&p1), broken);
    assert!(!is_ready(&p1));
    // The log keeps serving: writes go on and every holder has the whole history.
    let during = s
        .load(CHANNEL, 4, Pace::Count(100), "during")
        .finish()
        .await
        .unwrap();
    assert_eq!(during.accepted.len(), 100, "{}", during.summary());
    accepted.extend(during.accepted);

    s.cluster
        .patch_spec(serde_json::json!({"rollout": {"autoRollback": true}}))
        .await
        .unwrap();
    wait_for(
        "rolled back: both log replicas Ready on the good image",
        Duration::from_secs(300),
        || async {
            let pods = s.cluster.pods(Component::ReplicationLog).await?;
            let cc = s.cluster.get().await?;
            let rolled_back = degraded_condition(&cc)
                .is_some_and(|(st, reason, _)| st == "True" && reason == "RolledBack");
            Ok((rolled_back
                && pods.len() == 2
                && pods.iter().all(|p| image_of(p) == good && is_ready(p)))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    let cc = s.cluster.get().await.unwrap();
    assert_eq!(
        cc.spec.replication_log.image.as_deref(),
        Some(broken.as_str()),
        "the spec stays as written"
    );
    eprintln!("after the rollback: {:?}", degraded_condition(&cc));
    let after = s
        .load(CHANNEL, 4, Pace::Count(100), "after")
        .finish()
        .await
        .unwrap();
    assert_eq!(after.accepted.len(), 100, "{}", after.summary());
    accepted.extend(after.accepted);
    s.check_histories(CHANNEL, &accepted).await.unwrap();
    s.finish().await.unwrap();
}
