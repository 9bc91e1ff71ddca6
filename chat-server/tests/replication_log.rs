//! Integration tests of the `replication-log` binary against a real Redis: replicas following the
//! stream, crash and torn-tail recovery, peer bootstrap, trimming, broker outage and data loss.

mod support;

use chat_wire::redis_acl::RedisRole;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_server::broker::{Broker, BrokerError, BrokerOps};
use chat_server::message::{Message, NewMessage};
use futures::StreamExt;
use support::{LOG_BIN, Proc, RedisServer, free_port, http, metrics_text, snapshot, status};

const CHANNELS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

/// One replica process and where its data lives.
struct Log {
    proc: Proc,
    data: PathBuf,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A Redis, a scratch directory, and the ports and peer list of two replicas `log-a` and `log-b`.
struct Fixture {
    redis: RedisServer,
    dir: tempfile::TempDir,
    ports: [u16; 2],
    peers: String,
}

impl Fixture {
    fn new() -> Fixture {
        let ports = [free_port(), free_port()];
        Fixture {
            redis: RedisServer::start(),
            dir: tempfile::tempdir().unwrap(),
            peers: format!("{},{}", url(ports[0]), url(ports[1])),
            ports,
        }
    }

    /// Starts replica `log-a` (`index` 0) or `log-b` (1) with the extra flags; does not wait.
    fn start(&self, index: usize, extra: &[&str]) -> Log {
        let id = ["log-a", "log-b"][index];
        let data = self.dir.path().join(id);
        std::fs::create_dir_all(&data).expect("data dir");
        let args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{}", self.ports[index]),
            "--redis-url",
            &self.redis.url_as(RedisRole::ReplicationLog),
            "--data-dir",
            &data.display().to_string(),
            "--replica-id",
            id,
            "--peer-url",
            &self.peers,
            // A small lease keeps the positions after a re-anchoring easy to name.
            "--position-lease",
            &LEASE.to_string(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        Log {
            proc: Proc::spawn(id, LOG_BIN, args, self.ports[index], self.dir.path()),
            data,
        }
    }
}

/// Starts both replicas (each with its extra flags), waits until both are ready, and connects a
/// broker client.
async fn two_replicas(extra_a: &[&str], extra_b: &[&str]) -> (Fixture, Log, Log, Broker) {
    let fx = Fixture::new();
    let (a, b) = (fx.start(0, extra_a), fx.start(1, extra_b));
    ready(&a).await;
    ready(&b).await;
    let broker = connect(&fx.redis).await;
    (fx, a, b, broker)
}

/// Writes `n` messages spread over the channels, 32 at a time, retrying while the broker is
/// unavailable. Returns the positions the broker gave them.
async fn write_n(broker: &Broker, tag: &str, n: usize) -> Vec<u64> {
    let writes = (0..n).map(|i| {
        let broker = broker.clone();
        let msg = NewMessage {
            channel: CHANNELS[i % CHANNELS.len()].to_owned(),
            id: Some(format!("{tag}-{i}")),
            author: "tester".to_owned(),
            text: format!("{tag} message {i} {}", "x".repeat(i % 50)),
            scope: None,
        };
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                // A write names the epoch it belongs to (none yet: not anchored, retry).
                let epoch = broker.state().await.ok().and_then(|s| s.epoch);
                let written = match &epoch {
                    Some(epoch) => {
                        broker
                            .write(&msg, "unused", 1_764_000_000_000 + i as i64, 0, epoch)
                            .await
                    }
                    None => Err(BrokerError::NotAnchored),
                };
                match written {
                    Ok(outcome) => return outcome.position(),
                    Err(e) => {
                        assert!(Instant::now() < deadline, "write kept failing: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(32)
        .collect()
        .await
}

/// The replica's log cluster id (its data dir's `cluster-id` file).
fn cluster_id(l: &Log) -> String {
    let id = std::fs::read_to_string(l.data.join("cluster-id")).expect("cluster-id file");
    assert_eq!(id.trim().len(), 36, "{id:?}");
    id
}

async fn connect(redis: &RedisServer) -> Broker {
    Broker::connect(&redis.url()).await.expect("broker")
}

/// The raw `/snapshot` body, for byte-for-byte comparisons.
async fn snapshot_text(url: &str) -> String {
    let resp = http()
        .get(format!("{url}/snapshot?after=0"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("snapshot body")
}

/// Asserts that both replicas serve the same `/snapshot` bytes (printing their logs if not).
async fn assert_same_bytes(a: &Log, b: &Log) {
    let (ta, tb) = (
        snapshot_text(&a.proc.url).await,
        snapshot_text(&b.proc.url).await,
    );
    if ta != tb {
        dump(&[a, b]);
    }
    assert_eq!(
        ta, tb,
        "{} and {} hold different bytes",
        a.proc.name, b.proc.name
    );
}

/// Polls the replica's `/status` (`Null` while it does not answer) until `done` holds, for at most
/// `secs` seconds; returns the status that satisfied it.
async fn wait_status(
    l: &Log,
    secs: u64,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = match http().get(format!("{}/status", l.proc.url)).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if done(&s) {
            return s;
        }
        if Instant::now() > deadline {
            dump(&[l]);
            panic!("{}: not {what} after {secs} s: {s}", l.proc.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `--position-lease` every replica of these tests runs with.
const LEASE: u64 = 2000;

/// Asserts the positions of a snapshot (void records included) are exactly `want`.
fn assert_positions(history: &[Message], want: impl IntoIterator<Item = u64>) {
    let got: Vec<u64> = history.iter().map(|m| m.position).collect();
    let want: Vec<u64> = want.into_iter().collect();
    assert_eq!(got.len(), want.len(), "history length");
    assert!(got == want, "positions differ from what was expected");
}

fn assert_dense(history: &[Message], upto: u64) {
    assert_eq!(history.len() as u64, upto, "history length");
    for (i, m) in history.iter().enumerate() {
        assert_eq!(m.position, i as u64 + 1, "position at index {i}");
    }
}

fn dump(logs: &[&Log]) {
    for l in logs {
        let text = l.proc.log_text();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "===== {} =====\n{}",
            l.proc.name,
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
}

/// Waits until every replica's `/status` shows `persisted >= target` (a replica still starting
/// is retried); prints their logs first if one does not get there within 60 s.
async fn wait_persisted(logs: &[&Log], target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for l in logs {
        loop {
            let persisted = match http().get(format!("{}/status", l.proc.url)).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|s| s["persisted"].as_u64()),
                Err(_) => None,
            };
            if persisted.is_some_and(|p| p >= target) {
                break;
            }
            if Instant::now() > deadline {
                dump(logs);
                panic!("{} stuck at {persisted:?} (want {target})", l.proc.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the replica is ready; prints its log first if it does not get there.
async fn ready(l: &Log) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http().get(format!("{}/readyz", l.proc.url)).send().await
            && r.status().is_success()
        {
            return;
        }
        if Instant::now() > deadline {
            dump(&[l]);
            panic!("{} not ready after 30 s", l.proc.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_follow_the_stream_and_hold_identical_histories() {
    let (_fx, a, b, broker) = two_replicas(&["--segment-bytes", "65536"], &[]).await;
    let mut positions = write_n(&broker, "follow", 3000).await;
    positions.sort_unstable();
    assert_eq!(positions, (1..=3000).collect::<Vec<u64>>());
    wait_persisted(&[&a, &b], 3000).await;

    assert_same_bytes(&a, &b).await;
    let history = snapshot(&a.proc.url).await;
    assert_dense(&history, 3000);
    assert_eq!(
        cluster_id(&a),
        cluster_id(&b),
        "replicas started together agree"
    );
    assert!(
        std::fs::read_dir(a.data.join("segments")).unwrap().count() > 3,
        "segments rolled"
    );

    // Pages match a filter of the snapshot, on both replicas, and `after` skips.
    for channel in CHANNELS {
        let want: Vec<u64> = history
            .iter()
            .filter(|m| m.channel == channel)
            .map(|m| m.position)
            .collect();
        for l in [&a, &b] {
            let got: Vec<u64> = support::read_all(&l.proc.url, channel)
                .await
                .iter()
                .map(|m| m.position)
                .collect();
            assert_eq!(got, want, "{channel} on {}", l.proc.name);
        }
        let page: serde_json::Value = http()
            .get(format!(
                "{}/channels/{channel}/messages?after={}&limit=3",
                a.proc.url, want[10]
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["position"].as_u64().unwrap())
            .collect();
        assert_eq!(got, want[11..14].to_vec());
        assert_eq!(page["next"].as_u64(), Some(want[13]));
    }
    // The contract's other routes.
    let client = http();
    let r = client
        .get(format!("{}/messages/alpha", a.proc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in [
        "/channels/alpha/messages?after=x",
        "/channels/alpha/messages?limit=0",
        "/channels/-bad/messages",
        "/snapshot?after=-1",
    ] {
        let r = client
            .get(format!("{}{bad}", a.proc.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let r = client
        .get(format!("{}/snapshot?after=2990", a.proc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-snapshot-position"], "3000");
    assert_eq!(r.text().await.unwrap().lines().count(), 10);
    let r = client
        .get(format!("{}/snapshot?after=5000", a.proc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let s = status(&a.proc.url).await;
    assert_eq!(s["replica_id"], "log-a");
    assert_eq!(s["phase"], "live");
    assert_eq!(s["persisted"], 3000);
    assert_eq!(s["messages"], 3000);
    assert!(s["epoch"].is_string(), "{s}");
    let metrics = metrics_text(&a.proc.url).await;
    for name in [
        "replication_log_messages_appended_total 3000",
        "replication_log_fsync_duration_seconds_bucket",
        "replication_log_batch_size_messages_count",
        "replication_log_lag_messages 0",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    // Both replicas registered their persisted position (published at most every 100 ms while
    // they persist, and by the next idle round — 1 s — when they stop).
    let want = vec![("log-a".to_owned(), 3000), ("log-b".to_owned(), 3000)];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut replicas = broker.replicas().await.unwrap();
        replicas.sort();
        if replicas == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "published {replicas:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM drains and exits 0.
    let mut a = a;
    let exit = a.proc.terminate().expect("exit status");
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_load_restarts_byte_identical() {
    let (_fx, a, mut b, broker) = two_replicas(&[], &["--segment-bytes", "32768"]).await;
    let load = {
        let broker = broker.clone();
        tokio::spawn(async move { write_n(&broker, "crash", 6000).await })
    };
    // Kill b once it has some of the load, leave it down a moment, restart it.
    wait_persisted(&[&b], 1500).await;
    b.proc.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.proc.restart();
    let written = load.await.unwrap();
    assert_eq!(written.len(), 6000);
    wait_persisted(&[&a, &b], 6000).await;
    assert_same_bytes(&a, &b).await;
    assert_dense(&snapshot(&b.proc.url).await, 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_replica_bootstraps_from_a_peer_when_the_stream_was_trimmed() {
    let fx = Fixture::new();
    let a = fx.start(0, &["--trim-keep", "10"]);
    ready(&a).await;
    let broker = connect(&fx.redis).await;
    write_n(&broker, "boot", 2000).await;
    wait_persisted(&[&a], 2000).await;
    // The stream no longer holds the early history: only a peer can provide it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.stream_len().await.unwrap() > 100 {
        assert!(Instant::now() < deadline, "stream not trimmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = fx.start(1, &["--trim-keep", "10"]);
    ready(&b).await;
    write_n(&broker, "boot-after", 300).await;
    wait_persisted(&[&a, &b], 2300).await;
    assert_same_bytes(&a, &b).await;
    assert_dense(&snapshot(&b.proc.url).await, 2300);
    assert_eq!(cluster_id(&a), cluster_id(&b), "b adopted a's cluster id");
    assert!(
        b.proc.log_text().contains("bootstrapped from peer"),
        "{}",
        b.proc.log_text()
    );
    // Registering, publishing, granting and trimming: all within the replication-log user.
    fx.redis.assert_no_acl_denial();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_on_restart_and_refollowed() {
    let (_fx, a, mut b, broker) = two_replicas(&[], &["--segment-bytes", "16384"]).await;
    write_n(&broker, "torn", 800).await;
    wait_persisted(&[&a, &b], 800).await;
    b.proc.kill9();
    // Cut the last segment in the middle of its last record.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(b.data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(segments.len() > 1);
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    b.proc.restart();
    write_n(&broker, "torn-after", 200).await;
    wait_persisted(&[&a, &b], 1000).await;
    assert_same_bytes(&a, &b).await;
    let log = b.proc.log_text();
    assert!(log.contains("truncating a torn or corrupt tail"), "{log}");
    assert!(
        log.contains(&last.display().to_string()),
        "the warning names the file: {log}"
    );
}

/// Issue 9 (e): a bit flipped in the middle of the last segment of a stopped replica, with
/// records after it that passed their checksum and were acknowledged, makes the restart refuse:
/// it exits non-zero with one line naming the file, the offset and the positions, and truncates
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_of_the_last_segment_refuses_to_start() {
    let keep = ["--trim-keep", "10"];
    let (fx, a, mut b, broker) = two_replicas(&keep, &keep).await;
    write_n(&broker, "flip", 800).await;
    wait_persisted(&[&a, &b], 800).await;
    let exit = b.proc.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(b.data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.last().unwrap().clone();
    let first: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    assert!(
        bytes.starts_with(b"CHLOGSEG"),
        "written with a segment header"
    );
    // The record holding the middle byte: its offset and position.
    let middle = bytes.len() / 2;
    let (mut at, mut position) = (40, first);
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize + 8;
        if middle < at + len {
            break;
        }
        at += len;
        position += 1;
    }
    assert!(position < 800, "records follow the damaged one");
    bytes[middle] ^= 0x20;
    std::fs::write(&last, &bytes).unwrap();
    b.proc.restart();
    let status = b
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("the replica refuses to start and exits");
    assert!(!status.success(), "{status:?}");
    let log = b.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.starts_with("replication-log: "))
        .unwrap_or_else(|| panic!("no one-line reason: {log}"));
    assert!(line.contains("refusing to start: corrupt log"), "{line}");
    assert!(line.contains(&last.display().to_string()), "{line}");
    assert!(line.contains(&format!("at offset {at}:")), "{line}");
    assert!(
        line.contains(&format!("positions {position}..=800")),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "nothing was truncated"
    );
    assert!(!log.contains("truncating"), "{log}");

    // Opt-in repair: the damaged segment is moved aside and copied again from the peer (the
    // stream no longer holds those positions).
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.stream_len().await.unwrap() > 100 {
        assert!(Instant::now() < deadline, "stream not trimmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = fx.start(1, &["--trim-keep", "10", "--repair-from-peers"]);
    ready(&b).await;
    wait_persisted(&[&a, &b], 800).await;
    assert_same_bytes(&a, &b).await;
    let kept: Vec<PathBuf> = std::fs::read_dir(b.data.join("quarantine"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    let log = b.proc.log_text();
    assert!(
        log.contains("moving the segment and every later one aside"),
        "{log}"
    );
    assert!(log.contains("bootstrapped from peer"), "{log}");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes, "kept as it was");
}

/// Snapshots carry the log's cluster id, and a replica whose log has another id refuses to copy
/// that peer's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_is_refused() {
    let fx = Fixture::new();
    let a = fx.start(0, &[]);
    ready(&a).await;
    let broker = connect(&fx.redis).await;
    write_n(&broker, "theirs", 200).await;
    wait_persisted(&[&a], 200).await;
    let resp = http()
        .get(format!("{}/snapshot?after=190", a.proc.url))
        .send()
        .await
        .unwrap();
    let served = resp.headers()["x-log-cluster-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(served, cluster_id(&a).trim());
    let data = fx.dir.path().join("log-b");
    std::fs::create_dir_all(&data).unwrap();
    let ours = "6a1f0c1e-0000-4000-8000-000000000001";
    std::fs::write(data.join("cluster-id"), ours).unwrap();
    let b = fx.start(1, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("serves log cluster {served}, this log is cluster {ours}");
    while !b.proc.log_text().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no refusal: {}",
            b.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!b.proc.log_text().contains("bootstrapped from peer"));
    assert_eq!(cluster_id(&b).trim(), ours);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_the_stream_bounded_and_waits_for_a_stopped_replica() {
    let keep = ["--trim-keep", "100"];
    let (fx, a, mut b, broker) = two_replicas(&keep, &keep).await;
    let first_in_stream = |broker: Broker| async move {
        broker
            .range(0, u64::MAX, 1)
            .await
            .unwrap()
            .first()
            .map(|m| m.position)
    };
    let wait_len = |broker: Broker, max: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let len = broker.stream_len().await.unwrap();
            if len <= max {
                return len;
            }
            assert!(
                Instant::now() < deadline,
                "stream still holds {len} entries (want <= {max})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Live replicas keep the stream bounded while it grows.
    for round in 1..=3u64 {
        write_n(&broker, &format!("trim-{round}"), 1000).await;
        wait_persisted(&[&a, &b], round * 1000).await;
        wait_len(broker.clone(), 100).await;
    }
    // A stopped replica holds trimming back at its position.
    b.proc.kill9();
    write_n(&broker, "trim-4", 2000).await;
    wait_persisted(&[&a], 5000).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let first = first_in_stream(broker.clone()).await.unwrap();
    assert!(
        first <= 3001 - 100,
        "trimmed past the stopped replica: first entry {first}"
    );
    assert!(broker.stream_len().await.unwrap() >= 2000);
    // Forgetting it (an explicit, logged action) lets trimming go on.
    let out = std::process::Command::new(LOG_BIN)
        .args([
            "forget-replica",
            "log-b",
            "--redis-url",
            &fx.redis.url_as(RedisRole::ReplicationLog),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("removed the replica"),
        "{out:?}"
    );
    write_n(&broker, "trim-5", 10).await;
    wait_len(broker.clone(), 110).await;
    assert_eq!(broker.replicas().await.unwrap().len(), 1);
    // The forgotten replica comes back, re-registers and repairs from its peer.
    b.proc.restart();
    ready(&b).await;
    wait_persisted(&[&b], 5010).await;
    assert_same_bytes(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_broker_is_detected_reported_and_re_anchored() {
    let (mut fx, a, b, broker) = two_replicas(&[], &[]).await;
    write_n(&broker, "before", 1000).await;
    wait_persisted(&[&a, &b], 1000).await;
    let old_epoch = status(&a.proc.url).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    fx.redis.wipe();
    // A replica re-anchors the broker past every position the old epoch could have handed out
    // (the limit it recorded: LEASE, or more if an anchoring attempt was retried after recording
    // a higher one): positions 1001..anchor are void, the order continues after.
    let broker = connect(&fx.redis).await;
    let positions = write_n(&broker, "after", 500).await;
    assert!(
        positions.iter().all(|p| *p > 1000),
        "positions reused after the wipe"
    );
    let state = broker.state().await.unwrap();
    assert_eq!(state.base, 1000);
    assert!(state.anchor >= LEASE, "{state:?}");
    let anchor = state.anchor;
    assert!(positions.iter().all(|p| *p > anchor), "positions reused");
    wait_persisted(&[&a, &b], anchor + 500).await;
    let new_epoch = state.epoch.unwrap();
    assert_ne!(new_epoch, old_epoch);
    for l in [&a, &b] {
        let s = status(&l.proc.url).await;
        assert_eq!(s["epoch"], new_epoch.as_str(), "{s}");
        let loss = s["broker_loss"].as_str().unwrap_or_default();
        assert!(
            loss.contains(&old_epoch),
            "{}: broker loss not reported: {s}",
            l.proc.name
        );
        assert!(
            l.proc.log_text().contains("broker data loss detected"),
            "{}",
            l.proc.log_text()
        );
    }
    assert_same_bytes(&a, &b).await;
    let history = snapshot(&a.proc.url).await;
    assert_positions(
        &history,
        (1..=1000).chain([anchor]).chain(anchor + 1..=anchor + 500),
    );
    assert!(history[1000].is_void(), "{:?}", history[1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_ahead_of_a_new_anchor_reports_diverged() {
    // b may anchor without asking a (the override for a replica that is gone for good).
    let (mut fx, mut a, mut b, broker) =
        two_replicas(&[], &["--anchor-despite-unreachable-peers"]).await;
    write_n(&broker, "one", 300).await;
    wait_persisted(&[&b], 300).await;
    b.proc.kill9();
    write_n(&broker, "two", 200).await;
    wait_persisted(&[&a], 500).await;
    // a (at 500) is down when the broker loses its data; b (at 300) anchors it at 300.
    a.proc.kill9();
    fx.redis.wipe();
    b.proc.restart();
    ready(&b).await;
    let broker = connect(&fx.redis).await;
    write_n(&broker, "three", 50).await;
    let state = broker.state().await.unwrap();
    assert_eq!(state.base, 300);
    assert!(state.anchor >= LEASE, "{state:?}");
    a.proc.restart();
    let s = wait_status(&a, 30, "diverged", |s| s["phase"] == "diverged").await;
    assert!(
        s["error"].as_str().unwrap().contains("past the base 300"),
        "{s}"
    );
    let r = http()
        .get(format!("{}/readyz", a.proc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Its history up to 500 is kept untouched for an operator to inspect, but served to nobody:
    // a node or peer copying it would take in positions the cluster declared lost.
    assert_eq!(status(&a.proc.url).await["persisted"], 500);
    for path in ["/snapshot?after=0", "/channels/alpha/messages?after=0"] {
        let r = http()
            .get(format!("{}{path}", a.proc.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("diverged"), "{path}: {body}");
    }
    // b serves the cluster's history.
    assert_eq!(
        http()
            .get(format!("{}/snapshot?after=0", b.proc.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_going_backwards_retires_the_epoch_and_re_anchors_past_it() {
    let fx = Fixture::new();
    // The fixture lists log-b as a peer, which this test never starts.
    let a = fx.start(0, &["--anchor-despite-unreachable-peers"]);
    ready(&a).await;
    let broker = connect(&fx.redis).await;
    write_n(&broker, "seq", 300).await;
    wait_persisted(&[&a], 300).await;
    let old_epoch = broker.state().await.unwrap().epoch.unwrap();
    // The broker's sequence goes back below what the log persisted (as after a lossy restart,
    // a restore from an older copy, or a reset by hand), keeping its epoch.
    let mut conn = fx.redis.conn();
    redis::cmd("SET")
        .arg("chat:seq")
        .arg(100)
        .query::<()>(&mut conn)
        .unwrap();
    // The replica retires that epoch and anchors a new one past every position handed out: no
    // position 101..300 is ever given to a second message.
    let s = wait_status(&a, 20, "re-anchored", |s| {
        s["epoch"].as_str().is_some_and(|e| e != old_epoch) && s["phase"] == "live"
    })
    .await;
    assert!(
        s["broker_loss"].as_str().unwrap().contains(&old_epoch),
        "{s}"
    );
    assert!(a.proc.log_text().contains("went backwards"));
    let state = broker.state().await.unwrap();
    assert_eq!(state.base, 300);
    assert!(state.anchor >= LEASE, "{state:?}");
    let anchor = state.anchor;
    let positions = write_n(&broker, "seq-after", 20).await;
    assert!(positions.iter().all(|p| *p > anchor), "{positions:?}");
    wait_persisted(&[&a], anchor + 20).await;
    assert!(status(&a.proc.url).await["error"].is_null());
    let history = snapshot(&a.proc.url).await;
    assert_positions(
        &history,
        (1..=300).chain([anchor]).chain(anchor + 1..=anchor + 20),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replica_stays_ready_and_serves_reads_while_the_broker_is_down() {
    let (mut fx, a, b, broker) = two_replicas(&[], &[]).await;
    write_n(&broker, "up", 500).await;
    wait_persisted(&[&a, &b], 500).await;
    fx.redis.kill();
    // Long enough for the followers' blocked reads to fail and a few reconnects to be refused.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for l in [&a, &b] {
        let r = http()
            .get(format!("{}/readyz", l.proc.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{} unready without a broker", l.proc.name);
        assert_eq!(status(&l.proc.url).await["phase"], "live");
        assert_dense(&snapshot(&l.proc.url).await, 500);
        let log = l.proc.log_text();
        assert!(
            log.contains("following interrupted") || log.contains("cannot reach the broker"),
            "{} did not notice the broker going away: {log}",
            l.proc.name
        );
    }
    // The broker comes back with its data (AOF), as a new Redis process: writes are refused
    // until a replica validated it (it cannot know whether the process restarted from all its
    // data), which anchors a new epoch on the history the stream still holds (1..500) and
    // continues past every position the previous process may have handed out.
    fx.redis.restart();
    let broker = connect(&fx.redis).await;
    let positions = write_n(&broker, "back", 100).await;
    let state = broker.state().await.unwrap();
    assert_eq!(state.base, 500, "{state:?}");
    assert!(state.anchor >= 500, "{state:?}");
    assert!(
        positions.iter().all(|p| *p > state.anchor),
        "{positions:?} {state:?}"
    );
    let anchor = state.anchor;
    wait_persisted(&[&a, &b], anchor + 100).await;
    assert_same_bytes(&a, &b).await;
    let void = (anchor > 500).then_some(anchor);
    assert_positions(
        &snapshot(&a.proc.url).await,
        (1..=500).chain(void).chain(anchor + 1..=anchor + 100),
    );
    let logs = a.proc.log_text() + &b.proc.log_text();
    assert!(logs.contains("never validated"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_broker_is_anchored_only_once_every_peer_could_be_asked() {
    let (mut fx, mut a, b, broker) = two_replicas(&[], &[]).await;
    write_n(&broker, "before", 300).await;
    wait_persisted(&[&a, &b], 300).await;
    // a is down when the broker loses its data: b cannot know the limit a recorded.
    a.proc.kill9();
    fx.redis.wipe();
    let s = wait_status(&b, 20, "waiting for a", |s| {
        s["broker_loss"]
            .as_str()
            .is_some_and(|l| l.contains("not anchoring"))
    })
    .await;
    assert!(
        s["broker_loss"].as_str().unwrap().contains(&a.proc.url),
        "the unreachable peer is named: {s}"
    );
    let broker = connect(&fx.redis).await;
    assert_eq!(
        broker.state().await.unwrap().epoch,
        None,
        "anchored without a"
    );
    // b stays ready meanwhile (its log is the whole history; nothing can be written).
    let r = http()
        .get(format!("{}/readyz", b.proc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    a.proc.restart();
    let positions = write_n(&broker, "after", 20).await;
    let state = broker.state().await.unwrap();
    assert_eq!(state.base, 300, "{state:?}");
    assert!(state.anchor >= LEASE, "{state:?}");
    assert!(positions.iter().all(|p| *p > state.anchor), "{positions:?}");
    wait_persisted(&[&a, &b], state.anchor + 20).await;
    assert_same_bytes(&a, &b).await;
}
