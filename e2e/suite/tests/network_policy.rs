//! NetworkPolicy enforcement on a real policy controller (the local cluster runs kube-router in
//! firewall-only mode, `e2e/cluster.d/policy.sh`): with the operator's default policies, a pod
//! without the ChatCluster's labels cannot open a connection to Redis or to the replication log's
//! port (pages, `/snapshot`), while a pod labelled as that ChatCluster's chat-server can, and the
//! chat-server port stays open to anyone. The cluster itself reaching `Running` with the policies
//! in force shows the data plane's own traffic (chat-server → Redis and log, log → Redis and
//! peers) and the operator's `/status` probes through the API server's pod proxy are admitted.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_cluster_e2e::cluster::{TestCluster, test_spec};
use chat_cluster_e2e::harness::{Harness, wait_for};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// What a connection attempt from a probe pod did.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// The TCP connection was opened (whatever the server then answered).
    Connected,
    /// The connection was refused or never answered.
    Blocked,
}

/// A long-running pod of the Redis image with `labels` (it runs a local `redis-server` on port
/// 6390, reachable by nobody else, only to stay up) from which [`reach`] execs probes. Probing
/// from a pod that is already running matters: a policy controller adds a new pod's IP to its
/// sets a moment after the pod starts, and a probe run as the pod's own command races that.
/// It never turns Ready (its readiness probe always fails), so a Service selecting its labels
/// (the member pod carries the chat-server's) never sends it traffic.
async fn probe_pod(h: &Harness, ns: &str, name: &str, labels: &BTreeMap<String, String>) {
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "probe",
                "image": h.images.redis,
                "imagePullPolicy": "IfNotPresent",
                "command": ["redis-server", "--port", "6390", "--save", "", "--appendonly", "no"],
                "readinessProbe": {
                    "exec": {"command": ["redis-cli", "-p", "1", "ping"]},
                    "periodSeconds": 5,
                },
            }],
        },
    }))
    .expect("probe pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the probe pod");
    wait_for(
        &format!("probe pod {name} running"),
        Duration::from_secs(90),
        || async {
            let pod = pods.get(name).await?;
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            Ok((phase == "Running").then_some(()))
        },
    )
    .await
    .expect("probe pod running");
}

/// How long one probe may take. `redis-cli` 7.0 (the image's) has no connect timeout, so a
/// dropped SYN would hang it; a refused one fails at once.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(10);

/// One attempt: `redis-cli -h host -p port ping` exec'd in `pod`. `redis-cli` prints
/// `Could not connect to Redis at …` when the connection fails (kube-router REJECTs: connection
/// refused), and an attempt still hanging after [`ATTEMPT_LIMIT`] counts as a dropped connection;
/// a Redis `NOAUTH`/`WRONGPASS`/`AUTH failed` answer, `PONG` or a protocol error from an HTTP
/// server means it connected. `None` when the exec itself failed.
async fn attempt(h: &Harness, ns: &str, pod: &str, host: &str, port: u16) -> Option<Reach> {
    let port = port.to_string();
    let args = [
        "-n",
        ns,
        "exec",
        pod,
        "--",
        "redis-cli",
        "-h",
        host,
        "-p",
        &port,
        "--no-auth-warning",
        "-a",
        "not-the-password",
        "ping",
    ];
    let text = match h.kubectl_within(&args, ATTEMPT_LIMIT).await {
        Ok(Some(out)) => out,
        Ok(None) => {
            eprintln!("probe {pod} -> {host}:{port}: no answer in {ATTEMPT_LIMIT:?}");
            return Some(Reach::Blocked);
        }
        Err(e) => format!("{e:#}"),
    };
    if text.contains("Could not connect") {
        Some(Reach::Blocked)
    } else if [
        "NOAUTH",
        "WRONGPASS",
        "AUTH failed",
        "PONG",
        "Protocol error",
    ]
    .iter()
    .any(|m| text.contains(m))
    {
        Some(Reach::Connected)
    } else {
        eprintln!("probe {pod} -> {host}:{port}: no verdict: {}", text.trim());
        None
    }
}

/// Whether `pod` reaches `host:port`, allowing the policy controller 30 s to catch up with the
/// pod: the first connected attempt decides; a blocked one is tried again, so `Blocked` means
/// every attempt over those 30 s that gave a verdict was refused. `None` when no attempt gave
/// a verdict (the probe itself is broken, which must fail the test rather than pass for
/// `Blocked`).
async fn reach(h: &Harness, ns: &str, pod: &str, host: &str, port: u16) -> Option<Reach> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match attempt(h, ns, pod, host, port).await {
            Some(Reach::Connected) => {
                last = Some(Reach::Connected);
                break;
            }
            other => last = other.or(last),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("probe {pod} -> {host}:{port}: {last:?}");
    last
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn only_the_clusters_own_pods_reach_redis_and_the_log() {
    let h = Harness::from_env().await.unwrap();
    h.install_operator().await.unwrap();
    let ns = h.namespace("netpol").await.unwrap();
    let mut spec = test_spec(&h);
    spec.replicas = 1;
    spec.replication_log.replicas = 1;
    let cluster = TestCluster::create(&h, &ns.name, "np", spec).await.unwrap();
    cluster
        .wait_running("1/1", Duration::from_secs(300))
        .await
        .unwrap();
    let policies: Api<NetworkPolicy> = Api::namespaced(h.client.clone(), &ns.name);
    let mut names: Vec<String> = policies
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    assert_eq!(names, ["np-broker", "np-chat-server", "np-log"]);

    let stranger = BTreeMap::from([("app".to_owned(), "stranger".to_owned())]);
    let chat_server = BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), "np".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "chat-server".to_owned(),
        ),
    ]);
    // The log replica's own address (stable DNS through the headless Service) and the Services.
    let log = "np-log-0.np-log-headless";
    probe_pod(&h, &ns.name, "stranger", &stranger).await;
    probe_pod(&h, &ns.name, "member", &chat_server).await;
    // The member cases first: once they connect, the policy controller has the probe pods in
    // its sets, and the stranger's refusals are the policies' doing.
    let cases = [
        ("member", "np-broker", 6379, Reach::Connected),
        ("member", log, 8090, Reach::Connected),
        ("stranger", "np-chat-server", 8080, Reach::Connected),
        ("stranger", "np-broker", 6379, Reach::Blocked),
        ("stranger", log, 8090, Reach::Blocked),
        ("stranger", "np-log", 8090, Reach::Blocked),
    ];
    let mut wrong = Vec::new();
    for (pod, host, port, want) in cases {
        let got = reach(&h, &ns.name, pod, host, port).await;
        if got.as_ref() != Some(&want) {
            wrong.push(format!("{pod} -> {host}:{port}: {got:?}, want {want:?}"));
        }
    }
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &ns.name);
    for name in ["stranger", "member"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("deleting a probe pod");
    }
    assert!(wrong.is_empty(), "reachability differs: {wrong:#?}");

    // The data plane kept working under the policies (Redis, log, the operator's probes).
    cluster
        .wait_running("1/1", Duration::from_secs(60))
        .await
        .unwrap();
    ns.delete(Duration::from_secs(300)).await.unwrap();
}
