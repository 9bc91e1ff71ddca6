//! Rollout gating against a real kube-apiserver and the real data plane. The API server refuses
//! to proxy to loopback, so the test makes a "test host": a network namespace with a veth to the
//! host, holding two addresses. In it run Debian's `redis-server`, the `replication-log` and two
//! `chat-server` processes (they reach each other over the namespace's own loopback):
//!
//! - LIVE_IP:8080, a chat-server whose `--log-url` names a log replica that is not started until
//!   the test releases it, so it stays `bootstrapping` until then, and then bootstraps from the
//!   log and goes `live`;
//! - STUCK_IP:8080, a chat-server whose `--log-url` points nowhere: `bootstrapping` forever;
//! - LIVE_IP:8090, the replication-log replica that anchored the broker (the log pods' address);
//! - LIVE_IP:8081, a chat-server that bootstraps from it and takes the test's writes (a node takes
//!   writes only once it is live); no pod has its address.
//!
//! The test plays kubelet: it gives the Pods the controller-manager created for two ChatClusters
//! those addresses and marks them Running. The operator reads each `/status` through the pod
//! proxy, and must set `chat-cluster.io/caught-up` on the live one only once it is live within
//! maxLag (at the position the test wrote up to, with a CaughtUp Event), never on the stuck one,
//! and report Degraded (CatchUpTimeout, naming the stuck pod and its lag against the head the
//! real log replica reports) only after that cluster's catchUpTimeout.
//!
//! Needs root, `ip` (iproute2), `redis-server`, and the data-plane binaries next to the
//! operator's (`cargo build -p chat-server --bins`; `scripts/test` builds the workspace's bins);
//! the test host is `common::testhost`.

mod common;

use std::time::{Duration, Instant};

use chat_cluster_operator::crd::{CAUGHT_UP_CONDITION, ChatCluster, Phase};
use common::testhost::{DumpOnPanic, HostConfig, TestHost, http, run_pod};
use common::*;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const NETNS: &str = "cc-gate-test";
const HOST_IF: &str = "ccgate-h";
const NS_IF: &str = "ccgate-n";
/// The host's end of the veth.
const HOST_ADDR: &str = "10.231.77.1";
/// Redis (loopback only), the log replicas and the chat-server that catches up.
const LIVE_IP: &str = "10.231.77.2";
/// The chat-server that never catches up.
const STUCK_IP: &str = "10.231.77.3";
/// The replica the live node bootstraps from: loopback-only, started when the test releases it.
const HELD_LOG: &str = "127.0.0.1:8091";
/// Messages written before any node is live.
const WRITTEN: u64 = 25;

/// A chat-server's `/status`, read from the host through the veth.
async fn node_status(ip: &str) -> Option<Value> {
    let (code, body) = http(&format!("{ip}:8080"), "GET", "/status", None).await?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

async fn pod_of(pods: &Api<Pod>, instance: &str, component: &str) -> String {
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={instance},app.kubernetes.io/component={component}"
    ));
    wait_for(
        &format!("{instance} {component} pod"),
        Duration::from_secs(20),
        || async { pods.list(&lp).await.ok()?.items.into_iter().next() },
    )
    .await
    .name_any()
}

fn caught_up(pod: &Pod) -> Option<PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CAUGHT_UP_CONDITION && c.status == "True")
        .cloned()
}

async fn gated(pods: &Api<Pod>, name: &str) -> Option<PodCondition> {
    caught_up(&pods.get(name).await.expect("pod"))
}

async fn phase(api: &Api<ChatCluster>, name: &str) -> Option<Phase> {
    api.get(name).await.ok()?.status?.phase
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn gate_passes_live_chat_servers_only_and_degrades_after_the_timeout() {
    let (kc, client, _serial) = k8s_session().await;

    // The data plane, with the live node's log held back.
    let mut host = TestHost::start(HostConfig {
        netns: NETNS,
        host_if: HOST_IF,
        ns_if: NS_IF,
        host_addr: HOST_ADDR,
        addrs: &[LIVE_IP, STUCK_IP],
    });
    host.start_redis();
    host.start_log("log-0", "0.0.0.0:8090", None);
    let log_url = format!("{LIVE_IP}:8090");
    wait_for(
        "log-0 ready (broker anchored)",
        Duration::from_secs(30),
        || async {
            let (code, _) = http(&log_url, "GET", "/readyz", None).await?;
            (code == 200).then_some(())
        },
    )
    .await;
    host.start_chat_server("live", LIVE_IP, &format!("http://{HELD_LOG}"));
    host.start_chat_server("stuck", STUCK_IP, "http://127.0.0.1:1");
    // The writes go through a third node that bootstraps from the real replica (a node takes
    // writes only once it is live); it is no pod's address, so the operator never reads it.
    let writer = format!("{LIVE_IP}:8081");
    host.start_chat_server_on("writer", &writer, &format!("http://{log_url}"));
    for i in 1..=WRITTEN {
        let body =
            json!({"text": format!("message {i}"), "author": "gating-test", "id": format!("m{i}")});
        let message = wait_for(
            "a write through the writer node",
            Duration::from_secs(30),
            || async {
                let (code, body) =
                    http(&writer, "POST", "/channels/x/messages", Some(&body)).await?;
                // 200: a retry of a write that did land (same id).
                matches!(code, 200 | 201).then(|| serde_json::from_str::<Value>(&body).ok())?
            },
        )
        .await;
        assert_eq!(message["position"], i, "{message}");
    }

    let ns = test_namespace(&client, &kc, "op-gating").await;
    let op = Operator::start_leading(&client, &kc, &ns.name, "op-gating").await;
    let _dump = DumpOnPanic(&op);
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // "demo" runs the node that catches up once its log is released, with maxLag 0; "slow" the
    // stuck one, with 8 s to catch up and a maxLag (100) its lag (25) is within: only its phase
    // holds it back.
    let spec = |max_lag: u64, timeout: &str| json!({"replicas": 1, "replicationLog": {"replicas": 1}, "rollout": {"maxLag": max_lag, "catchUpTimeout": timeout}});
    for (name, max_lag, timeout) in [("demo", 0, "5m"), ("slow", 100, "8s")] {
        api.create(
            &PostParams::default(),
            &cluster(name, &ns.name, spec(max_lag, timeout)),
        )
        .await
        .expect("cluster");
    }
    let demo_pod = pod_of(&pods, "demo", "chat-server").await;
    let slow_pod = pod_of(&pods, "slow", "chat-server").await;
    let demo_log = pod_of(&pods, "demo", "replication-log").await;
    let slow_log = pod_of(&pods, "slow", "replication-log").await;
    run_pod(&pods, &demo_log, LIVE_IP, false).await;
    run_pod(&pods, &slow_log, LIVE_IP, false).await;
    run_pod(&pods, &demo_pod, LIVE_IP, false).await;
    let slow_started = Instant::now();
    run_pod(&pods, &slow_pod, STUCK_IP, false).await;

    // The operator reads the broker head from the real log replica through the proxy.
    for name in ["demo", "slow"] {
        wait_for(
            &format!("{name} status.head from log-0"),
            Duration::from_secs(20),
            || async {
                let s = api.get(name).await.ok()?.status?;
                (s.head == Some(WRITTEN) && s.persisted == Some(WRITTEN)).then_some(())
            },
        )
        .await;
    }

    // While the live node's log is held back it stays bootstrapping, and nobody passes; the
    // operator did read its phase through the proxy.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(4) {
        let status = node_status(LIVE_IP).await.expect("live node /status");
        assert_eq!(status["phase"], "bootstrapping", "{status}");
        assert!(
            gated(&pods, &demo_pod).await.is_none(),
            "gated demo's bootstrapping pod"
        );
        assert!(
            gated(&pods, &slow_pod).await.is_none(),
            "gated slow's bootstrapping pod (within maxLag)"
        );
        assert_ne!(
            phase(&api, "slow").await,
            Some(Phase::Degraded),
            "Degraded before catchUpTimeout"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = op.log_text();
    for max_lag in [0, 100] {
        assert!(
            log.contains(&format!(
                "phase bootstrapping, lag {WRITTEN} (maxLag {max_lag})"
            )),
            "the operator never saw a bootstrapping node through the proxy (maxLag {max_lag})"
        );
    }

    // Release the log: a second replica, copying the first, on the address the node reads.
    host.start_log("log-1", HELD_LOG, Some("http://127.0.0.1:8090"));
    let condition = wait_for("demo pod caught up", Duration::from_secs(30), || async {
        gated(&pods, &demo_pod).await
    })
    .await;
    // It passed at the written head with lag 0, which only a live node reports.
    assert_eq!(
        condition.message.as_deref(),
        Some(format!("live at position {WRITTEN}, lag 0 (maxLag 0)").as_str()),
    );
    assert_eq!(condition.reason.as_deref(), Some("CaughtUp"));
    let status = node_status(LIVE_IP).await.expect("live node /status");
    assert_eq!(
        (&status["phase"], &status["position"], &status["lag"]),
        (&json!("live"), &json!(WRITTEN), &json!(0)),
        "{status}"
    );
    // It bootstrapped the messages from the log.
    let (code, body) = http(
        &format!("{LIVE_IP}:8080"),
        "GET",
        "/channels/x/messages",
        None,
    )
    .await
    .expect("messages");
    let page: Value = serde_json::from_str(&body).expect("messages JSON");
    assert_eq!(
        (code, page["messages"].as_array().map(Vec::len)),
        (200, Some(WRITTEN as usize)),
        "{body}"
    );
    // The other conditions of the pod survived the patch (strategic merge by type).
    let types: Vec<String> = pods
        .get(&demo_pod)
        .await
        .expect("pod")
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert!(types.contains(&"ContainersReady".to_owned()), "{types:?}");
    assert!(op.metric("chat_cluster_operator_gated_pods_total").await >= 1.0);
    let events = wait_for("CaughtUp event", Duration::from_secs(10), || async {
        let (ok, out, _) = kubectl(
            &kc,
            &[
                "get",
                "events.events.k8s.io",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={range .items[*]}{.reason} {.note}{\"\\n\"}{end}",
            ],
        );
        (ok && out.contains("CaughtUp")).then_some(out)
    })
    .await;
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("CaughtUp") && l.contains(&demo_pod)),
        "events: {events}"
    );

    // The stuck node times out: Degraded, naming the pod and its lag behind the real head.
    let degraded = wait_for("slow cluster Degraded", Duration::from_secs(30), || async {
        let s = api.get("slow").await.ok()?.status?;
        (s.phase == Some(Phase::Degraded)).then_some(s)
    })
    .await;
    // startTime has whole seconds, so the operator may count up to 1 s more than we do.
    assert!(
        slow_started.elapsed() >= Duration::from_secs(7),
        "Degraded after {:?}, before the 8s catchUpTimeout",
        slow_started.elapsed()
    );
    let condition = degraded
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "CatchUpTimeout")
    );
    assert!(
        condition.message.contains(&slow_pod)
            && condition
                .message
                .contains(&format!("lag {WRITTEN}, maxLag 100")),
        "{}",
        condition.message
    );

    // It stays bootstrapping and ungated, the cluster stays Degraded, and demo is not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = node_status(STUCK_IP).await.expect("stuck node /status");
    assert_eq!(status["phase"], "bootstrapping", "{status}");
    assert!(
        gated(&pods, &slow_pod).await.is_none(),
        "gated a timed-out pod"
    );
    assert_eq!(phase(&api, "slow").await, Some(Phase::Degraded));
    assert_ne!(phase(&api, "demo").await, Some(Phase::Degraded));
}
