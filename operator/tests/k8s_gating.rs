//! Rollout gating against a real kube-apiserver: a stand-in chat-server `/status` endpoint
//! (a static file served by `python3 -m http.server`) runs in a network namespace made by the
//! test, because the API server refuses to proxy to loopback. The test plays kubelet: it gives
//! the chat-server Pods created by the controller-manager that address and marks them Running.
//! The operator must read `/status` through the pod proxy, set `chat-cluster.io/caught-up` only
//! once the pod is live and within maxLag, and report Degraded (CatchUpTimeout, naming the pod)
//! for a pod that does not catch up in time. Needs root and `ip` (iproute2).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_cluster_operator::crd::{CAUGHT_UP_CONDITION, ChatCluster, Phase};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const NETNS: &str = "cc-gate-test";
const HOST_IF: &str = "ccgate-h";
const NS_IF: &str = "ccgate-n";
const POD_IP: &str = "10.231.77.2";

/// A network namespace with a veth to the host and an HTTP server on :8080 serving `dir`.
struct TestHost {
    server: Option<Child>,
    dir: tempfile::TempDir,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestHost {
    fn start() -> TestHost {
        ip(&["netns", "del", NETNS]);
        ip(&["link", "del", HOST_IF]);
        assert!(ip(&["netns", "add", NETNS]), "ip netns add (needs root)");
        assert!(ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF
        ]));
        assert!(ip(&["link", "set", NS_IF, "netns", NETNS]));
        assert!(ip(&["addr", "add", "10.231.77.1/30", "dev", HOST_IF]));
        assert!(ip(&["link", "set", HOST_IF, "up"]));
        assert!(ip(&[
            "-n",
            NETNS,
            "addr",
            "add",
            &format!("{POD_IP}/30"),
            "dev",
            NS_IF
        ]));
        assert!(ip(&["-n", NETNS, "link", "set", NS_IF, "up"]));
        assert!(ip(&["-n", NETNS, "link", "set", "lo", "up"]));
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                NETNS,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("http server");
        TestHost {
            server: Some(server),
            dir,
        }
    }

    fn serve_status(&self, status: serde_json::Value) {
        std::fs::write(self.dir.path().join("status"), status.to_string()).expect("write status");
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        ip(&["link", "del", HOST_IF]);
        ip(&["netns", "del", NETNS]);
    }
}

async fn chat_pod(pods: &Api<Pod>, instance: &str) -> Pod {
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={instance},app.kubernetes.io/component=chat-server"
    ));
    wait_for("chat-server pod", Duration::from_secs(20), || async {
        pods.list(&lp).await.ok()?.items.into_iter().next()
    })
    .await
}

/// Plays kubelet: the pod runs at POD_IP (containers ready; Ready itself waits for the gate).
async fn run_pod(pods: &Api<Pod>, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let patch = json!({"status": {
        "phase": "Running",
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": now,
        "conditions": [{"type": "ContainersReady", "status": "True", "lastTransitionTime": now}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("pod status");
}

fn caught_up(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == CAUGHT_UP_CONDITION && c.status == "True")
        })
}

#[tokio::test]
async fn gate_passes_caught_up_pods_only_and_degrades_after_the_timeout() {
    let Some(kc) = kubeconfig() else { return };
    let _serial = SERIAL.lock().await;
    let client = client(&kc).await;
    install_crd(&client).await;
    let host = TestHost::start();
    host.serve_status(json!({"node_id": "n", "phase": "catching_up", "position": 5, "head": 10, "lag": 5, "messages": 5, "channels": 1}));
    let ns = TestNamespace::create(&client, &kc, "op-gating").await;
    let op = Operator::start_leading(&client, &kc, &ns.name, "op-gating").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // "slow" never catches up within its 3 s; "demo" catches up once the node is live.
    let spec = |timeout: &str| json!({"replicas": 1, "replicationLog": {"replicas": 1}, "rollout": {"maxLag": 2, "catchUpTimeout": timeout}});
    api.create(
        &PostParams::default(),
        &cluster("demo", &ns.name, spec("5m")),
    )
    .await
    .expect("demo");
    api.create(
        &PostParams::default(),
        &cluster("slow", &ns.name, spec("3s")),
    )
    .await
    .expect("slow");
    let demo_pod = chat_pod(&pods, "demo").await.name_any();
    let slow_pod = chat_pod(&pods, "slow").await.name_any();
    run_pod(&pods, &demo_pod).await;
    run_pod(&pods, &slow_pod).await;

    // While catching up (lag 5 > maxLag 2) nobody passes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !caught_up(&pods.get(&demo_pod).await.expect("pod")),
        "gated a catching-up pod:\n{}",
        op.log_text()
    );

    // The slow one times out: Degraded, naming the pod and its lag.
    let degraded = wait_for("slow cluster Degraded", Duration::from_secs(20), || async {
        let s = api.get("slow").await.ok()?.status?;
        (s.phase == Some(Phase::Degraded)).then_some(s)
    })
    .await;
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
        condition.message.contains(&slow_pod) && condition.message.contains("lag 5"),
        "{}",
        condition.message
    );

    // Live but lagging too far: still not.
    host.serve_status(json!({"node_id": "n", "phase": "live", "position": 7, "head": 10, "lag": 3, "messages": 7, "channels": 1}));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !caught_up(&pods.get(&demo_pod).await.expect("pod")),
        "gated a pod beyond maxLag"
    );

    // Live within maxLag: the gate opens, with an Event.
    host.serve_status(json!({"node_id": "n", "phase": "live", "position": 9, "head": 10, "lag": 1, "messages": 9, "channels": 1}));
    wait_for("demo pod caught up", Duration::from_secs(10), || async {
        caught_up(&pods.get(&demo_pod).await.ok()?).then_some(())
    })
    .await;
    // The other conditions of the pod survived the patch (strategic merge by type).
    let pod = pods.get(&demo_pod).await.expect("pod");
    let types: Vec<String> = pod
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert!(types.contains(&"ContainersReady".to_owned()), "{types:?}");
    assert!(op.metric("chat_cluster_operator_gated_pods_total").await >= 1.0);
    let (ok, out, _) = kubectl(
        &kc,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(ok && out.contains("CaughtUp"), "events: {out}");

    // The timed-out pod stays ungated, and the slow cluster stays Degraded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !caught_up(&pods.get(&slow_pod).await.expect("pod")),
        "gated a timed-out pod"
    );
    assert_eq!(
        api.get("slow")
            .await
            .expect("slow")
            .status
            .and_then(|s| s.phase),
        Some(Phase::Degraded)
    );
}
