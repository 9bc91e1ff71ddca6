//! Monitoring step, after apply: the PodMonitor `{name}` that `spec.monitoring.enablePodMonitor`
//! asks for (built by [`build::pod_monitor`](super::build::pod_monitor)).
//!
//! The PodMonitor is a foreign kind (the Prometheus Operator's CRD), so it is not one of the
//! [`Children`](super::children::Children): a watch on it would fail wherever that CRD is absent.
//! Instead, each reconcile that wants one asks discovery whether the API server serves
//! `monitoring.coreos.com/v1` `podmonitors`, reads the PodMonitor of that name, and
//! server-side applies it unless it already holds every built field or belongs to something else
//! (never adopted: `NameConflict`). When the spec stops asking for it (the previous status still
//! has the `PodMonitorMissing` condition), the one this ChatCluster controls is deleted. The
//! ChatCluster's deletion removes it through its controller owner reference.
//!
//! Nothing watches PodMonitors: one deleted by hand, or CRDs installed after the ChatCluster, are
//! noticed by the next periodic reconcile (at most a minute; `REQUEUE_STEADY`).
//!
//! [`decide`] is the pure decision; [`reconcile`] does the reads and the one write around it. No
//! failure here fails the reconcile: it becomes the [`Outcome`] the status step turns into the
//! `PodMonitorMissing` condition, so the data plane's rollout and status go on without
//! Prometheus.

use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::apply::{Change, FIELD_MANAGER, Verb, contains, json_hash};
use super::build::{Parent, pod_monitor};
use super::validate::Validated;
use crate::crd::pod_monitor::{POD_MONITOR_GROUP_VERSION, POD_MONITOR_PLURAL, PodMonitor};
use crate::names::ANNOTATION_APPLIED_HASH;

/// The kind, for Events and messages.
const KIND: &str = "PodMonitor";

/// Why a read or write of the PodMonitor failed; its text becomes the condition's message.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    /// Discovery of `monitoring.coreos.com/v1` failed (other than "not served").
    #[error("discovering {POD_MONITOR_GROUP_VERSION}: {0}")]
    Discover(#[source] kube::Error),
    /// Reading the PodMonitor failed.
    #[error("reading PodMonitor {name}: {source}")]
    Read {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Server-side apply of the PodMonitor failed.
    #[error("applying PodMonitor {name}: {source}")]
    Apply {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Deleting the PodMonitor failed.
    #[error("deleting PodMonitor {name}: {source}")]
    Delete {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The built PodMonitor or the live one did not serialize (a bug).
    #[error("serializing PodMonitor: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl MonitoringError {
    /// The error for a condition message and an Event: the API server's own message for an API
    /// error (kube's `Display` appends the whole status structure), the `Display` otherwise.
    pub fn in_words(&self) -> String {
        let api = |e: &kube::Error| match e {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        match self {
            MonitoringError::Discover(e) => {
                format!("discovering {POD_MONITOR_GROUP_VERSION}: {}", api(e))
            }
            MonitoringError::Read { name, source } => {
                format!("reading PodMonitor {name}: {}", api(source))
            }
            MonitoringError::Apply { name, source } => {
                format!("applying PodMonitor {name}: {}", api(source))
            }
            MonitoringError::Delete { name, source } => {
                format!("deleting PodMonitor {name}: {}", api(source))
            }
            MonitoringError::Serialize(_) => self.to_string(),
        }
    }
}

/// Where the PodMonitor stands after this step; the status step's `PodMonitorMissing`
/// condition says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The spec does not ask for a PodMonitor and none of ours is left: no condition.
    Disabled,
    /// Asked for, but the API server does not serve `monitoring.coreos.com/v1` PodMonitors.
    PrometheusOperatorAbsent,
    /// A PodMonitor of that name exists that this ChatCluster does not control; left alone.
    NameConflict {
        /// Its name.
        name: String,
        /// Its controller as `Kind/name`, if it has one.
        controller: Option<String>,
    },
    /// Asked for, but discovering, reading or applying it failed.
    ApplyFailed {
        /// Its name.
        name: String,
        /// The error.
        error: String,
    },
    /// The PodMonitor exists as built.
    Created {
        /// Its name.
        name: String,
    },
    /// Not asked for anymore, but removing ours failed; the next reconcile tries again.
    DeleteFailed {
        /// Its name.
        name: String,
        /// The error.
        error: String,
    },
}

/// The PodMonitor of the ChatCluster's name as read from the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// Its controller owner reference is this ChatCluster.
    pub controlled: bool,
    /// Its controller as `Kind/name`, if any.
    pub controller: Option<String>,
    /// It already holds every field of the built PodMonitor (with its applied-hash stamp).
    pub current: bool,
}

/// What discovery and the read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The API server does not serve `monitoring.coreos.com/v1` `podmonitors`.
    NotServed,
    /// It does; the PodMonitor of the ChatCluster's name, if one exists.
    Served(Option<Live>),
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No write: the outcome is known.
    Nothing(Outcome),
    /// Server-side apply the built PodMonitor (`create`: none exists yet).
    Apply {
        /// None exists yet.
        create: bool,
    },
    /// Delete ours.
    Delete,
}

/// The decision for the PodMonitor `name`: `wanted` (the spec asks for it) given what `found`
/// holds. A PodMonitor this ChatCluster does not control is never written or deleted.
pub fn decide(wanted: bool, name: &str, found: &Found) -> Action {
    match (wanted, found) {
        (true, Found::NotServed) => Action::Nothing(Outcome::PrometheusOperatorAbsent),
        (true, Found::Served(None)) => Action::Apply { create: true },
        (true, Found::Served(Some(live))) if !live.controlled => {
            Action::Nothing(Outcome::NameConflict {
                name: name.to_owned(),
                controller: live.controller.clone(),
            })
        }
        (true, Found::Served(Some(live))) if live.current => Action::Nothing(Outcome::Created {
            name: name.to_owned(),
        }),
        (true, Found::Served(Some(_))) => Action::Apply { create: false },
        (false, Found::Served(Some(live))) if live.controlled => Action::Delete,
        (false, _) => Action::Nothing(Outcome::Disabled),
    }
}

/// The step's result: the outcome for the status and the write it made, if any (for the
/// `Created`/`Updated`/`Deleted` Event and the child-writes metric).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitored {
    /// For the `PodMonitorMissing` condition.
    pub outcome: Outcome,
    /// The write, if one was made.
    pub change: Option<Change>,
}

impl Monitored {
    fn outcome(outcome: Outcome) -> Monitored {
        Monitored {
            outcome,
            change: None,
        }
    }
}

/// Creates, updates or deletes the PodMonitor of `cluster`. `was_enabled`: the previous status
/// has the `PodMonitorMissing` condition, so a PodMonitor of ours may exist although the spec no
/// longer asks for one. Makes no request when neither holds.
pub async fn reconcile(client: &Client, cluster: &Validated, was_enabled: bool) -> Monitored {
    let name = cluster.name.clone();
    let desired = cluster
        .spec
        .pod_monitor()
        .map(|m| stamp(pod_monitor::pod_monitor(&Parent::of(cluster), m)));
    if desired.is_none() && !was_enabled {
        return Monitored::outcome(Outcome::Disabled);
    }
    let wanted = desired.is_some();
    let failed = |error: MonitoringError| {
        let error = error.in_words();
        tracing::warn!(podmonitor = %name, %error, "PodMonitor");
        if wanted {
            Outcome::ApplyFailed {
                name: name.clone(),
                error,
            }
        } else {
            Outcome::DeleteFailed {
                name: name.clone(),
                error,
            }
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &cluster.namespace,
        &ApiResource::erase::<PodMonitor>(&()),
    );
    let found = match observe(client, &api, cluster, desired.as_ref()).await {
        Ok(found) => found,
        Err(e) => return Monitored::outcome(failed(e)),
    };
    match (decide(wanted, &name, &found), desired) {
        (Action::Nothing(outcome), _) => Monitored::outcome(outcome),
        (Action::Apply { create }, Some(desired)) => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(&name, &params, &Patch::Apply(&desired)).await {
                Ok(_) => {
                    tracing::info!(kind = KIND, name, created = create, "applied PodMonitor");
                    let verb = if create { Verb::Created } else { Verb::Updated };
                    Monitored {
                        outcome: Outcome::Created { name: name.clone() },
                        change: Some(change(verb, &name)),
                    }
                }
                Err(source) => Monitored::outcome(failed(MonitoringError::Apply {
                    name: name.clone(),
                    source,
                })),
            }
        }
        (Action::Apply { .. }, None) => Monitored::outcome(Outcome::Disabled),
        (Action::Delete, _) => match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(
                    kind = KIND,
                    name,
                    "deleted PodMonitor the spec no longer asks for"
                );
                Monitored {
                    outcome: Outcome::Disabled,
                    change: Some(change(Verb::Deleted, &name)),
                }
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Monitored::outcome(Outcome::Disabled)
            }
            Err(source) => Monitored::outcome(failed(MonitoringError::Delete {
                name: name.clone(),
                source,
            })),
        },
    }
}

/// Discovery, then the PodMonitor of the ChatCluster's name (untyped: a foreign one may hold
/// any fields), compared with `desired`.
async fn observe(
    client: &Client,
    api: &Api<DynamicObject>,
    cluster: &Validated,
    desired: Option<&PodMonitor>,
) -> Result<Found, MonitoringError> {
    if !served(client).await? {
        return Ok(Found::NotServed);
    }
    let name = &cluster.name;
    let Some(live) = api
        .get_opt(name)
        .await
        .map_err(|source| MonitoringError::Read {
            name: name.clone(),
            source,
        })?
    else {
        return Ok(Found::Served(None));
    };
    let controller = live
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true));
    let current = match desired {
        Some(desired) => contains(
            &serde_json::to_value(&live)?,
            &serde_json::to_value(desired)?,
        ),
        None => false,
    };
    Ok(Found::Served(Some(Live {
        controlled: controller.is_some_and(|r| r.uid == cluster.owner_ref.uid),
        controller: controller.map(|r| format!("{}/{}", r.kind, r.name)),
        current,
    })))
}

/// Whether the API server serves `monitoring.coreos.com/v1` `podmonitors` (404: the group
/// version is not served at all).
async fn served(client: &Client) -> Result<bool, MonitoringError> {
    match client
        .list_api_group_resources(POD_MONITOR_GROUP_VERSION)
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == POD_MONITOR_PLURAL)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(MonitoringError::Discover(e)),
    }
}

/// `desired` with the annotation [`ANNOTATION_APPLIED_HASH`] set to the hash of the object as
/// built, like every child's (`apply::stamp`): a settings change that only drops a field (an
/// interval, a label) still differs from the live object.
fn stamp(mut desired: PodMonitor) -> PodMonitor {
    let hash = json_hash(&desired);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_APPLIED_HASH.to_owned(), hash);
    desired
}

/// The write, for the Event and the metric.
fn change(verb: Verb, name: &str) -> Change {
    Change {
        verb,
        kind: KIND,
        api_version: POD_MONITOR_GROUP_VERSION.to_owned(),
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    /// A refused apply reads as the API server's sentence, not kube's dump of the status.
    #[test]
    fn api_errors_read_in_words() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 422, "reason": "Invalid",
            "message": "PodMonitor.monitoring.coreos.com \"x\" is invalid: metadata.labels: Invalid value: \"bad key!\"",
        }))
        .expect("a Status");
        let e = MonitoringError::Apply {
            name: "x".into(),
            source: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(
            e.in_words(),
            "applying PodMonitor x: PodMonitor.monitoring.coreos.com \"x\" is invalid: \
             metadata.labels: Invalid value: \"bad key!\""
        );
        assert!(e.to_string().len() > e.in_words().len());
    }

    use super::*;

    fn live(controlled: bool, current: bool) -> Found {
        Found::Served(Some(Live {
            controlled,
            controller: (!controlled).then(|| "ChatCluster/other".to_owned()),
            current,
        }))
    }

    /// Every (wanted, found) pair: not served is `PrometheusOperatorAbsent`, a foreign PodMonitor
    /// is never written or deleted, ours is applied only when it differs and deleted only when
    /// no longer wanted.
    #[test]
    fn the_decision_for_each_case() {
        let created = Action::Nothing(Outcome::Created {
            name: "demo".into(),
        });
        let conflict = Action::Nothing(Outcome::NameConflict {
            name: "demo".into(),
            controller: Some("ChatCluster/other".into()),
        });
        let disabled = Action::Nothing(Outcome::Disabled);
        // (case, wanted, found, action)
        let table = [
            (
                "wanted, CRD absent",
                true,
                Found::NotServed,
                Action::Nothing(Outcome::PrometheusOperatorAbsent),
            ),
            (
                "wanted, none yet",
                true,
                Found::Served(None),
                Action::Apply { create: true },
            ),
            ("wanted, ours, current", true, live(true, true), created),
            (
                "wanted, ours, differs",
                true,
                live(true, false),
                Action::Apply { create: false },
            ),
            ("wanted, foreign", true, live(false, true), conflict.clone()),
            (
                "wanted, foreign, differs",
                true,
                live(false, false),
                conflict,
            ),
            (
                "not wanted, CRD absent",
                false,
                Found::NotServed,
                disabled.clone(),
            ),
            (
                "not wanted, none",
                false,
                Found::Served(None),
                disabled.clone(),
            ),
            ("not wanted, ours", false, live(true, true), Action::Delete),
            ("not wanted, foreign", false, live(false, false), disabled),
        ];
        for (case, wanted, found, want) in table {
            assert_eq!(decide(wanted, "demo", &found), want, "{case}");
        }
    }

    /// The stamp is the hash of the object without it, so equal settings stamp equal.
    #[test]
    fn the_stamp_follows_the_settings() {
        use crate::crd::{ChatCluster, MonitoringSpec};
        let cluster = super::super::validate::validate(&ChatCluster::test()).expect("valid");
        let stamped = |interval: Option<&str>| {
            let m = MonitoringSpec {
                enable_pod_monitor: true,
                pod_monitor_interval: interval.map(str::to_owned),
                ..MonitoringSpec::default()
            };
            stamp(pod_monitor::pod_monitor(&Parent::of(&cluster), &m))
                .annotations()
                .get(ANNOTATION_APPLIED_HASH)
                .cloned()
        };
        assert!(stamped(None).is_some());
        assert_eq!(stamped(None), stamped(None));
        assert_ne!(stamped(None), stamped(Some("30s")));
    }
}
