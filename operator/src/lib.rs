//! chat-cluster-operator: the control plane of chat-cluster.
//!
//! Reconciles `ChatCluster` objects into a Redis broker, a replication log and chat-server pods,
//! and gates chat-server rollouts on data catch-up.
//!
//! # Layout
//!
//! - [`names`]: child names, labels, selectors, ports, the Secret keys — a leaf module the CRD,
//!   the reconcile steps and the controller share.
//! - [`crd`]: the `ChatCluster` resource, its schema (defaults, bounds, CEL rules) and the CRD;
//!   `crd::settings` holds the per-component pod and Service settings and the claim retention,
//!   `crd::network_policy` the `spec.networkPolicy` block, `crd::monitoring` the `spec.monitoring`
//!   block, and `crd::pod_monitor` the Prometheus Operator's PodMonitor (a foreign kind, typed
//!   with only the fields the operator sets).
//! - [`quantity`]: Kubernetes quantities read as bytes (pure; a leaf).
//! - [`reconcile`]: the pipeline validate → dereference → ownership → build → log_rollout →
//!   apply → monitoring → gate → status.
//!   - `reconcile::children`: [`reconcile::children::Children`], the one list of child kinds,
//!     at each stage (existing, desired, live).
//!   - `reconcile::validate`: what the schema cannot check (pure).
//!   - `reconcile::dereference`: every read — children, pods, the data plane's `/status`.
//!   - `reconcile::health`: pod-level causes (image pull, crash loop, unschedulable, pending
//!     claim) read from pod status (pure), for the conditions.
//!   - `reconcile::storage`: claims kept from an earlier ChatCluster of the same name, for the
//!     `ReusedClaims` condition (pure).
//!   - `reconcile::ownership`: never adopt — a child name held by an object this ChatCluster
//!     does not control stops the reconcile with `NameConflict` (pure).
//!   - `reconcile::build`: the pure builder, one module per child kind (`secret`, `service`,
//!     `broker`, `replication_log`, `chat_server`, `pdb`, `network_policy`; `pod` for shared
//!     container settings; `pod_monitor` for the optional PodMonitor).
//!   - `reconcile::log_rollout`: the replication-log StatefulSet's partition, one caught-up
//!     replica at a time, halt or roll back (pure decision).
//!   - `reconcile::apply`: server-side apply and pruning through one generic applier.
//!   - `reconcile::monitoring`: the optional PodMonitor, only where the API server serves it
//!     (pure decision, then apply or delete; reported in the `PodMonitorMissing` condition).
//!   - `reconcile::gate`, `reconcile::status`: pure decisions with thin patch shells.
//! - [`probe`]: reading the data plane's `/status` documents (defined in the `chat-wire` crate,
//!   shared with the data plane) through the API server's pod proxy.
//! - [`controller`]: the kube-runtime controller: watches, triggers, error backoff.
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` HTTP server.
//! - [`token`]: client tokens (HS256 JWTs) for a ChatCluster in token mode: minting, the key
//!   from its auth Secret (`chat-cluster-operator token`, the e2e suite).
//! - `fixtures` (unit tests only, `#[cfg(test)]`): a small DSL for test objects
//!   (`ChatCluster::test().with_replicas(5)`); not part of the library's API.

pub mod controller;
pub mod crd;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod probe;
pub mod quantity;
pub mod reconcile;
pub mod token;
