//! The documents that cross process boundaries between the data plane and its readers, defined
//! once: a chat-server node's `GET /status` ([`NodeStatus`], [`NodePhase`]) and a
//! replication-log replica's `GET /status` and `/readyz` ([`ReplicaStatus`], [`ReplicaPhase`]).
//! The binaries serialize these types; the operator (its probes, rollout gate and status) and
//! the data plane's own clients (a node reading replicas, replicas reading peers) decode them.
//!
//! Decoding is strict where a guess would be unsafe: a phase this crate does not know is a
//! decode error (never a default — an unknown value read as `live` would let a node that has not
//! caught up pass the rollout gate), and the counters every served document carries are
//! required. Only the details a server shows just to callers with the internal token (`epoch`,
//! `error`, `limit`, …) are optional.
//!
//! # Layout
//! - [`NodeStatus`], [`NodePhase`]: chat-server (`chat-server/src/node`, served by `api`).
//! - [`ReplicaStatus`], [`ReplicaPhase`]: replication-log (`chat-server/src/log`, served by
//!   `log::api`).
//! - [`redis_acl`]: the broker's Redis ACL users, the user each role connects as and the
//!   commands it may run (the operator starts Redis with them; the data plane's tests too).
//!
//! Depends on serde only (no HTTP, Redis or Kubernetes crates), so every reader can use it.

pub mod redis_acl;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a chat-server node is in its life (`phase` of [`NodeStatus`]; snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePhase {
    /// Filling its store from the replication log.
    Bootstrapping,
    /// Following the broker's stream towards the head.
    CatchingUp,
    /// Caught up and serving (ready, unless its `error` says otherwise).
    Live,
}

impl NodePhase {
    /// The wire name (`bootstrapping`, `catching_up`, `live`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Bootstrapping => "bootstrapping",
            NodePhase::CatchingUp => "catching_up",
            NodePhase::Live => "live",
        }
    }

    /// The phase's value in the `chat_server_phase` gauge (docs/monitoring.md; alerts compare
    /// it): 0 bootstrapping, 1 catching up, 2 live.
    pub fn code(self) -> u64 {
        match self {
            NodePhase::Bootstrapping => 0,
            NodePhase::CatchingUp => 1,
            NodePhase::Live => 2,
        }
    }

    /// The phase whose [`code`](NodePhase::code) is `code`; `None` for any other number, never
    /// a guess.
    pub fn from_code(code: u64) -> Option<NodePhase> {
        match code {
            0 => Some(NodePhase::Bootstrapping),
            1 => Some(NodePhase::CatchingUp),
            2 => Some(NodePhase::Live),
            _ => None,
        }
    }
}

impl fmt::Display for NodePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chat-server node's `GET /status` (JSON object, fields in this order). Positions are
/// broker stream positions (the log's sequence numbers); `lag` is `head - position`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's NODE_ID.
    pub node_id: String,
    pub phase: NodePhase,
    /// Last position applied to the node's store.
    pub position: u64,
    /// Broker head the node has observed (never below `position`).
    pub head: u64,
    /// `head - position`.
    pub lag: u64,
    /// Messages held in memory.
    pub messages: u64,
    /// Channels known.
    pub channels: u64,
    /// The broker epoch the node follows (internal callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// What keeps the node from serving, if anything (internal callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The broker's answer to this node's last write when it refused it for lack of memory
    /// (cleared by the next write it stores); the node stays ready meanwhile (reads work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_error: Option<String>,
}

/// Where a replication-log replica is in its life (`phase` of [`ReplicaStatus`]; snake_case on
/// the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaPhase {
    /// Not yet connected to the broker.
    Starting,
    /// Copying a peer's snapshot into an empty log.
    Bootstrapping,
    /// Following the stream, behind the broker head.
    CatchingUp,
    /// Persisted position at or past the broker head observed last (ready).
    Live,
    /// The broker lost data (epoch gone or sequence below the log); not applying until resolved.
    BrokerLost,
    /// This log holds positions past the broker's new anchor: it stopped for good.
    Diverged,
}

impl ReplicaPhase {
    /// The wire name (`starting`, `bootstrapping`, `catching_up`, `live`, `broker_lost`,
    /// `diverged`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaPhase::Starting => "starting",
            ReplicaPhase::Bootstrapping => "bootstrapping",
            ReplicaPhase::CatchingUp => "catching_up",
            ReplicaPhase::Live => "live",
            ReplicaPhase::BrokerLost => "broker_lost",
            ReplicaPhase::Diverged => "diverged",
        }
    }

    /// The phase's value in the `replication_log_phase` gauge (docs/monitoring.md; alerts
    /// compare it): 0 starting, 1 bootstrapping, 2 catching up, 3 live, 4 broker lost,
    /// 5 diverged.
    pub fn code(self) -> u64 {
        match self {
            ReplicaPhase::Starting => 0,
            ReplicaPhase::Bootstrapping => 1,
            ReplicaPhase::CatchingUp => 2,
            ReplicaPhase::Live => 3,
            ReplicaPhase::BrokerLost => 4,
            ReplicaPhase::Diverged => 5,
        }
    }
}

impl fmt::Display for ReplicaPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A replication-log replica's `GET /status` (and `/readyz` body). `persisted` is the highest
/// position fsynced to its log; `lag` is `head - persisted` (0 when ahead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica's REPLICA_ID.
    pub replica_id: String,
    pub phase: ReplicaPhase,
    pub persisted: u64,
    /// Broker head the replica has observed.
    pub head: u64,
    pub lag: u64,
    /// Messages held in its log.
    pub messages: u64,
    /// The highest position this replica granted the broker, recorded on its disk first (peers
    /// read it when they anchor a broker that lost its data). Internal callers only; absent
    /// means the replica did not say (read it as 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The broker epoch this log follows (internal callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// What stops this replica from following now (internal callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The broker refused this replica's writes for lack of memory (Redis `maxmemory`): it
    /// cannot register, publish its persisted position or trim the stream until memory frees.
    /// Cleared by the next broker round trip that succeeds (internal callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_error: Option<String>,
    /// The last broker data loss this replica detected, kept after it re-anchored (internal
    /// callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_loss: Option<String>,
}

impl ReplicaStatus {
    /// The document without the details only internal callers see (`limit`, `epoch`, `error`,
    /// `broker_error`, `broker_loss`).
    pub fn without_details(self) -> ReplicaStatus {
        ReplicaStatus {
            limit: None,
            epoch: None,
            error: None,
            broker_error: None,
            broker_loss: None,
            ..self
        }
    }
}

impl NodeStatus {
    /// The document without the details only internal callers see (`epoch`, `error`).
    /// `broker_error` stays: it tells any client why writes fail while reads work.
    pub fn without_details(self) -> NodeStatus {
        NodeStatus {
            epoch: None,
            error: None,
            ..self
        }
    }
}
