//! The Redis broker: the one place that knows the key names, the write, resolve and anchor Lua
//! scripts, how stream entries map to [`Message`]s, and how a write whose reply was lost is
//! resolved into a definite answer (see [`decide`]).
//!
//! Keys (all under the `chat:` prefix):
//! - `chat:stream`: the global order; entry ID `<position>-0`, fields `c i a t s` and `e`, the
//!   epoch the write script ran in (entries written before it existed have none): a node applies
//!   a read whose entries all carry its epoch without asking the broker for its state first.
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
//! - `chat:instance`: the `run_id` of the Redis process (`INFO server`) that the current epoch was
//!   validated on, set by the anchor script. A process whose `run_id` differs (a restart, a
//!   restore from an older copy, a failover) may have lost acknowledged writes: see
//!   "Broker instances" below.
//! - `chat:retired`: the epoch the last retire script retired (its history continues in the next
//!   epoch up to that epoch's base); `chat:previous`: that epoch, copied by the anchor script when
//!   the anchoring replica followed it, so a node holding no more than the new base keeps its
//!   history (see [`crate::protocol::keeps_history`]).
//! - `chat:idem:<channel>:<author scope>:<id>`: the dedupe record of every write, hash `p s w`
//!   (position, sent_at in Unix ms, the write's token). No message body: a repeat reads it from
//!   the stream entry at `p`. TTL [`DEDUPE_TTL`] for client ids, [`GENERATED_ID_TTL`] for
//!   generated ones. The author scope is `a<len>:<author>` for authors up to 32 bytes, else
//!   `h:<sha1 hex of author>` (issue 11: ids are per author).
//! - `chat:dedupe:<channel>:<id>`: the previous version's record (`p s a t`, with the body, not
//!   scoped to the author); read only, so a repeat by the same author still dedupes while one
//!   lives (15 minutes after an upgrade).
//! - `chat:fence:<token>`: set by [`RESOLVE_LUA`] when a write's reply was lost and its record is
//!   absent; the write script refuses to run for a fenced token. TTL [`FENCE_TTL`].
//!
//! # Broker instances
//! Every key survives a Redis restart, a restore from an older RDB/AOF copy or a failover to a
//! lagging copy, the epoch included; the script cache does not (Redis 7 neither persists nor
//! replicates it). So the write and resolve scripts run only by `EVALSHA` ([`Broker::write`]
//! never loads them): on a process that nobody validated, a write fails with `NOSCRIPT`, which
//! stores nothing ([`BrokerError::NotValidated`], a 503). The scripts are loaded only on a
//! connection that first saw `chat:instance` equal to that process's `run_id`
//! ([`BrokerOps::check_instance`]). A replica that finds another `run_id` validates the process: it
//! persists what the stream still holds, retires the epoch ([`BrokerOps::retire_instance`]) and
//! anchors a new one past every position the previous process may have handed out, which records
//! the new `run_id`; the writes the previous process acknowledged after the copy was taken are
//! the documented loss window, and their positions are never handed out again.
//!
//! Every write carries a deadline ([`WRITE_DEADLINE`] after the node started it, node clock); the
//! write script refuses once Redis's own `TIME` is past it, so a write stuck in a stalled Redis
//! cannot apply long after its client was answered.
//!
//! # Reaching the broker
//! A [`BrokerEndpoint`]: a `redis://` URL, or a `rediss://` URL for TLS (rustls; the broker's
//! certificate must name the URL's host) with an optional PEM CA bundle to verify it against
//! (`--redis-ca-file`; without one, the system's roots). The URL's userinfo names the ACL user of
//! the component (`chat_wire::redis_acl`).

use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};

use crate::message::{Message, NewMessage, now_millis};
use crate::telemetry::redact_url;

mod batch;
pub mod memory;

/// Where the broker is and how to trust it: a `redis://` or `rediss://` URL and, for `rediss://`,
/// the PEM CA bundle that signs the broker's certificate (None: the system's roots). `Debug`
/// shows the URL with its password redacted.
#[derive(Clone)]
pub struct BrokerEndpoint {
    url: String,
    ca_pem: Option<Vec<u8>>,
}

impl BrokerEndpoint {
    /// `url` with the system's roots for `rediss://`.
    pub fn new(url: impl Into<String>) -> BrokerEndpoint {
        BrokerEndpoint {
            url: url.into(),
            ca_pem: None,
        }
    }

    /// `url` verified against the PEM CA bundle in `ca_file` when given (`--redis-ca-file`).
    /// Read once, at start-up. Errors: the file cannot be read, it holds no PEM certificate, or
    /// a CA file is given for a plain `redis://` URL (it would silently protect nothing).
    pub fn from_flags(
        url: impl Into<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<BrokerEndpoint, String> {
        let url = url.into();
        // Parsed (not connected) now: a URL that cannot work is a bad flag, not an outage to
        // retry forever.
        redis::Client::open(url.as_str())
            .map_err(|e| format!("--redis-url {}: {e}", redact_url(&url)))?;
        let Some(path) = ca_file else {
            return Ok(BrokerEndpoint::new(url));
        };
        if !url.starts_with("rediss://") {
            return Err(format!(
                "--redis-ca-file {} is set but the Redis URL {} is not rediss:// (TLS)",
                path.display(),
                redact_url(&url)
            ));
        }
        let pem =
            std::fs::read(path).map_err(|e| format!("--redis-ca-file {}: {e}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--redis-ca-file {}: no PEM certificate in it",
                path.display()
            ));
        }
        Ok(BrokerEndpoint {
            url,
            ca_pem: Some(pem),
        })
    }

    /// The URL (with its credentials: never log it, see [`redact_url`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client for this endpoint; with a CA bundle, TLS verifies against it alone.
    fn client(&self) -> Result<Client, RedisError> {
        match &self.ca_pem {
            None => Client::open(self.url.as_str()),
            Some(pem) => Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
    }
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("url", &redact_url(&self.url))
            .field("ca", &self.ca_pem.as_ref().map(|_| "PEM bundle"))
            .finish()
    }
}

impl From<&str> for BrokerEndpoint {
    fn from(url: &str) -> BrokerEndpoint {
        BrokerEndpoint::new(url)
    }
}

impl From<&String> for BrokerEndpoint {
    fn from(url: &String) -> BrokerEndpoint {
        BrokerEndpoint::new(url.as_str())
    }
}

/// How long a client-supplied idempotency key is remembered. The contract asks for at least 10
/// minutes.
pub const DEDUPE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long the dedupe record of a write without a client id is kept. Only the node reads it (to
/// resolve a lost reply), and a client told "outcome unknown, retry with id X" retries within it.
pub const GENERATED_ID_TTL: Duration = Duration::from_secs(60);
/// A write script that Redis runs later than this after the node started the write (Redis's
/// `TIME` against the node's clock) refuses to store anything. Redis's clock may run up to this
/// much ahead of the node's before every write is refused.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(4);
/// How long the node waits for the write script's reply (also the connection's response timeout).
pub const WRITE_WAIT: Duration = Duration::from_secs(5);
/// After the write's reply is lost, how long the node keeps trying to read the dedupe record (or
/// fence the write) before it answers "outcome unknown".
pub const RESOLVE_BUDGET: Duration = Duration::from_secs(2);
/// Pause between two failed resolve attempts.
const RESOLVE_PAUSE: Duration = Duration::from_millis(100);
/// How long a fence lasts. A write can apply until [`WRITE_DEADLINE`] after it started plus the
/// amount Redis's clock runs behind the node's; the fence is set at least [`WRITE_WAIT`] after the
/// start, so answers stay correct while Redis's clock is less than about 60 s behind.
pub const FENCE_TTL: Duration = Duration::from_secs(60);
/// Authors up to this many bytes appear verbatim in dedupe keys; longer ones are hashed.
const PLAIN_AUTHOR_BYTES: usize = 32;

const STREAM: &str = "chat:stream";
const SEQ: &str = "chat:seq";
const EPOCH: &str = "chat:epoch";
const ANCHOR: &str = "chat:anchor";
const REPLICAS: &str = "chat:replicas";
const BASE: &str = "chat:base";
const LIMIT: &str = "chat:limit";
const INSTANCE: &str = "chat:instance";
const RETIRED: &str = "chat:retired";
const PREVIOUS: &str = "chat:previous";

/// The part of a dedupe key that names the author: unambiguous (length-prefixed or hashed), so
/// `(author, id)` pairs never share a key.
fn author_scope(author: &str) -> String {
    if author.len() <= PLAIN_AUTHOR_BYTES {
        format!("a{}:{author}", author.len())
    } else {
        format!("h:{}", sha1_smol::Sha1::from(author).digest())
    }
}

/// The dedupe record key of a write: per channel, author and id.
fn idem_key(channel: &str, author: &str, id: &str) -> String {
    format!("chat:idem:{channel}:{}:{id}", author_scope(author))
}

/// The dedupe key of the previous version, read (never written) during the 15 minutes after an
/// upgrade.
fn legacy_dedupe_key(channel: &str, id: &str) -> String {
    format!("chat:dedupe:{channel}:{id}")
}

fn fence_key(token: &str) -> String {
    format!("chat:fence:{token}")
}

/// Lua shared by the write and resolve scripts: the author and text of the stream entry at
/// position `p`, or `false, false` once it was trimmed.
macro_rules! original_lua {
    () => {
        r#"
local function original(stream, p)
  local e = redis.call('XRANGE', stream, p .. '-0', p .. '-0')
  local a, t = false, false
  if e[1] then
    local f = e[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'a' then a = f[i + 1] elseif f[i] == 't' then t = f[i + 1] end
    end
  end
  return a, t
end
"#
    };
}

/// A batch of writes, each checked and applied in order as if it ran alone: dedupe by (channel,
/// author, id), refuse when fenced or past the deadline, take the next position, XADD with the
/// explicit ID, record `p s w`. One run serves every write a node queued while its batches were
/// in flight ([`batch`]), so the script call, the state `MGET` and `TIME` are paid once per
/// batch rather than once per write (each `redis.call` costs about a microsecond of the broker's
/// single thread, which every write shares). A later write in a batch sees what an earlier one
/// stored (a repeated id within one batch is a duplicate).
///
/// Per write, the refusals (each stores nothing for that write, and the others go on):
/// `NOEPOCH` while unanchored; `EPOCH` in any epoch but the one the writing node follows (a
/// write belongs to one epoch, so a lost reply can be resolved in it, see [`RESOLVE_LUA`]);
/// `FENCED` when its node abandoned it; `DEADLINE` once Redis's `TIME` is past its deadline;
/// `BEHIND` when the sequence is below the epoch's anchor (set back by hand: the next position
/// would be one the epoch declared void) or below a position the writing node already holds (the
/// broker went back: the position would be handed out a second time); `NOLIMIT` when the next
/// position is past the limit the replication log granted.
/// A record of the previous version (`chat:dedupe:<channel>:<id>`, `p s a t`, not scoped to the
/// author) still answers a repeat by the same author while it lives (15 minutes after an upgrade).
/// The records are looked up only for an id the client chose (`chosen` = `1`): an id the node
/// generated for this write is a fresh UUID that no record can hold yet (a client that retries
/// with it sends it as its own id).
///
/// KEYS: stream, seq, epoch, limit, anchor, then per write: dedupe record, fence, previous
/// version's record (so `#KEYS = 5 + 3n`).
/// ARGV, 11 per write: channel, id, author, text, sent_at, record TTL (s), deadline (Unix ms),
/// token, holds, the node's epoch, chosen.
/// Replies one entry per write, in order: `{1, position}`, `{0, p, s, w, author|nil, text|nil}`
/// for an existing record, or `{-1, code, detail}` for a refusal.
const WRITE_LUA: &str = concat!(
    "-- chat-cluster write script, batched (EVALSHA only; loaded only into a validated broker instance)\n",
    original_lua!(),
    r#"
local n = (#KEYS - 5) / 3
local names = {KEYS[3], KEYS[2], KEYS[4], KEYS[5]}
for i = 1, n do names[4 + i] = KEYS[3 * i + 4] end
local state = redis.call('MGET', unpack(names))
local epoch = state[1]
local cur = tonumber(state[2] or '0')
local limit = tonumber(state[3] or '0')
local anchor = tonumber(state[4] or '0')
local now = false
local function one(i)
  local k = 3 * i + 2
  local a = 11 * (i - 1)
  if not epoch then
    return {-1, 'NOEPOCH', 'the broker has no epoch yet; waiting for the replication log to anchor it'}
  end
  if epoch ~= ARGV[a + 10] then
    return {-1, 'EPOCH', 'the broker is in epoch ' .. epoch .. ', not ' .. ARGV[a + 10] .. ' that this node follows: it lost its data and was anchored again'}
  end
  if ARGV[a + 11] == '1' then
    local prev = redis.call('HMGET', KEYS[k + 1], 'p', 's', 'w')
    if prev[1] then
      local au, t = original(KEYS[1], prev[1])
      return {0, prev[1], prev[2], prev[3] or false, au, t}
    end
    local old = redis.call('HMGET', KEYS[k + 3], 'p', 's', 'a', 't')
    if old[1] and old[3] == ARGV[a + 3] then
      return {0, old[1], old[2], false, old[3], old[4]}
    end
  end
  if state[4 + i] then
    return {-1, 'FENCED', 'this write was abandoned by its node'}
  end
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  if now > tonumber(ARGV[a + 7]) then
    return {-1, 'DEADLINE', 'the write reached redis after its deadline'}
  end
  if cur < anchor then
    return {-1, 'BEHIND', 'the broker sequence ' .. cur .. ' is below the anchor ' .. anchor .. ' of its epoch; it was set back'}
  end
  if cur < tonumber(ARGV[a + 9]) then
    return {-1, 'BEHIND', 'the broker sequence ' .. cur .. ' is below position ' .. ARGV[a + 9] .. ' that this node already holds; the broker went back'}
  end
  if cur + 1 > limit then
    return {-1, 'NOLIMIT', 'the replication log has not persisted far enough to grant position ' .. (cur + 1) .. ' yet'}
  end
  cur = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], cur .. '-0', 'c', ARGV[a + 1], 'i', ARGV[a + 2], 'a', ARGV[a + 3], 't', ARGV[a + 4], 's', ARGV[a + 5], 'e', epoch)
  redis.call('HSET', KEYS[k + 1], 'p', cur, 's', ARGV[a + 5], 'w', ARGV[a + 8])
  redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 6])
  return {1, cur}
end
local out = {}
for i = 1, n do out[i] = one(i) end
return out
"#
);

/// Resolves a write whose reply was lost: `{2}` when the broker is no longer in the epoch the
/// write was sent in (it lost its data meanwhile: the write may have been stored and persisted
/// by a replica before the loss, and a surviving record may name a position the new epoch
/// declared void, so nobody can say); else its dedupe record if present, else fence the write's
/// token so it can never apply.
/// KEYS: dedupe record, fence, stream, epoch. ARGV: fence TTL (s), the write's epoch.
/// Replies `{1, p, s, w, author|nil, text|nil}`, `{0}` (absent, now fenced) or `{2}`.
const RESOLVE_LUA: &str = concat!(
    "-- chat-cluster resolve script (EVALSHA only; loaded only into a validated broker instance)\n",
    original_lua!(),
    r#"
if redis.call('GET', KEYS[4]) ~= ARGV[2] then
  return {2}
end
local prev = redis.call('HMGET', KEYS[1], 'p', 's', 'w')
if prev[1] then
  local a, t = original(KEYS[3], prev[1])
  return {1, prev[1], prev[2], prev[3] or false, a, t}
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return {0}
"#
);

/// Lua: the `run_id` of the Redis process running the script (`INFO server`).
macro_rules! run_id_lua {
    () => {
        r#"
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
"#
    };
}

/// Sets the epoch, sequence, anchor, base and limit once, only if the broker has no epoch;
/// records this process's `run_id` as the validated instance; deletes stream entries past the
/// base (they belong to no history the new epoch continues: a follower must never read them);
/// records the retired epoch as the previous one when the anchoring replica followed it. When it
/// did not (the broker holds another epoch's stream: a copy restored from before the epoch the
/// replica followed), the entries up to the base go too (`XTRIM MAXLEN 0`, which keeps the
/// stream's last ID): they are that other epoch's, and the history the new epoch continues up to
/// the base is the anchoring replica's, which can differ there — a replica repairing from them
/// took a message where its peers hold a void (found by the protocol simulation, seed 4154 of
/// 12,000).
/// KEYS: epoch, seq, anchor, base, limit, instance, retired, previous, stream.
/// ARGV: epoch, anchor, base, limit, the epoch the anchoring replica followed (or '').
const ANCHOR_LUA: &str = concat!(
    run_id_lua!(),
    r#"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq > tonumber(ARGV[2]) then
  return redis.error_reply('SEQAHEAD the broker sequence ' .. seq .. ' is ahead of the anchor ' .. ARGV[2])
end
local retired = redis.call('GET', KEYS[7])
if retired and retired == ARGV[5] then
  redis.call('SET', KEYS[8], retired)
  local stale = redis.call('XRANGE', KEYS[9], (tonumber(ARGV[3]) + 1) .. '-0', '+')
  for _, e in ipairs(stale) do
    redis.call('XDEL', KEYS[9], e[1])
  end
else
  redis.call('DEL', KEYS[8])
  redis.call('XTRIM', KEYS[9], 'MAXLEN', 0)
end
redis.call('DEL', KEYS[7])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], ARGV[4])
redis.call('SET', KEYS[6], run_id())
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
"#
);

/// Raises the limit to ARGV[2] in epoch ARGV[1] (never lowers it). Returns the limit now.
///
/// Runs when Redis is out of memory (`allow-oom`, Redis ≥ 7.0): like [`PUBLISH_LUA`], the limit
/// must go on rising while writes are refused, or the replicas' session would fail before they
/// trim the stream and free the memory.
const GRANT_LUA: &str = r#"#!lua flags=allow-oom
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

/// Records replica ARGV[1]'s persisted position ARGV[2] in hash KEYS[1] (`chat:replicas`).
///
/// Runs when Redis is out of memory (`allow-oom`, Redis ≥ 7.0, EVAL "Script flags"): under
/// `maxmemory` with `noeviction` a plain `HSET` is refused, so a broker filled by the stream
/// would never learn what the replicas persisted, never trim, and refuse writes for good. The
/// hash holds one small field per replica.
const PUBLISH_LUA: &str = r#"#!lua flags=allow-oom
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Retires epoch ARGV[1] when the sequence is below position ARGV[2] (the broker went back:
/// restored from an older copy, failed over to a lagging one, or reset by hand). Without an
/// epoch the broker refuses writes until the replication log anchors it again. Returns 1 when
/// it retired the epoch. KEYS: epoch, seq, retired.
const RETIRE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], ARGV[1])
return 1
"#;

/// Retires epoch ARGV[1] when it was not validated on this Redis process (`chat:instance` is
/// not this process's `run_id`: a restart, a restore from an older copy, a failover). Several
/// replicas may race: once one anchored a new epoch (recording this `run_id`) the others' calls
/// change nothing. Returns 1 when it retired the epoch. KEYS: epoch, instance, retired.
const RETIRE_INSTANCE_LUA: &str = concat!(
    run_id_lua!(),
    r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) == run_id() then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], ARGV[1])
return 1
"#
);

/// What went wrong talking to the broker. Every variant of a write except
/// [`BrokerError::OutcomeUnknown`] means the write was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the broker has no epoch yet (not anchored by the replication log)")]
    NotAnchored,
    #[error("the replication log is behind: {0}")]
    NoLimit(String),
    #[error("the broker went back: {0}")]
    WentBack(String),
    /// The broker is in another epoch than the one the node follows (it lost its data and was
    /// anchored again; the node reloads within seconds): the script stored nothing.
    #[error("the broker changed epoch: {0}")]
    EpochChanged(String),
    /// The Redis process has not been validated since it started (a restart, a restore from an
    /// older copy, a failover): the write script is not loaded there (`NOSCRIPT`), nothing was
    /// stored. A replication-log replica validates it within seconds.
    #[error(
        "the broker restarted and the replication log has not validated it yet (write script not loaded)"
    )]
    NotValidated,
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Redis ran the write script after the write's deadline; it stored nothing.
    #[error("redis ran the write after its {}s deadline and refused it", WRITE_DEADLINE.as_secs())]
    DeadlinePassed,
    /// The write waited in the node's queue (behind a batch Redis had not answered) until its
    /// deadline passed; it was never sent, so it stored nothing.
    #[error(
        "the write waited behind a stalled broker past its {}s deadline and was not sent",
        WRITE_DEADLINE.as_secs()
    )]
    QueuedPastDeadline,
    /// The write script refused a write whose node had abandoned it (its reply was lost and the
    /// node fenced its token): it stored nothing, and never will.
    #[error("the write was abandoned by its node and fenced")]
    Fenced,
    /// The write's reply was lost, and the node then found no record of it and fenced it: it was
    /// not stored and never will be.
    #[error("{0}; the node then checked: the write was not stored and never will be")]
    Abandoned(String),
    /// The write's reply was lost and Redis could not be asked within [`RESOLVE_BUDGET`]: the
    /// write may or may not be stored. Retrying with the same id settles it.
    #[error("{0}; redis could not be asked whether the write was stored")]
    OutcomeUnknown(String),
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
            BrokerError::NotAnchored
            | BrokerError::NotValidated
            | BrokerError::NoLimit(_)
            | BrokerError::WentBack(_)
            | BrokerError::EpochChanged(_)
            | BrokerError::Abandoned(_)
            | BrokerError::Fenced
            | BrokerError::OutcomeUnknown(_) => true,
            BrokerError::Protocol(_)
            | BrokerError::DeadlinePassed
            | BrokerError::QueuedPastDeadline => false,
        }
    }

    /// True when a write failed without a definite answer: it may have been stored.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, BrokerError::OutcomeUnknown(_))
    }
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new message at a new position.
    Accepted(Message),
    /// The id had been used on that channel by that author; this is the original message.
    Duplicate(Original),
}

impl WriteOutcome {
    /// The position of the stored message (the new one, or the original of a repeat).
    pub fn position(&self) -> u64 {
        match self {
            WriteOutcome::Accepted(m) => m.position,
            WriteOutcome::Duplicate(o) => o.position,
        }
    }
}

/// The original message of a repeated id. Dedupe records hold no body: `author` and `text` come
/// from the stream entry at `position`, and `text` is `None` once the stream no longer holds it
/// (trimmed after every replica persisted it): then the caller reads it from its own history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub position: u64,
    pub channel: String,
    pub id: String,
    pub author: String,
    /// Unix milliseconds, from the dedupe record.
    pub sent_at: i64,
    pub text: Option<String>,
}

impl Original {
    /// The whole message, when the text is known.
    pub fn message(&self) -> Option<Message> {
        Some(Message {
            position: self.position,
            channel: self.channel.clone(),
            id: self.id.clone(),
            author: self.author.clone(),
            text: self.text.clone()?,
            sent_at: self.sent_at,
        })
    }
}

/// A dedupe record as the write and resolve scripts return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    position: u64,
    /// Unix milliseconds.
    sent_at: i64,
    /// The token of the write that stored it (absent only in records of older versions).
    token: Option<String>,
    /// Author and text of the stream entry, when the stream still holds it.
    author: Option<String>,
    text: Option<String>,
}

/// What the write call produced.
#[derive(Debug, Clone)]
pub(crate) enum Call {
    /// The script stored the message at this position.
    Applied(u64),
    /// The script found an existing record and stored nothing.
    Existing(Record),
    /// Redis refused (an error reply), or the command never left the node: nothing stored.
    Refused(BrokerError),
    /// No usable reply (timeout, connection lost after sending): the write may have applied.
    Ambiguous(String),
}

/// What reading the dedupe record after an ambiguous call produced.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Not tried yet.
    NotYet,
    /// The record exists.
    Found(Record),
    /// No record, and the write's token is now fenced: it can never apply.
    Fenced,
    /// The broker left the write's epoch (a data loss) before it could be resolved.
    EpochChanged,
    /// The lookup failed or timed out (the reason).
    Failed(String),
}

/// The answer [`decide`] gives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision<'a> {
    /// This write stored the message at this position (201).
    Stored(u64),
    /// Another write with the same key stored this original (200).
    Duplicate(&'a Record),
    /// Nothing was stored (503).
    NotStored,
    /// Read the dedupe record (again).
    LookUp,
    /// The budget is spent without an answer (504).
    Unknown,
}

/// Decides a write's answer from the call's result, the last dedupe lookup, and whether the
/// resolve budget has time left. `token` is the write's own token: a record carrying it was
/// stored by this write. Pure; table-tested below.
pub(crate) fn decide<'a>(
    call: &'a Call,
    lookup: &'a Lookup,
    token: &str,
    budget_left: bool,
) -> Decision<'a> {
    let mine = |r: &Record| r.token.as_deref() == Some(token);
    match (call, lookup) {
        (Call::Applied(p), _) => Decision::Stored(*p),
        (Call::Existing(r), _) | (Call::Ambiguous(_), Lookup::Found(r)) => {
            if mine(r) {
                Decision::Stored(r.position)
            } else {
                Decision::Duplicate(r)
            }
        }
        (Call::Refused(_), _) | (Call::Ambiguous(_), Lookup::Fenced) => Decision::NotStored,
        (Call::Ambiguous(_), Lookup::EpochChanged) => Decision::Unknown,
        (Call::Ambiguous(_), Lookup::NotYet | Lookup::Failed(_)) => {
            if budget_left {
                Decision::LookUp
            } else {
                Decision::Unknown
            }
        }
    }
}

/// Error codes with which Redis refuses a script run before its first write, whatever the batch
/// holds: a condition of the server (memory, permissions, role, loading, a busy script) that
/// holds for the whole run, and Redis 7 lets a script that already wrote go on past `maxmemory`.
const NOTHING_RAN: &[&str] = &[
    "OOM",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "READONLY",
    "MISCONF",
    "NOREPLICAS",
];

/// Sorts a failed run of the write script: `NOSCRIPT`, an error of [`NOTHING_RAN`] or a refused
/// connection means it stored nothing; anything else (a timeout, a connection lost after
/// sending, a script that failed part-way through a batch) is ambiguous, and each write is
/// resolved by its own record. The script's own refusals are not errors of the run: they are
/// entries of its reply, one per write ([`batch::parse_reply`]).
fn classify(e: RedisError) -> Call {
    match e.code() {
        // EVALSHA of a script this Redis process does not have: nothing ran.
        Some("NOSCRIPT") => Call::Refused(BrokerError::NotValidated),
        Some(code) if NOTHING_RAN.contains(&code) => Call::Refused(BrokerError::Redis(e)),
        None if e.is_connection_refusal() => Call::Refused(BrokerError::Redis(e)),
        _ => Call::Ambiguous(format!("redis: {e}")),
    }
}

/// Parses `{p, s, w, author, text}` (the tail of a write or resolve reply).
fn parse_record(items: &[Value]) -> Result<Record, BrokerError> {
    let position = items
        .first()
        .and_then(as_u64)
        .ok_or_else(|| proto("record position"))?;
    let sent_at = items
        .get(1)
        .and_then(as_string)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| proto("record sent_at"))?;
    let opt = |i: usize| items.get(i).and_then(as_string);
    Ok(Record {
        position,
        sent_at,
        token: opt(2),
        author: opt(3),
        text: opt(4),
    })
}

/// Parses the resolve script's reply.
fn parse_resolve_reply(reply: Value) -> Result<Lookup, BrokerError> {
    let items = as_array(reply)?;
    match items.first().and_then(as_u64) {
        Some(1) => Ok(Lookup::Found(parse_record(&items[1..])?)),
        Some(0) => Ok(Lookup::Fenced),
        Some(2) => Ok(Lookup::EpochChanged),
        _ => Err(proto("resolve flag")),
    }
}

/// Result of [`BrokerOps::anchor`].
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
    /// The epoch whose history the current one continues up to `base` (`chat:previous`), when
    /// the anchoring replica followed it; none after a wipe.
    pub previous: Option<String>,
}

/// What [`BrokerOps::check_instance`] found on one connection to one Redis process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceCheck {
    /// The process was validated and has the node's scripts.
    Validated,
    /// The process was validated but had lost its script cache (`SCRIPT FLUSH`, or scripts of
    /// another version); they are loaded now.
    Loaded,
    /// The process was never validated: `run_id` is its id, `recorded` the one the epoch was
    /// validated on (none for a broker anchored before instances were recorded).
    New {
        run_id: String,
        recorded: Option<String>,
    },
}

/// What a follower (a replication-log replica; see [`crate::log::follower`]) needs from the
/// broker: its state, the stream, the epoch and instance scripts and the replica set. [`Broker`]
/// implements it over Redis (its methods document the keys and scripts behind each);
/// [`memory::MemoryBroker`] in memory, with the faults a real deployment meets injected on demand
/// (wipe, restart or restore from an older copy, rollback in place, trim, stall, unreachable, lost
/// replies), so the real follower code is tested against each of them. Errors are
/// [`BrokerError`]s: `Redis` when the broker could not be reached or refused a command, the
/// named variants where a script refused.
pub trait BrokerOps: Clone + Send + Sync + 'static {
    /// The blocking reader of [`BrokerOps::reader`].
    type Reader: ReadStream;
    /// A blocking reader on a connection of its own, so a blocking read never stalls other
    /// commands.
    fn reader(&self) -> impl Future<Output = Result<Self::Reader, BrokerError>> + Send;
    /// The epoch, head, anchor, base, limit and previous epoch, read in one round trip.
    fn state(&self) -> impl Future<Output = Result<BrokerState, BrokerError>> + Send;
    /// The messages at positions `after+1 ..= upto` still in the stream, at most `count`.
    fn range(
        &self,
        after: u64,
        upto: u64,
        count: usize,
    ) -> impl Future<Output = Result<Vec<Message>, BrokerError>> + Send;
    /// Whether the broker process was validated (loading the scripts into a validated process
    /// that lost them); see "Broker instances" in the module documentation.
    fn check_instance(&self) -> impl Future<Output = Result<InstanceCheck, BrokerError>> + Send;
    /// Retires `epoch` when it was not validated on the current process; whether it did.
    fn retire_instance(
        &self,
        epoch: &str,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
    /// Gives a broker without an epoch a new one continuing after `anchor` (`base+1 ..= anchor`
    /// void, writes up to `limit`); a no-op when it has one.
    fn anchor(
        &self,
        anchor: u64,
        base: u64,
        limit: u64,
        followed: Option<&str>,
    ) -> impl Future<Output = Result<AnchorOutcome, BrokerError>> + Send;
    /// Raises the write limit to `limit` in `epoch` (never lowers it); the limit now.
    fn grant(
        &self,
        epoch: &str,
        limit: u64,
    ) -> impl Future<Output = Result<u64, BrokerError>> + Send;
    /// Retires `epoch` when the sequence is below `position` (the broker went back); whether it
    /// did.
    fn retire(
        &self,
        epoch: &str,
        position: u64,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
    /// Records a replica's persisted position in the replica set.
    fn publish_persisted(
        &self,
        replica_id: &str,
        position: u64,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// Every registered replica with its persisted position.
    fn replicas(&self) -> impl Future<Output = Result<Vec<(String, u64)>, BrokerError>> + Send;
    /// Removes a replica from the replica set; whether it was there.
    fn forget_replica(
        &self,
        replica_id: &str,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
    /// Drops stream entries at positions `<= upto`; how many.
    fn trim_through(&self, upto: u64) -> impl Future<Output = Result<u64, BrokerError>> + Send;
}

/// A blocking reader of the stream ([`StreamReader`] over Redis).
pub trait ReadStream: Send {
    /// Up to `count` entries after `after`, waiting up to `block` for the first; may start past
    /// `after + 1` when the stream was trimmed (callers check density).
    fn read_after(
        &mut self,
        after: u64,
        count: usize,
        block: Duration,
    ) -> impl Future<Output = Result<Vec<Message>, BrokerError>> + Send;
}

impl BrokerOps for Broker {
    type Reader = StreamReader;

    /// Epoch, head and anchor in one round trip.
    async fn state(&self) -> Result<BrokerState, BrokerError> {
        let mut conn = self.conn.clone();
        type Reply = (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let (epoch, head, anchor, base, limit, previous): Reply = redis::cmd("MGET")
            .arg(EPOCH)
            .arg(SEQ)
            .arg(ANCHOR)
            .arg(BASE)
            .arg(LIMIT)
            .arg(PREVIOUS)
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
            previous,
        })
    }

    /// Messages with positions in `after+1 ..= upto` that are still in the stream (XRANGE).
    async fn range(
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

    /// Checks, on one fresh connection (so every command reaches the same Redis process),
    /// whether this process was validated (`chat:instance` equals its `run_id`) and has the
    /// write and resolve scripts; loads them when it was validated and they are missing. Never
    /// loads them into a process that was not validated: that is what makes a write on a restarted
    /// or restored broker fail with `NOSCRIPT` until a replica validated it.
    async fn check_instance(&self) -> Result<InstanceCheck, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(WRITE_WAIT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let (info, recorded, exists): (String, Option<String>, Vec<bool>) = redis::pipe()
            .cmd("INFO")
            .arg("server")
            .cmd("GET")
            .arg(INSTANCE)
            .cmd("SCRIPT")
            .arg("EXISTS")
            .arg(self.write.get_hash())
            .arg(self.resolve.get_hash())
            .query_async(&mut conn)
            .await?;
        let run_id = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("run_id:"))
            .map(str::to_owned)
            .ok_or_else(|| proto("INFO server without run_id"))?;
        let loaded = exists.iter().all(|e| *e);
        let check = match crate::protocol::instance_check(loaded, recorded.as_deref(), &run_id) {
            crate::protocol::Instance::Validated => InstanceCheck::Validated,
            crate::protocol::Instance::Reload => {
                self.write.load_async(&mut conn).await?;
                self.resolve.load_async(&mut conn).await?;
                InstanceCheck::Loaded
            }
            crate::protocol::Instance::New => InstanceCheck::New { run_id, recorded },
        };
        if !matches!(check, InstanceCheck::New { .. }) {
            self.scripts_missing
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(check)
    }

    /// Retires `epoch` when it was not validated on the Redis process that runs this call; see
    /// [`InstanceCheck::New`]. Returns whether it did.
    async fn retire_instance(&self, epoch: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .retire_instance
            .key(EPOCH)
            .key(INSTANCE)
            .key(RETIRED)
            .arg(epoch)
            .invoke_async(&mut conn)
            .await?;
        Ok(as_u64(&reply) == Some(1))
    }

    /// Gives a broker without an epoch a new one: its sequence continues after `anchor`, the
    /// positions `base+1 ..= anchor` are void, and writes may go up to `limit`; the Redis process
    /// is recorded as validated, stream entries past `base` are deleted, and `followed` (the
    /// epoch the anchoring log followed) is recorded as the previous epoch when it is the one
    /// that was retired. A no-op when an epoch exists. Errors with code `SEQAHEAD` when the
    /// sequence is already past `anchor`.
    async fn anchor(
        &self,
        anchor: u64,
        base: u64,
        limit: u64,
        followed: Option<&str>,
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
            .key(INSTANCE)
            .key(RETIRED)
            .key(PREVIOUS)
            .key(STREAM)
            .arg(&epoch)
            .arg(anchor)
            .arg(base)
            .arg(limit)
            .arg(followed.unwrap_or(""))
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
    async fn grant(&self, epoch: &str, limit: u64) -> Result<u64, BrokerError> {
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
    async fn retire(&self, epoch: &str, position: u64) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .retire
            .key(EPOCH)
            .key(SEQ)
            .key(RETIRED)
            .arg(epoch)
            .arg(position)
            .invoke_async(&mut conn)
            .await?;
        Ok(as_u64(&reply) == Some(1))
    }

    /// Records a replica's persisted position (trimming never passes the lowest one), also
    /// when Redis is out of memory ([`PUBLISH_LUA`]).
    async fn publish_persisted(&self, replica_id: &str, position: u64) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        self.publish
            .key(REPLICAS)
            .arg(replica_id)
            .arg(position)
            .invoke_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Every registered replica with its persisted position.
    async fn replicas(&self) -> Result<Vec<(String, u64)>, BrokerError> {
        let mut conn = self.conn.clone();
        let map: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(REPLICAS)
            .query_async(&mut conn)
            .await?;
        Ok(map)
    }

    /// Removes a replica from the set that holds trimming back. Returns whether it was there.
    async fn forget_replica(&self, replica_id: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("HDEL")
            .arg(REPLICAS)
            .arg(replica_id)
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// Drops stream entries at positions `<= upto`. Returns how many were removed.
    async fn trim_through(&self, upto: u64) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("XTRIM")
            .arg(STREAM)
            .arg("MINID")
            .arg(format!("{}-0", upto + 1))
            .query_async(&mut conn)
            .await?;
        Ok(removed)
    }

    /// Opens a dedicated connection for blocking stream reads.
    async fn reader(&self) -> Result<StreamReader, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(StreamReader { conn })
    }
}

impl ReadStream for StreamReader {
    async fn read_after(
        &mut self,
        after: u64,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Message>, BrokerError> {
        StreamReader::read_after(self, after, count, block).await
    }
}

/// A client of the broker over one shared, multiplexed, self-reconnecting connection. Cheap to
/// clone. Blocking reads never go through it: see [`StreamReader`].
#[derive(Clone)]
pub struct Broker {
    client: Client,
    conn: ConnectionManager,
    write: Script,
    resolve: Script,
    anchor: Script,
    grant: Script,
    retire: Script,
    retire_instance: Script,
    /// Set when a write or resolve met `NOSCRIPT`: the node's follower then loads the scripts if
    /// the process was validated ([`BrokerOps::check_instance`]).
    scripts_missing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    publish: Script,
    /// The queue of the task that sends writes in batches ([`batch`]).
    writes: tokio::sync::mpsc::Sender<batch::Pending>,
}

impl Broker {
    /// Connects once to `endpoint` (a [`BrokerEndpoint`], or a URL); fails if Redis cannot be
    /// reached now (callers retry with backoff), or TLS fails.
    pub async fn connect(endpoint: impl Into<BrokerEndpoint>) -> Result<Broker, BrokerError> {
        Broker::connect_observed(endpoint, Histogram::new([1.0])).await
    }

    /// [`Broker::connect`], counting the number of writes of every run of the write script in
    /// `batch_sizes` (a node's `chat_server_broker_write_batch_size`).
    pub async fn connect_observed(
        endpoint: impl Into<BrokerEndpoint>,
        batch_sizes: Histogram,
    ) -> Result<Broker, BrokerError> {
        let client = endpoint.into().client()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(WRITE_WAIT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let write = Script::new(WRITE_LUA);
        let scripts_missing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writes = batch::spawn(
            conn.clone(),
            write.get_hash().to_owned(),
            scripts_missing.clone(),
            batch_sizes,
        );
        Ok(Broker {
            client,
            conn,
            write,
            resolve: Script::new(RESOLVE_LUA),
            anchor: Script::new(ANCHOR_LUA),
            grant: Script::new(GRANT_LUA),
            retire: Script::new(RETIRE_LUA),
            retire_instance: Script::new(RETIRE_INSTANCE_LUA),
            scripts_missing,
            publish: Script::new(PUBLISH_LUA),
            writes,
        })
    }

    /// Whether a write met `NOSCRIPT` since the last [`BrokerOps::check_instance`] (true before the
    /// first one).
    pub fn scripts_missing(&self) -> bool {
        self.scripts_missing
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes a message with a definite answer whenever Redis can be asked: queues it for the
    /// batch task (`broker::batch`), which runs the write script for it together with the writes
    /// queued beside it (dedupe, fence and deadline checks, next position, XADD, dedupe record),
    /// and when its reply is lost (not within [`WRITE_WAIT`] of queueing), resolves the outcome
    /// by reading the dedupe record or fencing the write, for up to [`RESOLVE_BUDGET`]. The
    /// write's id is `msg.id`, or `generated_id` when the client gave none (its record then lives
    /// [`GENERATED_ID_TTL`]).
    ///
    /// `holds` is the last position the writing node has applied: the script refuses
    /// ([`BrokerError::WentBack`]) when the broker's sequence is below it. `epoch` is the broker
    /// epoch the node follows: the script refuses ([`BrokerError::EpochChanged`]) in any other,
    /// and a lost reply resolved after the broker left that epoch is
    /// [`BrokerError::OutcomeUnknown`].
    ///
    /// Returns `Accepted` or `Duplicate` only when the message is stored; every error except
    /// [`BrokerError::OutcomeUnknown`] means it was not stored and never will be.
    pub async fn write(
        &self,
        msg: &NewMessage,
        generated_id: &str,
        sent_at: i64,
        holds: u64,
        epoch: &str,
    ) -> Result<WriteOutcome, BrokerError> {
        let (id, ttl) = match &msg.id {
            Some(id) => (id.as_str(), DEDUPE_TTL),
            None => (generated_id, GENERATED_ID_TTL),
        };
        let token = crate::message::random_uuid().simple().to_string();
        let key = idem_key(&msg.channel, msg.idempotency_scope(), id);
        let fence = fence_key(&token);
        let deadline = now_millis().saturating_add(WRITE_DEADLINE.as_millis() as i64);
        // Sent by the batch task with EVALSHA only, never EVAL or SCRIPT LOAD (not
        // `Script::invoke_async`, which loads the script on NOSCRIPT): a Redis process that was
        // not validated does not have it.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = batch::Pending {
            write: batch::QueuedWrite {
                legacy: legacy_dedupe_key(&msg.channel, id),
                key: key.clone(),
                fence: fence.clone(),
                channel: msg.channel.clone(),
                id: id.to_owned(),
                author: msg.author.clone(),
                text: msg.text.clone(),
                sent_at,
                ttl_secs: ttl.as_secs(),
                deadline,
                token: token.clone(),
                holds,
                epoch: epoch.to_owned(),
                chosen: msg.id.is_some(),
            },
            reply,
        };
        let call = tokio::time::timeout(WRITE_WAIT, async {
            if self.writes.send(queued).await.is_err() {
                return Call::Refused(proto("the write queue is closed"));
            }
            answer.await.unwrap_or_else(|_| {
                Call::Ambiguous("the write task stopped before answering".to_owned())
            })
        })
        .await
        .unwrap_or_else(|_| {
            Call::Ambiguous(format!(
                "no reply from redis within {}s",
                WRITE_WAIT.as_secs()
            ))
        });
        let resolve_until = Instant::now() + RESOLVE_BUDGET;
        let mut lookup = Lookup::NotYet;
        loop {
            let now = Instant::now();
            match decide(&call, &lookup, &token, now < resolve_until) {
                Decision::Stored(position) => {
                    return Ok(WriteOutcome::Accepted(Message {
                        position,
                        channel: msg.channel.clone(),
                        id: id.to_owned(),
                        author: msg.author.clone(),
                        text: msg.text.clone(),
                        sent_at,
                    }));
                }
                Decision::Duplicate(r) => {
                    return Ok(WriteOutcome::Duplicate(Original {
                        position: r.position,
                        channel: msg.channel.clone(),
                        id: id.to_owned(),
                        author: r.author.clone().unwrap_or_else(|| msg.author.clone()),
                        sent_at: r.sent_at,
                        text: r.text.clone(),
                    }));
                }
                Decision::NotStored => {
                    return Err(match call {
                        Call::Refused(e) => e,
                        Call::Ambiguous(cause) => BrokerError::Abandoned(cause),
                        Call::Applied(_) | Call::Existing(_) => proto("decided not stored"),
                    });
                }
                Decision::Unknown => {
                    let cause = match (&call, &lookup) {
                        (Call::Ambiguous(c), Lookup::Failed(l)) => format!("{c}; then {l}"),
                        (Call::Ambiguous(c), _) => c.clone(),
                        _ => "no answer".to_owned(),
                    };
                    return Err(BrokerError::OutcomeUnknown(cause));
                }
                Decision::LookUp => {
                    if matches!(lookup, Lookup::Failed(_)) {
                        tokio::time::sleep(RESOLVE_PAUSE).await;
                    }
                    let left = resolve_until.saturating_duration_since(Instant::now());
                    lookup =
                        match tokio::time::timeout(left, self.look_up(&key, &fence, epoch)).await {
                            Err(_) => Lookup::Failed(format!(
                                "no reply to the dedupe lookup within {}s",
                                RESOLVE_BUDGET.as_secs()
                            )),
                            Ok(Err(e)) => Lookup::Failed(format!("dedupe lookup: {e}")),
                            Ok(Ok(l)) => l,
                        };
                }
            }
        }
    }

    /// One run of the resolve script: nothing to say when the broker left `epoch`, else the
    /// dedupe record, or a fence when there is none.
    async fn look_up(&self, key: &str, fence: &str, epoch: &str) -> Result<Lookup, BrokerError> {
        let mut conn = self.conn.clone();
        // EVALSHA only (see `write`): a process that was not validated cannot answer for a write.
        let reply: Value = redis::cmd("EVALSHA")
            .arg(self.resolve.get_hash())
            .arg(4)
            .arg(key)
            .arg(fence)
            .arg(STREAM)
            .arg(EPOCH)
            .arg(FENCE_TTL.as_secs())
            .arg(epoch)
            .query_async(&mut conn)
            .await
            .inspect_err(|e| {
                if e.code() == Some("NOSCRIPT") {
                    self.scripts_missing
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })?;
        parse_resolve_reply(reply)
    }

    /// Number of entries currently in the stream.
    pub async fn stream_len(&self) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("XLEN")
            .arg(STREAM)
            .query_async(&mut conn)
            .await?)
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
        Ok(self.read_after_tagged(after, count, block).await?.0)
    }

    /// [`read_after`](Self::read_after), and the epoch every returned entry was written in when
    /// they all carry the same one (`e`); `None` for an empty read, or when an entry has none
    /// (written before entries carried it) or another one.
    pub async fn read_after_tagged(
        &mut self,
        after: u64,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Message>, Option<String>), BrokerError> {
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
        let entries = match reply {
            Value::Nil => return Ok((Vec::new(), None)),
            Value::Array(streams) => {
                let stream = streams
                    .into_iter()
                    .next()
                    .ok_or_else(|| proto("xread streams"))?;
                let mut parts = as_array(stream)?.into_iter();
                let _name = parts.next();
                match parts.next() {
                    Some(entries) => entries,
                    None => return Ok((Vec::new(), None)),
                }
            }
            Value::Map(streams) => match streams.into_iter().next() {
                Some((_, entries)) => entries,
                None => return Ok((Vec::new(), None)),
            },
            other => return Err(proto(&format!("xread reply {other:?}"))),
        };
        parse_entries_tagged(entries)
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
    Ok(parse_entries_tagged(v)?.0)
}

/// [`parse_entries`], and the epoch (`e`) all entries carry, if they carry the same one.
fn parse_entries_tagged(v: Value) -> Result<(Vec<Message>, Option<String>), BrokerError> {
    let entries = match v {
        Value::Nil => return Ok((Vec::new(), None)),
        other => as_array(other)?,
    };
    let mut tag = Tag::Empty;
    let messages = entries
        .into_iter()
        .map(|e| parse_entry(e, &mut tag))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        messages,
        match tag {
            Tag::Uniform(e) => Some(e),
            Tag::Empty | Tag::Mixed => None,
        },
    ))
}

/// The epoch field seen so far over a batch of entries.
enum Tag {
    /// No entry yet.
    Empty,
    /// Every entry so far carried this epoch.
    Uniform(String),
    /// An entry carried none, or another one.
    Mixed,
}

impl Tag {
    fn see(&mut self, epoch: Option<&[u8]>) {
        *self = match (std::mem::replace(self, Tag::Mixed), epoch) {
            (Tag::Empty, Some(e)) => match std::str::from_utf8(e) {
                Ok(e) => Tag::Uniform(e.to_owned()),
                Err(_) => Tag::Mixed,
            },
            (Tag::Uniform(u), Some(e)) if u.as_bytes() == e => Tag::Uniform(u),
            _ => Tag::Mixed,
        };
    }
}

fn parse_entry(entry: Value, tag: &mut Tag) -> Result<Message, BrokerError> {
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
    let mut epoch: Option<Vec<u8>> = None;
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let key = match &k {
            Value::BulkString(b) => b.as_slice(),
            Value::SimpleString(s) => s.as_bytes(),
            _ => continue,
        };
        let slot = match key {
            b"e" => {
                if let Value::BulkString(b) = v {
                    epoch = Some(b);
                }
                continue;
            }
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
    tag.see(epoch.as_deref());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_flags_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("ca.crt");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a certificate").expect("write");
        let missing = dir.path().join("missing");
        let tls = "rediss://u:secret@broker:6379";
        let plain = "redis://u:secret@broker:6379";
        // (url, ca file, Ok or the error's distinctive words)
        let cases: [(&str, Option<&std::path::Path>, Result<bool, &str>); 7] = [
            (plain, None, Ok(false)),
            ("redis://u:secret@broker:notaport", None, Err("--redis-url")),
            ("http://u:secret@broker:6379", None, Err("--redis-url")),
            (tls, None, Ok(false)),
            (tls, Some(&pem), Ok(true)),
            (plain, Some(&pem), Err("is not rediss://")),
            (tls, Some(&junk), Err("no PEM certificate")),
        ];
        for (url, ca, want) in cases {
            let got = BrokerEndpoint::from_flags(url, ca);
            match (got, want) {
                (Ok(e), Ok(has_ca)) => assert_eq!(e.ca_pem.is_some(), has_ca, "{url} {ca:?}"),
                (Err(e), Err(words)) => {
                    assert!(e.contains(words), "{e}");
                    assert!(!e.contains("secret"), "password in {e}");
                }
                (got, want) => panic!("{url} {ca:?}: {got:?}, want {want:?}"),
            }
        }
        let e = BrokerEndpoint::from_flags(tls, Some(&missing)).expect_err("missing file");
        assert!(e.contains("missing"), "{e}");
        let shown = format!("{:?}", BrokerEndpoint::new(tls));
        assert!(!shown.contains("secret"), "{shown}");
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

    fn record(token: Option<&str>) -> Record {
        Record {
            position: 7,
            sent_at: 5,
            token: token.map(str::to_owned),
            author: Some("ann".into()),
            text: Some("hi".into()),
        }
    }

    /// Call result × dedupe lookup × budget left → answer (201 stored, 200 duplicate, 503 not
    /// stored, 504 unknown, or look again).
    #[test]
    fn decide_table() {
        let mine = record(Some("tok"));
        let other = record(Some("other"));
        let legacy = record(None);
        let calls = |which: &str| match which {
            "applied" => Call::Applied(3),
            "existing-other" => Call::Existing(other.clone()),
            "existing-mine" => Call::Existing(mine.clone()),
            "refused" => Call::Refused(BrokerError::DeadlinePassed),
            "ambiguous" => Call::Ambiguous("timed out".into()),
            _ => unreachable!(),
        };
        let lookups = |which: &str| match which {
            "not-yet" => Lookup::NotYet,
            "found-mine" => Lookup::Found(mine.clone()),
            "found-other" => Lookup::Found(other.clone()),
            "found-legacy" => Lookup::Found(legacy.clone()),
            "fenced" => Lookup::Fenced,
            "epoch-changed" => Lookup::EpochChanged,
            "failed" => Lookup::Failed("refused".into()),
            _ => unreachable!(),
        };
        #[derive(Debug, PartialEq)]
        enum Want {
            Stored(u64),
            Duplicate(Option<&'static str>),
            NotStored,
            LookUp,
            Unknown,
        }
        let table: &[(&str, &str, bool, Want)] = &[
            // A reply decides alone, whatever else is known.
            ("applied", "not-yet", true, Want::Stored(3)),
            ("applied", "failed", false, Want::Stored(3)),
            (
                "existing-other",
                "not-yet",
                true,
                Want::Duplicate(Some("other")),
            ),
            (
                "existing-other",
                "not-yet",
                false,
                Want::Duplicate(Some("other")),
            ),
            ("existing-mine", "not-yet", true, Want::Stored(7)),
            ("refused", "not-yet", true, Want::NotStored),
            ("refused", "failed", false, Want::NotStored),
            // No reply: look the record up while the budget lasts.
            ("ambiguous", "not-yet", true, Want::LookUp),
            ("ambiguous", "failed", true, Want::LookUp),
            ("ambiguous", "found-mine", true, Want::Stored(7)),
            ("ambiguous", "found-mine", false, Want::Stored(7)),
            (
                "ambiguous",
                "found-other",
                true,
                Want::Duplicate(Some("other")),
            ),
            ("ambiguous", "found-legacy", true, Want::Duplicate(None)),
            ("ambiguous", "fenced", true, Want::NotStored),
            ("ambiguous", "fenced", false, Want::NotStored),
            // The broker lost the write's epoch before it was resolved: nobody can say.
            ("ambiguous", "epoch-changed", true, Want::Unknown),
            ("ambiguous", "epoch-changed", false, Want::Unknown),
            // Budget spent without reaching Redis: unknown.
            ("ambiguous", "not-yet", false, Want::Unknown),
            ("ambiguous", "failed", false, Want::Unknown),
        ];
        for (call, lookup, budget_left, want) in table {
            let (c, l) = (calls(call), lookups(lookup));
            let got = match decide(&c, &l, "tok", *budget_left) {
                Decision::Stored(p) => Want::Stored(p),
                Decision::Duplicate(r) => {
                    assert_eq!(r.position, 7);
                    Want::Duplicate(match r.token.as_deref() {
                        Some("other") => Some("other"),
                        Some(_) => Some("?"),
                        None => None,
                    })
                }
                Decision::NotStored => Want::NotStored,
                Decision::LookUp => Want::LookUp,
                Decision::Unknown => Want::Unknown,
            };
            assert_eq!(&got, want, "{call} × {lookup} × budget left {budget_left}");
        }
    }

    #[test]
    fn dedupe_keys_are_per_author_and_unambiguous() {
        let keys = [
            idem_key("c", "ann", "k1"),
            idem_key("c", "bob", "k1"),
            idem_key("c", "ann:x", "k1"),
            idem_key("c", "ann", "x:k1"),
            idem_key("c", "", "k1"),
            idem_key("d", "ann", "k1"),
            idem_key("c", &"a".repeat(33), "k1"),
            idem_key("c", &"b".repeat(33), "k1"),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        assert_eq!(keys[0], "chat:idem:c:a3:ann:k1");
        assert_eq!(keys[4], "chat:idem:c:a0::k1");
        let long = &keys[6];
        assert!(
            long.starts_with("chat:idem:c:h:") && long.ends_with(":k1"),
            "{long}"
        );
        assert_eq!(long.len(), "chat:idem:c:h:".len() + 40 + ":k1".len());
        assert_eq!(idem_key("c", &"x".repeat(128), "k1").len(), long.len());
    }

    #[test]
    fn script_replies_parse() {
        let int = Value::Int;
        assert!(matches!(
            parse_resolve_reply(Value::Array(vec![int(0)])).unwrap(),
            Lookup::Fenced
        ));
        let found = Value::Array(vec![
            int(1),
            bulk("7"),
            bulk("5"),
            Value::Nil,
            bulk("ann"),
            bulk("hi"),
        ]);
        match parse_resolve_reply(found).unwrap() {
            Lookup::Found(r) => assert_eq!(r, record(None)),
            other => panic!("{other:?}"),
        }
        assert!(parse_resolve_reply(Value::Array(vec![int(1), Value::Nil])).is_err());
    }
}
