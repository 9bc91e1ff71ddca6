//! The kube-runtime controller: which namespaces it watches ([`WatchScope`], from
//! `WATCH_NAMESPACES`), which watches trigger a reconcile of which ChatCluster, and the per-object
//! exponential backoff after errors.
//!
//! Cluster mode (no `WATCH_NAMESPACES`) watches every namespace with one controller; namespaced
//! mode runs one controller per listed namespace (a reflector store holds one watch's objects),
//! so the operator needs no cluster-scoped permission at all. Secrets are watched (by the
//! operator's managed-by label) only in namespaced mode: a label selector does not narrow what
//! RBAC grants, so in cluster mode that would need list/watch of every Secret in the cluster.
//! There a changed or deleted broker Secret is restored by the steady-state requeue instead.
//!
//! Every watch is a *metadata* watch, so no single object the operator cannot decode (say, a
//! ChatCluster stored under an older schema) can break a list or watch: the reconcile GETs the
//! full ChatCluster, and a decode failure fails that one reconcile, which backs off on its own.
//! The ChatCluster watch is filtered by generation, so the operator's own status patches do not
//! trigger reconciles; owned children (by owner reference) and every child pod (by the instance
//! label) trigger the owner.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::ChatCluster;
use crate::metrics::Metrics;
use crate::names::{APP_NAME, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY};
use crate::reconcile::children::{ChildKind, Children, KindVisitor};
use crate::reconcile::{self, Context};

/// First retry delay after a failed reconcile; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Consecutive failures per ChatCluster.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Delay after `failures` consecutive failures: 0.5 s, 1 s, 2 s, … capped at 5 min.
pub fn backoff_delay(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

struct State {
    ctx: Arc<Context>,
    backoff: Backoff,
}

fn key(object: &PartialObjectMeta<ChatCluster>) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Which namespaces the operator reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (cluster mode).
    Cluster,
    /// Only these namespaces (namespaced mode): sorted, without duplicates, never empty.
    Namespaces(Vec<String>),
}

/// A `WATCH_NAMESPACES` value that is not a list of namespace names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchScopeError {
    /// One entry is not a DNS-1123 label (what Kubernetes requires of a namespace name).
    #[error(
        "WATCH_NAMESPACES: {0:?} is not a namespace name (lower-case letters, digits and '-', \
         starting and ending with a letter or digit, at most 63 characters)"
    )]
    InvalidName(String),
}

impl WatchScope {
    /// Parses `WATCH_NAMESPACES`: names separated by commas (spaces around them ignored).
    /// Empty (or only separators) means [`WatchScope::Cluster`]. Each name must be a DNS-1123
    /// label (RFC 1123 §2.1 as Kubernetes applies it to namespaces: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`,
    /// at most 63 characters); the first that is not is the error.
    pub fn parse(value: &str) -> Result<WatchScope, WatchScopeError> {
        let mut names: Vec<String> = Vec::new();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !is_dns1123_label(name) {
                return Err(WatchScopeError::InvalidName(name.to_owned()));
            }
            names.push(name.to_owned());
        }
        names.sort();
        names.dedup();
        Ok(if names.is_empty() {
            WatchScope::Cluster
        } else {
            WatchScope::Namespaces(names)
        })
    }

    /// The namespaces to run a controller for: `None` is every namespace.
    fn namespaces(&self) -> Vec<Option<String>> {
        match self {
            WatchScope::Cluster => vec![None],
            WatchScope::Namespaces(names) => names.iter().cloned().map(Some).collect(),
        }
    }

    /// Whether the operator watches its Secrets: only where RBAC can confine list/watch of
    /// Secrets to the watched namespaces.
    pub fn watches_secrets(&self) -> bool {
        matches!(self, WatchScope::Namespaces(_))
    }
}

impl std::fmt::Display for WatchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchScope::Cluster => f.write_str("all namespaces"),
            WatchScope::Namespaces(names) => f.write_str(&names.join(",")),
        }
    }
}

fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let end_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(inner_ok)
        && bytes.first().is_some_and(end_ok)
        && bytes.last().is_some_and(end_ok)
}

/// An Api for `K` in `namespace`, or in every namespace when `None`.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller for `scope` until `shutdown` resolves (then finishes in-flight
/// reconciles): one controller for the whole cluster, or one per watched namespace.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    instance: String,
    scope: WatchScope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: MANAGED_BY.into(),
        instance: Some(instance),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let state = Arc::new(State {
        ctx: Arc::new(Context {
            client: client.clone(),
            recorder,
            metrics,
        }),
        backoff: Backoff::default(),
    });
    tracing::info!(namespaces = %scope, watch_secrets = scope.watches_secrets(), "starting the controller");
    let shutdown = shutdown.shared();
    futures::future::join_all(scope.namespaces().into_iter().map(|namespace| {
        run_one(
            client.clone(),
            state.clone(),
            namespace,
            scope.watches_secrets(),
            shutdown.clone(),
        )
    }))
    .await;
}

/// One controller over `namespace` (every namespace when `None`).
async fn run_one(
    client: Client,
    state: Arc<State>,
    namespace: Option<String>,
    watch_secrets: bool,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    let (reader, writer) = reflector::store();
    let clusters = watcher(
        api::<PartialObjectMeta<ChatCluster>>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    // Every child pod: the chat-servers for the gate, all of them for their health (a broker pod
    // going into ImagePullBackOff must show in the status without waiting for a requeue).
    let pods = watcher::Config::default().labels(&format!("{LABEL_NAME}={APP_NAME}"));

    let controller = Controller::for_stream(clusters, reader)
        .with_config(
            ControllerConfig::default()
                .debounce(Duration::from_millis(300))
                .concurrency(8),
        )
        .watches_stream(
            watcher(api::<PartialObjectMeta<Pod>>(&client, ns), pods).touched_objects(),
            owner_of_pod,
        );
    let mut owns = OwnChildren {
        controller: Some(controller),
        client: &client,
        namespace: ns,
        config: managed,
        wanted: owned_kinds(watch_secrets),
        watched: Vec::new(),
    };
    Children::visit_kinds(&mut owns);
    let Some(controller) = owns.controller else {
        return;
    };
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            |object, state: Arc<State>| async move {
                let result = reconcile::reconcile(object.clone(), state.ctx.clone()).await;
                if result.is_ok() {
                    state.backoff.succeeded(&key(&object));
                }
                result
            },
            |object, error, state: Arc<State>| {
                let delay = state.backoff.failed(&key(&object));
                tracing::warn!(chatcluster = %key(&object), error = %error, retry_in = ?delay, "reconcile failed");
                Action::requeue(delay)
            },
            state,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(chatcluster = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

/// The kinds the controller watches as owned children: each kind of [`Children`] once, in field
/// order, except `Secret` when `watch_secrets` is false (cluster mode, where RBAC cannot confine
/// a Secret watch to the operator's own; a reconcile still reads them by name).
fn owned_kinds(watch_secrets: bool) -> Vec<&'static str> {
    struct Collect(Vec<&'static str>);
    impl KindVisitor for Collect {
        fn visit<K: ChildKind>(&mut self, _field: &'static str, _optional: bool) {
            let kind = <K as k8s_openapi::Resource>::KIND;
            if !self.0.contains(&kind) {
                self.0.push(kind);
            }
        }
    }
    let mut all = Collect(Vec::new());
    Children::visit_kinds(&mut all);
    let secret = <Secret as k8s_openapi::Resource>::KIND;
    all.0
        .into_iter()
        .filter(|kind| watch_secrets || *kind != secret)
        .collect()
}

/// Adds a watch of the operator-managed objects of each kind in `wanted` to the controller (the
/// I/O half of [`owned_kinds`]).
struct OwnChildren<'a> {
    controller: Option<Controller<PartialObjectMeta<ChatCluster>>>,
    client: &'a Client,
    namespace: Option<&'a str>,
    config: watcher::Config,
    wanted: Vec<&'static str>,
    watched: Vec<&'static str>,
}

impl KindVisitor for OwnChildren<'_> {
    fn visit<K: ChildKind>(&mut self, _field: &'static str, _optional: bool) {
        let kind = <K as k8s_openapi::Resource>::KIND;
        if !self.wanted.contains(&kind) || self.watched.contains(&kind) {
            return;
        }
        self.watched.push(kind);
        self.controller = self.controller.take().map(|controller| {
            controller.owns_stream(
                watcher(
                    api::<PartialObjectMeta<K>>(self.client, self.namespace),
                    self.config.clone(),
                )
                .touched_objects(),
            )
        });
    }
}

/// The ChatCluster a child pod belongs to, from its instance label.
fn owner_of_pod(pod: PartialObjectMeta<Pod>) -> Option<ObjectRef<PartialObjectMeta<ChatCluster>>> {
    let instance = pod.labels().get(LABEL_INSTANCE)?;
    let namespace = pod.namespace()?;
    Some(ObjectRef::new(instance).within(&namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(1), Duration::from_millis(500));
        assert_eq!(backoff_delay(2), Duration::from_secs(1));
        assert_eq!(backoff_delay(4), Duration::from_secs(4));
        assert_eq!(backoff_delay(30), BACKOFF_MAX);
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_millis(500));
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("b"), Duration::from_millis(500));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_millis(500));
    }

    #[test]
    fn watch_namespaces_parses() {
        let ns =
            |names: &[&str]| WatchScope::Namespaces(names.iter().map(|n| n.to_string()).collect());
        let bad = |name: &str| Err(WatchScopeError::InvalidName(name.into()));
        let cases: [(&str, Result<WatchScope, WatchScopeError>); 12] = [
            ("", Ok(WatchScope::Cluster)),
            ("  ", Ok(WatchScope::Cluster)),
            (",,", Ok(WatchScope::Cluster)),
            ("team-a", Ok(ns(&["team-a"]))),
            ("b, a ,b,", Ok(ns(&["a", "b"]))),
            ("a1,0", Ok(ns(&["0", "a1"]))),
            (&"x".repeat(63), Ok(ns(&[&"x".repeat(63)]))),
            (&"x".repeat(64), bad(&"x".repeat(64))),
            ("Team", bad("Team")),
            ("a,-b", bad("-b")),
            ("b-", bad("b-")),
            ("a b", bad("a b")),
        ];
        for (input, want) in cases {
            assert_eq!(WatchScope::parse(input), want, "{input:?}");
        }
        assert!(ns(&["a"]).watches_secrets());
        assert!(!WatchScope::Cluster.watches_secrets());
        assert_eq!(ns(&["a", "b"]).to_string(), "a,b");
    }

    #[test]
    fn every_child_kind_is_watched_once_and_secrets_only_where_rbac_confines_them() {
        let namespaced = [
            "Secret",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "Deployment",
            "NetworkPolicy",
        ];
        let cases: [(bool, &[&str]); 2] = [(true, &namespaced), (false, &namespaced[1..])];
        for (watch_secrets, want) in cases {
            assert_eq!(
                owned_kinds(watch_secrets),
                want,
                "watch_secrets={watch_secrets}"
            );
        }
    }
}
