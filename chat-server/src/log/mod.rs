//! The replication log (`replication-log` binary): a durable, ordered copy of the broker's stream
//! on local disk, served to chat-server nodes and peers. This module owns the replica's shared
//! state ([`Replica`]: store, phase, broker head, epoch, errors, metrics) and its `/status`.
//!
//! - [`store`]: segment files (header, cluster id, record framing), index, verification at open
//!   (torn tails, corruption, foreign segments), group commit.
//! - [`follower`]: following the stream, gap repair, peer bootstrap, anchoring and epoch checks,
//!   publishing the persisted position and trimming the stream.
//! - [`api`]: the HTTP API (pages, snapshots, health, status, metrics).
//! - [`metrics`]: the replica's Prometheus metrics.
//! - [`cli`]: flags, the `forget-replica` subcommand, and running a replica until SIGTERM.

pub mod api;
pub mod cli;
pub mod follower;
pub mod metrics;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::LogMetrics;
use store::LogStore;

/// Where a replica is in its life (the wire document's phase, defined once in `chat-wire`).
pub use chat_wire::ReplicaPhase as Phase;
/// `GET /status` (defined once in `chat-wire`, decoded by peers, nodes and the operator).
pub use chat_wire::ReplicaStatus;

/// Settings of a replica that the follower and API need.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub replica_id: String,
    pub data_dir: PathBuf,
    /// Base URLs of peer replicas (may include this replica's own URL; it is recognised by id).
    pub peers: Vec<String>,
    /// Entries kept in the stream below the lowest persisted position of all replicas.
    pub trim_keep: u64,
    /// Positions the broker may hand out past this replica's persisted position
    /// (`--position-lease`).
    pub position_lease: u64,
    /// Anchor a broker that lost its data although some peers cannot be asked
    /// (`--anchor-despite-unreachable-peers`).
    pub anchor_despite_unreachable_peers: bool,
    /// The least time between two reads of the stream while following (`--read-linger`; zero:
    /// read again at once): see [`follower::linger_before_read`].
    pub read_linger: std::time::Duration,
    /// How many snapshots and page reads are served at once (`crate::limits`).
    pub reads: crate::limits::ReplicaReads,
    /// The data plane's internal token: required by the internal endpoints and sent to peers
    /// (`--internal-token-file`); `None`: endpoints open (warned at start).
    pub internal_token: Option<crate::auth::InternalToken>,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    head: u64,
    epoch: Option<String>,
    error: Option<String>,
    broker_error: Option<String>,
    broker_loss: Option<String>,
    limit: u64,
    /// When the follower last completed a broker round trip.
    contact: Option<std::time::Instant>,
    /// Why this replica is cut off from a broker its peers still reach, if it is.
    cut_off: Option<String>,
}

/// Everything a replica's tasks share. Cheap to clone.
#[derive(Clone)]
pub struct Replica(Arc<Inner>);

struct Inner {
    settings: ReplicaSettings,
    store: Arc<LogStore>,
    state: Mutex<State>,
    metrics: LogMetrics,
}

impl Replica {
    /// `epoch` is the broker epoch this log was last following (from its data dir), if any.
    pub fn new(settings: ReplicaSettings, store: Arc<LogStore>, epoch: Option<String>) -> Replica {
        let mut metrics = LogMetrics::default();
        settings.reads.metrics().register(&mut metrics.registry);
        metrics.persisted.set(store.persisted() as i64);
        if let Some(epoch) = &epoch {
            store.propose_cluster_id(epoch);
        }
        Replica(Arc::new(Inner {
            settings,
            store,
            state: Mutex::new(State {
                phase: Phase::Starting,
                head: 0,
                epoch,
                error: None,
                broker_error: None,
                broker_loss: None,
                limit: 0,
                contact: None,
                cut_off: None,
            }),
            metrics,
        }))
    }

    pub fn settings(&self) -> &ReplicaSettings {
        &self.0.settings
    }

    pub fn store(&self) -> &Arc<LogStore> {
        &self.0.store
    }

    pub fn metrics(&self) -> &LogMetrics {
        &self.0.metrics
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.state().phase
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.state().phase = phase;
        self.0.metrics.phase.set(phase.code() as i64);
    }

    /// The broker head observed last.
    pub fn head(&self) -> u64 {
        self.state().head
    }

    pub(crate) fn set_head(&self, head: u64) {
        self.state().head = head;
        self.0.metrics.head.set(head as i64);
        self.update_lag();
    }

    pub(crate) fn update_lag(&self) {
        let persisted = self.0.store.persisted();
        self.0.metrics.persisted.set(persisted as i64);
        self.0
            .metrics
            .lag
            .set(self.head().saturating_sub(persisted) as i64);
    }

    pub fn epoch(&self) -> Option<String> {
        self.state().epoch.clone()
    }

    /// Follows `epoch` from now on; a log without a cluster id yet will derive it from the
    /// epoch (see [`LogStore::propose_cluster_id`]).
    pub(crate) fn set_epoch(&self, epoch: Option<String>) {
        if let Some(epoch) = &epoch {
            self.0.store.propose_cluster_id(epoch);
        }
        self.state().epoch = epoch;
    }

    pub fn error(&self) -> Option<String> {
        self.state().error.clone()
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        self.state().error = error;
    }

    /// Records the outcome of a broker round trip: an out-of-memory refusal is shown in
    /// `/status` ([`ReplicaStatus::broker_error`]) until a round trip succeeds.
    pub(crate) fn note_broker(&self, error: Option<&str>) {
        let shown = error.and_then(crate::limits::broker_out_of_memory);
        let mut state = self.state();
        if error.is_none() || shown.is_some() {
            state.broker_error = shown;
        }
    }

    pub(crate) fn set_broker_loss(&self, what: String) {
        self.state().broker_loss = Some(what);
    }

    /// The highest position this replica has granted the broker (recorded on disk).
    pub fn limit(&self) -> u64 {
        self.state().limit
    }

    pub(crate) fn set_limit(&self, limit: u64) {
        self.state().limit = limit;
    }

    /// Records a completed broker round trip.
    pub(crate) fn touch_broker(&self) {
        self.state().contact = Some(std::time::Instant::now());
    }

    /// Time since the last completed broker round trip (`None` before the first).
    pub fn broker_silence(&self) -> Option<std::time::Duration> {
        self.state().contact.map(|t| t.elapsed())
    }

    pub(crate) fn set_cut_off(&self, why: Option<String>) {
        self.state().cut_off = why;
    }

    /// Why this replica is cut off from a broker its peers still reach (not ready meanwhile).
    pub fn cut_off(&self) -> Option<String> {
        self.state().cut_off.clone()
    }

    /// Ready: caught up with the broker head, nothing wrong, and not cut off from a broker its
    /// peers still reach.
    pub fn is_ready(&self) -> bool {
        let state = self.state();
        state.phase == Phase::Live && state.error.is_none() && state.cut_off.is_none()
    }

    pub fn status(&self) -> ReplicaStatus {
        let persisted = self.0.store.persisted();
        let messages = self.0.store.messages();
        let state = self.state();
        ReplicaStatus {
            replica_id: self.0.settings.replica_id.clone(),
            phase: state.phase,
            persisted,
            head: state.head,
            lag: state.head.saturating_sub(persisted),
            messages,
            limit: Some(state.limit),
            epoch: state.epoch.clone(),
            error: state.cut_off.clone().or_else(|| state.error.clone()),
            broker_error: state.broker_error.clone(),
            broker_loss: state.broker_loss.clone(),
        }
    }
}
