//! The Prometheus Operator's `PodMonitor` (`monitoring.coreos.com/v1`), a foreign kind the operator
//! writes when `spec.monitoring.enablePodMonitor` is set: typed with only the fields it sets. The
//! schema is the Prometheus Operator's (its CRD); this crate generates none for it, and reads
//! live PodMonitors untyped (`DynamicObject`), so fields it does not know never fail a decode.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The API group and version of the PodMonitor, as discovery names it.
pub const POD_MONITOR_GROUP_VERSION: &str = "monitoring.coreos.com/v1";
/// The PodMonitor's resource (plural) name, as discovery lists it.
pub const POD_MONITOR_PLURAL: &str = "podmonitors";

/// Which pods Prometheus scrapes, and how.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PodMonitor",
    plural = "podmonitors",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    /// The pods to scrape (in the PodMonitor's namespace).
    pub selector: LabelSelector,
    /// The endpoints scraped on each selected pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
    /// Pod labels copied onto every scraped series (dots and slashes become underscores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_target_labels: Vec<String>,
}

/// One scraped endpoint of each selected pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricsEndpoint {
    /// The container port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The HTTP path of the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Scrape interval (Prometheus duration); unset: the Prometheus' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}
