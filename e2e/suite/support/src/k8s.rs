//! The Kubernetes side of the test support: an API client for a kubeconfig file, and
//! [`TestNamespace`], one test's namespace, deleted when the test ends (also when it fails).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::{SupportError, kubectl, poll};

/// An API client for the cluster of the kubeconfig file `path` (its current context).
pub async fn client(path: &Path) -> Result<Client, SupportError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| SupportError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.into()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.into()))?;
    Client::try_from(config).map_err(|e| bad(e.into()))
}

/// A namespace owned by one test. [`TestNamespace::delete`] removes it and waits until it is
/// gone; dropping it without that (a test that failed or panicked) still asks the API server to
/// delete it (`kubectl delete namespace --wait=false`).
pub struct TestNamespace {
    /// Namespace name.
    pub name: String,
    client: Client,
    kubeconfig: PathBuf,
    deleted: bool,
}

impl TestNamespace {
    /// Creates namespace `name` with `labels`. A namespace of that name left by an earlier run is
    /// deleted first, and its deletion awaited (up to `within`).
    pub async fn create(
        client: &Client,
        kubeconfig: &Path,
        name: &str,
        labels: &[(&str, &str)],
        within: Duration,
    ) -> Result<TestNamespace, SupportError> {
        let api: Api<Namespace> = Api::all(client.clone());
        let api_error = |what: &str| {
            let what = format!("{what} namespace {name}");
            move |source| SupportError::Api { what, source }
        };
        if api
            .get_opt(name)
            .await
            .map_err(api_error("reading"))?
            .is_some()
        {
            TestNamespace::gone(&api, name, within).await?;
        }
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels}
        }))
        .expect("a namespace object");
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(api_error("creating"))?;
        Ok(TestNamespace {
            name: name.to_owned(),
            client: client.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
            deleted: false,
        })
    }

    /// Deletes the namespace (foreground: its pods and volumes first) and waits up to `within`
    /// until it is gone, so the next test starts on an idle node.
    pub async fn delete(mut self, within: Duration) -> Result<(), SupportError> {
        self.deleted = true;
        let api: Api<Namespace> = Api::all(self.client.clone());
        TestNamespace::gone(&api, &self.name, within).await
    }

    /// Deletes `name` (if it still exists) and waits until the API server no longer has it.
    async fn gone(api: &Api<Namespace>, name: &str, within: Duration) -> Result<(), SupportError> {
        match api.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(source) => {
                return Err(SupportError::Api {
                    what: format!("deleting namespace {name}"),
                    source,
                });
            }
        }
        poll(
            &format!("namespace {name} gone"),
            within,
            Duration::from_millis(250),
            || async { Ok::<_, kube::Error>(api.get_opt(name).await?.is_none().then_some(())) },
        )
        .await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        eprintln!("deleting namespace {} (the test did not finish)", self.name);
        let _ = kubectl(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
