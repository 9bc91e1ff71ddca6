//! The PodMonitor `{name}` (Prometheus Operator, `monitoring.coreos.com/v1`) that
//! `spec.monitoring.enablePodMonitor` asks for. Not one of the [`Children`](super::Children): it
//! is written by `reconcile::monitoring` only where the API server serves PodMonitors, and
//! nothing watches it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use super::Parent;
use crate::crd::MonitoringSpec;
use crate::crd::pod_monitor::{PodMetricsEndpoint, PodMonitor, PodMonitorSpec};
use crate::names::{
    APP_NAME, Component, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY,
};

/// The components whose pods serve `/metrics` on their `http` port (the broker has no exporter).
const SCRAPED: [Component; 2] = [Component::ChatServer, Component::ReplicationLog];

/// The container port scraped: chat-server's and replication-log's port are both named `http`.
pub const METRICS_PORT_NAME: &str = "http";
/// The path of the data plane's metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The PodMonitor named after the ChatCluster: the operator's labels over
/// `monitoring.podMonitorLabels`, controlled by the ChatCluster (so its deletion removes it),
/// selecting this instance's chat-server and replication-log pods, scraping `http` `/metrics`
/// every `podMonitorInterval` (when set), and copying the instance and component labels onto
/// every series (the dashboard and the alert rules group by them).
pub fn pod_monitor(parent: &Parent<'_>, monitoring: &MonitoringSpec) -> PodMonitor {
    let name = &parent.cluster.name;
    let mut labels = monitoring.pod_monitor_labels.clone();
    labels.extend(BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ]));
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([
            (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
            (LABEL_INSTANCE.to_owned(), name.clone()),
        ])),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: LABEL_COMPONENT.to_owned(),
            operator: "In".to_owned(),
            values: Some(SCRAPED.iter().map(|c| c.label().to_owned()).collect()),
        }]),
    };
    let mut object = PodMonitor::new(
        name,
        PodMonitorSpec {
            selector,
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: Some(METRICS_PORT_NAME.to_owned()),
                path: Some(METRICS_PATH.to_owned()),
                interval: monitoring.pod_monitor_interval.clone(),
            }],
            pod_target_labels: vec![LABEL_INSTANCE.to_owned(), LABEL_COMPONENT.to_owned()],
        },
    );
    object.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(parent.cluster.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![parent.cluster.owner_ref.clone()]),
        ..ObjectMeta::default()
    };
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;
    use crate::reconcile::validate::validate;
    use serde_json::json;

    fn built(monitoring: MonitoringSpec) -> serde_json::Value {
        let cluster = validate(&ChatCluster::test()).expect("valid");
        json!(pod_monitor(&Parent::of(&cluster), &monitoring))
    }

    /// The whole object for the defaults (a golden), then what each setting changes.
    #[test]
    fn pod_monitor_selects_the_scraped_pods_of_the_instance() {
        let enabled = MonitoringSpec {
            enable_pod_monitor: true,
            ..MonitoringSpec::default()
        };
        let owner = validate(&ChatCluster::test()).expect("valid").owner_ref;
        assert_eq!(
            built(enabled.clone()),
            json!({
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PodMonitor",
                "metadata": {
                    "name": "demo",
                    "namespace": "default",
                    "labels": {
                        "app.kubernetes.io/instance": "demo",
                        "app.kubernetes.io/managed-by": "chat-cluster-operator",
                        "app.kubernetes.io/name": "chat-cluster",
                    },
                    "ownerReferences": [owner],
                },
                "spec": {
                    "selector": {
                        "matchLabels": {
                            "app.kubernetes.io/instance": "demo",
                            "app.kubernetes.io/name": "chat-cluster",
                        },
                        "matchExpressions": [{
                            "key": "app.kubernetes.io/component",
                            "operator": "In",
                            "values": ["chat-server", "replication-log"],
                        }],
                    },
                    "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}],
                    "podTargetLabels": ["app.kubernetes.io/instance", "app.kubernetes.io/component"],
                },
            })
        );
        // (case, settings, labels, endpoint)
        let table = [
            (
                "interval",
                MonitoringSpec {
                    pod_monitor_interval: Some("15s".into()),
                    ..enabled.clone()
                },
                json!({
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/managed-by": "chat-cluster-operator",
                    "app.kubernetes.io/name": "chat-cluster",
                }),
                json!({"port": "http", "path": "/metrics", "interval": "15s"}),
            ),
            (
                "labels for a podMonitorSelector; ours win",
                MonitoringSpec {
                    pod_monitor_labels: BTreeMap::from([
                        ("release".to_owned(), "prometheus".to_owned()),
                        ("app.kubernetes.io/name".to_owned(), "mine".to_owned()),
                    ]),
                    ..enabled.clone()
                },
                json!({
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/managed-by": "chat-cluster-operator",
                    "app.kubernetes.io/name": "chat-cluster",
                    "release": "prometheus",
                }),
                json!({"port": "http", "path": "/metrics"}),
            ),
        ];
        for (case, settings, labels, endpoint) in table {
            let object = built(settings);
            assert_eq!(object["metadata"]["labels"], labels, "{case}");
            assert_eq!(
                object["spec"]["podMetricsEndpoints"],
                json!([endpoint]),
                "{case}"
            );
        }
    }
}
