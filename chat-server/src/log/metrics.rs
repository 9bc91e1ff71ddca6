//! The replication log's Prometheus metrics, registered in one registry served at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters, gauges and histograms of one replica.
pub struct LogMetrics {
    pub registry: Registry,
    pub appended: Counter,
    pub batch_size: Histogram,
    pub fsync_seconds: Histogram,
    pub gaps_repaired: Counter,
    pub gap_messages: Counter,
    pub peer_messages: Counter,
    pub trims: Counter,
    pub trimmed_entries: Counter,
    pub snapshots: Counter,
    /// `/snapshot` responses aborted because the client took nothing for the send timeout.
    pub snapshot_send_timeouts: Counter,
    pub broker_errors: Counter,
    pub broker_losses: Counter,
    pub persisted: Gauge,
    pub head: Gauge,
    pub lag: Gauge,
    pub phase: Gauge,
    pub open_seconds: Gauge<f64, AtomicU64>,
    /// Open and refused connections (`crate::serve`).
    pub connections: crate::serve::ConnectionMetrics,
}

impl Default for LogMetrics {
    fn default() -> LogMetrics {
        let mut registry = Registry::with_prefix("replication_log");
        let m = LogMetrics {
            registry: Registry::default(),
            appended: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            gaps_repaired: Counter::default(),
            gap_messages: Counter::default(),
            peer_messages: Counter::default(),
            trims: Counter::default(),
            trimmed_entries: Counter::default(),
            snapshots: Counter::default(),
            snapshot_send_timeouts: Counter::default(),
            broker_errors: Counter::default(),
            broker_losses: Counter::default(),
            persisted: Gauge::default(),
            head: Gauge::default(),
            lag: Gauge::default(),
            phase: Gauge::default(),
            open_seconds: Gauge::default(),
            connections: Default::default(),
        };
        m.connections.register(&mut registry);
        registry.register(
            "messages_appended",
            "Messages appended to the log",
            m.appended.clone(),
        );
        registry.register(
            "batch_size_messages",
            "Messages per group commit",
            m.batch_size.clone(),
        );
        registry.register(
            "fsync_duration_seconds",
            "Time spent in fdatasync per group commit",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "gaps_repaired",
            "Holes in the stream repaired from the stream or a peer",
            m.gaps_repaired.clone(),
        );
        registry.register(
            "gap_messages_repaired",
            "Messages fetched to repair holes",
            m.gap_messages.clone(),
        );
        registry.register(
            "peer_messages_copied",
            "Messages copied from peers' snapshots",
            m.peer_messages.clone(),
        );
        registry.register(
            "trims",
            "XTRIM calls that removed entries from the stream",
            m.trims.clone(),
        );
        registry.register(
            "trimmed_entries",
            "Stream entries removed by this replica's trims",
            m.trimmed_entries.clone(),
        );
        registry.register(
            "snapshots_served",
            "Snapshots streamed to clients",
            m.snapshots.clone(),
        );
        registry.register(
            "snapshot_send_timeouts",
            "Snapshot responses aborted because the client took nothing for --snapshot-send-timeout",
            m.snapshot_send_timeouts.clone(),
        );
        registry.register(
            "broker_errors",
            "Failed broker round trips",
            m.broker_errors.clone(),
        );
        registry.register(
            "broker_losses_detected",
            "Times the broker was found without its data",
            m.broker_losses.clone(),
        );
        registry.register(
            "persisted_position",
            "Last durable position",
            m.persisted.clone(),
        );
        registry.register(
            "broker_head_position",
            "Broker head observed last",
            m.head.clone(),
        );
        registry.register(
            "lag_messages",
            "Broker head minus the persisted position",
            m.lag.clone(),
        );
        registry.register(
            "phase",
            "0 starting, 1 bootstrapping, 2 catching up, 3 live, 4 broker lost, 5 diverged",
            m.phase.clone(),
        );
        registry.register(
            "open_duration_seconds",
            "Time the log took to verify and index at start",
            m.open_seconds.clone(),
        );
        LogMetrics { registry, ..m }
    }
}
