//! Replication-log rollouts against a real kube-apiserver + kube-controller-manager (its
//! StatefulSet controller does the pod replacing) and the real data plane: two `replication-log`
//! replicas in a test host (`common::testhost`), at the two addresses the test gives the log
//! pods when it plays kubelet, so the operator reads their real `/status` through the pod proxy.
//!
//! 1. A new log image: the operator holds the StatefulSet's partition at 1 — only `-log-1` is
//!    replaced, `-log-0` keeps running — until the new `-log-1` is Ready and its `/status` is
//!    live at the broker head; then it releases `-log-0`, and the rollout completes.
//! 2. A broken image (its pod never runs, as with `ErrImageNeverPull`): `-log-1` is replaced and
//!    never gets ready; the partition stays at 1, `-log-0` keeps serving, and after
//!    `catchUpTimeout` the ChatCluster is Degraded/`LogRolloutStalled` naming the pod, with an
//!    Event.
//! 3. `rollout.autoRollback: true`: the operator restores the last good revision's template,
//!    replaces the broken pod (the StatefulSet controller would wait on it forever), and reports
//!    `RolledBack`, while the ChatCluster's spec keeps the broken image.
//! 4. A new, good image rolls again, clearing `RolledBack`.

mod common;

use std::time::{Duration, Instant};

use chat_cluster_operator::crd::{ChatCluster, Phase};
use common::testhost::{DumpOnPanic, HostConfig, TestHost, http, run_pod};
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const NETNS: &str = "cc-logroll-test";
const HOST_IF: &str = "cclogr-h";
const NS_IF: &str = "cclogr-n";
const HOST_ADDR: &str = "10.231.78.1";
/// `-log-0`'s address: replica log-a (which anchors the broker), and the writing chat-server.
const IP0: &str = "10.231.78.2";
/// `-log-1`'s address: replica log-b.
const IP1: &str = "10.231.78.3";
/// Messages written before the cluster is created.
const WRITTEN: u64 = 10;
const GOOD: &str = "chat-cluster/chat-server:0.2.0";
const BROKEN: &str = "chat-cluster/chat-server:no-such-tag";
const FIXED: &str = "chat-cluster/chat-server:0.3.0";

/// Plays kubelet: the pod runs at `pod_ip`, Ready.
async fn run_ready(pods: &Api<Pod>, name: &str, pod_ip: &str) {
    run_pod(pods, name, pod_ip, true).await;
}

/// The pod `name` once it exists with another uid than `old` (a replacement) and is not
/// terminating.
async fn replaced(pods: &Api<Pod>, name: &str, old: Option<&str>) -> Pod {
    wait_for(
        &format!("pod {name} (re)created"),
        Duration::from_secs(30),
        || async {
            let p = pods.get_opt(name).await.ok()??;
            (p.uid().as_deref() != old && p.metadata.deletion_timestamp.is_none()).then_some(p)
        },
    )
    .await
}

fn uid(p: &Pod) -> String {
    p.uid().unwrap_or_default()
}

fn revision(p: &Pod) -> Option<String> {
    p.labels().get("controller-revision-hash").cloned()
}

fn partition(s: &StatefulSet) -> Option<i32> {
    s.spec
        .as_ref()?
        .update_strategy
        .as_ref()?
        .rolling_update
        .as_ref()?
        .partition
}

fn image(s: &StatefulSet) -> Option<String> {
    s.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .image
        .clone()
}

fn revisions(s: &StatefulSet) -> (Option<String>, Option<String>) {
    let st = s.status.clone().unwrap_or_default();
    (st.current_revision, st.update_revision)
}

fn degraded(c: &ChatCluster) -> Option<(String, String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Every Event of the namespace as `reason note` lines.
fn events(kc: &std::path::Path, ns: &str) -> String {
    events_lines(kc, ns, "", "{.reason} {.note}").1
}

struct Cluster<'a> {
    api: Api<ChatCluster>,
    sets: Api<StatefulSet>,
    pods: Api<Pod>,
    kc: &'a std::path::Path,
    ns: &'a str,
}

impl Cluster<'_> {
    async fn set(&self) -> StatefulSet {
        self.sets.get("demo-log").await.expect("log StatefulSet")
    }

    async fn patch_spec(&self, spec: serde_json::Value) {
        self.api
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("spec patched");
    }

    /// Waits until the StatefulSet runs `image` on every pod: current = update revision, both
    /// pods on it, partition 0, the ChatCluster Running.
    async fn settled_on(&self, image_name: &str) -> String {
        wait_for(
            &format!("log rollout of {image_name} complete"),
            Duration::from_secs(40),
            || async {
                let s = self.set().await;
                let (current, update) = revisions(&s);
                let c = self.api.get("demo").await.ok()?;
                let running = c.status.as_ref()?.phase == Some(Phase::Running);
                (image(&s).as_deref() == Some(image_name)
                    && current.is_some()
                    && current == update
                    && partition(&s) == Some(0)
                    && running)
                    .then_some(current)
                    .flatten()
            },
        )
        .await
    }

    /// Asserts, for `secs`, that the partition stays 1 and `-log-0` is the pod `uid0`, Ready.
    async fn holds(&self, secs: u64, uid0: &str, why: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let s = self.set().await;
            assert_eq!(partition(&s), Some(1), "{why}: partition");
            let p0 = self.pods.get("demo-log-0").await.expect("log-0");
            assert_eq!(uid(&p0), uid0, "{why}: demo-log-0 was replaced");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A rollout to `image_name` that succeeds: `-log-1` first, held until it is Ready and
    /// caught up, then `-log-0`. Returns the new revision.
    async fn roll_through(&self, image_name: &str) -> String {
        let before = self.set().await;
        let (old, _) = revisions(&before);
        let uid0 = uid(&self.pods.get("demo-log-0").await.expect("log-0"));
        let uid1 = uid(&self.pods.get("demo-log-1").await.expect("log-1"));
        self.patch_spec(json!({"replicationLog": {"image": image_name}}))
            .await;
        let new = wait_for("new update revision", Duration::from_secs(20), || async {
            let s = self.set().await;
            let (_, update) = revisions(&s);
            (update != old && image(&s).as_deref() == Some(image_name)).then_some(update)
        })
        .await;
        let p1 = replaced(&self.pods, "demo-log-1", Some(&uid1)).await;
        assert_eq!(revision(&p1), new, "demo-log-1 runs the new revision");
        // Not ready yet: -log-0 is not touched.
        self.holds(4, &uid0, "while demo-log-1 is not ready").await;
        let c = self.api.get("demo").await.expect("cluster");
        let progressing = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"))
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            progressing.contains("log rollout waiting for demo-log-1"),
            "{progressing}"
        );
        run_ready(&self.pods, "demo-log-1", IP1).await;
        let p0 = replaced(&self.pods, "demo-log-0", Some(&uid0)).await;
        assert_eq!(revision(&p0), new, "demo-log-0 runs the new revision");
        run_ready(&self.pods, "demo-log-0", IP0).await;
        let done = self.settled_on(image_name).await;
        assert_eq!(Some(done.clone()), new);
        let events = events(self.kc, self.ns);
        assert!(
            events.lines().any(|l| l.starts_with("LogRolloutStep")
                && l.contains("partition 1 → 0: rolling pod demo-log-0")),
            "{events}"
        );
        done
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn log_rollouts_step_one_caught_up_replica_at_a_time_halt_and_roll_back() {
    let (kc, client, _serial) = k8s_session().await;

    let mut host = TestHost::start(HostConfig {
        netns: NETNS,
        host_if: HOST_IF,
        ns_if: NS_IF,
        host_addr: HOST_ADDR,
        addrs: &[IP0, IP1],
    });
    host.start_redis();
    host.start_log("log-a", &format!("{IP0}:8090"), None);
    wait_for("log-a ready", Duration::from_secs(30), || async {
        let (code, _) = http(&format!("{IP0}:8090"), "GET", "/readyz", None).await?;
        (code == 200).then_some(())
    })
    .await;
    host.start_chat_server("writer", IP0, &format!("http://{IP0}:8090"));
    for i in 1..=WRITTEN {
        let body = json!({"text": format!("m{i}"), "author": "logroll", "id": format!("m{i}")});
        wait_for("a write", Duration::from_secs(30), || async {
            let (code, _) = http(
                &format!("{IP0}:8080"),
                "POST",
                "/channels/x/messages",
                Some(&body),
            )
            .await?;
            matches!(code, 200 | 201).then_some(())
        })
        .await;
    }
    host.start_log(
        "log-b",
        &format!("{IP1}:8090"),
        Some(&format!("http://{IP0}:8090")),
    );
    wait_for("log-b ready", Duration::from_secs(30), || async {
        let (code, _) = http(&format!("{IP1}:8090"), "GET", "/readyz", None).await?;
        (code == 200).then_some(())
    })
    .await;

    let ns = test_namespace(&client, &kc, "op-logroll").await;
    let op = Operator::start_leading(&client, &kc, &ns.name, "op-logroll").await;
    let _dump = DumpOnPanic(&op);
    let c = Cluster {
        api: Api::namespaced(client.clone(), &ns.name),
        sets: Api::namespaced(client.clone(), &ns.name),
        pods: Api::namespaced(client.clone(), &ns.name),
        kc: &kc,
        ns: &ns.name,
    };
    c.api
        .create(
            &PostParams::default(),
            &cluster(
                "demo",
                &ns.name,
                json!({"replicas": 0, "replicationLog": {"replicas": 2, "image": GOOD},
                       "rollout": {"catchUpTimeout": "10s"}}),
            ),
        )
        .await
        .expect("cluster");
    let broker = replaced(&c.pods, "demo-broker-0", None).await;
    run_ready(&c.pods, &broker.name_any(), IP0).await;
    replaced(&c.pods, "demo-log-0", None).await;
    run_ready(&c.pods, "demo-log-0", IP0).await;
    replaced(&c.pods, "demo-log-1", None).await;
    run_ready(&c.pods, "demo-log-1", IP1).await;
    let good = c.settled_on(GOOD).await;
    let status = c.api.get("demo").await.expect("cluster").status;
    assert_eq!(
        status.as_ref().and_then(|s| s.persisted),
        Some(WRITTEN),
        "the operator read both replicas' /status"
    );

    // 1. A rollout that succeeds, one caught-up replica at a time.
    let rolled = c.roll_through(FIXED).await;
    assert_ne!(rolled, good);
    // Two steps: partition 2 → 1 (demo-log-1), 1 → 0 (demo-log-0).
    let steps = op
        .metric("chat_cluster_operator_log_rollout_steps_total")
        .await;
    assert!(steps >= 2.0, "log_rollout_steps_total {steps}");
    let good = rolled;

    // 2. A broken image: -log-1 never runs; the rollout halts there.
    let uid0 = uid(&c.pods.get("demo-log-0").await.expect("log-0"));
    let uid1 = uid(&c.pods.get("demo-log-1").await.expect("log-1"));
    c.patch_spec(json!({"replicationLog": {"image": BROKEN}}))
        .await;
    let broken = replaced(&c.pods, "demo-log-1", Some(&uid1)).await;
    let broken_at = Instant::now();
    let broken_revision = revision(&broken);
    assert_ne!(broken_revision.as_deref(), Some(good.as_str()));
    c.holds(5, &uid0, "while the broken demo-log-1 is not ready")
        .await;
    assert_ne!(
        degraded(&c.api.get("demo").await.expect("cluster")).map(|d| d.0),
        Some("True".into()),
        "Degraded before catchUpTimeout"
    );
    let (_, reason, message) = wait_for(
        "Degraded LogRolloutStalled",
        Duration::from_secs(30),
        || async {
            let d = degraded(&c.api.get("demo").await.ok()?)?;
            (d.0 == "True").then_some(d)
        },
    )
    .await;
    assert!(
        broken_at.elapsed() >= Duration::from_secs(9),
        "Degraded after {:?}, before the 10s catchUpTimeout",
        broken_at.elapsed()
    );
    assert_eq!(reason, "LogRolloutStalled", "{message}");
    assert!(
        message.contains("replication-log pod demo-log-1 was not ready and caught up within 10s")
            && message.contains("rollout halted"),
        "{message}"
    );
    c.holds(3, &uid0, "halted").await;
    let p0 = c.pods.get("demo-log-0").await.expect("log-0");
    assert_eq!(revision(&p0).as_deref(), Some(good.as_str()));
    let (code, _) = http(&format!("{IP0}:8090"), "GET", "/readyz", None)
        .await
        .expect("log-0 answers");
    assert_eq!(code, 200, "the replica not rolled keeps serving");
    let ev = wait_for(
        "LogRolloutStalled event",
        Duration::from_secs(10),
        || async {
            let e = events(&kc, &ns.name);
            e.contains("LogRolloutStalled").then_some(e)
        },
    )
    .await;
    assert_eq!(
        ev.lines()
            .filter(|l| l.starts_with("LogRolloutStalled"))
            .count(),
        1,
        "one Event per cause: {ev}"
    );

    // 3. autoRollback: the good template returns, the broken pod is replaced, the spec is kept.
    c.patch_spec(json!({"rollout": {"autoRollback": true}}))
        .await;
    let restored = wait_for("template rolled back", Duration::from_secs(30), || async {
        let s = c.set().await;
        (image(&s).as_deref() == Some(FIXED)).then_some(s)
    })
    .await;
    assert!(
        restored
            .annotations()
            .get("chat-cluster.io/rolled-back")
            .is_some_and(|a| a.contains(&good)),
        "{:?}",
        restored.annotations()
    );
    let p1 = replaced(&c.pods, "demo-log-1", Some(&uid(&broken))).await;
    assert_eq!(revision(&p1).as_deref(), Some(good.as_str()));
    run_ready(&c.pods, "demo-log-1", IP1).await;
    wait_for(
        "rolled back to the good revision",
        Duration::from_secs(30),
        || async {
            let s = c.set().await;
            let (current, update) = revisions(&s);
            (current.as_deref() == Some(good.as_str()) && update == current).then_some(())
        },
    )
    .await;
    assert_eq!(
        op.metric("chat_cluster_operator_log_rollbacks_total").await,
        1.0
    );
    assert!(
        op.metric("chat_cluster_operator_log_pods_replaced_total")
            .await
            >= 1.0
    );
    let cc = c.api.get("demo").await.expect("cluster");
    assert_eq!(
        cc.spec.replication_log.image.as_deref(),
        Some(BROKEN),
        "the spec stays as written"
    );
    let (status, reason, message) = degraded(&cc).expect("Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "RolledBack"));
    assert!(
        message.contains(&format!("rolled back to revision {good}"))
            && message.contains("pod demo-log-1"),
        "{message}"
    );
    let ev = events(&kc, &ns.name);
    assert!(
        ev.lines().any(|l| l.starts_with("RolledBack")),
        "no RolledBack Event: {ev}"
    );
    assert!(
        ev.lines()
            .any(|l| l.starts_with("RollingBack") && l.contains("demo-log-1")),
        "no RollingBack Event: {ev}"
    );
    // It stays rolled back while the spec is unchanged.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = c.set().await;
    assert_eq!(image(&s).as_deref(), Some(FIXED));
    assert_eq!(partition(&s), Some(0));
    assert_eq!(
        degraded(&c.api.get("demo").await.expect("cluster")).map(|d| d.1),
        Some("RolledBack".into())
    );
    assert_eq!(
        c.pods
            .get("demo-log-0")
            .await
            .ok()
            .map(|p| uid(&p))
            .as_deref(),
        Some(uid0.as_str()),
        "demo-log-0 kept serving throughout"
    );

    // 4. A new image rolls again and clears RolledBack.
    c.roll_through(GOOD).await;
    let cc = c.api.get("demo").await.expect("cluster");
    assert_eq!(
        degraded(&cc).map(|d| (d.0, d.1)),
        Some(("False".into(), "AsExpected".into()))
    );
    assert!(
        !c.set()
            .await
            .annotations()
            .contains_key("chat-cluster.io/rolled-back")
    );
}
