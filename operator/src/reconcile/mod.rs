//! One reconcile of one ChatCluster, as a pipeline of steps, each in its own module with its own
//! error enum:
//!
//! 1. [`validate`] (pure): identity and what the schema cannot check.
//! 2. [`dereference`]: read existing children and pods; keep or create the Redis password.
//! 3. [`build`] (pure): every child object.
//! 4. [`apply`]: server-side apply what differs; prune what is no longer wanted.
//! 5. [`gate`]: pass chat-server pods that have caught up (pure decision + I/O).
//! 6. [`status`]: compute (pure) and patch the status when it changed.
//!
//! [`Error`] wraps the step errors; its [`Error::kind`] labels the error metric.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod gate;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, info_span};

use crate::crd::{ChatCluster, Phase};
use crate::metrics::Metrics;

/// Requeue while a pod is catching up.
const REQUEUE_GATING: Duration = Duration::from_secs(2);
/// Requeue while pending or progressing (log head/persisted are not watched).
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(10);
/// Requeue when settled, to refresh head/persisted (reads only unless something changed).
const REQUEUE_STEADY: Duration = Duration::from_secs(60);

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
    /// Build step.
    #[error(transparent)]
    Build(#[from] build::BuildError),
    /// Apply step.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// Gating step.
    #[error(transparent)]
    Gate(#[from] gate::GateError),
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
            Error::Build(_) => "build",
            Error::Apply(_) => "apply",
            Error::Gate(_) => "gate",
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
    let result = reconcile_inner(&name, &namespace, &ctx)
        .instrument(span)
        .await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::kind));
    result
}

async fn reconcile_inner(name: &str, namespace: &str, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), namespace);
    let Some(cluster) = api.get_opt(name).await.map_err(Error::Fetch)? else {
        return Ok(Action::await_change());
    };
    if cluster.meta().deletion_timestamp.is_some() {
        // Children go with the garbage collector (owner references); nothing to do.
        return Ok(Action::await_change());
    }
    let generation = cluster.meta().generation.unwrap_or(0);

    let validated = match validate::validate(&cluster) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "invalid ChatCluster");
            let next = status::invalid(
                cluster.status.as_ref(),
                generation,
                e.to_string(),
                Timestamp::now(),
            );
            if status::patch_if_changed(client, &cluster, &next).await? {
                publish(
                    ctx,
                    &cluster,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    e.to_string(),
                )
                .await;
            }
            return Ok(Action::await_change());
        }
    };

    let observed = dereference::observe(client, &validated).await?;
    let facts = dereference::facts(&observed);
    let children = build::build(&validated, &facts)?;
    let applied = apply::apply(client, &validated, children, &observed).await?;
    for change in &applied.changes {
        ctx.metrics.child_written();
        let (reason, note) = match change {
            apply::Change::Created { kind, name } => ("Created", format!("created {kind} {name}")),
            apply::Change::Updated { kind, name } => ("Updated", format!("updated {kind} {name}")),
            apply::Change::Deleted { kind, name } => ("Deleted", format!("deleted {kind} {name}")),
        };
        publish(ctx, &cluster, EventType::Normal, reason, "Apply", note).await;
    }

    let logs = status::probe_logs(client, namespace, &observed.log_pods).await;
    let known_head = logs.iter().map(|l| l.head).max();
    let gated = gate::gate(
        client,
        &ctx.recorder,
        &cluster,
        &validated,
        &observed.chat_pods,
        known_head,
    )
    .await?;
    ctx.metrics.pods_gated(gated.passed.len());

    let next = status::compute(&status::Inputs {
        cluster: &validated,
        previous: cluster.status.as_ref(),
        broker: &applied.broker,
        log: &applied.log,
        chat_server: &applied.chat_server,
        logs: &logs,
        gate: &gated,
        now: Timestamp::now(),
    });
    let was_degraded = cluster.status.as_ref().and_then(|s| s.phase) == Some(Phase::Degraded);
    if status::patch_if_changed(client, &cluster, &next).await? {
        ctx.metrics.status_written();
        if next.phase == Some(Phase::Degraded) && !was_degraded {
            let message = next
                .conditions
                .iter()
                .find(|c| c.type_ == status::DEGRADED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            let reason = next
                .conditions
                .iter()
                .find(|c| c.type_ == status::DEGRADED)
                .map(|c| c.reason.clone());
            publish(
                ctx,
                &cluster,
                EventType::Warning,
                reason.as_deref().unwrap_or("Degraded"),
                "Gate",
                message,
            )
            .await;
        }
    }

    Ok(Action::requeue(if !gated.waiting.is_empty() {
        REQUEUE_GATING
    } else if next.phase == Some(Phase::Running) {
        REQUEUE_STEADY
    } else {
        REQUEUE_PROGRESSING
    }))
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
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing event");
    }
}
