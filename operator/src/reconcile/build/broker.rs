//! The broker StatefulSet `{name}-broker`: one Redis pod with the append-only file on a
//! persistent volume, fsynced as `spec.broker.appendFsync` says, RDB snapshots off.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::Container;

use super::Parent;
use super::pod::{
    container_port, container_security_context, data_claim_template, hardened_pod, mount,
    password_env, resources, strings, tcp_probe,
};
use crate::names::{Component, DATA_VOLUME, REDIS_PORT};

/// The broker StatefulSet. `claim_size` is the size the existing StatefulSet was created with
/// (claim templates are immutable); None uses `spec.broker.storage.size`.
pub fn stateful_set(parent: &Parent<'_>, claim_size: Option<&str>) -> StatefulSet {
    let name = &parent.names.broker;
    let storage = &parent.cluster.spec.broker.storage;
    let size = claim_size.unwrap_or(&storage.size);
    StatefulSet {
        metadata: parent.metadata(name, Component::Broker),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.clone()),
            pod_management_policy: Some("OrderedReady".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: parent.selector(Component::Broker),
            template: parent.pod_template(Component::Broker, hardened_pod(redis(parent))),
            volume_claim_templates: Some(vec![data_claim_template(
                size,
                storage.storage_class_name.as_ref(),
            )]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The `redis-server` container: password from the Secret, AOF in `/data`.
fn redis(parent: &Parent<'_>) -> Container {
    let spec = &parent.cluster.spec;
    let port = REDIS_PORT.to_string();
    Container {
        name: "redis-server".into(),
        image: Some(spec.broker.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        command: strings(["redis-server"]),
        args: strings([
            "--appendonly",
            "yes",
            "--appendfsync",
            spec.broker.append_fsync.as_str(),
            "--dir",
            "/data",
            "--port",
            &port,
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--save",
            "",
        ]),
        env: Some(vec![password_env(&parent.names)]),
        ports: Some(vec![container_port("redis", REDIS_PORT)]),
        readiness_probe: Some(tcp_probe("redis", 5, None)),
        liveness_probe: Some(tcp_probe("redis", 10, Some(6))),
        resources: Some(resources("256Mi")),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![mount(DATA_VOLUME, "/data")]),
        ..Container::default()
    }
}
