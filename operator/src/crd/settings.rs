//! Per-component pod and Service settings of a ChatCluster (`spec.chatServer`,
//! `spec.replicationLog`, `spec.broker`) and the claim retention policy: the scheduling,
//! resource, metadata and environment knobs a CloudNativePG or Strimzi user expects, as the
//! Kubernetes types themselves (k8s-openapi structs with their schemas), so the spec reads like a
//! pod spec. The builders (`reconcile::build`) apply them; defaults for what is unset live there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Memory limit of the chat-server container when `spec.chatServer.resources` is unset: the 40 %
/// window (~205 MiB, costing up to 1.1 × that), 10,000 idle connections (~100 MiB) and the
/// process itself fit (docs/configuration.md, BENCHMARKS.md).
pub const CHAT_SERVER_MEMORY_LIMIT: &str = "512Mi";
/// Memory limit of the replication-log container when `spec.replicationLog.resources` is unset.
pub const LOG_MEMORY_LIMIT: &str = "512Mi";
/// Memory limit of the broker container when `spec.broker.resources` is unset (`maxmemory`
/// 192 MiB).
pub const BROKER_MEMORY_LIMIT: &str = "256Mi";
/// Largest `chatServer.memoryWindowBytes`, in percent of the chat-server memory limit.
pub const MAX_WINDOW_PERCENT_OF_LIMIT: u128 = 80;

/// Scheduling, resources, metadata and environment of one component's pods. Flattened into the
/// component's spec (`spec.chatServer.resources`, `spec.broker.tolerations`, …). Changing any of
/// these rolls that component's pods, and only those.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Container resources (`requests`/`limits` of `cpu` and `memory`). Unset: the component's
    /// defaults (chat-server and replication-log: requests 50m CPU and 64Mi, memory limit 512Mi;
    /// broker: requests 50m and 64Mi, memory limit 256Mi). The memory limit also sizes the
    /// broker's `maxmemory` and the chat-server's default memory window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod affinity, anti-affinity and node affinity. Unset: none (the default spread is a
    /// topology spread constraint, see `topologySpreadConstraints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Topology spread constraints. Unset: one soft constraint spreading the component's pods
    /// over nodes (`kubernetes.io/hostname`, `maxSkew: 1`, `whenUnsatisfiable: ScheduleAnyway`),
    /// so replicas land on different nodes when they can and still schedule when they cannot.
    /// An empty list turns the default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra labels on the pods (the `app.kubernetes.io/*` labels the operator sets win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra environment variables of the container, after the ones the operator sets. A name the
    /// operator sets itself (docs/configuration.md) is refused, so it cannot be overridden by
    /// accident; other flags' variables (e.g. `WS_QUEUE`) pass through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

impl PodSettings {
    /// The container memory limit in bytes: of `resources` when set (None when it has no memory
    /// limit), else `default_limit` (the component's default quantity).
    pub fn memory_limit_bytes(&self, default_limit: &str) -> Option<u128> {
        match &self.resources {
            Some(resources) => resources
                .limits
                .as_ref()
                .and_then(|l| l.get("memory"))
                .and_then(|q| crate::quantity::to_units(&q.0)),
            None => crate::quantity::to_units(default_limit),
        }
    }
}

/// The Service in front of a component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Extra annotations on the Service (e.g. a cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// A cluster-internal virtual IP.
    #[default]
    ClusterIP,
    /// ClusterIP plus a port on every node.
    NodePort,
    /// NodePort plus an external load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What happens to the broker's and the log replicas' PersistentVolumeClaims (the
/// StatefulSets' `persistentVolumeClaimRetentionPolicy`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRetentionPolicy {
    /// When the ChatCluster is deleted. `Retain` (the default) keeps the claims, and with them the
    /// whole history: a ChatCluster created again with the same name finds it. `Delete` removes
    /// them with the ChatCluster.
    #[serde(default)]
    pub when_deleted: ClaimRetention,
    /// When `replicationLog.replicas` is lowered. `Retain` (the default) keeps the claims of the
    /// removed replicas, so scaling back up is fast; `Delete` removes them.
    #[serde(default)]
    pub when_scaled: ClaimRetention,
}

/// Keep or delete a claim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClaimRetention {
    /// Keep the claim (and its volume).
    #[default]
    Retain,
    /// Delete the claim (its volume follows the StorageClass' reclaim policy).
    Delete,
}

impl ClaimRetention {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimRetention::Retain => "Retain",
            ClaimRetention::Delete => "Delete",
        }
    }
}
