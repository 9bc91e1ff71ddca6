//! Pure desired-state builder: one validated `ChatCluster` plus the dereferenced facts in, every
//! child object out as typed k8s-openapi structs ([`Children<Desired>`]). No client, no clock, no
//! randomness — the same input always yields the same children, which is what makes server-side
//! apply idempotent and the builder snapshot-testable (`tests/fixtures/demo-children.yaml`).
//!
//! One module per child kind — [`secret`], [`service`], [`broker`] (StatefulSet),
//! [`replication_log`] (StatefulSet), [`chat_server`] (Deployment), [`pdb`] — and [`pod`] for the
//! container settings all three workloads share. This module holds [`Parent`], the owner's
//! metadata every child carries. Child names, labels and ports come from [`crate::names`].

pub mod broker;
pub mod chat_server;
pub mod pdb;
pub mod pod;
pub mod replication_log;
pub mod secret;
pub mod service;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::children::{Children, Desired};
use super::dereference::Facts;
use super::validate::Validated;
use crate::names::{Component, Names, labels, selector_labels};

/// Builds every child of `cluster`.
pub fn build(cluster: &Validated, facts: &Facts) -> Children<Desired> {
    let parent = Parent::of(cluster);
    let names = &parent.names;
    Children {
        broker_secret: secret::broker(&parent, &facts.password),
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

    /// A pod template of `component` with the component's labels.
    pub fn pod_template(
        &self,
        component: Component,
        spec: k8s_openapi::api::core::v1::PodSpec,
    ) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(&self.cluster.name, component)),
                ..ObjectMeta::default()
            }),
            spec: Some(spec),
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
    use crate::reconcile::validate::validate;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::ResourceExt;
    use serde_json::{Value, json};

    fn facts() -> Facts {
        Facts {
            password: "s3cret".into(),
            broker_claim_size: None,
            log_claim_size: None,
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
        out
    }

    fn render(c: &Children<Desired>) -> String {
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
}
