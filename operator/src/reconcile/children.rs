//! The child objects of one ChatCluster as one type, [`Children`], shared by every step that
//! touches them: dereference reads `Children<Existing>`, build makes `Children<Desired>`, apply
//! turns both into `Children<Live>`, and status reads the workloads from it.
//!
//! The list of child kinds lives only here. Each step builds or takes apart a `Children` with a
//! struct literal or a destructuring without `..`, so a field added here is a compile error in
//! every step that has not handled it yet — a new child cannot be built but never applied,
//! pruned or observed.

use std::fmt::Debug;

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
