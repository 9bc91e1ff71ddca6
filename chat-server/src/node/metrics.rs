//! The chat-server's Prometheus metrics, registered in one registry served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `code` label of `websocket_closes`: the close code the node sent (RFC 6455 §7.4).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub code: u16,
}

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
    /// Writes per run of the write script (`crate::broker` batches a node's writes).
    pub write_batch_size: Histogram,
    pub broker_errors: Counter,
    pub history_unavailable: Counter,
    pub history_resets: Counter,
    /// Writes answered `504`: the broker could not be asked whether they were stored.
    pub outcome_unknown: Counter,
    /// Open and refused connections (`crate::serve`).
    pub connections: crate::serve::ConnectionMetrics,
    /// WebSocket closes the node started (not echoes of a client's close), by close code.
    pub ws_closes: Family<CloseLabel, Counter>,
    /// Writes refused with 409 because they would create a channel over `--max-channels`.
    pub channel_limit_refusals: Counter,
    /// The memory window's byte budget (`--memory-window-bytes` or its default).
    pub window_budget_bytes: Gauge,
    /// Bytes the memory window holds, counted as the budget counts them (set when scraped).
    pub window_bytes: Gauge,
    /// Channels this node holds (set when scraped).
    pub channels: Gauge,
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
            write_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            broker_errors: Counter::default(),
            history_unavailable: Counter::default(),
            history_resets: Counter::default(),
            outcome_unknown: Counter::default(),
            connections: Default::default(),
            ws_closes: Family::default(),
            channel_limit_refusals: Counter::default(),
            window_budget_bytes: Gauge::default(),
            window_bytes: Gauge::default(),
            channels: Gauge::default(),
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
            "broker_write_batch_size",
            "Writes per run of the broker's write script: the node sends the writes queued while its batches were in flight together (up to 64, two batches in flight)",
            m.write_batch_size.clone(),
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
        registry.register(
            "websocket_closes",
            "WebSocket closes the node started, by close code: 1001 shutdown, 1002/1007/1009 client protocol faults, 1008 policy, 1012 reload, 1013 history not available, 4001 token expired, 4008 slow consumer, 4009 ping timeout",
            m.ws_closes.clone(),
        );
        registry.register(
            "channel_limit_refusals",
            "Writes refused with 409 because they would create a channel over --max-channels",
            m.channel_limit_refusals.clone(),
        );
        registry.register(
            "memory_window_budget_bytes",
            "Byte budget of the in-memory window over all channels (--memory-window-bytes, default 40 % of the cgroup memory limit)",
            m.window_budget_bytes.clone(),
        );
        registry.register(
            "memory_window_bytes",
            "Bytes the in-memory window holds (payload plus 160 per message), at most the budget",
            m.window_bytes.clone(),
        );
        registry.register(
            "channels",
            "Channels this node holds (bounded by --max-channels)",
            m.channels.clone(),
        );
        NodeMetrics { registry, ..m }
    }
}

impl NodeMetrics {
    /// Counts a WebSocket close frame with `code` sent by the node.
    pub fn ws_closed(&self, code: u16) {
        self.ws_closes.get_or_create(&CloseLabel { code }).inc();
    }
}
