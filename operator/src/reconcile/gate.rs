//! Rollout gating: a chat-server pod carries the readiness gate `chat-cluster.io/caught-up`, and
//! this module sets that condition to True once the pod's `/status` says it is live and within
//! `spec.rollout.maxLag` of the broker head. A pod that has not caught up `catchUpTimeout` after
//! it started is no longer gated: it stays unready, the Deployment (maxUnavailable 0) stops, and
//! the status step reports Degraded with reason `CatchUpTimeout`.
//!
//! [`gate_decision`] is the pure decision, on the `/status` documents the dereference step read;
//! [`gate`] is the thin I/O shell that patches the passed pods' condition and records Events.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::validate::Validated;
use crate::crd::{CAUGHT_UP_CONDITION, ChatCluster};
use chat_wire::{NodePhase, NodeStatus};

/// What to do with one chat-server pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// The condition is already True, or the pod is terminating: nothing to do.
    Done,
    /// Live and within maxLag: set the condition True.
    Pass {
        /// Positions behind the head.
        lag: u64,
        /// Position the pod has applied.
        position: u64,
    },
    /// Not yet; look again soon.
    Wait {
        /// Why, for the log.
        reason: String,
    },
    /// Did not catch up within catchUpTimeout: stop gating it and report Degraded.
    TimedOut {
        /// Last known lag, when the pod answered.
        lag: Option<u64>,
    },
}

/// A pod that timed out, for the status step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedOutPod {
    /// Pod name.
    pub pod: String,
    /// Last known lag.
    pub lag: Option<u64>,
    /// The pod's phase from its `/status` (`bootstrapping`, `catching_up`, `live`); None when it
    /// did not answer. A pod that never reached the log reports lag 0 while bootstrapping, so the
    /// lag alone would read as caught up.
    pub phase: Option<NodePhase>,
}

/// The gating outcome of one reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateSummary {
    /// Pods passed in this reconcile.
    pub passed: Vec<String>,
    /// Pods still catching up (the reconcile requeues soon).
    pub waiting: Vec<String>,
    /// Pods past their catch-up timeout.
    pub timed_out: Vec<TimedOutPod>,
}

/// Errors of the gating step.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Patching the pod's status failed.
    #[error("setting {CAUGHT_UP_CONDITION} on pod {pod}: {source}")]
    Patch {
        /// Pod.
        pod: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Whether `pod`'s condition `type_` is True.
pub fn condition_true(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Whether `pod` still needs a decision: not terminating, its condition not yet True. Only these
/// pods are probed.
pub fn awaits_decision(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !condition_true(pod, CAUGHT_UP_CONDITION)
}

/// When the pod started: its status.startTime, else its creation time.
pub fn started_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// Decides what to do with `pod` given its `/status` (None: not reachable), the highest broker
/// head the operator knows of, the rollout limits and the time.
pub fn gate_decision(
    pod: &Pod,
    status: Option<&NodeStatus>,
    known_head: Option<u64>,
    max_lag: u64,
    catch_up_timeout: Duration,
    now: Timestamp,
) -> GateDecision {
    if !awaits_decision(pod) {
        return GateDecision::Done;
    }
    let lag = status.map(|s| {
        s.head
            .max(known_head.unwrap_or(0))
            .saturating_sub(s.position)
    });
    let age = started_at(pod)
        .and_then(|t| now.duration_since(t).try_into().ok())
        .unwrap_or(Duration::ZERO);
    if age > catch_up_timeout {
        return GateDecision::TimedOut { lag };
    }
    match (status, lag) {
        (Some(s), Some(lag)) if s.phase == NodePhase::Live && lag <= max_lag => {
            GateDecision::Pass {
                lag,
                position: s.position,
            }
        }
        (Some(s), Some(lag)) => GateDecision::Wait {
            reason: format!("phase {}, lag {lag} (maxLag {max_lag})", s.phase),
        },
        _ => GateDecision::Wait {
            reason: "status not reachable".into(),
        },
    }
}

/// Gates every chat-server pod in `pods` on its `/status` in `statuses` (by pod name; absent: it
/// did not answer).
pub async fn gate(
    client: &Client,
    recorder: &Recorder,
    cluster: &ChatCluster,
    validated: &Validated,
    pods: &[Pod],
    statuses: &BTreeMap<String, NodeStatus>,
    known_head: Option<u64>,
) -> Result<GateSummary, GateError> {
    let mut summary = GateSummary::default();
    let now = Timestamp::now();
    for pod in pods {
        let name = pod.name_any();
        let status = statuses.get(&name);
        let decision = gate_decision(
            pod,
            status,
            known_head,
            validated.spec.rollout.max_lag,
            validated.catch_up_timeout,
            now,
        );
        match decision {
            GateDecision::Done => {}
            GateDecision::Pass { lag, position } => {
                let message = format!(
                    "live at position {position}, lag {lag} (maxLag {})",
                    validated.spec.rollout.max_lag
                );
                pass(
                    client,
                    recorder,
                    cluster,
                    &validated.namespace,
                    pod,
                    &message,
                )
                .await?;
                tracing::info!(
                    pod = name,
                    lag,
                    position,
                    "pod caught up; readiness gate passed"
                );
                summary.passed.push(name);
            }
            GateDecision::Wait { reason } => {
                tracing::debug!(pod = name, reason, "pod still catching up");
                summary.waiting.push(name);
            }
            GateDecision::TimedOut { lag } => summary.timed_out.push(TimedOutPod {
                pod: name,
                lag,
                phase: status.map(|s| s.phase),
            }),
        }
    }
    Ok(summary)
}

/// Sets the pod's caught-up condition True and records a `CaughtUp` Event on the ChatCluster.
async fn pass(
    client: &Client,
    recorder: &Recorder,
    cluster: &ChatCluster,
    namespace: &str,
    pod: &Pod,
    message: &str,
) -> Result<(), GateError> {
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"status": {"conditions": [{
        "type": CAUGHT_UP_CONDITION,
        "status": "True",
        "reason": "CaughtUp",
        "message": message,
        "lastTransitionTime": Timestamp::now(),
    }]}});
    // Strategic merge: pod conditions merge by `type`, the others are kept.
    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|source| GateError::Patch {
            pod: name.clone(),
            source,
        })?;
    let event = Event {
        type_: EventType::Normal,
        reason: "CaughtUp".into(),
        note: Some(format!("pod {name} {message}")),
        action: "GatePod".into(),
        secondary: Some(pod.object_ref(&())),
    };
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing CaughtUp event");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::chat_pod;

    const CREATED: &str = "2026-01-01T00:00:00Z";

    fn at(seconds_after_creation: i64) -> Timestamp {
        CREATED.parse::<Timestamp>().expect("time")
            + k8s_openapi::jiff::SignedDuration::from_secs(seconds_after_creation)
    }

    fn server(phase: NodePhase, position: u64, head: u64) -> NodeStatus {
        NodeStatus {
            node_id: "n".into(),
            phase,
            position,
            head,
            lag: head - position,
            messages: 0,
            channels: 0,
            epoch: None,
            error: None,
            broker_error: None,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(300);

    /// The decision for a pod that has not passed yet, `secs` after its creation, given its
    /// `/status`, the known broker head and `maxLag` (catch-up timeout 300 s).
    fn decide(
        status: Option<NodeStatus>,
        known_head: Option<u64>,
        max_lag: u64,
        secs: i64,
    ) -> GateDecision {
        let pod = chat_pod("p", CREATED, &[]);
        gate_decision(
            &pod,
            status.as_ref(),
            known_head,
            max_lag,
            TIMEOUT,
            at(secs),
        )
    }

    fn pass(lag: u64, position: u64) -> GateDecision {
        GateDecision::Pass { lag, position }
    }

    fn is_wait(d: &GateDecision) -> bool {
        matches!(d, GateDecision::Wait { .. })
    }

    #[test]
    fn passes_a_live_pod_within_max_lag() {
        assert_eq!(
            decide(Some(server(NodePhase::Live, 100, 100)), None, 0, 10),
            pass(0, 100)
        );
        assert_eq!(
            decide(Some(server(NodePhase::Live, 95, 100)), None, 5, 10),
            pass(5, 95)
        );
    }

    #[test]
    fn waits_while_catching_up_or_lagging() {
        for status in [
            server(NodePhase::Bootstrapping, 0, 100),
            server(NodePhase::CatchingUp, 50, 100),
            server(NodePhase::Live, 95, 100),
        ] {
            let d = decide(Some(status.clone()), None, 2, 10);
            assert!(is_wait(&d), "{status:?} gave {d:?}");
        }
        assert!(is_wait(&decide(None, None, 0, 10)));
    }

    #[test]
    fn the_known_broker_head_counts_when_it_is_ahead() {
        let live = || Some(server(NodePhase::Live, 100, 100));
        let d = decide(live(), Some(110), 5, 10);
        assert!(is_wait(&d), "{d:?}");
        assert_eq!(decide(live(), Some(90), 0, 10), pass(0, 100));
    }

    #[test]
    fn times_out_after_catch_up_timeout_and_reports_the_lag() {
        let behind = Some(server(NodePhase::CatchingUp, 40, 100));
        assert_eq!(
            decide(behind, None, 0, 301),
            GateDecision::TimedOut { lag: Some(60) }
        );
        assert_eq!(
            decide(None, None, 0, 301),
            GateDecision::TimedOut { lag: None }
        );
        // Exactly at the timeout it is still gated.
        assert_eq!(
            decide(Some(server(NodePhase::Live, 100, 100)), None, 0, 300),
            pass(0, 100)
        );
    }

    #[test]
    fn leaves_passed_and_terminating_pods_alone() {
        let passed = chat_pod("p", CREATED, &[(CAUGHT_UP_CONDITION, "True")]);
        assert_eq!(
            gate_decision(&passed, None, None, 0, TIMEOUT, at(1000)),
            GateDecision::Done
        );
        let not_yet = chat_pod("p", CREATED, &[(CAUGHT_UP_CONDITION, "False")]);
        assert!(is_wait(&gate_decision(
            &not_yet,
            None,
            None,
            0,
            TIMEOUT,
            at(1)
        )));
        let mut terminating = chat_pod("p", CREATED, &[]);
        terminating.metadata.deletion_timestamp = terminating.metadata.creation_timestamp.clone();
        assert_eq!(
            gate_decision(&terminating, None, None, 0, TIMEOUT, at(1)),
            GateDecision::Done
        );
    }
}
