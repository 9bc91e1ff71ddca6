//! The chat-server Deployment `{name}-chat-server`: `spec.replicas` pods rolled one surge pod at a
//! time, each behind the readiness gate `chat-cluster.io/caught-up` the gate step passes.

use chat_wire::redis_acl::RedisRole;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodReadinessGate, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Parent;
use super::pod::{
    broker_ca, container_port, container_security_context, env, field_env, hardened_pod,
    http_probes, internal_token, password_env, read_only_mount, redis_url_env, resources,
    secret_volume, strings, tmp_mount, tmp_volume,
};
use crate::crd::settings::CHAT_SERVER_MEMORY_LIMIT;
use crate::crd::{AuthMode, CAUGHT_UP_CONDITION};
use crate::names::{CHAT_PORT, Component, HMAC_KEY_KEY, LOG_PORT};

/// Seconds a chat-server keeps serving, unready, after SIGTERM, so the Service drops the pod
/// before it stops (well inside the 30 s termination grace period).
const SHUTDOWN_DELAY_SECONDS: &str = "5";

/// The chat-server Deployment: maxUnavailable 0 and maxSurge 1, so a new pod that never catches
/// up halts the rollout with every old pod still serving.
pub fn deployment(parent: &Parent<'_>) -> Deployment {
    let mut container = chat_server(parent);
    let mut volumes = vec![tmp_volume()];
    let (internal_volume, internal_mount, internal_env) = internal_token(&parent.names);
    let (auth_env, auth_volume) = auth(parent);
    let vars = container.env.get_or_insert_default();
    vars.push(internal_env);
    vars.extend(auth_env);
    let mounts = container.volume_mounts.get_or_insert_default();
    mounts.push(internal_mount);
    volumes.push(internal_volume);
    if let Some((volume, mount)) = auth_volume {
        mounts.push(mount);
        volumes.push(volume);
    }
    if let Some((volume, mount, var)) = broker_ca(parent.cluster.spec.broker.tls.as_ref()) {
        mounts.push(mount);
        volumes.push(volume);
        container.env.get_or_insert_default().push(var);
    }
    let mut pod = hardened_pod(container);
    pod.readiness_gates = Some(vec![PodReadinessGate {
        condition_type: CAUGHT_UP_CONDITION.into(),
    }]);
    pod.volumes = Some(volumes);
    Deployment {
        metadata: parent.metadata(&parent.names.chat_server, Component::ChatServer),
        spec: Some(DeploymentSpec {
            replicas: Some(parent.cluster.spec.replicas),
            selector: parent.selector(Component::ChatServer),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: parent.pod_template(
                Component::ChatServer,
                &parent.cluster.spec.chat_server.pod,
                resources(CHAT_SERVER_MEMORY_LIMIT),
                pod,
            ),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Name of the volume holding the HS256 key.
const AUTH_VOLUME: &str = "auth-key";
/// Where the HS256 key Secret is mounted.
const AUTH_DIR: &str = "/etc/chat-auth";

/// The authentication settings of `spec.auth` as environment variables (`CHAT_AUTH`,
/// `AUTH_HMAC_KEY_FILE`, `AUTH_AUDIENCE`, `AUTH_ISSUER`, `AUTH_NAME_CLAIM`, `ALLOWED_ORIGINS`; docs/configuration.md)
/// and, in token mode, the key Secret's volume and mount: `spec.auth.secretName` or `{name}-auth`.
fn auth(parent: &Parent<'_>) -> (Vec<EnvVar>, Option<(Volume, VolumeMount)>) {
    let auth = &parent.cluster.spec.auth;
    let mut vars = vec![env("CHAT_AUTH", auth.mode.as_str())];
    let mut volume = None;
    if auth.mode == AuthMode::Token {
        let secret = auth.secret_name.as_deref().unwrap_or(&parent.names.auth);
        vars.push(env(
            "AUTH_HMAC_KEY_FILE",
            format!("{AUTH_DIR}/{HMAC_KEY_KEY}"),
        ));
        vars.extend(
            auth.audience
                .as_ref()
                .map(|a| env("AUTH_AUDIENCE", a.as_str())),
        );
        vars.extend(auth.issuer.as_ref().map(|i| env("AUTH_ISSUER", i.as_str())));
        vars.extend(
            auth.name_claim
                .as_ref()
                .map(|c| env("AUTH_NAME_CLAIM", c.as_str())),
        );
        volume = Some((
            secret_volume(AUTH_VOLUME, secret, HMAC_KEY_KEY),
            read_only_mount(AUTH_VOLUME, AUTH_DIR),
        ));
    }
    if !auth.allowed_origins.is_empty() {
        vars.push(env("ALLOWED_ORIGINS", auth.allowed_origins.join(",")));
    }
    (vars, volume)
}

/// The `chat-server` container.
fn chat_server(parent: &Parent<'_>) -> Container {
    let spec = &parent.cluster.spec;
    let names = &parent.names;
    let tls = parent.cluster.spec.broker.tls.is_some();
    let (readiness, liveness) = http_probes();
    let mut env_vars = vec![
        env("CHAT_LISTEN", format!("0.0.0.0:{CHAT_PORT}")),
        password_env(names, RedisRole::ChatServer),
        redis_url_env(names, RedisRole::ChatServer, tls),
        env(
            "REPLICATION_LOG_URL",
            format!(
                "http://{}.{}.svc:{LOG_PORT}",
                names.log, parent.cluster.namespace
            ),
        ),
        field_env("NODE_ID", "metadata.name"),
        env("MAX_MESSAGE_BYTES", spec.max_message_bytes.to_string()),
        env("RUST_LOG_FORMAT", "json"),
        env("SHUTDOWN_DELAY", SHUTDOWN_DELAY_SECONDS),
    ];
    let limits = &spec.chat_server;
    for (name, value) in [
        ("MEMORY_WINDOW_BYTES", limits.memory_window_bytes),
        ("MAX_CONNECTIONS", limits.max_connections.map(i64::from)),
        ("WS_SEND_RATE", limits.ws_send_rate.map(i64::from)),
        (
            "POST_RATE_PER_ADDRESS",
            limits.post_rate_per_address.map(i64::from),
        ),
        ("WS_SEND_BURST", limits.ws_send_burst.map(i64::from)),
        (
            "POST_BURST_PER_ADDRESS",
            limits.post_burst_per_address.map(i64::from),
        ),
        ("MAX_CHANNELS", limits.max_channels),
        (
            "MAX_CONNECTIONS_PER_ADDRESS",
            limits.max_connections_per_address.map(i64::from),
        ),
        (
            "ID_WRITE_RATE_PER_AUTHOR",
            limits.id_write_rate_per_author.map(i64::from),
        ),
        (
            "ID_WRITE_BURST_PER_AUTHOR",
            limits.id_write_burst_per_author.map(i64::from),
        ),
        (
            "WRITE_RATE_PER_AUTHOR",
            limits.write_rate_per_author.map(i64::from),
        ),
        (
            "WRITE_BURST_PER_AUTHOR",
            limits.write_burst_per_author.map(i64::from),
        ),
        ("MAX_PAGE_READS", limits.max_page_reads.map(i64::from)),
    ] {
        if let Some(value) = value {
            env_vars.push(env(name, value.to_string()));
        }
    }
    for (name, _, value) in limits.connection_settings() {
        if let Some(value) = value {
            env_vars.push(env(name, value.to_string()));
        }
    }
    Container {
        name: "chat-server".into(),
        image: Some(spec.chat_server_image().to_owned()),
        image_pull_policy: Some(spec.chat_server_pull_policy().as_str().into()),
        command: strings(["chat-server"]),
        env: Some(env_vars),
        ports: Some(vec![container_port("http", CHAT_PORT)]),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![tmp_mount()]),
        ..Container::default()
    }
}
