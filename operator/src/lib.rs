//! chat-cluster-operator: the control plane of chat-cluster.
//!
//! Reconciles `ChatCluster` objects into a Redis broker, a replication log and chat-server pods,
//! and gates chat-server rollouts on data catch-up.
//!
//! # Layout
//!
//! - [`crd`]: the `ChatCluster` resource, its schema (defaults, bounds, CEL rules) and the CRD.
//! - [`reconcile`]: the pipeline dereference → validate → build → apply → status, plus rollout
//!   gating; `build` and the status/gating decisions are pure.
//! - [`probe`]: the data plane's `/status` documents, read through the API server's pod proxy.
//! - [`controller`]: the kube-runtime controller: watches, triggers, error backoff.
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` HTTP server.
//! - `fixtures` (unit tests only, `#[cfg(test)]`): a small DSL for test objects
//!   (`ChatCluster::test().with_replicas(5)`); not part of the library's API.

pub mod controller;
pub mod crd;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod reconcile;
