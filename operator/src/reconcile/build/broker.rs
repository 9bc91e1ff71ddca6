//! The broker StatefulSet `{name}-broker`: one Redis pod with the append-only file on a
//! persistent volume, fsynced as `spec.broker.appendFsync` says, RDB snapshots off, `maxmemory`
//! at 75 % of its memory limit with `noeviction`, ready only once Redis has loaded its data, and
//! the ACL users of `chat_wire::redis_acl` (`default` off, `admin`, one user per data-plane role,
//! passwords from the broker Secret).
//!
//! Everything here reads `spec.broker` only (never the data-plane `image`/`imagePullPolicy`), so
//! the broker's pod template changes — and the broker restarts — only when its own settings do.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::Container;

use chat_wire::redis_acl::{ADMIN_USER, RedisRole, server_args};

use super::Parent;
use super::pod::{
    container_port, container_security_context, data_claim_template, exec_probe, hardened_pod,
    mount, resources, secret_password_env, strings, tcp_probe,
};
use crate::crd::settings::BROKER_MEMORY_LIMIT;
use crate::names::{
    Component, DATA_VOLUME, PASSWORD_KEY, REDIS_PORT, broker_role_password_env, role_password_key,
};

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
            persistent_volume_claim_retention_policy: Some(parent.claim_retention()),
            template: parent.pod_template(
                Component::Broker,
                &parent.cluster.spec.broker.pod,
                resources(BROKER_MEMORY_LIMIT),
                hardened_pod(redis(parent)),
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

/// Redis' `maxmemory` for a container memory limit of `limit_bytes`: 75 % of it. The other 25 %
/// is headroom Redis needs outside `used_memory` (AOF rewrite buffer and copy-on-write pages of
/// its fork, client output buffers, fragmentation); docs/operations.md "When the broker runs out
/// of memory".
pub fn maxmemory(limit_bytes: u128) -> u128 {
    limit_bytes / 4 * 3
}

/// The `redis-server` container: ACL users with passwords from the Secret (each expanded by the
/// kubelet from a variable, never written into the pod spec), AOF in `/data`, `maxmemory` from
/// the memory limit (none without a limit), `noeviction` always.
fn redis(parent: &Parent<'_>) -> Container {
    let broker = &parent.cluster.spec.broker;
    let port = REDIS_PORT.to_string();
    let limit = broker.pod.memory_limit_bytes(BROKER_MEMORY_LIMIT);
    let mut args: Vec<String> = [
        "--appendonly",
        "yes",
        "--appendfsync",
        broker.append_fsync.as_str(),
        "--dir",
        "/data",
        "--port",
        &port,
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(limit) = limit {
        args.extend(["--maxmemory".to_owned(), maxmemory(limit).to_string()]);
    }
    args.extend(server_args("$(REDIS_PASSWORD)", |role| {
        format!("$({})", broker_role_password_env(role))
    }));
    let mut env = vec![
        secret_password_env("REDIS_PASSWORD", &parent.names, PASSWORD_KEY),
        // redis-cli reads the password from REDISCLI_AUTH (the readiness probe, as `admin`).
        secret_password_env("REDISCLI_AUTH", &parent.names, PASSWORD_KEY),
    ];
    env.extend(RedisRole::ALL.into_iter().map(|role| {
        secret_password_env(
            broker_role_password_env(role),
            &parent.names,
            role_password_key(role),
        )
    }));
    Container {
        name: "redis-server".into(),
        image: Some(broker.image.clone()),
        image_pull_policy: Some(broker.image_pull_policy.as_str().into()),
        command: strings(["redis-server"]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![container_port("redis", REDIS_PORT)]),
        // Ready only on PONG: while Redis loads its AOF it answers `-LOADING`, and `redis-cli -e`
        // exits non-zero on an error reply (the image needs no shell). Liveness stays a TCP
        // check, so a long load is never killed as dead.
        readiness_probe: Some(exec_probe(
            strings(["redis-cli", "--user", ADMIN_USER, "-e", "-p", &port, "ping"]),
            5,
        )),
        liveness_probe: Some(tcp_probe("redis", 10, Some(6))),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![mount(DATA_VOLUME, "/data")]),
        ..Container::default()
    }
}
