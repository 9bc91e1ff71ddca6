//! Dereference step: everything the later steps need from outside the ChatCluster, read once —
//! the existing children (for the kept Redis password, the immutable claim sizes and the apply
//! comparison), every child pod and claim (their health, [`health::problems`], names stuck pods
//! in the status), the chat-server and replication-log pods, and the data plane's `/status`
//! documents (the gate decides on the chat-servers', the status reports the log replicas'
//! positions). Generates the Redis password the first time. All the reconcile's reads of the
//! cluster and the data plane happen here, so gate and status decide on data, without I/O.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::children::{ChildKind, Children, Existing};
use super::gate;
use super::health::{self, PodProblem};
use super::validate::Validated;
use crate::names::{
    CHAT_PORT, Component, DATA_VOLUME, LABEL_INSTANCE, LOG_PORT, Names, PASSWORD_KEY,
    selector_string,
};
use crate::probe::{self, LogStatus, ServerStatus};

/// Facts from the cluster the pure build step depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    /// The Redis password: the existing Secret's, or a new random one.
    pub password: String,
    /// Claim size the existing broker StatefulSet was created with (claim templates are immutable).
    pub broker_claim_size: Option<String>,
    /// Claim size the existing log StatefulSet was created with.
    pub log_claim_size: Option<String>,
}

/// What exists now: the children, the pods, and the `/status` of the pods that answered.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The children as they exist (None: absent).
    pub children: Children<Existing>,
    /// The chat-server pods.
    pub chat_pods: Vec<Pod>,
    /// The replication-log pods.
    pub log_pods: Vec<Pod>,
    /// Why child pods (of every component) are not progressing, in the order of
    /// [`health::problems`]; empty when none is stuck.
    pub problems: Vec<PodProblem>,
    /// `/status` of each chat-server pod still awaiting its gate decision that answered, by pod
    /// name (pods already passed or terminating are not probed).
    pub chat_statuses: BTreeMap<String, ServerStatus>,
    /// `/status` of every running replication-log replica that answered.
    pub log_statuses: Vec<LogStatus>,
}

/// Errors reading the cluster.
#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    /// A GET or LIST failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Reads the existing children and pods of `cluster`, then probes the pods' `/status`.
pub async fn observe(client: &Client, cluster: &Validated) -> Result<Observed, DereferenceError> {
    let (children, chat_pods, log_pods, broker_pods, claims) = tokio::try_join!(
        existing_children(client, cluster),
        pods(client, cluster, Component::ChatServer),
        pods(client, cluster, Component::ReplicationLog),
        pods(client, cluster, Component::Broker),
        claims(client, cluster),
    )?;
    let all_pods: Vec<Pod> = [&broker_pods, &log_pods, &chat_pods]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let problems = health::problems(&all_pods, &claims);
    let (chat_statuses, log_statuses) = tokio::join!(
        chat_statuses(client, &cluster.namespace, &chat_pods),
        log_statuses(client, &cluster.namespace, &log_pods),
    );
    Ok(Observed {
        children,
        chat_pods,
        log_pods,
        problems,
        chat_statuses,
        log_statuses,
    })
}

/// GETs every child by its name (a struct literal: a new child must be read here).
async fn existing_children(
    client: &Client,
    cluster: &Validated,
) -> Result<Children<Existing>, DereferenceError> {
    let names = Names::of(&cluster.name);
    let ns = cluster.namespace.as_str();
    let (broker_secret, broker_service, broker, log_headless_service, log_service, log) = tokio::try_join!(
        get(client, ns, &names.broker),
        get(client, ns, &names.broker),
        get(client, ns, &names.broker),
        get(client, ns, &names.log_headless),
        get(client, ns, &names.log),
        get(client, ns, &names.log),
    )?;
    let (log_pdb, chat_server, chat_service, chat_pdb) = tokio::try_join!(
        get(client, ns, &names.log),
        get(client, ns, &names.chat_server),
        get(client, ns, &names.chat_server),
        get(client, ns, &names.chat_server),
    )?;
    Ok(Children {
        broker_secret,
        broker_service,
        broker,
        log_headless_service,
        log_service,
        log,
        log_pdb,
        chat_server,
        chat_service,
        chat_pdb,
    })
}

/// GETs the `K` called `name`; None when it does not exist.
async fn get<K: ChildKind>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, DereferenceError> {
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| DereferenceError::Read {
            what: format!("{} {name}", K::KIND),
            source,
        })
}

/// Lists the pods of `component`.
async fn pods(
    client: &Client,
    cluster: &Validated,
    component: Component,
) -> Result<Vec<Pod>, DereferenceError> {
    let selector = ListParams::default().labels(&selector_string(&cluster.name, component));
    Api::<Pod>::namespaced(client.clone(), &cluster.namespace)
        .list(&selector)
        .await
        .map(|list| list.items)
        .map_err(|source| DereferenceError::Read {
            what: format!("{} pods", component.label()),
            source,
        })
}

/// Lists the claims of the cluster's StatefulSets (the StatefulSet controller labels them with
/// the pod selector, which holds the instance label).
async fn claims(
    client: &Client,
    cluster: &Validated,
) -> Result<Vec<PersistentVolumeClaim>, DereferenceError> {
    let selector = ListParams::default().labels(&format!("{LABEL_INSTANCE}={}", cluster.name));
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &cluster.namespace)
        .list(&selector)
        .await
        .map(|list| list.items)
        .map_err(|source| DereferenceError::Read {
            what: "PersistentVolumeClaims".into(),
            source,
        })
}

/// Whether the pod can be probed through the API server yet: Running with an IP.
fn probeable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.pod_ip.is_some() && s.phase.as_deref() == Some("Running"))
}

/// `/status` of each chat-server pod the gate still has to decide on, by pod name.
async fn chat_statuses(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
) -> BTreeMap<String, ServerStatus> {
    let probes = pods
        .iter()
        .filter(|pod| gate::awaits_decision(pod) && probeable(pod))
        .map(|pod| async move {
            let name = pod.name_any();
            match probe::status::<ServerStatus>(client, namespace, &name, CHAT_PORT).await {
                Ok(status) => Some((name, status)),
                Err(e) => {
                    tracing::debug!(pod = name, error = %e, "chat-server status not readable yet");
                    None
                }
            }
        });
    join_all(probes).await.into_iter().flatten().collect()
}

/// `/status` of every running replication-log replica that answers.
async fn log_statuses(client: &Client, namespace: &str, pods: &[Pod]) -> Vec<LogStatus> {
    let probes = pods
        .iter()
        .filter(|pod| probeable(pod))
        .map(|pod| async move {
            probe::status::<LogStatus>(client, namespace, &pod.name_any(), LOG_PORT)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "replication-log status not readable"))
                .ok()
        });
    join_all(probes).await.into_iter().flatten().collect()
}

/// Derives the build facts from what exists; a new password only when no Secret holds one.
pub fn facts(observed: &Observed) -> Facts {
    let password = observed
        .children
        .broker_secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(PASSWORD_KEY))
        .and_then(|p| String::from_utf8(p.0.clone()).ok())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(new_password);
    Facts {
        password,
        broker_claim_size: claim_size(observed.children.broker.as_ref()),
        log_claim_size: claim_size(observed.children.log.as_ref()),
    }
}

fn claim_size(set: Option<&StatefulSet>) -> Option<String> {
    set?.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(DATA_VOLUME))?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// 32 random alphanumeric characters (URL-safe, so it can sit inside `REDIS_URL`).
fn new_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}
