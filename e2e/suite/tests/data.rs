//! Data scenarios: 5,000 messages from concurrent clients through the chat-server Service end up
//! on every chat-server pod and log replica, dense and in the same order; then `kubectl scale`
//! 3 → 5 under a light load, where the new pods become ready only after catching up and then
//! hold everything too. First, the ChatCluster (token auth, the default) refuses requests and
//! WebSockets without a token, and every request of the suite carries one.

use std::time::{Duration, Instant};

use chat_cluster_e2e::cluster::Component;
use chat_cluster_e2e::load::Pace;
use chat_cluster_e2e::monitor::{MonitorSpec, NODE_NOT_CAUGHT_UP, PodMonitor};
use chat_cluster_e2e::now_ms;
use chat_cluster_e2e::proxy::CHAT_PORT;
use chat_cluster_e2e::scenario::Scenario;
use chat_cluster_operator::crd::CAUGHT_UP_CONDITION;

const CHANNEL: &str = "e2e";

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn five_thousand_messages_then_scale_to_five() {
    let s = Scenario::start("data", |_| {}).await.unwrap();
    // Token auth (the ChatCluster default): nothing without a token, everything below with one.
    s.check_access(CHANNEL).await.unwrap();

    let t = Instant::now();
    let report = s
        .load(CHANNEL, 16, Pace::Count(5000), "burst")
        .finish()
        .await
        .unwrap();
    eprintln!("5000 messages: {}", report.summary());
    assert_eq!(report.accepted.len(), 5000, "{}", report.summary());
    let held = s.check_histories(CHANNEL, &report.accepted).await.unwrap();
    assert_eq!(held, 5000);
    eprintln!(
        "5000 messages sent and verified on every holder in {:.1?}",
        t.elapsed()
    );

    let monitor = PodMonitor::start(
        s.harness.client.clone(),
        MonitorSpec {
            namespace: s.cluster.namespace.clone(),
            selector: s.cluster.selector(Component::ChatServer),
            port: CHAT_PORT,
            sample_every: Duration::from_millis(500),
            gate: Some(CAUGHT_UP_CONDITION.to_owned()),
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let light = s.load(CHANNEL, 4, Pace::Rate(20.0), "scale");
    let t0 = now_ms();
    s.cluster.scale(5).await.unwrap();
    let row = s
        .cluster
        .wait_running("5/5", Duration::from_secs(300))
        .await
        .unwrap();
    let t1 = now_ms();
    eprintln!(
        "scaled 3 -> 5 in {:.1}s: {row:?}",
        (t1 - t0) as f64 / 1000.0
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let light = light.stop().await.unwrap();
    let timeline = monitor.stop().await;
    eprintln!(
        "light load during scale: {}\n{}",
        light.summary(),
        timeline.report(t0)
    );

    let new_pods = timeline.new_pods(t0);
    assert_eq!(new_pods.len(), 2, "expected two new chat-server pods");
    for pod in &new_pods {
        assert!(
            pod.first_ready_ms().is_some(),
            "{} never became ready",
            pod.name
        );
        assert!(
            pod.first_gate_ms().is_some(),
            "{} never passed the gate",
            pod.name
        );
    }
    let violations = timeline.ready_before_caught_up(&NODE_NOT_CAUGHT_UP, 1000);
    assert!(
        violations.is_empty(),
        "ready before caught up: {violations:?}"
    );
    assert_eq!(
        timeline.min_ready(t0, t1),
        Some(3),
        "a ready pod was lost while scaling up"
    );

    let mut accepted = report.accepted;
    accepted.extend(light.accepted.iter().cloned());
    assert!(
        light.abandoned.is_empty() && light.rejected.is_empty(),
        "{}",
        light.summary()
    );
    let held = s.check_histories(CHANNEL, &accepted).await.unwrap();
    assert_eq!(held, accepted.len());
    assert_eq!(
        s.cluster.pods(Component::ChatServer).await.unwrap().len(),
        5
    );
    eprintln!("data scenario done in {:.1?}", s.elapsed());
    s.finish().await.unwrap();
}
