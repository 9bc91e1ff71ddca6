//! The rollout monitor: watches one component's pods and records, per pod (by UID), when it was
//! seen, when its `Ready` condition and (for chat-servers) the readiness gate
//! `chat-cluster.io/caught-up` turned True or False, and samples of its own `/status` (phase,
//! position, lag) taken through the pod proxy every `sample_every`. After every pod event it also
//! records how many pods exist, are ready, and have never been ready.
//!
//! The checks over that [`Timeline`] are pure functions: the fewest ready pods in a window, the
//! most pods in flight (missing or never ready yet), and pods that were ready while their own
//! `/status` still said they had not caught up.

use chat_wire::{NodePhase, NodeStatus, ReplicaPhase, ReplicaStatus};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, future::join_all};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::now_ms;
use crate::proxy::{Proxy, Target};

/// What to watch.
#[derive(Clone, Debug)]
pub struct MonitorSpec {
    /// Namespace of the pods.
    pub namespace: String,
    /// Label selector.
    pub selector: String,
    /// Port serving `/status`.
    pub port: u16,
    /// Interval between `/status` samples of every pod.
    pub sample_every: Duration,
    /// Extra pod condition to record (the readiness gate), if any.
    pub gate: Option<String>,
}

/// The `phase` of a `/status` answer: a chat-server node's or a log replica's, as `chat-wire`
/// defines them (a misspelt phase in a test does not compile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplePhase {
    /// A chat-server node's phase.
    Node(NodePhase),
    /// A replication-log replica's phase.
    Replica(ReplicaPhase),
}

impl SamplePhase {
    /// Whether the document says its process is live (caught up).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SamplePhase::Node(NodePhase::Live) | SamplePhase::Replica(ReplicaPhase::Live)
        )
    }
}

impl std::fmt::Display for SamplePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplePhase::Node(p) => f.write_str(p.as_str()),
            SamplePhase::Replica(p) => f.write_str(p.as_str()),
        }
    }
}

/// A chat-server node that has not caught up yet.
pub const NODE_NOT_CAUGHT_UP: [SamplePhase; 2] = [
    SamplePhase::Node(NodePhase::Bootstrapping),
    SamplePhase::Node(NodePhase::CatchingUp),
];

/// A log replica that has not started following yet.
pub const REPLICA_NOT_STARTED: [SamplePhase; 2] = [
    SamplePhase::Replica(ReplicaPhase::Starting),
    SamplePhase::Replica(ReplicaPhase::Bootstrapping),
];

/// One `/status` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Local time the request was sent.
    pub at_ms: i64,
    /// `phase`.
    pub phase: SamplePhase,
    /// `position` (chat-server) or `persisted` (log replica).
    pub position: u64,
    /// `lag`.
    pub lag: u64,
}

/// Everything recorded about one pod.
#[derive(Clone, Debug, Default)]
pub struct PodRecord {
    /// Pod name (a StatefulSet reuses names, hence the records are keyed by UID).
    pub name: String,
    /// Container image.
    pub image: String,
    /// First time the watcher saw the pod.
    pub first_seen_ms: i64,
    /// When it was seen terminating or deleted.
    pub gone_ms: Option<i64>,
    /// Transitions of `Ready` (local time, value), starting with the first observation.
    pub ready: Vec<(i64, bool)>,
    /// Transitions of the gate condition (local time, value).
    pub gate: Vec<(i64, bool)>,
    /// The gate condition's `lastTransitionTime` (server clock, seconds) when it is True.
    pub gate_server_ms: Option<i64>,
    /// `/status` samples.
    pub samples: Vec<Sample>,
    /// Whether the pod has an IP (only then is it sampled).
    has_ip: bool,
}

impl PodRecord {
    /// When `Ready` first turned True.
    pub fn first_ready_ms(&self) -> Option<i64> {
        self.ready.iter().find(|(_, v)| *v).map(|(t, _)| *t)
    }

    /// When the gate first turned True.
    pub fn first_gate_ms(&self) -> Option<i64> {
        self.gate.iter().find(|(_, v)| *v).map(|(t, _)| *t)
    }

    fn is_ready(&self) -> bool {
        self.gone_ms.is_none() && self.ready.last().is_some_and(|(_, v)| *v)
    }

    /// The last sample taken at or before `t`.
    pub fn sample_before(&self, t: i64) -> Option<&Sample> {
        self.samples.iter().rev().find(|s| s.at_ms <= t)
    }

    /// The first sample that says live.
    pub fn first_live_sample(&self) -> Option<&Sample> {
        self.samples.iter().find(|s| s.phase.is_live())
    }
}

/// Counts after one pod event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Local time.
    pub at_ms: i64,
    /// Pods that exist and are not terminating.
    pub existing: usize,
    /// Of those, Ready.
    pub ready: usize,
    /// Of those, never Ready so far.
    pub never_ready: usize,
}

/// What the monitor recorded.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// Per pod UID.
    pub pods: BTreeMap<String, PodRecord>,
    /// Counts after every change.
    pub snapshots: Vec<Snapshot>,
    /// `/status` requests that failed.
    pub failed_samples: u64,
}

impl Timeline {
    /// Records one observation of `pod` (`deleted`: it came as a delete event).
    pub fn observe(&mut self, pod: &Pod, deleted: bool, gate: Option<&str>, at_ms: i64) {
        let uid = pod.uid().unwrap_or_else(|| pod.name_any());
        let record = self.pods.entry(uid).or_insert_with(|| PodRecord {
            name: pod.name_any(),
            first_seen_ms: at_ms,
            ..PodRecord::default()
        });
        let spec_image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        record.image = spec_image;
        let status = pod.status.as_ref();
        record.has_ip = status.and_then(|s| s.pod_ip.as_ref()).is_some();
        let gone = deleted || pod.metadata.deletion_timestamp.is_some();
        if gone && record.gone_ms.is_none() {
            record.gone_ms = Some(at_ms);
        }
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
                .cloned()
        };
        let ready = !gone && condition("Ready").is_some_and(|c| c.status == "True");
        if record.ready.last().map(|(_, v)| *v) != Some(ready) {
            record.ready.push((at_ms, ready));
        }
        if let Some(gate) = gate {
            let c = condition(gate);
            let value = c.as_ref().is_some_and(|c| c.status == "True");
            if record.gate.last().map(|(_, v)| *v) != Some(value) {
                record.gate.push((at_ms, value));
            }
            record.gate_server_ms = c
                .filter(|c| c.status == "True")
                .and_then(|c| c.last_transition_time)
                .map(|t| t.0.as_millisecond());
        }
        let live: Vec<&PodRecord> = self.pods.values().filter(|p| p.gone_ms.is_none()).collect();
        let snapshot = Snapshot {
            at_ms,
            existing: live.len(),
            ready: live.iter().filter(|p| p.is_ready()).count(),
            never_ready: live.iter().filter(|p| p.first_ready_ms().is_none()).count(),
        };
        let changed = self.snapshots.last().is_none_or(|s| {
            (s.existing, s.ready, s.never_ready)
                != (snapshot.existing, snapshot.ready, snapshot.never_ready)
        });
        if changed {
            self.snapshots.push(snapshot);
        }
    }

    /// The fewest ready pods at any time in `[from_ms, to_ms]` (counting the state in effect at
    /// `from_ms`); `None` when nothing was recorded before `to_ms`.
    pub fn min_ready(&self, from_ms: i64, to_ms: i64) -> Option<usize> {
        self.in_window(from_ms, to_ms).map(|s| s.ready).min()
    }

    /// The most pods "in flight" at any time in the window: pods missing below `replicas` plus
    /// pods that exist but have never been ready.
    pub fn max_in_flight(&self, replicas: usize, from_ms: i64, to_ms: i64) -> Option<usize> {
        self.in_window(from_ms, to_ms)
            .map(|s| replicas.saturating_sub(s.existing) + s.never_ready)
            .max()
    }

    fn in_window(&self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = &Snapshot> {
        let start = self
            .snapshots
            .iter()
            .rposition(|s| s.at_ms <= from_ms)
            .unwrap_or(0);
        self.snapshots[start..]
            .iter()
            .filter(move |s| s.at_ms <= to_ms)
    }

    /// Pods that were Ready (or had the gate True) while a `/status` sample taken at least
    /// `slack_ms` later still showed one of `not_caught_up` phases.
    pub fn ready_before_caught_up(
        &self,
        not_caught_up: &[SamplePhase],
        slack_ms: i64,
    ) -> Vec<String> {
        let mut violations = Vec::new();
        for record in self.pods.values() {
            let marks = [
                ("Ready", record.first_ready_ms()),
                ("gate", record.first_gate_ms()),
            ];
            for (what, at) in marks {
                let Some(at) = at else { continue };
                let bad = record
                    .samples
                    .iter()
                    .find(|s| s.at_ms >= at + slack_ms && not_caught_up.contains(&s.phase));
                if let Some(s) = bad {
                    violations.push(format!(
                        "{}: {what} at {at} but /status at {} said {} (position {}, lag {})",
                        record.name, s.at_ms, s.phase, s.position, s.lag
                    ));
                }
            }
        }
        violations
    }

    /// Pods first seen at or after `from_ms`, in order of appearance.
    pub fn new_pods(&self, from_ms: i64) -> Vec<&PodRecord> {
        let mut pods: Vec<&PodRecord> = self
            .pods
            .values()
            .filter(|p| p.first_seen_ms >= from_ms)
            .collect();
        pods.sort_by_key(|p| p.first_seen_ms);
        pods
    }

    /// A table of every pod: when it appeared, first live sample, gate and Ready times (relative to
    /// `origin_ms`) and the last sample before it became Ready.
    pub fn report(&self, origin_ms: i64) -> String {
        let rel = |t: Option<i64>| {
            t.map_or("-".to_owned(), |t| {
                format!("{:+.1}s", (t - origin_ms) as f64 / 1000.0)
            })
        };
        let mut pods: Vec<&PodRecord> = self.pods.values().collect();
        pods.sort_by_key(|p| p.first_seen_ms);
        let mut out = String::from(
            "pod                                  image                              seen     live     gate     ready    gone     before-ready(phase/pos/lag)  samples\n",
        );
        for p in pods {
            let before = p
                .first_ready_ms()
                .and_then(|t| p.sample_before(t))
                .map_or("-".to_owned(), |s| {
                    format!("{}/{}/{}", s.phase, s.position, s.lag)
                });
            out.push_str(&format!(
                "{:<36} {:<34} {:<8} {:<8} {:<8} {:<8} {:<8} {:<28} {}\n",
                p.name,
                p.image,
                rel(Some(p.first_seen_ms)),
                rel(p.first_live_sample().map(|s| s.at_ms)),
                rel(p.first_gate_ms()),
                rel(p.first_ready_ms()),
                rel(p.gone_ms),
                before,
                p.samples.len()
            ));
        }
        out
    }
}

/// A running monitor.
pub struct PodMonitor {
    state: Arc<Mutex<Timeline>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl PodMonitor {
    /// Starts the watcher and the sampler.
    pub fn start(client: kube::Client, spec: MonitorSpec) -> PodMonitor {
        let state = Arc::new(Mutex::new(Timeline::default()));
        let (stop, stop_rx) = watch::channel(false);
        let api: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
        let watch_task = tokio::spawn(watch_pods(
            api,
            spec.clone(),
            state.clone(),
            stop_rx.clone(),
        ));
        let sample_task = tokio::spawn(sample_pods(
            Proxy::new(client),
            spec,
            state.clone(),
            stop_rx,
        ));
        PodMonitor {
            state,
            stop,
            tasks: vec![watch_task, sample_task],
        }
    }

    /// A copy of what has been recorded so far.
    pub fn timeline(&self) -> Timeline {
        self.state.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Stops both tasks and returns the timeline.
    pub async fn stop(self) -> Timeline {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.state.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn watch_pods(
    api: Api<Pod>,
    spec: MonitorSpec,
    state: Arc<Mutex<Timeline>>,
    mut stop: watch::Receiver<bool>,
) {
    let config = watcher::Config::default().labels(&spec.selector);
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    loop {
        tokio::select! {
            event = stream.next() => {
                let (pod, deleted) = match event {
                    Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => (pod, false),
                    Some(Ok(Event::Delete(pod))) => (pod, true),
                    Some(Ok(Event::Init | Event::InitDone)) => continue,
                    Some(Err(e)) => {
                        eprintln!("monitor: pod watch error: {e}");
                        continue;
                    }
                    None => return,
                };
                if let Ok(mut timeline) = state.lock() {
                    timeline.observe(&pod, deleted, spec.gate.as_deref(), now_ms());
                }
            }
            _ = stop.changed() => return,
        }
    }
}

async fn sample_pods(
    proxy: Proxy,
    spec: MonitorSpec,
    state: Arc<Mutex<Timeline>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(spec.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let targets: Vec<(String, String)> = match state.lock() {
            Ok(t) => t
                .pods
                .iter()
                .filter(|(_, p)| p.gone_ms.is_none() && p.has_ip)
                .map(|(uid, p)| (uid.clone(), p.name.clone()))
                .collect(),
            Err(_) => return,
        };
        let probes = targets.into_iter().map(|(uid, name)| {
            let proxy = proxy.clone();
            let target = Target::pod(&spec.namespace, &name, spec.port);
            async move {
                let at_ms = now_ms();
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    proxy.get::<serde_json::Value>(&target, "/status"),
                )
                .await;
                (uid, at_ms, answer.ok().and_then(Result::ok))
            }
        });
        let answers = join_all(probes).await;
        if let Ok(mut timeline) = state.lock() {
            for (uid, at_ms, answer) in answers {
                let Some(status) = answer.and_then(|v| parse_status(&v, at_ms)) else {
                    timeline.failed_samples += 1;
                    continue;
                };
                if let Some(record) = timeline.pods.get_mut(&uid) {
                    record.samples.push(status);
                }
            }
        }
    }
}

/// A sample from a chat-server or log `/status` document, decoded with the data plane's own
/// types (`chat-wire`): a document that is neither (an unknown phase, a missing counter) is
/// `None`, counted as a failed sample, never read as a default.
pub fn parse_status(status: &serde_json::Value, at_ms: i64) -> Option<Sample> {
    if let Ok(node) = serde_json::from_value::<NodeStatus>(status.clone()) {
        return Some(Sample {
            at_ms,
            phase: SamplePhase::Node(node.phase),
            position: node.position,
            lag: node.lag,
        });
    }
    let replica = serde_json::from_value::<ReplicaStatus>(status.clone()).ok()?;
    Some(Sample {
        at_ms,
        phase: SamplePhase::Replica(replica.phase),
        position: replica.persisted,
        lag: replica.lag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATE: &str = "chat-cluster.io/caught-up";

    fn pod(name: &str, uid: &str, ready: bool, gate: bool, terminating: bool) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "img:1"}]},
            "status": {"podIP": "10.0.0.1", "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"}},
                {"type": GATE, "status": if gate {"True"} else {"False"}, "lastTransitionTime": "2025-01-01T00:00:00Z"}
            ]}
        });
        if terminating {
            v["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z".into();
        }
        serde_json::from_value(v).unwrap()
    }

    fn sample(at_ms: i64, phase: NodePhase, lag: u64) -> Sample {
        Sample {
            at_ms,
            phase: SamplePhase::Node(phase),
            position: 100 - lag,
            lag,
        }
    }

    /// A surge rollout of one pod: new pod ready, then old pod terminating.
    #[test]
    fn counts_ready_and_in_flight_through_a_rollout() {
        let mut t = Timeline::default();
        t.observe(&pod("old", "u1", true, true, false), false, Some(GATE), 0);
        t.observe(
            &pod("new", "u2", false, false, false),
            false,
            Some(GATE),
            10,
        );
        t.observe(&pod("new", "u2", false, true, false), false, Some(GATE), 20);
        t.observe(&pod("new", "u2", true, true, false), false, Some(GATE), 25);
        t.observe(&pod("old", "u1", false, true, true), false, Some(GATE), 30);
        t.observe(&pod("old", "u1", false, true, true), true, Some(GATE), 40);
        assert_eq!(t.min_ready(5, 100), Some(1));
        assert_eq!(t.max_in_flight(1, 0, 100), Some(1));
        assert_eq!(t.pods["u2"].first_ready_ms(), Some(25));
        assert_eq!(t.pods["u2"].first_gate_ms(), Some(20));
        assert_eq!(t.pods["u1"].gone_ms, Some(30));
        assert_eq!(t.snapshots.last().unwrap().existing, 1);
        assert_eq!(t.new_pods(5).len(), 1);
    }

    /// Deleting before the replacement is ready drops the ready count.
    #[test]
    fn sees_a_dip_in_ready_pods() {
        let mut t = Timeline::default();
        t.observe(&pod("a", "u1", true, true, false), false, Some(GATE), 0);
        t.observe(&pod("b", "u2", true, true, false), false, Some(GATE), 0);
        t.observe(&pod("a", "u1", true, true, true), false, Some(GATE), 10);
        t.observe(&pod("c", "u3", false, false, false), false, Some(GATE), 11);
        t.observe(&pod("c", "u3", true, true, false), false, Some(GATE), 50);
        assert_eq!(t.min_ready(0, 100), Some(1));
        assert_eq!(t.min_ready(60, 100), Some(2));
        assert_eq!(t.max_in_flight(2, 0, 100), Some(1));
    }

    #[test]
    fn flags_ready_before_caught_up() {
        let mut t = Timeline::default();
        t.observe(&pod("p", "u1", false, false, false), false, Some(GATE), 0);
        t.observe(&pod("p", "u1", true, true, false), false, Some(GATE), 1000);
        let record = t.pods.get_mut("u1").unwrap();
        record.samples = vec![
            sample(500, NodePhase::CatchingUp, 40),
            sample(900, NodePhase::Live, 0),
            sample(1600, NodePhase::Live, 1),
        ];
        assert!(
            t.ready_before_caught_up(&NODE_NOT_CAUGHT_UP, 500)
                .is_empty()
        );
        t.pods
            .get_mut("u1")
            .unwrap()
            .samples
            .push(sample(2000, NodePhase::CatchingUp, 7));
        let v = t.ready_before_caught_up(&NODE_NOT_CAUGHT_UP, 500);
        assert_eq!(v.len(), 2, "{v:?}");
        let report = t.report(0);
        assert!(report.contains("live/100/0"), "{report}");
    }

    #[test]
    fn parses_both_status_documents() {
        let chat = serde_json::json!({"node_id": "n", "phase": "live", "position": 7, "head": 9, "lag": 2, "messages": 7, "channels": 1});
        assert_eq!(
            parse_status(&chat, 5),
            Some(Sample {
                at_ms: 5,
                phase: SamplePhase::Node(NodePhase::Live),
                position: 7,
                lag: 2
            })
        );
        let log = serde_json::json!({"replica_id": "r", "phase": "catching_up", "persisted": 3, "head": 4, "lag": 1, "messages": 3});
        assert_eq!(parse_status(&log, 6).unwrap().position, 3);
        assert_eq!(parse_status(&serde_json::json!({}), 0), None);
        // An unknown phase or a missing counter is not a sample (never a default).
        let mut unknown = chat.clone();
        unknown["phase"] = "resting".into();
        assert_eq!(parse_status(&unknown, 0), None);
        let mut partial = log.clone();
        partial.as_object_mut().map(|o| o.remove("persisted"));
        assert_eq!(parse_status(&partial, 0), None);
    }
}
