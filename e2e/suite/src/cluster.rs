//! One ChatCluster under test: creating it from the suite's spec, waiting for its phase and
//! ready count, scaling and patching it the way a user would, listing its pods per component,
//! `kubectl get chatclusters` rows, and a recorder of its phase and conditions over time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chat_cluster_operator::crd::{
    ChatCluster, ChatClusterSpec, ImagePullPolicy, Phase, StorageSpec,
};
use chat_cluster_operator::names::{INTERNAL_TOKEN_KEY, Names};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokio::task::JoinHandle;

use crate::harness::{Harness, wait_for};
use crate::now_ms;
use crate::proxy::{CHAT_PORT, Credentials, LOG_PORT, Target};

/// The three components, as in the `app.kubernetes.io/component` label: the operator's own
/// definition, so the suite and the operator cannot disagree on label values.
pub use chat_cluster_operator::names::Component;

/// The spec the scenarios start from: the images under test, small volumes, 3 chat-servers,
/// 2 log replicas, maxLag 0, token auth (the default: [`crate::scenario::Scenario`] mints a
/// client token from the ChatCluster's Secret, as a user would). Fields the suite does not care about keep the CRD's
/// defaults, so a new defaulted spec field does not break the suite.
pub fn test_spec(harness: &Harness) -> ChatClusterSpec {
    let storage = StorageSpec {
        size: "256Mi".to_owned(),
        storage_class_name: None,
    };
    let mut spec = ChatClusterSpec {
        replicas: 3,
        image: harness.images.chat_server.clone(),
        image_pull_policy: ImagePullPolicy::IfNotPresent,
        max_message_bytes: 4096,
        ..ChatClusterSpec::default()
    };
    spec.broker.image = harness.images.redis.clone();
    spec.broker.storage = storage.clone();
    spec.replication_log.replicas = 2;
    spec.replication_log.storage = storage;
    spec.rollout.max_lag = 0;
    spec.rollout.catch_up_timeout = "3m".to_owned();
    // The suite's load generator sends for many clients through one token, like a backend
    // publishing for its users: the per-author write limits (10 id'd writes/s, 50 writes/s per
    // node by default) would throttle it to a crawl. They are tested in
    // chat-server/tests/limits.rs; here they are off.
    spec.chat_server.id_write_rate_per_author = Some(0);
    spec.chat_server.write_rate_per_author = Some(0);
    spec
}

/// A ChatCluster in a scenario's namespace.
#[derive(Clone)]
pub struct TestCluster {
    /// The harness.
    pub harness: Harness,
    /// Namespace.
    pub namespace: String,
    /// ChatCluster name.
    pub name: String,
}

/// One row of `kubectl get chatclusters`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintedRow {
    /// NAME.
    pub name: String,
    /// READY (`ready/desired`).
    pub ready: String,
    /// PHASE.
    pub phase: String,
    /// MESSAGES.
    pub messages: String,
}

/// Parses `kubectl get chatclusters` output (with its header line) into rows; an error when the
/// header is not `NAME READY PHASE MESSAGES AGE`.
pub fn parse_printed(output: &str) -> Result<Vec<PrintedRow>> {
    let mut lines = output.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if header != ["NAME", "READY", "PHASE", "MESSAGES", "AGE"] {
        bail!("unexpected `kubectl get chatclusters` columns: {header:?}");
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.as_slice() {
                [name, ready, phase, messages, _age] => Ok(PrintedRow {
                    name: (*name).to_owned(),
                    ready: (*ready).to_owned(),
                    phase: (*phase).to_owned(),
                    messages: (*messages).to_owned(),
                }),
                _ => bail!("unexpected `kubectl get chatclusters` row: {line:?}"),
            }
        })
        .collect()
}

impl TestCluster {
    /// Creates ChatCluster `name` with `spec` in `namespace`.
    pub async fn create(
        harness: &Harness,
        namespace: &str,
        name: &str,
        spec: ChatClusterSpec,
    ) -> Result<TestCluster> {
        let cc = ChatCluster::new(name, spec);
        Api::<ChatCluster>::namespaced(harness.client.clone(), namespace)
            .create(&PostParams::default(), &cc)
            .await
            .with_context(|| format!("creating ChatCluster {namespace}/{name}"))?;
        Ok(TestCluster {
            harness: harness.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The ChatCluster API of this namespace.
    pub fn api(&self) -> Api<ChatCluster> {
        Api::namespaced(self.harness.client.clone(), &self.namespace)
    }

    /// The data plane's internal token (Secret `{name}-internal`, which the operator generates
    /// once): replicas serve channel pages only to requests carrying it (`X-Internal-Token`).
    pub async fn internal_token(&self) -> Result<String> {
        let secret_name = Names::of(&self.name).internal;
        let secret = Api::<Secret>::namespaced(self.harness.client.clone(), &self.namespace)
            .get(&secret_name)
            .await
            .with_context(|| format!("getting Secret {}/{secret_name}", self.namespace))?;
        let bytes = secret
            .data
            .and_then(|mut d| d.remove(INTERNAL_TOKEN_KEY))
            .with_context(|| format!("Secret {secret_name} has no key {INTERNAL_TOKEN_KEY}"))?;
        String::from_utf8(chat_cluster_operator::token::key_bytes(&bytes.0).to_vec())
            .with_context(|| format!("Secret {secret_name}: {INTERNAL_TOKEN_KEY} is not UTF-8"))
    }

    /// The pod API of this namespace.
    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.harness.client.clone(), &self.namespace)
    }

    /// The current object.
    pub async fn get(&self) -> Result<ChatCluster> {
        self.api()
            .get(&self.name)
            .await
            .with_context(|| format!("getting ChatCluster {}/{}", self.namespace, self.name))
    }

    /// Label selector of one component's pods.
    pub fn selector(&self, component: Component) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
            self.name,
            component.label()
        )
    }

    /// Credentials for this ChatCluster in token mode, as a user would get them: a client token
    /// for user `e2e` granting `channels` (read and publish) for two hours, minted with the
    /// operator's `token` code from the ChatCluster's auth Secret (the key chat-server checks),
    /// and the data plane's internal token from `{name}-internal`.
    pub async fn credentials(&self, channels: &[&str]) -> Result<Credentials> {
        use chat_cluster_operator::token;

        let (key, auth) =
            token::cluster_key(self.harness.client.clone(), &self.namespace, &self.name).await?;
        let grant = token::Grant {
            user: "e2e".to_owned(),
            name: None,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            subscribe: Vec::new(),
            publish: Vec::new(),
            ttl: Duration::from_secs(2 * 3600),
            audience: auth.audience,
            issuer: auth.issuer,
        };
        let client_token = token::mint(&grant, &key, token::unix_now())?;
        let internal = self.internal_token().await?;
        Ok(Credentials {
            token: client_token,
            internal,
        })
    }

    /// The chat-server Service.
    pub fn chat_service(&self) -> Target {
        Target::service(
            &self.namespace,
            &format!("{}-chat-server", self.name),
            CHAT_PORT,
        )
    }

    /// A chat-server pod.
    pub fn chat_pod(&self, pod: &str) -> Target {
        Target::pod(&self.namespace, pod, CHAT_PORT)
    }

    /// A replication-log pod.
    pub fn log_pod(&self, pod: &str) -> Target {
        Target::pod(&self.namespace, pod, LOG_PORT)
    }

    /// One component's pods that are not being deleted, sorted by name.
    pub async fn pods(&self, component: Component) -> Result<Vec<Pod>> {
        let list = self
            .pods_api()
            .list(&ListParams::default().labels(&self.selector(component)))
            .await
            .context("listing pods")?;
        let mut pods: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|p| p.name_any());
        Ok(pods)
    }

    /// Names of one component's pods that are not being deleted.
    pub async fn pod_names(&self, component: Component) -> Result<Vec<String>> {
        Ok(self
            .pods(component)
            .await?
            .iter()
            .map(|p| p.name_any())
            .collect())
    }

    /// Every chat-server pod and log replica, as proxy targets (the holders of the history).
    pub async fn holders(&self) -> Result<Vec<Target>> {
        let mut targets: Vec<Target> = self
            .pod_names(Component::ChatServer)
            .await?
            .iter()
            .map(|p| self.chat_pod(p))
            .collect();
        for pod in self.pod_names(Component::ReplicationLog).await? {
            targets.push(self.log_pod(&pod));
        }
        Ok(targets)
    }

    /// Waits until the status is `Running` for the current generation with `ready` (e.g. `"3/3"`)
    /// and `kubectl get chatclusters` prints the same; returns the printed row.
    pub async fn wait_running(&self, ready: &str, timeout: Duration) -> Result<PrintedRow> {
        let what = format!(
            "ChatCluster {}/{} Running with READY {ready}",
            self.namespace, self.name
        );
        wait_for(&what, timeout, || async {
            let cc = self.get().await?;
            let Some(status) = &cc.status else {
                return Ok(None);
            };
            let current = status.observed_generation == cc.metadata.generation;
            if !(current && status.phase == Some(Phase::Running) && status.ready == ready) {
                return Ok(None);
            }
            let row = self.printed_row().await?;
            Ok((row.phase == "Running" && row.ready == ready).then_some(row))
        })
        .await
    }

    /// Waits until the status phase is `phase` (any generation).
    pub async fn wait_phase(&self, phase: Phase, timeout: Duration) -> Result<ChatCluster> {
        let what = format!(
            "ChatCluster {}/{} {}",
            self.namespace,
            self.name,
            phase.as_str()
        );
        wait_for(&what, timeout, || async {
            let cc = self.get().await?;
            let now = cc.status.as_ref().and_then(|s| s.phase);
            Ok((now == Some(phase)).then_some(cc))
        })
        .await
    }

    /// This cluster's row of `kubectl get chatclusters`.
    pub async fn printed_row(&self) -> Result<PrintedRow> {
        let out = self
            .harness
            .kubectl(&["get", "chatclusters", "-n", &self.namespace, &self.name])
            .await?;
        parse_printed(&out)?
            .into_iter()
            .find(|r| r.name == self.name)
            .context("ChatCluster missing from `kubectl get chatclusters`")
    }

    /// `kubectl scale chatcluster/{name} --replicas=n` (the scale subresource).
    pub async fn scale(&self, replicas: i32) -> Result<()> {
        self.harness
            .kubectl(&[
                "-n",
                &self.namespace,
                "scale",
                &format!("chatcluster/{}", self.name),
                &format!("--replicas={replicas}"),
            ])
            .await
            .map(drop)
    }

    /// Merge-patches the spec (as a user's `kubectl patch --type merge` would).
    pub async fn patch_spec(&self, spec: serde_json::Value) -> Result<ChatCluster> {
        self.api()
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .with_context(|| format!("patching ChatCluster {}/{}", self.namespace, self.name))
    }

    /// Starts recording the ChatCluster's phase and conditions once a second.
    pub fn record_phases(&self) -> PhaseRecorder {
        let records = Arc::new(Mutex::new(Vec::new()));
        let cluster = self.clone();
        let sink = records.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(cc) = cluster.get().await {
                    let status = cc.status.unwrap_or_default();
                    let phase = status
                        .phase
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default();
                    let conditions = status
                        .conditions
                        .iter()
                        .filter(|c| c.status == "True")
                        .map(|c| format!("{}:{}({})", c.type_, c.reason, c.message))
                        .collect::<Vec<_>>()
                        .join(" ");
                    if let Ok(mut records) = sink.lock() {
                        let changed = records.last().is_none_or(|r: &PhaseRecord| {
                            r.phase != phase || r.conditions != conditions
                        });
                        if changed {
                            records.push(PhaseRecord {
                                at_ms: now_ms(),
                                phase,
                                ready: status.ready,
                                conditions,
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        PhaseRecorder { records, task }
    }
}

/// A change of the ChatCluster's phase or true conditions, as seen by [`PhaseRecorder`].
#[derive(Clone, Debug)]
pub struct PhaseRecord {
    /// Local time of the observation.
    pub at_ms: i64,
    /// `status.phase`.
    pub phase: String,
    /// `status.ready`.
    pub ready: String,
    /// The True conditions as `type:reason(message)`.
    pub conditions: String,
}

/// Records the ChatCluster's phase changes until stopped.
pub struct PhaseRecorder {
    records: Arc<Mutex<Vec<PhaseRecord>>>,
    task: JoinHandle<()>,
}

impl PhaseRecorder {
    /// The changes recorded so far.
    pub fn snapshot(&self) -> Vec<PhaseRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Stops recording and returns every change.
    pub fn stop(self) -> Vec<PhaseRecord> {
        self.task.abort();
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubectl_get_chatclusters() {
        let out = "NAME   READY   PHASE     MESSAGES   AGE\ndemo   3/3     Running   5000       2m\nother  0/3     Pending   <none>     1s\n";
        let rows = parse_printed(out).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ready, "3/3");
        assert_eq!(rows[0].phase, "Running");
        assert_eq!(rows[0].messages, "5000");
        assert_eq!(rows[1].messages, "<none>");
        assert!(parse_printed("NAME AGE\nx 1s\n").is_err());
    }
}
