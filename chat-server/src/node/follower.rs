//! The task that fills a node: connect to the broker, bootstrap from a replication-log snapshot,
//! then follow the stream with `XREAD BLOCK` on a dedicated connection, applying strictly in
//! position order and repairing every hole (from the stream, else from the log) before going on.
//! Entries carry the epoch they were written in: a read whose entries are all of the followed
//! epoch is applied at once; any other read is applied only after the broker's epoch and head
//! were checked. A changed broker epoch or a sequence that went backwards means the broker lost
//! its data: the node stops applying, reports it, and bootstraps again from the log, unless the
//! new epoch continues the one it followed past everything it holds ([`keeps_history`]: a broker
//! restart that lost nothing the node had read), in which case it follows the new epoch with its
//! history and readers untouched. It loads the write scripts only into a Redis process that a
//! replica validated (`crate::broker`, "Broker instances").

use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Cancelled};
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::{Broker, BrokerEndpoint, BrokerError, BrokerOps, StreamReader};
use crate::log_client::LogClientError;
use crate::message::Message;
use crate::node::{Node, Phase};
use crate::protocol::{FillStep, Gap, GapFill, keeps_history, split_dense};

/// Messages asked for per `XREAD`.
const READ_COUNT: usize = 1000;
/// How long one `XREAD` blocks.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// A blocking read that has not answered this long after its block time is given up: the
/// connection is presumed dead (a partition sends no FIN) and is opened again.
const READ_GRACE: Duration = Duration::from_secs(2);
/// How often the watchdog checks whether the node is cut off from the broker.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often the broker's epoch and head are checked while messages flow.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("shutting down")]
    Shutdown,
    #[error("broker epoch changed from {old} to {new}; the broker lost its data")]
    EpochChanged { old: String, new: String },
    #[error(
        "broker sequence went backwards from {cursor} to {head} in epoch {epoch}; epoch retired"
    )]
    SequenceBackwards {
        cursor: u64,
        head: u64,
        epoch: String,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Log(#[from] LogClientError),
    #[error("the replication log does not yet hold position {0}")]
    LogBehind(u64),
}

impl From<Cancelled> for FollowError {
    fn from(_: Cancelled) -> FollowError {
        FollowError::Shutdown
    }
}

/// Runs the node's follower until shutdown.
pub async fn run(node: Node, endpoint: BrokerEndpoint, shutdown: CancellationToken) {
    let broker = match connect(&endpoint, &node.metrics().write_batch_size, &shutdown).await {
        Some(b) => b,
        None => return,
    };
    node.set_broker(broker.clone());
    node.touch_broker();
    tokio::spawn(watch_contact(node.clone(), shutdown.clone()));
    let mut first = true;
    loop {
        if !first {
            // Re-anchor on the log: forget everything from the old epoch.
            node.reload_store();
        }
        first = false;
        let span = info_span!("follow", node_id = %node.settings().node_id);
        match cycle(&node, &broker, &shutdown).instrument(span).await {
            FollowError::Shutdown => return,
            e => {
                error!(error = %e, "stopped applying; bootstrapping again from the replication log");
                node.set_error(Some(e.to_string()));
            }
        }
    }
}

/// Connects, retrying with backoff until shutdown; the write batches' sizes go to `batch_sizes`.
async fn connect(
    endpoint: &BrokerEndpoint,
    batch_sizes: &Histogram,
    shutdown: &CancellationToken,
) -> Option<Broker> {
    let mut backoff = Backoff::new();
    loop {
        match Broker::connect_observed(endpoint.clone(), batch_sizes.clone()).await {
            Ok(b) => return Some(b),
            Err(e) => {
                warn!(error = %e, redis_url = %crate::telemetry::redact_url(endpoint.url()), "cannot reach the broker; retrying");
                if backoff.wait(shutdown).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// One life of the node's data: bootstrap, then follow until the broker's identity changes.
async fn cycle(node: &Node, broker: &Broker, shutdown: &CancellationToken) -> FollowError {
    node.set_phase(Phase::Bootstrapping);
    let epoch = match wait_for_epoch(node, broker, shutdown).await {
        Ok(e) => e,
        Err(e) => return e,
    };
    let epoch = &epoch;
    let started = Instant::now();
    if let Err(e) = bootstrap(node, shutdown).await {
        return e;
    }
    node.metrics()
        .bootstrap_seconds
        .set(started.elapsed().as_secs_f64());
    let mut backoff = Backoff::new();
    let target = loop {
        match broker.state().await {
            Ok(s) => break s.head,
            Err(e) => {
                warn!(error = %e, "cannot read the broker head; retrying");
                if let Err(cancelled) = backoff.wait(shutdown).await {
                    return cancelled.into();
                }
            }
        }
    };
    node.reset_head(target);
    info!(
        position = node.read_lock().cursor(),
        head = target,
        seconds = started.elapsed().as_secs_f64(),
        "bootstrapped from the replication log; catching up with the broker"
    );
    node.set_phase(Phase::CatchingUp);
    match follow(node, broker, epoch, target, shutdown).await {
        Ok(()) => FollowError::Shutdown,
        Err(e) => e,
    }
}

/// The broker epoch a node follows: its id, and the history it was anchored on (`base`) and
/// continues after (`anchor`; `base+1 ..= anchor` are void).
#[derive(Debug, Clone)]
struct Epoch {
    id: String,
    base: u64,
    anchor: u64,
}

/// Reads the broker's epoch, waiting while it has none (a new or wiped broker that the
/// replication log has not anchored yet).
async fn wait_for_epoch(
    node: &Node,
    broker: &Broker,
    shutdown: &CancellationToken,
) -> Result<Epoch, FollowError> {
    let mut backoff = Backoff::new();
    loop {
        match broker.state().await {
            Ok(s) => match s.epoch {
                Some(id) => {
                    node.set_epoch(Some(id.clone()));
                    return Ok(Epoch {
                        id,
                        base: s.base,
                        anchor: s.anchor,
                    });
                }
                None => info!(
                    "the broker has no epoch yet; waiting for the replication log to anchor it"
                ),
            },
            Err(e) => warn!(error = %e, "cannot read the broker state; retrying"),
        }
        backoff.wait(shutdown).await?;
    }
}

/// Streams a snapshot from the first replica that answers and applies it batch by batch.
async fn bootstrap(node: &Node, shutdown: &CancellationToken) -> Result<(), FollowError> {
    let mut backoff = Backoff::new();
    loop {
        let after = node.read_lock().cursor();
        match copy_snapshot(node, after, u64::MAX).await {
            Ok(()) => return Ok(()),
            Err(e) => warn!(error = %e, "bootstrap from the replication log failed; retrying"),
        }
        backoff.wait(shutdown).await?;
    }
}

/// Applies the log's messages after `after`, up to `upto` or the snapshot's end, whichever is
/// first. Returns the position reached.
async fn copy_snapshot(node: &Node, after: u64, upto: u64) -> Result<(), FollowError> {
    let mut snapshot = node.log().snapshot(after).await?;
    let end = snapshot.position.min(upto);
    while node.read_lock().cursor() < end {
        let Some(batch) = snapshot.next_batch().await? else {
            break;
        };
        let batch = batch.into_iter().take_while(|m| m.position <= end);
        apply(node, batch);
    }
    Ok(())
}

/// Applies a dense run; the store refuses anything out of order, which would be a bug here.
fn apply(node: &Node, batch: impl IntoIterator<Item = Message>) {
    let mut store = node.write_lock();
    for m in batch {
        let position = m.position;
        if m.position <= store.cursor() {
            continue;
        }
        if let Err(e) = store.apply(m) {
            error!(error = %e, position, "refused an out-of-order message");
            return;
        }
        node.metrics().applied.inc();
    }
}

async fn open_reader(
    broker: &Broker,
    shutdown: &CancellationToken,
) -> Result<StreamReader, FollowError> {
    let mut backoff = Backoff::new();
    loop {
        match broker.reader().await {
            Ok(r) => return Ok(r),
            Err(e) => {
                node_warn_broker(&e);
                backoff.wait(shutdown).await?;
            }
        }
    }
}

fn node_warn_broker(e: &BrokerError) {
    warn!(error = %e, "broker unavailable; retrying with backoff");
}

/// A failed broker round trip while following: counted and logged; the caller retries.
fn broker_error(node: &Node, e: &BrokerError) {
    node.metrics().broker_errors.inc();
    node_warn_broker(e);
}

/// Follows the stream from the node's cursor until shutdown or a broker identity change.
async fn follow(
    node: &Node,
    broker: &Broker,
    epoch: &Epoch,
    target: u64,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    let mut reader = open_reader(broker, shutdown).await?;
    let mut backoff = Backoff::new();
    let mut last_check = Instant::now();
    let mut epoch = epoch.clone();
    let epoch = &mut epoch;
    loop {
        let cursor = node.read_lock().cursor();
        let read = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(READ_BLOCK + READ_GRACE, reader.read_after_tagged(cursor, READ_COUNT, READ_BLOCK)) => r,
        };
        let Ok(read) = read else {
            node.metrics().broker_errors.inc();
            warn!(
                seconds = (READ_BLOCK + READ_GRACE).as_secs(),
                "no answer to a blocking read from the broker; reconnecting"
            );
            backoff.wait(shutdown).await?;
            reader = open_reader(broker, shutdown).await?;
            continue;
        };
        let (batch, written_in) = match read {
            Ok(b) => {
                backoff.reset();
                node.touch_broker();
                b
            }
            Err(e) => {
                broker_error(node, &e);
                backoff.wait(shutdown).await?;
                reader = open_reader(broker, shutdown).await?;
                continue;
            }
        };
        let idle = batch.is_empty();
        if !idle && written_in.as_deref() != Some(epoch.id.as_str()) {
            // What the read returned may belong to another history (the broker lost its data
            // and was anchored again): unless every entry says it was written in the epoch this
            // node follows, check the broker's identity before applying it. Found by the
            // protocol simulation (`crate::protocol::sim`): applying first mixed two epochs in
            // the node's copy. Entries of this node's own epoch need no round trip (it cost
            // every delivery a broker round trip: BENCHMARKS.md).
            match check_broker(node, broker, epoch).await {
                Ok(Checked::Head(_)) => {}
                Ok(Checked::Adopted(new)) => {
                    // The read may belong to the old epoch past the new base: read again.
                    *epoch = new;
                    continue;
                }
                Err(FollowError::Broker(e)) => {
                    broker_error(node, &e);
                    backoff.wait(shutdown).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(last) = batch.last() {
            node.set_head(last.position);
        }
        apply_repairing(node, broker, epoch, batch, shutdown).await?;
        if idle || last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if broker.scripts_missing() {
                load_scripts(broker).await;
            }
            match check_broker(node, broker, epoch).await {
                Ok(Checked::Adopted(new)) => {
                    *epoch = new;
                    continue;
                }
                Ok(Checked::Head(head)) if idle && head > node.read_lock().cursor() => {
                    // The read came back empty yet the head is ahead: either the entries arrived
                    // just after the read (still in the stream) or the stream was trimmed past
                    // us (a hole).
                    let cursor = node.read_lock().cursor();
                    let found = broker.range(cursor, head, READ_COUNT).await;
                    match found {
                        Ok(found) if !found.is_empty() => {
                            apply_repairing(node, broker, epoch, found, shutdown).await?;
                        }
                        Ok(_) => {
                            let gap = Gap {
                                from: cursor + 1,
                                to: head,
                            };
                            repair(node, broker, epoch, gap, shutdown).await?;
                        }
                        Err(e) => {
                            broker_error(node, &e);
                        }
                    }
                }
                Ok(_) => {}
                Err(FollowError::Broker(e)) => {
                    broker_error(node, &e);
                }
                Err(e) => return Err(e),
            }
        }
        let cursor = node.read_lock().cursor();
        let head = node.head().max(cursor);
        node.metrics().lag.set((head - cursor) as i64);
        if node.phase() == Ok(Phase::CatchingUp) && cursor >= target {
            info!(position = cursor, "caught up with the broker; live");
            node.set_phase(Phase::Live);
            node.set_error(None);
        }
    }
}

/// Watches the broker round trips: after [`crate::protocol::BROKER_SILENCE`] without one, asks
/// the replication log how far it has persisted; if a replica holds positions past this node's
/// cursor, the others still reach the broker and this node is cut off: it reports that and is not
/// ready until it hears from the broker again. A broker down for everyone leaves the node ready.
async fn watch_contact(node: Node, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let silence = node.broker_silence().unwrap_or_default();
        // Only a live node can be cut off: before that it is not ready anyway.
        if silence < crate::protocol::BROKER_SILENCE || !matches!(node.phase(), Ok(Phase::Live)) {
            if node.cut_off().is_some() {
                info!("reached the broker again; no longer cut off");
                node.set_cut_off(None);
            }
            continue;
        }
        let holds = node.read_lock().cursor();
        let mut furthest: Option<(String, u64)> = None;
        for url in node.log().urls() {
            if let Ok(s) = node.log().status_of(url).await
                && furthest.as_ref().is_none_or(|(_, p)| s.persisted > *p)
            {
                furthest = Some((url.clone(), s.persisted));
            }
        }
        let others = furthest.as_ref().map(|(_, p)| *p);
        let why = match (
            crate::protocol::is_cut_off(silence, holds, others),
            &furthest,
        ) {
            (true, Some((url, persisted))) => Some(format!(
                "cut off from the broker for {}s while replica {} has persisted position {persisted} \
                 past this node's {holds}; not ready until the broker answers again",
                silence.as_secs(),
                crate::telemetry::redact_url(url)
            )),
            _ => None,
        };
        if why.is_some() && node.cut_off().is_none() {
            warn!(
                reason = why.as_deref().unwrap_or_default(),
                "cut off from the broker"
            );
        }
        node.set_cut_off(why);
    }
}

/// Loads the write scripts if the Redis process was validated (after a write met `NOSCRIPT`:
/// the script cache was flushed, or holds another version's scripts). A process that was not
/// validated is left alone: a replica validates it.
async fn load_scripts(broker: &Broker) {
    match broker.check_instance().await {
        Ok(crate::broker::InstanceCheck::Loaded) => {
            info!("loaded the write scripts into the validated broker")
        }
        Ok(crate::broker::InstanceCheck::New { run_id, .. }) => info!(
            %run_id,
            "the broker process was not validated yet; writes fail until a replica validates it"
        ),
        Ok(crate::broker::InstanceCheck::Validated) => {}
        Err(e) => warn!(error = %e, "cannot check the broker's scripts"),
    }
}

/// What [`check_broker`] found.
enum Checked {
    /// The broker is in the node's epoch; its head.
    Head(u64),
    /// The broker moved to a new epoch that continues the node's history: follow it.
    Adopted(Epoch),
}

/// Reads the broker's identity and head; errors when it is not the broker this node follows.
/// A new epoch that continues the node's history ([`keeps_history`]) is adopted. A sequence
/// below what this node holds (the broker went back) retires the epoch, so the replication log
/// anchors the broker again past every position handed out.
async fn check_broker(node: &Node, broker: &Broker, epoch: &Epoch) -> Result<Checked, FollowError> {
    let state = broker.state().await?;
    node.touch_broker();
    let current = state.epoch.clone().unwrap_or_else(|| "<none>".to_owned());
    let cursor = node.read_lock().cursor();
    if current != epoch.id {
        if let Some(id) = &state.epoch
            && keeps_history(&epoch.id, cursor, state.previous.as_deref(), state.base)
        {
            info!(
                old = %epoch.id,
                new = %id,
                base = state.base,
                anchor = state.anchor,
                position = cursor,
                "the broker moved to a new epoch that continues this node's history; following it"
            );
            node.set_epoch(Some(id.clone()));
            node.set_error(None);
            return Ok(Checked::Adopted(Epoch {
                id: id.clone(),
                base: state.base,
                anchor: state.anchor,
            }));
        }
        return Err(FollowError::EpochChanged {
            old: epoch.id.clone(),
            new: current,
        });
    }
    if state.head < cursor {
        broker.retire(&epoch.id, cursor).await?;
        return Err(FollowError::SequenceBackwards {
            cursor,
            head: state.head,
            epoch: current,
        });
    }
    node.set_head(state.head);
    Ok(Checked::Head(state.head))
}

/// Applies a batch read from the stream, repairing every hole in it first.
async fn apply_repairing(
    node: &Node,
    broker: &Broker,
    epoch: &Epoch,
    mut batch: Vec<Message>,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    loop {
        let cursor = node.read_lock().cursor();
        let split = split_dense(cursor, batch);
        apply(node, split.dense);
        let Some((gap, rest)) = split.gap else {
            return Ok(());
        };
        repair(node, broker, epoch, gap, shutdown).await?;
        batch = rest;
    }
}

/// Fills `gap` (and nothing after it) from the stream if it still holds it, else from the log,
/// waiting for the log when it has not persisted that far yet. Positions the epoch skipped
/// (void) are applied as a void record once the node holds the history the epoch was anchored on.
async fn repair(
    node: &Node,
    broker: &Broker,
    epoch: &Epoch,
    gap: Gap,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    warn!(
        from = gap.from,
        to = gap.to,
        "hole in the stream; repairing"
    );
    node.metrics().gaps_repaired.inc();
    node.metrics().gap_messages.inc_by(gap.to - gap.from + 1);
    let mut backoff = Backoff::new();
    let mut fill = GapFill::new(gap.to);
    loop {
        let cursor = node.read_lock().cursor();
        match fill.next(cursor, epoch.base, epoch.anchor) {
            FillStep::Done => return Ok(()),
            FillStep::Void(void) => apply(node, [Message::void(void)]),
            // A broker error here is retried like any other: the hole is still there to fill.
            FillStep::Stream => match broker.range(cursor, gap.to, READ_COUNT).await {
                Ok(found) => apply(node, split_dense(cursor, found).dense),
                Err(e) => broker_error(node, &e),
            },
            FillStep::Elsewhere => {
                if let Err(e) = copy_snapshot(node, cursor, gap.to).await {
                    warn!(error = %e, "cannot repair from the replication log; retrying");
                }
            }
            FillStep::Wait => {
                warn!(error = %FollowError::LogBehind(cursor + 1), "waiting for the replication log");
                backoff.wait(shutdown).await?;
            }
        }
    }
}
