//! One reconcile of one ChatCluster, as a pipeline of steps, each in its own module with its own
//! error enum; `reconcile_inner` reads as one call per step:
//!
//! 1. [`validate`] (pure): identity and what the schema cannot check.
//! 2. [`dereference`] (all the reads): the existing children, the pods, the data plane's `/status`
//!    documents; keep or create the Redis passwords. [`health`] reads pod-level causes
//!    (image pull, crash loop, unschedulable, pending claim) from the pods it read, and
//!    [`storage`] the claims kept from an earlier ChatCluster of the same name (both pure).
//! 3. [`ownership`] (pure): a child name taken by an object this ChatCluster does not control
//!    stops the reconcile here with `Degraded`/`NameConflict`; nothing is adopted.
//! 4. [`build`] (pure): every child object, typed, one module per kind.
//! 5. [`log_rollout`]: decide (pure) the log StatefulSet's partition — one replica at a time,
//!    each ready and caught up before the next, halt or roll back past catchUpTimeout — and shape
//!    the built StatefulSet by it.
//! 6. [`apply`]: server-side apply what differs; prune what is no longer wanted; then carry out
//!    the log rollout's pod deletion, if any.
//! 7. [`monitoring`]: the optional PodMonitor (`spec.monitoring.enablePodMonitor`), where the API
//!    server serves the Prometheus Operator's kind (pure decision + apply or delete; never
//!    fails the reconcile, reports in the `PodMonitorMissing` condition).
//! 8. [`gate`]: pass chat-server pods that have caught up (pure decision + patch).
//! 9. [`status`]: compute (pure) and patch the status when it changed.
//!
//! [`children::Children`] is the one list of child kinds the steps share. [`Error`] wraps the step
//! errors; its [`Error::kind`] labels the error metric.

pub mod apply;
pub mod build;
pub mod children;
pub mod dereference;
pub mod gate;
pub mod health;
pub mod log_rollout;
pub mod monitoring;
pub mod ownership;
pub mod status;
pub mod storage;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, info_span};

use crate::crd::{ChatCluster, ChatClusterStatus, Phase};
use crate::metrics::Metrics;

/// Requeue while a pod is catching up.
const REQUEUE_GATING: Duration = Duration::from_secs(2);
/// Requeue while pending or progressing (log head/persisted are not watched).
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(10);
/// Requeue when settled, to refresh head/persisted (reads only unless something changed).
const REQUEUE_STEADY: Duration = Duration::from_secs(60);
/// Requeue while a child name is taken by a foreign object (its deletion triggers no watch: the
/// controller watches only objects the ChatCluster owns).
const REQUEUE_CONFLICT: Duration = Duration::from_secs(10);

/// Shared state of all reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder (reporting controller `chat-cluster-operator`).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the ChatCluster itself failed (including an undecodable object).
    #[error("reading ChatCluster: {0}")]
    Fetch(#[source] kube::Error),
    /// Dereference step.
    #[error(transparent)]
    Dereference(#[from] dereference::DereferenceError),
    /// Apply step.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// Gating step.
    #[error(transparent)]
    Gate(#[from] gate::GateError),
    /// Log rollout step.
    #[error(transparent)]
    LogRollout(#[from] log_rollout::LogRolloutError),
    /// Status step.
    #[error(transparent)]
    Status(#[from] status::StatusError),
}

impl Error {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Fetch(_) => "fetch",
            Error::Dereference(_) => "dereference",
            Error::Apply(_) => "apply",
            Error::Gate(_) => "gate",
            Error::LogRollout(_) => "log_rollout",
            Error::Status(_) => "status",
        }
    }
}

/// Reconciles the ChatCluster whose metadata the controller saw.
pub async fn reconcile(
    object: Arc<PartialObjectMeta<ChatCluster>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let span = info_span!("reconcile", chatcluster = %name, namespace = %namespace);
    let started = Instant::now();
    let result = match reconcile_inner(&name, &namespace, &ctx)
        .instrument(span)
        .await
    {
        // The namespace is being deleted and the ChatCluster with it: a refused create there is
        // the deletion in progress, not a failure (no error metric, no retry; the deletion of
        // the ChatCluster ends its reconciles).
        Err(e) if namespace_terminating(&e) => {
            tracing::debug!(chatcluster = %name, namespace = %namespace, error = %e,
                "namespace being deleted; nothing to reconcile");
            Ok(Action::await_change())
        }
        result => result,
    };
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::kind));
    result
}

/// True when the API server refused a write of the reconcile because its namespace is being
/// deleted: a `kube::Error::Api` in `error`'s source chain whose Status carries the cause
/// `NamespaceTerminating` (the NamespaceLifecycle admission plugin of k8s.io/apiserver refuses
/// every create in a terminating namespace with it).
fn namespace_terminating(error: &Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(kube::Error::Api(status)) = e.downcast_ref::<kube::Error>()
            && status
                .details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.reason == NAMESPACE_TERMINATING))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The StatusCause reason of a create refused in a terminating namespace
/// (k8s.io/api/core/v1 `NamespaceTerminatingCause`).
const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

async fn reconcile_inner(name: &str, namespace: &str, ctx: &Context) -> Result<Action, Error> {
    let Some(cluster) = fetch(ctx, name, namespace).await? else {
        return Ok(Action::await_change());
    };
    let validated = match validate::validate(&cluster) {
        Ok(validated) => validated,
        Err(e) => {
            report_invalid(ctx, &cluster, &e).await?;
            return Ok(Action::await_change());
        }
    };
    let observed = Box::pin(dereference::observe(&ctx.client, &validated)).await?;
    let conflicts = ownership::conflicts(&observed.children, &validated.owner_ref.uid);
    if !conflicts.is_empty() {
        report_conflicts(ctx, &cluster, &conflicts).await?;
        return Ok(Action::requeue(REQUEUE_CONFLICT));
    }
    let mut desired = build::build(&validated, &dereference::facts(&validated, &observed));
    let log_rollout = log_rollout::prepare(
        &ctx.client,
        &validated,
        &mut desired.log,
        observed.children.log.as_ref(),
        &observed.log_pods,
        &observed.log_statuses,
        Timestamp::now(),
    )
    .await?;
    // Boxed, like observe: fifteen children's apply futures inline overflowed a debug build's
    // 2 MiB worker stack.
    let applied = match Box::pin(apply::apply(
        &ctx.client,
        &validated,
        desired,
        observed.children,
    ))
    .await
    {
        Ok(applied) => applied,
        Err(e) if e.namespace_terminating() => {
            tracing::debug!(error = %e, "namespace is being deleted; nothing to apply");
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };
    publish_changes(ctx, &cluster, &applied.changes).await;
    let resize = apply::expand_claims(&ctx.client, &validated.namespace, observed.resize).await;
    publish_expansions(ctx, &cluster, &resize).await;
    log_rollout::execute(
        &ctx.client,
        &ctx.recorder,
        &ctx.metrics,
        &cluster,
        &validated.namespace,
        &log_rollout,
    )
    .await?;
    let monitored = monitoring::reconcile(
        &ctx.client,
        &validated,
        has_condition(cluster.status.as_ref(), status::POD_MONITOR_MISSING),
    )
    .await;
    publish_changes(ctx, &cluster, monitored.change.as_slice()).await;
    let logs: Vec<_> = observed.log_statuses.values().cloned().collect();
    let gated = gate::gate(
        &ctx.client,
        &ctx.recorder,
        &cluster,
        &validated,
        &observed.chat_pods,
        &observed.chat_statuses,
        logs.iter().map(|l| l.head).max(),
    )
    .await?;
    ctx.metrics.pods_gated(gated.passed.len());
    let next = status::compute(&status::Inputs {
        cluster: &validated,
        previous: cluster.status.as_ref(),
        children: &applied.children,
        logs: &logs,
        gate: &gated,
        log_rollout: &log_rollout,
        problems: &observed.problems,
        retained_claims: &observed.retained_claims,
        resize: &resize,
        monitoring: &monitored.outcome,
        now: Timestamp::now(),
    });
    write_status(ctx, &cluster, &next, &observed.problems).await?;
    Ok(Action::requeue(requeue_after(&gated, &log_rollout, &next)))
}

/// Whether `status` has a condition of type `type_` (any status).
fn has_condition(status: Option<&ChatClusterStatus>, type_: &str) -> bool {
    status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_))
}

/// GETs the ChatCluster; None when it is gone or being deleted (its children go with the garbage
/// collector, by owner reference).
async fn fetch(ctx: &Context, name: &str, namespace: &str) -> Result<Option<ChatCluster>, Error> {
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let cluster = api.get_opt(name).await.map_err(Error::Fetch)?;
    Ok(cluster.filter(|c| c.meta().deletion_timestamp.is_none()))
}

/// Sets the Degraded/InvalidSpec status and, when it changed, records a warning Event.
async fn report_invalid(
    ctx: &Context,
    cluster: &ChatCluster,
    error: &validate::ValidateError,
) -> Result<(), Error> {
    tracing::warn!(error = %error, "invalid ChatCluster");
    let generation = cluster.meta().generation.unwrap_or(0);
    let next = status::invalid(
        cluster.status.as_ref(),
        generation,
        error.to_string(),
        Timestamp::now(),
    );
    if status::patch_if_changed(&ctx.client, cluster, &next).await? {
        let note = error.to_string();
        publish(
            ctx,
            cluster,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            note,
        )
        .await;
    }
    Ok(())
}

/// Sets the Degraded/NameConflict status and, when it changed, records a warning Event naming
/// the objects left untouched.
async fn report_conflicts(
    ctx: &Context,
    cluster: &ChatCluster,
    conflicts: &[ownership::NameConflict],
) -> Result<(), Error> {
    let message = ownership::message(conflicts);
    tracing::warn!(%message, "child name conflict; nothing applied");
    let generation = cluster.meta().generation.unwrap_or(0);
    let next = status::halted(
        cluster.status.as_ref(),
        generation,
        ownership::NAME_CONFLICT,
        message.clone(),
        Timestamp::now(),
    );
    if status::patch_if_changed(&ctx.client, cluster, &next).await? {
        publish(
            ctx,
            cluster,
            EventType::Warning,
            ownership::NAME_CONFLICT,
            "Apply",
            message,
        )
        .await;
    }
    Ok(())
}

/// One Event and one metric per child the apply step created, updated or deleted. The Event's
/// related object is the child: kube-runtime's recorder aggregates Events by type, reason,
/// action, regarding and related object (not by note), so without it every child written in one
/// reconcile became one Event series repeating the first child's note (`created Secret
/// demo-broker` ×10).
async fn publish_changes(ctx: &Context, cluster: &ChatCluster, changes: &[apply::Change]) {
    for change in changes {
        ctx.metrics.child_written();
        let event = apply::change_event(change, &cluster.namespace().unwrap_or_default());
        publish_event(ctx, cluster, &event).await;
    }
}

/// One Normal Event `ExpandingClaim` per claim whose expansion was requested in this reconcile
/// (the next reconcile finds the claim at its new request and plans nothing more for it). The
/// claim is the Event's related object, so the recorder keeps one Event per claim instead of
/// counting them as repeats of one.
async fn publish_expansions(ctx: &Context, cluster: &ChatCluster, resize: &[storage::Resize]) {
    for r in resize {
        if let storage::Resize::Expand { claim, from, to } = r {
            let event = Event {
                type_: EventType::Normal,
                reason: "ExpandingClaim".into(),
                note: Some(format!(
                    "claim {claim}: requested {to} (was {from}); the volume grows once its \
                     provisioner and the kubelet have resized it (kubectl describe pvc {claim})"
                )),
                action: "Expand".into(),
                secondary: Some(k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    name: Some(claim.clone()),
                    namespace: cluster.namespace(),
                    ..Default::default()
                }),
            };
            publish_event(ctx, cluster, &event).await;
        }
    }
}

/// Patches the status when it changed; whenever the Degraded condition becomes True or changes
/// its reason or message while True ([`status::turned_true`]), records one warning Event
/// with that reason and message, related to the stuck pod it names (if any), so each cause is
/// its own Event and a repeat of the same one is counted by the recorder's series. When the
/// `ReusedClaims` condition becomes True (the same rule), one Normal Event
/// `RetainedClaims` names the claims; when `StorageSizeWarning` does, one Warning Event
/// `AboveBound` names the sizes; when `StorageExpansionBlocked` does, one Warning Event
/// `ExpansionBlocked` names the claims and why; when `PodMonitorMissing` does, one Warning Event
/// with its reason (`PrometheusOperatorAbsent`, `NameConflict`, `ApplyFailed`, `DeleteFailed`).
async fn write_status(
    ctx: &Context,
    cluster: &ChatCluster,
    next: &ChatClusterStatus,
    problems: &[health::PodProblem],
) -> Result<(), Error> {
    if !status::patch_if_changed(&ctx.client, cluster, next).await? {
        return Ok(());
    }
    ctx.metrics.status_written();
    if let Some(degraded) = status::turned_true(status::DEGRADED, cluster.status.as_ref(), next) {
        let related = problems
            .first()
            .filter(|p| p.reason == degraded.reason)
            .map(|p| p.reference.clone());
        let event = Event {
            type_: EventType::Warning,
            reason: degraded.reason.clone(),
            note: Some(degraded.message.clone()),
            action: "Observe".into(),
            secondary: related,
        };
        publish_event(ctx, cluster, &event).await;
    }
    for (type_, event_type) in [
        (status::REUSED_CLAIMS, EventType::Normal),
        (status::STORAGE_SIZE_WARNING, EventType::Warning),
        (status::STORAGE_EXPANSION_BLOCKED, EventType::Warning),
        (status::POD_MONITOR_MISSING, EventType::Warning),
    ] {
        if let Some(turned) = status::turned_true(type_, cluster.status.as_ref(), next) {
            let event = Event {
                type_: event_type,
                reason: turned.reason.clone(),
                note: Some(turned.message.clone()),
                action: "Observe".into(),
                secondary: None,
            };
            publish_event(ctx, cluster, &event).await;
        }
    }
    Ok(())
}

/// When to look again: soon while a pod catches up or the log rolls, rarely once Running.
fn requeue_after(
    gated: &gate::GateSummary,
    log_rollout: &log_rollout::Outcome,
    next: &ChatClusterStatus,
) -> Duration {
    if !gated.waiting.is_empty() || log_rollout.in_progress() {
        REQUEUE_GATING
    } else if next.phase == Some(Phase::Running) {
        REQUEUE_STEADY
    } else {
        REQUEUE_PROGRESSING
    }
}

async fn publish(
    ctx: &Context,
    cluster: &ChatCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    publish_event(ctx, cluster, &event).await;
}

async fn publish_event(ctx: &Context, cluster: &ChatCluster, event: &Event) {
    if let Err(e) = ctx.recorder.publish(event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, reason = event.reason, "publishing event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    /// An API error as the API server sends it (the NamespaceLifecycle refusal's shape).
    fn api_error(code: u16, cause: Option<&str>) -> kube::Error {
        let mut status = serde_json::json!({
            "status": "Failure", "code": code, "reason": "Forbidden",
            "message": "poddisruptionbudgets.policy \"demo-log\" is forbidden: unable to create new content in namespace ns because it is being terminated",
        });
        if let Some(reason) = cause {
            status["details"] = serde_json::json!({"name": "demo-log", "group": "policy",
                "kind": "poddisruptionbudgets", "causes": [{"reason": reason,
                "message": "namespace ns is being terminated", "field": "metadata.namespace"}]});
        }
        let status: Status = serde_json::from_value(status).expect("a Status");
        kube::Error::Api(Box::new(status))
    }

    fn patch(source: kube::Error) -> Error {
        Error::Apply(apply::ApplyError::Patch {
            kind: "PodDisruptionBudget",
            name: "demo-log".to_owned(),
            source,
        })
    }

    /// Only a create refused for a terminating namespace ends the reconcile quietly; every other
    /// refusal (a plain 403, a 404, a conflict, another cause) stays an error.
    #[test]
    fn a_terminating_namespace_is_not_a_reconcile_error() {
        let table: Vec<(&str, Error, bool)> = vec![
            (
                "apply in a terminating namespace",
                patch(api_error(403, Some(NAMESPACE_TERMINATING))),
                true,
            ),
            (
                "fetch in a terminating namespace",
                Error::Fetch(api_error(403, Some(NAMESPACE_TERMINATING))),
                true,
            ),
            ("plain 403", patch(api_error(403, None)), false),
            ("404", Error::Fetch(api_error(404, None)), false),
            (
                "another cause",
                patch(api_error(422, Some("FieldValueInvalid"))),
                false,
            ),
        ];
        for (what, error, want) in table {
            assert_eq!(namespace_terminating(&error), want, "{what}: {error}");
        }
    }
}
