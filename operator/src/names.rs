//! The names every part of the operator shares: child object names, the `app.kubernetes.io/*`
//! labels and selectors, the data plane's ports and the Redis password keys, and the longest
//! ChatCluster name the derived names allow.
//!
//! A leaf module: it imports nothing from the crate, so the CRD, the reconcile steps and the
//! controller can all depend on it without depending on each other. The names are part of the
//! contract other components rely on (`CONTRACT.md`): broker `{name}-broker` (StatefulSet, Service,
//! Secret with keys `password` (the `admin` ACL user), `chat-server-password` and
//! `replication-log-password`), replication log `{name}-log` (StatefulSet, client Service, PDB) and
//! `{name}-log-headless`, chat-server `{name}-chat-server` (Deployment, Service, PDB), the
//! NetworkPolicies `{name}-broker`, `{name}-log` and `{name}-chat-server`, the HS256
//! key Secret `{name}-auth` (key `hmac-key`) and the internal token Secret `{name}-internal` (key
//! `token`).

use std::collections::BTreeMap;

use chat_wire::redis_acl::RedisRole;

/// Value of `app.kubernetes.io/name` on every child.
pub const APP_NAME: &str = "chat-cluster";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "chat-cluster-operator";
/// Label key naming the application (`app.kubernetes.io/name`, Kubernetes recommended labels).
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label key naming the owning ChatCluster.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label key naming the component.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Label key naming the manager.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotation on every child: a hash of the object as the operator last applied it. A child whose
/// live object holds the current hash (and every built field) is not patched; a spec change that
/// only drops a field (an annotation, a node selector entry) changes the hash, so the apply goes
/// out and server-side apply removes what the operator's field manager no longer sets.
pub const ANNOTATION_APPLIED_HASH: &str = "chat-cluster.io/applied-hash";

/// Key of the Redis `admin` user's password in the broker Secret (every command; for people and
/// the broker's readiness probe, never given to a data-plane pod).
pub const PASSWORD_KEY: &str = "password";

/// Key of `role`'s Redis password in the broker Secret: `chat-server-password`,
/// `replication-log-password` (ACL users of `chat_wire::redis_acl`).
pub const fn role_password_key(role: RedisRole) -> &'static str {
    match role {
        RedisRole::ChatServer => "chat-server-password",
        RedisRole::ReplicationLog => "replication-log-password",
    }
}

/// The broker container's variable holding `role`'s password (expanded into its `--user` rule).
pub const fn broker_role_password_env(role: RedisRole) -> &'static str {
    match role {
        RedisRole::ChatServer => "CHAT_SERVER_REDIS_PASSWORD",
        RedisRole::ReplicationLog => "REPLICATION_LOG_REDIS_PASSWORD",
    }
}
/// Keys of the broker TLS Secret (`spec.broker.tls.secretName`; the `kubernetes.io/tls` keys
/// and cert-manager's `ca.crt`).
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The broker's private key in the TLS Secret (mounted only into the broker pod).
pub const TLS_KEY_KEY: &str = "tls.key";
/// The CA certificate in the TLS Secret.
pub const TLS_CA_KEY: &str = "ca.crt";

/// Key of the HS256 key in the auth Secret (`{name}-auth` or `spec.auth.secretName`).
pub const HMAC_KEY_KEY: &str = "hmac-key";
/// Key of the data plane's internal token in the `{name}-internal` Secret.
pub const INTERNAL_TOKEN_KEY: &str = "token";
/// Header carrying the internal token (chat-server and replication-log `--internal-token-file`).
pub const INTERNAL_TOKEN_HEADER: &str = "X-Internal-Token";
/// Port of the chat-server HTTP API (and its `/status`).
pub const CHAT_PORT: u16 = 8080;
/// Port of the replication-log HTTP API (and its `/status`).
pub const LOG_PORT: u16 = 8090;
/// Port of Redis.
pub const REDIS_PORT: u16 = 6379;
/// Name of the data volume claim template (and its mount) of both StatefulSets; the operator
/// reads the existing claim size from it.
pub const DATA_VOLUME: &str = "data";

/// Longest ChatCluster name; child names and the StatefulSets' revision-hash labels derive from it
/// and must stay within 63 characters (RFC 1123 label). The CRD enforces the bound with a CEL
/// rule and the validate step checks it again for objects that bypassed admission.
pub const MAX_NAME_LEN: usize = 40;

/// Environment variables the operator sets in the chat-server container; `spec.chatServer.env`
/// may not name them (the build tests check the list against the built container).
pub const CHAT_SERVER_ENV: &[&str] = &[
    "CHAT_LISTEN",
    "REDIS_PASSWORD",
    "REDIS_URL",
    "REDIS_CA_FILE",
    "REPLICATION_LOG_URL",
    "NODE_ID",
    "MAX_MESSAGE_BYTES",
    "RUST_LOG_FORMAT",
    "SHUTDOWN_DELAY",
    "CHAT_AUTH",
    "AUTH_HMAC_KEY_FILE",
    "AUTH_AUDIENCE",
    "AUTH_ISSUER",
    "AUTH_NAME_CLAIM",
    "ALLOWED_ORIGINS",
    "INTERNAL_TOKEN_FILE",
    "MEMORY_WINDOW_BYTES",
    "MAX_CONNECTIONS",
    "WS_SEND_RATE",
    "POST_RATE_PER_ADDRESS",
    "WS_SEND_BURST",
    "POST_BURST_PER_ADDRESS",
    "MAX_CHANNELS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "ID_WRITE_RATE_PER_AUTHOR",
    "ID_WRITE_BURST_PER_AUTHOR",
    "WRITE_RATE_PER_AUTHOR",
    "WRITE_BURST_PER_AUTHOR",
    "MAX_PAGE_READS",
];
/// Environment variables the operator sets in the replication-log container.
pub const LOG_ENV: &[&str] = &[
    "LOG_LISTEN",
    "REDIS_PASSWORD",
    "REDIS_URL",
    "REDIS_CA_FILE",
    "LOG_DATA_DIR",
    "REPLICA_ID",
    "LOG_PEER_URLS",
    "RUST_LOG_FORMAT",
    "INTERNAL_TOKEN_FILE",
];
/// Environment variables the operator sets in the broker container.
pub const BROKER_ENV: &[&str] = &[
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
    "CHAT_SERVER_REDIS_PASSWORD",
    "REPLICATION_LOG_REDIS_PASSWORD",
];

/// The three components of a chat cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Redis.
    Broker,
    /// The replication-log StatefulSet.
    ReplicationLog,
    /// The chat-server Deployment.
    ChatServer,
}

impl Component {
    /// Value of the `app.kubernetes.io/component` label.
    pub fn label(self) -> &'static str {
        match self {
            Component::Broker => "broker",
            Component::ReplicationLog => "replication-log",
            Component::ChatServer => "chat-server",
        }
    }
}

/// Names of the children of the ChatCluster called `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Broker StatefulSet, Service and Secret.
    pub broker: String,
    /// Replication-log StatefulSet, client Service and PDB.
    pub log: String,
    /// Replication-log headless Service (governing service of the StatefulSet).
    pub log_headless: String,
    /// chat-server Deployment, Service and PDB.
    pub chat_server: String,
    /// Secret the operator generates with the HS256 key when `spec.auth.secretName` is unset.
    pub auth: String,
    /// Secret with the data plane's internal token.
    pub internal: String,
}

impl Names {
    /// The fixed child names.
    pub fn of(name: &str) -> Names {
        Names {
            broker: format!("{name}-broker"),
            log: format!("{name}-log"),
            log_headless: format!("{name}-log-headless"),
            chat_server: format!("{name}-chat-server"),
            auth: format!("{name}-auth"),
            internal: format!("{name}-internal"),
        }
    }
}

/// Labels common to all children of `instance` in `component`.
pub fn labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.label().to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ])
}

/// The selector labels (instance + component) of a component's pods.
pub fn selector_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.label().to_owned()),
    ])
}

/// The selector as a label-selector string (for `status.selector` and list calls).
pub fn selector_string(instance: &str, component: Component) -> String {
    format!(
        "{LABEL_INSTANCE}={instance},{LABEL_COMPONENT}={}",
        component.label()
    )
}

/// The label selector of every object the operator manages for `instance` (prune lists).
pub fn managed_selector(instance: &str) -> String {
    format!("{LABEL_INSTANCE}={instance},{LABEL_MANAGED_BY}={MANAGED_BY}")
}
