//! The child objects of one ChatCluster as one type, [`Children`], shared by every step that
//! touches them: dereference reads `Children<Existing>`, build makes `Children<Desired>`, apply
//! turns both into `Children<Live>`, and status reads the workloads from it.
//!
//! The list of child kinds lives only here. Each step builds or takes apart a `Children` with a
//! struct literal or a destructuring without `..`, so a field added here is a compile error in
//! every step that has not handled it yet — a new child cannot be built but never applied,
//! pruned or observed. The controller takes its watched kinds from here too
//! ([`Children::visit_kinds`]), so a child of a new kind is also watched.

use std::fmt::Debug;
use std::marker::PhantomData;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A Kubernetes kind the operator creates as a child: namespaced, with a static kind name
/// (`k8s_openapi::Resource::KIND`), serializable for server-side apply.
pub trait ChildKind:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + k8s_openapi::Resource
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + PartialEq
    + Send
    + Sync
    + 'static
{
}

impl<K> ChildKind for K where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
        + PartialEq
        + Send
        + Sync
        + 'static
{
}

/// What a [`Children`] slot holds at one step of the reconcile.
pub trait Stage {
    /// A child every ChatCluster has.
    type Always<K: ChildKind>: Clone + Debug + PartialEq;
    /// A child the spec may not ask for (a PDB for fewer than two replicas, a NetworkPolicy with
    /// `spec.networkPolicy.enabled: false`).
    type Optional<K: ChildKind>: Clone + Debug + PartialEq;
}

/// Built from the spec (build step): every always-child, the optional ones when wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desired;

/// Read from the API server before apply (dereference step): any of them may be absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing;

/// As the API server returned them after apply (apply step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live;

impl Stage for Desired {
    type Always<K: ChildKind> = K;
    type Optional<K: ChildKind> = Option<K>;
}

impl Stage for Existing {
    type Always<K: ChildKind> = Option<K>;
    type Optional<K: ChildKind> = Option<K>;
}

impl Stage for Live {
    type Always<K: ChildKind> = K;
    type Optional<K: ChildKind> = Option<K>;
}

/// Only the kind of each slot (no object): what [`Children::visit_kinds`] walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds;

impl Stage for Kinds {
    type Always<K: ChildKind> = PhantomData<K>;
    type Optional<K: ChildKind> = PhantomData<K>;
}

/// Called once per [`Children`] field with that field's kind (so a kind used by several fields,
/// such as `Service`, comes several times; `field` tells them apart).
pub trait KindVisitor {
    /// One field of kind `K`; `optional` when the spec may leave it out.
    fn visit<K: ChildKind>(&mut self, field: &'static str, optional: bool);
}

/// Every child object of one ChatCluster, at stage `S`. Names come from
/// [`crate::names::Names`].
#[derive(Clone, Debug, PartialEq)]
pub struct Children<S: Stage> {
    /// `{name}-broker` Secret: the Redis password, created once and kept.
    pub broker_secret: S::Always<Secret>,
    /// `{name}-broker` Service.
    pub broker_service: S::Always<Service>,
    /// `{name}-broker` StatefulSet: one Redis pod, AOF on a volume.
    pub broker: S::Always<StatefulSet>,
    /// `{name}-log-headless` Service giving each log replica a stable DNS name.
    pub log_headless_service: S::Always<Service>,
    /// `{name}-log` client Service of the log replicas.
    pub log_service: S::Always<Service>,
    /// `{name}-log` replication-log StatefulSet.
    pub log: S::Always<StatefulSet>,
    /// `{name}-log` PDB; only for at least two replicas.
    pub log_pdb: S::Optional<PodDisruptionBudget>,
    /// `{name}-chat-server` Deployment.
    pub chat_server: S::Always<Deployment>,
    /// `{name}-chat-server` Service.
    pub chat_service: S::Always<Service>,
    /// `{name}-chat-server` PDB; only for at least two replicas.
    pub chat_pdb: S::Optional<PodDisruptionBudget>,
    /// `{name}-auth` Secret: the HS256 key, generated once; only in token mode without
    /// `spec.auth.secretName`.
    pub auth_secret: S::Optional<Secret>,
    /// `{name}-internal` Secret: the data plane's internal token, generated once.
    pub internal_secret: S::Always<Secret>,
    /// `{name}-broker` NetworkPolicy: Redis from the chat-server and log pods only; only with
    /// `spec.networkPolicy.enabled`.
    pub broker_policy: S::Optional<NetworkPolicy>,
    /// `{name}-log` NetworkPolicy: the log port from the chat-server pods, peers and
    /// `apiServerFrom`/`replicationLogFrom`; only with `spec.networkPolicy.enabled`.
    pub log_policy: S::Optional<NetworkPolicy>,
    /// `{name}-chat-server` NetworkPolicy: the client port (open unless `chatServerFrom`); only
    /// with `spec.networkPolicy.enabled`.
    pub chat_policy: S::Optional<NetworkPolicy>,
}

impl Children<Kinds> {
    /// Calls `visitor` once for every field of [`Children`], in declaration order. The literal
    /// and the destructuring below name every field without `..`, so adding a field is a compile
    /// error here until it is visited.
    pub fn visit_kinds(visitor: &mut impl KindVisitor) {
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
        } = Children::<Kinds> {
            broker_secret: PhantomData,
            broker_service: PhantomData,
            broker: PhantomData,
            log_headless_service: PhantomData,
            log_service: PhantomData,
            log: PhantomData,
            log_pdb: PhantomData,
            chat_server: PhantomData,
            chat_service: PhantomData,
            chat_pdb: PhantomData,
            auth_secret: PhantomData,
            internal_secret: PhantomData,
            broker_policy: PhantomData,
            log_policy: PhantomData,
            chat_policy: PhantomData,
        };
        visitor.visit_field(broker_secret, "broker_secret", false);
        visitor.visit_field(broker_service, "broker_service", false);
        visitor.visit_field(broker, "broker", false);
        visitor.visit_field(log_headless_service, "log_headless_service", false);
        visitor.visit_field(log_service, "log_service", false);
        visitor.visit_field(log, "log", false);
        visitor.visit_field(log_pdb, "log_pdb", true);
        visitor.visit_field(chat_server, "chat_server", false);
        visitor.visit_field(chat_service, "chat_service", false);
        visitor.visit_field(chat_pdb, "chat_pdb", true);
        visitor.visit_field(auth_secret, "auth_secret", true);
        visitor.visit_field(internal_secret, "internal_secret", false);
        visitor.visit_field(broker_policy, "broker_policy", true);
        visitor.visit_field(log_policy, "log_policy", true);
        visitor.visit_field(chat_policy, "chat_policy", true);
    }
}

/// [`KindVisitor::visit`] with `K` taken from the slot's type.
trait VisitField {
    fn visit_field<K: ChildKind>(
        &mut self,
        slot: PhantomData<K>,
        field: &'static str,
        optional: bool,
    );
}

impl<V: KindVisitor> VisitField for V {
    fn visit_field<K: ChildKind>(
        &mut self,
        _: PhantomData<K>,
        field: &'static str,
        optional: bool,
    ) {
        self.visit::<K>(field, optional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visit_kinds_names_every_field_with_its_kind_and_whether_it_is_optional() {
        struct Record(Vec<(&'static str, &'static str, bool)>);
        impl KindVisitor for Record {
            fn visit<K: ChildKind>(&mut self, field: &'static str, optional: bool) {
                self.0
                    .push((field, <K as k8s_openapi::Resource>::KIND, optional));
            }
        }
        let mut record = Record(Vec::new());
        Children::visit_kinds(&mut record);
        let want = [
            ("broker_secret", "Secret", false),
            ("broker_service", "Service", false),
            ("broker", "StatefulSet", false),
            ("log_headless_service", "Service", false),
            ("log_service", "Service", false),
            ("log", "StatefulSet", false),
            ("log_pdb", "PodDisruptionBudget", true),
            ("chat_server", "Deployment", false),
            ("chat_service", "Service", false),
            ("chat_pdb", "PodDisruptionBudget", true),
            ("auth_secret", "Secret", true),
            ("internal_secret", "Secret", false),
            ("broker_policy", "NetworkPolicy", true),
            ("log_policy", "NetworkPolicy", true),
            ("chat_policy", "NetworkPolicy", true),
        ];
        assert_eq!(record.0, want);
    }
}
