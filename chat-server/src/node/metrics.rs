//! The chat-server's Prometheus metrics, registered in one registry served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters and gauges of one node.
pub struct NodeMetrics {
    pub registry: Registry,
    pub accepted: Counter,
    pub duplicates: Counter,
    pub rejected: Counter,
    pub applied: Counter,
    pub gaps_repaired: Counter,
    pub gap_messages: Counter,
    pub lag: Gauge,
    pub phase: Gauge,
    pub bootstrap_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub ws_connections: Gauge,
    pub slow_consumers: Counter,
    pub write_seconds: Histogram,
    pub broker_errors: Counter,
    pub history_unavailable: Counter,
    pub history_resets: Counter,
    /// Writes answered `504`: the broker could not be asked whether they were stored.
    pub outcome_unknown: Counter,
    /// Open and refused connections (`crate::serve`).
    pub connections: crate::serve::ConnectionMetrics,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        let mut registry = Registry::with_prefix("chat_server");
        let m = NodeMetrics {
            accepted: Counter::default(),
            duplicates: Counter::default(),
            rejected: Counter::default(),
            applied: Counter::default(),
            gaps_repaired: Counter::default(),
            gap_messages: Counter::default(),
            lag: Gauge::default(),
            phase: Gauge::default(),
            bootstrap_seconds: Gauge::default(),
            ws_connections: Gauge::default(),
            slow_consumers: Counter::default(),
            write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            broker_errors: Counter::default(),
            history_unavailable: Counter::default(),
            history_resets: Counter::default(),
            outcome_unknown: Counter::default(),
            connections: Default::default(),
            registry: Registry::default(),
        };
        m.connections.register(&mut registry);
        registry.register(
            "messages_accepted",
            "Messages accepted by the broker through this node",
            m.accepted.clone(),
        );
        registry.register(
            "duplicates_rejected",
            "Writes answered with the original message of a repeated id",
            m.duplicates.clone(),
        );
        registry.register(
            "writes_rejected",
            "Writes refused for bad input",
            m.rejected.clone(),
        );
        registry.register(
            "messages_applied",
            "Messages applied to this node's copy",
            m.applied.clone(),
        );
        registry.register(
            "gaps_repaired",
            "Holes in the stream repaired from the stream or the log",
            m.gaps_repaired.clone(),
        );
        registry.register(
            "gap_messages_repaired",
            "Messages fetched to repair holes",
            m.gap_messages.clone(),
        );
        registry.register(
            "lag_messages",
            "Broker head minus this node's position",
            m.lag.clone(),
        );
        registry.register(
            "phase",
            "0 bootstrapping, 1 catching up, 2 live",
            m.phase.clone(),
        );
        registry.register(
            "bootstrap_duration_seconds",
            "Time the last bootstrap took",
            m.bootstrap_seconds.clone(),
        );
        registry.register(
            "websocket_connections",
            "WebSocket sessions being served (not those in their closing handshake)",
            m.ws_connections.clone(),
        );
        registry.register(
            "slow_consumers_dropped",
            "WebSocket consumers closed for falling behind or stalling a write",
            m.slow_consumers.clone(),
        );
        registry.register(
            "write_duration_seconds",
            "Time from request to broker acceptance",
            m.write_seconds.clone(),
        );
        registry.register(
            "broker_errors",
            "Failed broker round trips",
            m.broker_errors.clone(),
        );
        registry.register(
            "history_unavailable",
            "Reads refused (503, or a WebSocket closed with 1013) because a range that left memory is not in the replication log yet",
            m.history_unavailable.clone(),
        );
        registry.register(
            "history_resets",
            "Readers told that positions they hold were lost in a broker data loss",
            m.history_resets.clone(),
        );
        registry.register(
            "writes_outcome_unknown",
            "Writes answered 504: the broker could not be asked whether they were stored",
            m.outcome_unknown.clone(),
        );
        NodeMetrics { registry, ..m }
    }
}
