//! The `ChatCluster` custom resource (`chat-cluster.io/v1alpha1`): its spec and status types, the
//! OpenAPI schema with defaults, bounds and CEL rules, and the generated CustomResourceDefinition.
//!
//! Everything the API server can check on its own lives here, so invalid specs are rejected at
//! admission with a message naming the field; `reconcile::validate` only checks what it cannot.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::crd::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::MAX_NAME_LEN;

pub mod admission;
pub mod monitoring;
pub mod network_policy;
pub mod pod_monitor;
pub mod settings;
pub use monitoring::MonitoringSpec;
pub use network_policy::NetworkPolicySpec;
pub use settings::{
    ClaimRetention, ClaimRetentionPolicy, PodSettings, ServiceSettings, ServiceType,
};

/// API group of every chat-cluster resource.
pub const GROUP: &str = "chat-cluster.io";
/// Pod condition type (readiness gate) the operator sets once a chat-server pod has caught up.
pub const CAUGHT_UP_CONDITION: &str = "chat-cluster.io/caught-up";

/// Desired state of one chat cluster: a Redis broker, a replicated log and N chat-server nodes.
// The printcolumn() entries repeat `type_ = "string"`, which this lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "chat-cluster.io",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    singular = "chatcluster",
    namespaced,
    status = "ChatClusterStatus",
    derive = "PartialEq",
    shortname = "cc",
    shortname = "chat",
    doc = "A horizontally scalable chat service: broker, replication log and chat-server nodes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "ready/desired chat-server pods"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Messages",
        type_ = "integer",
        json_path = ".status.head",
        description = "broker head position"
    ),
    printcolumn(
        name = "Claims",
        type_ = "string",
        json_path = ".spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
        description = "what deleting the ChatCluster does to its volume claims",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Persisted",
        type_ = "integer",
        json_path = ".status.persisted",
        description = "lowest position persisted by every log replica",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        description = "the Degraded condition's reason",
        priority = 1
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "data-plane image",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Number of chat-server pods (scale subresource).
    #[serde(default = "default_replicas")]
    #[schemars(range(max = 1000))]
    pub replicas: i32,
    /// Image holding both data-plane binaries (`chat-server`, `replication-log`): the default
    /// of `chatServer.image` and `replicationLog.image`.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Pull policy of the data-plane image: the default of `chatServer.imagePullPolicy` and
    /// `replicationLog.imagePullPolicy` (the broker has its own, `broker.imagePullPolicy`).
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// The chat-server pods: image, limits passed to the binary, pod and Service settings.
    #[serde(default)]
    pub chat_server: ChatServerSpec,
    /// The Redis broker: the single ordering point.
    #[serde(default)]
    pub broker: BrokerSpec,
    /// The replication log: the durable history.
    #[serde(default)]
    pub replication_log: ReplicationLogSpec,
    /// How chat-server rollouts are gated on data catch-up.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Largest accepted message text in bytes.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_message_bytes: i32,
    /// What deleting the ChatCluster, or scaling the log down, does to the volume claims of the
    /// broker and the log replicas.
    #[serde(default)]
    pub persistent_volume_claim_retention_policy: ClaimRetentionPolicy,
    /// Client authentication (JWT, HS256) and the browser origins chat-server accepts.
    #[serde(default)]
    pub auth: AuthSpec,
    /// The NetworkPolicies the operator builds: Redis and the replication log reachable only from
    /// the cluster's own pods, the chat-server port open unless restricted.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Prometheus scraping: an optional PodMonitor for the data-plane pods (Prometheus
    /// Operator). Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// How chat-server authenticates clients (`--auth`, docs/api.md). The data plane's own parts
/// always share an internal token (Secret `{name}-internal`, generated once).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// `token` (the default): every client request carries an HS256 JWT; `none`: anonymous
    /// clients may read and write every channel under any author.
    #[serde(default)]
    pub mode: AuthMode,
    /// A Secret in the ChatCluster's namespace holding the HS256 key (at least 32 bytes) under the
    /// key `hmac-key`. Unset: the operator generates the Secret `{name}-auth` once and never
    /// rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Required `aud` claim (unset: unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: Option<String>,
    /// Required `iss` claim (unset: unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub issuer: Option<String>,
    /// Claim holding a display name the data plane writes as a message's `author`
    /// (`AUTH_NAME_CLAIM`), e.g. `name` for the tokens `chat-cluster-operator token --name`
    /// mints. Unset, or absent from a token: the subject (`sub`). Idempotency keys stay scoped to
    /// `sub` either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name_claim: Option<String>,
    /// Origins (`scheme://host[:port]`, or `*`) whose pages may open WebSockets and POST besides
    /// the node's own; empty: same origin only. Applies in both modes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_origins: Vec<String>,
}

/// Client authentication mode of chat-server.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every client request carries a JWT.
    #[default]
    Token,
    /// Anonymous clients (logged as a warning by chat-server).
    None,
}

impl AuthMode {
    /// The data plane's spelling (`CHAT_AUTH`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::None => "none",
        }
    }
}

/// The chat-server Deployment's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatServerSpec {
    /// Image of the chat-server pods. Unset: `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Pull policy of that image. Unset: `spec.imagePullPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Bytes of messages a node keeps in memory over all channels (`MEMORY_WINDOW_BYTES`).
    /// Unset: the binary takes 40 % of the container's memory limit. At most 80 % of the memory
    /// limit when one is set (the window costs up to 1.1 × its size, and connections need the
    /// rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub memory_window_bytes: Option<i64>,
    /// TCP connections one node serves at once (`MAX_CONNECTIONS`). Unset: 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<i32>,
    /// `send` frames per second one WebSocket connection may keep up (`WS_SEND_RATE`); 0 turns
    /// the limit off. Unset: 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub ws_send_rate: Option<i32>,
    /// Writes per second one client address may keep up, its `POST`s and the WebSocket `send`
    /// frames of all its connections together (`POST_RATE_PER_ADDRESS`); 0
    /// turns the limit off. Unset: off (behind a load balancer every client shares one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub post_rate_per_address: Option<i32>,
    /// `send` frames one WebSocket connection may send at once above its rate
    /// (`WS_SEND_BURST`); a client that goes on sending this many refused frames in a row is
    /// closed with 1008. Unset: 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub ws_send_burst: Option<i32>,
    /// Writes (`POST`s and `send` frames) one client address may send at once above its rate
    /// (`POST_BURST_PER_ADDRESS`). Unset: 4000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub post_burst_per_address: Option<i32>,
    /// Channels a node accepts writes to (`MAX_CHANNELS`); a write that would create one more is
    /// refused with 409. Unset: 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_channels: Option<i64>,
    /// TCP connections one node serves at once from one client address, IPv6 per /64
    /// (`MAX_CONNECTIONS_PER_ADDRESS`); 0 turns the limit off. Unset: off (behind a load
    /// balancer every client shares one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_connections_per_address: Option<i32>,
    /// Writes with a client `id` per second one token subject may keep up on one node
    /// (`ID_WRITE_RATE_PER_AUTHOR`; `--auth token` only); 0 turns the limit off. Bounds the
    /// dedupe records one author keeps in the broker. Unset: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub id_write_rate_per_author: Option<i32>,
    /// Writes with a client `id` one token subject may send at once above its rate
    /// (`ID_WRITE_BURST_PER_AUTHOR`). Unset: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub id_write_burst_per_author: Option<i32>,
    /// Writes of any kind per second one token subject may keep up on one node
    /// (`WRITE_RATE_PER_AUTHOR`; `--auth token` only); 0 turns the limit off. Bounds the dedupe
    /// records (60 s each) one author's writes without an id keep in the broker. Unset: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub write_rate_per_author: Option<i32>,
    /// Writes one token subject may send at once above its rate (`WRITE_BURST_PER_AUTHOR`).
    /// Unset: 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub write_burst_per_author: Option<i32>,
    /// Channel pages one node serves at once, each up to 1 MiB, held until sent
    /// (`MAX_PAGE_READS`); more are answered 503 with `Retry-After`. Unset: 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_page_reads: Option<i32>,
    /// Messages a WebSocket subscriber may fall behind before it is closed with 4008
    /// (`WS_QUEUE`). Unset: 4096, or a `WS_QUEUE` in `env` (then this field must stay unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub ws_queue: Option<i32>,
    /// Seconds a WebSocket write may take before the client is closed with 4008
    /// (`WS_WRITE_TIMEOUT`). Unset: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ws_write_timeout_seconds: Option<i32>,
    /// Seconds between WebSocket pings (`WS_PING_INTERVAL`). Unset: 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ws_ping_interval_seconds: Option<i32>,
    /// Seconds a WebSocket client may send nothing (not even a pong) before it is closed with
    /// 4009 (`WS_PING_TIMEOUT`); must be more than the ping interval. Unset: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ws_ping_timeout_seconds: Option<i32>,
    /// Seconds a connection may take to send a complete request head; also closes silent and
    /// idle keep-alive connections (`HTTP_HEADER_TIMEOUT`). Unset: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub http_header_timeout_seconds: Option<i32>,
    /// Seconds a client may take to send a whole request body; a slower `POST` is answered 408
    /// (`HTTP_BODY_TIMEOUT`). Unset: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub http_body_timeout_seconds: Option<i32>,
    /// Pod settings.
    #[serde(flatten)]
    pub pod: PodSettings,
    /// The `{name}-chat-server` Service.
    #[serde(default)]
    pub service: ServiceSettings,
}

/// The default `WS_PING_INTERVAL` of the chat-server binary, in seconds.
pub const DEFAULT_WS_PING_INTERVAL_SECONDS: i32 = 30;
/// The default `WS_PING_TIMEOUT` of the chat-server binary, in seconds.
pub const DEFAULT_WS_PING_TIMEOUT_SECONDS: i32 = 60;

impl ChatServerSpec {
    /// The connection settings a user may give either here or, as before these fields existed,
    /// as a variable in `env` (never both): `(variable, field under spec.chatServer, value)`.
    pub fn connection_settings(&self) -> [(&'static str, &'static str, Option<i32>); 6] {
        [
            ("WS_QUEUE", "wsQueue", self.ws_queue),
            (
                "WS_WRITE_TIMEOUT",
                "wsWriteTimeoutSeconds",
                self.ws_write_timeout_seconds,
            ),
            (
                "WS_PING_INTERVAL",
                "wsPingIntervalSeconds",
                self.ws_ping_interval_seconds,
            ),
            (
                "WS_PING_TIMEOUT",
                "wsPingTimeoutSeconds",
                self.ws_ping_timeout_seconds,
            ),
            (
                "HTTP_HEADER_TIMEOUT",
                "httpHeaderTimeoutSeconds",
                self.http_header_timeout_seconds,
            ),
            (
                "HTTP_BODY_TIMEOUT",
                "httpBodyTimeoutSeconds",
                self.http_body_timeout_seconds,
            ),
        ]
    }
}

impl ChatClusterSpec {
    /// `spec.monitoring` when it asks for a PodMonitor (`enablePodMonitor: true`).
    pub fn pod_monitor(&self) -> Option<&MonitoringSpec> {
        self.monitoring.as_ref().filter(|m| m.enable_pod_monitor)
    }
    /// The chat-server image: `chatServer.image`, else `image`.
    pub fn chat_server_image(&self) -> &str {
        self.chat_server.image.as_deref().unwrap_or(&self.image)
    }
    /// The chat-server pull policy: `chatServer.imagePullPolicy`, else `imagePullPolicy`.
    pub fn chat_server_pull_policy(&self) -> ImagePullPolicy {
        self.chat_server
            .image_pull_policy
            .unwrap_or(self.image_pull_policy)
    }
    /// The replication-log image: `replicationLog.image`, else `image`.
    pub fn log_image(&self) -> &str {
        self.replication_log.image.as_deref().unwrap_or(&self.image)
    }
    /// The replication-log pull policy: `replicationLog.imagePullPolicy`, else `imagePullPolicy`.
    pub fn log_pull_policy(&self) -> ImagePullPolicy {
        self.replication_log
            .image_pull_policy
            .unwrap_or(self.image_pull_policy)
    }
}

/// Image pull policy of a component's container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not present on the node.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The Redis broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Redis image (needs `redis-server` and `redis-cli` on the `PATH`).
    #[serde(default = "default_broker_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Pull policy of the Redis image; independent of `spec.imagePullPolicy`, so changing the
    /// data-plane image's policy never restarts the broker.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// Volume for the AOF.
    #[serde(default)]
    pub storage: StorageSpec,
    /// When Redis fsyncs its append-only file. `Always` (the default): a write is acknowledged
    /// only once it is on disk, so a crash of the broker's node loses nothing acknowledged.
    /// `Everysec`: lower write latency, but such a crash can lose up to a second of writes that
    /// no replication-log replica had persisted yet.
    #[serde(default)]
    pub append_fsync: AppendFsync,
    /// Pod settings. The memory limit sets Redis' `maxmemory` (75 % of it, `noeviction`).
    #[serde(flatten)]
    pub pod: PodSettings,
    /// The `{name}-broker` Service.
    #[serde(default)]
    pub service: ServiceSettings,
    /// TLS on the broker's port. Unset: plain TCP (the NetworkPolicies and ACL passwords still
    /// apply). Set: Redis accepts only TLS on 6379, and chat-server and replication-log pods
    /// connect with `rediss://` and verify its certificate against the Secret's `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BrokerTls>,
}

/// TLS for the broker (Redis `--tls-port`), from a Secret the user provides (for example one
/// cert-manager writes for a `Certificate`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerTls {
    /// A Secret in the ChatCluster's namespace with `tls.crt` (the broker's certificate, its DNS
    /// names including `{name}-broker`, the host the data plane dials), `tls.key` (its private
    /// key, mounted only into the broker pod) and `ca.crt` (the CA that signs it, mounted into
    /// the data-plane pods). Clients are not asked for certificates: they authenticate with their
    /// ACL user's password.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Redis `appendfsync` policy of the broker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AppendFsync {
    /// fsync before acknowledging (per event-loop batch).
    #[default]
    Always,
    /// fsync once per second.
    Everysec,
}

impl AppendFsync {
    /// Redis' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AppendFsync::Always => "always",
            AppendFsync::Everysec => "everysec",
        }
    }
}

/// The replication log StatefulSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationLogSpec {
    /// Number of log replicas (each holds the full history).
    #[serde(default = "default_log_replicas")]
    #[schemars(range(min = 1, max = 15))]
    pub replicas: i32,
    /// Volume per replica.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Image of the log pods. Unset: `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Pull policy of that image. Unset: `spec.imagePullPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Pod settings.
    #[serde(flatten)]
    pub pod: PodSettings,
    /// The `{name}-log` Service (the headless one is not configurable).
    #[serde(default)]
    pub service: ServiceSettings,
}

/// Rollout gating: a new chat-server pod or replication-log replica counts as ready only once it
/// is live within `maxLag` of the broker head; one that is not within `catchUpTimeout` halts the
/// rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// A new chat-server pod (or log replica) counts as caught up once it is live and at most
    /// this many positions behind the broker head.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_lag: u64,
    /// A pod that has not caught up this long after it started marks the cluster Degraded and
    /// halts the rollout (Go duration, e.g. `5m`, `90s`).
    #[serde(default = "default_catch_up_timeout")]
    // Syntax and the 1s minimum: the admission policy (crd::admission), not a regex or CEL rule
    // in the schema, whose API-server messages are noise.
    #[schemars(length(max = 32))]
    pub catch_up_timeout: String,
    /// When a replication-log rollout halts (a replica not ready and caught up within
    /// `catchUpTimeout`), restore the log StatefulSet's last good revision and replace the
    /// broken replica, reporting `RolledBack`; the spec stays as written, and the operator tries
    /// again only when the log pods' template changes. Off by default: the halted rollout then
    /// waits, with every replica that had not rolled yet still serving, for a human to fix the
    /// spec or the cause (a rollback on a transient cause, such as a slow volume, would undo a
    /// good change without asking).
    #[serde(default)]
    pub auto_rollback: bool,
}

/// A persistent volume request. The size may grow (the operator then expands the bound claims whose
/// StorageClass allows it) but never shrink; the class is immutable (both enforced by the
/// admission policy, [`admission`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, a Kubernetes quantity such as `1Gi`.
    #[serde(default = "default_storage_size")]
    // Quantity syntax, > 0, never shrinking: the admission policy (crd::admission).
    #[schemars(length(min = 1, max = 64))]
    pub size: String,
    /// Storage class; the cluster default when unset. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "storage_class_schema")]
    pub storage_class_name: Option<String>,
}

/// A plain (non-nullable) string: an explicit `null` is pruned by the API server, so
/// `storageClassName: null` means "unset".
fn storage_class_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 253,
        "description": "Storage class; the cluster default when unset, none (statically provisioned volumes) when empty. Immutable."
    })
}

/// Lifecycle phase shown in `kubectl get chatclusters`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Children exist but the data plane is not serving yet.
    Pending,
    /// A rollout or scale is under way.
    Progressing,
    /// Every child is ready and up to date.
    Running,
    /// Something needs a human (see the Degraded condition).
    Degraded,
}

impl Phase {
    /// The status spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Running => "Running",
            Phase::Degraded => "Degraded",
        }
    }
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// chat-server pods that exist (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// chat-server pods that are ready (caught up).
    #[serde(default)]
    pub ready_replicas: i32,
    /// chat-server pods running the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// `ready/desired`, for the printer column.
    #[serde(default)]
    pub ready: String,
    /// Label selector of the chat-server pods (scale subresource).
    #[serde(default)]
    pub selector: String,
    /// Broker head position (highest seen by any log replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// Lowest persisted position over the log replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted: Option<u64>,
    /// Available, Progressing, Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn default_replicas() -> i32 {
    3
}
fn default_image() -> String {
    "chat-cluster/chat-server:0.1.0".to_owned()
}
fn default_broker_image() -> String {
    "redis:7.2".to_owned()
}
fn default_log_replicas() -> i32 {
    2
}
fn default_catch_up_timeout() -> String {
    "5m".to_owned()
}
fn default_storage_size() -> String {
    "1Gi".to_owned()
}
fn default_max_message_bytes() -> i32 {
    4096
}

impl Default for ChatClusterSpec {
    fn default() -> Self {
        ChatClusterSpec {
            replicas: default_replicas(),
            image: default_image(),
            image_pull_policy: ImagePullPolicy::default(),
            chat_server: ChatServerSpec::default(),
            broker: BrokerSpec::default(),
            replication_log: ReplicationLogSpec::default(),
            rollout: RolloutSpec::default(),
            max_message_bytes: default_max_message_bytes(),
            persistent_volume_claim_retention_policy: ClaimRetentionPolicy::default(),
            auth: AuthSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            monitoring: None,
        }
    }
}
impl Default for BrokerSpec {
    fn default() -> Self {
        BrokerSpec {
            image: default_broker_image(),
            image_pull_policy: ImagePullPolicy::default(),
            storage: StorageSpec::default(),
            append_fsync: AppendFsync::default(),
            pod: PodSettings::default(),
            service: ServiceSettings::default(),
            tls: None,
        }
    }
}
impl Default for ReplicationLogSpec {
    fn default() -> Self {
        ReplicationLogSpec {
            replicas: default_log_replicas(),
            storage: StorageSpec::default(),
            image: None,
            image_pull_policy: None,
            pod: PodSettings::default(),
            service: ServiceSettings::default(),
        }
    }
}
impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            max_lag: 0,
            catch_up_timeout: default_catch_up_timeout(),
            auto_rollback: false,
        }
    }
}
impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Why the CustomResourceDefinition or the admission policy could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The CRD does not render as YAML.
    #[error("rendering the CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The schema does not convert to and from JSON (to trim descriptions).
    #[error("trimming the CRD schema: {0}")]
    Json(#[from] serde_json::Error),
}

/// The CustomResourceDefinition object: the schema (types, enums, ranges, lengths) and no CEL
/// rules; the checks the schema cannot express are the admission policy's ([`admission`]).
pub fn crd() -> Result<CustomResourceDefinition, CrdError> {
    let mut crd = ChatCluster::crd();
    trim_embedded_descriptions(&mut crd)?;
    Ok(crd)
}

/// Fields whose schemas are Kubernetes' own types (k8s-openapi), described in the Kubernetes API
/// reference.
const EMBEDDED_KUBERNETES_FIELDS: &[&str] = &[
    "resources",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "env",
    "chatServerFrom",
    "replicationLogFrom",
    "apiServerFrom",
];

/// Drops the descriptions inside the schemas of Kubernetes' own types (keeping the field's own
/// description). Their text is the Kubernetes API reference repeated three times (once per
/// component) and would take the CRD past the 256 KiB `last-applied-configuration` annotation
/// `kubectl apply -k` writes — the same trim controller-gen's `maxDescLen=0` makes for CNPG.
fn trim_embedded_descriptions(crd: &mut CustomResourceDefinition) -> Result<(), CrdError> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    fn walk(value: &mut serde_json::Value) {
        let Some(map) = value.as_object_mut() else {
            return;
        };
        if let Some(serde_json::Value::Object(props)) = map.get_mut("properties") {
            for (name, field) in props.iter_mut() {
                if EMBEDDED_KUBERNETES_FIELDS.contains(&name.as_str()) {
                    if let Some(field) = field.as_object_mut() {
                        for (key, inner) in field.iter_mut() {
                            if key != "description" {
                                strip(inner);
                            }
                        }
                    }
                } else {
                    walk(field);
                }
            }
        }
    }
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut()
            && let Some(props) = schema.open_api_v3_schema.take()
        {
            let mut value = serde_json::to_value(props)?;
            walk(&mut value);
            schema.open_api_v3_schema = Some(serde_json::from_value(value)?);
        }
    }
    Ok(())
}

/// The CRD as the YAML committed in `crds/chatcluster.yaml`.
pub fn crd_yaml() -> Result<String, CrdError> {
    let body = serde_yaml::to_string(&crd()?)?;
    Ok(format!(
        "# Generated by `chat-cluster-operator crd`; do not edit.\n---\n{body}"
    ))
}

/// The admission policy and its binding as the YAML committed in
/// `crds/chatcluster-policy.yaml` (two documents).
pub fn policy_yaml() -> Result<String, CrdError> {
    let policy = serde_yaml::to_string(&admission::policy())?;
    let binding = serde_yaml::to_string(&admission::binding())?;
    Ok(format!(
        "# Generated by `chat-cluster-operator admission-policy`; do not edit. Needs Kubernetes >= 1.30.\n\
         ---\n{policy}---\n{binding}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/chatcluster-policy.yaml` must be exactly what `chat-cluster-operator
    /// admission-policy` prints.
    #[test]
    fn committed_policy_is_in_sync() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/chatcluster-policy.yaml"
        ))
        .expect("crds/chatcluster-policy.yaml exists");
        assert!(
            committed == policy_yaml().expect("policy renders"),
            "crds/chatcluster-policy.yaml is stale; run `cargo run -p chat-cluster-operator -- \
             admission-policy > crds/chatcluster-policy.yaml`"
        );
    }

    /// `crds/chatcluster.yaml` must be exactly what `chat-cluster-operator crd` prints.
    /// Regenerate with `cargo run -p chat-cluster-operator -- crd > crds/chatcluster.yaml`.
    #[test]
    fn committed_crd_is_in_sync() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/chatcluster.yaml"
        ))
        .expect("crds/chatcluster.yaml exists");
        let generated = crd_yaml().expect("crd renders");
        assert!(
            committed == generated,
            "crds/chatcluster.yaml is stale; run `cargo run -p chat-cluster-operator -- crd > crds/chatcluster.yaml`"
        );
    }

    #[test]
    fn crd_has_subresources_columns_and_rules() {
        let crd = serde_json::to_value(crd().expect("the CRD builds")).expect("json");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["statusReplicasPath"],
            ".status.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        assert!(v["subresources"]["status"].is_object());
        let columns: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Ready",
                "Phase",
                "Messages",
                "Claims",
                "Age",
                "Persisted",
                "Reason",
                "Image"
            ]
        );
        let wide: Vec<i64> = v["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["priority"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(
            wide,
            [0, 0, 0, 1, 0, 1, 1, 1],
            "-o wide columns have priority 1"
        );
        let schema = &v["schema"]["openAPIV3Schema"];
        // No CEL rules and no regexes: their API-server messages are noise (crd::admission).
        let text = schema.to_string();
        assert!(!text.contains("x-kubernetes-validations"), "{text}");
        assert!(!text.contains("\"pattern\""), "{text}");
        let spec = &schema["properties"]["spec"]["properties"];
        // Negative replicas are refused by the scale subresource's own check; a schema minimum
        // would say it a second time.
        assert_eq!(spec["replicas"]["minimum"].as_f64(), None);
        assert_eq!(spec["replicas"]["maximum"].as_f64(), Some(1000.0));
        assert_eq!(
            spec["replicationLog"]["properties"]["replicas"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["cc", "chat"])
        );
    }

    /// `kubectl apply -k` stores the whole CRD in a 256 KiB annotation; stay well inside it.
    #[test]
    fn crd_fits_the_last_applied_annotation() {
        let yaml = crd_yaml().expect("crd renders");
        let json = serde_json::to_string(&crd().expect("crd")).expect("json");
        assert!(json.len() < 200 * 1024, "{} bytes", json.len());
        assert!(yaml.contains("topologySpreadConstraints"));
        // Our own field descriptions stay; the embedded Kubernetes type's inner ones go.
        let crd = serde_json::to_value(crd().expect("crd")).expect("json");
        let chat = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["chatServer"]["properties"];
        assert!(chat["affinity"]["description"].is_string());
        assert!(chat["affinity"]["properties"]["nodeAffinity"]["description"].is_null());
        assert!(chat["memoryWindowBytes"]["description"].is_string());
    }

    #[test]
    fn spec_defaults_match_the_contract() {
        let spec: ChatClusterSpec =
            serde_json::from_value(serde_json::json!({})).expect("empty spec");
        assert_eq!(spec, ChatClusterSpec::default());
        assert_eq!(spec.image, "chat-cluster/chat-server:0.1.0");
        assert_eq!(spec.broker.image, "redis:7.2");
        assert_eq!(spec.replication_log.replicas, 2);
        assert_eq!(spec.rollout.max_lag, 0);
        assert_eq!(spec.rollout.catch_up_timeout, "5m");
        assert_eq!(spec.max_message_bytes, 4096);
        assert_eq!(spec.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert!(spec.network_policy.enabled);
        assert_eq!(spec.network_policy.chat_server_from, None);
    }
}
