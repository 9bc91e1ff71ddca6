//! Status step: computes the ChatCluster status from the live children, the log replicas'
//! `/status` (read by the dereference step) and the gating outcome — pure: [`compute`], one small
//! function per decision (counts, halt, availability, phase, conditions, positions) — merges
//! conditions in one place ([`merge_conditions`], which keeps `lastTransitionTime` while a
//! condition's status holds), and patches the status subresource only when it changed.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::apply::FIELD_MANAGER;
use super::children::{Children, Live};
use super::gate::GateSummary;
use super::health::{self, PodProblem};
use super::log_rollout;
use super::monitoring;
use super::storage;
use super::validate::Validated;
use crate::crd::{ChatCluster, ChatClusterSpec, ChatClusterStatus, Phase};
use crate::names::{Component, selector_string};
use chat_wire::ReplicaStatus;

/// Condition types.
pub const AVAILABLE: &str = "Available";
/// Condition type: a rollout or scale is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a human.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the StatefulSets run on claims kept from an earlier ChatCluster of the same
/// name (`spec.storage.claimRetention: Retain`), so the old history and broker data came back.
pub const REUSED_CLAIMS: &str = "ReusedClaims";
/// Condition type: a storage size is above [`storage::CLAIM_SIZE_WARNING`] (almost always a
/// typo such as `900Pi`); the spec is applied all the same.
pub const STORAGE_SIZE_WARNING: &str = "StorageSizeWarning";
/// Condition type: `storage.size` grew but some existing claim cannot follow (its StorageClass
/// does not allow expansion, there is none, or the API server refused the request); the claims
/// that could grow were expanded.
pub const STORAGE_EXPANSION_BLOCKED: &str = "StorageExpansionBlocked";

/// Condition type: `spec.monitoring.enablePodMonitor` is set but the PodMonitor is not there as
/// built (the Prometheus Operator's CRDs are absent, the name is taken, the API server refused
/// it), or it is unset but deleting ours failed; False (`Created`) once it exists. Absent when
/// the spec asks for no PodMonitor.
pub const POD_MONITOR_MISSING: &str = "PodMonitorMissing";

/// Errors of the status step.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Patching the status subresource failed.
    #[error("patching ChatCluster status: {0}")]
    Patch(#[source] kube::Error),
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The cluster.
    pub cluster: &'a Validated,
    /// The status before this reconcile.
    pub previous: Option<&'a ChatClusterStatus>,
    /// The children as the API server returned them after apply.
    pub children: &'a Children<Live>,
    /// `/status` of every log replica that answered.
    pub logs: &'a [ReplicaStatus],
    /// Gating outcome.
    pub gate: &'a GateSummary,
    /// The replication-log rollout's outcome.
    pub log_rollout: &'a log_rollout::Outcome,
    /// Child pods that are not progressing (from the dereference step), first one first.
    pub problems: &'a [PodProblem],
    /// Claims kept from an earlier ChatCluster of the same name (from the dereference step).
    pub retained_claims: &'a [String],
    /// The claim expansions of this reconcile as the apply step carried them out.
    pub resize: &'a [storage::Resize],
    /// Where the PodMonitor stands (monitoring step).
    pub monitoring: &'a monitoring::Outcome,
    /// The time, for new transitions.
    pub now: Timestamp,
}

/// Counts of one workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    desired: i32,
    replicas: i32,
    ready: i32,
    updated: i32,
    /// The controller has seen the current spec and every pod runs it.
    settled: bool,
}

fn set_counts(set: &StatefulSet) -> Counts {
    let desired = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = set.status.clone().unwrap_or_default();
    let generation_seen =
        st.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0);
    let revision_done = st.update_revision.is_none() || st.current_revision == st.update_revision;
    let updated = st.updated_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    Counts {
        desired,
        replicas: st.replicas,
        ready,
        updated,
        settled: generation_seen
            && revision_done
            && st.replicas == desired
            && ready == desired
            && updated == desired,
    }
}

fn deployment_counts(d: &Deployment) -> Counts {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let generation_seen = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    Counts {
        desired,
        replicas,
        ready,
        updated,
        settled: generation_seen && replicas == desired && ready == desired && updated == desired,
    }
}

fn progress_deadline_exceeded(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        })
}

/// A condition as this reconcile sees it, before merging with the previous one.
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(now),
    }
}

/// Keeps each condition's previous `lastTransitionTime` while its status is unchanged.
pub fn merge_conditions(previous: &[Condition], mut next: Vec<Condition>) -> Vec<Condition> {
    for c in &mut next {
        if let Some(p) = previous.iter().find(|p| p.type_ == c.type_)
            && p.status == c.status
        {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
    next
}

/// Whether the cluster had come up before: its previous phase was Running or Progressing, or
/// Degraded for a reason other than an invalid spec (which can precede the first start).
fn has_served(previous: &ChatClusterStatus) -> bool {
    match previous.phase {
        Some(Phase::Running | Phase::Progressing) => true,
        Some(Phase::Degraded) => !previous
            .conditions
            .iter()
            .any(|c| c.type_ == DEGRADED && c.status == "True" && c.reason == "InvalidSpec"),
        Some(Phase::Pending) | None => false,
    }
}

/// A reason and message for a condition.
type Cause = (String, String);

/// The three workloads' counts.
struct Workloads {
    broker: Counts,
    log: Counts,
    chat: Counts,
}

impl Workloads {
    fn of(children: &Children<Live>) -> Workloads {
        Workloads {
            broker: set_counts(&children.broker),
            log: set_counts(&children.log),
            chat: deployment_counts(&children.chat_server),
        }
    }

    fn settled(&self) -> bool {
        self.broker.settled && self.log.settled && self.chat.settled
    }
}

/// Whether the cluster serves, and the Available condition's status, reason and message.
struct Availability {
    /// Broker and a log replica ready, and a chat-server ready unless scaled to zero.
    serving: bool,
    /// Serving with at least one chat-server wanted.
    available: bool,
    /// Why (not) available.
    cause: Cause,
}

/// Why the rollout halted: a chat-server pod past its catch-up timeout, a log replica past it
/// (`LogRolloutStalled`) or rolled back (`RolledBack`), or the Deployment past its progress
/// deadline.
fn halt(inputs: &Inputs<'_>) -> Option<Cause> {
    let rollout = &inputs.cluster.spec.rollout;
    if let Some(t) = inputs.gate.timed_out.first() {
        let lag = t.lag.map_or("unknown".to_owned(), |l| l.to_string());
        let phase = t.phase.map_or("status unreachable", |p| p.as_str());
        return Some((
            "CatchUpTimeout".into(),
            format!(
                "pod {} did not catch up within {} (phase {phase}, lag {lag}, maxLag {}); rollout halted",
                t.pod, rollout.catch_up_timeout, rollout.max_lag
            ),
        ));
    }
    if let Some(cause) = inputs.log_rollout.degraded(rollout) {
        return Some(cause);
    }
    let deployment = &inputs.children.chat_server;
    progress_deadline_exceeded(deployment).then(|| {
        (
            "ProgressDeadlineExceeded".into(),
            format!(
                "Deployment {} exceeded its progress deadline",
                deployment.name_any()
            ),
        )
    })
}

/// Availability from the ready counts; the first missing piece names the reason, and the
/// message names the first stuck pod of that component, if any.
fn availability(w: &Workloads, spec_replicas: i32, problems: &[PodProblem]) -> Availability {
    let serving =
        w.broker.ready >= 1 && w.log.ready >= 1 && (spec_replicas == 0 || w.chat.ready >= 1);
    let because = |what: &str, component: Component| match health::first_of(problems, component) {
        Some(p) => format!("{what}: {}", p.describe()),
        None => what.to_owned(),
    };
    let (reason, message) = if w.broker.ready < 1 {
        (
            "BrokerUnavailable",
            because("the broker is not ready", Component::Broker),
        )
    } else if w.log.ready < 1 {
        (
            "ReplicationLogUnavailable",
            because(
                "no replication-log replica is ready",
                Component::ReplicationLog,
            ),
        )
    } else if spec_replicas == 0 {
        ("ScaledToZero", "spec.replicas is 0".to_owned())
    } else if w.chat.ready < 1 {
        (
            "NoChatServerReady",
            because("no chat-server pod is ready", Component::ChatServer),
        )
    } else {
        (
            "MinimumReplicasAvailable",
            format!(
                "{}/{} chat-server pods ready",
                w.chat.ready.min(spec_replicas),
                spec_replicas
            ),
        )
    };
    let cause = (reason.to_owned(), message);
    Availability {
        serving,
        available: serving && spec_replicas > 0,
        cause,
    }
}

/// Why the cluster is Degraded, if it is, in this order:
///
/// 1. A child pod is stuck ([`PodProblem`]): the reason is the first pod's cause
///    (`ImagePullBackOff`, `CrashLoopBackOff`, `Unschedulable`, …) and the message names it, the
///    other stuck pods, and the halted rollout if there is one — a stuck pod is never hidden
///    behind `Degraded=False`, even before the cluster first serves.
/// 2. A halted rollout (`CatchUpTimeout`, `ProgressDeadlineExceeded`).
/// 3. An outage: Pending is only for a cluster that has not served yet; once it has (Running or
///    Progressing before, or Degraded for anything but an invalid spec), losing the broker, every
///    log replica or every chat-server is Degraded, with the unavailability reason.
fn degradation(
    problems: &[PodProblem],
    halt: Option<Cause>,
    availability: &Availability,
    previous: Option<&ChatClusterStatus>,
) -> Option<Cause> {
    if let Some((first, rest)) = problems.split_first() {
        let mut message = first.describe();
        if !rest.is_empty() {
            let others: Vec<String> = rest
                .iter()
                .map(|p| format!("pod {} {}", p.pod, p.reason))
                .collect();
            message.push_str(&format!("; also {}", others.join(", ")));
        }
        if let Some((reason, halted)) = &halt {
            message.push_str(&format!("; {reason}: {halted}"));
        }
        return Some((first.reason.clone(), message));
    }
    let outage = !availability.serving && halt.is_none() && previous.is_some_and(has_served);
    if outage {
        Some(availability.cause.clone())
    } else {
        halt
    }
}

fn phase(degraded: bool, serving: bool, settled: bool) -> Phase {
    if degraded {
        Phase::Degraded
    } else if !serving {
        Phase::Pending
    } else if !settled {
        Phase::Progressing
    } else {
        Phase::Running
    }
}

/// The Progressing condition's status and reason in `phase`.
fn progressing(phase: Phase, halted: bool, settled: bool) -> (bool, &'static str) {
    match phase {
        Phase::Degraded if !halted => (!settled, "RolloutInProgress"),
        Phase::Degraded => (false, "RolloutHalted"),
        Phase::Running => (false, "RolloutComplete"),
        Phase::Pending | Phase::Progressing => (true, "RolloutInProgress"),
    }
}

/// The log head (highest of the replicas') and persisted position (lowest), kept from the
/// previous status when no replica answered.
fn positions(
    logs: &[ReplicaStatus],
    previous: Option<&ChatClusterStatus>,
) -> (Option<u64>, Option<u64>) {
    let head = logs
        .iter()
        .map(|l| l.head)
        .max()
        .or(previous.and_then(|p| p.head));
    let persisted = logs
        .iter()
        .map(|l| l.persisted)
        .min()
        .or(previous.and_then(|p| p.persisted));
    (head, persisted)
}

/// Computes the status.
pub fn compute(inputs: &Inputs<'_>) -> ChatClusterStatus {
    let v = inputs.cluster;
    let (generation, now, spec_replicas) = (v.generation, inputs.now, v.spec.replicas);
    let w = Workloads::of(inputs.children);
    let settled = w.settled();
    let halt = halt(inputs);
    let halted = halt.is_some();
    let availability = availability(&w, spec_replicas, inputs.problems);
    let degraded = degradation(inputs.problems, halt, &availability, inputs.previous);
    let phase = phase(degraded.is_some(), availability.serving, settled);

    let progress_message = format!(
        "chat-server {}/{} ready, {} updated; replication-log {}/{} ready, {} updated{}; broker {}/1 ready",
        w.chat.ready.min(spec_replicas),
        spec_replicas,
        w.chat.updated,
        w.log.ready,
        w.log.desired,
        w.log.updated,
        inputs.log_rollout.progress_note(),
        w.broker.ready
    );
    let (progressing, progressing_reason) = progressing(phase, halted, settled);
    let is_degraded = degraded.is_some();
    let (degraded_reason, degraded_message) =
        degraded.unwrap_or(("AsExpected".into(), "no problems detected".to_owned()));
    let (available_reason, available_message) = availability.cause;
    let next = vec![
        condition(
            AVAILABLE,
            availability.available,
            &available_reason,
            available_message,
            generation,
            now,
        ),
        condition(
            PROGRESSING,
            progressing,
            progressing_reason,
            progress_message,
            generation,
            now,
        ),
        condition(
            DEGRADED,
            is_degraded,
            &degraded_reason,
            degraded_message,
            generation,
            now,
        ),
    ];
    let mut next = next;
    next.push(reused_claims(inputs.retained_claims, v, generation, now));
    next.push(storage_size_warning(&v.spec, generation, now));
    next.push(storage_expansion_blocked(inputs.resize, generation, now));
    next.extend(pod_monitor_missing(inputs.monitoring, generation, now));
    let previous_conditions = inputs.previous.map_or(&[][..], |p| p.conditions.as_slice());
    let (head, persisted) = positions(inputs.logs, inputs.previous);

    ChatClusterStatus {
        observed_generation: Some(generation),
        phase: Some(phase),
        replicas: w.chat.replicas,
        ready_replicas: w.chat.ready,
        updated_replicas: w.chat.updated,
        // During a scale-down the Deployment still counts the pods it is removing: READY shows
        // at most the desired count (never `5/2`); readyReplicas keeps the true count.
        ready: format!("{}/{}", w.chat.ready.min(spec_replicas), spec_replicas),
        selector: selector_string(&v.name, Component::ChatServer),
        head,
        persisted,
        conditions: merge_conditions(previous_conditions, next),
    }
}

/// The `ReusedClaims` condition: True (reason `RetainedClaims`) naming the claims kept from an
/// earlier ChatCluster of the same name, False (`NewClaims`) when none predates this one.
fn reused_claims(
    retained: &[String],
    cluster: &Validated,
    generation: i64,
    now: Timestamp,
) -> Condition {
    if retained.is_empty() {
        return condition(
            REUSED_CLAIMS,
            false,
            "NewClaims",
            "no PersistentVolumeClaim predates this ChatCluster".to_owned(),
            generation,
            now,
        );
    }
    condition(
        REUSED_CLAIMS,
        true,
        "RetainedClaims",
        format!(
            "{} kept from an earlier ChatCluster named {} (created before this one): the broker \
             and the replication log run on their data, so the earlier history is back. For an \
             empty cluster, delete this ChatCluster, then these claims, then create it again \
             (docs/operations.md, Storage)",
            retained.join(", "),
            cluster.name
        ),
        generation,
        now,
    )
}

/// The `StorageSizeWarning` condition: True (reason `AboveBound`) naming each size above
/// [`storage::CLAIM_SIZE_WARNING`], False (`WithinBound`) otherwise.
fn storage_size_warning(spec: &ChatClusterSpec, generation: i64, now: Timestamp) -> Condition {
    let oversized = storage::oversized_claims(spec);
    if oversized.is_empty() {
        return condition(
            STORAGE_SIZE_WARNING,
            false,
            "WithinBound",
            format!(
                "every storage size is at most {}",
                storage::CLAIM_SIZE_WARNING
            ),
            generation,
            now,
        );
    }
    let sizes: Vec<String> = oversized
        .iter()
        .map(|(field, size)| format!("{field} {size}"))
        .collect();
    condition(
        STORAGE_SIZE_WARNING,
        true,
        "AboveBound",
        format!(
            "{} above {} per claim, larger than any single disk the common clouds offer: check \
             for a typo (Pi for Gi); the claims are requested as written and may stay Pending",
            sizes.join(", "),
            storage::CLAIM_SIZE_WARNING
        ),
        generation,
        now,
    )
}

/// The `StorageExpansionBlocked` condition: True (reason `ExpansionBlocked`) with each claim that
/// cannot grow to its component's `storage.size` and why, False (`NothingBlocked`) otherwise.
fn storage_expansion_blocked(
    resize: &[storage::Resize],
    generation: i64,
    now: Timestamp,
) -> Condition {
    let blocked: Vec<&str> = resize
        .iter()
        .filter_map(|r| match r {
            storage::Resize::Blocked { reason, .. } => Some(reason.as_str()),
            storage::Resize::Expand { .. } => None,
        })
        .collect();
    if blocked.is_empty() {
        return condition(
            STORAGE_EXPANSION_BLOCKED,
            false,
            "NothingBlocked",
            "every claim requests its component's storage.size, or is being expanded to it"
                .to_owned(),
            generation,
            now,
        );
    }
    condition(
        STORAGE_EXPANSION_BLOCKED,
        true,
        "ExpansionBlocked",
        format!(
            "{}. The spec is kept; grow these volumes by hand or move them to a class that \
             allows expansion (docs/operations.md, Storage)",
            blocked.join("; ")
        ),
        generation,
        now,
    )
}

/// The `PodMonitorMissing` condition for the monitoring step's `outcome`: False (`Created`)
/// naming the PodMonitor; True with `PrometheusOperatorAbsent`, `NameConflict`, `ApplyFailed` or
/// `DeleteFailed`; None when the spec asks for no PodMonitor and none of ours is left.
fn pod_monitor_missing(
    outcome: &monitoring::Outcome,
    generation: i64,
    now: Timestamp,
) -> Option<Condition> {
    use monitoring::Outcome;
    let (missing, reason, message) = match outcome {
        Outcome::Disabled => return None,
        Outcome::Created { name } => (
            false,
            "Created",
            format!("PodMonitor {name} scrapes the chat-server and replication-log pods"),
        ),
        Outcome::PrometheusOperatorAbsent => (
            true,
            "PrometheusOperatorAbsent",
            "spec.monitoring.enablePodMonitor is true but the API server does not serve \
             monitoring.coreos.com/v1 PodMonitor: install the Prometheus Operator's CRDs; the \
             PodMonitor is created within a minute after"
                .to_owned(),
        ),
        Outcome::NameConflict { name, controller } => (
            true,
            "NameConflict",
            format!(
                "PodMonitor {name} exists and is not controlled by this ChatCluster ({}); it was \
                 left alone — delete or rename it (a hand-applied docs/monitoring/podmonitor.yaml \
                 is no longer needed)",
                controller
                    .as_deref()
                    .map_or("no controller".to_owned(), |c| format!("controlled by {c}"))
            ),
        ),
        Outcome::ApplyFailed { error, .. } => (true, "ApplyFailed", error.clone()),
        Outcome::DeleteFailed { name, error } => (
            true,
            "DeleteFailed",
            format!(
                "spec.monitoring.enablePodMonitor is false but PodMonitor {name} could not be \
                 removed ({error}); retried on the next reconcile"
            ),
        ),
    };
    Some(condition(
        POD_MONITOR_MISSING,
        missing,
        reason,
        message,
        generation,
        now,
    ))
}

/// The condition of type `type_` in `next` when it is worth an Event: True, and either it was
/// not True before or its reason or message changed. A condition that stays True with the same
/// words records nothing more (Degraded, ReusedClaims, StorageSizeWarning).
pub fn turned_true<'a>(
    type_: &str,
    previous: Option<&ChatClusterStatus>,
    next: &'a ChatClusterStatus,
) -> Option<&'a Condition> {
    let true_in = |s: &'a ChatClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    let now = true_in(next)?;
    let before = previous.and_then(|p| {
        p.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    });
    let same = before.is_some_and(|b| b.reason == now.reason && b.message == now.message);
    (!same).then_some(now)
}

/// The status of a ChatCluster that failed validation: [`halted`] with reason `InvalidSpec`.
pub fn invalid(
    previous: Option<&ChatClusterStatus>,
    generation: i64,
    message: String,
    now: Timestamp,
) -> ChatClusterStatus {
    halted(previous, generation, "InvalidSpec", message, now)
}

/// The status of a ChatCluster whose reconcile stopped before apply (invalid spec, a name
/// conflict): phase Degraded, `Degraded=True` with `reason` and `message`; the other conditions
/// and fields are kept as they were.
pub fn halted(
    previous: Option<&ChatClusterStatus>,
    generation: i64,
    reason: &str,
    message: String,
    now: Timestamp,
) -> ChatClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = Some(generation);
    status.phase = Some(Phase::Degraded);
    let next = vec![condition(DEGRADED, true, reason, message, generation, now)];
    let mut conditions = merge_conditions(&status.conditions, next);
    conditions.extend(
        status
            .conditions
            .iter()
            .filter(|c| c.type_ != DEGRADED)
            .cloned(),
    );
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    status.conditions = conditions;
    status
}

/// Patches the status subresource when `next` differs from the current status; true when written.
/// A ChatCluster deleted while it was being reconciled (404) is not an error: there is no status
/// left to write, and its children go with the garbage collector.
pub async fn patch_if_changed(
    client: &Client,
    cluster: &ChatCluster,
    next: &ChatClusterStatus,
) -> Result<bool, StatusError> {
    if cluster.status.as_ref() == Some(next) {
        return Ok(false);
    }
    let api: Api<ChatCluster> =
        Api::namespaced(client.clone(), &cluster.namespace().unwrap_or_default());
    let patch =
        json!({"apiVersion": "chat-cluster.io/v1alpha1", "kind": "ChatCluster", "status": next});
    match api
        .patch_status(
            &cluster.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::debug!("ChatCluster deleted during the reconcile; status not written");
            Ok(false)
        }
        Err(e) => Err(StatusError::Patch(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::build::build;
    use crate::reconcile::dereference::{BrokerPasswords, Facts};
    use crate::reconcile::validate::validate;

    /// `ReusedClaims` names the kept claims, and an Event is due only when it turns True or its
    /// list changes while True.
    #[test]
    fn reused_claims_condition_and_its_event() {
        let cluster = validate(&ChatCluster::test()).expect("valid");
        let now = Timestamp::now();
        let status_with = |retained: &[String]| ChatClusterStatus {
            conditions: vec![reused_claims(retained, &cluster, 1, now)],
            ..ChatClusterStatus::default()
        };
        let none = status_with(&[]);
        let two = vec![
            "data-demo-broker-0".to_owned(),
            "data-demo-log-0".to_owned(),
        ];
        let kept = status_with(&two);
        let c = &kept.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            (REUSED_CLAIMS, "True")
        );
        assert_eq!(c.reason, "RetainedClaims");
        assert!(
            c.message.starts_with(
                "data-demo-broker-0, data-demo-log-0 kept from an earlier ChatCluster named demo"
            ),
            "{}",
            c.message
        );
        assert_eq!(none.conditions[0].status, "False");
        assert_eq!(none.conditions[0].reason, "NewClaims");
        let more = status_with(&["data-demo-broker-0".to_owned()]);
        // (previous, next, event due)
        for (previous, next, due) in [
            (None, &kept, true),
            (Some(&none), &kept, true),
            (Some(&kept), &kept, false),
            (Some(&kept), &more, true),
            (Some(&kept), &none, false),
            (None, &none, false),
        ] {
            assert_eq!(
                turned_true(REUSED_CLAIMS, previous, next).is_some(),
                due,
                "{previous:?} -> {next:?}"
            );
        }
    }

    fn set(replicas: i32, ready: i32) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "generation": 1},
            "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "s"},
            "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready,
                       "updatedReplicas": replicas, "currentRevision": "r", "updateRevision": "r"},
        }))
        .expect("statefulset")
    }

    /// A Deployment wanting `replicas` whose status counts `existing` pods, `ready` of them ready.
    fn deployment(replicas: i32, existing: i32, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "demo-chat-server", "generation": 1},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": existing, "readyReplicas": ready,
                       "updatedReplicas": existing},
        }))
        .expect("deployment")
    }

    fn status_with(
        previous: Option<&ChatClusterStatus>,
        broker_ready: i32,
        log_ready: i32,
        chat_ready: i32,
    ) -> ChatClusterStatus {
        let gate = GateSummary::default();
        status_gated(previous, broker_ready, log_ready, chat_ready, &gate)
    }

    fn status_gated(
        previous: Option<&ChatClusterStatus>,
        broker_ready: i32,
        log_ready: i32,
        chat_ready: i32,
        gate: &GateSummary,
    ) -> ChatClusterStatus {
        status_full(
            previous,
            (broker_ready, log_ready, chat_ready),
            3,
            gate,
            &[],
        )
    }

    /// The status of the test cluster (1 broker, 2 log replicas, `replicas` chat-servers wanted,
    /// 3 in the Deployment's status) with these ready counts (broker, log, chat-server), gating
    /// outcome and stuck pods.
    fn status_full(
        previous: Option<&ChatClusterStatus>,
        ready: (i32, i32, i32),
        replicas: i32,
        gate: &GateSummary,
        problems: &[PodProblem],
    ) -> ChatClusterStatus {
        let outcome = log_rollout::Outcome::default();
        status_rolling(previous, ready, replicas, gate, problems, &outcome)
    }

    /// [`status_full`] with the log rollout's outcome.
    fn status_rolling(
        previous: Option<&ChatClusterStatus>,
        (broker_ready, log_ready, chat_ready): (i32, i32, i32),
        replicas: i32,
        gate: &GateSummary,
        problems: &[PodProblem],
        log_rollout: &log_rollout::Outcome,
    ) -> ChatClusterStatus {
        let cluster = validate(&ChatCluster::test().with_replicas(replicas)).expect("valid");
        let facts = Facts {
            passwords: BrokerPasswords {
                admin: "p".into(),
                chat_server: "p-cs".into(),
                replication_log: "p-rl".into(),
            },
            broker_claim_size: None,
            log_claim_size: None,
            auth_key: Some("k".into()),
            internal_token: "t".into(),
        };
        let built = build(&cluster, &facts);
        let children = Children::<Live> {
            broker_secret: built.broker_secret,
            broker_service: built.broker_service,
            broker: set(1, broker_ready),
            log_headless_service: built.log_headless_service,
            log_service: built.log_service,
            log: set(2, log_ready),
            log_pdb: built.log_pdb,
            chat_server: deployment(replicas, 3, chat_ready),
            chat_service: built.chat_service,
            chat_pdb: built.chat_pdb,
            auth_secret: built.auth_secret,
            internal_secret: built.internal_secret,
            broker_policy: built.broker_policy,
            log_policy: built.log_policy,
            chat_policy: built.chat_policy,
        };
        compute(&Inputs {
            cluster: &cluster,
            previous,
            children: &children,
            logs: &[],
            gate,
            log_rollout,
            problems,
            retained_claims: &[],
            resize: &[],
            monitoring: &monitoring::Outcome::Disabled,
            now: Timestamp::now(),
        })
    }

    fn reason(s: &ChatClusterStatus, type_: &str) -> (String, String) {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap_or_default()
    }

    #[test]
    fn new_cluster_is_pending_until_it_serves() {
        let first = status_with(None, 0, 0, 0);
        assert_eq!(first.phase, Some(Phase::Pending));
        let still = status_with(Some(&first), 1, 1, 0);
        assert_eq!(still.phase, Some(Phase::Pending));
        let running = status_with(Some(&still), 1, 2, 3);
        assert_eq!(running.phase, Some(Phase::Running));
    }

    #[test]
    fn losing_the_broker_of_a_running_cluster_is_degraded_until_it_recovers() {
        let running = status_with(None, 1, 2, 3);
        let running = status_with(Some(&running), 1, 2, 3);
        assert_eq!(running.phase, Some(Phase::Running));

        let lost = status_with(Some(&running), 0, 2, 3);
        assert_eq!(lost.phase, Some(Phase::Degraded));
        assert_eq!(
            reason(&lost, DEGRADED),
            ("True".into(), "BrokerUnavailable".into())
        );
        // Still down on the next reconcile: stays Degraded, not Pending.
        let still = status_with(Some(&lost), 0, 2, 3);
        assert_eq!(still.phase, Some(Phase::Degraded));

        let back = status_with(Some(&still), 1, 2, 3);
        assert_eq!(back.phase, Some(Phase::Running));
        assert_eq!(
            reason(&back, DEGRADED),
            ("False".into(), "AsExpected".into())
        );
    }

    #[test]
    fn losing_every_log_replica_is_degraded() {
        let running = status_with(None, 1, 2, 3);
        let lost = status_with(Some(&running), 1, 0, 3);
        assert_eq!(lost.phase, Some(Phase::Degraded));
        assert_eq!(
            reason(&lost, DEGRADED),
            ("True".into(), "ReplicationLogUnavailable".into())
        );
    }

    #[test]
    fn catch_up_timeout_names_the_pods_phase() {
        let gate = GateSummary {
            timed_out: vec![super::super::gate::TimedOutPod {
                pod: "p".into(),
                lag: Some(0),
                phase: Some(chat_wire::NodePhase::Bootstrapping),
            }],
            ..GateSummary::default()
        };
        let s = status_gated(None, 1, 2, 3, &gate);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .expect("Degraded condition");
        assert_eq!(c.reason, "CatchUpTimeout");
        assert!(
            c.message.contains("phase bootstrapping, lag 0"),
            "{}",
            c.message
        );
    }

    fn stuck(component: &'static str, pod: &str, reason: &str) -> PodProblem {
        PodProblem {
            component: Some(component),
            pod: pod.into(),
            reason: reason.into(),
            message: format!("container c image img:1: {reason} detail"),
            reference: Default::default(),
        }
    }

    fn degraded(s: &ChatClusterStatus) -> Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .cloned()
            .expect("Degraded condition")
    }

    /// A stuck child pod is Degraded=True with its cause, whatever else holds: never
    /// `Degraded=False "no problems detected"` while a child fails.
    #[test]
    fn a_stuck_pod_is_degraded_with_its_cause_in_every_state() {
        let gate = GateSummary::default();
        let broker = stuck("broker", "demo-broker-0", "ImagePullBackOff");
        let log = stuck("replication-log", "demo-log-1", "CrashLoopBackOff");
        let running = status_with(None, 1, 2, 3);
        // (case, previous, ready counts, problems, reason, message fragments, available reason)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Option<&ChatClusterStatus>,
            (i32, i32, i32),
            Vec<PodProblem>,
            &str,
            Vec<&str>,
            &str,
        )> = vec![
            (
                "new cluster, broker cannot pull",
                None,
                (0, 0, 0),
                vec![broker.clone()],
                "ImagePullBackOff",
                vec!["pod demo-broker-0 (broker): ImagePullBackOff: container c image img:1"],
                "BrokerUnavailable",
            ),
            (
                "serving cluster, one log replica crash-looping",
                Some(&running),
                (1, 1, 3),
                vec![log.clone()],
                "CrashLoopBackOff",
                vec!["pod demo-log-1 (replication-log): CrashLoopBackOff"],
                "MinimumReplicasAvailable",
            ),
            (
                "two stuck pods: the broker's first, the other named",
                Some(&running),
                (0, 1, 3),
                vec![broker.clone(), log.clone()],
                "ImagePullBackOff",
                vec![
                    "pod demo-broker-0",
                    "; also pod demo-log-1 CrashLoopBackOff",
                ],
                "BrokerUnavailable",
            ),
        ];
        for (case, previous, ready, problems, want, fragments, available) in cases {
            let s = status_full(previous, ready, 3, &gate, &problems);
            assert_eq!(s.phase, Some(Phase::Degraded), "{case}");
            let d = degraded(&s);
            assert_eq!(
                (d.status.as_str(), d.reason.as_str()),
                ("True", want),
                "{case}"
            );
            for f in fragments {
                assert!(d.message.contains(f), "{case}: {}", d.message);
            }
            assert_eq!(reason(&s, AVAILABLE).1, available, "{case}");
        }
        // The Available message names the stuck pod of the missing component.
        let s = status_full(None, (0, 0, 0), 3, &gate, &[broker]);
        let available = s
            .conditions
            .iter()
            .find(|c| c.type_ == AVAILABLE)
            .expect("Available");
        assert!(
            available
                .message
                .contains("the broker is not ready: pod demo-broker-0"),
            "{}",
            available.message
        );
    }

    #[test]
    fn a_stuck_pod_and_a_halted_rollout_are_both_named() {
        let gate = GateSummary {
            timed_out: vec![super::super::gate::TimedOutPod {
                pod: "demo-chat-server-x".into(),
                lag: None,
                phase: None,
            }],
            ..GateSummary::default()
        };
        let chat = stuck("chat-server", "demo-chat-server-x", "ErrImageNeverPull");
        let s = status_full(None, (1, 2, 3), 3, &gate, &[chat]);
        let d = degraded(&s);
        assert_eq!(d.reason, "ErrImageNeverPull");
        assert!(
            d.message
                .contains("; CatchUpTimeout: pod demo-chat-server-x did not catch up"),
            "{}",
            d.message
        );
        assert_eq!(
            reason(&s, PROGRESSING),
            ("False".into(), "RolloutHalted".into())
        );
    }

    /// During a scale-down from 5 to 2 the Deployment still counts 5 ready pods.
    #[test]
    fn ready_never_shows_more_than_desired() {
        let gate = GateSummary::default();
        // (wanted, ready in the Deployment's status, READY column)
        for (wanted, ready, column) in [(2, 5, "2/2"), (2, 1, "1/2"), (0, 3, "0/0"), (3, 3, "3/3")]
        {
            let s = status_full(None, (1, 2, ready), wanted, &gate, &[]);
            assert_eq!(s.ready, column, "{wanted} wanted, {ready} ready");
            assert_eq!(
                s.ready_replicas, ready,
                "readyReplicas keeps the true count"
            );
        }
    }

    #[test]
    fn degraded_events_only_on_a_change() {
        let gate = GateSummary::default();
        let broker = stuck("broker", "demo-broker-0", "ImagePullBackOff");
        let log = stuck("replication-log", "demo-log-0", "CrashLoopBackOff");
        let ok = status_with(None, 1, 2, 3);
        let pull = status_full(
            Some(&ok),
            (0, 2, 3),
            3,
            &gate,
            std::slice::from_ref(&broker),
        );
        let pull_again = status_full(
            Some(&pull),
            (0, 2, 3),
            3,
            &gate,
            std::slice::from_ref(&broker),
        );
        let crash = status_full(
            Some(&pull_again),
            (1, 0, 3),
            3,
            &gate,
            std::slice::from_ref(&log),
        );
        // (case, previous, next, event reason)
        let cases = [
            ("healthy", None, &ok, None),
            (
                "becomes degraded",
                Some(&ok),
                &pull,
                Some("ImagePullBackOff"),
            ),
            ("same cause again", Some(&pull), &pull_again, None),
            (
                "another cause",
                Some(&pull_again),
                &crash,
                Some("CrashLoopBackOff"),
            ),
            ("recovers", Some(&crash), &ok, None),
        ];
        for (case, previous, next, want) in cases {
            let got = turned_true(DEGRADED, previous, next).map(|c| c.reason.as_str());
            assert_eq!(got, want, "{case}");
        }
    }

    /// A halted log rollout is Degraded/LogRolloutStalled naming the pod; a rollback in force is
    /// Degraded/RolledBack naming the revision, the pod and the cause; a waiting rollout is only
    /// Progressing, and says for which pod.
    #[test]
    fn log_rollouts_halted_rolled_back_or_waiting() {
        use log_rollout::{Outcome, Plan, Progress, RollbackRecord};
        let gate = GateSummary::default();
        let plan = |progress| Outcome {
            plan: Some(Plan {
                partition: 1,
                progress,
                delete: None,
            }),
            ..Outcome::default()
        };
        let halted = plan(Progress::Halted {
            pod: "demo-log-1".into(),
            cause: "not Ready, no /status answer".into(),
        });
        let rolling_back = plan(Progress::RollBack {
            pod: "demo-log-1".into(),
            cause: "not Ready, no /status answer".into(),
            revision: "demo-log-good".into(),
        });
        let rolled_back = Outcome {
            rolled_back: Some(RollbackRecord {
                template: "h".into(),
                revision: "demo-log-good".into(),
                pod: "demo-log-1".into(),
                cause: "not Ready, no /status answer".into(),
            }),
            ..plan(Progress::Settled)
        };
        let waiting = plan(Progress::Waiting {
            pod: "demo-log-1".into(),
            reason: "Ready, phase catching_up".into(),
        });
        let running = status_with(None, 1, 2, 3);
        // (case, outcome, phase, Degraded (status, reason), message fragments)
        let table = [
            (
                "halted",
                &halted,
                Phase::Degraded,
                ("True", "LogRolloutStalled"),
                vec![
                    "replication-log pod demo-log-1 was not ready and caught up within 5m (not Ready, no /status answer, maxLag 0); rollout halted",
                ],
            ),
            (
                "rolling back",
                &rolling_back,
                Phase::Degraded,
                ("True", "RolledBack"),
                vec![
                    "rolled back to revision demo-log-good: pod demo-log-1 was not ready",
                    "the spec is unchanged",
                ],
            ),
            (
                "rolled back, steady",
                &rolled_back,
                Phase::Degraded,
                ("True", "RolledBack"),
                vec!["rolled back to revision demo-log-good"],
            ),
            (
                "waiting",
                &waiting,
                Phase::Running,
                ("False", "AsExpected"),
                vec![],
            ),
        ];
        for (case, outcome, phase, (status, reason), fragments) in table {
            let s = status_rolling(Some(&running), (1, 2, 3), 3, &gate, &[], outcome);
            assert_eq!(s.phase, Some(phase), "{case}");
            let d = degraded(&s);
            assert_eq!(
                (d.status.as_str(), d.reason.as_str()),
                (status, reason),
                "{case}"
            );
            for f in fragments {
                assert!(d.message.contains(f), "{case}: {}", d.message);
            }
        }
        let s = status_rolling(Some(&running), (1, 2, 3), 3, &gate, &[], &waiting);
        let progressing = s
            .conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)
            .expect("Progressing");
        assert!(
            progressing
                .message
                .contains("log rollout waiting for demo-log-1 (Ready, phase catching_up)"),
            "{}",
            progressing.message
        );
        // Halted and rolled back: the rollout is not progressing.
        let s = status_rolling(Some(&running), (1, 2, 3), 3, &gate, &[], &rolled_back);
        assert_eq!(
            reason(&s, PROGRESSING),
            ("False".into(), "RolloutHalted".into())
        );
    }

    /// Each monitoring outcome's `PodMonitorMissing` condition, and an Event only when it turns
    /// True or changes its words while True.
    #[test]
    fn pod_monitor_missing_condition_and_its_event() {
        use monitoring::Outcome;
        let now = Timestamp::now();
        let conflict = Outcome::NameConflict {
            name: "demo".into(),
            controller: None,
        };
        // (case, outcome, (status, reason), message fragment)
        let table = [
            ("disabled", Outcome::Disabled, None, ""),
            (
                "created",
                Outcome::Created {
                    name: "demo".into(),
                },
                Some(("False", "Created")),
                "PodMonitor demo scrapes the chat-server and replication-log pods",
            ),
            (
                "CRDs absent",
                Outcome::PrometheusOperatorAbsent,
                Some(("True", "PrometheusOperatorAbsent")),
                "spec.monitoring.enablePodMonitor is true but the API server does not serve \
                 monitoring.coreos.com/v1 PodMonitor: install the Prometheus Operator's CRDs; \
                 the PodMonitor is created within a minute after",
            ),
            (
                "foreign PodMonitor",
                conflict.clone(),
                Some(("True", "NameConflict")),
                "PodMonitor demo exists and is not controlled by this ChatCluster (no controller)",
            ),
            (
                "foreign PodMonitor with a controller",
                Outcome::NameConflict {
                    name: "demo".into(),
                    controller: Some("ChatCluster/other".into()),
                },
                Some(("True", "NameConflict")),
                "(controlled by ChatCluster/other)",
            ),
            (
                "apply refused",
                Outcome::ApplyFailed {
                    name: "demo".into(),
                    error: "applying PodMonitor demo: forbidden".into(),
                },
                Some(("True", "ApplyFailed")),
                "applying PodMonitor demo: forbidden",
            ),
            (
                "delete refused",
                Outcome::DeleteFailed {
                    name: "demo".into(),
                    error: "deleting PodMonitor demo: forbidden".into(),
                },
                Some(("True", "DeleteFailed")),
                "could not be removed (deleting PodMonitor demo: forbidden); retried",
            ),
        ];
        for (case, outcome, want, fragment) in table {
            let got = pod_monitor_missing(&outcome, 1, now);
            assert_eq!(
                got.as_ref().map(|c| (c.status.as_str(), c.reason.as_str())),
                want,
                "{case}"
            );
            if let Some(c) = got {
                assert_eq!(c.type_, POD_MONITOR_MISSING, "{case}");
                assert!(c.message.contains(fragment), "{case}: {}", c.message);
            }
        }
        let status = |outcome: &Outcome| ChatClusterStatus {
            conditions: pod_monitor_missing(outcome, 1, now).into_iter().collect(),
            ..ChatClusterStatus::default()
        };
        let (absent, created, conflicted, off) = (
            status(&Outcome::PrometheusOperatorAbsent),
            status(&Outcome::Created {
                name: "demo".into(),
            }),
            status(&conflict),
            status(&Outcome::Disabled),
        );
        // (previous, next, event reason)
        for (previous, next, want) in [
            (None, &absent, Some("PrometheusOperatorAbsent")),
            (Some(&absent), &absent, None),
            (Some(&absent), &created, None),
            (Some(&created), &conflicted, Some("NameConflict")),
            (Some(&absent), &conflicted, Some("NameConflict")),
            (Some(&conflicted), &off, None),
        ] {
            assert_eq!(
                turned_true(POD_MONITOR_MISSING, previous, next).map(|c| c.reason.as_str()),
                want,
                "{previous:?} -> {next:?}"
            );
        }
    }

    #[test]
    fn a_fixed_invalid_spec_starts_pending() {
        let invalid = invalid(None, 1, "bad".into(), Timestamp::now());
        let next = status_with(Some(&invalid), 0, 0, 0);
        assert_eq!(next.phase, Some(Phase::Pending));
    }
}
