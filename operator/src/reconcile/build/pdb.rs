//! The PodDisruptionBudgets `{name}-log` and `{name}-chat-server`.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Parent;
use crate::names::Component;

/// A PDB `name` allowing one voluntary disruption of `component` at a time; None for fewer than
/// two replicas, where it would protect nothing (and block every drain).
pub fn one_at_a_time(
    parent: &Parent<'_>,
    component: Component,
    name: &str,
    replicas: i32,
) -> Option<PodDisruptionBudget> {
    if replicas < 2 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: parent.metadata(name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(parent.selector(component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}
