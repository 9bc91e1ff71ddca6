//! Replication-log rollouts: the operator steps the log StatefulSet's RollingUpdate `partition`
//! itself, so a new revision reaches one replica at a time, highest ordinal first, each only after
//! the previously updated one is Ready **and** caught up (its `/status` phase `live`, persisted
//! within `spec.rollout.maxLag` of the broker head). A replica that is not within
//! `spec.rollout.catchUpTimeout` halts the rollout (`Degraded`/`LogRolloutStalled`) with every
//! replica that had not rolled yet still serving; with `spec.rollout.autoRollback` the operator
//! restores the StatefulSet's last good revision instead (`RolledBack`).
//!
//! How the StatefulSet controller behaves, which this module works with (`pkg/controller/
//! statefulset`, Kubernetes 1.34): with `RollingUpdate`, pods with ordinal ≥ `partition` are
//! replaced by the update revision, highest first, each once the one before is Running and Ready;
//! pods below the partition keep (and are recreated from) the current revision. With
//! `podManagementPolicy: OrderedReady` the controller makes no progress at all while any pod is not
//! Running and Ready — not even replacing that pod after its template was fixed (the documented
//! "forced rollback" caveat, kubernetes/kubernetes#67250), so a pod that is not ready and runs an
//! outdated revision is deleted here: it serves nothing, and its replacement gets the right one.
//!
//! The state the operator keeps is on the StatefulSet itself, in two annotations:
//! [`TEMPLATE_HASH_ANNOTATION`], the hash of the pod template built from the spec (a different
//! one means a new revision is being written, which is held at `partition = replicas` until the
//! controller has recorded it), and [`ROLLED_BACK_ANNOTATION`], the record of a rollback (the
//! refused template's hash, the revision restored, the pod and cause). While the spec builds the
//! refused template, the live (good) template is kept and the cluster reports `RolledBack`; the
//! spec is never changed, and any change to the log pods' template starts a new rollout.
//!
//! [`decide`] is the pure, table-tested decision on [`Inputs`] (replicas, partition, revisions,
//! per-pod revision, readiness, catch-up and time since it stalled, autoRollback). [`prepare`]
//! derives those inputs from what the dereference step read, decides, and shapes the desired
//! StatefulSet (partition, template, annotations), reading the restored ControllerRevision when
//! rolling back; [`execute`] deletes the pod the plan names and records the Events.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::apply::json_hash;
use super::gate::{condition_true, started_at};
use super::validate::Validated;
use crate::crd::ChatCluster;
use crate::metrics::Metrics;
use chat_wire::{ReplicaPhase, ReplicaStatus};

/// StatefulSet annotation: hash of the pod template the operator built from the spec.
pub const TEMPLATE_HASH_ANNOTATION: &str = "chat-cluster.io/template-hash";
/// StatefulSet annotation: the [`RollbackRecord`] of the last automatic rollback, as JSON.
pub const ROLLED_BACK_ANNOTATION: &str = "chat-cluster.io/rolled-back";
/// The label the StatefulSet controller sets on each pod: the ControllerRevision it runs.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Degraded reason: a log replica did not become ready and caught up within catchUpTimeout.
pub const LOG_ROLLOUT_STALLED: &str = "LogRolloutStalled";
/// Degraded reason and Event: the operator restored the log StatefulSet's last good revision.
pub const ROLLED_BACK: &str = "RolledBack";

/// How far one replica's `/status` is from the broker head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Phase `live`, within maxLag of the highest head any replica reports.
    CaughtUp,
    /// Answering, but not live or too far behind.
    Behind {
        /// The replica's phase (`starting`, `bootstrapping`, `catching_up`, `broker_lost`, …).
        phase: ReplicaPhase,
        /// Positions behind the highest known head.
        lag: u64,
    },
    /// No `/status` answer (not running, or not reachable).
    Unreachable,
}

/// One log pod as the decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Ordinal (`{name}-log-{ordinal}`).
    pub ordinal: i32,
    /// Pod name.
    pub name: String,
    /// Its `controller-revision-hash` label (a ControllerRevision name).
    pub revision: Option<String>,
    /// Its `Ready` condition is True.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Its `/status` against the head.
    pub catch_up: CatchUp,
    /// How long it has been stalled: since it started when it is not ready and never was (or is
    /// ready but not caught up), else since its `Ready` condition last turned False.
    pub stalled_for: Duration,
}

impl Replica {
    fn good(&self) -> bool {
        self.ready && !self.terminating && self.catch_up == CatchUp::CaughtUp
    }

    /// Why it does not count as rolled yet, in words that stay the same from one reconcile to
    /// the next (they end up in a condition message; a changing lag would mean a new Event).
    fn why_not(&self) -> String {
        let readiness = if self.ready { "Ready" } else { "not Ready" };
        match &self.catch_up {
            CatchUp::CaughtUp => format!("{readiness}, caught up"),
            CatchUp::Behind { phase, .. } => format!("{readiness}, phase {phase}"),
            CatchUp::Unreachable => format!("{readiness}, no /status answer"),
        }
    }
}

/// The live StatefulSet as the decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetView {
    /// `spec.updateStrategy.rollingUpdate.partition` (0 when unset).
    pub partition: i32,
    /// `status.currentRevision`.
    pub current_revision: Option<String>,
    /// `status.updateRevision`.
    pub update_revision: Option<String>,
    /// The controller has seen the latest spec (`status.observedGeneration ≥ generation`), so the
    /// revisions describe it.
    pub fresh: bool,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// `spec.replicationLog.replicas`.
    pub replicas: i32,
    /// The StatefulSet as it exists; None before it is created.
    pub set: Option<SetView>,
    /// The template applied in this reconcile differs from the one last applied (by
    /// [`TEMPLATE_HASH_ANNOTATION`]): a new revision is being written.
    pub template_changed: bool,
    /// The spec's template is the refused one of a rollback: the live template is kept.
    pub rolled_back: bool,
    /// The log pods that exist.
    pub pods: Vec<Replica>,
    /// `spec.rollout.catchUpTimeout`.
    pub catch_up_timeout: Duration,
    /// `spec.rollout.autoRollback`.
    pub auto_rollback: bool,
}

/// Where the rollout is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing to roll: every pod runs the update revision (or none exists yet).
    Settled,
    /// A new template is being written; every pod is held until the controller records it.
    Holding,
    /// The StatefulSet controller has not acted on the latest write yet.
    AwaitingController,
    /// Rolling: waiting for `pod`.
    Waiting {
        /// The pod.
        pod: String,
        /// Why, for the log and the Progressing message.
        reason: String,
    },
    /// `pod` did not become ready and caught up within catchUpTimeout: the rollout stops here.
    Halted {
        /// The pod.
        pod: String,
        /// Why, in words.
        cause: String,
    },
    /// Halted with autoRollback: restore `revision` and replace `pod`.
    RollBack {
        /// The pod that did not become ready.
        pod: String,
        /// Why, in words.
        cause: String,
        /// The revision restored (`status.currentRevision`).
        revision: String,
    },
}

/// What to do in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The partition to apply.
    pub partition: i32,
    /// Where the rollout is.
    pub progress: Progress,
    /// A pod to delete: not ready at an outdated revision, which the controller would wait on
    /// forever (or the broken pod of a rollback).
    pub delete: Option<String>,
}

impl Plan {
    fn at(partition: i32, progress: Progress) -> Plan {
        Plan {
            partition,
            progress,
            delete: None,
        }
    }
}

/// The name of the pod with `ordinal` of the StatefulSet `set`.
fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// Decides the partition and the action for this reconcile (pure). `set_name` names pods that
/// do not exist yet.
///
/// 1. No StatefulSet yet: partition 0 (its first pods are its first revision).
/// 2. A new template: partition = replicas, so no pod moves until the controller has recorded the
///    revision and the next reconcile can tell the pods' revisions apart.
/// 3. The controller has not observed the last write: keep the partition.
/// 4. Nothing pending (current = update revision, every pod on it): partition 0.
/// 5. Otherwise the target is the highest ordinal that is not on the update revision, Ready and
///    caught up, and the partition is its ordinal (releasing it alone): wait while it is being
///    created, terminating, or about to be replaced; delete it when it is not ready on an
///    outdated revision; when it runs the update revision but is not ready and caught up within
///    catchUpTimeout, halt — or, with autoRollback (and not already rolled back), roll back:
///    partition = replicas, the broken pod deleted, the current revision's template restored.
///    A pod below the target that is not Ready blocks the controller: wait for it, and halt
///    (never roll back: the new revision is not at fault) after catchUpTimeout.
pub fn decide(set_name: &str, inputs: &Inputs) -> Plan {
    let n = inputs.replicas.max(0);
    let Some(set) = &inputs.set else {
        return Plan::at(0, Progress::Settled);
    };
    if inputs.template_changed {
        return Plan::at(n, Progress::Holding);
    }
    let update = match (&set.update_revision, set.fresh) {
        (Some(update), true) => update,
        _ => return Plan::at(set.partition, Progress::AwaitingController),
    };
    let by_ordinal: BTreeMap<i32, &Replica> = inputs
        .pods
        .iter()
        .filter(|p| (0..n).contains(&p.ordinal))
        .map(|p| (p.ordinal, p))
        .collect();
    let outdated = |p: &Replica| p.revision.as_ref() != Some(update);
    let pending =
        set.current_revision.as_ref() != Some(update) || by_ordinal.values().any(|p| outdated(p));
    if !pending {
        return Plan::at(0, Progress::Settled);
    }
    let target = (0..n)
        .rev()
        .find(|o| !by_ordinal.get(o).is_some_and(|p| !outdated(p) && p.good()));
    let Some(t) = target else {
        // Every pod runs the update revision, Ready and caught up: the controller completes.
        return Plan::at(0, Progress::AwaitingController);
    };
    let waiting = |pod: String, reason: &str| {
        Plan::at(
            t,
            Progress::Waiting {
                pod,
                reason: reason.to_owned(),
            },
        )
    };
    // A pod below the target that is not Ready stops the controller (OrderedReady).
    let blocker = by_ordinal
        .range(..t)
        .map(|(_, p)| *p)
        .find(|p| !p.ready && !p.terminating);
    let Some(pod) = by_ordinal.get(&t) else {
        return waiting(pod_name(set_name, t), "being created");
    };
    if let Some(b) = blocker {
        let reason = format!(
            "{}; the StatefulSet controller rolls no pod while one is not Ready",
            b.why_not()
        );
        if b.stalled_for > inputs.catch_up_timeout {
            return Plan::at(
                t,
                Progress::Halted {
                    pod: b.name.clone(),
                    cause: reason,
                },
            );
        }
        return waiting(b.name.clone(), &reason);
    }
    if pod.terminating {
        return waiting(pod.name.clone(), "terminating");
    }
    if outdated(pod) {
        if pod.ready {
            return waiting(
                pod.name.clone(),
                "being replaced by the StatefulSet controller",
            );
        }
        // Not ready on an old revision: the controller would wait for it forever.
        let mut plan = waiting(
            pod.name.clone(),
            "not Ready on an outdated revision: replaced",
        );
        plan.delete = Some(pod.name.clone());
        return plan;
    }
    if pod.stalled_for <= inputs.catch_up_timeout {
        return waiting(pod.name.clone(), &pod.why_not());
    }
    let cause = pod.why_not();
    match &set.current_revision {
        Some(good) if inputs.auto_rollback && !inputs.rolled_back && good != update => Plan {
            partition: n,
            progress: Progress::RollBack {
                pod: pod.name.clone(),
                cause,
                revision: good.clone(),
            },
            delete: Some(pod.name.clone()),
        },
        _ => Plan::at(
            t,
            Progress::Halted {
                pod: pod.name.clone(),
                cause,
            },
        ),
    }
}

/// The record of an automatic rollback, kept in [`ROLLED_BACK_ANNOTATION`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// Hash of the template that was refused ([`template_hash`]).
    pub template: String,
    /// The ControllerRevision restored.
    pub revision: String,
    /// The pod that did not become ready and caught up.
    pub pod: String,
    /// Why, in words.
    pub cause: String,
}

impl RollbackRecord {
    /// The condition message.
    pub fn message(&self, timeout: &str) -> String {
        format!(
            "replication-log rollout rolled back to revision {}: pod {} was not ready and caught up \
             within {timeout} ({}); the spec is unchanged: fix or revert the change to the log pods \
             (image, settings) to roll again",
            self.revision, self.pod, self.cause
        )
    }
}

/// The outcome of this reconcile's log rollout step, for the status step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The plan; None when there was nothing to decide (no StatefulSet built).
    pub plan: Option<Plan>,
    /// The rollback in force, if the spec still builds the refused template.
    pub rolled_back: Option<RollbackRecord>,
    /// The partition the live StatefulSet had.
    pub previous_partition: Option<i32>,
}

impl Outcome {
    /// The Degraded cause of the log rollout, if any: `LogRolloutStalled` while halted,
    /// `RolledBack` while a rollback is in force.
    pub fn degraded(&self, rollout: &crate::crd::RolloutSpec) -> Option<(String, String)> {
        let timeout = &rollout.catch_up_timeout;
        match self.plan.as_ref().map(|p| &p.progress) {
            Some(Progress::Halted { pod, cause }) => {
                return Some((
                    LOG_ROLLOUT_STALLED.into(),
                    format!(
                        "replication-log pod {pod} was not ready and caught up within {timeout} \
                         ({cause}, maxLag {}); rollout halted, the replicas not yet rolled keep \
                         serving",
                        rollout.max_lag
                    ),
                ));
            }
            Some(Progress::RollBack {
                pod,
                cause,
                revision,
            }) => {
                let record = RollbackRecord {
                    template: String::new(),
                    revision: revision.clone(),
                    pod: pod.clone(),
                    cause: cause.clone(),
                };
                return Some((ROLLED_BACK.into(), record.message(timeout)));
            }
            _ => {}
        }
        self.rolled_back
            .as_ref()
            .map(|r| (ROLLED_BACK.into(), r.message(timeout)))
    }

    /// A short note for the Progressing message while rolling, e.g.
    /// `; log rollout waiting for demo-log-1 (not Ready, phase catching_up)`.
    pub fn progress_note(&self) -> String {
        match self.plan.as_ref().map(|p| &p.progress) {
            Some(Progress::Waiting { pod, reason }) => {
                format!("; log rollout waiting for {pod} ({reason})")
            }
            Some(Progress::Holding | Progress::AwaitingController) => {
                "; log rollout starting".to_owned()
            }
            _ => String::new(),
        }
    }

    /// Whether the reconcile should look again soon.
    pub fn in_progress(&self) -> bool {
        matches!(
            self.plan.as_ref().map(|p| &p.progress),
            Some(
                Progress::Holding
                    | Progress::AwaitingController
                    | Progress::Waiting { .. }
                    | Progress::RollBack { .. }
            )
        )
    }
}

/// Errors of the log rollout step.
#[derive(Debug, thiserror::Error)]
pub enum LogRolloutError {
    /// Reading the ControllerRevision to restore failed.
    #[error("reading ControllerRevision {revision} to roll back to: {source}")]
    Revision {
        /// Its name.
        revision: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The ControllerRevision holds no pod template.
    #[error("ControllerRevision {revision} holds no pod template to roll back to: {why}")]
    NoTemplate {
        /// Its name.
        revision: String,
        /// What was missing.
        why: String,
    },
    /// Deleting a pod failed.
    #[error("deleting log pod {pod}: {source}")]
    Delete {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Hash of a pod template ([`json_hash`]).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    json_hash(template)
}

fn annotation<'a>(set: &'a StatefulSet, key: &str) -> Option<&'a str> {
    set.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The rollback record on `set`, if any (an unreadable one counts as none).
pub fn rollback_record(set: &StatefulSet) -> Option<RollbackRecord> {
    serde_json::from_str(annotation(set, ROLLED_BACK_ANNOTATION)?).ok()
}

/// The decision's view of the live StatefulSet.
pub fn set_view(set: &StatefulSet) -> SetView {
    let partition = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let status = set.status.clone().unwrap_or_default();
    SetView {
        partition,
        current_revision: status.current_revision,
        update_revision: status.update_revision,
        fresh: status.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0),
    }
}

/// The decision's view of one log pod of the StatefulSet `set_name`; None for a pod that is not
/// one of its ordinals.
pub fn replica_view(
    set_name: &str,
    pod: &Pod,
    status: Option<&ReplicaStatus>,
    known_head: u64,
    max_lag: u64,
    now: Timestamp,
) -> Option<Replica> {
    let name = pod.name_any();
    let ordinal = name
        .strip_prefix(set_name)?
        .strip_prefix('-')?
        .parse::<i32>()
        .ok()?;
    let ready = condition_true(pod, "Ready");
    let catch_up = match status {
        None => CatchUp::Unreachable,
        Some(s) => {
            let lag = known_head.max(s.head).saturating_sub(s.persisted);
            if s.phase == ReplicaPhase::Live && lag <= max_lag {
                CatchUp::CaughtUp
            } else {
                CatchUp::Behind {
                    phase: s.phase,
                    lag,
                }
            }
        }
    };
    let ready_changed = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    let since = match (ready, started_at(pod), ready_changed) {
        (false, Some(start), Some(changed)) => Some(start.max(changed)),
        (_, start, _) => start,
    };
    let stalled_for = since
        .and_then(|t| now.duration_since(t).try_into().ok())
        .unwrap_or(Duration::ZERO);
    Some(Replica {
        ordinal,
        name,
        revision: pod.labels().get(REVISION_LABEL).cloned(),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        catch_up,
        stalled_for,
    })
}

/// Decides this reconcile's log rollout and shapes `desired` (the built log StatefulSet) by it:
/// the partition, the template hash, and — while a rollback is in force — the live template and
/// the rollback record instead of the built template. `live` is the StatefulSet as read;
/// `statuses` the log pods' `/status` by pod name.
pub async fn prepare(
    client: &Client,
    cluster: &Validated,
    desired: &mut StatefulSet,
    live: Option<&StatefulSet>,
    pods: &[Pod],
    statuses: &BTreeMap<String, ReplicaStatus>,
    now: Timestamp,
) -> Result<Outcome, LogRolloutError> {
    let set_name = desired.name_any();
    let rollout = &cluster.spec.rollout;
    let built = desired
        .spec
        .as_ref()
        .map(|s| template_hash(&s.template))
        .unwrap_or_default();
    let record = live
        .and_then(rollback_record)
        .filter(|r| r.template == built);
    let known_head = statuses.values().map(|s| s.head).max().unwrap_or(0);
    let inputs = Inputs {
        replicas: cluster.spec.replication_log.replicas,
        set: live.map(set_view),
        template_changed: live
            .is_some_and(|l| annotation(l, TEMPLATE_HASH_ANNOTATION) != Some(built.as_str())),
        rolled_back: record.is_some(),
        pods: pods
            .iter()
            .filter_map(|p| {
                let status = statuses.get(&p.name_any());
                replica_view(&set_name, p, status, known_head, rollout.max_lag, now)
            })
            .collect(),
        catch_up_timeout: cluster.catch_up_timeout,
        auto_rollback: rollout.auto_rollback,
    };
    let plan = decide(&set_name, &inputs);
    let mut record = record;
    let mut template = None;
    if let Progress::RollBack {
        pod,
        cause,
        revision,
    } = &plan.progress
    {
        template = Some(revision_template(client, &cluster.namespace, revision).await?);
        record = Some(RollbackRecord {
            template: built.clone(),
            revision: revision.clone(),
            pod: pod.clone(),
            cause: cause.clone(),
        });
    } else if record.is_some() {
        template = live
            .and_then(|l| l.spec.as_ref())
            .map(|s| s.template.clone());
    }
    shape(desired, plan.partition, &built, template, record.as_ref());
    Ok(Outcome {
        previous_partition: inputs.set.as_ref().map(|s| s.partition),
        plan: Some(plan),
        rolled_back: record,
    })
}

/// Sets the partition, the template hash annotation and, when given, the template and rollback
/// record on the desired StatefulSet (pure).
pub fn shape(
    desired: &mut StatefulSet,
    partition: i32,
    built_hash: &str,
    template: Option<PodTemplateSpec>,
    record: Option<&RollbackRecord>,
) {
    let annotations = desired.metadata.annotations.get_or_insert_default();
    annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), built_hash.into());
    if let Some(record) = record {
        annotations.insert(
            ROLLED_BACK_ANNOTATION.into(),
            serde_json::to_string(record).unwrap_or_default(),
        );
    }
    if let Some(spec) = desired.spec.as_mut() {
        if let Some(template) = template {
            spec.template = template;
        }
        let strategy = spec
            .update_strategy
            .get_or_insert_with(StatefulSetUpdateStrategy::default);
        strategy.rolling_update = Some(RollingUpdateStatefulSetStrategy {
            partition: Some(partition),
            ..RollingUpdateStatefulSetStrategy::default()
        });
    }
}

/// The pod template recorded in the ControllerRevision `name` (its data is the strategic merge
/// patch `{"spec":{"template":{…,"$patch":"replace"}}}` that restores it).
async fn revision_template(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<PodTemplateSpec, LogRolloutError> {
    let revision = Api::<ControllerRevision>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|source| LogRolloutError::Revision {
            revision: name.to_owned(),
            source,
        })?;
    template_of(&revision)
}

/// The pod template a StatefulSet ControllerRevision records (pure).
pub fn template_of(revision: &ControllerRevision) -> Result<PodTemplateSpec, LogRolloutError> {
    let name = revision.name_any();
    let no_template = |why: &str| LogRolloutError::NoTemplate {
        revision: name.clone(),
        why: why.to_owned(),
    };
    let mut template = revision
        .data
        .as_ref()
        .and_then(|d| d.0.get("spec"))
        .and_then(|s| s.get("template"))
        .cloned()
        .ok_or_else(|| no_template("no data.spec.template"))?;
    if let Some(object) = template.as_object_mut() {
        object.remove("$patch");
    }
    serde_json::from_value(template).map_err(|e| no_template(&e.to_string()))
}

/// Carries out the plan after apply: deletes the pod it names and records the Events — one per
/// partition step, replaced pod and rollback (the recorder counts repeats of the same one).
pub async fn execute(
    client: &Client,
    recorder: &Recorder,
    metrics: &Metrics,
    cluster: &ChatCluster,
    namespace: &str,
    outcome: &Outcome,
) -> Result<(), LogRolloutError> {
    let Some(plan) = &outcome.plan else {
        return Ok(());
    };
    let span = tracing::info_span!("log_rollout", partition = plan.partition);
    async {
        let lowered = outcome
            .previous_partition
            .is_some_and(|p| plan.partition < p);
        if let (true, Progress::Waiting { pod, reason }) = (lowered, &plan.progress) {
            tracing::info!(pod, reason, "log rollout: next replica released");
            metrics.log_rollout_step();
            let note = format!(
                "replication-log partition {} → {}: rolling pod {pod}",
                outcome.previous_partition.unwrap_or_default(),
                plan.partition
            );
            let pod = pod_reference(namespace, pod);
            publish(
                recorder,
                cluster,
                EventType::Normal,
                "LogRolloutStep",
                note,
                pod,
            )
            .await;
        }
        if let Progress::Waiting { pod, reason } = &plan.progress {
            tracing::debug!(pod, reason, "log rollout waiting");
        }
        if let Progress::RollBack { pod, revision, .. } = &plan.progress {
            tracing::warn!(pod, revision, "log rollout halted: rolling back");
            metrics.log_rollback();
        }
        if let Some(pod) = &plan.delete {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            match api.delete(pod, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(LogRolloutError::Delete {
                        pod: pod.clone(),
                        source,
                    });
                }
            }
            metrics.log_pod_replaced();
            let (reason, note) = match &plan.progress {
                Progress::RollBack { revision, .. } => (
                    "RollingBack",
                    format!("deleted pod {pod} (broken revision); restoring revision {revision}"),
                ),
                _ => (
                    "ReplacedStuckPod",
                    format!(
                        "deleted pod {pod}: not Ready on an outdated revision, which the \
                         StatefulSet controller would wait on forever"
                    ),
                ),
            };
            tracing::warn!(pod, reason, "log rollout deleted a pod");
            let pod = pod_reference(namespace, pod);
            publish(recorder, cluster, EventType::Warning, reason, note, pod).await;
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// A reference to the log pod `name`, the related object of its Events: kube-runtime's recorder
/// keys an Event series by type, reason, action and objects, not by note, so each pod gets its
/// own series.
fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    }
}

async fn publish(
    recorder: &Recorder,
    cluster: &ChatCluster,
    type_: EventType,
    reason: &str,
    note: String,
    related: ObjectReference,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "RollLog".into(),
        secondary: Some(related),
    };
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);
    const OLD: &str = "demo-log-old";
    const NEW: &str = "demo-log-new";

    /// A pod: ordinal, revision, ready, caught up, seconds stalled.
    fn pod(ordinal: i32, revision: &str, ready: bool, caught_up: bool, secs: u64) -> Replica {
        Replica {
            ordinal,
            name: pod_name("demo-log", ordinal),
            revision: Some(revision.into()),
            ready,
            terminating: false,
            catch_up: if caught_up {
                CatchUp::CaughtUp
            } else if ready {
                CatchUp::Behind {
                    phase: ReplicaPhase::CatchingUp,
                    lag: 7,
                }
            } else {
                CatchUp::Unreachable
            },
            stalled_for: Duration::from_secs(secs),
        }
    }

    fn set(partition: i32, current: &str, update: &str) -> Option<SetView> {
        Some(SetView {
            partition,
            current_revision: Some(current.into()),
            update_revision: Some(update.into()),
            fresh: true,
        })
    }

    fn waiting(pod: &str, reason: &str) -> Progress {
        Progress::Waiting {
            pod: pod.into(),
            reason: reason.into(),
        }
    }

    fn halted(pod: &str, cause: &str) -> Progress {
        Progress::Halted {
            pod: pod.into(),
            cause: cause.into(),
        }
    }

    #[test]
    fn the_partition_follows_ready_and_caught_up_replicas_highest_first() {
        let ok = |o, rev| pod(o, rev, true, true, 0);
        let stale = || {
            Some(SetView {
                fresh: false,
                ..set(2, OLD, NEW).expect("set")
            })
        };
        let rollback = || Progress::RollBack {
            pod: "demo-log-1".into(),
            cause: "not Ready, no /status answer".into(),
            revision: OLD.into(),
        };
        // (case, replicas, set, template changed, rolled back, pods, autoRollback,
        //  → partition, progress, pod deleted)
        #[allow(clippy::type_complexity)]
        #[rustfmt::skip]
        let table: Vec<(&str, i32, Option<SetView>, bool, bool, Vec<Replica>, bool, i32, Progress, Option<&str>)> = vec![
            ("not created yet", 2, None, false, false, vec![], false, 0, Progress::Settled, None),
            ("steady", 2, set(0, OLD, OLD), false, false, vec![ok(0, OLD), ok(1, OLD)], false, 0, Progress::Settled, None),
            ("steady, a pod restarting is no rollout", 2, set(0, OLD, OLD), false, false, vec![ok(0, OLD), pod(1, OLD, false, false, 500)], false, 0, Progress::Settled, None),
            ("a new template is held at replicas", 3, set(0, OLD, OLD), true, false, vec![ok(0, OLD), ok(1, OLD), ok(2, OLD)], false, 3, Progress::Holding, None),
            ("the controller has not seen the write: keep the partition", 2, stale(), false, false, vec![ok(0, OLD), ok(1, OLD)], false, 2, Progress::AwaitingController, None),
            ("release the highest ordinal first", 2, set(2, OLD, NEW), false, false, vec![ok(0, OLD), ok(1, OLD)], false, 1, waiting("demo-log-1", "being replaced by the StatefulSet controller"), None),
            ("the released pod is being recreated", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD)], false, 1, waiting("demo-log-1", "being created"), None),
            ("updated but not ready: wait", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), pod(1, NEW, false, false, 30)], false, 1, waiting("demo-log-1", "not Ready, no /status answer"), None),
            ("ready but not caught up: wait", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), pod(1, NEW, true, false, 30)], false, 1, waiting("demo-log-1", "Ready, phase catching_up"), None),
            ("ready and caught up: release the next", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), ok(1, NEW)], false, 0, waiting("demo-log-0", "being replaced by the StatefulSet controller"), None),
            ("all updated, controller to complete", 2, set(0, OLD, NEW), false, false, vec![ok(0, NEW), ok(1, NEW)], false, 0, Progress::AwaitingController, None),
            ("done: current = update", 2, set(0, NEW, NEW), false, false, vec![ok(0, NEW), ok(1, NEW)], false, 0, Progress::Settled, None),
            ("exactly at the timeout: still waiting", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), pod(1, NEW, false, false, 60)], true, 1, waiting("demo-log-1", "not Ready, no /status answer"), None),
            ("past the timeout: halted, the rest keeps serving", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), pod(1, NEW, false, false, 61)], false, 1, halted("demo-log-1", "not Ready, no /status answer"), None),
            ("past the timeout, ready but behind: halted", 3, set(2, OLD, NEW), false, false, vec![ok(0, OLD), ok(1, OLD), pod(2, NEW, true, false, 61)], false, 2, halted("demo-log-2", "Ready, phase catching_up"), None),
            ("past the timeout with autoRollback: roll back", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), pod(1, NEW, false, false, 61)], true, 2, rollback(), Some("demo-log-1")),
            ("one replica: its only pod rolls, and rolls back", 1, set(0, OLD, NEW), false, false, vec![pod(0, NEW, false, false, 61)], true, 1, Progress::RollBack { pod: "demo-log-0".into(), cause: "not Ready, no /status answer".into(), revision: OLD.into() }, Some("demo-log-0")),
            ("one replica, no autoRollback: halted", 1, set(0, OLD, NEW), false, false, vec![pod(0, NEW, false, false, 61)], false, 0, halted("demo-log-0", "not Ready, no /status answer"), None),
            ("already rolled back: no second rollback", 2, set(1, OLD, NEW), false, true, vec![ok(0, OLD), pod(1, NEW, false, false, 61)], true, 1, halted("demo-log-1", "not Ready, no /status answer"), None),
            ("rolled back: the broken pod on an outdated revision is replaced", 2, set(0, OLD, OLD), false, true, vec![ok(0, OLD), pod(1, NEW, false, false, 5)], true, 1, waiting("demo-log-1", "not Ready on an outdated revision: replaced"), Some("demo-log-1")),
            ("rolled back: the replacement starts", 2, set(2, OLD, OLD), false, true, vec![ok(0, OLD), pod(1, OLD, false, false, 5)], true, 0, Progress::Settled, None),
            ("a fix over a crash-looping highest pod replaces it", 2, set(1, OLD, NEW), false, false, vec![ok(0, OLD), pod(1, OLD, false, false, 900)], false, 1, waiting("demo-log-1", "not Ready on an outdated revision: replaced"), Some("demo-log-1")),
            ("a lower pod not Ready blocks the controller: wait", 3, set(2, OLD, NEW), false, false, vec![pod(0, OLD, false, false, 10), ok(1, OLD), ok(2, OLD)], true, 2, waiting("demo-log-0", "not Ready, no /status answer; the StatefulSet controller rolls no pod while one is not Ready"), None),
            ("… and halts it after the timeout, never rolling back", 3, set(2, OLD, NEW), false, false, vec![pod(0, OLD, false, false, 61), ok(1, OLD), ok(2, OLD)], true, 2, halted("demo-log-0", "not Ready, no /status answer; the StatefulSet controller rolls no pod while one is not Ready"), None),
            ("scaled down: condemned ordinals are ignored", 2, set(3, OLD, NEW), false, false, vec![ok(0, OLD), ok(1, OLD), pod(2, OLD, false, false, 900)], false, 1, waiting("demo-log-1", "being replaced by the StatefulSet controller"), None),
        ];
        for (case, replicas, set, changed, rolled_back, pods, auto, partition, progress, deleted) in
            table
        {
            let inputs = Inputs {
                replicas,
                set,
                template_changed: changed,
                rolled_back,
                pods,
                catch_up_timeout: TIMEOUT,
                auto_rollback: auto,
            };
            let plan = decide("demo-log", &inputs);
            assert_eq!(
                plan,
                Plan {
                    partition,
                    progress,
                    delete: deleted.map(Into::into)
                },
                "{case}"
            );
        }
    }

    #[test]
    fn a_terminating_target_is_waited_for() {
        let mut p = pod(1, OLD, false, false, 900);
        p.terminating = true;
        let inputs = Inputs {
            replicas: 2,
            set: set(1, OLD, NEW),
            template_changed: false,
            rolled_back: false,
            pods: vec![pod(0, OLD, true, true, 0), p],
            catch_up_timeout: TIMEOUT,
            auto_rollback: true,
        };
        assert_eq!(
            decide("demo-log", &inputs),
            Plan::at(1, waiting("demo-log-1", "terminating"))
        );
    }

    fn log_pod(name: &str, ready: Option<(&str, &str)>, started: &str) -> Pod {
        let conditions: Vec<_> = ready
            .map(|(status, at)| {
                serde_json::json!({"type": "Ready", "status": status, "lastTransitionTime": at})
            })
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {REVISION_LABEL: NEW},
                         "creationTimestamp": started},
            "spec": {"containers": []},
            "status": {"startTime": started, "conditions": conditions},
        }))
        .expect("pod")
    }

    fn status(phase: ReplicaPhase, persisted: u64, head: u64) -> ReplicaStatus {
        ReplicaStatus {
            replica_id: "x".into(),
            phase,
            persisted,
            head,
            lag: head - persisted,
            messages: persisted,
            limit: None,
            epoch: None,
            error: None,
            broker_error: None,
            broker_loss: None,
        }
    }

    #[test]
    fn replica_views_read_ordinal_revision_readiness_catch_up_and_stall_time() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let ready = log_pod(
            "demo-log-1",
            Some(("True", "2026-01-01T00:01:00Z")),
            "2026-01-01T00:00:00Z",
        );
        // (case, pod, status, known head, maxLag → catch-up, stalled seconds)
        #[rustfmt::skip]
        let table = [
            ("live at the head", ready.clone(), Some(status(ReplicaPhase::Live, 10, 10)), 10, 0, CatchUp::CaughtUp, 600),
            ("live but another replica saw a higher head", ready.clone(), Some(status(ReplicaPhase::Live, 10, 10)), 15, 0, CatchUp::Behind { phase: ReplicaPhase::Live, lag: 5 }, 600),
            ("within maxLag", ready.clone(), Some(status(ReplicaPhase::Live, 10, 10)), 15, 5, CatchUp::CaughtUp, 600),
            ("catching up", ready.clone(), Some(status(ReplicaPhase::CatchingUp, 3, 10)), 0, 100, CatchUp::Behind { phase: ReplicaPhase::CatchingUp, lag: 7 }, 600),
            ("no answer", ready.clone(), None, 10, 0, CatchUp::Unreachable, 600),
            ("turned unready 2 minutes ago", log_pod("demo-log-1", Some(("False", "2026-01-01T00:08:00Z")), "2026-01-01T00:00:00Z"), None, 0, 0, CatchUp::Unreachable, 120),
            ("never ready: since it started", log_pod("demo-log-1", None, "2026-01-01T00:09:00Z"), None, 0, 0, CatchUp::Unreachable, 60),
        ];
        for (case, p, s, head, max_lag, catch_up, secs) in table {
            let r = replica_view("demo-log", &p, s.as_ref(), head, max_lag, now).expect(case);
            assert_eq!(r.ordinal, 1, "{case}");
            assert_eq!(r.revision.as_deref(), Some(NEW), "{case}");
            assert_eq!(r.catch_up, catch_up, "{case}");
            assert_eq!(r.stalled_for, Duration::from_secs(secs), "{case}");
        }
        // Not an ordinal of this StatefulSet.
        let other = log_pod("demo-log-x", None, "2026-01-01T00:00:00Z");
        assert!(replica_view("demo-log", &other, None, 0, 0, now).is_none());
        let other = log_pod("demo-logger-0", None, "2026-01-01T00:00:00Z");
        assert!(replica_view("demo-log", &other, None, 0, 0, now).is_none());
    }

    #[test]
    fn a_controller_revision_yields_its_template() {
        let revision: ControllerRevision = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-log-abc"},
            "revision": 1,
            "data": {"spec": {"template": {
                "$patch": "replace",
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "replication-log", "image": "good:1"}]}
            }}},
        }))
        .expect("revision");
        let t = template_of(&revision).expect("template");
        assert_eq!(
            t.spec.expect("spec").containers[0].image.as_deref(),
            Some("good:1")
        );
        let empty: ControllerRevision =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "revision": 1}))
                .expect("revision");
        assert!(matches!(
            template_of(&empty),
            Err(LogRolloutError::NoTemplate { .. })
        ));
    }

    #[test]
    fn shaping_sets_partition_hash_and_the_restored_template() {
        let mut desired: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-log"},
            "spec": {"selector": {}, "serviceName": "s", "updateStrategy": {"type": "RollingUpdate"},
                     "template": {"spec": {"containers": [{"name": "c", "image": "broken:2"}]}}},
        }))
        .expect("set");
        let good: PodTemplateSpec = serde_json::from_value(
            serde_json::json!({"spec": {"containers": [{"name": "c", "image": "good:1"}]}}),
        )
        .expect("template");
        let built = template_hash(&desired.spec.as_ref().expect("spec").template);
        assert_eq!(built.len(), 16);
        assert_ne!(built, template_hash(&good));
        let record = RollbackRecord {
            template: built.clone(),
            revision: OLD.into(),
            pod: "demo-log-1".into(),
            cause: "not Ready".into(),
        };
        shape(&mut desired, 2, &built, Some(good.clone()), Some(&record));
        let spec = desired.spec.as_ref().expect("spec");
        assert_eq!(spec.template, good);
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|u| u.rolling_update.as_ref())
                .and_then(|r| r.partition),
            Some(2)
        );
        assert_eq!(
            annotation(&desired, TEMPLATE_HASH_ANNOTATION),
            Some(built.as_str())
        );
        assert_eq!(rollback_record(&desired), Some(record));
    }
}
