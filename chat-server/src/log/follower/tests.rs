//! The real replica follower ([`run_with`]) against the in-memory broker
//! ([`MemoryBroker`]), one fault at a time: a stream trimmed past the replica, a wipe, a restore
//! from an older copy, a sequence set back by hand, lost replies and a stall. Each test checks
//! what the protocol promises (docs/architecture.md): the log is dense, holds what the broker
//! acknowledged at the position it acknowledged it, and no position is ever handed out twice.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{linger_before_read, open_store, read_epoch, read_limit, run_with};
use crate::broker::memory::MemoryBroker;
use crate::broker::{BrokerError, BrokerOps, InstanceCheck};
use crate::limits::{ReadLimitConfig, ReplicaReads};
use crate::log::store::StoreConfig;
use crate::log::{Phase, Replica, ReplicaSettings};
use crate::message::Message;

/// Positions the broker may hand out past what the replica persisted.
const LEASE: u64 = 100;

/// A replica following `broker` (its own client of the in-memory process) from `dir`.
struct Follower {
    replica: Replica,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    async fn start(broker: &MemoryBroker, dir: &Path) -> Follower {
        Follower::start_lingering(broker, dir, Duration::ZERO).await
    }

    /// [`Follower::start`] with `--read-linger` set to `read_linger`.
    async fn start_lingering(broker: &MemoryBroker, dir: &Path, read_linger: Duration) -> Follower {
        let (store, _) = open_store(dir.to_owned(), StoreConfig::default())
            .await
            .expect("open the log");
        let settings = ReplicaSettings {
            replica_id: "log-0".to_owned(),
            data_dir: dir.to_owned(),
            peers: Vec::new(),
            trim_keep: 10,
            position_lease: LEASE,
            anchor_despite_unreachable_peers: false,
            read_linger,
            reads: ReplicaReads::new(&ReadLimitConfig {
                max_snapshots: 1,
                max_page_reads: 1,
                snapshot_send_timeout: Duration::from_secs(1),
            }),
            internal_token: None,
        };
        let replica = Replica::new(
            settings,
            Arc::new(store),
            read_epoch(dir).expect("read the epoch marker"),
        );
        replica.set_limit(read_limit(dir).expect("read the limit marker"));
        let shutdown = CancellationToken::new();
        let client = broker.clone();
        let connect = move || {
            let client = client.clone();
            // Like `Broker::connect`: fails when the broker cannot be reached.
            async move { client.state().await.map(|_| client) }
        };
        let task = tokio::spawn(run_with(
            replica.clone(),
            connect,
            "memory".to_owned(),
            shutdown.clone(),
        ));
        Follower {
            replica,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("the follower ends");
    }

    fn persisted(&self) -> u64 {
        self.replica.store().persisted()
    }

    /// Every record of the log (void records included).
    fn log(&self) -> Vec<Message> {
        self.replica
            .store()
            .messages_between(0, u64::MAX)
            .expect("read the log")
    }

    async fn wait_persisted(&self, position: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.persisted() < position {
            assert!(
                Instant::now() < deadline,
                "persisted {} (phase {:?}, error {:?}), waited for {position}",
                self.persisted(),
                self.replica.phase(),
                self.replica.error()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn message(text: &str) -> Message {
    Message {
        position: 0,
        channel: "c".to_owned(),
        id: text.to_owned(),
        author: "a".to_owned(),
        text: text.to_owned(),
        sent_at: 1,
    }
}

/// Writes `texts` as a node would: it loads the scripts into a validated process, names the last
/// position it holds (the highest it wrote, as if it applied its own writes), and retries what
/// the broker refuses while it stores nothing (not anchored or validated yet, limit not granted
/// yet, a sequence below what it holds). Returns each text's position.
async fn write_all(writer: &mut Writer, texts: &[String]) -> Vec<u64> {
    let Writer {
        client: writer,
        holds,
    } = writer;
    let mut positions: Vec<u64> = Vec::new();
    for text in texts {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "{text} was never accepted");
            let state = writer.state().await.expect("state");
            let Some(epoch) = state.epoch else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if let InstanceCheck::New { .. } = writer.check_instance().await.expect("instance") {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            match writer.write(&epoch, *holds, message(text)).await {
                Ok(p) => {
                    positions.push(p);
                    *holds = p;
                    break;
                }
                // Refusals that store nothing (an XADD below the stream's last ID after the
                // sequence was set back included: the node answers 503).
                Err(
                    BrokerError::NotAnchored
                    | BrokerError::NotValidated
                    | BrokerError::NoLimit(_)
                    | BrokerError::EpochChanged(_)
                    | BrokerError::WentBack(_)
                    | BrokerError::Protocol(_),
                ) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{text}: {e}"),
            }
        }
    }
    positions
}

/// A writing node: its client of the broker, and the last position it holds.
struct Writer {
    client: MemoryBroker,
    holds: u64,
}

impl Writer {
    fn new(broker: &MemoryBroker) -> Writer {
        Writer {
            client: broker.client(),
            holds: 0,
        }
    }
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The log's records are dense from 1 (void records count for the positions they cover).
fn assert_dense(log: &[Message], voids: &[(u64, u64)]) {
    let mut next = 1;
    for m in log {
        if m.is_void() {
            let (from, to) = voids
                .iter()
                .copied()
                .find(|(_, to)| *to == m.position)
                .unwrap_or_else(|| panic!("unexpected void record at {}", m.position));
            assert_eq!(next, from, "void {from}..={to} does not continue the log");
        } else {
            assert_eq!(m.position, next, "hole before {}", m.position);
        }
        next = m.position + 1;
    }
}

/// The text the log holds at each written position is the text written there.
fn assert_holds(log: &[Message], written: &[String], positions: &[u64]) {
    for (text, p) in written.iter().zip(positions) {
        let m = log
            .iter()
            .find(|m| m.position == *p)
            .unwrap_or_else(|| panic!("position {p} ({text}) missing from the log"));
        assert_eq!(&m.text, text, "position {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_replica_reads_a_busy_stream_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let linger = Duration::from_millis(100);
    let f = Follower::start_lingering(&broker, dir.path(), linger).await;
    write_all(&mut w, &texts("warm-up", 1)).await;
    f.wait_persisted(1).await;
    let reads_before = broker.reads_answered();

    // One message every 2 ms: a follower that reads again at once reads them one or two at a
    // time; one that lingers reads at most once per linger.
    let began = Instant::now();
    for text in texts("busy", 150) {
        write_all(&mut w, &[text]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f.wait_persisted(151).await;
    let took = began.elapsed();
    let reads = broker.reads_answered() - reads_before;
    let most = took.as_millis() / linger.as_millis() + 2;
    assert!(
        u128::from(reads) <= most,
        "{reads} reads in {took:?} with a {linger:?} linger (at most {most})"
    );
    assert_dense(&f.log(), &[]);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_the_replica_is_waited_for_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let writer = w.client.clone();
    let f = Follower::start(&broker, dir.path()).await;
    let first = texts("a", 50);
    write_all(&mut w, &first).await;
    f.wait_persisted(50).await;

    // Cut off, the replica misses 51..80; the stream is trimmed through 70 meanwhile (another
    // replica without slack, or an operator).
    broker.set_reachable(false);
    write_all(&mut w, &texts("b", 30)).await;
    writer.trim_through(70).await.unwrap();
    broker.set_reachable(true);

    // 51..70 are nowhere it can reach (no peers): it waits, holds nothing past 50, and does not
    // count itself live.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        f.persisted(),
        50,
        "skipped a hole the stream no longer holds"
    );
    assert_ne!(f.replica.phase(), Phase::Live);
    assert_dense(&f.log(), &[]);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_broker_is_anchored_past_every_position_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let writer = w.client.clone();
    let f = Follower::start(&broker, dir.path()).await;
    let before = texts("before", 40);
    let at_before = write_all(&mut w, &before).await;
    f.wait_persisted(40).await;
    let limit = writer.state().await.unwrap().limit;
    assert!(limit >= 40);

    writer.wipe();
    let after = texts("after", 10);
    let at_after = write_all(&mut w, &after).await;
    assert!(
        at_after.iter().all(|p| *p > limit),
        "positions handed out again after a wipe: {at_after:?} (limit was {limit})"
    );
    f.wait_persisted(*at_after.last().unwrap()).await;
    let log = f.log();
    assert_dense(&log, &[(41, at_after[0] - 1)]);
    assert_holds(&log, &before, &at_before);
    assert_holds(&log, &after, &at_after);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restored_from_an_older_copy_is_validated_and_anchored_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let writer = w.client.clone();
    let f = Follower::start(&broker, dir.path()).await;
    let kept = texts("kept", 20);
    let at_kept = write_all(&mut w, &kept).await;
    f.wait_persisted(20).await;
    let copy = writer.copy();

    // 21..30 are acknowledged while the replica is cut off; then the broker comes back from the
    // copy taken at 20: a new process (empty script cache), same epoch.
    broker.set_reachable(false);
    let lost = write_all(&mut w, &texts("lost", 10)).await;
    assert_eq!(lost, (21..=30).collect::<Vec<_>>());
    writer.restart_from(copy);
    broker.set_reachable(true);

    let new = texts("new", 10);
    let at_new = write_all(&mut w, &new).await;
    assert!(
        at_new.iter().all(|p| *p > 30),
        "positions handed out twice: {at_new:?}"
    );
    f.wait_persisted(*at_new.last().unwrap()).await;
    let log = f.log();
    assert_dense(&log, &[(21, at_new[0] - 1)]);
    assert_holds(&log, &kept, &at_kept);
    assert_holds(&log, &new, &at_new);
    assert!(
        f.replica
            .epoch()
            .is_some_and(|e| Some(e) == writer.copy().epoch),
        "the replica follows the new epoch"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_set_back_by_hand_retires_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let writer = w.client.clone();
    let f = Follower::start(&broker, dir.path()).await;
    let first = texts("first", 30);
    let at_first = write_all(&mut w, &first).await;
    f.wait_persisted(30).await;
    let old_epoch = writer.copy().epoch;

    writer.set_seq(10);
    let next = texts("next", 5);
    let at_next = write_all(&mut w, &next).await;
    assert!(
        at_next.iter().all(|p| *p > 30),
        "positions handed out twice: {at_next:?}"
    );
    assert_ne!(writer.copy().epoch, old_epoch, "the epoch was retired");
    f.wait_persisted(*at_next.last().unwrap()).await;
    let log = f.log();
    assert_dense(&log, &[(31, at_next[0] - 1)]);
    assert_holds(&log, &first, &at_first);
    assert_holds(&log, &next, &at_next);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_and_a_stall_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let writer = w.client.clone();
    let f = Follower::start(&broker, dir.path()).await;
    let all = texts("m", 400);
    let (head, tail) = all.split_at(200);
    let mut positions = write_all(&mut w, &head[..100]).await;

    // Replies lost now and then while messages flow: the calls ran (a read, a publish, a
    // grant), the replica saw a reset connection and starts its session again.
    let faults = {
        let broker = broker.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                broker.lose_replies(1);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    positions.extend(write_all(&mut w, &head[100..]).await);
    faults.await.unwrap();

    // A stall longer than a blocking read's grace (the process stopped, nothing answers), then
    // more messages.
    writer.stall(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    writer.stall(false);
    positions.extend(write_all(&mut w, tail).await);
    assert_eq!(positions, (1..=400).collect::<Vec<_>>());

    f.wait_persisted(400).await;
    let log = f.log();
    assert_dense(&log, &[]);
    assert_holds(&log, &all, &positions);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_rolled_back_in_place_below_the_replica_is_anchored_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = MemoryBroker::new();
    let mut w = Writer::new(&broker);
    let writer = w.client.clone();
    let f = Follower::start(&broker, dir.path()).await;
    let kept = texts("kept", 20);
    let at_kept = write_all(&mut w, &kept).await;
    let copy = writer.copy();
    let read = texts("read", 10);
    let at_read = write_all(&mut w, &read).await;
    f.wait_persisted(30).await;

    // The keys go back to the copy taken at 20, in the same process (scripts still loaded):
    // the replica, which persisted 30, sees the sequence below it and retires the epoch.
    writer.roll_back_in_place(copy);
    let new = texts("new", 5);
    let at_new = write_all(&mut w, &new).await;
    assert!(
        at_new.iter().all(|p| *p > 30),
        "positions handed out twice: {at_new:?}"
    );
    f.wait_persisted(*at_new.last().unwrap()).await;
    let log = f.log();
    assert_dense(&log, &[(31, at_new[0] - 1)]);
    assert_holds(&log, &kept, &at_kept);
    assert_holds(&log, &read, &at_read);
    assert_holds(&log, &new, &at_new);
    f.stop().await;
}

#[test]
fn linger_before_read_table() {
    let ms = Duration::from_millis;
    // (since the last read began, it came back full, linger) -> wait
    let cases = [
        (ms(0), false, ms(5), ms(5)),
        (ms(2), false, ms(5), ms(3)),
        (ms(5), false, ms(5), ms(0)),
        (ms(900), false, ms(5), ms(0)),
        // A full read: more is waiting; read on at once.
        (ms(1), true, ms(5), ms(0)),
        // No linger: never wait.
        (ms(0), false, ms(0), ms(0)),
    ];
    for (since, full, linger, want) in cases {
        assert_eq!(
            linger_before_read(since, full, linger),
            want,
            "{since:?} {full} {linger:?}"
        );
    }
}
