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
    BROKER_TLS_DIR, BROKER_TLS_VOLUME, container_port, container_security_context,
    data_claim_template, exec_probe, hardened_pod, mount, read_only_mount, resources,
    secret_password_env, secret_volume_keys, strings, tcp_probe,
};
use crate::crd::settings::BROKER_MEMORY_LIMIT;
use crate::names::{
    Component, DATA_VOLUME, PASSWORD_KEY, REDIS_PORT, TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY,
    broker_role_password_env, role_password_key,
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
                broker_pod(parent),
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

/// The broker's pod: the Redis container and, with `spec.broker.tls`, the TLS Secret's
/// certificate, key and CA as a volume.
fn broker_pod(parent: &Parent<'_>) -> k8s_openapi::api::core::v1::PodSpec {
    let mut pod = hardened_pod(redis(parent));
    if let Some(tls) = &parent.cluster.spec.broker.tls {
        pod.volumes = Some(vec![secret_volume_keys(
            BROKER_TLS_VOLUME,
            &tls.secret_name,
            &[TLS_CERT_KEY, TLS_KEY_KEY, TLS_CA_KEY],
        )]);
    }
    pod
}

/// Where Redis listens: `--port 6379`, or with TLS `--port 0 --tls-port 6379` and the
/// certificate, key and CA from the mounted Secret, clients not asked for certificates
/// (`--tls-auth-clients no`: they authenticate as ACL users).
fn listen_args(tls: bool, port: &str) -> Vec<String> {
    if !tls {
        return strings(["--port", port]).unwrap_or_default();
    }
    let file = |key: &str| format!("{BROKER_TLS_DIR}/{key}");
    [
        "--port".to_owned(),
        "0".to_owned(),
        "--tls-port".to_owned(),
        port.to_owned(),
        "--tls-cert-file".to_owned(),
        file(TLS_CERT_KEY),
        "--tls-key-file".to_owned(),
        file(TLS_KEY_KEY),
        "--tls-ca-cert-file".to_owned(),
        file(TLS_CA_KEY),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ]
    .to_vec()
}

/// The readiness probe: `redis-cli` as `admin` (password from `REDISCLI_AUTH`), over TLS with the
/// Secret's CA when the broker has TLS. Ready only on PONG: while Redis loads its AOF it answers
/// `-LOADING`, and `redis-cli -e` exits non-zero on an error reply (the image needs no shell).
fn probe_command(tls: bool, port: &str) -> Option<Vec<String>> {
    let mut command = vec!["redis-cli".to_owned()];
    if tls {
        command.extend([
            "--tls".to_owned(),
            "--cacert".to_owned(),
            format!("{BROKER_TLS_DIR}/{TLS_CA_KEY}"),
        ]);
    }
    command.extend(strings(["--user", ADMIN_USER, "-e", "-p", port, "ping"]).unwrap_or_default());
    Some(command)
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
    args.extend(listen_args(broker.tls.is_some(), &port));
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
    let mut mounts = vec![mount(DATA_VOLUME, "/data")];
    if broker.tls.is_some() {
        mounts.push(read_only_mount(BROKER_TLS_VOLUME, BROKER_TLS_DIR));
    }
    Container {
        name: "redis-server".into(),
        image: Some(broker.image.clone()),
        image_pull_policy: Some(broker.image_pull_policy.as_str().into()),
        command: strings(["redis-server"]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![container_port("redis", REDIS_PORT)]),
        // Liveness stays a TCP check, so a long AOF load is never killed as dead.
        readiness_probe: Some(exec_probe(probe_command(broker.tls.is_some(), &port), 5)),
        liveness_probe: Some(tcp_probe("redis", 10, Some(6))),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}
