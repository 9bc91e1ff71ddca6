//! A chat-server node: its shared state ([`Node`]: the in-memory [`store::Store`], phase, broker
//! head, epoch, metrics) and the task that fills it ([`follower`]: bootstrap from the replication
//! log, then follow the broker's stream).

pub mod follower;
pub mod metrics;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use crate::broker::Broker;
use crate::log_client::LogClient;
use metrics::NodeMetrics;
use store::Store;

/// Where a node is in its life: filling from the log, following the stream towards the head, or
/// serving (ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Bootstrapping,
    CatchingUp,
    Live,
}

impl Phase {
    fn code(self) -> u64 {
        match self {
            Phase::Bootstrapping => 0,
            Phase::CatchingUp => 1,
            Phase::Live => 2,
        }
    }

    fn from_code(code: u64) -> Phase {
        match code {
            0 => Phase::Bootstrapping,
            1 => Phase::CatchingUp,
            _ => Phase::Live,
        }
    }
}

/// Settings of a node that the API and follower need.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub node_id: String,
    pub max_message_bytes: usize,
    pub memory_window: usize,
    /// Messages a WebSocket subscriber may fall behind before it is dropped.
    pub ws_queue: usize,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub phase: Phase,
    pub position: u64,
    pub head: u64,
    pub lag: u64,
    pub messages: u64,
    pub channels: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything a node's tasks share. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Node(Arc<Inner>);

struct Inner {
    settings: NodeSettings,
    store: RwLock<Store>,
    phase: AtomicU64,
    head: AtomicU64,
    epoch: Mutex<Option<String>>,
    error: Mutex<Option<String>>,
    broker: tokio::sync::OnceCell<Broker>,
    log: LogClient,
    metrics: NodeMetrics,
}

impl Node {
    pub fn new(settings: NodeSettings, log: LogClient) -> Node {
        let store = Store::new(settings.memory_window, settings.ws_queue);
        Node(Arc::new(Inner {
            settings,
            store: RwLock::new(store),
            phase: AtomicU64::new(Phase::Bootstrapping.code()),
            head: AtomicU64::new(0),
            epoch: Mutex::new(None),
            error: Mutex::new(None),
            broker: tokio::sync::OnceCell::new(),
            log,
            metrics: NodeMetrics::default(),
        }))
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.0.settings
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.0.metrics
    }

    pub fn log(&self) -> &LogClient {
        &self.0.log
    }

    /// The broker connection, once the follower has made it.
    pub fn broker(&self) -> Option<&Broker> {
        self.0.broker.get()
    }

    pub(crate) fn set_broker(&self, broker: Broker) {
        let _ = self.0.broker.set(broker);
    }

    /// Read access to the store. A poisoned lock (a panic while applying) is still readable:
    /// the store is only ever changed message by message.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.0.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.0.store.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        Phase::from_code(self.0.phase.load(Ordering::Acquire))
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.0.phase.store(phase.code(), Ordering::Release);
        self.0.metrics.phase.set(phase.code() as i64);
    }

    pub fn head(&self) -> u64 {
        self.0.head.load(Ordering::Acquire)
    }

    pub(crate) fn set_head(&self, head: u64) {
        self.0.head.fetch_max(head, Ordering::AcqRel);
    }

    pub(crate) fn reset_head(&self, head: u64) {
        self.0.head.store(head, Ordering::Release);
    }

    pub(crate) fn set_epoch(&self, epoch: Option<String>) {
        *self.0.epoch.lock().unwrap_or_else(|e| e.into_inner()) = epoch;
    }

    pub fn epoch(&self) -> Option<String> {
        self.0
            .epoch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.0.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    pub fn status(&self) -> NodeStatus {
        let (position, messages, channels) = {
            let store = self.read();
            (store.cursor(), store.total(), store.channel_count())
        };
        let head = self.head().max(position);
        NodeStatus {
            node_id: self.0.settings.node_id.clone(),
            phase: self.phase(),
            position,
            head,
            lag: head - position,
            messages,
            channels,
            epoch: self.epoch(),
            error: self
                .0
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
