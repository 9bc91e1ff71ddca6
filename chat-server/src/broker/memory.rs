//! An in-memory broker ([`MemoryBroker`]) with the semantics of the Redis one ([`super::Broker`]:
//! the same keys and the same checks as its Lua scripts, step for step) and faults injected on
//! demand, so the real follower code ([`crate::log::follower`]) can be run against every fault
//! a deployment meets — including the ones a real Redis cannot be made to produce on cue, such
//! as a reply lost after its command ran.
//!
//! What it models: the epoch, sequence, anchor, base, limit, previous and retired epoch, the
//! validated instance (`chat:instance`) and the process's own `run_id`, whether the process's
//! script cache holds the node's scripts, the stream (with the stream's last ID, which survives
//! trims as in Redis, so an `XADD` below it fails after `INCR` already ran), and the replica set.
//! What it leaves out: dedupe records and fences (the write path's, not a follower's), memory
//! limits, and the wire.
//!
//! Faults ([`MemoryBroker`] methods): [`wipe`](MemoryBroker::wipe) (`FLUSHALL`),
//! [`restart_from`](MemoryBroker::restart_from) (a new process from an older copy, or from an
//! empty one: a restart that lost everything), [`roll_back_in_place`](MemoryBroker::roll_back_in_place)
//! (the keys set back, same process), [`set_reachable`](MemoryBroker::set_reachable) (every call
//! fails at once, as on a refused connection), [`stall`](MemoryBroker::stall) (calls hang until
//! released, as a stopped Redis), [`lose_replies`](MemoryBroker::lose_replies) (the next calls
//! run, then their reply is lost), and [`trim_through`](BrokerOps::trim_through) with no slack.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{AnchorOutcome, BrokerError, BrokerOps, BrokerState, InstanceCheck, ReadStream};
use crate::message::Message;
use crate::protocol::{Instance, instance_check};

/// The keys of the broker (what a copy holds and a wipe clears).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// `chat:epoch`.
    pub epoch: Option<String>,
    /// `chat:seq`.
    pub seq: u64,
    /// `chat:anchor`.
    pub anchor: u64,
    /// `chat:base`.
    pub base: Option<u64>,
    /// `chat:limit`.
    pub limit: u64,
    /// `chat:previous`.
    pub previous: Option<String>,
    /// `chat:retired`.
    pub retired: Option<String>,
    /// `chat:instance`.
    pub instance: Option<String>,
    /// `chat:stream`, by position.
    pub stream: BTreeMap<u64, Message>,
    /// The stream's last ID (0 for a new stream); survives trims.
    pub last_id: u64,
    /// `chat:replicas`.
    pub replicas: BTreeMap<String, u64>,
}

/// The Redis process: its data, its id and its script cache.
#[derive(Debug)]
struct Process {
    keys: Keys,
    run_id: String,
    scripts_loaded: bool,
    /// Processes started so far (for new `run_id`s).
    runs: u64,
}

#[derive(Debug)]
struct Faults {
    reachable: bool,
    /// Calls that run and then lose their reply.
    lose_replies: u32,
}

/// A client of an in-memory broker (one "Redis process" at a time, shared by every client). Clones
/// share the client's faults; [`MemoryBroker::client`] is another client of the same process with
/// faults of its own (one component's connection cut, as a proxy in front of it would). See the
/// module documentation for what it models and the faults it injects.
#[derive(Clone)]
pub struct MemoryBroker {
    process: Arc<Mutex<Process>>,
    faults: Arc<Mutex<Faults>>,
    /// True while stalled: every call waits until it is false again.
    stalled: Arc<watch::Sender<bool>>,
    /// Woken on every change of the stream, for blocked readers.
    appended: Arc<Notify>,
    /// Blocking reads that returned entries, by every client of the process.
    reads: Arc<AtomicU64>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

fn unreachable() -> BrokerError {
    BrokerError::Redis(redis::RedisError::from(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )))
}

fn reply_lost() -> BrokerError {
    BrokerError::Redis(redis::RedisError::from(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )))
}

impl MemoryBroker {
    /// A new, empty broker process (no epoch: a replica anchors it).
    pub fn new() -> MemoryBroker {
        MemoryBroker {
            process: Arc::new(Mutex::new(Process {
                keys: Keys::default(),
                run_id: "run-1".to_owned(),
                scripts_loaded: false,
                runs: 1,
            })),
            faults: Arc::new(Mutex::new(Faults {
                reachable: true,
                lose_replies: 0,
            })),
            stalled: Arc::new(watch::channel(false).0),
            appended: Arc::new(Notify::new()),
            reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many blocking reads ([`ReadStream::read_after`]) returned entries so far, by every
    /// client of this process: the rounds its followers made.
    pub fn reads_answered(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn process(&self) -> MutexGuard<'_, Process> {
        // A panic while holding the lock is a test failure already; go on with the data.
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one command the way a client sees it: waits while stalled, fails at once when
    /// unreachable, runs `f` on the process, and loses the reply when told to.
    async fn call<T>(
        &self,
        f: impl FnOnce(&mut Process) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let mut stalled = self.stalled.subscribe();
        // The sender lives as long as `self`; an error cannot happen here.
        let _ = stalled.wait_for(|s| !*s).await;
        if !self.faults().reachable {
            return Err(unreachable());
        }
        let result = f(&mut self.process());
        self.appended.notify_waiters();
        let mut faults = self.faults();
        if faults.lose_replies > 0 {
            faults.lose_replies -= 1;
            return Err(reply_lost());
        }
        result
    }

    /// Another client of the same process, with faults of its own.
    pub fn client(&self) -> MemoryBroker {
        MemoryBroker {
            faults: Arc::new(Mutex::new(Faults {
                reachable: true,
                lose_replies: 0,
            })),
            ..self.clone()
        }
    }

    /// A copy of the keys (an RDB/AOF copy to restore from later).
    pub fn copy(&self) -> Keys {
        self.process().keys.clone()
    }

    /// `FLUSHALL`: every key gone, same process (its script cache stays).
    pub fn wipe(&self) {
        self.process().keys = Keys::default();
        self.appended.notify_waiters();
    }

    /// A new Redis process started from `keys` (an older copy, or [`Keys::default`] for a restart
    /// that lost everything): a new `run_id` and an empty script cache.
    pub fn restart_from(&self, keys: Keys) {
        let mut p = self.process();
        p.runs += 1;
        p.run_id = format!("run-{}", p.runs);
        p.scripts_loaded = false;
        p.keys = keys;
        drop(p);
        self.appended.notify_waiters();
    }

    /// The keys set back to `keys` in place: same process, scripts still loaded.
    pub fn roll_back_in_place(&self, keys: Keys) {
        self.process().keys = keys;
        self.appended.notify_waiters();
    }

    /// Whether this client's calls reach the broker (false: each fails at once, as on a refused
    /// connection).
    pub fn set_reachable(&self, reachable: bool) {
        self.faults().reachable = reachable;
        self.appended.notify_waiters();
    }

    /// While `stalled`, every client's calls wait (a stopped Redis); they go on when released.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    /// This client's next `n` calls run, then lose their reply (the caller sees a reset
    /// connection).
    pub fn lose_replies(&self, n: u32) {
        self.faults().lose_replies = n;
    }

    /// Sets the sequence by hand (`SET chat:seq`), as an operator might.
    pub fn set_seq(&self, seq: u64) {
        self.process().keys.seq = seq;
    }

    /// The write script (`WRITE_LUA` in [`super`]) without dedupe records and fences: `NOSCRIPT`,
    /// `NOEPOCH`, `EPOCH`, `BEHIND` (below the anchor, or below `holds`, the last position the
    /// writing node applied), `NOLIMIT`, then `INCR` and `XADD`, where `XADD` fails below the
    /// stream's last ID after `INCR` already ran. Returns the position.
    pub async fn write(
        &self,
        epoch: &str,
        holds: u64,
        message: Message,
    ) -> Result<u64, BrokerError> {
        self.call(|p| {
            if !p.scripts_loaded {
                return Err(BrokerError::NotValidated);
            }
            let k = &mut p.keys;
            let Some(current) = &k.epoch else {
                return Err(BrokerError::NotAnchored);
            };
            if current != epoch {
                return Err(BrokerError::EpochChanged(format!(
                    "the broker is in epoch {current}, not {epoch}"
                )));
            }
            if k.seq < k.anchor {
                return Err(BrokerError::WentBack(format!(
                    "the broker sequence {} is below the anchor {}",
                    k.seq, k.anchor
                )));
            }
            if k.seq < holds {
                return Err(BrokerError::WentBack(format!(
                    "the broker sequence {} is below position {holds} that this node already holds",
                    k.seq
                )));
            }
            if k.seq + 1 > k.limit {
                return Err(BrokerError::NoLimit(format!(
                    "cannot grant position {} yet",
                    k.seq + 1
                )));
            }
            k.seq += 1;
            let position = k.seq;
            if position <= k.last_id {
                return Err(BrokerError::Protocol(format!(
                    "XADD {position}-0 is not above the stream's last ID {}",
                    k.last_id
                )));
            }
            k.last_id = position;
            k.stream.insert(
                position,
                Message {
                    position,
                    ..message
                },
            );
            Ok(position)
        })
        .await
    }
}

fn state_of(k: &Keys) -> BrokerState {
    BrokerState {
        epoch: k.epoch.clone(),
        head: k.seq,
        anchor: k.anchor,
        base: k.base.unwrap_or(k.anchor),
        limit: k.limit,
        previous: k.previous.clone(),
    }
}

/// `XRANGE stream (after upto COUNT count` over a stream held by position (also the protocol
/// simulation's broker model).
pub(crate) fn xrange(
    stream: &BTreeMap<u64, Message>,
    after: u64,
    upto: u64,
    count: usize,
) -> Vec<Message> {
    if upto <= after {
        return Vec::new();
    }
    stream
        .range(after + 1..=upto)
        .take(count)
        .map(|(_, m)| m.clone())
        .collect()
}

/// A blocking reader of a [`MemoryBroker`]'s stream.
pub struct MemoryReader {
    broker: MemoryBroker,
}

impl ReadStream for MemoryReader {
    async fn read_after(
        &mut self,
        after: u64,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Message>, BrokerError> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.broker.appended.notified();
            let found = self
                .broker
                .call(|p| Ok(xrange(&p.keys.stream, after, u64::MAX, count)))
                .await?;
            if !found.is_empty() {
                self.broker.reads.fetch_add(1, Ordering::Relaxed);
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

impl BrokerOps for MemoryBroker {
    type Reader = MemoryReader;

    async fn reader(&self) -> Result<MemoryReader, BrokerError> {
        self.call(|_| Ok(())).await?;
        Ok(MemoryReader {
            broker: self.clone(),
        })
    }

    async fn state(&self) -> Result<BrokerState, BrokerError> {
        self.call(|p| Ok(state_of(&p.keys))).await
    }

    async fn range(
        &self,
        after: u64,
        upto: u64,
        count: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        self.call(|p| Ok(xrange(&p.keys.stream, after, upto, count)))
            .await
    }

    async fn check_instance(&self) -> Result<InstanceCheck, BrokerError> {
        self.call(|p| {
            let recorded = p.keys.instance.clone();
            Ok(
                match instance_check(p.scripts_loaded, recorded.as_deref(), &p.run_id) {
                    Instance::Validated => InstanceCheck::Validated,
                    Instance::Reload => {
                        p.scripts_loaded = true;
                        InstanceCheck::Loaded
                    }
                    Instance::New => InstanceCheck::New {
                        run_id: p.run_id.clone(),
                        recorded,
                    },
                },
            )
        })
        .await
    }

    async fn retire_instance(&self, epoch: &str) -> Result<bool, BrokerError> {
        self.call(|p| {
            let k = &mut p.keys;
            if k.epoch.as_deref() != Some(epoch) || k.instance.as_deref() == Some(p.run_id.as_str())
            {
                return Ok(false);
            }
            k.epoch = None;
            k.retired = Some(epoch.to_owned());
            Ok(true)
        })
        .await
    }

    async fn anchor(
        &self,
        anchor: u64,
        base: u64,
        limit: u64,
        followed: Option<&str>,
    ) -> Result<AnchorOutcome, BrokerError> {
        // As the Redis implementation: the new epoch's id is chosen by the caller's side.
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        self.call(|p| {
            let run_id = p.run_id.clone();
            let k = &mut p.keys;
            if let Some(current) = &k.epoch {
                return Ok(AnchorOutcome::AlreadyAnchored(current.clone()));
            }
            if k.seq > anchor {
                return Err(BrokerError::Protocol(format!(
                    "SEQAHEAD the broker sequence {} is ahead of the anchor {anchor}",
                    k.seq
                )));
            }
            k.previous = match (&k.retired, followed) {
                (Some(retired), Some(followed)) if retired == followed => Some(retired.clone()),
                _ => None,
            };
            let keep = if k.previous.is_some() { base } else { 0 };
            k.stream.retain(|position, _| *position <= keep);
            k.retired = None;
            k.seq = anchor;
            k.anchor = anchor;
            k.base = Some(base);
            k.limit = limit;
            k.instance = Some(run_id);
            k.epoch = Some(epoch.clone());
            Ok(AnchorOutcome::Anchored(epoch))
        })
        .await
    }

    async fn grant(&self, epoch: &str, limit: u64) -> Result<u64, BrokerError> {
        self.call(|p| {
            let k = &mut p.keys;
            if k.epoch.as_deref() != Some(epoch) {
                return Err(BrokerError::NotAnchored);
            }
            k.limit = k.limit.max(limit);
            Ok(k.limit)
        })
        .await
    }

    async fn retire(&self, epoch: &str, position: u64) -> Result<bool, BrokerError> {
        self.call(|p| {
            let k = &mut p.keys;
            if k.epoch.as_deref() != Some(epoch) || k.seq >= position {
                return Ok(false);
            }
            k.epoch = None;
            k.retired = Some(epoch.to_owned());
            Ok(true)
        })
        .await
    }

    async fn publish_persisted(&self, replica_id: &str, position: u64) -> Result<(), BrokerError> {
        self.call(|p| {
            p.keys.replicas.insert(replica_id.to_owned(), position);
            Ok(())
        })
        .await
    }

    async fn replicas(&self) -> Result<Vec<(String, u64)>, BrokerError> {
        self.call(|p| {
            Ok(p.keys
                .replicas
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect())
        })
        .await
    }

    async fn forget_replica(&self, replica_id: &str) -> Result<bool, BrokerError> {
        self.call(|p| Ok(p.keys.replicas.remove(replica_id).is_some()))
            .await
    }

    async fn trim_through(&self, upto: u64) -> Result<u64, BrokerError> {
        self.call(|p| {
            let before = p.keys.stream.len();
            p.keys.stream.retain(|position, _| *position > upto);
            Ok((before - p.keys.stream.len()) as u64)
        })
        .await
    }
}
