//! Dereference step: everything the later steps need from outside the ChatCluster, read once —
//! the existing children (for the kept Redis password, the immutable claim sizes and the apply
//! comparison), every child pod and claim (their health, [`health::problems`], names stuck pods
//! in the status), the chat-server and replication-log pods, and the data plane's `/status`
//! documents (the gate decides on the chat-servers', the status reports the log replicas'
//! positions), and the StorageClasses the claims name ([`storage::resize_plan`] decides which
//! claims to expand). Generates the Redis password the first time. All the reconcile's reads of the
//! cluster and the data plane happen here, so gate and status decide on data, without I/O.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::children::{ChildKind, Children, Existing};
use super::gate;
use super::health::{self, PodProblem};
use super::storage;
use super::validate::Validated;
use crate::crd::AuthMode;
use crate::names::{
    CHAT_PORT, Component, DATA_VOLUME, HMAC_KEY_KEY, INTERNAL_TOKEN_KEY, LABEL_INSTANCE, LOG_PORT,
    Names, PASSWORD_KEY, role_password_key, selector_string,
};
use crate::probe;
use chat_wire::redis_acl::RedisRole;
use chat_wire::{NodeStatus, ReplicaStatus};

/// Facts from the cluster the pure build step depends on. Its `Debug` leaves out every secret
/// (passwords, key, token), so a `?facts` in a log line cannot leak one.
#[derive(Clone, PartialEq)]
pub struct Facts {
    /// The Redis passwords: each the existing Secret's, or a new random one.
    pub passwords: BrokerPasswords,
    /// Claim size the existing broker StatefulSet was created with (claim templates are immutable).
    pub broker_claim_size: Option<String>,
    /// Claim size the existing log StatefulSet was created with.
    pub log_claim_size: Option<String>,
    /// The HS256 key for the generated `{name}-auth` Secret: the existing Secret's, or a new
    /// random one; None when that Secret is not wanted (mode `none`, or `spec.auth.secretName`).
    pub auth_key: Option<String>,
    /// The data plane's internal token: the existing `{name}-internal` Secret's, or a new one.
    pub internal_token: String,
}

impl std::fmt::Debug for Facts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facts")
            .field("passwords", &"***")
            .field("broker_claim_size", &self.broker_claim_size)
            .field("log_claim_size", &self.log_claim_size)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "***"))
            .field("internal_token", &"***")
            .finish()
    }
}

/// The broker Secret's passwords, one per Redis ACL user (`chat_wire::redis_acl`). No `Debug`
/// (see [`Facts`]).
#[derive(Clone, PartialEq)]
pub struct BrokerPasswords {
    /// The `admin` user's (key `password`).
    pub admin: String,
    /// The chat-server user's (key `chat-server-password`).
    pub chat_server: String,
    /// The replication-log user's (key `replication-log-password`).
    pub replication_log: String,
}

impl BrokerPasswords {
    /// The password of `role`'s user.
    pub fn of(&self, role: RedisRole) -> &str {
        match role {
            RedisRole::ChatServer => &self.chat_server,
            RedisRole::ReplicationLog => &self.replication_log,
        }
    }
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
    pub chat_statuses: BTreeMap<String, NodeStatus>,
    /// `/status` of every running replication-log replica that answered, by pod name.
    pub log_statuses: BTreeMap<String, ReplicaStatus>,
    /// Claims kept from an earlier ChatCluster of the same name ([`storage::retained_claims`]).
    pub retained_claims: Vec<String>,
    /// Claims to expand, or that cannot grow, for the spec's storage sizes
    /// ([`storage::resize_plan`]).
    pub resize: Vec<storage::Resize>,
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
    // Boxed: the fifteen GETs' futures are large, and a debug build's reconcile future overflowed
    // the 2 MiB worker stack with them inline.
    let (children, chat_pods, log_pods, broker_pods, claims) = tokio::try_join!(
        Box::pin(existing_children(client, cluster)),
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
    let claims = storage::own_claims(&cluster.name, claims);
    let problems = health::problems(&all_pods, &claims);
    let retained_claims = storage::retained_claims(cluster.created, &claims);
    // Without class facts every undersized bound claim comes out as an expansion: only those
    // claims' classes are worth a read.
    let undersized: Vec<PersistentVolumeClaim> = {
        let unknown = storage::resize_plan(&cluster.spec, &claims, &BTreeMap::new());
        claims
            .iter()
            .filter(|c| unknown.iter().any(|r| r.claim() == c.name_any()))
            .cloned()
            .collect()
    };
    let classes = storage_classes(client, &undersized).await;
    let resize = storage::resize_plan(&cluster.spec, &undersized, &classes);
    // The pods were started with the existing internal token (none yet: nothing to send).
    let token = secret_value(children.internal_secret.as_ref(), INTERNAL_TOKEN_KEY);
    let token = token.as_deref();
    let ((chat_statuses, chat_forbidden), (log_statuses, log_forbidden)) = tokio::join!(
        chat_statuses(client, &cluster.namespace, &chat_pods, token),
        log_statuses(client, &cluster.namespace, &log_pods, token),
    );
    // A probe the API server refuses for lack of RBAC is a problem like a stuck pod: named in
    // Degraded rather than leaving the cluster Pending without a word.
    let mut problems = problems;
    problems.extend(chat_forbidden.into_iter().chain(log_forbidden));
    health::sort(&mut problems);
    Ok(Observed {
        children,
        chat_pods,
        log_pods,
        problems,
        chat_statuses,
        log_statuses,
        retained_claims,
        resize,
    })
}

/// What the StorageClasses named by `claims` allow, by name; a class the operator may not read
/// (namespaced install, no cluster-scoped grant) or that failed to answer is
/// [`storage::ClassFacts::Unknown`].
async fn storage_classes(
    client: &Client,
    claims: &[PersistentVolumeClaim],
) -> BTreeMap<String, storage::ClassFacts> {
    let names: std::collections::BTreeSet<&str> = claims
        .iter()
        .filter_map(|c| c.spec.as_ref()?.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
        .collect();
    let api: Api<StorageClass> = Api::all(client.clone());
    let read = names.into_iter().map(|name| {
        let api = api.clone();
        async move {
            let facts = match api.get_opt(name).await {
                Ok(Some(class)) => storage::ClassFacts::Read {
                    allows_expansion: class.allow_volume_expansion == Some(true),
                },
                Ok(None) => storage::ClassFacts::Missing,
                Err(e) => {
                    tracing::debug!(class = name, error = %e, "StorageClass not readable");
                    storage::ClassFacts::Unknown
                }
            };
            (name.to_owned(), facts)
        }
    });
    join_all(read).await.into_iter().collect()
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
    let (log_pdb, chat_server, chat_service, chat_pdb, auth_secret, internal_secret) = tokio::try_join!(
        get(client, ns, &names.log),
        get(client, ns, &names.chat_server),
        get(client, ns, &names.chat_server),
        get(client, ns, &names.chat_server),
        get_if(wants_auth_secret(cluster), client, ns, &names.auth),
        get(client, ns, &names.internal),
    )?;
    let policies = cluster.spec.network_policy.enabled;
    let (broker_policy, log_policy, chat_policy) = tokio::try_join!(
        get_if(policies, client, ns, &names.broker),
        get_if(policies, client, ns, &names.log),
        get_if(policies, client, ns, &names.chat_server),
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
        auth_secret,
        internal_secret,
        broker_policy,
        log_policy,
        chat_policy,
    })
}

/// Whether the operator generates (and so reads) the `{name}-auth` Secret: token mode without
/// `spec.auth.secretName`.
pub fn wants_auth_secret(cluster: &Validated) -> bool {
    let auth = &cluster.spec.auth;
    auth.mode == AuthMode::Token && auth.secret_name.is_none()
}

/// [`get`] when `wanted`, else None without a request (an object the spec does not ask for is
/// neither read nor checked for ownership).
async fn get_if<K: ChildKind>(
    wanted: bool,
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, DereferenceError> {
    if wanted {
        get(client, namespace, name).await
    } else {
        Ok(None)
    }
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

/// What the probes of some pods found: the documents that were read, by pod name, and a
/// [`health::probe_forbidden`] problem for each pod the API server would not let the operator
/// probe.
type Probed<T> = (BTreeMap<String, T>, Vec<PodProblem>);

/// Splits probe results into documents and RBAC refusals (other failures are "not yet").
fn probed<T>(results: Vec<(&Pod, Result<T, probe::ProbeError>)>, what: &str) -> Probed<T> {
    let mut documents = BTreeMap::new();
    let mut forbidden = Vec::new();
    for (pod, result) in results {
        match result {
            Ok(status) => {
                documents.insert(pod.name_any(), status);
            }
            Err(e) => {
                if let Some(message) = e.forbidden() {
                    forbidden.push(health::probe_forbidden(pod, message));
                }
                tracing::debug!(pod = pod.name_any(), error = %e, "{what} status not readable");
            }
        }
    }
    (documents, forbidden)
}

/// `/status` of each chat-server pod the gate still has to decide on, by pod name.
async fn chat_statuses(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
    token: Option<&str>,
) -> Probed<NodeStatus> {
    let probes = pods
        .iter()
        .filter(|pod| gate::awaits_decision(pod) && probeable(pod))
        .map(|pod| async move {
            let name = pod.name_any();
            let result =
                probe::status::<NodeStatus>(client, namespace, &name, CHAT_PORT, token).await;
            (pod, result)
        });
    probed(join_all(probes).await, "chat-server")
}

/// `/status` of every running replication-log replica that answers, by pod name.
async fn log_statuses(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
    token: Option<&str>,
) -> Probed<ReplicaStatus> {
    let probes = pods
        .iter()
        .filter(|pod| probeable(pod))
        .map(|pod| async move {
            let name = pod.name_any();
            let result =
                probe::status::<ReplicaStatus>(client, namespace, &name, LOG_PORT, token).await;
            (pod, result)
        });
    probed(join_all(probes).await, "replication-log")
}

/// Derives the build facts from what exists; a new password, key or token only when no Secret
/// holds one (never a silent rotation).
pub fn facts(cluster: &Validated, observed: &Observed) -> Facts {
    let children = &observed.children;
    let kept_or_new = |secret: Option<&Secret>, key: &str, length: usize| {
        secret_value(secret, key).unwrap_or_else(|| random_alphanumeric(length))
    };
    Facts {
        passwords: BrokerPasswords {
            admin: kept_or_new(children.broker_secret.as_ref(), PASSWORD_KEY, 32),
            chat_server: kept_or_new(
                children.broker_secret.as_ref(),
                role_password_key(RedisRole::ChatServer),
                32,
            ),
            replication_log: kept_or_new(
                children.broker_secret.as_ref(),
                role_password_key(RedisRole::ReplicationLog),
                32,
            ),
        },
        broker_claim_size: claim_size(children.broker.as_ref()),
        log_claim_size: claim_size(children.log.as_ref()),
        // 64 alphanumerics: 381 bits, above the 256 bits RFC 7518 §3.2 asks of an HS256 key.
        auth_key: wants_auth_secret(cluster)
            .then(|| kept_or_new(children.auth_secret.as_ref(), HMAC_KEY_KEY, 64)),
        internal_token: kept_or_new(children.internal_secret.as_ref(), INTERNAL_TOKEN_KEY, 32),
    }
}

/// The non-empty UTF-8 value of `key` in `secret`.
fn secret_value(secret: Option<&Secret>, key: &str) -> Option<String> {
    secret?
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|v| !v.is_empty())
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

/// `length` random alphanumeric characters (URL-safe, so a password can sit inside `REDIS_URL`).
fn random_alphanumeric(length: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuthMode, ChatCluster};
    use crate::reconcile::validate::validate;
    use k8s_openapi::ByteString;

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn observed(auth: Option<Secret>, internal: Option<Secret>) -> Observed {
        Observed {
            children: Children {
                broker_secret: Some(secret(PASSWORD_KEY, "kept-password")),
                broker_service: None,
                broker: None,
                log_headless_service: None,
                log_service: None,
                log: None,
                log_pdb: None,
                chat_server: None,
                chat_service: None,
                chat_pdb: None,
                auth_secret: auth,
                internal_secret: internal,
                broker_policy: None,
                log_policy: None,
                chat_policy: None,
            },
            chat_pods: vec![],
            log_pods: vec![],
            problems: vec![],
            chat_statuses: BTreeMap::new(),
            log_statuses: BTreeMap::new(),
            retained_claims: vec![],
            resize: vec![],
        }
    }

    #[test]
    fn secrets_are_generated_once_and_kept_never_rotated() {
        let token_mode = validate(&ChatCluster::test()).expect("valid");
        // Nothing exists: a new key (64) and token (32).
        let f = facts(&token_mode, &observed(None, None));
        assert_eq!(f.passwords.admin, "kept-password");
        let shown = format!("{f:?}");
        assert!(
            !shown.contains("kept-password") && !shown.contains(&f.internal_token),
            "{shown}"
        );
        // A Secret from before the ACL users gets their passwords added, the admin's kept.
        assert_eq!(f.passwords.chat_server.len(), 32);
        assert_eq!(f.passwords.replication_log.len(), 32);
        assert_ne!(f.passwords.chat_server, f.passwords.replication_log);
        assert_eq!(f.auth_key.as_ref().map(String::len), Some(64));
        assert_eq!(f.internal_token.len(), 32);
        // They exist: kept byte for byte, on every reconcile.
        let o = observed(
            Some(secret(HMAC_KEY_KEY, "existing-key")),
            Some(secret(INTERNAL_TOKEN_KEY, "existing-token")),
        );
        for _ in 0..3 {
            let f = facts(&token_mode, &o);
            assert_eq!(f.auth_key.as_deref(), Some("existing-key"));
            assert_eq!(f.internal_token, "existing-token");
        }
        // An empty value is no key: a new one.
        let f = facts(&token_mode, &observed(Some(secret(HMAC_KEY_KEY, "")), None));
        assert_eq!(f.auth_key.as_ref().map(String::len), Some(64));
        // No generated key in mode none or with the user's Secret.
        let mut none = ChatCluster::test();
        none.spec.auth.mode = AuthMode::None;
        let mut named = ChatCluster::test();
        named.spec.auth.secret_name = Some("theirs".into());
        for cluster in [none, named] {
            let v = validate(&cluster).expect("valid");
            assert!(!wants_auth_secret(&v));
            assert_eq!(facts(&v, &o).auth_key, None);
        }
    }
}
