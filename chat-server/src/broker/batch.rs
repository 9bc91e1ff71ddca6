//! Write batching: owns the queue between a node's writers and the broker, and the one task per
//! [`super::Broker`] that drains it. The task keeps up to [`MAX_IN_FLIGHT`] batches in flight;
//! whenever one has room it takes every write queued meanwhile (up to [`MAX_BATCH`]) and sends
//! them as one run of the write script ([`super::WRITE_LUA`]), the way a log's group commit
//! amortizes one fsync over every record that arrived during the last. Under light load a batch
//! is one write, sent at once; under load batches grow with the round trip, so the broker pays
//! the script call, the state `MGET`, `TIME` and one reply per batch instead of per write (issue
//! 14: the broker's single thread is what every write shares).
//!
//! Batching changes no answer: the script checks and applies each write in order as if it ran
//! alone, and replies one entry per write ([`parse_reply`]). A reply that is lost for the batch
//! is lost for each of its writes, and each caller resolves its own write by its dedupe record
//! and fence ([`super::Broker::write`]), exactly as a single write. A write whose caller stopped
//! waiting is not sent (its caller resolves it and fences its token); a write whose deadline
//! passed while queued is refused without being sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::histogram::Histogram;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::{ANCHOR, BrokerError, Call, EPOCH, LIMIT, SEQ, STREAM, WRITE_WAIT, classify};
use super::{as_array, as_string, parse_record, proto};
use crate::message::now_millis;

/// The most writes one run of the write script carries. At about 18 µs of broker time per write
/// (`INFO commandstats`, BENCHMARKS.md), a full batch holds the broker's thread for about a
/// millisecond: the same work as 64 single runs, not interleaved with other clients.
pub const MAX_BATCH: usize = 64;

/// How many batches may be in flight at once. Two keep the broker busy while a reply travels back
/// (a write that arrives while one batch is in flight goes at once instead of waiting a round
/// trip) and still let batches grow under load.
pub const MAX_IN_FLIGHT: usize = 2;

/// How many writes may wait for the batch task; a writer waits for room (within its
/// [`WRITE_WAIT`]) when it is full.
const QUEUE_DEPTH: usize = 4096;

/// One write as the write script takes it: its three keys and eleven arguments.
#[derive(Debug, Clone)]
pub(crate) struct QueuedWrite {
    /// The dedupe record key (`chat:idem:…`).
    pub key: String,
    /// The fence key of the write's token (`chat:fence:…`).
    pub fence: String,
    /// The previous version's record key (`chat:dedupe:…`).
    pub legacy: String,
    pub channel: String,
    pub id: String,
    pub author: String,
    pub text: String,
    /// Unix milliseconds.
    pub sent_at: i64,
    /// The dedupe record's time to live, seconds.
    pub ttl_secs: u64,
    /// Unix milliseconds (node clock) after which the script refuses the write.
    pub deadline: i64,
    pub token: String,
    /// The last position the writing node applied.
    pub holds: u64,
    /// The broker epoch the writing node follows.
    pub epoch: String,
    /// Whether the client chose the id (only then are dedupe records looked up).
    pub chosen: bool,
}

/// A queued write and where its [`Call`] goes.
pub(crate) struct Pending {
    pub write: QueuedWrite,
    pub reply: oneshot::Sender<Call>,
}

/// The `EVALSHA` of the write script `hash` for `writes` (at least one): KEYS stream, seq,
/// epoch, limit, anchor, then three per write; ARGV eleven per write (see [`super::WRITE_LUA`]).
pub(crate) fn command(hash: &str, writes: &[&QueuedWrite]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(hash)
        .arg(5 + 3 * writes.len())
        .arg(STREAM)
        .arg(SEQ)
        .arg(EPOCH)
        .arg(LIMIT)
        .arg(ANCHOR);
    for w in writes {
        cmd.arg(&w.key).arg(&w.fence).arg(&w.legacy);
    }
    for w in writes {
        cmd.arg(&w.channel)
            .arg(&w.id)
            .arg(&w.author)
            .arg(&w.text)
            .arg(w.sent_at)
            .arg(w.ttl_secs)
            .arg(w.deadline)
            .arg(&w.token)
            .arg(w.holds)
            .arg(&w.epoch)
            .arg(if w.chosen { "1" } else { "0" });
    }
    cmd
}

/// The refusal the write script names by `code` for one write (it stored nothing for it), or
/// `None` for a code it never sends.
fn refusal(code: &str, detail: &str) -> Option<BrokerError> {
    let detail = detail.to_owned();
    Some(match code {
        "NOEPOCH" => BrokerError::NotAnchored,
        "EPOCH" => BrokerError::EpochChanged(detail),
        "FENCED" => BrokerError::Fenced,
        "DEADLINE" => BrokerError::DeadlinePassed,
        "BEHIND" => BrokerError::WentBack(detail),
        "NOLIMIT" => BrokerError::NoLimit(detail),
        _ => return None,
    })
}

/// The script's reply to a batch of `n` writes: one [`Call`] per write, in order. A reply of
/// another shape says nothing certain about any write: each is [`Call::Ambiguous`] (its caller
/// resolves it).
pub(crate) fn parse_reply(reply: Value, n: usize) -> Vec<Call> {
    match parse_entries(reply, n) {
        Ok(calls) => calls,
        Err(e) => vec![Call::Ambiguous(e.to_string()); n],
    }
}

fn parse_entries(reply: Value, n: usize) -> Result<Vec<Call>, BrokerError> {
    let entries = as_array(reply)?;
    if entries.len() != n {
        return Err(proto(&format!(
            "{} entries in the reply to a batch of {n} writes",
            entries.len()
        )));
    }
    entries.into_iter().map(parse_entry).collect()
}

fn parse_entry(entry: Value) -> Result<Call, BrokerError> {
    let items = as_array(entry)?;
    let text = |i: usize| items.get(i).and_then(as_string);
    match items.first() {
        Some(Value::Int(1)) => items
            .get(1)
            .and_then(super::as_u64)
            .map(Call::Applied)
            .ok_or_else(|| proto("write position")),
        Some(Value::Int(0)) => Ok(Call::Existing(parse_record(&items[1..])?)),
        Some(Value::Int(-1)) => {
            let code = text(1).ok_or_else(|| proto("refusal code"))?;
            refusal(&code, &text(2).unwrap_or_default())
                .map(Call::Refused)
                .ok_or_else(|| proto(&format!("refusal code {code}")))
        }
        _ => Err(proto("write flag")),
    }
}

/// Starts the batch task for a node's connection and returns its queue; the number of writes of
/// every batch sent goes to `batch_sizes`. The task ends when every sender is dropped.
pub(crate) fn spawn(
    conn: ConnectionManager,
    hash: String,
    scripts_missing: Arc<AtomicBool>,
    batch_sizes: Histogram,
) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(run(conn, hash, scripts_missing, batch_sizes, rx));
    tx
}

async fn run(
    conn: ConnectionManager,
    hash: String,
    scripts_missing: Arc<AtomicBool>,
    batch_sizes: Histogram,
    mut queue: mpsc::Receiver<Pending>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        tokio::select! {
            // Room for another batch: take what is queued (waiting for the first).
            n = queue.recv_many(&mut batch, MAX_BATCH), if in_flight.len() < MAX_IN_FLIGHT => {
                if n == 0 {
                    break;
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
        }
        let sending = sendable(batch, now_millis());
        if sending.is_empty() {
            continue;
        }
        batch_sizes.observe(sending.len() as f64);
        in_flight.push(send(conn.clone(), &hash, sending, &scripts_missing));
    }
    while in_flight.next().await.is_some() {}
}

/// The writes of `batch` worth sending at `now` (Unix ms); the others are answered here: a write
/// whose caller stopped waiting is dropped (its caller resolves it, and the fence keeps it from
/// ever applying: not sending it is the same answer, cheaper), a write past its deadline is
/// refused unsent.
fn sendable(batch: Vec<Pending>, now: i64) -> Vec<Pending> {
    let mut sending = Vec::with_capacity(batch.len());
    for p in batch {
        if p.reply.is_closed() {
            continue;
        }
        if now > p.write.deadline {
            let _ = p.reply.send(Call::Refused(BrokerError::QueuedPastDeadline));
            continue;
        }
        sending.push(p);
    }
    sending
}

/// One run of the write script for `sending`; each write's [`Call`] goes to its caller.
async fn send(
    mut conn: ConnectionManager,
    hash: &str,
    sending: Vec<Pending>,
    scripts_missing: &AtomicBool,
) {
    let writes: Vec<&QueuedWrite> = sending.iter().map(|p| &p.write).collect();
    let cmd = command(hash, &writes);
    let calls = match tokio::time::timeout(WRITE_WAIT, cmd.query_async::<Value>(&mut conn)).await {
        Err(_) => vec![
            Call::Ambiguous(format!(
                "no reply from redis within {}s",
                WRITE_WAIT.as_secs()
            ));
            sending.len()
        ],
        Ok(Err(e)) => vec![classify(e); sending.len()],
        Ok(Ok(v)) => parse_reply(v, sending.len()),
    };
    if matches!(
        calls.first(),
        Some(Call::Refused(BrokerError::NotValidated))
    ) {
        scripts_missing.store(true, Ordering::Relaxed);
    }
    for (p, call) in sending.into_iter().zip(calls) {
        let _ = p.reply.send(call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn refusal_codes_table() {
        let rows: &[(&str, Option<&str>)] = &[
            ("NOEPOCH", Some("the broker has no epoch yet")),
            ("EPOCH", Some("the broker changed epoch: d")),
            ("FENCED", Some("abandoned by its node")),
            ("DEADLINE", Some("after its 4s deadline")),
            ("BEHIND", Some("the broker went back: d")),
            ("NOLIMIT", Some("the replication log is behind: d")),
            ("OOM", None),
            ("", None),
        ];
        for (code, says) in rows {
            let got = refusal(code, "d").map(|e| e.to_string());
            match (says, &got) {
                (Some(s), Some(g)) => assert!(g.contains(s), "{code}: {g}"),
                (None, None) => {}
                _ => panic!("{code}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_batch_reply_gives_each_write_its_own_answer() {
        let int = Value::Int;
        let reply = Value::Array(vec![
            Value::Array(vec![int(1), int(9)]),
            Value::Array(vec![
                int(0),
                bulk("7"),
                bulk("5"),
                bulk("tok"),
                bulk("ann"),
                Value::Nil,
            ]),
            Value::Array(vec![int(-1), bulk("NOLIMIT"), bulk("grant 10")]),
            Value::Array(vec![int(1), int(10)]),
        ]);
        let calls = parse_reply(reply, 4);
        assert!(matches!(calls[0], Call::Applied(9)), "{calls:?}");
        assert!(
            matches!(&calls[1], Call::Existing(r) if r.position == 7 && r.text.is_none()),
            "{calls:?}"
        );
        assert!(
            matches!(&calls[2], Call::Refused(BrokerError::NoLimit(d)) if d == "grant 10"),
            "{calls:?}"
        );
        assert!(matches!(calls[3], Call::Applied(10)), "{calls:?}");
    }

    #[test]
    fn a_reply_of_another_shape_leaves_every_write_to_be_resolved() {
        let int = Value::Int;
        let rows = [
            // One entry short: nobody can say which write it answers.
            (Value::Array(vec![Value::Array(vec![int(1), int(9)])]), 2),
            // An unknown flag or refusal code in any entry.
            (
                Value::Array(vec![
                    Value::Array(vec![int(1), int(9)]),
                    Value::Array(vec![int(3)]),
                ]),
                2,
            ),
            (
                Value::Array(vec![Value::Array(vec![int(-1), bulk("WHAT"), bulk("x")])]),
                1,
            ),
            (Value::Int(1), 1),
        ];
        for (reply, n) in rows {
            let calls = parse_reply(reply.clone(), n);
            assert_eq!(calls.len(), n);
            assert!(
                calls.iter().all(|c| matches!(c, Call::Ambiguous(_))),
                "{reply:?}: {calls:?}"
            );
        }
    }

    #[test]
    fn the_command_lists_keys_then_arguments_per_write() {
        let w = |n: &str| QueuedWrite {
            key: format!("k{n}"),
            fence: format!("f{n}"),
            legacy: format!("l{n}"),
            channel: "c".into(),
            id: format!("id{n}"),
            author: "ann".into(),
            text: format!("t{n}"),
            sent_at: 5,
            ttl_secs: 60,
            deadline: 9,
            token: format!("w{n}"),
            holds: 3,
            epoch: "e".into(),
            chosen: n == "2",
        };
        let (a, b) = (w("1"), w("2"));
        let cmd = command("sha", &[&a, &b]);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("unexpected argument {other:?}"),
            })
            .collect();
        let expected = [
            "EVALSHA", "sha", "11", STREAM, SEQ, EPOCH, LIMIT, ANCHOR, "k1", "f1", "l1", "k2",
            "f2", "l2", "c", "id1", "ann", "t1", "5", "60", "9", "w1", "3", "e", "0", "c", "id2",
            "ann", "t2", "5", "60", "9", "w2", "3", "e", "1",
        ];
        assert_eq!(args, expected);
    }
}
