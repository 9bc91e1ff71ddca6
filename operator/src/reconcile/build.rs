//! Pure desired-state builder: one validated `ChatCluster` plus the dereferenced facts in, every
//! child object out. No client, no clock, no randomness — the same input always yields the same
//! children, which is what makes server-side apply idempotent and the builder snapshot-testable.
//!
//! Child names are part of the contract other components rely on:
//! broker `{name}-broker` (StatefulSet, Service, Secret with key `password`), replication log
//! `{name}-log` (StatefulSet, client Service, PDB) and `{name}-log-headless`, chat-server
//! `{name}-chat-server` (Deployment, Service, PDB).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::dereference::Facts;
use super::validate::Validated;
use crate::crd::CAUGHT_UP_CONDITION;

/// Value of `app.kubernetes.io/name` on every child.
pub const APP_NAME: &str = "chat-cluster";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "chat-cluster-operator";
/// Label keys.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label key naming the owning ChatCluster.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label key naming the component.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Label key naming the manager.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Key of the Redis password in the broker Secret.
pub const PASSWORD_KEY: &str = "password";
/// Port of the chat-server HTTP API (and its `/status`).
pub const CHAT_PORT: u16 = 8080;
/// Port of the replication-log HTTP API (and its `/status`).
pub const LOG_PORT: u16 = 8090;
/// Port of Redis.
pub const REDIS_PORT: u16 = 6379;
/// UID/GID every data-plane container runs as.
const RUN_AS: i64 = 65532;

/// The three components of a chat cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Redis.
    Broker,
    /// The replication-log StatefulSet.
    ReplicationLog,
    /// The chat-server Deployment.
    ChatServer,
}

impl Component {
    /// Value of the `app.kubernetes.io/component` label.
    pub fn label(self) -> &'static str {
        match self {
            Component::Broker => "broker",
            Component::ReplicationLog => "replication-log",
            Component::ChatServer => "chat-server",
        }
    }
}

/// Names of the children of the ChatCluster called `name`.
#[derive(Clone, Debug)]
pub struct Names {
    /// Broker StatefulSet, Service and Secret.
    pub broker: String,
    /// Replication-log StatefulSet, client Service and PDB.
    pub log: String,
    /// Replication-log headless Service (governing service of the StatefulSet).
    pub log_headless: String,
    /// chat-server Deployment, Service and PDB.
    pub chat_server: String,
}

impl Names {
    /// The fixed child names.
    pub fn of(name: &str) -> Names {
        Names {
            broker: format!("{name}-broker"),
            log: format!("{name}-log"),
            log_headless: format!("{name}-log-headless"),
            chat_server: format!("{name}-chat-server"),
        }
    }
}

/// Every child object one ChatCluster asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// Redis password, created once and kept.
    pub broker_secret: Secret,
    /// Redis Service.
    pub broker_service: Service,
    /// Redis StatefulSet (one pod, AOF on a volume).
    pub broker: StatefulSet,
    /// Headless Service giving each log replica a stable DNS name.
    pub log_headless_service: Service,
    /// Client Service of the log replicas.
    pub log_service: Service,
    /// Replication-log StatefulSet.
    pub log: StatefulSet,
    /// Log PDB; only when there are at least two replicas to protect.
    pub log_pdb: Option<PodDisruptionBudget>,
    /// chat-server Deployment.
    pub chat_server: Deployment,
    /// chat-server Service.
    pub chat_service: Service,
    /// chat-server PDB; only when there are at least two replicas to protect.
    pub chat_pdb: Option<PodDisruptionBudget>,
}

/// Errors of the build step (only a malformed template can cause one: a bug, not user input).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A child template did not deserialize into its Kubernetes type.
    #[error("building {kind} {name}: {source}")]
    Template {
        /// Kind being built.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Labels common to all children of `instance` in `component`.
pub fn labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.label().to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ])
}

/// The selector labels (instance + component) of a component's pods.
pub fn selector_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.label().to_owned()),
    ])
}

/// The selector as a label-selector string (for `status.selector` and list calls).
pub fn selector_string(instance: &str, component: Component) -> String {
    format!(
        "{LABEL_INSTANCE}={instance},{LABEL_COMPONENT}={}",
        component.label()
    )
}

/// Builds every child of `cluster`.
pub fn build(cluster: &Validated, facts: &Facts) -> Result<Children, BuildError> {
    let b = Builder {
        v: cluster,
        names: Names::of(&cluster.name),
        owner: cluster.owner_ref.clone(),
    };
    Ok(Children {
        broker_secret: b.broker_secret(&facts.password)?,
        broker_service: b.broker_service()?,
        broker: b.broker(facts)?,
        log_headless_service: b.log_headless_service()?,
        log_service: b.log_service()?,
        log: b.log(facts)?,
        log_pdb: b.pdb(
            Component::ReplicationLog,
            &b.names.log,
            cluster.spec.replication_log.replicas,
        )?,
        chat_server: b.chat_server()?,
        chat_service: b.chat_service()?,
        chat_pdb: b.pdb(
            Component::ChatServer,
            &b.names.chat_server,
            cluster.spec.replicas,
        )?,
    })
}

struct Builder<'a> {
    v: &'a Validated,
    names: Names,
    owner: OwnerReference,
}

fn typed<T: DeserializeOwned>(
    kind: &'static str,
    name: &str,
    value: Value,
) -> Result<T, BuildError> {
    serde_json::from_value(value).map_err(|source| BuildError::Template {
        kind,
        name: name.to_owned(),
        source,
    })
}

impl Builder<'_> {
    fn metadata(&self, name: &str, component: Component) -> Value {
        json!({
            "name": name,
            "namespace": self.v.namespace,
            "labels": labels(&self.v.name, component),
            "ownerReferences": [self.owner],
        })
    }

    fn pod_labels(&self, component: Component) -> Value {
        json!(labels(&self.v.name, component))
    }

    fn selector(&self, component: Component) -> Value {
        json!({"matchLabels": selector_labels(&self.v.name, component)})
    }

    fn pod_security_context() -> Value {
        json!({
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    }

    fn container_security_context() -> Value {
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    }

    fn resources(memory_limit: &str) -> Value {
        json!({
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": memory_limit},
        })
    }

    fn password_env(&self) -> Value {
        json!({
            "name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": self.names.broker, "key": PASSWORD_KEY}},
        })
    }

    /// `REDIS_URL`; must come after `REDIS_PASSWORD` in the env list so `$(REDIS_PASSWORD)` expands.
    fn redis_url_env(&self) -> Value {
        json!({
            "name": "REDIS_URL",
            "value": format!("redis://:$(REDIS_PASSWORD)@{}:{REDIS_PORT}", self.names.broker),
        })
    }

    fn claim_template(size: &str, class: Option<&String>) -> Value {
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
        });
        if let Some(class) = class {
            spec["storageClassName"] = json!(class);
        }
        json!({"metadata": {"name": "data"}, "spec": spec})
    }

    fn broker_secret(&self, password: &str) -> Result<Secret, BuildError> {
        let name = &self.names.broker;
        typed(
            "Secret",
            name,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self.metadata(name, Component::Broker),
                "type": "Opaque",
                "stringData": {PASSWORD_KEY: password},
            }),
        )
        .map(|mut secret: Secret| {
            // Apply `data`, never `stringData`: the API server stores only `data`, and applying the
            // same bytes again must be a no-op.
            let data = secret.string_data.take().unwrap_or_default();
            secret.data = Some(
                data.into_iter()
                    .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                    .collect(),
            );
            secret
        })
    }

    /// A ClusterIP Service in front of one component's pods, on one named port.
    fn cluster_ip_service(
        &self,
        name: &str,
        component: Component,
        port_name: &str,
        port: u16,
    ) -> Result<Service, BuildError> {
        typed(
            "Service",
            name,
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.metadata(name, component),
                "spec": {
                    "type": "ClusterIP",
                    "selector": selector_labels(&self.v.name, component),
                    "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
                },
            }),
        )
    }

    fn broker_service(&self) -> Result<Service, BuildError> {
        self.cluster_ip_service(&self.names.broker, Component::Broker, "redis", REDIS_PORT)
    }

    fn broker(&self, facts: &Facts) -> Result<StatefulSet, BuildError> {
        let name = &self.names.broker;
        let storage = &self.v.spec.broker.storage;
        // Claim templates are immutable: once the StatefulSet exists, keep what it was created with.
        let size = facts.broker_claim_size.as_deref().unwrap_or(&storage.size);
        typed(
            "StatefulSet",
            name,
            json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": self.metadata(name, Component::Broker),
                "spec": {
                    "replicas": 1,
                    "serviceName": name,
                    "podManagementPolicy": "OrderedReady",
                    "updateStrategy": {"type": "RollingUpdate"},
                    "selector": self.selector(Component::Broker),
                    "template": {
                        "metadata": {"labels": self.pod_labels(Component::Broker)},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "enableServiceLinks": false,
                            "securityContext": Self::pod_security_context(),
                            "containers": [{
                                "name": "redis-server",
                                "image": self.v.spec.broker.image,
                                "imagePullPolicy": self.v.spec.image_pull_policy.as_str(),
                                "command": ["redis-server"],
                                "args": [
                                    "--appendonly", "yes",
                                    "--appendfsync", self.v.spec.broker.append_fsync.as_str(),
                                    "--dir", "/data",
                                    "--port", REDIS_PORT.to_string(),
                                    "--requirepass", "$(REDIS_PASSWORD)",
                                    "--save", "",
                                ],
                                "env": [self.password_env()],
                                "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
                                "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
                                "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "failureThreshold": 6},
                                "resources": Self::resources("256Mi"),
                                "securityContext": Self::container_security_context(),
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }],
                        },
                    },
                    "volumeClaimTemplates": [Self::claim_template(size, storage.storage_class_name.as_ref())],
                },
            }),
        )
    }

    fn log_headless_service(&self) -> Result<Service, BuildError> {
        let name = &self.names.log_headless;
        typed(
            "Service",
            name,
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.metadata(name, Component::ReplicationLog),
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": true,
                    "selector": selector_labels(&self.v.name, Component::ReplicationLog),
                    "ports": [{"name": "http", "port": LOG_PORT, "targetPort": "http", "protocol": "TCP"}],
                },
            }),
        )
    }

    fn log_service(&self) -> Result<Service, BuildError> {
        self.cluster_ip_service(&self.names.log, Component::ReplicationLog, "http", LOG_PORT)
    }

    /// Peer URLs of every log replica, through the headless Service.
    pub fn log_peer_urls(&self) -> String {
        (0..self.v.spec.replication_log.replicas)
            .map(|i| {
                format!(
                    "http://{}-{i}.{}.{}.svc:{LOG_PORT}",
                    self.names.log, self.names.log_headless, self.v.namespace
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Readiness polls `/readyz` every 2 s and needs 3 failures in a row to take a pod out, so a
    /// log replica that is a few messages behind for one poll during a burst stays in service;
    /// becoming ready still takes one success (caught up).
    fn http_probes() -> (Value, Value) {
        (
            json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 3}),
            json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6}),
        )
    }

    fn log(&self, facts: &Facts) -> Result<StatefulSet, BuildError> {
        let name = &self.names.log;
        let storage = &self.v.spec.replication_log.storage;
        let size = facts.log_claim_size.as_deref().unwrap_or(&storage.size);
        let (readiness, liveness) = Self::http_probes();
        typed(
            "StatefulSet",
            name,
            json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": self.metadata(name, Component::ReplicationLog),
                "spec": {
                    "replicas": self.v.spec.replication_log.replicas,
                    "serviceName": self.names.log_headless,
                    // One replica at a time, each ready (caught up) before the next starts or rolls.
                    "podManagementPolicy": "OrderedReady",
                    "updateStrategy": {"type": "RollingUpdate"},
                    "selector": self.selector(Component::ReplicationLog),
                    "template": {
                        "metadata": {"labels": self.pod_labels(Component::ReplicationLog)},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "enableServiceLinks": false,
                            "securityContext": Self::pod_security_context(),
                            "containers": [{
                                "name": "replication-log",
                                "image": self.v.spec.image,
                                "imagePullPolicy": self.v.spec.image_pull_policy.as_str(),
                                "command": ["replication-log"],
                                "env": [
                                    {"name": "LOG_LISTEN", "value": format!("0.0.0.0:{LOG_PORT}")},
                                    self.password_env(),
                                    self.redis_url_env(),
                                    {"name": "LOG_DATA_DIR", "value": "/data"},
                                    {"name": "REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                    {"name": "LOG_PEER_URLS", "value": self.log_peer_urls()},
                                    {"name": "RUST_LOG_FORMAT", "value": "json"},
                                ],
                                "ports": [{"name": "http", "containerPort": LOG_PORT, "protocol": "TCP"}],
                                "readinessProbe": readiness,
                                "livenessProbe": liveness,
                                "resources": Self::resources("512Mi"),
                                "securityContext": Self::container_security_context(),
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }],
                            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                        },
                    },
                    "volumeClaimTemplates": [Self::claim_template(size, storage.storage_class_name.as_ref())],
                },
            }),
        )
    }

    fn chat_server(&self) -> Result<Deployment, BuildError> {
        let name = &self.names.chat_server;
        let (readiness, liveness) = Self::http_probes();
        typed(
            "Deployment",
            name,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self.metadata(name, Component::ChatServer),
                "spec": {
                    "replicas": self.v.spec.replicas,
                    "selector": self.selector(Component::ChatServer),
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                    },
                    "template": {
                        "metadata": {"labels": self.pod_labels(Component::ChatServer)},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "enableServiceLinks": false,
                            "readinessGates": [{"conditionType": CAUGHT_UP_CONDITION}],
                            "securityContext": Self::pod_security_context(),
                            "containers": [{
                                "name": "chat-server",
                                "image": self.v.spec.image,
                                "imagePullPolicy": self.v.spec.image_pull_policy.as_str(),
                                "command": ["chat-server"],
                                "env": [
                                    {"name": "CHAT_LISTEN", "value": format!("0.0.0.0:{CHAT_PORT}")},
                                    self.password_env(),
                                    self.redis_url_env(),
                                    {
                                        "name": "REPLICATION_LOG_URL",
                                        "value": format!("http://{}.{}.svc:{LOG_PORT}", self.names.log, self.v.namespace),
                                    },
                                    {"name": "NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                    {"name": "MAX_MESSAGE_BYTES", "value": self.v.spec.max_message_bytes.to_string()},
                                    {"name": "RUST_LOG_FORMAT", "value": "json"},
                                    // On SIGTERM keep serving, unready, until the Service has
                                    // dropped the pod (well inside the 30 s grace period).
                                    {"name": "SHUTDOWN_DELAY", "value": "5"},
                                ],
                                "ports": [{"name": "http", "containerPort": CHAT_PORT, "protocol": "TCP"}],
                                "readinessProbe": readiness,
                                "livenessProbe": liveness,
                                "resources": Self::resources("512Mi"),
                                "securityContext": Self::container_security_context(),
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }],
                            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                        },
                    },
                },
            }),
        )
    }

    fn chat_service(&self) -> Result<Service, BuildError> {
        self.cluster_ip_service(
            &self.names.chat_server,
            Component::ChatServer,
            "http",
            CHAT_PORT,
        )
    }

    /// A PDB allowing one voluntary disruption at a time; none for fewer than two replicas, where
    /// it would protect nothing.
    fn pdb(
        &self,
        component: Component,
        name: &str,
        replicas: i32,
    ) -> Result<Option<PodDisruptionBudget>, BuildError> {
        if replicas < 2 {
            return Ok(None);
        }
        typed(
            "PodDisruptionBudget",
            name,
            json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.metadata(name, component),
                "spec": {
                    "maxUnavailable": 1,
                    "selector": self.selector(component),
                },
            }),
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;
    use crate::reconcile::validate::validate;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::ResourceExt;

    fn facts() -> Facts {
        Facts {
            password: "s3cret".into(),
            broker_claim_size: None,
            log_claim_size: None,
        }
    }

    fn children_of(cluster: &ChatCluster) -> Children {
        build(&validate(cluster).expect("valid"), &facts()).expect("builds")
    }

    fn all_objects(c: &Children) -> Vec<Value> {
        let mut out = vec![
            json!(c.broker_secret),
            json!(c.broker_service),
            json!(c.broker),
            json!(c.log_headless_service),
            json!(c.log_service),
            json!(c.log),
        ];
        out.extend(c.log_pdb.iter().map(|p| json!(p)));
        out.push(json!(c.chat_server));
        out.push(json!(c.chat_service));
        out.extend(c.chat_pdb.iter().map(|p| json!(p)));
        out
    }

    fn render(c: &Children) -> String {
        all_objects(c)
            .iter()
            .map(|o| serde_yaml::to_string(o).expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The exact children of `tests/fixtures/demo.yaml` are `tests/fixtures/demo-children.yaml`.
    /// After an intended change: `UPDATE_SNAPSHOTS=1 cargo test -p chat-cluster-operator build`.
    #[test]
    fn demo_fixture_builds_the_committed_children() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let input = std::fs::read_to_string(format!("{dir}/demo.yaml")).expect("fixture");
        let cluster: ChatCluster = serde_yaml::from_str(&input).expect("fixture parses");
        let rendered = render(&children_of(&cluster));
        let expected_path = format!("{dir}/demo-children.yaml");
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&expected_path, &rendered).expect("write snapshot");
        }
        let expected = std::fs::read_to_string(&expected_path).expect("snapshot exists");
        assert!(
            expected == rendered,
            "children differ from {expected_path}; got:\n{rendered}"
        );
    }

    #[test]
    fn every_child_is_labelled_and_owned() {
        let c = children_of(&ChatCluster::test());
        let objects = all_objects(&c);
        assert_eq!(objects.len(), 10);
        for o in objects {
            let meta = &o["metadata"];
            assert_eq!(meta["labels"][LABEL_NAME], "chat-cluster", "{o}");
            assert_eq!(meta["labels"][LABEL_INSTANCE], "demo");
            assert_eq!(meta["labels"][LABEL_MANAGED_BY], MANAGED_BY);
            assert!(meta["labels"][LABEL_COMPONENT].is_string());
            assert_eq!(meta["namespace"], "default");
            assert_eq!(meta["ownerReferences"][0]["kind"], "ChatCluster");
            assert_eq!(meta["ownerReferences"][0]["controller"], true);
            assert_eq!(
                meta["ownerReferences"][0]["uid"],
                "6c3d3a4e-0000-4000-8000-000000000001"
            );
            if let Some(template) = o["spec"].get("template") {
                assert_eq!(
                    template["metadata"]["labels"], meta["labels"],
                    "pod template labels"
                );
                let selector = &o["spec"]["selector"]["matchLabels"];
                assert_eq!(selector.as_object().map(|m| m.len()), Some(2));
            }
        }
        let names: Vec<String> = [
            c.broker_secret.name_any(),
            c.broker_service.name_any(),
            c.broker.name_any(),
            c.log_headless_service.name_any(),
            c.log_service.name_any(),
            c.log.name_any(),
            c.chat_server.name_any(),
            c.chat_service.name_any(),
        ]
        .into();
        assert_eq!(
            names,
            [
                "demo-broker",
                "demo-broker",
                "demo-broker",
                "demo-log-headless",
                "demo-log",
                "demo-log",
                "demo-chat-server",
                "demo-chat-server"
            ]
        );
    }

    fn pod_spec_containers(spec: &PodSpec) -> &Container {
        &spec.containers[0]
    }

    #[test]
    fn pods_are_hardened() {
        let c = children_of(&ChatCluster::test());
        let templates = [
            c.broker.spec.as_ref().and_then(|s| s.template.spec.clone()),
            c.log.spec.as_ref().and_then(|s| s.template.spec.clone()),
            c.chat_server
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone()),
        ];
        for spec in templates.iter().map(|s| s.as_ref().expect("pod spec")) {
            let psc = spec
                .security_context
                .as_ref()
                .expect("pod security context");
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_eq!(psc.run_as_user, Some(65532));
            assert_eq!(psc.fs_group, Some(65532));
            let container = pod_spec_containers(spec);
            let sc = container
                .security_context
                .as_ref()
                .expect("container security context");
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()])
            );
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault")
            );
            let resources = container.resources.as_ref().expect("resources");
            assert!(
                resources
                    .requests
                    .as_ref()
                    .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
            );
            assert!(
                resources
                    .limits
                    .as_ref()
                    .is_some_and(|r| r.contains_key("memory"))
            );
            assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
        }
    }

    #[test]
    fn broker_fsync_policy_follows_the_spec() {
        let fsync_arg = |cluster: &ChatCluster| {
            let c = children_of(cluster);
            let args = c
                .broker
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone())
                .expect("spec")
                .containers[0]
                .args
                .clone()
                .unwrap_or_default();
            let i = args
                .iter()
                .position(|a| a == "--appendfsync")
                .expect("--appendfsync");
            args[i + 1].clone()
        };
        assert_eq!(fsync_arg(&ChatCluster::test()), "always");
        let mut relaxed = ChatCluster::test();
        relaxed.spec.broker.append_fsync = crate::crd::AppendFsync::Everysec;
        assert_eq!(fsync_arg(&relaxed), "everysec");
    }

    #[test]
    fn redis_password_env_precedes_redis_url() {
        let c = children_of(&ChatCluster::test());
        for spec in [
            c.log.spec.as_ref().and_then(|s| s.template.spec.clone()),
            c.chat_server
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone()),
        ] {
            let env = spec.expect("spec").containers[0]
                .env
                .clone()
                .unwrap_or_default();
            let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
            let password = names
                .iter()
                .position(|n| *n == "REDIS_PASSWORD")
                .expect("password env");
            let url = names
                .iter()
                .position(|n| *n == "REDIS_URL")
                .expect("url env");
            assert!(password < url, "{names:?}");
            assert_eq!(
                env[url].value.as_deref(),
                Some("redis://:$(REDIS_PASSWORD)@demo-broker:6379")
            );
        }
    }

    #[test]
    fn log_peers_cover_every_replica() {
        let c = children_of(&ChatCluster::test().with_log_replicas(3));
        let env = c
            .log
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("spec")
            .containers[0]
            .env
            .clone()
            .unwrap_or_default();
        let peers = env
            .iter()
            .find(|e| e.name == "LOG_PEER_URLS")
            .and_then(|e| e.value.clone());
        assert_eq!(
            peers.as_deref(),
            Some(
                "http://demo-log-0.demo-log-headless.default.svc:8090,\
                 http://demo-log-1.demo-log-headless.default.svc:8090,\
                 http://demo-log-2.demo-log-headless.default.svc:8090"
            )
        );
    }

    #[test]
    fn chat_server_rolls_one_surge_pod_at_a_time_behind_the_gate() {
        let c = children_of(&ChatCluster::test().with_replicas(5));
        let spec = c.chat_server.spec.expect("spec");
        assert_eq!(spec.replicas, Some(5));
        let rolling = spec
            .strategy
            .and_then(|s| s.rolling_update)
            .expect("rolling update");
        assert_eq!(json!(rolling.max_unavailable), json!(0));
        assert_eq!(json!(rolling.max_surge), json!(1));
        let gates = spec
            .template
            .spec
            .and_then(|s| s.readiness_gates)
            .expect("gates");
        assert_eq!(gates[0].condition_type, CAUGHT_UP_CONDITION);
    }

    #[test]
    fn pdbs_only_protect_two_or_more_replicas() {
        let c = children_of(&ChatCluster::test().with_replicas(1).with_log_replicas(1));
        assert!(c.chat_pdb.is_none() && c.log_pdb.is_none());
        let c = children_of(&ChatCluster::test().with_replicas(2).with_log_replicas(2));
        assert!(c.chat_pdb.is_some() && c.log_pdb.is_some());
    }

    #[test]
    fn existing_claim_sizes_are_kept_and_the_password_is_data() {
        let v = validate(&ChatCluster::test().with_storage("9Gi", None)).expect("valid");
        let f = Facts {
            password: "kept".into(),
            broker_claim_size: Some("1Gi".into()),
            log_claim_size: None,
        };
        let c = build(&v, &f).expect("builds");
        let claims = |s: &StatefulSet| {
            json!(s.spec.as_ref().map(|s| &s.volume_claim_templates))[0]["spec"]["resources"]["requests"]["storage"].clone()
        };
        assert_eq!(claims(&c.broker), "1Gi");
        assert_eq!(claims(&c.log), "9Gi");
        assert_eq!(json!(c.broker_secret)["data"][PASSWORD_KEY], "a2VwdA==");
        assert!(c.broker_secret.string_data.is_none());
        // Deterministic: same input, same children.
        assert_eq!(build(&v, &f).expect("builds"), c);
    }
}
