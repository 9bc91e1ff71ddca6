//! The replication-log StatefulSet `{name}-log`: `spec.replicationLog.replicas` replicas, each
//! with its segment files on its own volume and the URLs of all its peers.

use chat_wire::redis_acl::RedisRole;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::Container;

use super::Parent;
use super::pod::{
    broker_ca, container_port, container_security_context, data_claim_template, env, field_env,
    hardened_pod, http_probes, internal_token, mount, password_env, redis_url_env, resources,
    strings, tmp_mount, tmp_volume,
};
use crate::crd::settings::LOG_MEMORY_LIMIT;
use crate::names::{Component, DATA_VOLUME, LOG_PORT};

/// The replication-log StatefulSet. `claim_size` is the size the existing StatefulSet was created
/// with (claim templates are immutable); None uses `spec.replicationLog.storage.size`.
pub fn stateful_set(parent: &Parent<'_>, claim_size: Option<&str>) -> StatefulSet {
    let name = &parent.names.log;
    let storage = &parent.cluster.spec.replication_log.storage;
    let size = claim_size.unwrap_or(&storage.size);
    let (internal_volume, internal_mount, internal_env) = internal_token(&parent.names);
    let mut container = replication_log(parent);
    container.env.get_or_insert_default().push(internal_env);
    container
        .volume_mounts
        .get_or_insert_default()
        .push(internal_mount);
    let mut volumes = vec![tmp_volume(), internal_volume];
    if let Some((volume, mount, var)) = broker_ca(parent.cluster.spec.broker.tls.as_ref()) {
        container.volume_mounts.get_or_insert_default().push(mount);
        container.env.get_or_insert_default().push(var);
        volumes.push(volume);
    }
    let mut pod = hardened_pod(container);
    pod.volumes = Some(volumes);
    StatefulSet {
        metadata: parent.metadata(name, Component::ReplicationLog),
        spec: Some(StatefulSetSpec {
            replicas: Some(parent.cluster.spec.replication_log.replicas),
            service_name: Some(parent.names.log_headless.clone()),
            // One replica at a time, each ready (caught up) before the next starts or rolls.
            pod_management_policy: Some("OrderedReady".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: parent.selector(Component::ReplicationLog),
            persistent_volume_claim_retention_policy: Some(parent.claim_retention()),
            template: parent.pod_template(
                Component::ReplicationLog,
                &parent.cluster.spec.replication_log.pod,
                resources(LOG_MEMORY_LIMIT),
                pod,
            ),
            volume_claim_templates: Some(vec![data_claim_template(
                size,
                storage.storage_class_name.as_ref(),
            )]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Peer URLs of every log replica, through the headless Service, comma-separated:
/// `http://{name}-log-{i}.{name}-log-headless.{namespace}.svc:8090`.
pub fn peer_urls(parent: &Parent<'_>) -> String {
    let names = &parent.names;
    (0..parent.cluster.spec.replication_log.replicas)
        .map(|i| {
            format!(
                "http://{}-{i}.{}.{}.svc:{LOG_PORT}",
                names.log, names.log_headless, parent.cluster.namespace
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `replication-log` container.
fn replication_log(parent: &Parent<'_>) -> Container {
    let spec = &parent.cluster.spec;
    let (readiness, liveness) = http_probes();
    Container {
        name: "replication-log".into(),
        image: Some(spec.log_image().to_owned()),
        image_pull_policy: Some(spec.log_pull_policy().as_str().into()),
        command: strings(["replication-log"]),
        env: Some(vec![
            env("LOG_LISTEN", format!("0.0.0.0:{LOG_PORT}")),
            password_env(&parent.names, RedisRole::ReplicationLog),
            redis_url_env(
                &parent.names,
                RedisRole::ReplicationLog,
                parent.cluster.spec.broker.tls.is_some(),
            ),
            env("LOG_DATA_DIR", "/data"),
            field_env("REPLICA_ID", "metadata.name"),
            env("LOG_PEER_URLS", peer_urls(parent)),
            env("RUST_LOG_FORMAT", "json"),
        ]),
        ports: Some(vec![container_port("http", LOG_PORT)]),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![mount(DATA_VOLUME, "/data"), tmp_mount()]),
        ..Container::default()
    }
}
