//! `spec.monitoring`: whether the operator creates a Prometheus Operator `PodMonitor` for the
//! ChatCluster's chat-server and replication-log pods (modelled on CloudNativePG's
//! `spec.monitoring.enablePodMonitor`). The PodMonitor itself is built by
//! `reconcile::build::pod_monitor` and written by `reconcile::monitoring`, only where the API server
//! serves `monitoring.coreos.com/v1` PodMonitors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prometheus scraping of the data plane through a PodMonitor (Prometheus Operator).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create the PodMonitor `{name}` (monitoring.coreos.com/v1) scraping `/metrics` on the `http`
    /// port of every chat-server and replication-log pod of this ChatCluster. Needs the Prometheus
    /// Operator's CRDs: where the API server does not serve PodMonitors, the condition
    /// `PodMonitorMissing` says so and the operator creates it within a minute of their
    /// installation. `false` (the default): none, and the operator deletes the one it made.
    #[serde(default)]
    pub enable_pod_monitor: bool,
    /// Scrape interval of the PodMonitor's endpoint, a Prometheus duration: integers with the
    /// units `y`, `w`, `d`, `h`, `m`, `s`, `ms`, largest first, e.g. `30s`, `1m30s`. Unset: the
    /// Prometheus' own `scrape_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub pod_monitor_interval: Option<String>,
    /// Labels on the PodMonitor, for the `podMonitorSelector` of the Prometheus that should pick
    /// it up (e.g. `release: prometheus` for kube-prometheus-stack). The operator's own labels
    /// (`app.kubernetes.io/name`, `instance`, `managed-by`) win over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_monitor_labels: BTreeMap<String, String>,
}
