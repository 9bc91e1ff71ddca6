//! Pod health: why a child pod is not progressing, decided from the pod object and its claims
//! alone — pure, table-tested. The dereference step lists the pods and claims; the status step
//! turns the [`PodProblem`]s into a `Degraded=True` condition naming the pod and the cause.
//!
//! The causes are the kubelet's and the scheduler's own words (container `state.waiting.reason`,
//! `lastState.terminated.reason`, the `PodScheduled` condition), as `kubectl describe pod` shows
//! them: an image that cannot be pulled (`ImagePullBackOff`, `ErrImagePull`, `ErrImageNeverPull`,
//! `InvalidImageName`), a container that cannot start or keeps crashing (`CrashLoopBackOff`,
//! `CreateContainerConfigError`, `CreateContainerError`, `RunContainerError`), a container killed
//! for memory (`OOMKilled`), a pod that cannot be placed (`Unschedulable`, or `ClaimPending` when
//! one of its claims is not bound) and a pod that failed for good (`PodFailed`, e.g. evicted).
//! A pod that is merely starting (Pending without a scheduling verdict, `ContainerCreating`) is
//! progressing, not a problem; so is a `CreateContainerConfigError` whose message is the
//! kubelet's own cache not being synced yet (`failed to sync secret cache: …`, from its
//! watch-based Secret/ConfigMap manager), which the kubelet retries by itself within seconds of
//! a pod's start — only a missing Secret, ConfigMap or key is a configuration error.

use k8s_openapi::api::core::v1::{ContainerStatus, ObjectReference, PersistentVolumeClaim, Pod};
use kube::{Resource, ResourceExt};

use crate::names::{Component, LABEL_COMPONENT};

/// Container waiting reasons that mean the container will not start without a change.
pub const STUCK_WAITING_REASONS: [&str; 8] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why one child pod is not progressing.
#[derive(Clone, Debug, PartialEq)]
pub struct PodProblem {
    /// The pod's component (from its `app.kubernetes.io/component` label); None when unlabelled.
    pub component: Option<&'static str>,
    /// Pod name.
    pub pod: String,
    /// The cause as a condition reason: the kubelet's or scheduler's reason (`ImagePullBackOff`,
    /// `OOMKilled`, `Unschedulable`, …), `ClaimPending` or `PodFailed`.
    pub reason: String,
    /// Human words: the container or claim, and the kubelet's or scheduler's message.
    pub message: String,
    /// Reference to the pod, for the Event's related object.
    pub reference: ObjectReference,
}

impl PodProblem {
    /// `pod demo-broker-0 (broker): ImagePullBackOff: container redis-server: …`.
    pub fn describe(&self) -> String {
        let component = self
            .component
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        format!(
            "pod {}{component}: {}: {}",
            self.pod, self.reason, self.message
        )
    }
}

fn component_of(pod: &Pod) -> Option<&'static str> {
    let label = pod.labels().get(LABEL_COMPONENT)?;
    [
        Component::Broker,
        Component::ReplicationLog,
        Component::ChatServer,
    ]
    .into_iter()
    .map(Component::label)
    .find(|c| c == label)
}

/// The kubelet's message for a Secret or ConfigMap it has not watched long enough to read yet
/// (`pkg/kubelet/util/manager`: `failed to sync %s cache: %v`), a retried, transient cause.
fn kubelet_cache_not_synced(reason: &str, message: Option<&str>) -> bool {
    reason == "CreateContainerConfigError"
        && message.is_some_and(|m| m.starts_with("failed to sync ") && m.contains(" cache"))
}

/// The problem of one container, if it has one: a stuck waiting reason (a crash loop whose last
/// run was killed for memory reads `OOMKilled`), or a current OOM kill.
fn container_problem(c: &ContainerStatus) -> Option<(String, String)> {
    let state = c.state.as_ref();
    let last_terminated = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref())
        && let Some(reason) = waiting.reason.as_deref()
        && STUCK_WAITING_REASONS.contains(&reason)
        && !kubelet_cache_not_synced(reason, waiting.message.as_deref())
    {
        if reason == "CrashLoopBackOff"
            && last_terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled")
        {
            return Some((
                "OOMKilled".into(),
                format!(
                    "container {} was killed for exceeding its memory limit and is in CrashLoopBackOff ({} restarts)",
                    c.name, c.restart_count
                ),
            ));
        }
        let detail = waiting
            .message
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let restarts = if reason == "CrashLoopBackOff" {
            let exit = last_terminated
                .map(|t| format!(", last exit code {}", t.exit_code))
                .unwrap_or_default();
            format!(" ({} restarts{exit})", c.restart_count)
        } else {
            String::new()
        };
        return Some((
            reason.to_owned(),
            format!("container {} image {}{restarts}{detail}", c.name, c.image),
        ));
    }
    if state
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.reason.as_deref())
        == Some("OOMKilled")
    {
        return Some((
            "OOMKilled".into(),
            format!(
                "container {} was killed for exceeding its memory limit",
                c.name
            ),
        ));
    }
    None
}

/// Names of the claims `pod` mounts.
fn claim_names(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// The scheduler's verdict when it could not place `pod`: `(reason, message)` of a False
/// `PodScheduled` condition.
fn unschedulable(pod: &Pod) -> Option<(String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Why `pod` is not progressing, if it is stuck; `claims` are the claims of the ChatCluster (a
/// pod that cannot be scheduled because one of its claims is Pending reads `ClaimPending`).
/// Terminating pods are never a problem (they are going away).
pub fn pod_problem(pod: &Pod, claims: &[PersistentVolumeClaim]) -> Option<PodProblem> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let problem = |reason: String, message: String| PodProblem {
        component: component_of(pod),
        pod: pod.name_any(),
        reason,
        message,
        reference: pod.object_ref(&()),
    };
    if status.phase.as_deref() == Some("Failed") {
        let reason = status.reason.clone().unwrap_or_else(|| "PodFailed".into());
        let message = status
            .message
            .clone()
            .unwrap_or_else(|| "pod failed".into());
        return Some(problem(reason, message));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    if let Some((reason, message)) = containers.filter_map(container_problem).next() {
        return Some(problem(reason, message));
    }
    let (reason, scheduler) = unschedulable(pod)?;
    let pending_claim = claim_names(pod).find(|name| {
        claims.iter().any(|c| {
            c.metadata.name.as_deref() == Some(*name)
                && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
        })
    });
    Some(match pending_claim {
        Some(claim) => problem(
            "ClaimPending".into(),
            format!("claim {claim} is Pending, so the pod cannot be scheduled: {scheduler}"),
        ),
        None => problem(reason, scheduler),
    })
}

/// `pod` whose `/status` the operator may not read: the API server refused the pod-proxy probe
/// (`api_message`, 403 naming `pods/proxy`), so the readiness gate and the positions can never
/// be decided and the ChatCluster would sit `Pending` with no reason. Reason
/// `StatusProbeForbidden`; the message says how to grant it.
pub fn probe_forbidden(pod: &Pod, api_message: &str) -> PodProblem {
    let namespace = pod.namespace().unwrap_or_default();
    PodProblem {
        component: component_of(pod),
        pod: pod.name_any(),
        reason: "StatusProbeForbidden".into(),
        message: format!(
            "the operator may not read the pod's /status through the API server in namespace \
             {namespace}: bind ClusterRole chat-cluster-operator-data-plane to its ServiceAccount \
             there (Helm value rbac.dataPlaneNamespaces, or watchNamespaces; docs/install.md, \
             Permissions): {api_message}"
        ),
        reference: pod.object_ref(&()),
    }
}

/// Sorts `problems` as [`problems`] returns them.
pub fn sort(problems: &mut [PodProblem]) {
    let rank = |p: &PodProblem| match p.component {
        Some("broker") => 0,
        Some("replication-log") => 1,
        Some("chat-server") => 2,
        _ => 3,
    };
    problems.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.pod.cmp(&b.pod)));
}

/// The problems of `pods`, in component order (broker, replication-log, chat-server) then by
/// pod name, so the first one — the one the Degraded condition's reason names — is stable.
pub fn problems(pods: &[Pod], claims: &[PersistentVolumeClaim]) -> Vec<PodProblem> {
    let mut found: Vec<PodProblem> = pods.iter().filter_map(|p| pod_problem(p, claims)).collect();
    sort(&mut found);
    found
}

/// The first problem of `component`'s pods, described, for the Available condition's message.
pub fn first_of(problems: &[PodProblem], component: Component) -> Option<&PodProblem> {
    problems
        .iter()
        .find(|p| p.component == Some(component.label()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(component: &str, status: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("demo-{component}-0"), "namespace": "default",
                         "uid": "u-1",
                         "labels": {"app.kubernetes.io/component": component}},
            "spec": {"containers": [{"name": "c", "image": "img:1"}],
                     "volumes": [{"name": "data", "persistentVolumeClaim":
                                  {"claimName": format!("data-demo-{component}-0")}}]},
            "status": status,
        }))
        .expect("pod")
    }

    fn waiting(reason: &str, message: &str) -> Value {
        json!({"phase": "Pending", "containerStatuses": [{
            "name": "c", "image": "img:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]})
    }

    fn claim(name: &str, phase: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"phase": phase}}))
            .expect("claim")
    }

    /// (case, pod status, claims, expected (reason, message fragment)).
    type Case = (
        &'static str,
        Value,
        Vec<PersistentVolumeClaim>,
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn pod_problems_name_the_cause() {
        let unschedulable = json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory."}]});
        let crash = |last: &str| {
            json!({"phase": "Running", "containerStatuses": [{
                "name": "c", "image": "img:1", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"reason": last, "exitCode": 137}}}]})
        };
        let cases: Vec<Case> = vec![
            (
                "image pull back-off",
                waiting("ImagePullBackOff", "Back-off pulling image \"img:1\""),
                vec![],
                Some(("ImagePullBackOff", "image img:1: Back-off pulling image")),
            ),
            (
                "never pull",
                waiting(
                    "ErrImageNeverPull",
                    "image not present with pull policy of Never",
                ),
                vec![],
                Some(("ErrImageNeverPull", "pull policy of Never")),
            ),
            (
                "pull error",
                waiting("ErrImagePull", "not found"),
                vec![],
                Some(("ErrImagePull", "not found")),
            ),
            (
                "crash loop",
                crash("Error"),
                vec![],
                Some(("CrashLoopBackOff", "(4 restarts, last exit code 137)")),
            ),
            (
                "crash loop of OOM kills",
                crash("OOMKilled"),
                vec![],
                Some(("OOMKilled", "exceeding its memory limit")),
            ),
            (
                "unschedulable",
                unschedulable.clone(),
                vec![claim("data-demo-broker-0", "Bound")],
                Some(("Unschedulable", "Insufficient memory")),
            ),
            (
                "unschedulable for a pending claim",
                unschedulable,
                vec![claim("data-demo-broker-0", "Pending")],
                Some(("ClaimPending", "claim data-demo-broker-0 is Pending")),
            ),
            (
                "evicted",
                json!({"phase": "Failed", "reason": "Evicted", "message": "low on disk"}),
                vec![],
                Some(("Evicted", "low on disk")),
            ),
            (
                "missing secret",
                waiting(
                    "CreateContainerConfigError",
                    "secret \"demo-broker\" not found",
                ),
                vec![],
                Some((
                    "CreateContainerConfigError",
                    "secret \"demo-broker\" not found",
                )),
            ),
            (
                "the kubelet's secret cache not synced yet (retried by the kubelet)",
                waiting(
                    "CreateContainerConfigError",
                    "failed to sync secret cache: timed out waiting for the condition",
                ),
                vec![],
                None,
            ),
            (
                "the kubelet's configmap cache not synced yet",
                waiting(
                    "CreateContainerConfigError",
                    "failed to sync configmap cache: timed out waiting for the condition",
                ),
                vec![],
                None,
            ),
            (
                "container creating",
                waiting("ContainerCreating", ""),
                vec![],
                None,
            ),
            (
                "pending, not scheduled yet",
                json!({"phase": "Pending"}),
                vec![claim("data-demo-broker-0", "Pending")],
                None,
            ),
            (
                "running",
                json!({"phase": "Running", "containerStatuses": [{
                    "name": "c", "image": "img:1", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}]}),
                vec![],
                None,
            ),
        ];
        for (case, status, claims, want) in cases {
            let got = pod_problem(&pod("broker", status), &claims);
            match (want, got) {
                (None, None) => {}
                (Some((reason, fragment)), Some(p)) => {
                    assert_eq!(p.reason, reason, "{case}");
                    assert!(p.message.contains(fragment), "{case}: {}", p.message);
                    assert_eq!(p.pod, "demo-broker-0", "{case}");
                    assert_eq!(p.component, Some("broker"), "{case}");
                    assert_eq!(p.reference.uid.as_deref(), Some("u-1"), "{case}");
                    assert!(
                        p.describe()
                            .starts_with(&format!("pod demo-broker-0 (broker): {reason}: ")),
                        "{case}: {}",
                        p.describe()
                    );
                }
                (want, got) => panic!("{case}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn terminating_pods_are_not_problems() {
        let mut p = pod("broker", waiting("ImagePullBackOff", ""));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(pod_problem(&p, &[]), None);
    }

    #[test]
    fn problems_are_ordered_broker_log_chat_then_by_name() {
        let pods = [
            pod("chat-server", waiting("ErrImagePull", "")),
            pod("replication-log", waiting("CrashLoopBackOff", "")),
            pod("broker", waiting("ImagePullBackOff", "")),
        ];
        let found = problems(&pods, &[]);
        let order: Vec<_> = found.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(
            order,
            [
                "demo-broker-0",
                "demo-replication-log-0",
                "demo-chat-server-0"
            ]
        );
        assert_eq!(
            first_of(&found, Component::ReplicationLog).map(|p| p.reason.as_str()),
            Some("CrashLoopBackOff")
        );
    }
}
