//! A chat-server node: its shared state ([`Node`]: the in-memory [`store::Store`], phase, broker
//! head, epoch, metrics) and the task that fills it ([`follower`]: bootstrap from the replication
//! log, then follow the broker's stream).

pub mod follower;
pub mod metrics;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::broker::Broker;
use crate::log_client::LogClient;
use metrics::NodeMetrics;
use store::{Live, LiveEnd, Store, Subscription};

/// Where a node is in its life (the wire document's phase, defined once in `chat-wire`):
/// filling from the log, following the stream towards the head, or serving (ready).
pub use chat_wire::NodePhase as Phase;
/// `GET /status` (defined once in `chat-wire`, decoded by the operator).
pub use chat_wire::NodeStatus;

/// The phase stored as `code`; an error for any other number, never a guess (an unknown code read
/// as `Live` would make a node that has not caught up report ready).
fn decode_phase(code: u64) -> Result<Phase, UnknownPhaseCode> {
    Phase::from_code(code).ok_or(UnknownPhaseCode(code))
}

/// A stored phase code that no [`Phase`] encodes. Only [`Node::set_phase`] writes the code, so
/// this is a bug; it is reported (in `/status`'s `error`, with the node not ready), not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown node phase code {0}")]
pub struct UnknownPhaseCode(pub u64);

/// Settings of a node that the API and follower need.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub node_id: String,
    pub max_message_bytes: usize,
    pub memory_window: usize,
    /// Byte budget of the in-memory window over all channels (see [`store`]).
    pub memory_window_bytes: usize,
    /// Messages a WebSocket subscriber may fall behind before it is dropped.
    pub ws_queue: usize,
    /// Longest a WebSocket write may take before the connection is closed as a slow consumer.
    pub ws_write_timeout: Duration,
    /// Time between WebSocket pings.
    pub ws_ping_interval: Duration,
    /// Longest a WebSocket client may send no frame (not even a pong) before it is closed.
    pub ws_ping_timeout: Duration,
    /// Channels this node accepts writes to (`--max-channels`).
    pub max_channels: usize,
    /// Longest a client may take to send a request body (`--http-body-timeout`).
    pub http_body_timeout: Duration,
    /// Per-connection and per-address rate limits (`crate::limits`).
    pub rate_limits: crate::limits::RateLimits,
}

impl NodeSettings {
    /// An empty store with these settings' bounds.
    pub fn empty_store(&self) -> Store {
        Store::with_budget(self.memory_window, self.memory_window_bytes, self.ws_queue)
    }
}

/// Everything a node's tasks share. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Node(Arc<Inner>);

struct Inner {
    settings: NodeSettings,
    store: RwLock<Store>,
    /// Bumped each time the store is replaced ([`Node::reload_store`]).
    generation: AtomicU64,
    /// Set on SIGTERM: not ready any more.
    terminating: std::sync::atomic::AtomicBool,
    phase: AtomicU64,
    head: AtomicU64,
    epoch: Mutex<Option<String>>,
    error: Mutex<Option<String>>,
    /// See [`NodeStatus::broker_error`].
    broker_error: Mutex<Option<String>>,
    /// When the follower last completed a broker round trip.
    contact: Mutex<Option<std::time::Instant>>,
    /// Why the node is cut off from a broker the others still reach, if it is.
    cut_off: Mutex<Option<String>>,
    broker: tokio::sync::OnceCell<Broker>,
    log: LogClient,
    metrics: NodeMetrics,
}

impl Node {
    pub fn new(settings: NodeSettings, log: LogClient) -> Node {
        let store = settings.empty_store();
        let mut metrics = NodeMetrics::default();
        metrics
            .window_budget_bytes
            .set(i64::try_from(settings.memory_window_bytes).unwrap_or(i64::MAX));
        settings
            .rate_limits
            .metrics()
            .register(&mut metrics.registry);
        Node(Arc::new(Inner {
            settings,
            store: RwLock::new(store),
            generation: AtomicU64::new(0),
            terminating: std::sync::atomic::AtomicBool::new(false),
            phase: AtomicU64::new(Phase::Bootstrapping.code()),
            head: AtomicU64::new(0),
            epoch: Mutex::new(None),
            error: Mutex::new(None),
            broker_error: Mutex::new(None),
            contact: Mutex::new(None),
            cut_off: Mutex::new(None),
            broker: tokio::sync::OnceCell::new(),
            log,
            metrics,
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

    /// The store's read lock, held until the guard drops (keep it short: the follower's writes
    /// wait for it). A poisoned lock (a panic while applying) is still readable: the store is
    /// only ever changed message by message.
    pub fn read_lock(&self) -> RwLockReadGuard<'_, Store> {
        self.0.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's write lock, held until the guard drops (readers wait meanwhile).
    pub(crate) fn write_lock(&self) -> RwLockWriteGuard<'_, Store> {
        self.0.store.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to the live messages of `channel` (see [`Store::subscribe`]); returns the
    /// subscription and the cursor at the moment of subscription. Dropping the subscription
    /// frees its queue in the store.
    pub fn subscribe(&self, channel: &str) -> (LiveSubscription, u64) {
        let (inner, at) = self.write_lock().subscribe(channel);
        let sub = LiveSubscription {
            node: self.clone(),
            channel: channel.to_owned(),
            inner,
        };
        (sub, at)
    }

    /// Replaces the store with an empty one (the node bootstraps again after a broker data
    /// loss) and bumps [`Node::generation`] while holding the store's lock, so whoever reads the
    /// new store also sees the new generation.
    pub(crate) fn reload_store(&self) {
        let settings = &self.0.settings;
        let mut store = self.write_lock();
        *store = settings.empty_store();
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the store was replaced. A reader that started on one generation must not
    /// continue on another: that is another history.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    /// The node's phase; an error when the stored code is not one (see [`UnknownPhaseCode`]).
    pub fn phase(&self) -> Result<Phase, UnknownPhaseCode> {
        decode_phase(self.0.phase.load(Ordering::Acquire))
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

    /// Records a completed broker round trip.
    pub(crate) fn touch_broker(&self) {
        *self.0.contact.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    /// Time since the last completed broker round trip (`None` before the first).
    pub fn broker_silence(&self) -> Option<std::time::Duration> {
        self.0
            .contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    pub(crate) fn set_cut_off(&self, why: Option<String>) {
        *self.0.cut_off.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the node is cut off from a broker that others still reach (not ready meanwhile).
    pub fn cut_off(&self) -> Option<String> {
        self.0
            .cut_off
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ready: live, not cut off from a broker the others still reach, and not shutting down.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase(), Ok(Phase::Live))
            && self.cut_off().is_none()
            && !self.0.terminating.load(Ordering::Acquire)
    }

    /// Marks the node as shutting down: it stops counting itself ready.
    pub(crate) fn set_terminating(&self) {
        self.0.terminating.store(true, Ordering::Release);
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.0.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Records the outcome of a write through the broker: a refusal for lack of memory is shown
    /// in `/status` ([`NodeStatus::broker_error`]) until a write is stored again.
    pub(crate) fn note_broker_write(&self, error: Option<&str>) {
        let shown = error.and_then(crate::limits::broker_out_of_memory);
        let mut current = self
            .0
            .broker_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if error.is_none() || shown.is_some() {
            *current = shown;
        }
    }

    /// `GET /status`. A phase that does not decode is reported as the status's `error`, with the
    /// phase `bootstrapping`: the node is then not ready, whatever the bad code was.
    pub fn status(&self) -> NodeStatus {
        let (position, messages, channels) = {
            let store = self.read_lock();
            (store.cursor(), store.total(), store.channel_count() as u64)
        };
        let head = self.head().max(position);
        let error = self.cut_off().or_else(|| {
            self.0
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let (phase, error) = match self.phase() {
            Ok(phase) => (phase, error),
            Err(bad) => (
                Phase::Bootstrapping,
                Some(match error {
                    Some(e) => format!("{bad}; {e}"),
                    None => bad.to_string(),
                }),
            ),
        };
        NodeStatus {
            node_id: self.0.settings.node_id.clone(),
            phase,
            position,
            head,
            lag: head - position,
            messages,
            channels,
            epoch: self.epoch(),
            error,
            broker_error: self
                .0
                .broker_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A live subscription of a node's store that releases its queue when dropped (so a client that
/// leaves leaves nothing behind, whether or not its channel ever gets a message).
pub struct LiveSubscription {
    node: Node,
    channel: String,
    inner: Subscription,
}

impl LiveSubscription {
    /// The next live message; see [`Subscription::recv`].
    pub async fn recv(&mut self) -> Result<Arc<Live>, LiveEnd> {
        self.inner.recv().await
    }

    /// The next live message if one is queued, without waiting; see
    /// [`Subscription::poll_next`].
    pub fn poll_next(&mut self) -> Result<Option<Arc<Live>>, LiveEnd> {
        self.inner.poll_next()
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        self.inner.close();
        self.node.write_lock().release(&self.channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code decodes to its phase or is an error; nothing falls back to a default.
    #[test]
    fn phase_codes_decode_exactly_or_are_errors() {
        let table: [(u64, Result<Phase, UnknownPhaseCode>); 6] = [
            (0, Ok(Phase::Bootstrapping)),
            (1, Ok(Phase::CatchingUp)),
            (2, Ok(Phase::Live)),
            (3, Err(UnknownPhaseCode(3))),
            (42, Err(UnknownPhaseCode(42))),
            (u64::MAX, Err(UnknownPhaseCode(u64::MAX))),
        ];
        for (code, want) in table {
            assert_eq!(decode_phase(code), want, "code {code}");
        }
        for phase in [Phase::Bootstrapping, Phase::CatchingUp, Phase::Live] {
            assert_eq!(decode_phase(phase.code()), Ok(phase));
        }
    }

    /// A bad stored code makes `/status` report an error and not ready, never `live`.
    #[test]
    fn an_unknown_stored_code_is_reported_not_live() {
        let settings = NodeSettings {
            node_id: "n1".into(),
            max_message_bytes: 4096,
            memory_window: 16,
            memory_window_bytes: 1 << 20,
            ws_queue: 16,
            ws_write_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(30),
            ws_ping_timeout: Duration::from_secs(60),
            max_channels: 100,
            http_body_timeout: Duration::from_secs(10),
            rate_limits: crate::limits::RateLimits::unlimited(),
        };
        let log = LogClient::new(Vec::new());
        let node = Node::new(settings, log);
        node.0.phase.store(7, Ordering::Release);
        assert_eq!(node.phase(), Err(UnknownPhaseCode(7)));
        let status = node.status();
        assert_eq!(status.phase, Phase::Bootstrapping);
        assert_eq!(status.error.as_deref(), Some("unknown node phase code 7"));
    }
}
