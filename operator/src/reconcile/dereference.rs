//! Dereference step: reads what the build and apply steps need from the cluster — the existing
//! children (for the kept Redis password, the immutable claim sizes and the apply comparison) and
//! the chat-server pods to gate. Generates the Redis password the first time.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Client};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::build::{Component, Names, PASSWORD_KEY, selector_string};
use super::validate::Validated;

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

/// The children as they exist now (None: absent).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// `{name}-broker` Secret.
    pub broker_secret: Option<Secret>,
    /// `{name}-broker` Service.
    pub broker_service: Option<Service>,
    /// `{name}-broker` StatefulSet.
    pub broker: Option<StatefulSet>,
    /// `{name}-log-headless` Service.
    pub log_headless_service: Option<Service>,
    /// `{name}-log` Service.
    pub log_service: Option<Service>,
    /// `{name}-log` StatefulSet.
    pub log: Option<StatefulSet>,
    /// `{name}-log` PDB.
    pub log_pdb: Option<PodDisruptionBudget>,
    /// `{name}-chat-server` Deployment.
    pub chat_server: Option<Deployment>,
    /// `{name}-chat-server` Service.
    pub chat_service: Option<Service>,
    /// `{name}-chat-server` PDB.
    pub chat_pdb: Option<PodDisruptionBudget>,
    /// The chat-server pods.
    pub chat_pods: Vec<Pod>,
    /// The replication-log pods.
    pub log_pods: Vec<Pod>,
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

fn read(what: impl Into<String>) -> impl FnOnce(kube::Error) -> DereferenceError {
    let what = what.into();
    move |source| DereferenceError::Read { what, source }
}

/// Reads the existing children and pods of `cluster`.
pub async fn observe(client: &Client, cluster: &Validated) -> Result<Observed, DereferenceError> {
    let ns = &cluster.namespace;
    let names = Names::of(&cluster.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (broker_secret, broker_service, broker, log_headless_service, log_service, log, log_pdb) =
        tokio::try_join!(
            async {
                secrets
                    .get_opt(&names.broker)
                    .await
                    .map_err(read(format!("Secret {}", names.broker)))
            },
            async {
                services
                    .get_opt(&names.broker)
                    .await
                    .map_err(read(format!("Service {}", names.broker)))
            },
            async {
                sets.get_opt(&names.broker)
                    .await
                    .map_err(read(format!("StatefulSet {}", names.broker)))
            },
            async {
                services
                    .get_opt(&names.log_headless)
                    .await
                    .map_err(read(format!("Service {}", names.log_headless)))
            },
            async {
                services
                    .get_opt(&names.log)
                    .await
                    .map_err(read(format!("Service {}", names.log)))
            },
            async {
                sets.get_opt(&names.log)
                    .await
                    .map_err(read(format!("StatefulSet {}", names.log)))
            },
            async {
                pdbs.get_opt(&names.log)
                    .await
                    .map_err(read(format!("PodDisruptionBudget {}", names.log)))
            },
        )?;
    let chat_selector =
        ListParams::default().labels(&selector_string(&cluster.name, Component::ChatServer));
    let log_selector =
        ListParams::default().labels(&selector_string(&cluster.name, Component::ReplicationLog));
    let (chat_server, chat_service, chat_pdb, chat_pods, log_pods) = tokio::try_join!(
        async {
            deployments
                .get_opt(&names.chat_server)
                .await
                .map_err(read(format!("Deployment {}", names.chat_server)))
        },
        async {
            services
                .get_opt(&names.chat_server)
                .await
                .map_err(read(format!("Service {}", names.chat_server)))
        },
        async {
            pdbs.get_opt(&names.chat_server)
                .await
                .map_err(read(format!("PodDisruptionBudget {}", names.chat_server)))
        },
        async {
            pods.list(&chat_selector)
                .await
                .map_err(read("chat-server pods"))
        },
        async {
            pods.list(&log_selector)
                .await
                .map_err(read("replication-log pods"))
        },
    )?;
    Ok(Observed {
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
        chat_pods: chat_pods.items,
        log_pods: log_pods.items,
    })
}

/// Derives the build facts from what exists; a new password only when no Secret holds one.
pub fn facts(observed: &Observed) -> Facts {
    let password = observed
        .broker_secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(PASSWORD_KEY))
        .and_then(|p| String::from_utf8(p.0.clone()).ok())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(new_password);
    Facts {
        password,
        broker_claim_size: claim_size(observed.broker.as_ref()),
        log_claim_size: claim_size(observed.log.as_ref()),
    }
}

fn claim_size(set: Option<&StatefulSet>) -> Option<String> {
    set?.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("data"))?
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
