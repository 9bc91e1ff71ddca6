//! The kube-runtime controller: which watches trigger a reconcile of which ChatCluster, and the
//! per-object exponential backoff after errors.
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

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Api, Client, ResourceExt};

use crate::crd::ChatCluster;
use crate::metrics::Metrics;
use crate::names::{APP_NAME, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY};
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

/// Runs the controller until `shutdown` resolves (then finishes in-flight reconciles).
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    instance: String,
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

    let (reader, writer) = reflector::store();
    let clusters = watcher(
        Api::<PartialObjectMeta<ChatCluster>>::all(client.clone()),
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

    Controller::for_stream(clusters, reader)
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(300)).concurrency(8))
        .owns_stream(watcher(Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()), managed.clone()).touched_objects())
        .owns_stream(watcher(Api::<PartialObjectMeta<Deployment>>::all(client.clone()), managed.clone()).touched_objects())
        .owns_stream(watcher(Api::<PartialObjectMeta<Service>>::all(client.clone()), managed.clone()).touched_objects())
        .owns_stream(watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), managed.clone()).touched_objects())
        .owns_stream(watcher(Api::<PartialObjectMeta<PodDisruptionBudget>>::all(client.clone()), managed.clone()).touched_objects())
        .owns_stream(watcher(Api::<PartialObjectMeta<NetworkPolicy>>::all(client.clone()), managed).touched_objects())
        .watches_stream(watcher(Api::<PartialObjectMeta<Pod>>::all(client.clone()), pods).touched_objects(), owner_of_pod)
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
}
