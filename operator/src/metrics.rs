//! Prometheus metrics of the operator and the small HTTP server that exposes them together with
//! `/healthz` (the process serves) and `/readyz` (it has a working API client and is either the
//! leader or a healthy standby).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set `result="success|error"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// success or error.
    pub result: String,
}

/// Label set `kind="<step>"` (from `reconcile::Error::kind`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The failing step.
    pub kind: String,
}

/// All operator metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    gated: Counter,
    log_rollout_steps: Counter,
    log_rollbacks: Counter,
    log_pods_replaced: Counter,
    child_writes: Counter,
    status_writes: Counter,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the prefix `chat_cluster_operator`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chat_cluster_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let gated = Counter::default();
        let log_rollout_steps = Counter::default();
        let log_rollbacks = Counter::default();
        let log_pods_replaced = Counter::default();
        let child_writes = Counter::default();
        let status_writes = Counter::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by failing step",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "gated_pods",
            "chat-server pods whose caught-up gate was passed",
            gated.clone(),
        );
        registry.register(
            "log_rollout_steps",
            "Replication-log rollout steps: the partition lowered to release the next replica",
            log_rollout_steps.clone(),
        );
        registry.register(
            "log_rollbacks",
            "Replication-log rollouts rolled back to the last good revision (spec.rollout.autoRollback)",
            log_rollbacks.clone(),
        );
        registry.register(
            "log_pods_replaced",
            "Log pods deleted because the StatefulSet controller would wait on them forever",
            log_pods_replaced.clone(),
        );
        registry.register(
            "child_writes",
            "Children created, patched or deleted",
            child_writes.clone(),
        );
        registry.register(
            "status_writes",
            "ChatCluster status patches",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            gated,
            log_rollout_steps,
            log_rollbacks,
            log_pods_replaced,
            child_writes,
            status_writes,
            leader,
            ready: AtomicBool::new(false),
        }
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, error_kind: Option<&str>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error_kind.is_some() {
            "error"
        } else {
            "success"
        };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        if let Some(kind) = error_kind {
            self.errors
                .get_or_create(&ErrorLabels { kind: kind.into() })
                .inc();
        }
    }

    /// Records `n` pods passed by the gate.
    pub fn pods_gated(&self, n: usize) {
        self.gated.inc_by(n as u64);
    }

    /// Records one replication-log rollout step (partition lowered).
    pub fn log_rollout_step(&self) {
        self.log_rollout_steps.inc();
    }

    /// Records one automatic rollback of a replication-log rollout.
    pub fn log_rollback(&self) {
        self.log_rollbacks.inc();
    }

    /// Records one log pod deleted for a stuck or rolled-back rollout (the broken pod of a
    /// rollback included).
    pub fn log_pod_replaced(&self) {
        self.log_pods_replaced.inc();
    }

    /// Records one child write.
    pub fn child_written(&self) {
        self.child_writes.inc();
    }

    /// Records one status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the process ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }
}

/// The HTTP routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn serve_metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Serves the routes on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_by_result_and_error_kind() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(3), None);
        m.observe_reconcile(Duration::from_millis(3), Some("apply"));
        m.pods_gated(2);
        let text = m.encode();
        assert!(
            text.contains("chat_cluster_operator_reconciles_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chat_cluster_operator_reconciles_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chat_cluster_operator_reconcile_errors_total{kind=\"apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chat_cluster_operator_gated_pods_total 2"),
            "{text}"
        );
        assert!(
            text.contains("chat_cluster_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
    }
}
