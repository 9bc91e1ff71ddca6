//! The Redis broker: the one place that knows the key names, the write and anchor Lua scripts,
//! and how stream entries map to [`Message`]s.
//!
//! Keys (all under the `chat:` prefix):
//! - `chat:stream`: the global order; entry ID `<position>-0`, fields `c i a t s`.
//! - `chat:seq`: the last position handed out (INCR).
//! - `chat:epoch`: a random value set once when the broker's data was anchored; a different value
//!   (or none) means the broker lost its data.
//! - `chat:anchor`: the position the current epoch started from (0 for a new cluster).
//! - `chat:replicas`: hash replica id → persisted position, read for trimming.
//! - `chat:dedupe:<channel>:<id>`: hash `p s a t` of the first message with that id, with a TTL.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script, Value};

use crate::message::{Message, NewMessage};

/// How long an idempotency key is remembered. The contract asks for at least 10 minutes.
pub const DEDUPE_TTL: Duration = Duration::from_secs(15 * 60);

const STREAM: &str = "chat:stream";
const SEQ: &str = "chat:seq";
const EPOCH: &str = "chat:epoch";
const ANCHOR: &str = "chat:anchor";
const REPLICAS: &str = "chat:replicas";

fn dedupe_key(channel: &str, id: &str) -> String {
    format!("chat:dedupe:{channel}:{id}")
}

/// Dedupe by id, take the next position, XADD with the explicit ID. Refuses while unanchored.
const WRITE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NOEPOCH the broker has no epoch yet; waiting for the replication log to anchor it')
end
if ARGV[7] == '1' then
  local prev = redis.call('HMGET', KEYS[4], 'p', 's', 'a', 't')
  if prev[1] then return {0, prev[1], prev[2], prev[3], prev[4]} end
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], seq .. '-0', 'c', ARGV[1], 'i', ARGV[2], 'a', ARGV[3], 't', ARGV[4], 's', ARGV[5])
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[4], 'p', seq, 's', ARGV[5], 'a', ARGV[3], 't', ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
return {1, seq}
"#;

/// Sets the epoch, sequence and anchor once, only if the broker has no epoch.
const ANCHOR_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq > tonumber(ARGV[2]) then
  return redis.error_reply('SEQAHEAD the broker sequence ' .. seq .. ' is ahead of the anchor ' .. ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
"#;

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the broker has no epoch yet (not anchored by the replication log)")]
    NotAnchored,
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl BrokerError {
    /// True when the broker could not be reached at all (as opposed to refusing a command).
    pub fn is_unavailable(&self) -> bool {
        match self {
            BrokerError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
            }
            BrokerError::NotAnchored => true,
            BrokerError::Protocol(_) => false,
        }
    }
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new message at a new position.
    Accepted(Message),
    /// The id had been used on that channel; this is the original message.
    Duplicate(Message),
}

/// Result of [`Broker::anchor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorOutcome {
    /// This call set the epoch.
    Anchored(String),
    /// The broker already had this epoch.
    AlreadyAnchored(String),
}

/// The broker's identity and progress, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerState {
    pub epoch: Option<String>,
    /// Last position handed out (`chat:seq`).
    pub head: u64,
    /// Position the current epoch started from.
    pub anchor: u64,
}

/// A client of the broker over one shared, multiplexed, self-reconnecting connection. Cheap to
/// clone. Blocking reads never go through it: see [`StreamReader`].
#[derive(Clone)]
pub struct Broker {
    client: Client,
    conn: ConnectionManager,
    write: Script,
    anchor: Script,
}

impl Broker {
    /// Connects once; fails if Redis cannot be reached now (callers retry with backoff).
    pub async fn connect(url: &str) -> Result<Broker, BrokerError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Broker {
            client,
            conn,
            write: Script::new(WRITE_LUA),
            anchor: Script::new(ANCHOR_LUA),
        })
    }

    /// Opens a dedicated connection for blocking stream reads.
    pub async fn reader(&self) -> Result<StreamReader, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(StreamReader { conn })
    }

    /// Runs the write script: dedupe, next position, XADD. Returns only after Redis accepted it.
    pub async fn write(
        &self,
        msg: &NewMessage,
        generated_id: &str,
        sent_at: i64,
    ) -> Result<WriteOutcome, BrokerError> {
        let (id, dedupe) = match &msg.id {
            Some(id) => (id.as_str(), true),
            None => (generated_id, false),
        };
        let mut conn = self.conn.clone();
        let reply: Value = self
            .write
            .key(STREAM)
            .key(SEQ)
            .key(EPOCH)
            .key(dedupe_key(&msg.channel, id))
            .arg(&msg.channel)
            .arg(id)
            .arg(&msg.author)
            .arg(&msg.text)
            .arg(sent_at)
            .arg(DEDUPE_TTL.as_secs())
            .arg(if dedupe { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
                if e.code() == Some("NOEPOCH") {
                    BrokerError::NotAnchored
                } else {
                    BrokerError::Redis(e)
                }
            })?;
        let items = as_array(reply)?;
        let flag = items
            .first()
            .and_then(as_u64)
            .ok_or_else(|| proto("write flag"))?;
        let position = items
            .get(1)
            .and_then(as_u64)
            .ok_or_else(|| proto("write position"))?;
        if flag == 1 {
            return Ok(WriteOutcome::Accepted(Message {
                position,
                channel: msg.channel.clone(),
                id: id.to_owned(),
                author: msg.author.clone(),
                text: msg.text.clone(),
                sent_at,
            }));
        }
        let text_of = |i: usize| {
            items
                .get(i)
                .and_then(as_string)
                .ok_or_else(|| proto("duplicate fields"))
        };
        let sent_at = text_of(2)?
            .parse()
            .map_err(|_| proto("duplicate sent_at"))?;
        Ok(WriteOutcome::Duplicate(Message {
            position,
            channel: msg.channel.clone(),
            id: id.to_owned(),
            author: text_of(3)?,
            text: text_of(4)?,
            sent_at,
        }))
    }

    /// Epoch, head and anchor in one round trip.
    pub async fn state(&self) -> Result<BrokerState, BrokerError> {
        let mut conn = self.conn.clone();
        let (epoch, head, anchor): (Option<String>, Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(EPOCH)
            .arg(SEQ)
            .arg(ANCHOR)
            .query_async(&mut conn)
            .await?;
        Ok(BrokerState {
            epoch,
            head: head.unwrap_or(0),
            anchor: anchor.unwrap_or(0),
        })
    }

    /// Gives a broker without an epoch a new one, continuing the order after `position` (the
    /// replication log's persisted position). A no-op when an epoch exists.
    pub async fn anchor(&self, position: u64) -> Result<AnchorOutcome, BrokerError> {
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let reply: Value = self
            .anchor
            .key(EPOCH)
            .key(SEQ)
            .key(ANCHOR)
            .arg(&epoch)
            .arg(position)
            .invoke_async(&mut conn)
            .await?;
        let items = as_array(reply)?;
        let flag = items
            .first()
            .and_then(as_u64)
            .ok_or_else(|| proto("anchor flag"))?;
        let value = items
            .get(1)
            .and_then(as_string)
            .ok_or_else(|| proto("anchor epoch"))?;
        Ok(if flag == 1 {
            AnchorOutcome::Anchored(value)
        } else {
            AnchorOutcome::AlreadyAnchored(value)
        })
    }

    /// Records a replica's persisted position (trimming never passes the lowest one).
    pub async fn publish_persisted(
        &self,
        replica_id: &str,
        position: u64,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(REPLICAS)
            .arg(replica_id)
            .arg(position)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Every registered replica with its persisted position.
    pub async fn replicas(&self) -> Result<Vec<(String, u64)>, BrokerError> {
        let mut conn = self.conn.clone();
        let map: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(REPLICAS)
            .query_async(&mut conn)
            .await?;
        Ok(map)
    }

    /// Removes a replica from the set that holds trimming back. Returns whether it was there.
    pub async fn forget_replica(&self, replica_id: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("HDEL")
            .arg(REPLICAS)
            .arg(replica_id)
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// Drops stream entries at positions `<= upto`. Returns how many were removed.
    pub async fn trim_through(&self, upto: u64) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("XTRIM")
            .arg(STREAM)
            .arg("MINID")
            .arg(format!("{}-0", upto + 1))
            .query_async(&mut conn)
            .await?;
        Ok(removed)
    }

    /// Number of entries currently in the stream.
    pub async fn stream_len(&self) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("XLEN")
            .arg(STREAM)
            .query_async(&mut conn)
            .await?)
    }

    /// Messages with positions in `after+1 ..= upto` that are still in the stream (XRANGE).
    pub async fn range(
        &self,
        after: u64,
        upto: u64,
        count: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg(format!("{}-0", after + 1))
            .arg(format!("{upto}-0"))
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        parse_entries(reply)
    }
}

/// A dedicated connection for `XREAD BLOCK`, so a blocking read never stalls other commands.
pub struct StreamReader {
    conn: MultiplexedConnection,
}

impl StreamReader {
    /// Up to `count` messages after position `after`, waiting up to `block` for the first.
    /// The result may start past `after + 1` when the stream was trimmed: callers check density.
    pub async fn read_after(
        &mut self,
        after: u64,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Message>, BrokerError> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(format!("{after}-0"))
            .query_async(&mut self.conn)
            .await?;
        match reply {
            Value::Nil => Ok(Vec::new()),
            Value::Array(streams) => {
                let stream = streams
                    .into_iter()
                    .next()
                    .ok_or_else(|| proto("xread streams"))?;
                let mut parts = as_array(stream)?.into_iter();
                let _name = parts.next();
                parts
                    .next()
                    .map(parse_entries)
                    .unwrap_or_else(|| Ok(Vec::new()))
            }
            Value::Map(streams) => match streams.into_iter().next() {
                Some((_, entries)) => parse_entries(entries),
                None => Ok(Vec::new()),
            },
            other => Err(proto(&format!("xread reply {other:?}"))),
        }
    }
}

/// A hole in what should be a dense run of positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First missing position.
    pub from: u64,
    /// Last missing position.
    pub to: u64,
}

/// A batch read after a cursor, split at its first hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The messages that continue the cursor densely (may be empty).
    pub dense: Vec<Message>,
    /// The first hole after `dense`, and everything the batch held after it.
    pub gap: Option<(Gap, Vec<Message>)>,
}

/// Splits `batch` into the part that continues `cursor` densely and what follows the first hole.
/// Entries at or below the cursor (a replayed read) are dropped.
pub fn split_dense(cursor: u64, batch: Vec<Message>) -> Split {
    let mut dense: Vec<Message> = batch.into_iter().filter(|m| m.position > cursor).collect();
    for (i, (m, expected)) in dense.iter().zip(cursor + 1..).enumerate() {
        if m.position != expected {
            let gap = Gap {
                from: expected,
                to: m.position - 1,
            };
            let rest = dense.split_off(i);
            return Split {
                dense,
                gap: Some((gap, rest)),
            };
        }
    }
    Split { dense, gap: None }
}

fn proto(what: &str) -> BrokerError {
    BrokerError::Protocol(what.to_owned())
}

fn as_array(v: Value) -> Result<Vec<Value>, BrokerError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(proto(&format!("expected an array, got {other:?}"))),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Takes a string out of a reply value without copying its bytes.
fn into_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Parses `[[id, [field, value, ...]], ...]` into messages.
fn parse_entries(v: Value) -> Result<Vec<Message>, BrokerError> {
    let entries = match v {
        Value::Nil => return Ok(Vec::new()),
        other => as_array(other)?,
    };
    entries.into_iter().map(parse_entry).collect()
}

fn parse_entry(entry: Value) -> Result<Message, BrokerError> {
    let mut parts = as_array(entry)?.into_iter();
    let id = parts
        .next()
        .and_then(into_string)
        .ok_or_else(|| proto("entry id"))?;
    let position = id
        .strip_suffix("-0")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| proto(&format!("entry id {id}")))?;
    let fields = as_array(parts.next().ok_or_else(|| proto("entry fields"))?)?;
    let mut m = Message {
        position,
        channel: String::new(),
        id: String::new(),
        author: String::new(),
        text: String::new(),
        sent_at: 0,
    };
    // Field values are moved out of the reply, not copied: this runs for every message a node
    // or replica applies.
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let key = match &k {
            Value::BulkString(b) => b.as_slice(),
            Value::SimpleString(s) => s.as_bytes(),
            _ => continue,
        };
        let slot = match key {
            b"c" => &mut m.channel,
            b"i" => &mut m.id,
            b"a" => &mut m.author,
            b"t" => &mut m.text,
            b"s" => {
                let value = into_string(v).ok_or_else(|| proto("entry sent_at"))?;
                m.sent_at = value.parse().map_err(|_| proto("entry sent_at"))?;
                continue;
            }
            _ => continue,
        };
        *slot = into_string(v).ok_or_else(|| proto("entry field value"))?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(position: u64) -> Message {
        Message {
            position,
            channel: "c".into(),
            id: position.to_string(),
            author: String::new(),
            text: "t".into(),
            sent_at: 0,
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_parse_into_messages() {
        let entry = |id: &str, fields: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(fields.iter().map(|f| bulk(f)).collect()),
            ])
        };
        let reply = Value::Array(vec![
            entry(
                "7-0",
                &[
                    "c",
                    "room",
                    "i",
                    "k1",
                    "a",
                    "ann",
                    "t",
                    "hé",
                    "s",
                    "1764140664123",
                ],
            ),
            entry(
                "8-0",
                &[
                    "s", "5", "t", "x", "c", "other", "i", "k2", "a", "", "extra", "ignored",
                ],
            ),
        ]);
        let got = parse_entries(reply).unwrap();
        assert_eq!(
            got[0],
            Message {
                position: 7,
                channel: "room".into(),
                id: "k1".into(),
                author: "ann".into(),
                text: "hé".into(),
                sent_at: 1_764_140_664_123,
            }
        );
        assert_eq!(
            (got[1].position, got[1].channel.as_str(), got[1].sent_at),
            (8, "other", 5)
        );
        assert!(parse_entries(Value::Array(vec![entry("x-1", &[])])).is_err());
        assert!(parse_entries(Value::Array(vec![entry("9-0", &["s", "soon"])])).is_err());
        assert_eq!(parse_entries(Value::Nil).unwrap(), Vec::new());
    }

    fn positions(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.position).collect()
    }

    #[test]
    fn dense_batches_pass_and_replays_are_dropped() {
        let split = split_dense(2, vec![msg(1), msg(2), msg(3), msg(4)]);
        assert_eq!(positions(&split.dense), vec![3, 4]);
        assert_eq!(split.gap, None);
    }

    #[test]
    fn a_hole_is_reported_with_what_surrounds_it() {
        let split = split_dense(2, vec![msg(3), msg(6), msg(7)]);
        assert_eq!(positions(&split.dense), vec![3]);
        let (gap, rest) = split.gap.unwrap();
        assert_eq!(gap, Gap { from: 4, to: 5 });
        assert_eq!(positions(&rest), vec![6, 7]);
        let split = split_dense(0, vec![msg(10)]);
        assert!(split.dense.is_empty());
        assert_eq!(split.gap.unwrap().0, Gap { from: 1, to: 9 });
    }
}
