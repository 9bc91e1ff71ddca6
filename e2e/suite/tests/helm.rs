//! The operator installed with its Helm chart (`manifests/helm/chat-cluster-operator`, helm built
//! from its Go module by `e2e/helm/build`), next to the `kubectl apply -k` install the other
//! scenarios use: `helm install` in namespaced mode runs a ChatCluster to Running; `helm upgrade`
//! with a changed value rolls the operator Deployment and the operator keeps reconciling (a scale
//! of the ChatCluster); `helm uninstall` removes the operator's objects and leaves the CRD and the
//! ChatCluster with its children in place.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chat_cluster_e2e::cluster::{TestCluster, test_spec};
use chat_cluster_e2e::harness::{
    Harness, OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE, deployment_rolled_out, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

const RELEASE: &str = "e2e-helm";
const FULLNAME: &str = "e2e-helm-chat-cluster-operator";

/// Helm: `$HELM` (e2e/run-suite sets it), else `e2e/helm/build` (cached build).
fn helm_path(h: &Harness) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HELM") {
        return Ok(p.into());
    }
    let out = std::process::Command::new(h.repo_root.join("e2e/helm/build"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running e2e/helm/build")?;
    ensure!(out.status.success(), "e2e/helm/build failed");
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

async fn helm(h: &Harness, helm: &PathBuf, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(helm)
        .env("KUBECONFIG", &h.kubeconfig)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {}", helm.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "helm {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    eprintln!("helm {}: ok", args.first().copied().unwrap_or_default());
    Ok(stdout)
}

/// Scales the `kubectl apply -k` operator to `replicas` and waits for it: two operators must not
/// reconcile the same ChatClusters.
async fn scale_kustomize_operator(h: &Harness, replicas: i32) -> Result<()> {
    h.kubectl(&[
        "-n",
        OPERATOR_NAMESPACE,
        "scale",
        &format!("deployment/{OPERATOR_DEPLOYMENT}"),
        &format!("--replicas={replicas}"),
    ])
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), OPERATOR_NAMESPACE);
    wait_for(
        &format!("kubectl-installed operator at {replicas} replicas"),
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get(OPERATOR_DEPLOYMENT).await?;
                let status = d.status.unwrap_or_default();
                Ok((status.replicas.unwrap_or(0) == replicas
                    && status.ready_replicas.unwrap_or(0) == replicas)
                    .then_some(()))
            }
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn helm_install_upgrade_and_uninstall_of_the_operator() {
    let h = Harness::from_env().await.unwrap();
    h.install_operator().await.unwrap();
    let helm_bin = helm_path(&h).unwrap();
    let result = scenario(&h, &helm_bin).await;
    // Whatever happened: no release left behind, the kubectl-installed operator back.
    let _ = helm(
        &h,
        &helm_bin,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            "e2e-helm-op",
            "--wait",
            "--ignore-not-found",
        ],
    )
    .await;
    h.install_operator().await.unwrap();
    result.unwrap();
}

async fn scenario(h: &Harness, helm_bin: &PathBuf) -> Result<()> {
    let chart = h.repo_root.join("manifests/helm/chat-cluster-operator");
    let chart = chart.to_string_lossy();
    let (repository, tag) = h
        .images
        .operator
        .rsplit_once(':')
        .context("the operator image has no tag")?;
    // The release's namespace has a fixed name (so a failed run's release is found and removed);
    // it carries the suite's label, so e2e/run-suite sweeps it too.
    let op_ns = "e2e-helm-op";
    h.kubectl(&["create", "namespace", op_ns]).await.ok();
    h.kubectl(&[
        "label",
        "namespace",
        op_ns,
        "chat-cluster.io/e2e=true",
        "--overwrite",
    ])
    .await?;
    let data = h.namespace("helm-data").await?;
    scale_kustomize_operator(h, 0).await?;

    // Install: namespaced mode, the CRD left to the kubectl install (Helm does not adopt it).
    let watch = format!("watchNamespaces={{{}}}", data.name);
    let image_repository = format!("image.repository={repository}");
    let image_tag = format!("image.tag={tag}");
    helm(
        h,
        helm_bin,
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            op_ns,
            "--set",
            "crds.create=false",
            "--set",
            &image_repository,
            "--set",
            &image_tag,
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--set",
            &watch,
            "--wait",
            "--timeout",
            "300s",
        ],
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), op_ns);
    let d = deployments.get(FULLNAME).await?;
    ensure!(
        deployment_rolled_out(&d),
        "helm --wait returned before the rollout: {:?}",
        d.status
    );
    ensure!(
        d.spec.as_ref().and_then(|s| s.replicas) == Some(2),
        "replicas: {:?}",
        d.spec
    );
    Api::<PodDisruptionBudget>::namespaced(h.client.clone(), op_ns)
        .get(FULLNAME)
        .await
        .context("the operator's PDB")?;
    Api::<Role>::namespaced(h.client.clone(), &data.name)
        .get(FULLNAME)
        .await
        .context("the Role in the watched namespace")?;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), op_ns);
    wait_for(
        "a Helm-installed operator leads",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            async move {
                let lease = leases.get_opt("chat-cluster-operator").await?;
                Ok(lease
                    .and_then(|l| l.spec?.holder_identity)
                    .filter(|holder| holder.starts_with(FULLNAME)))
            }
        },
    )
    .await?;

    // A ChatCluster in the watched namespace runs.
    let mut spec = test_spec(h);
    spec.replicas = 1;
    spec.replication_log.replicas = 1;
    let cluster = TestCluster::create(h, &data.name, "helm", spec).await?;
    cluster
        .wait_running("1/1", Duration::from_secs(300))
        .await?;

    // Upgrade with a changed value: one replica, debug logs. The Deployment rolls, the PDB goes
    // (none for a single replica) and the new operator still reconciles.
    helm(
        h,
        helm_bin,
        &[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            op_ns,
            "--reuse-values",
            "--set",
            "replicaCount=1",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "300s",
        ],
    )
    .await?;
    let d = deployments.get(FULLNAME).await?;
    ensure!(
        deployment_rolled_out(&d),
        "not rolled out after the upgrade: {:?}",
        d.status
    );
    ensure!(
        d.spec.as_ref().and_then(|s| s.replicas) == Some(1),
        "replicas after the upgrade"
    );
    let env = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    ensure!(
        env.iter()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")),
        "RUST_LOG not upgraded: {env:?}"
    );
    ensure!(
        Api::<PodDisruptionBudget>::namespaced(h.client.clone(), op_ns)
            .get_opt(FULLNAME)
            .await?
            .is_none(),
        "the PDB outlived replicaCount=1"
    );
    cluster.scale(2).await?;
    cluster
        .wait_running("2/2", Duration::from_secs(300))
        .await?;

    // Uninstall: the operator's objects go; the CRD, the ChatCluster and its children stay.
    helm(
        h,
        helm_bin,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            op_ns,
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await?;
    ensure!(
        deployments.get_opt(FULLNAME).await?.is_none(),
        "Deployment left by helm uninstall"
    );
    ensure!(
        Api::<ServiceAccount>::namespaced(h.client.clone(), op_ns)
            .get_opt(FULLNAME)
            .await?
            .is_none(),
        "ServiceAccount left by helm uninstall"
    );
    ensure!(
        Api::<Role>::namespaced(h.client.clone(), &data.name)
            .get_opt(FULLNAME)
            .await?
            .is_none(),
        "Role left by helm uninstall"
    );
    Api::<CustomResourceDefinition>::all(h.client.clone())
        .get("chatclusters.chat-cluster.io")
        .await
        .context("the CRD after helm uninstall")?;
    cluster
        .get()
        .await
        .context("the ChatCluster after helm uninstall")?;
    ensure!(
        Api::<Deployment>::namespaced(h.client.clone(), &data.name)
            .get_opt("helm-chat-server")
            .await?
            .is_some(),
        "the ChatCluster's Deployment went with the operator"
    );
    data.delete(Duration::from_secs(300)).await?;
    h.kubectl(&[
        "delete",
        "namespace",
        op_ns,
        "--wait=true",
        "--timeout=120s",
    ])
    .await?;
    Ok(())
}
