//! The replica's follower task: bootstraps an empty log from a peer, anchors a broker that has no
//! epoch, follows the stream with `XREAD BLOCK` on its own connection, repairs holes from the
//! stream or from peers, appends each batch with one group commit, publishes the persisted
//! position, trims the stream below the lowest replica, and detects broker data loss (epoch gone
//! or changed, sequence below the log). Reconnects with backoff; the HTTP API keeps serving, and
//! a live replica stays ready while the broker is unreachable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Cancelled};
use tracing::{Instrument, error, info, info_span, warn};

use super::store::{LogStore, StoreError};
use super::{Phase, Replica, ReplicaStatus};
use crate::broker::{
    AnchorOutcome, Broker, BrokerEndpoint, BrokerError, BrokerOps, InstanceCheck, ReadStream,
};
use crate::log_client::{LogClient, LogClientError};
use crate::message::Message;
use crate::protocol::{
    FillStep, GapFill, anchor_position, caught_up_after_round, epoch_fits, next_limit, split_dense,
};
use crate::telemetry::redact_url;

/// A blocking read that has not answered this long after its block time is given up: the
/// connection is presumed dead (a partition sends no FIN) and is opened again.
const READ_GRACE: Duration = Duration::from_secs(2);
/// How often the watchdog checks whether the replica is cut off from the broker.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Most messages one XREAD returns.
const READ_COUNT: usize = 1000;
/// How long one XREAD blocks.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Messages copied from a peer per group commit.
const COPY_BATCH: usize = 4096;
/// How often the stream is trimmed at most.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, a replica that keeps persisting publishes its persisted position in
/// `chat:replicas` (read only for trimming, at most every [`TRIM_EVERY`]): one script call per
/// interval instead of one per read round (at a few hundred messages a second a round holds one
/// message). An idle round and a shutdown publish what is left.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often the Redis process is checked (`run_id`, script cache) while following.
const VALIDATE_EVERY: Duration = Duration::from_secs(1);
/// How long validating a new Redis process waits to persist what its stream still holds before
/// retiring the epoch anyway (positions that neither the stream nor a peer has are lost then).
const VALIDATE_CATCH_UP: Duration = Duration::from_secs(10);

/// Why following stopped (the caller decides whether to retry).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("shutting down")]
    Shutdown,
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Peer(#[from] LogClientError),
    #[error("{0}")]
    Diverged(String),
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("no answer to a blocking read from the broker within {0:?}; reconnecting")]
    Silent(Duration),
}

impl From<Cancelled> for FollowError {
    fn from(_: Cancelled) -> FollowError {
        FollowError::Shutdown
    }
}

/// The file in the data dir that remembers the broker epoch the log follows.
pub fn epoch_path(data_dir: &Path) -> PathBuf {
    data_dir.join("epoch")
}

/// The file that marked an epoch whose sequence went backwards under this log (older versions;
/// such an epoch is now retired at once, and the file is removed when an epoch is adopted).
fn lost_path(data_dir: &Path) -> PathBuf {
    data_dir.join("epoch-lost")
}

/// The file that records the highest position this replica granted the broker.
fn limit_path(data_dir: &Path) -> PathBuf {
    data_dir.join("limit")
}

/// Reads the recorded limit (0 when none was ever granted).
pub fn read_limit(data_dir: &Path) -> Result<u64, StoreError> {
    let path = limit_path(data_dir);
    match read_marker(&path)? {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| StoreError::Corrupt {
            path,
            offset: 0,
            reason: format!("limit file holds {v:?}, not a position"),
        }),
    }
}

/// Records `limit` durably (before the broker may use it) unless a higher one is recorded.
async fn record_limit(replica: &Replica, limit: u64) -> Result<(), FollowError> {
    if limit <= replica.limit() {
        return Ok(());
    }
    let data_dir = replica.settings().data_dir.clone();
    tokio::task::spawn_blocking(move || {
        write_marker(&data_dir, &limit_path(&data_dir), &limit.to_string())
    })
    .await
    .map_err(|e| FollowError::Task(e.to_string()))??;
    replica.set_limit(limit);
    Ok(())
}

/// Remembers (on disk) the broker's current write limit, so whichever replica anchors a broker
/// that lost its data knows every position that may have been handed out; then raises the limit
/// when it comes within half a lease of what this replica has persisted: records the new limit
/// on disk, then grants it.
async fn grant<B: BrokerOps>(
    replica: &Replica,
    broker: &B,
    epoch: &str,
    broker_limit: u64,
) -> Result<(), FollowError> {
    record_limit(replica, broker_limit).await?;
    let persisted = replica.store().persisted();
    let Some(limit) = next_limit(persisted, broker_limit, replica.settings().position_lease) else {
        return Ok(());
    };
    record_limit(replica, limit).await?;
    broker.grant(epoch, limit).await?;
    tracing::debug!(
        limit,
        persisted,
        "granted the broker positions up to the limit"
    );
    Ok(())
}

/// Reads the remembered epoch (none for a new log).
pub fn read_epoch(data_dir: &Path) -> Result<Option<String>, StoreError> {
    read_marker(&epoch_path(data_dir))
}

/// Reads a one-line marker file (none when absent or empty).
fn read_marker(path: &Path) -> Result<Option<String>, StoreError> {
    let path = path.to_owned();
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            op: "reading",
            path,
            source,
        }),
    }
}

/// Writes a one-line marker file durably (write, sync, rename, sync the directory).
fn write_marker(data_dir: &Path, path: &Path, epoch: &str) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Io {
            op,
            path: p,
            source,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(epoch.as_bytes()).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", data_dir))?;
    Ok(())
}

/// Runs the follower against the Redis broker at `broker` until shutdown (or until the log is
/// found diverged).
pub async fn run(replica: Replica, broker: BrokerEndpoint, shutdown: CancellationToken) {
    let url = redact_url(broker.url());
    let connect = move || {
        let endpoint = broker.clone();
        async move { Broker::connect(endpoint).await }
    };
    run_with(replica, connect, url, shutdown).await
}

/// Runs the follower against the broker that `connect` reaches (`what` names it in logs) until
/// shutdown (or until the log is found diverged): [`run`] over Redis, or over a
/// [`crate::broker::memory::MemoryBroker`] in tests.
pub async fn run_with<B, C, F>(
    replica: Replica,
    connect: C,
    what: String,
    shutdown: CancellationToken,
) where
    B: BrokerOps,
    C: Fn() -> F,
    F: std::future::Future<Output = Result<B, BrokerError>>,
{
    let span = info_span!("follower", replica_id = %replica.settings().replica_id);
    async move {
        tokio::spawn(watch_contact(replica.clone(), shutdown.clone()));
        if replica.store().persisted() == 0 && !replica.settings().peers.is_empty() {
            replica.set_phase(Phase::Bootstrapping);
            if let Err(FollowError::Shutdown) = bootstrap_from_peer(&replica, &shutdown).await {
                return;
            }
        }
        replica.set_phase(Phase::Starting);
        let mut backoff = Backoff::new();
        loop {
            let broker = match connect().await {
                Ok(b) => b,
                Err(e) => {
                    replica.metrics().broker_errors.inc();
                    warn!(error = %e, redis_url = %what, "cannot reach the broker; retrying with backoff");
                    if backoff.wait(&shutdown).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match session(&replica, &broker, &shutdown, &mut backoff).await {
                Err(FollowError::Shutdown) => return,
                Err(FollowError::Diverged(reason)) => {
                    error!(%reason, "the log diverged from the broker; stopped following (serving no history; its log is kept for inspection)");
                    replica.set_phase(Phase::Diverged);
                    replica.set_error(Some(reason));
                    shutdown.cancelled().await;
                    return;
                }
                Err(FollowError::Store(e)) => {
                    error!(error = %e, "the log cannot be written; retrying with backoff");
                    replica.set_phase(Phase::CatchingUp);
                    replica.set_error(Some(format!("log storage: {e}")));
                    if backoff.wait(&shutdown).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // A live replica stays live (and ready) while the broker is away, like a
                    // chat-server node: nothing can be accepted meanwhile, so what it persisted is
                    // still the whole history, and the nodes keep paging old messages through
                    // it. The next session re-reads the head and the epoch before going on.
                    replica.metrics().broker_errors.inc();
                    replica.note_broker(Some(&e.to_string()));
                    warn!(error = %e, phase = ?replica.phase(), "following interrupted; reconnecting with backoff");
                    if backoff.wait(&shutdown).await.is_err() {
                        return;
                    }
                }
                Ok(never) => match never {},
            }
        }
    }
    .instrument(span)
    .await
}

/// One connection's worth of following. Returns only with an error.
async fn session<B: BrokerOps>(
    replica: &Replica,
    broker: &B,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, FollowError> {
    let mut reader = broker.reader().await?;
    let mut epoch = validated_epoch(replica, broker, shutdown).await?;
    let mut last_validate = Instant::now();
    let mut published = replica.store().persisted();
    broker
        .publish_persisted(&replica.settings().replica_id, published)
        .await?;
    let mut last_publish = Instant::now();
    grant(replica, broker, &epoch, broker.state().await?.limit).await?;
    info!(
        epoch,
        persisted = replica.store().persisted(),
        "following the broker's stream"
    );
    let mut last_trim = Instant::now() - TRIM_EVERY;
    // When the last read started, and whether it came back full (more is waiting).
    let mut last_read: Option<(Instant, bool)> = None;
    loop {
        let persisted = replica.store().persisted();
        let pause = last_read.map_or(Duration::ZERO, |(at, full)| {
            linger_before_read(at.elapsed(), full, replica.settings().read_linger)
        });
        last_read = Some((Instant::now() + pause, false));
        let read = async {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            tokio::time::timeout(
                READ_BLOCK + READ_GRACE,
                reader.read_after(persisted, READ_COUNT, READ_BLOCK),
            )
            .await
        };
        let batch = tokio::select! {
            _ = shutdown.cancelled() => {
                // A stopped replica holds trimming back at what it published last: publish what
                // it persisted since (best effort, briefly), so it holds back no more than that.
                if persisted != published {
                    let publish = broker.publish_persisted(&replica.settings().replica_id, persisted);
                    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), publish).await {
                        warn!(error = %e, "could not publish the persisted position at shutdown");
                    }
                }
                return Err(FollowError::Shutdown);
            }
            r = read => match r {
                Ok(r) => r?,
                Err(_) => return Err(FollowError::Silent(READ_BLOCK + READ_GRACE)),
            },
        };
        backoff.reset();
        let state = broker.state().await?;
        replica.touch_broker();
        replica.set_head(state.head);
        if state.epoch.as_deref() != Some(epoch.as_str()) || state.head < persisted {
            // Whatever this read returned may belong to another history: drop it and sort out
            // the broker first.
            epoch = ensure_epoch(replica, broker, shutdown).await?;
            continue;
        }
        if last_validate.elapsed() >= VALIDATE_EVERY {
            last_validate = Instant::now();
            let validated = validated_epoch(replica, broker, shutdown).await?;
            if validated != epoch {
                // A new epoch: this read may belong to the old one.
                epoch = validated;
                continue;
            }
        }
        let read = batch.len();
        if let Some((_, full)) = last_read.as_mut() {
            *full = read >= READ_COUNT;
        }
        let split = split_dense(persisted, batch);
        append(replica, split.dense).await?;
        let gap_to = match split.gap {
            Some((gap, _)) => Some(gap.to),
            // Nothing new in the stream although the head is past us: the stream was trimmed
            // (or lost) below the head.
            None if replica.store().persisted() < state.head
                && persisted == replica.store().persisted() =>
            {
                Some(state.head)
            }
            None => None,
        };
        if let Some(to) = gap_to {
            repair(replica, broker, to, shutdown).await?;
        }
        let repaired = gap_to.is_some();
        let persisted = replica.store().persisted();
        if persisted != published && last_publish.elapsed() >= PUBLISH_EVERY {
            broker
                .publish_persisted(&replica.settings().replica_id, persisted)
                .await?;
            published = persisted;
            last_publish = Instant::now();
        }
        grant(replica, broker, &epoch, state.limit).await?;
        // Every write of this round went through: whatever the broker refused before is over.
        replica.note_broker(None);
        replica.update_lag();
        if replica.error().is_none() {
            let phase =
                if caught_up_after_round(read, READ_COUNT, repaired, persisted, replica.head()) {
                    Phase::Live
                } else {
                    Phase::CatchingUp
                };
            if replica.phase() != phase {
                info!(?phase, persisted, head = replica.head(), "phase changed");
            }
            replica.set_phase(phase);
        }
        if last_trim.elapsed() >= TRIM_EVERY {
            last_trim = Instant::now();
            trim(replica, broker).await?;
        }
    }
}

/// How long to wait before the next `XREAD` of the stream, given the time since the previous read
/// started, whether it came back full (`READ_COUNT` entries: more is waiting, read on at once) and
/// the replica's `--read-linger`: the rest of the linger, so a replica following a busy stream
/// reads (and group-commits, and asks the broker for its state) at most once per linger, in
/// batches of whatever arrived meanwhile, instead of once per message or two. A message written
/// more than a linger after the previous read began is read at once (a quiet stream is not
/// delayed); one written sooner waits at most the rest of the linger. Kafka's follower fetch
/// (`replica.fetch.wait.max.ms` with a minimum size) makes the same trade: a few milliseconds of
/// replication lag for a fraction of the per-round cost. The nodes never linger (they are on the
/// path from an accepted write to its subscribers).
pub fn linger_before_read(
    since_last_read: Duration,
    last_full: bool,
    linger: Duration,
) -> Duration {
    if last_full {
        Duration::ZERO
    } else {
        linger.saturating_sub(since_last_read)
    }
}

/// Makes sure the Redis process was validated (see `crate::broker`, "Broker instances"), then
/// that the broker has an epoch this log may follow ([`ensure_epoch`]), and returns it.
///
/// A validated process whose scripts are missing gets them loaded. A process that was never
/// validated (restarted, restored from an older copy, failed over to) may have lost writes it
/// acknowledged: when the broker is in the epoch this log follows, this log first persists
/// everything the stream still holds (for at most [`VALIDATE_CATCH_UP`]); then it retires the
/// epoch, whatever it is, and [`ensure_epoch`] anchors a new one past every position the previous
/// process may have handed out, which records this process as validated; the next round loads
/// the scripts, and nodes' writes go through. The process is checked before the epoch, so an
/// older epoch restored from a copy is retired, never adopted.
async fn validated_epoch<B: BrokerOps>(
    replica: &Replica,
    broker: &B,
    shutdown: &CancellationToken,
) -> Result<String, FollowError> {
    for _ in 0..8 {
        let (run_id, recorded) = match broker.check_instance().await? {
            InstanceCheck::Validated => return ensure_epoch(replica, broker, shutdown).await,
            InstanceCheck::Loaded => {
                info!(
                    "loaded the write scripts into the validated broker (its script cache had been flushed)"
                );
                return ensure_epoch(replica, broker, shutdown).await;
            }
            InstanceCheck::New { run_id, recorded } => (run_id, recorded),
        };
        let state = broker.state().await?;
        replica.set_head(state.head);
        if let Some(current) = &state.epoch {
            let what = format!(
                "the broker is a Redis process that was never validated (run_id {run_id}; epoch {current} \
                 was validated on {}): it restarted, was restored from a copy or failed over, and may \
                 have lost writes it acknowledged; re-anchoring past every position it may have handed out",
                recorded.as_deref().unwrap_or("none recorded")
            );
            note_broker_loss(replica, &what);
            let persisted = replica.store().persisted();
            if replica.epoch().as_deref() == Some(current.as_str()) && state.head > persisted {
                // What the copy still holds is history: persist it before the new epoch's base is
                // taken from this log.
                match tokio::time::timeout(
                    VALIDATE_CATCH_UP,
                    repair(replica, broker, state.head, shutdown),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => warn!(
                        head = state.head,
                        persisted = replica.store().persisted(),
                        "could not persist the restored stream up to its head; retiring the epoch anyway"
                    ),
                }
            }
            if broker.retire_instance(current).await? {
                info!(epoch = %current, %run_id, "retired the epoch of a broker process that was not validated");
            }
        }
        // Anchors a new epoch (recording this process as validated) when the broker has none.
        ensure_epoch(replica, broker, shutdown).await?;
    }
    Err(FollowError::Broker(BrokerError::Protocol(
        "the broker could not be validated after 8 attempts".to_owned(),
    )))
}

/// Watches the broker round trips: after [`crate::protocol::BROKER_SILENCE`] without one, asks
/// the peers how far they have persisted; if one holds positions past this replica, the others
/// still reach the broker and this replica is cut off: it reports that (so nodes page from a
/// peer) and is not ready until it hears from the broker again. A broker down for everyone leaves
/// a live replica ready.
async fn watch_contact(replica: Replica, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let Some(silence) = replica.broker_silence() else {
            continue;
        };
        if silence < crate::protocol::BROKER_SILENCE {
            if replica.cut_off().is_some() {
                info!("reached the broker again; no longer cut off");
                replica.set_cut_off(None);
            }
            continue;
        }
        let holds = replica.store().persisted();
        let peers = peer_statuses(&replica).await;
        let furthest = peers.iter().max_by_key(|(_, s)| s.persisted);
        let others = furthest.map(|(_, s)| s.persisted);
        let why = match (
            crate::protocol::is_cut_off(silence, holds, others),
            furthest,
        ) {
            (true, Some((url, s))) => Some(format!(
                "cut off from the broker for {}s while peer {} has persisted position {} past this \
                 replica's {holds}; not ready until the broker answers again",
                silence.as_secs(),
                redact_url(url),
                s.persisted
            )),
            _ => None,
        };
        if why.is_some() && replica.cut_off().is_none() {
            warn!(
                reason = why.as_deref().unwrap_or_default(),
                "cut off from the broker"
            );
        }
        replica.set_cut_off(why);
    }
}

/// Appends a dense batch (one group commit) on the blocking pool.
async fn append(replica: &Replica, batch: Vec<Message>) -> Result<(), FollowError> {
    if batch.is_empty() {
        return Ok(());
    }
    let store = replica.store().clone();
    let n = batch.len();
    let stats = tokio::task::spawn_blocking(move || store.append_batch(&batch))
        .await
        .map_err(|e| FollowError::Task(e.to_string()))??;
    let m = replica.metrics();
    m.appended.inc_by(n as u64);
    m.batch_size.observe(n as f64);
    m.fsync_seconds.observe(stats.sync.as_secs_f64());
    Ok(())
}

/// Makes sure the broker has an epoch this log may follow, and returns it:
/// - no epoch: anchor it past every position the old epoch may have handed out
///   ([`anchor_position`]: this log's persisted position or the highest limit any replica
///   recorded, whichever is higher), after copying from a reachable peer that is further; the
///   skipped positions are recorded as a void record;
/// - the epoch this log follows, head not below the log: fine;
/// - the same epoch with the head below the log (the broker went back): retire the epoch, so it
///   is anchored again past every handed-out position;
/// - another epoch: adopt it when it fits this log ([`epoch_fits`]; missing positions come from
///   peers or are void), else the log has diverged.
async fn ensure_epoch<B: BrokerOps>(
    replica: &Replica,
    broker: &B,
    shutdown: &CancellationToken,
) -> Result<String, FollowError> {
    let mut backoff = Backoff::new();
    loop {
        let state = broker.state().await?;
        replica.set_head(state.head);
        let persisted = replica.store().persisted();
        let known = replica.epoch();
        match (&state.epoch, &known) {
            (None, _) => {
                if let Some(previous) = &known {
                    let what = format!(
                        "the broker lost its data: epoch {previous} is gone (no epoch now); \
                         re-anchoring past every position it may have handed out"
                    );
                    note_broker_loss(replica, &what);
                }
                let (peers, unreachable) = peer_survey(replica).await;
                // A log with nothing to protect (a new cluster: nothing persisted, no limit
                // granted, no epoch followed) anchors alone, so the first replica of a
                // StatefulSet can start before the others exist.
                let has_history = persisted > 0 || replica.limit() > 0 || known.is_some();
                if has_history
                    && !unreachable.is_empty()
                    && !replica.settings().anchor_despite_unreachable_peers
                {
                    // A peer that cannot be asked may have recorded a higher limit: anchoring
                    // below it could hand a position out a second time. Wait for it.
                    let what = format!(
                        "not anchoring the broker while peer(s) {} cannot be asked for the limit they \
                         recorded (anchoring below it could hand a position out twice); start them, \
                         or drop a replica that is gone for good from --peer-url, or set \
                         --anchor-despite-unreachable-peers",
                        unreachable.join(", ")
                    );
                    warn!(reason = %what, "waiting for every peer before anchoring");
                    // Stay ready meanwhile: nothing can be written without an epoch, so this log
                    // is still the whole history, and an ordered StatefulSet only recreates the
                    // missing peer once this one is ready.
                    replica.set_broker_loss(what);
                    replica.set_error(None);
                    replica.set_phase(Phase::Live);
                    backoff.wait(shutdown).await?;
                    continue;
                }
                if let Some((url, peer_persisted)) = highest_peer(&peers, persisted) {
                    info!(peer = %redact_url(&url), peer_persisted, persisted, "a peer is further; copying from it before anchoring");
                    if let Err(e) = copy_from(replica, &url, u64::MAX).await {
                        warn!(peer = %redact_url(&url), error = %e, "copying from the peer failed; retrying");
                        backoff.wait(shutdown).await?;
                    }
                    continue;
                }
                let granted = peers
                    .iter()
                    .map(|(_, s)| s.limit.unwrap_or(0))
                    .fold(replica.limit(), u64::max);
                let anchor = anchor_position(persisted, granted);
                let limit = anchor.saturating_add(replica.settings().position_lease);
                record_limit(replica, limit).await?;
                match broker
                    .anchor(anchor, persisted, limit, known.as_deref())
                    .await
                {
                    Ok(AnchorOutcome::Anchored(epoch)) => {
                        if anchor > persisted {
                            append(replica, vec![Message::void(anchor)]).await?;
                        }
                        info!(
                            epoch,
                            anchor,
                            base = persisted,
                            void = anchor - persisted,
                            "anchored the broker past every position the old epoch may have handed out"
                        );
                        adopt(replica, &epoch)?;
                        replica.set_phase(Phase::CatchingUp);
                        replica.set_error(None);
                        return Ok(epoch);
                    }
                    // Someone else anchored meanwhile: look again.
                    Ok(AnchorOutcome::AlreadyAnchored(_)) => continue,
                    Err(BrokerError::Redis(e)) if e.code() == Some("SEQAHEAD") => {
                        let what = format!("cannot anchor the broker: {e}");
                        error!(reason = %what, "broker has a sequence but no epoch");
                        replica.set_phase(Phase::BrokerLost);
                        replica.set_error(Some(what));
                        backoff.wait(shutdown).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            (Some(epoch), Some(k)) if epoch == k => {
                if state.head < persisted {
                    // Positions past the head would be handed out again to other messages:
                    // retire this epoch so the broker is anchored past them.
                    let what = format!(
                        "the broker's sequence went backwards in epoch {epoch}: head {} is below this log's \
                         persisted position {persisted}; retiring the epoch",
                        state.head
                    );
                    note_broker_loss(replica, &what);
                    broker.retire(epoch, persisted).await?;
                    continue;
                }
                if replica.phase() == Phase::BrokerLost {
                    replica.set_phase(Phase::CatchingUp);
                }
                replica.set_error(None);
                return Ok(epoch.clone());
            }
            (Some(epoch), known) => {
                if let Some(previous) = known {
                    let what = format!(
                        "the broker's epoch changed from {previous} to {epoch} (base {}, anchor {}); \
                         this log is at {persisted}",
                        state.base, state.anchor
                    );
                    note_broker_loss(replica, &what);
                }
                if !epoch_fits(
                    known.is_some(),
                    persisted,
                    state.base,
                    state.anchor,
                    state.head,
                ) {
                    return Err(FollowError::Diverged(format!(
                        "this log holds positions up to {persisted}, past the base {} of the broker's epoch {epoch} \
                         (previous epoch {}); its history past {} may differ from the cluster's",
                        state.base,
                        known.as_deref().unwrap_or("none"),
                        state.base
                    )));
                }
                if known.is_some() {
                    info!(
                        epoch,
                        base = state.base,
                        anchor = state.anchor,
                        persisted,
                        "following the new epoch; missing positions come from peers or are void"
                    );
                }
                adopt(replica, epoch)?;
                replica.set_phase(Phase::CatchingUp);
                replica.set_error(None);
                return Ok(epoch.clone());
            }
        }
    }
}

fn note_broker_loss(replica: &Replica, what: &str) {
    if replica.error().as_deref() != Some(what) {
        error!(reason = %what, "broker data loss detected; stopped applying");
        replica.metrics().broker_losses.inc();
    }
    replica.set_phase(Phase::BrokerLost);
    replica.set_error(Some(what.to_owned()));
    replica.set_broker_loss(what.to_owned());
}

/// Follows `epoch` from now on, remembering it in the data dir.
fn adopt(replica: &Replica, epoch: &str) -> Result<(), FollowError> {
    let data_dir = &replica.settings().data_dir;
    if replica.epoch().as_deref() != Some(epoch) {
        write_marker(data_dir, &epoch_path(data_dir), epoch)?;
        replica.set_epoch(Some(epoch.to_owned()));
    }
    let lost = lost_path(data_dir);
    if lost.exists() {
        std::fs::remove_file(&lost).map_err(|source| StoreError::Io {
            op: "removing",
            path: lost,
            source,
        })?;
    }
    Ok(())
}

/// The status of every reachable peer (not this replica, not diverged).
async fn peer_statuses(replica: &Replica) -> Vec<(String, ReplicaStatus)> {
    peer_survey(replica).await.0
}

/// The status of every reachable peer (not this replica, not diverged), and the peer URLs that
/// did not answer.
async fn peer_survey(replica: &Replica) -> (Vec<(String, ReplicaStatus)>, Vec<String>) {
    let client = LogClient::new(replica.settings().peers.clone())
        .with_internal_token(replica.settings().internal_token.clone());
    let mut out = Vec::new();
    let mut unreachable = Vec::new();
    for url in client.urls() {
        match client.status_of(url).await {
            Ok(s) if s.replica_id == replica.settings().replica_id => {}
            Ok(s) if s.phase == Phase::Diverged => {}
            Ok(s) => out.push((url.clone(), s)),
            Err(e) => {
                tracing::debug!(peer = %redact_url(url), error = %e, "peer status unavailable");
                unreachable.push(url.clone());
            }
        }
    }
    (out, unreachable)
}

/// The peer with the highest persisted position above `than`, if any.
fn highest_peer(peers: &[(String, ReplicaStatus)], than: u64) -> Option<(String, u64)> {
    peers
        .iter()
        .filter(|(_, s)| s.persisted > than)
        .max_by_key(|(_, s)| s.persisted)
        .map(|(url, s)| (url.clone(), s.persisted))
}

/// Copies a peer's snapshot after this log's persisted position, up to `upto`. Returns how many
/// messages were appended (what was copied stays even when a later part fails).
async fn copy_from(replica: &Replica, url: &str, upto: u64) -> Result<u64, FollowError> {
    let client = LogClient::new([url.to_owned()])
        .with_internal_token(replica.settings().internal_token.clone());
    let after = replica.store().persisted();
    let mut snapshot = client.snapshot_from(url, after).await?;
    if let Some(id) = &snapshot.cluster_id {
        // Adopt the peer's cluster id, or refuse a peer of another cluster.
        replica.store().adopt_cluster_id(id, url)?;
    }
    let mut pending: Vec<Message> = Vec::new();
    let mut copied = 0u64;
    let mut last = after;
    while last < upto {
        let Some(batch) = snapshot.next_batch().await? else {
            break;
        };
        for m in batch {
            if m.position > upto {
                break;
            }
            last = m.position;
            pending.push(m);
        }
        if pending.len() >= COPY_BATCH {
            copied += pending.len() as u64;
            append(replica, std::mem::take(&mut pending)).await?;
        }
    }
    copied += pending.len() as u64;
    append(replica, pending).await?;
    replica.metrics().peer_messages.inc_by(copied);
    replica.update_lag();
    Ok(copied)
}

/// An empty replica copies the first peer with a non-empty history (best effort: what is missing
/// later is repaired from the stream or peers).
async fn bootstrap_from_peer(
    replica: &Replica,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    let client = LogClient::new(replica.settings().peers.clone())
        .with_internal_token(replica.settings().internal_token.clone());
    for url in client.urls() {
        if shutdown.is_cancelled() {
            return Err(FollowError::Shutdown);
        }
        let status = match client.status_of(url).await {
            Ok(s) => s,
            Err(e) => {
                info!(peer = %redact_url(url), error = %e, "peer not available for bootstrap");
                continue;
            }
        };
        if status.replica_id == replica.settings().replica_id
            || status.persisted == 0
            || status.phase == Phase::Diverged
        {
            continue;
        }
        let started = Instant::now();
        info!(peer = %redact_url(url), peer_persisted = status.persisted, "bootstrapping from a peer's snapshot");
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Err(FollowError::Shutdown),
            r = copy_from(replica, url, u64::MAX) => r,
        };
        match result {
            Ok(copied) => {
                info!(peer = %redact_url(url), copied, persisted = replica.store().persisted(), took_ms = started.elapsed().as_millis() as u64, "bootstrapped from peer");
                return Ok(());
            }
            Err(e) => {
                warn!(peer = %redact_url(url), error = %e, persisted = replica.store().persisted(), "bootstrap from peer failed; trying the next")
            }
        }
    }
    info!("no peer has history to copy; following the stream from the start");
    Ok(())
}

/// Fills this log up to `to`, from the stream if it still holds the positions, else from peers.
/// Waits (with backoff) while neither has them.
async fn repair<B: BrokerOps>(
    replica: &Replica,
    broker: &B,
    to: u64,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    let from = replica.store().persisted() + 1;
    let mut backoff = Backoff::new();
    let mut warned = false;
    let mut fill = GapFill::new(to);
    while replica.store().persisted() < to {
        let persisted = replica.store().persisted();
        // The epoch's base and anchor as the broker has them now (a void record is applied only
        // where this epoch was anchored).
        let state = broker.state().await?;
        match fill.next(persisted, state.base, state.anchor) {
            FillStep::Done => break,
            FillStep::Void(void) => append(replica, vec![Message::void(void)]).await?,
            FillStep::Stream => {
                let in_stream = broker.range(persisted, to, READ_COUNT).await?;
                append(replica, split_dense(persisted, in_stream).dense).await?;
            }
            FillStep::Elsewhere => copy_from_peers(replica, persisted, to).await,
            FillStep::Wait => {
                if !warned {
                    warn!(
                        from = persisted + 1,
                        to, "positions are neither in the stream nor at any peer yet; retrying"
                    );
                    warned = true;
                }
                // Waiting on a hole is not being caught up: a replica that was live says so
                // (`/readyz` 503) until the hole is filled. Found by running this follower
                // against the in-memory broker (`tests::a_stream_trimmed_past_…`).
                if replica.phase() == Phase::Live {
                    replica.set_phase(Phase::CatchingUp);
                }
                backoff.wait(shutdown).await?;
            }
        }
    }
    let m = replica.metrics();
    m.gaps_repaired.inc();
    m.gap_messages.inc_by(to + 1 - from);
    info!(from, to, "repaired a gap in the stream");
    Ok(())
}

/// Copies positions after `persisted` up to `to` from the first peer that has persisted further
/// (not itself, not diverged) and gives some; failures are logged, and the caller's next round
/// sees what arrived.
async fn copy_from_peers(replica: &Replica, persisted: u64, to: u64) {
    let client = LogClient::new(replica.settings().peers.clone())
        .with_internal_token(replica.settings().internal_token.clone());
    for url in client.urls() {
        match client.status_of(url).await {
            Ok(s)
                if s.replica_id != replica.settings().replica_id
                    && s.phase != Phase::Diverged
                    && s.persisted > persisted => {}
            _ => continue,
        }
        match copy_from(replica, url, to).await {
            Ok(n) if n > 0 => return,
            Ok(_) => {}
            Err(e) => warn!(peer = %redact_url(url), error = %e, "repairing from the peer failed"),
        }
    }
}

/// Trims the stream below the lowest persisted position of all registered replicas, keeping
/// `trim_keep` entries of slack.
async fn trim<B: BrokerOps>(replica: &Replica, broker: &B) -> Result<(), FollowError> {
    let replicas = broker.replicas().await?;
    let Some(min) = replicas.iter().map(|(_, p)| *p).min() else {
        return Ok(());
    };
    let keep = replica.settings().trim_keep;
    if min <= keep {
        return Ok(());
    }
    let upto = min - keep;
    let removed = broker.trim_through(upto).await?;
    if removed > 0 {
        let m = replica.metrics();
        m.trims.inc();
        m.trimmed_entries.inc_by(removed);
        tracing::debug!(upto, removed, lowest_replica = min, "trimmed the stream");
    }
    Ok(())
}

/// `replication-log forget-replica <ID>`: removes a replica from the set that holds trimming back.
pub async fn forget_replica(
    endpoint: &BrokerEndpoint,
    replica_id: &str,
) -> Result<bool, BrokerError> {
    let broker = Broker::connect(endpoint.clone()).await?;
    let before = broker.replicas().await?;
    let position = before
        .iter()
        .find(|(id, _)| id == replica_id)
        .map(|(_, p)| *p);
    let removed = broker.forget_replica(replica_id).await?;
    if removed {
        info!(
            replica_id,
            persisted = position.unwrap_or(0),
            "removed the replica from the set that holds stream trimming back"
        );
    } else {
        let known: Vec<&str> = before.iter().map(|(id, _)| id.as_str()).collect();
        warn!(
            replica_id,
            ?known,
            "no such replica registered; nothing removed"
        );
    }
    Ok(removed)
}

/// Opens the log on the blocking pool.
pub async fn open_store(
    dir: PathBuf,
    config: super::store::StoreConfig,
) -> Result<(LogStore, super::store::OpenReport), FollowError> {
    tokio::task::spawn_blocking(move || LogStore::open(&dir, config))
        .await
        .map_err(|e| FollowError::Task(e.to_string()))?
        .map_err(FollowError::from)
}

#[cfg(test)]
mod tests;
