//! The Redis broker: the one place that knows the key names, the write and anchor Lua scripts,
//! and how stream entries map to [`Message`]s.
//!
//! Keys (all under the `chat:` prefix):
//! - `chat:stream`: the global order; entry ID `<position>-0`, fields `c i a t s`.
//! - `chat:seq`: the last position handed out (INCR).
//! - `chat:epoch`: a random value set once when the broker's data was anchored; a different value
//!   (or none) means the broker lost its data.
//! - `chat:anchor`: the position the current epoch continues after (0 for a new cluster).
//! - `chat:base`: the last position of the history the current epoch was anchored on; positions
//!   `base+1 ..= anchor` are void (skipped after a data loss, see [`crate::protocol`]).
//! - `chat:limit`: the highest position the write script may hand out, raised by the replicas as
//!   they persist (each records it on disk first), so a broker that loses its data can be
//!   re-anchored past every position it may have handed out.
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
const BASE: &str = "chat:base";
const LIMIT: &str = "chat:limit";

fn dedupe_key(channel: &str, id: &str) -> String {
    format!("chat:dedupe:{channel}:{id}")
}

/// Dedupe by id, take the next position, XADD with the explicit ID. Refuses while unanchored,
/// when the next position is past the limit the replication log granted (`NOLIMIT`), and when
/// the sequence is below a position the writing node already holds (`BEHIND`: the broker went
/// back, and the position would be handed out a second time).
const WRITE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NOEPOCH the broker has no epoch yet; waiting for the replication log to anchor it')
end
if ARGV[7] == '1' then
  local prev = redis.call('HMGET', KEYS[4], 'p', 's', 'a', 't')
  if prev[1] then return {0, prev[1], prev[2], prev[3], prev[4]} end
end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur < tonumber(ARGV[8]) then
  return redis.error_reply('BEHIND the broker sequence ' .. cur .. ' is below position ' .. ARGV[8] .. ' that this node already holds; the broker went back')
end
if cur + 1 > tonumber(redis.call('GET', KEYS[5]) or '0') then
  return redis.error_reply('NOLIMIT the replication log has not persisted far enough to grant position ' .. (cur + 1) .. ' yet')
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], seq .. '-0', 'c', ARGV[1], 'i', ARGV[2], 'a', ARGV[3], 't', ARGV[4], 's', ARGV[5])
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[4], 'p', seq, 's', ARGV[5], 'a', ARGV[3], 't', ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
return {1, seq}
"#;

/// Sets the epoch, sequence, anchor, base and limit once, only if the broker has no epoch.
/// ARGV: epoch, anchor, base, limit.
const ANCHOR_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq > tonumber(ARGV[2]) then
  return redis.error_reply('SEQAHEAD the broker sequence ' .. seq .. ' is ahead of the anchor ' .. ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
"#;

/// Raises the limit to ARGV[2] in epoch ARGV[1] (never lowers it). Returns the limit now.
const GRANT_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOEPOCH the broker is not in epoch ' .. ARGV[1])
end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local new = tonumber(ARGV[2])
if new > cur then
  redis.call('SET', KEYS[2], ARGV[2])
  return new
end
return cur
"#;

/// Retires epoch ARGV[1] when the sequence is below position ARGV[2] (the broker went back:
/// restored from an older copy, failed over to a lagging one, or reset by hand). Without an
/// epoch the broker refuses writes until the replication log anchors it again. Returns 1 when
/// it retired the epoch.
const RETIRE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the broker has no epoch yet (not anchored by the replication log)")]
    NotAnchored,
    #[error("the replication log is behind: {0}")]
    NoLimit(String),
    #[error("the broker went back: {0}")]
    WentBack(String),
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
            BrokerError::NotAnchored | BrokerError::NoLimit(_) | BrokerError::WentBack(_) => true,
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
    /// Position the current epoch continues after.
    pub anchor: u64,
    /// Last position of the history the epoch was anchored on (`base+1 ..= anchor` are void).
    pub base: u64,
    /// Highest position the write script may hand out (`chat:limit`).
    pub limit: u64,
}

/// A client of the broker over one shared, multiplexed, self-reconnecting connection. Cheap to
/// clone. Blocking reads never go through it: see [`StreamReader`].
#[derive(Clone)]
pub struct Broker {
    client: Client,
    conn: ConnectionManager,
    write: Script,
    anchor: Script,
    grant: Script,
    retire: Script,
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
            grant: Script::new(GRANT_LUA),
            retire: Script::new(RETIRE_LUA),
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
    /// `holds` is the last position the writing node has applied: the script refuses
    /// ([`BrokerError::WentBack`]) when the broker's sequence is below it.
    pub async fn write(
        &self,
        msg: &NewMessage,
        generated_id: &str,
        sent_at: i64,
        holds: u64,
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
            .key(LIMIT)
            .arg(&msg.channel)
            .arg(id)
            .arg(&msg.author)
            .arg(&msg.text)
            .arg(sent_at)
            .arg(DEDUPE_TTL.as_secs())
            .arg(if dedupe { "1" } else { "0" })
            .arg(holds)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| match e.code() {
                Some("NOEPOCH") => BrokerError::NotAnchored,
                Some("NOLIMIT") => BrokerError::NoLimit(e.detail().unwrap_or_default().to_owned()),
                Some("BEHIND") => BrokerError::WentBack(e.detail().unwrap_or_default().to_owned()),
                _ => BrokerError::Redis(e),
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
        type Reply = (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        let (epoch, head, anchor, base, limit): Reply = redis::cmd("MGET")
            .arg(EPOCH)
            .arg(SEQ)
            .arg(ANCHOR)
            .arg(BASE)
            .arg(LIMIT)
            .query_async(&mut conn)
            .await?;
        let anchor = anchor.unwrap_or(0);
        Ok(BrokerState {
            epoch,
            head: head.unwrap_or(0),
            anchor,
            // A broker anchored before bases existed: nothing is void.
            base: base.unwrap_or(anchor),
            limit: limit.unwrap_or(0),
        })
    }

    /// Gives a broker without an epoch a new one: its sequence continues after `anchor`, the
    /// positions `base+1 ..= anchor` are void, and writes may go up to `limit`. A no-op when an
    /// epoch exists. Errors with code `SEQAHEAD` when the sequence is already past `anchor`.
    pub async fn anchor(
        &self,
        anchor: u64,
        base: u64,
        limit: u64,
    ) -> Result<AnchorOutcome, BrokerError> {
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let reply: Value = self
            .anchor
            .key(EPOCH)
            .key(SEQ)
            .key(ANCHOR)
            .key(BASE)
            .key(LIMIT)
            .arg(&epoch)
            .arg(anchor)
            .arg(base)
            .arg(limit)
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

    /// Raises the write limit to `limit` in `epoch` (never lowers it); returns the limit now.
    /// Errors with [`BrokerError::NotAnchored`] when the broker is not in `epoch`.
    pub async fn grant(&self, epoch: &str, limit: u64) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .grant
            .key(EPOCH)
            .key(LIMIT)
            .arg(epoch)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
                if e.code() == Some("NOEPOCH") {
                    BrokerError::NotAnchored
                } else {
                    BrokerError::Redis(e)
                }
            })?;
        as_u64(&reply).ok_or_else(|| proto("grant reply"))
    }

    /// Retires `epoch` when the broker's sequence is below `position` (it went back and would
    /// hand positions out a second time); returns whether it did. The broker then has no epoch
    /// and refuses writes until the replication log anchors it past every handed-out position.
    pub async fn retire(&self, epoch: &str, position: u64) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .retire
            .key(EPOCH)
            .key(SEQ)
            .arg(epoch)
            .arg(position)
            .invoke_async(&mut conn)
            .await?;
        Ok(as_u64(&reply) == Some(1))
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
}
