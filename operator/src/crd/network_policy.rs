//! `spec.networkPolicy`: whether the operator builds the data plane's NetworkPolicies and which
//! extra sources they admit (as Kubernetes' own `NetworkPolicyPeer`s, so the fields read like a
//! NetworkPolicy). The policies themselves are built by `reconcile::build::network_policy`.
//!
//! The operator reads the pods' `/status` through the API server's pod proxy, so those probes
//! reach a pod from the API server's address, not from the operator's pod. Kubernetes always
//! admits traffic from a pod's own node (the NetworkPolicy reference: "traffic to and from the
//! node where a Pod is running is always allowed"), so an API server on the pod's node needs no
//! rule; one on another node or outside the cluster (managed control planes, a konnectivity
//! agent) must be listed in `apiServerFrom` (docs/chatcluster.md).

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The ChatCluster's NetworkPolicies (`{name}-broker`, `{name}-log`, `{name}-chat-server`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Build the NetworkPolicies (the default). `false`: none, and the operator deletes the ones
    /// it made. They take effect only where the cluster's network plugin enforces NetworkPolicy.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Sources allowed to the chat-server port (8080). Unset: any source (the client port is
    /// open). A list, even an empty one: only these peers, plus `apiServerFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub chat_server_from: Option<Vec<NetworkPolicyPeer>>,
    /// Extra sources allowed to the replication-log port (8090) besides the cluster's chat-server
    /// and replication-log pods and `apiServerFrom`, e.g. Prometheus scraping `/metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub replication_log_from: Vec<NetworkPolicyPeer>,
    /// Where the API server's pod-proxy traffic comes from (the operator's `/status` probes of
    /// chat-server and replication-log pods), when it is not the pod's own node: e.g. the
    /// control-plane nodes' addresses as `ipBlock`s, or the konnectivity agent pods. Allowed to
    /// the replication-log port, and to the chat-server port when `chatServerFrom` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub api_server_from: Vec<NetworkPolicyPeer>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: enabled_by_default(),
            chat_server_from: None,
            replication_log_from: Vec::new(),
            api_server_from: Vec::new(),
        }
    }
}
