//! Against a real control plane: the operator runs as its ServiceAccount (a TokenRequest token,
//! nothing else) under the RBAC the Helm chart renders, in both modes (docs/install.md,
//! "Permissions"):
//! - namespaced mode (`WATCH_NAMESPACES`): a Role per watched namespace and no cluster-scoped
//!   grant; it reconciles ChatClusters there, never elsewhere, and its label-selected Secret watch
//!   restores a deleted broker Secret at once;
//! - cluster mode: no Secret list/watch anywhere, pods/proxy and pods/status only in the
//!   data-plane namespaces; it reconciles ChatClusters in any namespace;
//! - in both, the API server itself (SubjectAccessReview, `kubectl auth can-i`) refuses the rights
//!   issue 11 takes away, and the operator logs no Forbidden error.

mod common;

use std::time::Duration;

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Creates ChatCluster `demo` in `ns`.
async fn create_demo(client: &Client, ns: &str) {
    Api::<ChatCluster>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &cluster(
                "demo",
                ns,
                json!({"replicas": 1, "replicationLog": {"replicas": 1}}),
            ),
        )
        .await
        .expect("ChatCluster created");
}

/// Waits until `ns/demo` has its children and a status written by the operator.
async fn wait_reconciled(client: &Client, ns: &str, op: &Operator) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    wait_logged(
        op,
        &format!("{ns}/demo reconciled"),
        Duration::from_secs(60),
        || async {
            deployments
                .get_opt("demo-chat-server")
                .await
                .ok()
                .flatten()
                .is_some()
                && sets.get_opt("demo-log").await.ok().flatten().is_some()
                && sets.get_opt("demo-broker").await.ok().flatten().is_some()
                && secrets
                    .get_opt("demo-broker")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                && services
                    .get_opt("demo-chat-server")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                && clusters
                    .get("demo")
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .and_then(|s| s.phase)
                    .is_some()
        },
    )
    .await;
}

/// Polls `check` every 200 ms until it holds; fails the test after `within` with the operator's log.
async fn wait_logged<F, Fut>(op: &Operator, what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = tokio::time::timeout(within, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "timed out after {within:?} waiting for: {what}; operator log:\n{}",
        op.log_text()
    );
}

/// [`can_i`], asked again for up to 10 s while the answer is not `want`: the API server's RBAC
/// authorizer learns of just-applied Roles and bindings through its informers, a moment later.
async fn can_i_settled(
    kc: &std::path::Path,
    user: &str,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
    want: bool,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = can_i(kc, user, verb, resource, ns);
        if got == want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator's log has no authorization failure. A 403 the API server gives for writing
/// into a namespace that is being deleted (reason `NamespaceTerminating`, e.g. an earlier
/// test's namespace still on its way out) is admission, not RBAC, and is not counted.
fn assert_no_forbidden(op: &Operator) {
    let log = op.log_text();
    let forbidden: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
        .filter(|l| !l.contains("NamespaceTerminating"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the operator hit RBAC denials:\n{}",
        forbidden.join("\n")
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn namespaced_mode_reconciles_only_watched_namespaces_under_its_roles() {
    let (kc, client, _serial) = k8s_session().await;
    let op_ns = test_namespace(&client, &kc, "rbac-ns-op").await;
    let watched = test_namespace(&client, &kc, "rbac-ns-watched").await;
    let other = test_namespace(&client, &kc, "rbac-ns-other").await;
    let release = "rbac-ns";
    let rbac = render_chart(
        release,
        &op_ns.name,
        &[
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--set",
            &format!("watchNamespaces={{{}}}", watched.name),
        ],
    );
    assert!(
        !rbac.contains("kind: ClusterRole"),
        "namespaced mode rendered a cluster-scoped grant:\n{rbac}"
    );
    kubectl_stdin(&kc, "apply", &rbac);
    let sa = "rbac-ns-chat-cluster-operator";
    let user = format!("system:serviceaccount:{}:{sa}", op_ns.name);

    // What the API server allows the account.
    for (verb, resource, ns, want) in [
        ("list", "secrets", None, false),
        ("list", "secrets", Some(other.name.as_str()), false),
        ("get", "secrets", Some(other.name.as_str()), false),
        ("get", "pods/proxy", Some(other.name.as_str()), false),
        ("patch", "pods/status", Some(other.name.as_str()), false),
        ("list", "chatclusters.chat-cluster.io", None, false),
        (
            "list",
            "chatclusters.chat-cluster.io",
            Some(other.name.as_str()),
            false,
        ),
        ("create", "pods", Some(watched.name.as_str()), false),
        ("watch", "secrets", Some(watched.name.as_str()), true),
        ("create", "secrets", Some(watched.name.as_str()), true),
        ("get", "pods/proxy", Some(watched.name.as_str()), true),
        ("patch", "pods/status", Some(watched.name.as_str()), true),
        (
            "watch",
            "chatclusters.chat-cluster.io",
            Some(watched.name.as_str()),
            true,
        ),
    ] {
        assert_eq!(
            can_i_settled(&kc, &user, verb, resource, ns, want).await,
            want,
            "can {user} {verb} {resource} in {}?",
            ns.unwrap_or("all namespaces")
        );
    }

    let sa_kc = service_account_kubeconfig(&kc, &op_ns.name, sa);
    let op = Operator::start_with_env(
        &sa_kc,
        &op_ns.name,
        "chat-cluster-operator",
        "op-rbac-ns",
        &[("WATCH_NAMESPACES", watched.name.as_str())],
    );
    wait_for_leader(
        &client,
        &op_ns.name,
        "chat-cluster-operator",
        "op-rbac-ns",
        Duration::from_secs(30),
    )
    .await;
    create_demo(&client, &other.name).await;
    create_demo(&client, &watched.name).await;
    wait_reconciled(&client, &watched.name, &op).await;

    // The label-selected Secret watch (namespaced mode only): a deleted broker Secret comes back
    // at once, not at the next steady-state requeue (60 s).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &watched.name);
    let before = secrets
        .get("demo-broker")
        .await
        .expect("broker Secret")
        .metadata
        .uid;
    secrets
        .delete("demo-broker", &DeleteParams::default())
        .await
        .expect("Secret deleted");
    wait_logged(
        &op,
        "the deleted broker Secret re-created within 15 s (Secret watch)",
        Duration::from_secs(15),
        || async {
            secrets
                .get_opt("demo-broker")
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.metadata.uid != before)
        },
    )
    .await;

    // The unwatched namespace's ChatCluster was never touched.
    let untouched: Api<ChatCluster> = Api::namespaced(client.clone(), &other.name);
    assert!(
        untouched.get("demo").await.expect("demo").status.is_none(),
        "reconciled a ChatCluster outside WATCH_NAMESPACES"
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &other.name)
            .get_opt("demo-chat-server")
            .await
            .expect("get")
            .is_none()
    );
    assert_no_forbidden(&op);
    drop(op);
    let _ = std::fs::remove_file(sa_kc);
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn cluster_mode_never_lists_secrets_and_reaches_pods_only_in_data_plane_namespaces() {
    let (kc, client, _serial) = k8s_session().await;
    let op_ns = test_namespace(&client, &kc, "rbac-cl-op").await;
    let data = test_namespace(&client, &kc, "rbac-cl-data").await;
    let other = test_namespace(&client, &kc, "rbac-cl-other").await;
    let release = format!("rbac-cl-{}", std::process::id() % 100000);
    let rbac = render_chart(
        &release,
        &op_ns.name,
        &[
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--set",
            &format!("rbac.dataPlaneNamespaces={{{}}}", data.name),
        ],
    );
    kubectl_stdin(&kc, "apply", &rbac);
    // The cluster-scoped objects outlive the namespaces: removed at the end (and by a rerun's apply).
    struct DeleteOnDrop<'a>(&'a std::path::Path, String);
    impl Drop for DeleteOnDrop<'_> {
        fn drop(&mut self) {
            let _ = kubectl(
                self.0,
                &[
                    "delete",
                    "clusterrole,clusterrolebinding",
                    "-l",
                    &self.1,
                    "--wait=false",
                ],
            );
        }
    }
    let _cleanup = DeleteOnDrop(&kc, format!("app.kubernetes.io/instance={release}"));
    let sa = format!("{release}-chat-cluster-operator");
    let user = format!("system:serviceaccount:{}:{sa}", op_ns.name);

    for (verb, resource, ns, want) in [
        ("list", "secrets", None, false),
        ("watch", "secrets", None, false),
        ("list", "secrets", Some(data.name.as_str()), false),
        ("get", "pods/proxy", None, false),
        ("get", "pods/proxy", Some(other.name.as_str()), false),
        ("patch", "pods/status", Some(other.name.as_str()), false),
        ("create", "pods", Some(data.name.as_str()), false),
        ("get", "secrets", Some(other.name.as_str()), true),
        ("create", "secrets", Some(other.name.as_str()), true),
        ("get", "pods/proxy", Some(data.name.as_str()), true),
        ("patch", "pods/status", Some(data.name.as_str()), true),
        ("watch", "chatclusters.chat-cluster.io", None, true),
        ("watch", "pods", None, true),
    ] {
        assert_eq!(
            can_i_settled(&kc, &user, verb, resource, ns, want).await,
            want,
            "can {user} {verb} {resource} in {}?",
            ns.unwrap_or("all namespaces")
        );
    }

    let sa_kc = service_account_kubeconfig(&kc, &op_ns.name, &sa);
    let op = Operator::start_with_env(
        &sa_kc,
        &op_ns.name,
        "chat-cluster-operator",
        "op-rbac-cluster",
        &[("WATCH_NAMESPACES", "")],
    );
    wait_for_leader(
        &client,
        &op_ns.name,
        "chat-cluster-operator",
        "op-rbac-cluster",
        Duration::from_secs(30),
    )
    .await;
    create_demo(&client, &data.name).await;
    create_demo(&client, &other.name).await;
    wait_reconciled(&client, &data.name, &op).await;
    wait_reconciled(&client, &other.name, &op).await;
    // A few seconds of steady state: the watches (no Secret watch in this mode) raise no denial.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_no_forbidden(&op);
    drop(op);
    let _ = std::fs::remove_file(sa_kc);
}
