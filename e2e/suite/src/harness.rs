//! Finding the cluster under test and the tools around it: the kubeconfig
//! (`CHAT_CLUSTER_E2E_KUBECONFIG`; the tests are `#[ignore]`d, `e2e/run-suite` runs them with
//! `--include-ignored`, and one that runs without the variable fails, it never passes by
//! skipping), kubectl, the image tags under test, installing the operator with `kubectl apply -k`, per-scenario namespaces and polling
//! (the last three from the shared `chat-test-support` crate).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::proxy::Proxy;

/// Namespace the operator is installed into by `manifests/`.
pub const OPERATOR_NAMESPACE: &str = "chat-cluster-system";
/// Name of the operator Deployment (and its container is `operator`).
pub const OPERATOR_DEPLOYMENT: &str = "chat-cluster-operator";
/// Label put on every namespace the suite creates, so leftovers can be swept.
pub const NAMESPACE_LABEL: &str = "chat-cluster.io/e2e";

/// Image references under test; each can be overridden by an environment variable.
#[derive(Clone, Debug)]
pub struct Images {
    /// The data-plane image (`CHAT_CLUSTER_E2E_IMAGE`, default `chat-cluster/chat-server:0.1.0`).
    pub chat_server: String,
    /// The second tag of the same build, target of rolling updates
    /// (`CHAT_CLUSTER_E2E_NEXT_IMAGE`, default `chat-cluster/chat-server:0.1.1`).
    pub chat_server_next: String,
    /// The operator image (`CHAT_CLUSTER_E2E_OPERATOR_IMAGE`, default
    /// `chat-cluster/chat-cluster-operator:0.1.0`, which is what `e2e/suite/overlay` pins).
    pub operator: String,
    /// The broker image (`CHAT_CLUSTER_E2E_REDIS_IMAGE`, default `chat-cluster/redis:7.0`).
    pub redis: String,
}

/// The operator tag pinned by `e2e/suite/overlay/kustomization.yaml`.
const OVERLAY_OPERATOR_IMAGE: &str = "chat-cluster/chat-cluster-operator:0.1.0";

impl Images {
    /// The tags from the environment, or the local defaults.
    pub fn from_env() -> Images {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Images {
            chat_server: var("CHAT_CLUSTER_E2E_IMAGE", "chat-cluster/chat-server:0.1.0"),
            chat_server_next: var(
                "CHAT_CLUSTER_E2E_NEXT_IMAGE",
                "chat-cluster/chat-server:0.1.1",
            ),
            operator: var("CHAT_CLUSTER_E2E_OPERATOR_IMAGE", OVERLAY_OPERATOR_IMAGE),
            redis: var("CHAT_CLUSTER_E2E_REDIS_IMAGE", "chat-cluster/redis:7.0"),
        }
    }
}

/// Everything a scenario needs to reach the cluster (cheap to clone).
#[derive(Clone)]
pub struct Harness {
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// API client.
    pub client: Client,
    /// Proxied HTTP to the data plane.
    pub proxy: Proxy,
    /// kubectl binary.
    pub kubectl: PathBuf,
    /// Image tags under test.
    pub images: Images,
    /// The repository root (holds `manifests/`).
    pub repo_root: PathBuf,
}

impl Harness {
    /// The harness for `CHAT_CLUSTER_E2E_KUBECONFIG`; an error when the variable is unset (a test
    /// that needs the cluster fails without one, it never passes by skipping).
    pub async fn from_env() -> Result<Harness> {
        let Some(kubeconfig) = std::env::var_os("CHAT_CLUSTER_E2E_KUBECONFIG") else {
            bail!(
                "CHAT_CLUSTER_E2E_KUBECONFIG is not set: the end-to-end suite needs a Kubernetes \
                 cluster; run it with `e2e/run-suite` (or set the variable to a cluster's kubeconfig, \
                 e.g. target/e2e/kubeconfig after `e2e/cluster up`, and pass `-- --include-ignored`)"
            );
        };
        let kubeconfig = PathBuf::from(kubeconfig);
        let client = chat_test_support::k8s::client(&kubeconfig).await?;
        let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let repo_root = repo_root.canonicalize().unwrap_or(repo_root);
        Ok(Harness {
            kubeconfig,
            proxy: Proxy::new(client.clone()),
            client,
            kubectl: kubectl_path(),
            images: Images::from_env(),
            repo_root,
        })
    }

    /// Runs kubectl against the cluster; stdout on success, an error with stderr otherwise.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        Self::kubectl_result(args, out)
    }

    /// [`Harness::kubectl`] limited to `limit`: `Ok(None)` when kubectl had not finished by
    /// then (it is killed; a command it exec'd in a pod may run on until it ends by itself).
    pub async fn kubectl_within(&self, args: &[&str], limit: Duration) -> Result<Option<String>> {
        let run = tokio::process::Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(limit, run).await {
            Err(_elapsed) => Ok(None),
            Ok(out) => {
                let out = out.with_context(|| format!("running {}", self.kubectl.display()))?;
                Self::kubectl_result(args, out).map(Some)
            }
        }
    }

    fn kubectl_result(args: &[&str], out: std::process::Output) -> Result<String> {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            );
        }
        Ok(stdout)
    }

    /// Installs CRD, namespace, RBAC and the operator Deployment with
    /// `kubectl apply -k e2e/suite/overlay` (that is `manifests/` with the local image tag),
    /// overrides the image when `CHAT_CLUSTER_E2E_OPERATOR_IMAGE` says so, and waits until the
    /// CRD is Established and the Deployment Available with every replica updated and ready.
    /// Idempotent: every scenario calls it.
    pub async fn install_operator(&self) -> Result<()> {
        let overlay = self.repo_root.join("e2e/suite/overlay");
        let overlay = overlay.to_string_lossy();
        self.kubectl(&["apply", "-k", &overlay]).await?;
        if self.images.operator != OVERLAY_OPERATOR_IMAGE {
            let image = format!("operator={}", self.images.operator);
            self.kubectl(&[
                "-n",
                OPERATOR_NAMESPACE,
                "set",
                "image",
                &format!("deployment/{OPERATOR_DEPLOYMENT}"),
                &image,
            ])
            .await?;
        }
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/chatclusters.chat-cluster.io",
        ])
        .await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        wait_for(
            "operator Deployment Available and rolled out",
            Duration::from_secs(180),
            || {
                let deployments = deployments.clone();
                async move {
                    let d = deployments.get(OPERATOR_DEPLOYMENT).await?;
                    Ok(deployment_rolled_out(&d).then_some(()))
                }
            },
        )
        .await
    }

    /// Creates a fresh namespace `e2e-{prefix}-{random}` labelled for the suite, and grants the
    /// operator its data-plane rights there (the RoleBinding README tells cluster-mode users to
    /// create per namespace: `manifests/` binds them only in `default`).
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let suffix: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .take(5)
            .collect();
        let name = format!("e2e-{prefix}-{suffix}");
        let ns = TestNamespace::create(
            &self.client,
            &self.kubeconfig,
            &name,
            &[(NAMESPACE_LABEL, "true")],
            Duration::from_secs(300),
        )
        .await?;
        eprintln!("namespace {name} created");
        let binding = data_plane_role_binding(&name);
        Api::<RoleBinding>::namespaced(self.client.clone(), &name)
            .create(&PostParams::default(), &binding)
            .await
            .with_context(|| format!("binding the operator's data-plane role in {name}"))?;
        Ok(ns)
    }
}

/// The RoleBinding that grants the operator of `manifests/` (cluster mode) the rights that reach
/// into pods (ClusterRole `chat-cluster-operator-data-plane`) in `namespace`.
pub fn data_plane_role_binding(namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some("chat-cluster-operator-data-plane".into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "chat-cluster-operator-data-plane".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: OPERATOR_DEPLOYMENT.into(),
            namespace: Some(OPERATOR_NAMESPACE.into()),
            ..Subject::default()
        }]),
    }
}

/// True when the Deployment is Available, observed its generation and has every replica updated,
/// ready and available (no old pods left).
pub fn deployment_rolled_out(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    let available = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Available" && c.status == "True");
    available
        && status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.ready_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
}

/// A namespace owned by one scenario ([`chat_test_support::k8s::TestNamespace`]): deleted and
/// waited for at the end of the scenario, or, when the scenario did not finish, deleted without
/// waiting when dropped.
pub use chat_test_support::k8s::TestNamespace;
pub use chat_test_support::kubectl_path;

/// Polls `check` every 500 ms ([`chat_test_support::poll`]) until it yields a value or `timeout`
/// passes. Errors from `check` count as "not yet"; the last one is part of the timeout error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    Ok(chat_test_support::poll(what, timeout, Duration::from_millis(500), check).await?)
}
