//! Test-object DSL: `ChatCluster::test().with_replicas(5)`, plus a builder for the chat-server
//! Pods the gating tests observe. Compiled only into the unit tests (`#[cfg(test)]` in `lib.rs`),
//! never into the library; the integration tests under `operator/tests/` build their objects from
//! JSON (`common::cluster`).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::crd::{ChatCluster, ChatClusterSpec, ChatClusterStatus, StorageSpec};

impl ChatCluster {
    /// A valid, defaulted ChatCluster `default/demo` as the API server would return it.
    pub fn test() -> ChatCluster {
        ChatCluster {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                namespace: Some("default".into()),
                uid: Some("6c3d3a4e-0000-4000-8000-000000000001".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: ChatClusterSpec::default(),
            status: None,
        }
    }
    /// Renames it.
    pub fn with_name(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }
    /// Moves it to `namespace`.
    pub fn with_namespace(mut self, namespace: &str) -> Self {
        self.metadata.namespace = Some(namespace.into());
        self
    }
    /// Sets `metadata.generation`.
    pub fn with_generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }
    /// Sets `spec.replicas`.
    pub fn with_replicas(mut self, replicas: i32) -> Self {
        self.spec.replicas = replicas;
        self
    }
    /// Sets `spec.replicationLog.replicas`.
    pub fn with_log_replicas(mut self, replicas: i32) -> Self {
        self.spec.replication_log.replicas = replicas;
        self
    }
    /// Sets `spec.image`.
    pub fn with_image(mut self, image: &str) -> Self {
        self.spec.image = image.into();
        self
    }
    /// Sets `spec.rollout.maxLag`.
    pub fn with_max_lag(mut self, max_lag: u64) -> Self {
        self.spec.rollout.max_lag = max_lag;
        self
    }
    /// Sets `spec.rollout.catchUpTimeout`.
    pub fn with_catch_up_timeout(mut self, timeout: &str) -> Self {
        self.spec.rollout.catch_up_timeout = timeout.into();
        self
    }
    /// Sets both storage specs.
    pub fn with_storage(mut self, size: &str, class: Option<&str>) -> Self {
        let storage = StorageSpec {
            size: size.into(),
            storage_class_name: class.map(Into::into),
        };
        self.spec.broker.storage = storage.clone();
        self.spec.replication_log.storage = storage;
        self
    }
    /// Sets the status.
    pub fn with_status(mut self, status: ChatClusterStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// A chat-server Pod of the `demo` cluster, created at `created` (RFC 3339), with the given
/// conditions as `(type, status)` pairs.
pub fn chat_pod(name: &str, created: &str, conditions: &[(&str, &str)]) -> Pod {
    let conditions: Vec<_> = conditions
        .iter()
        .map(|(type_, status)| json!({"type": type_, "status": status, "lastTransitionTime": created}))
        .collect();
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/component": "chat-server",
            },
        },
        "spec": {"containers": [{"name": "chat-server", "image": "chat-cluster/chat-server:0.1.0"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": conditions},
    }))
    .expect("fixture pod");
    pod.metadata.creation_timestamp =
        Some(Time(created.parse::<Timestamp>().expect("fixture time")));
    pod
}
