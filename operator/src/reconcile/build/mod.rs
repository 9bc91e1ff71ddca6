//! Pure desired-state builder: one validated `ChatCluster` plus the dereferenced facts in, every
//! child object out as typed k8s-openapi structs ([`Children<Desired>`]). No client, no clock, no
//! randomness — the same input always yields the same children, which is what makes server-side
//! apply idempotent and the builder snapshot-testable (`tests/fixtures/demo-children.yaml`).
//!
//! One module per child kind — [`secret`], [`service`], [`broker`] (StatefulSet),
//! [`replication_log`] (StatefulSet), [`chat_server`] (Deployment), [`pdb`], [`network_policy`] —
//! [`pod_monitor`] for the optional PodMonitor (not a child: `reconcile::monitoring` writes it),
//! and [`pod`] for the
//! container settings all three workloads share. This module holds [`Parent`], the owner's
//! metadata every child carries. Child names, labels and ports come from [`crate::names`].

pub mod broker;
pub mod chat_server;
pub mod network_policy;
pub mod pdb;
pub mod pod;
pub mod pod_monitor;
pub mod replication_log;
pub mod secret;
pub mod service;

use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::children::{Children, Desired};
use super::dereference::Facts;
use super::validate::Validated;
use crate::crd::PodSettings;
use crate::names::{Component, Names, labels, selector_labels};

/// Builds every child of `cluster`.
pub fn build(cluster: &Validated, facts: &Facts) -> Children<Desired> {
    let parent = Parent::of(cluster);
    let names = &parent.names;
    let policies = cluster.spec.network_policy.enabled;
    Children {
        broker_secret: secret::broker(&parent, &facts.passwords),
        broker_service: service::broker(&parent),
        broker: broker::stateful_set(&parent, facts.broker_claim_size.as_deref()),
        log_headless_service: service::log_headless(&parent),
        log_service: service::log(&parent),
        log: replication_log::stateful_set(&parent, facts.log_claim_size.as_deref()),
        log_pdb: pdb::one_at_a_time(
            &parent,
            Component::ReplicationLog,
            &names.log,
            cluster.spec.replication_log.replicas,
        ),
        chat_server: chat_server::deployment(&parent),
        chat_service: service::chat_server(&parent),
        chat_pdb: pdb::one_at_a_time(
            &parent,
            Component::ChatServer,
            &names.chat_server,
            cluster.spec.replicas,
        ),
        auth_secret: facts
            .auth_key
            .as_deref()
            .map(|key| secret::auth(&parent, key)),
        internal_secret: secret::internal(&parent, &facts.internal_token),
        broker_policy: policies.then(|| network_policy::broker(&parent)),
        log_policy: policies.then(|| network_policy::replication_log(&parent)),
        chat_policy: policies.then(|| network_policy::chat_server(&parent)),
    }
}

/// The ChatCluster the children belong to: its validated spec, the child names, and the
/// metadata every child carries (labels, namespace, controller owner reference).
pub struct Parent<'a> {
    /// The validated ChatCluster.
    pub cluster: &'a Validated,
    /// Its child names.
    pub names: Names,
}

impl<'a> Parent<'a> {
    /// The parent `cluster`.
    pub fn of(cluster: &'a Validated) -> Parent<'a> {
        Parent {
            cluster,
            names: Names::of(&cluster.name),
        }
    }

    /// Metadata of the child `name` of `component`: the component's labels, the namespace and
    /// the controller owner reference.
    pub fn metadata(&self, name: &str, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.cluster.namespace.clone()),
            labels: Some(labels(&self.cluster.name, component)),
            owner_references: Some(vec![self.cluster.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The label selector (instance + component) of `component`'s pods.
    pub fn selector(&self, component: Component) -> LabelSelector {
        LabelSelector {
            match_labels: Some(selector_labels(&self.cluster.name, component)),
            ..LabelSelector::default()
        }
    }

    /// A pod template of `component`: `spec` with `settings` laid over it
    /// ([`pod::apply_settings`], `default_resources` where `settings.resources` is unset), the
    /// component's labels over `settings.podLabels` (ours win), and `settings.podAnnotations`.
    pub fn pod_template(
        &self,
        component: Component,
        settings: &PodSettings,
        default_resources: ResourceRequirements,
        mut spec: PodSpec,
    ) -> PodTemplateSpec {
        pod::apply_settings(
            &mut spec,
            settings,
            default_resources,
            self.selector(component),
        );
        let mut pod_labels = settings.pod_labels.clone();
        pod_labels.extend(labels(&self.cluster.name, component));
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                annotations: (!settings.pod_annotations.is_empty())
                    .then(|| settings.pod_annotations.clone()),
                ..ObjectMeta::default()
            }),
            spec: Some(spec),
        }
    }

    /// The StatefulSets' claim retention, from `spec.persistentVolumeClaimRetentionPolicy`.
    pub fn claim_retention(&self) -> StatefulSetPersistentVolumeClaimRetentionPolicy {
        let policy = &self.cluster.spec.persistent_volume_claim_retention_policy;
        StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: Some(policy.when_deleted.as_str().into()),
            when_scaled: Some(policy.when_scaled.as_str().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CAUGHT_UP_CONDITION, ChatCluster};
    use crate::names::{
        LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, PASSWORD_KEY,
    };
    use crate::reconcile::dereference::BrokerPasswords;
    use crate::reconcile::validate::validate;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::ResourceExt;
    use serde_json::{Value, json};

    fn facts() -> Facts {
        Facts {
            passwords: BrokerPasswords {
                admin: "s3cret".into(),
                chat_server: "s3cret-cs".into(),
                replication_log: "s3cret-rl".into(),
            },
            broker_claim_size: None,
            log_claim_size: None,
            auth_key: Some("an-hs256-key-of-at-least-32-bytes-for-tests".into()),
            internal_token: "internal-token-for-tests".into(),
        }
    }

    fn children_of(cluster: &ChatCluster) -> Children<Desired> {
        build(&validate(cluster).expect("valid"), &facts())
    }

    /// Every built object, in apply order, as JSON (exhaustive: a new child must be listed here).
    fn all_objects(c: &Children<Desired>) -> Vec<Value> {
        let Children {
            broker_secret,
            broker_service,
            broker,
            log_headless_service,
            log_service,
            log,
            log_pdb,
            chat_server,
            chat_service,
            chat_pdb,
            auth_secret,
            internal_secret,
            broker_policy,
            log_policy,
            chat_policy,
        } = c;
        let mut out = vec![
            json!(broker_secret),
            json!(broker_service),
            json!(broker),
            json!(log_headless_service),
            json!(log_service),
            json!(log),
        ];
        out.extend(log_pdb.iter().map(|p| json!(p)));
        out.push(json!(chat_server));
        out.push(json!(chat_service));
        out.extend(chat_pdb.iter().map(|p| json!(p)));
        out.extend(auth_secret.iter().map(|s| json!(s)));
        out.push(json!(internal_secret));
        for policy in [broker_policy, log_policy, chat_policy] {
            out.extend(policy.iter().map(|p| json!(p)));
        }
        out
    }

    fn render(c: &Children<Desired>) -> String {
        all_objects(c)
            .iter()
            .map(|o| serde_yaml::to_string(o).expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The exact children of each `tests/fixtures/{name}.yaml` are `{name}-children.yaml`:
    /// `demo` (defaults), `settings` (per-component pod, Service and image settings).
    /// After an intended change: `UPDATE_SNAPSHOTS=1 cargo test -p chat-cluster-operator build`.
    #[test]
    fn fixtures_build_the_committed_children() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        for name in ["demo", "settings"] {
            let input = std::fs::read_to_string(format!("{dir}/{name}.yaml")).expect("fixture");
            let cluster: ChatCluster = serde_yaml::from_str(&input).expect("fixture parses");
            let rendered = render(&children_of(&cluster));
            let expected_path = format!("{dir}/{name}-children.yaml");
            if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
                std::fs::write(&expected_path, &rendered).expect("write snapshot");
            }
            let expected = std::fs::read_to_string(&expected_path).expect("snapshot exists");
            assert!(
                expected == rendered,
                "children differ from {expected_path}; got:\n{rendered}"
            );
        }
    }

    #[test]
    fn every_child_is_labelled_and_owned() {
        let c = children_of(&ChatCluster::test());
        let objects = all_objects(&c);
        assert_eq!(objects.len(), 15);
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

    /// Redis runs with the ACL users (`default` off; every password from a variable the kubelet
    /// expands, none in the spec), and each data-plane pod connects as its own role with its
    /// role's password: no chat-server or replication-log pod can read the admin password.
    #[test]
    fn each_role_connects_as_its_own_redis_user() {
        let c = children_of(&ChatCluster::test());
        let broker = c.broker.spec.and_then(|s| s.template.spec).expect("pod");
        let args = broker.containers[0].args.clone().unwrap_or_default();
        let at = args
            .windows(3)
            .position(|w| w == ["--user", "default", "off"]);
        assert!(at.is_some(), "{args:?}");
        assert!(!args.iter().any(|a| a == "--requirepass"));
        for (user, password) in [
            ("admin", ">$(REDIS_PASSWORD)"),
            ("chat-server", ">$(CHAT_SERVER_REDIS_PASSWORD)"),
            ("replication-log", ">$(REPLICATION_LOG_REDIS_PASSWORD)"),
        ] {
            assert!(
                args.windows(4)
                    .any(|w| w == ["--user", user, "on", password]),
                "{user}: {args:?}"
            );
        }
        let secret = json!(c.broker_secret);
        for key in [
            PASSWORD_KEY,
            "chat-server-password",
            "replication-log-password",
        ] {
            assert!(secret["data"][key].is_string(), "{key}: {secret}");
        }
        for (spec, user, key) in [
            (
                c.chat_server.spec.and_then(|s| s.template.spec),
                "chat-server",
                "chat-server-password",
            ),
            (
                c.log.spec.and_then(|s| s.template.spec),
                "replication-log",
                "replication-log-password",
            ),
        ] {
            let env = json!(spec.expect("spec").containers[0].env);
            let env = env.as_array().expect("env");
            let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
            assert_eq!(
                var("REDIS_PASSWORD").expect("REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["key"],
                key
            );
            let url = var("REDIS_URL").expect("REDIS_URL")["value"].clone();
            assert_eq!(
                url,
                format!("redis://{user}:$(REDIS_PASSWORD)@demo-broker:6379"),
            );
            assert!(
                !env.iter()
                    .any(|e| e["valueFrom"]["secretKeyRef"]["key"] == PASSWORD_KEY),
                "{user} pod reads the admin password"
            );
        }
    }

    /// `spec.broker.tls`: Redis listens only with TLS on 6379 (certificate, key and CA from the
    /// Secret, mounted only into the broker), the probe speaks TLS, and the data-plane pods get
    /// `ca.crt` alone, `REDIS_CA_FILE` and a `rediss://` URL.
    #[test]
    fn broker_tls_reaches_redis_the_probe_and_the_data_plane() {
        let mut cluster = ChatCluster::test();
        cluster.spec.broker.tls = Some(crate::crd::BrokerTls {
            secret_name: "certs".into(),
        });
        let c = children_of(&cluster);
        let broker = c.broker.spec.and_then(|s| s.template.spec).expect("pod");
        let redis = &broker.containers[0];
        let args = redis.args.clone().unwrap_or_default();
        let dir = "/etc/chat-cluster/redis-tls";
        for pair in [
            ["--port", "0"],
            ["--tls-port", "6379"],
            ["--tls-cert-file", &format!("{dir}/tls.crt")],
            ["--tls-key-file", &format!("{dir}/tls.key")],
            ["--tls-ca-cert-file", &format!("{dir}/ca.crt")],
            ["--tls-auth-clients", "no"],
        ] {
            assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
        }
        assert!(!args.windows(2).any(|w| w == ["--port", "6379"]));
        let probe = json!(redis.readiness_probe)["exec"]["command"].clone();
        assert_eq!(
            probe,
            json!([
                "redis-cli",
                "--tls",
                "--cacert",
                format!("{dir}/ca.crt"),
                "--user",
                "admin",
                "-e",
                "-p",
                "6379",
                "ping"
            ])
        );
        let volumes = json!(broker.volumes);
        assert_eq!(volumes[0]["secret"]["secretName"], "certs");
        assert_eq!(
            volumes[0]["secret"]["items"].as_array().map(Vec::len),
            Some(3)
        );
        for spec in [
            c.chat_server.spec.and_then(|s| s.template.spec),
            c.log.spec.and_then(|s| s.template.spec),
        ] {
            let pod = spec.expect("pod");
            let container = json!(pod.containers[0]);
            let env = container["env"].as_array().cloned().unwrap_or_default();
            let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
            assert_eq!(
                var("REDIS_CA_FILE").expect("REDIS_CA_FILE")["value"],
                format!("{dir}/ca.crt")
            );
            let url = var("REDIS_URL").expect("REDIS_URL")["value"].clone();
            assert!(
                url.as_str().is_some_and(|u| u.starts_with("rediss://")),
                "{url}"
            );
            let volumes = json!(pod.volumes);
            let tls = volumes
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == "redis-tls"))
                .cloned()
                .expect("redis-tls volume");
            // The CA only: the broker's private key never reaches a data-plane pod.
            assert_eq!(
                tls["secret"]["items"],
                json!([{"key": "ca.crt", "path": "ca.crt"}])
            );
        }
        // Without TLS: none of it.
        let plain = children_of(&ChatCluster::test());
        let chat = json!(plain.chat_server);
        assert!(!chat.to_string().contains("REDIS_CA_FILE"));
        assert!(!json!(plain.broker).to_string().contains("--tls-port"));
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
            assert!(
                env[url]
                    .value
                    .as_deref()
                    .is_some_and(|u| u.contains(":$(REDIS_PASSWORD)@demo-broker:6379")),
                "{:?}",
                env[url].value
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

    /// The chat-server container's env value of `name`, its volume names, and the log
    /// container's `INTERNAL_TOKEN_FILE`.
    fn auth_settings(c: &Children<Desired>) -> (Value, Value, Value) {
        let pod = json!(c.chat_server)["spec"]["template"]["spec"].clone();
        let env: serde_json::Map<String, Value> = pod["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("name").to_owned(),
                    e["value"].clone(),
                )
            })
            .collect();
        let volumes: Vec<Value> = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|v| json!([v["name"], v["secret"]["secretName"]]))
            .collect();
        let log = json!(c.log)["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("log env")
            .iter()
            .find(|e| e["name"] == "INTERNAL_TOKEN_FILE")
            .map(|e| e["value"].clone())
            .unwrap_or(Value::Null);
        (json!(env), json!(volumes), log)
    }

    #[test]
    fn auth_spec_becomes_chat_server_flags_and_secret_mounts() {
        use crate::crd::{AuthMode, AuthSpec};
        // (case, spec.auth, CHAT_AUTH, AUTH_HMAC_KEY_FILE, AUTH_AUDIENCE, ALLOWED_ORIGINS,
        //  key Secret mounted, {name}-auth Secret built)
        let table = [
            (
                "default: token with a generated key",
                AuthSpec::default(),
                "token",
                json!("/etc/chat-auth/hmac-key"),
                Value::Null,
                Value::Null,
                Some("demo-auth"),
                true,
            ),
            (
                "token with the user's Secret, audience and origins",
                AuthSpec {
                    secret_name: Some("my-jwt-key".into()),
                    audience: Some("chat".into()),
                    name_claim: Some("name".into()),
                    allowed_origins: vec!["https://a.example".into(), "https://b.example".into()],
                    ..AuthSpec::default()
                },
                "token",
                json!("/etc/chat-auth/hmac-key"),
                json!("chat"),
                json!("https://a.example,https://b.example"),
                Some("my-jwt-key"),
                false,
            ),
            (
                "none: anonymous, no key",
                AuthSpec {
                    mode: AuthMode::None,
                    ..AuthSpec::default()
                },
                "none",
                Value::Null,
                Value::Null,
                Value::Null,
                None,
                false,
            ),
        ];
        for (case, auth, mode, key_file, audience, origins, key_secret, generated) in table {
            let mut cluster = ChatCluster::test();
            cluster.spec.auth = auth;
            let validated = validate(&cluster).expect("valid");
            let mut f = facts();
            f.auth_key = crate::reconcile::dereference::wants_auth_secret(&validated)
                .then(|| "generated-key".to_owned());
            let c = build(&validated, &f);
            let (env, volumes, log_token) = auth_settings(&c);
            assert_eq!(env["CHAT_AUTH"], mode, "{case}");
            assert_eq!(env["AUTH_HMAC_KEY_FILE"], key_file, "{case}");
            assert_eq!(env["AUTH_AUDIENCE"], audience, "{case}");
            // Set, in this table, exactly where the audience is.
            assert_eq!(
                env["AUTH_NAME_CLAIM"],
                if audience.is_null() {
                    Value::Null
                } else {
                    json!("name")
                },
                "{case}"
            );
            assert_eq!(env["ALLOWED_ORIGINS"], origins, "{case}");
            assert_eq!(
                env["INTERNAL_TOKEN_FILE"], "/etc/chat-internal/token",
                "{case}"
            );
            assert_eq!(log_token, "/etc/chat-internal/token", "{case}");
            let mounted = |secret: &str| {
                volumes
                    .as_array()
                    .expect("volumes")
                    .iter()
                    .any(|v| v[1] == secret)
            };
            assert!(mounted("demo-internal"), "{case}: {volumes}");
            assert_eq!(
                key_secret.is_some_and(mounted),
                key_secret.is_some(),
                "{case}: {volumes}"
            );
            assert_eq!(c.auth_secret.is_some(), generated, "{case}");
            assert_eq!(
                json!(c.internal_secret)["data"]["token"],
                "aW50ZXJuYWwtdG9rZW4tZm9yLXRlc3Rz",
                "{case}"
            );
        }
    }

    /// `spec.networkPolicy.enabled` (the default) builds the three policies; `false` none (and
    /// apply prunes the ones that exist).
    #[test]
    fn network_policies_only_when_enabled() {
        let c = children_of(&ChatCluster::test());
        let names = [&c.broker_policy, &c.log_policy, &c.chat_policy]
            .map(|p| p.as_ref().map(ResourceExt::name_any));
        assert_eq!(
            names,
            [
                Some("demo-broker".into()),
                Some("demo-log".into()),
                Some("demo-chat-server".into())
            ]
        );
        let mut off = ChatCluster::test();
        off.spec.network_policy.enabled = false;
        let c = children_of(&off);
        assert!(c.broker_policy.is_none() && c.log_policy.is_none() && c.chat_policy.is_none());
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
            passwords: BrokerPasswords {
                admin: "kept".into(),
                chat_server: "kept-cs".into(),
                replication_log: "kept-rl".into(),
            },
            broker_claim_size: Some("1Gi".into()),
            log_claim_size: None,
            auth_key: None,
            internal_token: "kept-token".into(),
        };
        let c = build(&v, &f);
        let claims = |s: &StatefulSet| {
            json!(s.spec.as_ref().map(|s| &s.volume_claim_templates))[0]["spec"]["resources"]["requests"]["storage"].clone()
        };
        assert_eq!(claims(&c.broker), "1Gi");
        assert_eq!(claims(&c.log), "9Gi");
        assert_eq!(json!(c.broker_secret)["data"][PASSWORD_KEY], "a2VwdA==");
        assert!(c.broker_secret.string_data.is_none());
        // Deterministic: same input, same children.
        assert_eq!(build(&v, &f), c);
    }

    fn template(s: &StatefulSet) -> Value {
        json!(s.spec.as_ref().map(|s| &s.template))
    }

    /// Issue 12: the broker rolls only when its own settings change.
    #[test]
    fn data_plane_image_and_policy_changes_leave_the_broker_template_alone() {
        let base = children_of(&ChatCluster::test());
        let mut changed = ChatCluster::test().with_image("chat-cluster/chat-server:9.9.9");
        changed.spec.image_pull_policy = crate::crd::ImagePullPolicy::Never;
        changed.spec.chat_server.image = Some("other:1".into());
        changed.spec.replication_log.image_pull_policy = Some(crate::crd::ImagePullPolicy::Always);
        changed.spec.chat_server.pod.resources = Some(Default::default());
        let c = children_of(&changed);
        assert_eq!(template(&c.broker), template(&base.broker));
        assert_ne!(template(&c.log), template(&base.log));
        // And the other way round: broker settings touch neither data-plane template.
        let mut broker = ChatCluster::test();
        broker.spec.broker.image_pull_policy = crate::crd::ImagePullPolicy::Always;
        broker.spec.broker.image = "redis:7.4".into();
        let c = children_of(&broker);
        assert_ne!(template(&c.broker), template(&base.broker));
        assert_eq!(template(&c.log), template(&base.log));
        assert_eq!(
            json!(c.chat_server.spec.map(|s| s.template)),
            json!(base.chat_server.spec.map(|s| s.template))
        );
    }

    /// Each component's image and pull policy: its own field, else the top-level default.
    #[test]
    fn images_and_pull_policies_per_component() {
        let image = |c: &Container| (c.image.clone(), c.image_pull_policy.clone());
        let containers = |c: &Children<Desired>| {
            [
                c.broker.spec.clone().and_then(|s| s.template.spec),
                c.log.spec.clone().and_then(|s| s.template.spec),
                c.chat_server.spec.clone().and_then(|s| s.template.spec),
            ]
            .map(|s| image(pod_spec_containers(&s.expect("pod"))))
        };
        let some = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
        let mut cluster = ChatCluster::test().with_image("dp:1");
        cluster.spec.image_pull_policy = crate::crd::ImagePullPolicy::Never;
        assert_eq!(
            containers(&children_of(&cluster)),
            [
                some("redis:7.2", "IfNotPresent"),
                some("dp:1", "Never"),
                some("dp:1", "Never")
            ]
        );
        cluster.spec.replication_log.image = Some("log:2".into());
        cluster.spec.chat_server.image_pull_policy = Some(crate::crd::ImagePullPolicy::Always);
        assert_eq!(
            containers(&children_of(&cluster)),
            [
                some("redis:7.2", "IfNotPresent"),
                some("log:2", "Never"),
                some("dp:1", "Always")
            ]
        );
    }

    /// Unset settings: the component's default resources and a soft spread over nodes.
    #[test]
    fn defaults_spread_over_nodes_softly() {
        let c = children_of(&ChatCluster::test());
        for (spec, component, limit) in [
            (
                c.broker.spec.and_then(|s| s.template.spec),
                "broker",
                "256Mi",
            ),
            (
                c.log.spec.and_then(|s| s.template.spec),
                "replication-log",
                "512Mi",
            ),
            (
                c.chat_server.spec.and_then(|s| s.template.spec),
                "chat-server",
                "512Mi",
            ),
        ] {
            let spec = spec.expect("pod");
            let spread = json!(spec.topology_spread_constraints);
            assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname");
            assert_eq!(spread[0]["whenUnsatisfiable"], "ScheduleAnyway");
            assert_eq!(spread[0]["maxSkew"], 1);
            assert_eq!(
                spread[0]["labelSelector"]["matchLabels"][LABEL_COMPONENT],
                component
            );
            let resources = json!(spec.containers[0].resources);
            assert_eq!(resources["limits"]["memory"], limit, "{component}");
            assert!(spec.affinity.is_none() && spec.tolerations.is_none());
        }
        // An empty list turns the default spread off.
        let mut none = ChatCluster::test();
        none.spec.chat_server.pod.topology_spread_constraints = Some(vec![]);
        let c = children_of(&none);
        assert!(
            c.chat_server
                .spec
                .and_then(|s| s.template.spec)
                .expect("pod")
                .topology_spread_constraints
                .is_none()
        );
    }

    /// `maxmemory` is 75 % of the broker's memory limit, `noeviction`; none without a limit.
    #[test]
    fn broker_maxmemory_follows_its_memory_limit() {
        let args = |cluster: &ChatCluster| {
            children_of(cluster)
                .broker
                .spec
                .and_then(|s| s.template.spec)
                .expect("pod")
                .containers[0]
                .args
                .clone()
                .unwrap_or_default()
        };
        let value = |args: &[String], flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        let default = args(&ChatCluster::test());
        assert_eq!(value(&default, "--maxmemory").as_deref(), Some("201326592"));
        assert_eq!(
            value(&default, "--maxmemory-policy").as_deref(),
            Some("noeviction")
        );
        let mut big = ChatCluster::test();
        big.spec.broker.pod.resources =
            serde_json::from_value(json!({"limits": {"memory": "1Gi"}})).expect("resources");
        assert_eq!(
            value(&args(&big), "--maxmemory").as_deref(),
            Some("805306368")
        );
        let mut unlimited = ChatCluster::test();
        unlimited.spec.broker.pod.resources =
            serde_json::from_value(json!({"requests": {"memory": "1Gi"}})).expect("resources");
        let a = args(&unlimited);
        assert_eq!(value(&a, "--maxmemory"), None);
        assert_eq!(
            value(&a, "--maxmemory-policy").as_deref(),
            Some("noeviction")
        );
    }

    /// The broker is ready only on `PONG` (not while `LOADING`), authenticated by REDISCLI_AUTH.
    #[test]
    fn broker_readiness_asks_redis_for_pong() {
        let pod = children_of(&ChatCluster::test())
            .broker
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let container = &pod.containers[0];
        let probe = json!(container.readiness_probe);
        assert_eq!(
            probe["exec"]["command"],
            json!(["redis-cli", "--user", "admin", "-e", "-p", "6379", "ping"])
        );
        let env = json!(container.env);
        assert!(
            env.as_array()
                .expect("env")
                .iter()
                .any(|e| e["name"] == "REDISCLI_AUTH"
                    && e["valueFrom"]["secretKeyRef"]["key"] == PASSWORD_KEY)
        );
        assert!(json!(container.liveness_probe)["tcpSocket"].is_object());
    }

    /// The claim retention policy reaches both StatefulSets.
    #[test]
    fn claim_retention_follows_the_spec() {
        let policy = |c: &Children<Desired>| {
            [&c.broker, &c.log].map(|s| {
                json!(
                    s.spec
                        .as_ref()
                        .map(|s| &s.persistent_volume_claim_retention_policy)
                )
            })
        };
        let retain = json!({"whenDeleted": "Retain", "whenScaled": "Retain"});
        assert_eq!(
            policy(&children_of(&ChatCluster::test())),
            [retain.clone(), retain]
        );
        let mut delete = ChatCluster::test();
        delete
            .spec
            .persistent_volume_claim_retention_policy
            .when_deleted = crate::crd::ClaimRetention::Delete;
        let want = json!({"whenDeleted": "Delete", "whenScaled": "Retain"});
        assert_eq!(policy(&children_of(&delete)), [want.clone(), want]);
    }

    /// Every variable the builders set is in the reserved list validation checks user env
    /// against (`names::*_ENV`), so a user can never shadow one.
    #[test]
    fn reserved_env_lists_cover_every_variable_the_operator_sets() {
        let mut cluster = ChatCluster::test();
        cluster.spec.chat_server.memory_window_bytes = Some(100 << 20);
        cluster.spec.chat_server.max_connections = Some(5);
        cluster.spec.chat_server.ws_send_rate = Some(0);
        cluster.spec.chat_server.post_rate_per_address = Some(100);
        cluster.spec.chat_server.ws_send_burst = Some(10);
        cluster.spec.chat_server.post_burst_per_address = Some(10);
        cluster.spec.chat_server.max_channels = Some(1000);
        cluster.spec.chat_server.max_connections_per_address = Some(50);
        cluster.spec.chat_server.id_write_rate_per_author = Some(5);
        cluster.spec.chat_server.id_write_burst_per_author = Some(50);
        cluster.spec.chat_server.write_rate_per_author = Some(20);
        cluster.spec.chat_server.write_burst_per_author = Some(200);
        cluster.spec.chat_server.max_page_reads = Some(16);
        cluster.spec.chat_server.ws_queue = Some(128);
        cluster.spec.chat_server.ws_write_timeout_seconds = Some(5);
        cluster.spec.chat_server.ws_ping_interval_seconds = Some(20);
        cluster.spec.chat_server.ws_ping_timeout_seconds = Some(45);
        cluster.spec.chat_server.http_header_timeout_seconds = Some(15);
        cluster.spec.chat_server.http_body_timeout_seconds = Some(15);
        let c = children_of(&cluster);
        for (spec, reserved) in [
            (
                c.broker.spec.and_then(|s| s.template.spec),
                crate::names::BROKER_ENV,
            ),
            (
                c.log.spec.and_then(|s| s.template.spec),
                crate::names::LOG_ENV,
            ),
            (
                c.chat_server.spec.and_then(|s| s.template.spec),
                crate::names::CHAT_SERVER_ENV,
            ),
        ] {
            let env = spec.expect("pod").containers[0]
                .env
                .clone()
                .unwrap_or_default();
            let mut names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
            names.sort_unstable();
            // Set only when the spec asks (spec.auth, spec.broker.tls), so absent from this
            // default build.
            let conditional = [
                "ALLOWED_ORIGINS",
                "AUTH_AUDIENCE",
                "AUTH_ISSUER",
                "AUTH_NAME_CLAIM",
                "REDIS_CA_FILE",
            ];
            let mut want: Vec<&str> = reserved
                .iter()
                .copied()
                .filter(|n| !conditional.contains(n))
                .collect();
            // Set only from their spec fields, and otherwise free for the user's env
            // (validation refuses both at once).
            if reserved == crate::names::CHAT_SERVER_ENV {
                want.extend(
                    cluster
                        .spec
                        .chat_server
                        .connection_settings()
                        .map(|(name, _, _)| name),
                );
            }
            want.sort_unstable();
            assert_eq!(names, want);
        }
    }
}
