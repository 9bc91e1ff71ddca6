//! Pod and container settings the broker, replication-log and chat-server pods share: the
//! hardened security contexts (restricted Pod Security Standard), resources, probes, environment
//! variables, ports, volumes and the data claim template — and [`apply_settings`], which lays a
//! component's `PodSettings` (resources, scheduling, extra env) over the pod it builds, with the
//! defaults for what is unset (the component's resources, a soft spread over nodes).

use chat_wire::redis_acl::RedisRole;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::core::v1::{ExecAction, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{BrokerTls, PodSettings};
use crate::names::{
    DATA_VOLUME, INTERNAL_TOKEN_KEY, Names, REDIS_PORT, TLS_CA_KEY, role_password_key,
};

/// UID/GID every data-plane container runs as.
pub const RUN_AS: i64 = 65532;
/// Name of the writable scratch volume mounted at `/tmp`.
const TMP_VOLUME: &str = "tmp";

/// `items` as owned strings (commands, arguments, capability and access-mode lists).
pub fn strings<const N: usize>(items: [&str; N]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    })
}

/// A pod spec with the settings every data-plane pod shares (no service-account token, no
/// service links, the pod security context) around the one `container`.
pub fn hardened_pod(container: k8s_openapi::api::core::v1::Container) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context()),
        containers: vec![container],
        ..PodSpec::default()
    }
}

/// Non-root, fixed UID/GID and group-owned volumes, RuntimeDefault seccomp.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: runtime_default_seccomp(),
        ..PodSecurityContext::default()
    }
}

/// No privilege escalation, read-only root filesystem, every capability dropped.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        capabilities: Some(Capabilities {
            drop: strings(["ALL"]),
            ..Capabilities::default()
        }),
        seccomp_profile: runtime_default_seccomp(),
        ..SecurityContext::default()
    }
}

/// Requests of 50m CPU and 64Mi memory, and a memory limit of `memory_limit` (a quantity).
pub fn resources(memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".into())),
            ("memory".to_owned(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(memory_limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The default topology spread of a component: its pods over nodes (`kubernetes.io/hostname`),
/// `maxSkew: 1`, `whenUnsatisfiable: ScheduleAnyway` — preferred, never blocking scheduling (a
/// one-node cluster still runs every replica).
pub fn default_spread(selector: LabelSelector) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(selector),
        ..TopologySpreadConstraint::default()
    }
}

/// Lays `settings` over `pod`, whose first container is the component's: its resources (else
/// `default_resources`), affinity, tolerations, node selector, topology spread (else
/// [`default_spread`] of `selector`), priority class, and `settings.env` after the container's
/// own variables (validation has refused names the operator sets).
pub fn apply_settings(
    pod: &mut PodSpec,
    settings: &PodSettings,
    default_resources: ResourceRequirements,
    selector: LabelSelector,
) {
    let PodSettings {
        resources,
        affinity,
        tolerations,
        node_selector,
        topology_spread_constraints,
        priority_class_name,
        // Pod metadata: applied by `Parent::pod_template`.
        pod_labels: _,
        pod_annotations: _,
        env,
    } = settings;
    if let Some(container) = pod.containers.first_mut() {
        container.resources = Some(resources.clone().unwrap_or(default_resources));
        if !env.is_empty() {
            container
                .env
                .get_or_insert_with(Vec::new)
                .extend(env.iter().cloned());
        }
    }
    pod.affinity = affinity.clone();
    pod.tolerations = (!tolerations.is_empty()).then(|| tolerations.clone());
    pod.node_selector = (!node_selector.is_empty()).then(|| node_selector.clone());
    pod.topology_spread_constraints = match topology_spread_constraints {
        Some(list) if list.is_empty() => None,
        Some(list) => Some(list.clone()),
        None => Some(vec![default_spread(selector)]),
    };
    pod.priority_class_name = priority_class_name.clone();
}

/// A probe running `command` in the container every `period_seconds`, ready or alive on exit 0.
pub fn exec_probe(command: Option<Vec<String>>, period_seconds: i32) -> Probe {
    Probe {
        exec: Some(ExecAction { command }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// A plain `name=value` environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// An environment variable holding a field of the pod (downward API), e.g. `metadata.name`.
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `REDIS_PASSWORD` of a data-plane container: `role`'s password from the broker Secret.
pub fn password_env(names: &Names, role: RedisRole) -> EnvVar {
    secret_password_env("REDIS_PASSWORD", names, role_password_key(role))
}

/// The variable `name` holding the broker Secret's `key` (`password` for the admin user, or
/// [`role_password_key`]).
pub fn secret_password_env(name: &str, names: &Names, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names.broker.clone(),
                key: key.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `REDIS_URL` of `role`: its ACL user and `$(REDIS_PASSWORD)`, `rediss://` with
/// `spec.broker.tls`. Must come after [`password_env`] in the env list so `$(REDIS_PASSWORD)`
/// expands (Kubernetes expands only variables defined earlier in the list).
pub fn redis_url_env(names: &Names, role: RedisRole, tls: bool) -> EnvVar {
    let scheme = if tls { "rediss" } else { "redis" };
    env(
        "REDIS_URL",
        format!(
            "{scheme}://{}:$(REDIS_PASSWORD)@{}:{REDIS_PORT}",
            role.username(),
            names.broker
        ),
    )
}

/// Where the broker TLS Secret is mounted: all three files in the broker pod, `ca.crt` alone in
/// the data-plane pods.
pub const BROKER_TLS_DIR: &str = "/etc/chat-cluster/redis-tls";
/// The volume of [`BROKER_TLS_DIR`].
pub const BROKER_TLS_VOLUME: &str = "redis-tls";

/// For a chat-server or replication-log container under `spec.broker.tls`: the volume holding
/// only `ca.crt` of the TLS Secret (never the broker's key), its read-only mount and
/// `REDIS_CA_FILE`. None without TLS.
pub fn broker_ca(tls: Option<&BrokerTls>) -> Option<(Volume, VolumeMount, EnvVar)> {
    let tls = tls?;
    Some((
        secret_volume(BROKER_TLS_VOLUME, &tls.secret_name, TLS_CA_KEY),
        read_only_mount(BROKER_TLS_VOLUME, BROKER_TLS_DIR),
        env("REDIS_CA_FILE", format!("{BROKER_TLS_DIR}/{TLS_CA_KEY}")),
    ))
}

/// Name of the volume holding the internal token.
const INTERNAL_VOLUME: &str = "internal-token";
/// Where the internal token Secret is mounted.
const INTERNAL_DIR: &str = "/etc/chat-internal";

/// A volume of the single `key` of Secret `secret`, readable by the data-plane user only
/// (mode 0400; the pod's fsGroup owns it).
pub fn secret_volume(volume: &str, secret: &str, key: &str) -> Volume {
    secret_volume_keys(volume, secret, &[key])
}

/// As [`secret_volume`], with the files `keys` (each at its own name).
pub fn secret_volume_keys(volume: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                keys.iter()
                    .map(|key| KeyToPath {
                        key: (*key).into(),
                        path: (*key).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A read-only mount of `volume` at `path`.
pub fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..mount(volume, path)
    }
}

/// The internal token's volume (`{name}-internal`), its mount and `INTERNAL_TOKEN_FILE`, for the
/// chat-server and replication-log containers.
pub fn internal_token(names: &Names) -> (Volume, VolumeMount, EnvVar) {
    (
        secret_volume(INTERNAL_VOLUME, &names.internal, INTERNAL_TOKEN_KEY),
        read_only_mount(INTERNAL_VOLUME, INTERNAL_DIR),
        env(
            "INTERNAL_TOKEN_FILE",
            format!("{INTERNAL_DIR}/{INTERNAL_TOKEN_KEY}"),
        ),
    )
}

/// A TCP container port called `name`.
pub fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// A TCP-connect probe of the named port every `period_seconds`, failing after
/// `failure_threshold` misses (None: the Kubernetes default, 3).
pub fn tcp_probe(port: &str, period_seconds: i32, failure_threshold: Option<i32>) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold,
        ..Probe::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Readiness and liveness probes of an HTTP data-plane process on its `http` port. Readiness
/// polls `/readyz` every 2 s and needs 3 failures in a row to take a pod out, so a log replica
/// that is a few messages behind for one poll during a burst stays in service; becoming ready
/// still takes one success (caught up). Liveness polls `/healthz` every 10 s, 6 failures.
pub fn http_probes() -> (Probe, Probe) {
    (http_probe("/readyz", 2, 3), http_probe("/healthz", 10, 6))
}

/// A volume mount of `volume` at `path`.
pub fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

/// The mount of the scratch volume at `/tmp` (the root filesystem is read-only).
pub fn tmp_mount() -> VolumeMount {
    mount(TMP_VOLUME, "/tmp")
}

/// The scratch volume: an emptyDir of at most 64Mi.
pub fn tmp_volume() -> Volume {
    Volume {
        name: TMP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The `data` claim template: ReadWriteOnce, `size`, in `class` (None: the default class).
pub fn data_claim_template(size: &str, class: Option<&String>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: strings(["ReadWriteOnce"]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(size.into()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: class.cloned(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}
