//! chat-cluster-e2e: the end-to-end suite of chat-cluster, run against whatever Kubernetes cluster
//! `CHAT_CLUSTER_E2E_KUBECONFIG` names (the local single-node cluster of `e2e/cluster up`, or k3d).
//!
//! Every request to the data plane goes through the API server's service and pod proxy
//! subresources, so the suite needs no port-forward and behaves the same on every cluster. Each
//! scenario (`tests/*.rs`) runs in its own namespace and deletes it at the end.
//!
//! # Layout
//!
//! - [`harness`]: finding the cluster (an error when unset), kubectl, the image tags under
//!   test, installing the operator with `kubectl apply -k`, test namespaces, polling (the last
//!   three from `chat-test-support`, `e2e/suite/support`, shared with the chat-server and operator
//!   tests).
//! - [`proxy`]: GET/POST through `/api/v1/namespaces/{ns}/{services|pods}/{name}:{port}/proxy/…`.
//! - [`cluster`]: one ChatCluster under test: create, wait for phases, scale, patch, list its pods,
//!   `kubectl get chatclusters` rows, and a recorder of its phase over time.
//! - [`load`]: concurrent message writers (a fixed count, or a steady rate until stopped) that
//!   retry with the same idempotency key and record every accepted message.
//! - [`history`]: reading a node's or replica's full history and checking histories against each
//!   other and against the accepted messages (dense, same order, nothing lost or duplicated).
//! - [`monitor`]: a pod watcher plus `/status` sampler recording per-pod readiness transitions
//!   against the pods' own phase and lag, with the rollout checks computed from that timeline.
//! - [`scenario`]: the frame of every test: set up a Running ChatCluster in a fresh
//!   namespace, start loads, check every holder's history, delete the namespace.

pub mod cluster;
pub mod harness;
pub mod history;
pub mod load;
pub mod monitor;
pub mod proxy;
pub mod scenario;

/// Milliseconds since the Unix epoch on this machine's clock: the one time base of every record.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
