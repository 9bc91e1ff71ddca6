//! The replication log's storage engine: segment files of framed records on local disk, the
//! in-memory index that finds a position or a channel's messages without scanning from the start,
//! verification of every segment at open (torn tails, corruption, foreign segments), the log's
//! cluster id, and group-committed appends. Plain synchronous file I/O (callers in async code use
//! `spawn_blocking`).
//!
//! # On disk
//! `<data-dir>/segments/<first position, 20 digits>.seg`, each a segment header followed by a run
//! of records `[len u32 LE][crc32c u32 LE of payload][payload]` where the payload is the
//! message's JSON. The segment header (format v2, [`SEGMENT_HEADER_LEN`] = 40 bytes) is
//! `[magic "CHLOGSEG"][format version u32 LE = 2][cluster id, 16 bytes][first position u64 LE]
//! [crc32c u32 LE of the preceding 36 bytes]`. A segment that does not start with the magic is a
//! legacy (format v1) segment written before headers existed: records from byte 0, no cluster id.
//! Legacy segments are still read (and a legacy last segment is still appended to); new segments
//! are always written with a header. No legacy record can start with the magic (its length field
//! would read as about 1.3 GB, past [`MAX_PAYLOAD`]).
//!
//! Positions are dense across segments: a segment starts at the position after the previous
//! segment's last record, and its name, its header and its first record all carry that position.
//! A new segment starts once the current one is past [`StoreConfig::segment_bytes`]; it is
//! created atomically (header written to `<name>.seg.tmp`, fsynced, renamed, directory fsynced),
//! so a named segment without a valid header never comes from a crash.
//!
//! `<data-dir>/cluster-id` holds the log's cluster id (a UUID, written durably). It is fixed when
//! the log gets its first id: from the file, else from the first segment with a header, else when
//! the first segment is created (the id of the peer it was bootstrapped from if any, see
//! [`LogStore::adopt_cluster_id`], else one derived from the broker epoch the log follows, see
//! [`LogStore::propose_cluster_id`], so replicas that start together agree, else a random one).
//!
//! # Open: what is a torn tail, what is refused
//! Only an incomplete last write is a torn tail and is cut off (logged): in the last segment, a
//! record header or payload running past the end of the file, or a bad record (checksum, length)
//! with no valid record anywhere after it (the rest is zeros or garbage from an interrupted
//! write). Everything else is refused with an error naming the file, byte offset and positions:
//! a bad record followed by valid records (corruption of acknowledged records; nothing is
//! truncated), any damage before the last segment, a segment whose name is not 20 digits of a
//! position >= 1, a header or first record that does not match the name, segments that do not
//! continue each other, an empty (0-byte) segment, a segment without records other than a
//! headed last one (being created), and a segment of another cluster (foreign header id).
//!
//! # Index (rebuilt at open)
//! Records are grouped into *blocks* of at most [`StoreConfig::block_records`] consecutive records
//! of one segment; the store keeps each block's first position, file offset and length (the sparse
//! global index), and per channel the list of blocks holding at least one of its messages (the
//! sparse channel index). A page of a channel reads only blocks that hold that channel.
//!
//! # Durability and visibility
//! [`LogStore::append_batch`] writes a whole batch and calls `fdatasync` once (group commit); only
//! then does the persisted position advance. Readers copy block locations under a short read lock
//! and `pread` outside it, so they see exactly the records up to the persisted position.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use uuid::Uuid;

use crate::message::Message;

/// Default size past which a new segment is started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default number of records per index block.
pub const DEFAULT_BLOCK_RECORDS: u32 = 64;
/// Bytes of a record header (length and CRC).
const HEADER: usize = 8;
/// Longest payload a record may hold; a longer length in a header is corruption.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// About how many bytes one sequential read covers.
const READ_CHUNK: u64 = 256 << 10;
/// The first bytes of a segment written with a header (format v2).
const SEGMENT_MAGIC: [u8; 8] = *b"CHLOGSEG";
/// The segment format written now.
const FORMAT_VERSION: u32 = 2;
/// Bytes of a segment header: magic, version, cluster id, first position, crc32c.
pub const SEGMENT_HEADER_LEN: u64 = 40;
/// The file in the data dir holding the log's cluster id.
pub const CLUSTER_ID_FILE: &str = "cluster-id";

/// What went wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A file of the log that cannot be used (bad name, header, record content or order).
    #[error("corrupt log: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Damaged records that are not a torn tail: positions `from..=to` would be lost by cutting
    /// there. Nothing was changed on disk.
    #[error(
        "corrupt log: {} at offset {offset}: {reason}; positions {from}..={to} affected; \
         refusing to open (nothing was truncated)",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
        from: u64,
        to: u64,
    },
    /// A segment whose header carries another cluster's id.
    #[error(
        "foreign segment {}: it belongs to log cluster {found}, this log is cluster {ours}",
        path.display()
    )]
    ForeignSegment {
        path: PathBuf,
        found: Uuid,
        ours: Uuid,
    },
    /// A peer whose log is another cluster's.
    #[error("peer {peer} serves log cluster {theirs}, this log is cluster {ours}")]
    ClusterMismatch {
        peer: String,
        ours: Uuid,
        theirs: Uuid,
    },
    /// A peer sent a cluster id that is not a UUID.
    #[error("peer {peer} sent a malformed log cluster id {value:?}")]
    BadClusterId { peer: String, value: String },
    #[error("batch does not continue the log: expected position {expected}, got {got}")]
    NotDense { expected: u64, got: u64 },
    #[error("message {position} is {len} bytes, more than a record may hold")]
    TooLarge { position: u64, len: usize },
    #[error("the log refuses writes after a failed sync ({0}); restart the replica")]
    Poisoned(String),
}

impl StoreError {
    /// The segment file [`LogStore::open`] refused, when moving it (and every later segment)
    /// aside lets the log open: a damaged, misnamed, misplaced, empty or foreign segment. `None`
    /// for every other error (I/O, a garbled `cluster-id` file, write errors).
    pub fn refused_segment(&self) -> Option<&Path> {
        match self {
            StoreError::Damaged { path, .. } | StoreError::ForeignSegment { path, .. } => {
                Some(path)
            }
            StoreError::Corrupt { path, .. }
                if path.parent().and_then(Path::file_name) == Some("segments".as_ref()) =>
            {
                Some(path)
            }
            _ => None,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Tunables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// A new segment starts once the current one holds at least this many bytes.
    pub segment_bytes: u64,
    /// Records per index block (the granularity of the sparse indexes).
    pub block_records: u32,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            block_records: DEFAULT_BLOCK_RECORDS,
        }
    }
}

/// What one [`LogStore::append_batch`] cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendStats {
    pub records: usize,
    pub bytes: u64,
    /// Time spent in `fdatasync` (one per batch, one more per segment roll).
    pub sync: Duration,
}

/// What [`LogStore::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub persisted: u64,
    /// Bytes cut from the tail of the last segment (a torn last write), if any.
    pub truncated_bytes: u64,
    /// The log's cluster id, if it has one yet.
    pub cluster_id: Option<Uuid>,
    pub took: Duration,
}

/// Messages of one channel held by the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: String,
    pub messages: u64,
    pub last_position: u64,
}

struct Segment {
    path: PathBuf,
    /// Read handle (`pread`), shared with readers.
    file: Arc<File>,
    /// Bytes before the first record: the segment header, 0 for a legacy segment.
    start: u64,
    /// Persisted bytes.
    len: u64,
    records: u64,
}

/// A run of consecutive records of one segment. Record `i` of a block holds position
/// `first + i`, except in a void block: its one record (a void record) covers `first ..= last`.
#[derive(Clone, Copy)]
struct Block {
    first: u64,
    segment: u32,
    offset: u64,
    len: u64,
    records: u32,
    /// Position of the block's last record.
    last: u64,
    /// The block is one void record.
    void: bool,
}

#[derive(Default)]
struct ChannelIndex {
    messages: u64,
    last_position: u64,
    /// Blocks (indexes into `Meta::blocks`) holding at least one message of the channel.
    blocks: Vec<u32>,
}

#[derive(Default)]
struct Meta {
    segments: Vec<Segment>,
    blocks: Vec<Block>,
    channels: HashMap<String, ChannelIndex>,
    /// Position before the first record (0 for a log that starts at 1).
    base: u64,
    persisted: u64,
    /// Positions covered by void records (they hold no message).
    voided: u64,
    /// The log's cluster id, once it has one.
    cluster: Option<Uuid>,
    /// The id a new log takes when it creates its first segment (see
    /// [`LogStore::propose_cluster_id`]).
    proposed: Option<Uuid>,
}

impl Meta {
    /// Adds one persisted record to the indexes.
    fn index(
        &mut self,
        block_records: u32,
        segment: u32,
        offset: u64,
        len: u64,
        position: u64,
        channel: &str,
    ) {
        // A void record (empty channel) is a block of its own, covering every position after
        // the record before it; it belongs to no channel.
        let void = channel.is_empty();
        let first = self.persisted + 1;
        let new_block = match self.blocks.last() {
            Some(b) => b.segment != segment || b.records >= block_records || b.void || void,
            None => true,
        };
        if new_block {
            self.blocks.push(Block {
                first: if void { first } else { position },
                segment,
                offset,
                len: 0,
                records: 0,
                last: position,
                void,
            });
        }
        let block_no = (self.blocks.len() - 1) as u32;
        if let Some(b) = self.blocks.last_mut() {
            b.len += len;
            b.records += 1;
            b.last = position;
        }
        if void {
            self.voided += position + 1 - first;
            let seg = &mut self.segments[segment as usize];
            seg.len = offset + len;
            seg.records += 1;
            self.persisted = position;
            return;
        }
        let ch = match self.channels.get_mut(channel) {
            Some(ch) => ch,
            None => self.channels.entry(channel.to_owned()).or_default(),
        };
        ch.messages += 1;
        ch.last_position = position;
        if ch.blocks.last() != Some(&block_no) {
            ch.blocks.push(block_no);
        }
        let seg = &mut self.segments[segment as usize];
        seg.len = offset + len;
        seg.records += 1;
        self.persisted = position;
    }

    /// The index of the block holding `position` (which must be in `base+1 ..= persisted`).
    fn block_of(&self, position: u64) -> usize {
        self.blocks
            .partition_point(|b| b.first <= position)
            .saturating_sub(1)
    }
}

struct Writer {
    /// Append handle on the last segment, if one exists.
    file: Option<File>,
    /// Records encoded but not yet written.
    buf: Vec<u8>,
    /// Locations of the records in `buf`: (offset in segment, record length, position, channel).
    pending: Vec<(u64, u64, u64, String)>,
    poisoned: Option<String>,
}

/// The on-disk log. Share it as `Arc<LogStore>`; one writer appends, any number of readers read.
pub struct LogStore {
    /// The data dir (holds [`CLUSTER_ID_FILE`]).
    data_dir: PathBuf,
    /// `<data dir>/segments`.
    dir: PathBuf,
    config: StoreConfig,
    meta: RwLock<Meta>,
    writer: Mutex<Writer>,
}

/// Just the parts of a record the index needs.
#[derive(Deserialize)]
struct RecordHead<'a> {
    position: u64,
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// What a file in the segments directory is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    /// A segment whose first position is this.
    Segment(u64),
    /// A segment being created (`<name>.seg.tmp`): left over from a crash, removed at open.
    Creating,
    /// Not the log's (ignored, with a warning).
    Other,
    /// Named like a segment but the name does not fit: refused.
    BadSegment(String),
}

/// Classifies a file in the segments directory by its name.
fn classify_entry(name: &str) -> EntryKind {
    if name.ends_with(".seg.tmp") {
        return EntryKind::Creating;
    }
    let Some(digits) = name.strip_suffix(".seg") else {
        return EntryKind::Other;
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return EntryKind::BadSegment(
            "a segment name must be 20 decimal digits and .seg".to_owned(),
        );
    }
    match digits.parse::<u64>() {
        Ok(0) => EntryKind::BadSegment("a segment cannot start at position 0".to_owned()),
        Ok(first) => EntryKind::Segment(first),
        Err(_) => EntryKind::BadSegment("the segment name is past the largest position".to_owned()),
    }
}

/// The names to move aside for the refused file `refused`, among the segment directory's
/// `names`: the refused file, and when it is named like a valid segment every segment after it
/// (their positions would not continue the log any more).
fn quarantine_set(refused: &str, names: &[String]) -> Vec<String> {
    let after = match classify_entry(refused) {
        EntryKind::Segment(first) => Some(first),
        _ => None,
    };
    let mut out: Vec<String> = names
        .iter()
        .filter(|name| {
            name.as_str() == refused
                || matches!(
                    (after, classify_entry(name)),
                    (Some(from), EntryKind::Segment(first)) if first > from
                )
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// Moves the refused segment `path` (see [`StoreError::refused_segment`]) and every later
/// segment to `<data dir>/quarantine/<unix seconds>/`, where they are kept (never deleted), and
/// fsyncs the directories. Returns the files' new paths. Errors: I/O.
pub fn quarantine(data_dir: &Path, path: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let seg_dir = data_dir.join("segments");
    let refused = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&seg_dir).map_err(io_err("listing", &seg_dir))? {
        let entry = entry.map_err(io_err("listing", &seg_dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let root = data_dir.join("quarantine");
    let target = root.join(stamp.to_string());
    std::fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
    let mut moved = Vec::new();
    for name in quarantine_set(&refused, &names) {
        let (from, to) = (seg_dir.join(&name), target.join(&name));
        std::fs::rename(&from, &to).map_err(io_err("moving aside", &from))?;
        moved.push(to);
    }
    sync_dir(&target)?;
    sync_dir(&root)?;
    sync_dir(&seg_dir)?;
    Ok(moved)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Writes `contents` to `path` durably: temp file, fsync, rename, fsync of the directory.
fn write_durably(dir: &Path, path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(contents).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err("renaming", &tmp))?;
    sync_dir(dir)
}

/// Reads `<data dir>/cluster-id` (none when absent or empty).
fn read_cluster_id(data_dir: &Path) -> Result<Option<Uuid>, StoreError> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                op: "reading",
                path,
                source,
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(text.trim())
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path,
            offset: 0,
            reason: format!("not a cluster id: {e}"),
        })
}

/// The cluster id a log following broker epoch `epoch` takes: the epoch itself when it is a
/// UUID (as the broker makes them), else 16 bytes derived from it.
fn cluster_id_from_epoch(epoch: &str) -> Uuid {
    if let Ok(id) = Uuid::parse_str(epoch) {
        return id;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let crc = crc32c::crc32c_append(i as u32 + 1, epoch.as_bytes());
        chunk.copy_from_slice(&crc.to_le_bytes());
    }
    Uuid::from_bytes(bytes)
}

/// The header at the start of a format-v2 segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentHeader {
    cluster: Uuid,
    /// The position of the segment's first record.
    first: u64,
}

/// The [`SEGMENT_HEADER_LEN`] bytes of a segment header.
fn encode_segment_header(h: &SegmentHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(h.cluster.as_bytes());
    out.extend_from_slice(&h.first.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// What the start of a segment file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeadRead {
    /// No magic: a legacy (format v1) segment, records from byte 0.
    Legacy,
    Header(SegmentHeader),
    /// The magic, but the header cannot be used.
    Bad(String),
}

/// Reads the segment header at the start of `bytes`.
fn decode_segment_header(bytes: &[u8]) -> HeadRead {
    let n = bytes.len().min(SEGMENT_MAGIC.len());
    if n == 0 || bytes[..n] != SEGMENT_MAGIC[..n] {
        return HeadRead::Legacy;
    }
    let len = SEGMENT_HEADER_LEN as usize;
    if bytes.len() < len {
        return HeadRead::Bad(format!(
            "incomplete segment header ({} of {len} bytes)",
            bytes.len()
        ));
    }
    let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
    let crc = u32::from_le_bytes(word(len - 4));
    if crc32c::crc32c(&bytes[..len - 4]) != crc {
        return HeadRead::Bad("segment header checksum mismatch".to_owned());
    }
    let version = u32::from_le_bytes(word(8));
    if version != FORMAT_VERSION {
        return HeadRead::Bad(format!("unsupported segment format version {version}"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[12..28]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[28..36]);
    HeadRead::Header(SegmentHeader {
        cluster: Uuid::from_bytes(id),
        first: u64::from_le_bytes(first),
    })
}

/// Encodes one record (header and payload) onto `out`.
fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What is wrong with the record at some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Damage {
    /// Fewer bytes left than a record header.
    TornHeader,
    /// The header announces more payload than the file holds.
    TornPayload,
    /// A complete record that fails its checksum, or a length past the limit.
    Bad(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::TornHeader => f.write_str("incomplete record header"),
            Damage::TornPayload => f.write_str("incomplete record payload"),
            Damage::Bad(reason) => f.write_str(reason),
        }
    }
}

/// A record read back, or why not.
enum Frame<'a> {
    Record(&'a [u8]),
    Damaged(Damage),
}

/// Reads the record at the start of `buf`.
fn decode_record(buf: &[u8]) -> Frame<'_> {
    if buf.len() < HEADER {
        return Frame::Damaged(Damage::TornHeader);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Frame::Damaged(Damage::Bad(format!(
            "record length {len} exceeds the limit"
        )));
    }
    let end = HEADER + len as usize;
    if buf.len() < end {
        return Frame::Damaged(Damage::TornPayload);
    }
    let payload = &buf[HEADER..end];
    if crc32c::crc32c(payload) != crc {
        return Frame::Damaged(Damage::Bad("checksum mismatch".to_owned()));
    }
    Frame::Record(payload)
}

/// A good record found by [`scan_segment_bytes`].
struct ScannedRecord<'a> {
    offset: u64,
    len: u64,
    position: u64,
    channel: Cow<'a, str>,
}

/// A segment's bytes read front to back up to the first damaged record.
struct SegmentScan<'a> {
    header: Option<SegmentHeader>,
    /// Bytes before the first record.
    start: u64,
    records: Vec<ScannedRecord<'a>>,
    /// Where the good records end: the file's end, or where `damage` starts.
    end: u64,
    damage: Option<Damage>,
}

/// Reads a whole segment file whose name says `first`. Damaged records stop the scan (the caller
/// decides); a header or a checksummed record that does not fit is an error `(offset, reason)`.
fn scan_segment_bytes(bytes: &[u8], first: u64) -> Result<SegmentScan<'_>, (u64, String)> {
    let (header, start) = match decode_segment_header(bytes) {
        HeadRead::Legacy => (None, 0),
        HeadRead::Bad(reason) => return Err((0, reason)),
        HeadRead::Header(h) if h.first != first => {
            return Err((
                0,
                format!(
                    "the segment header says first position {}, the file name {first}",
                    h.first
                ),
            ));
        }
        HeadRead::Header(h) => (Some(h), SEGMENT_HEADER_LEN),
    };
    let mut records = Vec::new();
    let mut offset = start;
    let mut position = first;
    let damage = loop {
        let rest = &bytes[offset as usize..];
        if rest.is_empty() {
            break None;
        }
        let payload = match decode_record(rest) {
            // Never written (a message is not empty): zeros where records should be.
            Frame::Record([]) => break Some(Damage::Bad("empty record".to_owned())),
            Frame::Record(p) => p,
            Frame::Damaged(d) => break Some(d),
        };
        // A record whose checksum holds but whose content is wrong is not a torn write.
        let head: RecordHead = serde_json::from_slice(payload)
            .map_err(|e| (offset, format!("record is not a message: {e}")))?;
        // A void record (empty channel) covers every position up to its own.
        if head.channel.is_empty() && head.position >= position {
            position = head.position;
        }
        if head.position != position {
            return Err((
                offset,
                format!(
                    "record holds position {}, expected {position}",
                    head.position
                ),
            ));
        }
        let len = (HEADER + payload.len()) as u64;
        records.push(ScannedRecord {
            offset,
            len,
            position,
            channel: head.channel,
        });
        offset += len;
        position += 1;
    };
    Ok(SegmentScan {
        header,
        start,
        records,
        end: offset,
        damage,
    })
}

/// Valid records found after a damaged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ValidAfter {
    /// Offset of the first valid record after the damage.
    offset: u64,
    /// Positions of the first and last of the run of valid records starting there.
    first: u64,
    last: u64,
}

/// The position and length of a valid record (checksum holds, payload is a message) at `at`.
fn valid_record_at(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let Frame::Record(payload) = decode_record(bytes.get(at..)?) else {
        return None;
    };
    if payload.first() != Some(&b'{') {
        return None;
    }
    let head: RecordHead = serde_json::from_slice(payload).ok()?;
    Some((head.position, HEADER + payload.len()))
}

/// Looks for a valid record starting anywhere after `damaged` (the offset of a damaged record),
/// and follows the run of valid records from the first one found.
fn find_valid_after(bytes: &[u8], damaged: u64) -> Option<ValidAfter> {
    let mut at = damaged as usize + 1;
    while at + HEADER <= bytes.len() {
        if let Some((first, len)) = valid_record_at(bytes, at) {
            let mut last = first;
            let mut next = at + len;
            while let Some((position, len)) = valid_record_at(bytes, next) {
                last = position;
                next += len;
            }
            return Some(ValidAfter {
                offset: at as u64,
                first,
                last,
            });
        }
        at += 1;
    }
    None
}

/// What open does about a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DamageDecision {
    /// An incomplete last write: cut the file at the damaged record.
    Truncate,
    /// Corruption of records that were (or may have been) acknowledged: refuse to open.
    Refuse,
}

/// Decides about a damaged record: only in the last segment and with no valid record after it
/// is it a torn tail. (A torn header or payload runs to the end of the file, so nothing valid
/// can follow it unless its length field was corrupted; then it is refused like a bad checksum.)
fn decide_damage(last_segment: bool, valid_after: Option<&ValidAfter>) -> DamageDecision {
    if last_segment && valid_after.is_none() {
        DamageDecision::Truncate
    } else {
        DamageDecision::Refuse
    }
}

/// A segment verified by [`check_segment`], ready to index.
struct CheckedSegment<'a> {
    header: Option<SegmentHeader>,
    start: u64,
    records: Vec<ScannedRecord<'a>>,
    /// Length to cut the file to, with why, when its tail is torn.
    truncate: Option<(u64, Damage)>,
}

/// Verifies the bytes of segment `path` (first position `first`). `next_first` is the next
/// segment's first position, `None` for the last segment. Decides every case of the module docs'
/// "Open" section; touches no file.
fn check_segment<'a>(
    path: &Path,
    bytes: &'a [u8],
    first: u64,
    next_first: Option<u64>,
) -> Result<CheckedSegment<'a>, StoreError> {
    let corrupt = |offset: u64, reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    if bytes.is_empty() {
        return Err(corrupt(
            0,
            "empty segment file (segments are created with a header, so no crash leaves one)"
                .to_owned(),
        ));
    }
    let scan =
        scan_segment_bytes(bytes, first).map_err(|(offset, reason)| corrupt(offset, reason))?;
    let last = next_first.is_none();
    let mut truncate = None;
    if let Some(damage) = scan.damage {
        let from = scan.records.last().map_or(first, |r| r.position + 1);
        let valid_after = find_valid_after(bytes, scan.end);
        match decide_damage(last, valid_after.as_ref()) {
            DamageDecision::Truncate => truncate = Some((scan.end, damage)),
            DamageDecision::Refuse => {
                let to = match (valid_after, next_first) {
                    (Some(v), _) => v.last,
                    (None, Some(next)) => next.saturating_sub(1),
                    (None, None) => from,
                };
                let reason = match valid_after {
                    Some(v) => format!(
                        "{damage}, with valid records for positions {}..={} from offset {} on \
                         (not a torn write)",
                        v.first, v.last, v.offset
                    ),
                    None => format!("{damage} (not the last segment)"),
                };
                return Err(StoreError::Damaged {
                    path: path.to_owned(),
                    offset: scan.end,
                    reason,
                    from,
                    to: to.max(from),
                });
            }
        }
    }
    if scan.records.is_empty() && !(last && scan.header.is_some()) {
        let reason = if last {
            "a legacy segment without a single complete record"
        } else {
            "a segment without records, followed by another segment"
        };
        return Err(corrupt(scan.start, reason.to_owned()));
    }
    Ok(CheckedSegment {
        header: scan.header,
        start: scan.start,
        records: scan.records,
        truncate,
    })
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, verifying every segment and rebuilding the index.
    /// A torn last write in the last segment is cut off (logged); everything else that does not
    /// fit (see the module docs) is an error naming the file, offset and positions, and leaves
    /// the files as they were. Leftover `*.seg.tmp` files of an interrupted segment creation are
    /// removed.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(LogStore, OpenReport), StoreError> {
        let started = Instant::now();
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir).map_err(io_err("creating", &seg_dir))?;
        let file_cluster = read_cluster_id(dir)?;
        let mut firsts = Vec::new();
        let mut creating = Vec::new();
        for entry in std::fs::read_dir(&seg_dir).map_err(io_err("listing", &seg_dir))? {
            let entry = entry.map_err(io_err("listing", &seg_dir))?;
            let name = entry.file_name();
            match classify_entry(&name.to_string_lossy()) {
                EntryKind::Segment(first) => firsts.push(first),
                EntryKind::Creating => creating.push(entry.path()),
                EntryKind::Other => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a segment")
                }
                EntryKind::BadSegment(reason) => {
                    return Err(StoreError::Corrupt {
                        path: entry.path(),
                        offset: 0,
                        reason,
                    });
                }
            }
        }
        firsts.sort_unstable();
        let mut meta = Meta {
            cluster: file_cluster,
            ..Meta::default()
        };
        let mut truncate = None;
        for (i, &first) in firsts.iter().enumerate() {
            let path = seg_dir.join(segment_name(first));
            if i == 0 {
                meta.base = first - 1;
                meta.persisted = first - 1;
            } else if first != meta.persisted + 1 {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "segment starts at position {first} but the previous one ends at {}",
                        meta.persisted
                    ),
                });
            }
            let mut file = File::open(&path).map_err(io_err("opening", &path))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(io_err("reading", &path))?;
            let checked = check_segment(&path, &bytes, first, firsts.get(i + 1).copied())?;
            if let Some(h) = checked.header {
                match meta.cluster {
                    None => meta.cluster = Some(h.cluster),
                    Some(ours) if ours != h.cluster => {
                        return Err(StoreError::ForeignSegment {
                            path,
                            found: h.cluster,
                            ours,
                        });
                    }
                    Some(_) => {}
                }
            }
            let index = meta.segments.len() as u32;
            meta.segments.push(Segment {
                path: path.clone(),
                file: Arc::new(file),
                start: checked.start,
                len: checked.start,
                records: 0,
            });
            for r in &checked.records {
                meta.index(
                    config.block_records,
                    index,
                    r.offset,
                    r.len,
                    r.position,
                    &r.channel,
                );
            }
            if let Some((keep, damage)) = checked.truncate {
                truncate = Some((path, keep, bytes.len() as u64 - keep, damage));
            }
        }
        // Only now that every segment passed is anything on disk changed.
        let mut truncated_bytes = 0;
        if let Some((path, keep, cut, damage)) = truncate {
            tracing::warn!(
                file = %path.display(),
                offset = keep,
                bytes = cut,
                reason = %damage,
                kept_through = meta.persisted,
                "truncating a torn or corrupt tail of the last segment (an incomplete last write: nothing valid after it)"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("opening", &path))?;
            f.set_len(keep).map_err(io_err("truncating", &path))?;
            f.sync_all().map_err(io_err("syncing", &path))?;
            truncated_bytes = cut;
        }
        for tmp in &creating {
            tracing::info!(file = %tmp.display(), "removing a segment whose creation was interrupted");
            std::fs::remove_file(tmp).map_err(io_err("removing", tmp))?;
        }
        if !creating.is_empty() {
            sync_dir(&seg_dir)?;
        }
        if let Some(id) = meta.cluster
            && file_cluster.is_none()
        {
            write_durably(dir, &dir.join(CLUSTER_ID_FILE), id.to_string().as_bytes())?;
        }
        let file = match meta.segments.last() {
            Some(seg) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err("opening for append", &seg.path))?,
            ),
            None => None,
        };
        let report = OpenReport {
            segments: meta.segments.len(),
            persisted: meta.persisted,
            truncated_bytes,
            cluster_id: meta.cluster,
            took: started.elapsed(),
        };
        let store = LogStore {
            data_dir: dir.to_owned(),
            dir: seg_dir,
            config,
            meta: RwLock::new(meta),
            writer: Mutex::new(Writer {
                file,
                buf: Vec::new(),
                pending: Vec::new(),
                poisoned: None,
            }),
        };
        Ok((store, report))
    }

    /// The log's cluster id, once it has one (see the module docs).
    pub fn cluster_id(&self) -> Option<Uuid> {
        self.meta().cluster
    }

    /// Takes a peer's cluster id (`theirs`, a UUID as text from `peer`) before copying from it:
    /// a log without an id adopts it (written durably to `cluster-id`), a log with the same id
    /// goes on. Errors: [`StoreError::BadClusterId`] when `theirs` is not a UUID,
    /// [`StoreError::ClusterMismatch`] when this log already has another id, I/O errors writing
    /// the file.
    pub fn adopt_cluster_id(&self, theirs: &str, peer: &str) -> Result<(), StoreError> {
        let theirs = Uuid::parse_str(theirs.trim()).map_err(|_| StoreError::BadClusterId {
            peer: peer.to_owned(),
            value: theirs.to_owned(),
        })?;
        // The writer lock orders this with the creation of a first segment.
        let _w = self.writer();
        let ours = self.meta().cluster;
        match ours {
            Some(ours) if ours == theirs => Ok(()),
            Some(ours) => Err(StoreError::ClusterMismatch {
                peer: peer.to_owned(),
                ours,
                theirs,
            }),
            None => {
                self.set_cluster_id(theirs)?;
                tracing::info!(cluster_id = %theirs, peer, "adopted the peer's log cluster id");
                Ok(())
            }
        }
    }

    /// Remembers the broker epoch the log follows: a log without a cluster id yet takes one
    /// derived from it when it creates its first segment, so replicas that start together on a
    /// new broker agree on the id. No effect once the log has an id.
    pub fn propose_cluster_id(&self, epoch: &str) {
        let mut meta = self.meta_mut();
        if meta.cluster.is_none() {
            meta.proposed = Some(cluster_id_from_epoch(epoch));
        }
    }

    /// Writes `id` to the data dir durably, then makes it the log's id.
    fn set_cluster_id(&self, id: Uuid) -> Result<(), StoreError> {
        let path = self.data_dir.join(CLUSTER_ID_FILE);
        write_durably(&self.data_dir, &path, id.to_string().as_bytes())?;
        self.meta_mut().cluster = Some(id);
        Ok(())
    }

    fn meta(&self) -> RwLockReadGuard<'_, Meta> {
        self.meta.read().unwrap_or_else(|e| e.into_inner())
    }

    fn meta_mut(&self) -> RwLockWriteGuard<'_, Meta> {
        self.meta.write().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last position made durable (0 when empty).
    pub fn persisted(&self) -> u64 {
        self.meta().persisted
    }

    /// Number of messages held.
    pub fn messages(&self) -> u64 {
        let meta = self.meta();
        meta.persisted - meta.base - meta.voided
    }

    /// Number of segment files.
    pub fn segments(&self) -> usize {
        self.meta().segments.len()
    }

    /// Every channel with its message count and last position, by name.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        let meta = self.meta();
        let mut out: Vec<ChannelSummary> = meta
            .channels
            .iter()
            .map(|(name, ch)| ChannelSummary {
                name: name.clone(),
                messages: ch.messages,
                last_position: ch.last_position,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Appends messages that continue the log densely (`persisted()+1, +2, …`), writes them all
    /// and syncs once, then advances the persisted position. Rolls to a new segment on the way
    /// when the current one is full (the full one is synced before the next is created).
    pub fn append_batch(&self, batch: &[Message]) -> Result<AppendStats, StoreError> {
        let mut stats = AppendStats::default();
        if batch.is_empty() {
            return Ok(stats);
        }
        let mut w = self.writer();
        if let Some(reason) = &w.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        // (persisted length, bytes before the first record) of the last segment.
        let (mut segment, mut expected) = {
            let meta = self.meta();
            (
                meta.segments.last().map(|s| (s.len, s.start)),
                meta.persisted + 1,
            )
        };
        let first_expected = expected;
        for m in batch {
            if !m.continues(expected - 1) {
                return Err(StoreError::NotDense {
                    expected,
                    got: m.position,
                });
            }
            expected = m.position + 1;
        }
        // From here on `expected` is the first position the next record covers.
        let mut expected = first_expected;
        w.buf.clear();
        w.pending.clear();
        for m in batch {
            // A segment holding no record yet is never full.
            let full = segment.is_some_and(|(len, start)| {
                let used = len + w.buf.len() as u64;
                used > start && used >= self.config.segment_bytes
            });
            if segment.is_none() || full {
                if !w.buf.is_empty() {
                    stats.sync += self.commit(&mut w)?;
                }
                // A segment is named by the first position it covers (a void record covers
                // from the position after the previous record).
                self.roll(&mut w, expected)?;
                segment = Some((SEGMENT_HEADER_LEN, SEGMENT_HEADER_LEN));
            }
            expected = m.position + 1;
            let payload = m.to_json();
            if payload.len() > MAX_PAYLOAD as usize {
                w.buf.clear();
                w.pending.clear();
                return Err(StoreError::TooLarge {
                    position: m.position,
                    len: payload.len(),
                });
            }
            let offset = segment.map_or(0, |(len, _)| len) + w.buf.len() as u64;
            encode_record(&mut w.buf, &payload);
            let len = (HEADER + payload.len()) as u64;
            w.pending.push((offset, len, m.position, m.channel.clone()));
            stats.records += 1;
            stats.bytes += len;
        }
        stats.sync += self.commit(&mut w)?;
        Ok(stats)
    }

    /// Writes the buffered records to the last segment, syncs, and indexes them.
    fn commit(&self, w: &mut Writer) -> Result<Duration, StoreError> {
        let (path, persisted_len, segment) = {
            let meta = self.meta();
            let seg = meta
                .segments
                .last()
                .ok_or_else(|| StoreError::Poisoned("no segment to write".into()))?;
            (seg.path.clone(), seg.len, (meta.segments.len() - 1) as u32)
        };
        let Some(file) = w.file.as_mut() else {
            return Err(StoreError::Poisoned("no open segment".into()));
        };
        if let Err(e) = file.write_all(&w.buf) {
            // Take back what may have been written, so the file ends at the persisted length.
            if let Err(e2) = file.set_len(persisted_len) {
                w.poisoned = Some(format!(
                    "write failed ({e}) and truncating back failed ({e2})"
                ));
            }
            return Err(StoreError::Io {
                op: "writing",
                path,
                source: e,
            });
        }
        let started = Instant::now();
        if let Err(e) = file.sync_data() {
            w.poisoned = Some(format!("fdatasync of {} failed: {e}", path.display()));
            return Err(StoreError::Io {
                op: "syncing",
                path,
                source: e,
            });
        }
        let sync = started.elapsed();
        let mut meta = self.meta_mut();
        for (offset, len, position, channel) in w.pending.drain(..) {
            meta.index(
                self.config.block_records,
                segment,
                offset,
                len,
                position,
                &channel,
            );
        }
        w.buf.clear();
        Ok(sync)
    }

    /// Starts a new segment whose first record will be `first`, atomically: its header goes to
    /// `<name>.seg.tmp`, which is fsynced and renamed, and the directory fsynced. The first
    /// segment of a log without a cluster id fixes the id (proposed, else random) first.
    fn roll(&self, w: &mut Writer, first: u64) -> Result<(), StoreError> {
        let (cluster, proposed) = {
            let meta = self.meta();
            (meta.cluster, meta.proposed)
        };
        let cluster = match cluster {
            Some(id) => id,
            None => {
                let id = proposed.unwrap_or_else(Uuid::new_v4);
                self.set_cluster_id(id)?;
                tracing::info!(cluster_id = %id, "this log's cluster id is set");
                id
            }
        };
        let path = self.dir.join(segment_name(first));
        let header = encode_segment_header(&SegmentHeader { cluster, first });
        write_durably(&self.dir, &path, &header)?;
        let reader = File::open(&path).map_err(io_err("opening", &path))?;
        let append = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("opening for append", &path))?;
        let mut meta = self.meta_mut();
        if meta.segments.is_empty() {
            meta.base = first - 1;
        }
        meta.segments.push(Segment {
            path,
            file: Arc::new(reader),
            start: SEGMENT_HEADER_LEN,
            len: SEGMENT_HEADER_LEN,
            records: 0,
        });
        w.file = Some(append);
        Ok(())
    }

    /// Up to `limit` messages of `channel` with position > `after`, ascending.
    pub fn channel_page(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.channel_page_within(channel, after, limit, usize::MAX)
            .map(|(page, _)| page)
    }

    /// As [`LogStore::channel_page`], also stopping before the message that would take the
    /// page's payload bytes ([`Message::payload_bytes`]) past `max_bytes` (a first message
    /// larger than that is a page of its own). The flag says whether it stopped for bytes: the
    /// page is then complete only up to its last message.
    pub fn channel_page_within(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let mut out: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        let plan: Vec<(Arc<File>, PathBuf, Block)> = {
            let meta = self.meta();
            let Some(ch) = meta.channels.get(channel) else {
                return Ok((out, false));
            };
            if ch.last_position <= after || limit == 0 {
                return Ok((out, false));
            }
            let start = meta.block_of(after.saturating_add(1).max(meta.base + 1)) as u32;
            let from = ch.blocks.partition_point(|&b| b < start);
            // Every listed block holds at least one message of the channel, so `limit + 1`
            // blocks are enough (the first may hold only messages at or before `after`).
            ch.blocks[from..]
                .iter()
                .take(limit.saturating_add(1))
                .map(|&b| {
                    let block = meta.blocks[b as usize];
                    let seg = &meta.segments[block.segment as usize];
                    (seg.file.clone(), seg.path.clone(), block)
                })
                .collect()
        };
        for (file, path, block) in plan {
            let buf = read_at(&file, &path, block.offset, block.len)?;
            let mut at = 0usize;
            for position in block.first..block.first + u64::from(block.records) {
                let payload = frame_at(&buf, at, &path, block.offset)?;
                let offset = block.offset + at as u64;
                at += HEADER + payload.len();
                if position <= after {
                    continue;
                }
                let head: RecordHead = parse_json(payload, &path, offset)?;
                if head.channel != channel {
                    continue;
                }
                let m: Message = parse_json(payload, &path, offset)?;
                bytes = bytes.saturating_add(m.payload_bytes());
                if bytes > max_bytes && !out.is_empty() {
                    return Ok((out, true));
                }
                out.push(m);
                if out.len() >= limit {
                    return Ok((out, false));
                }
            }
        }
        Ok((out, false))
    }

    /// A reader of every record with position in `after+1 ..= upto` (capped at the persisted
    /// position now), in global order, reading from disk in chunks of bounded size.
    pub fn read_after(self: &Arc<Self>, after: u64, upto: u64) -> LogReader {
        let (base, persisted) = {
            let meta = self.meta();
            (meta.base, meta.persisted)
        };
        LogReader {
            store: self.clone(),
            next: after.max(base) + 1,
            upto: upto.min(persisted),
        }
    }

    /// All messages in `after+1 ..= upto` (tests and small ranges; snapshots use [`read_after`]).
    ///
    /// [`read_after`]: LogStore::read_after
    pub fn messages_between(
        self: &Arc<Self>,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Message>, StoreError> {
        let mut reader = self.read_after(after, upto);
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            out.extend(chunk.messages()?);
        }
        Ok(out)
    }
}

fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(io_err("reading", path))?;
    Ok(buf)
}

/// The payload of the record at `at` in a buffer read from `base` in `path`.
fn frame_at<'a>(buf: &'a [u8], at: usize, path: &Path, base: u64) -> Result<&'a [u8], StoreError> {
    match decode_record(&buf[at.min(buf.len())..]) {
        Frame::Record(p) => Ok(p),
        Frame::Damaged(damage) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: base + at as u64,
            reason: damage.to_string(),
        }),
    }
}

fn parse_json<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
    path: &Path,
    offset: u64,
) -> Result<T, StoreError> {
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: format!("record is not a message: {e}"),
    })
}

/// Reads a range of the log in global order, a chunk at a time (see [`LogStore::read_after`]).
pub struct LogReader {
    store: Arc<LogStore>,
    next: u64,
    upto: u64,
}

impl LogReader {
    /// The last position this reader will return.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// The next run of records (about [`READ_CHUNK`] bytes), or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<RecordChunk>, StoreError> {
        if self.next > self.upto {
            return Ok(None);
        }
        let (file, path, start, blocks) = {
            let meta = self.store.meta();
            let b = meta.block_of(self.next);
            let head = meta.blocks[b];
            let mut len = 0;
            let mut blocks = Vec::new();
            for block in &meta.blocks[b..] {
                if block.segment != head.segment
                    || block.first > self.upto
                    || (len > 0 && len + block.len > READ_CHUNK)
                {
                    break;
                }
                len += block.len;
                blocks.push(*block);
            }
            let seg = &meta.segments[head.segment as usize];
            (seg.file.clone(), seg.path.clone(), head.offset, blocks)
        };
        let len = blocks.iter().map(|b| b.len).sum();
        let buf = read_at(&file, &path, start, len)?;
        let mut records = Vec::new();
        let mut at = 0usize;
        let mut position = self.next;
        'blocks: for block in &blocks {
            for i in 0..u64::from(block.records) {
                // The position this record holds (a void record: the last it covers).
                let held = if block.void {
                    block.last
                } else {
                    block.first + i
                };
                if held > self.upto {
                    // Nothing past `upto` is returned (a void record may cover beyond it).
                    position = self.upto + 1;
                    break 'blocks;
                }
                let payload_len = frame_at(&buf, at, &path, start)?.len();
                if held >= self.next {
                    records.push(((at + HEADER) as u32, payload_len as u32));
                }
                at += HEADER + payload_len;
                position = held + 1;
            }
        }
        let chunk = RecordChunk {
            first: self.next,
            buf,
            records,
            path,
            offset: start,
        };
        self.next = position;
        Ok(Some(chunk))
    }
}

/// Consecutive records read from one segment, from position `first` on (void records cover
/// several positions each).
pub struct RecordChunk {
    pub first: u64,
    buf: Vec<u8>,
    records: Vec<(u32, u32)>,
    path: PathBuf,
    offset: u64,
}

impl RecordChunk {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The raw JSON payloads (already checksum-verified).
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.records
            .iter()
            .map(|&(at, len)| &self.buf[at as usize..(at + len) as usize])
    }

    /// The records as NDJSON lines, written over the chunk's own buffer: each line moves down
    /// over the 8-byte record headers before it, and the newline takes the place of the next
    /// header. No second buffer is allocated, so a chunk costs the bytes read and no more.
    pub fn into_ndjson(self) -> Vec<u8> {
        let mut buf = self.buf;
        let mut end = 0usize;
        for &(at, len) in &self.records {
            let (at, len) = (at as usize, len as usize);
            // `end <= at - HEADER`: every record before this one gave up its header.
            buf.copy_within(at..at + len, end);
            end += len;
            buf[end] = b'\n';
            end += 1;
        }
        buf.truncate(end);
        buf
    }

    /// The records parsed as messages.
    pub fn messages(&self) -> Result<Vec<Message>, StoreError> {
        self.records
            .iter()
            .map(|&(at, len)| {
                let payload = &self.buf[at as usize..(at + len) as usize];
                parse_json(payload, &self.path, self.offset + u64::from(at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(position: u64, channel: &str) -> Message {
        Message {
            position,
            channel: channel.to_owned(),
            id: format!("id-{position}"),
            author: "ann".to_owned(),
            text: format!("message number {position}"),
            sent_at: 1_764_140_664_000 + position as i64,
        }
    }

    fn channel_for(position: u64) -> &'static str {
        // Uneven spread: "rare" gets one message in 97.
        if position.is_multiple_of(97) {
            "rare"
        } else {
            ["a", "b", "c"][(position % 3) as usize]
        }
    }

    fn fill(store: &LogStore, from: u64, to: u64, batch: usize) {
        let all: Vec<Message> = (from..=to).map(|p| msg(p, channel_for(p))).collect();
        for chunk in all.chunks(batch) {
            store.append_batch(chunk).unwrap();
        }
    }

    fn small() -> StoreConfig {
        StoreConfig {
            segment_bytes: 4096,
            block_records: 8,
        }
    }

    fn open(dir: &Path, config: StoreConfig) -> Arc<LogStore> {
        Arc::new(LogStore::open(dir, config).unwrap().0)
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.pop().unwrap()
    }

    #[test]
    fn append_and_reopen_keep_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), StoreConfig::default());
        assert_eq!(store.persisted(), 0);
        fill(&store, 1, 500, 64);
        assert_eq!(store.persisted(), 500);
        let before = store.messages_between(0, u64::MAX).unwrap();
        drop(store);
        let (store, report) = LogStore::open(dir.path(), StoreConfig::default()).unwrap();
        let store = Arc::new(store);
        assert_eq!(report.persisted, 500);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(store.messages(), 500);
        let after = store.messages_between(0, u64::MAX).unwrap();
        assert_eq!(before, after);
        assert_eq!(after.len(), 500);
        assert!(
            after
                .iter()
                .enumerate()
                .all(|(i, m)| m.position == i as u64 + 1)
        );
        assert_eq!(after[41], msg(42, channel_for(42)));
        fill(&store, 501, 510, 3);
        assert_eq!(store.persisted(), 510);
    }

    #[test]
    fn batches_must_continue_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), StoreConfig::default());
        let err = store.append_batch(&[msg(2, "a")]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotDense {
                    expected: 1,
                    got: 2
                }
            ),
            "{err}"
        );
        store.append_batch(&[msg(1, "a"), msg(2, "a")]).unwrap();
        let err = store.append_batch(&[msg(3, "a"), msg(5, "a")]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotDense {
                    expected: 4,
                    got: 5
                }
            ),
            "{err}"
        );
        assert_eq!(store.persisted(), 2, "a refused batch writes nothing");
        let err = store.append_batch(&[msg(2, "a")]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotDense {
                    expected: 3,
                    got: 2
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn torn_tail_is_truncated_and_the_rest_survives() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 300, 10);
        assert!(store.segments() > 2);
        drop(store);
        // Cut the last segment in the middle of its last record.
        let path = last_segment(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let (store, report) = LogStore::open(dir.path(), small()).unwrap();
        let store = Arc::new(store);
        assert_eq!(report.persisted, 299);
        assert!(report.truncated_bytes > 0);
        let all = store.messages_between(0, u64::MAX).unwrap();
        assert_eq!(all.len(), 299);
        // The log continues where it was cut.
        fill(&store, 300, 320, 7);
        drop(store);
        let store = open(dir.path(), small());
        assert_eq!(store.persisted(), 320);
        assert_eq!(store.messages_between(295, 302).unwrap().len(), 7);
    }

    #[test]
    fn torn_header_and_trailing_garbage_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), StoreConfig::default());
        fill(&store, 1, 20, 20);
        drop(store);
        let path = last_segment(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7, 0, 0]).unwrap();
        drop(f);
        let (store, report) = LogStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report.persisted, 20);
        assert_eq!(report.truncated_bytes, 3);
        drop(store);
        let len = std::fs::metadata(&path).unwrap().len();
        let (_, report) = LogStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    #[test]
    fn corrupt_crc_in_the_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), StoreConfig::default());
        fill(&store, 1, 50, 5);
        let page = store.channel_page("a", 0, 1000).unwrap();
        drop(store);
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte inside the payload of the last record.
        let n = bytes.len();
        bytes[n - 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (store, report) = LogStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report.persisted, 49);
        assert!(report.truncated_bytes > 0);
        let page_after = store.channel_page("a", 0, 1000).unwrap();
        let expected: Vec<Message> = page.into_iter().filter(|m| m.position <= 49).collect();
        assert_eq!(page_after, expected);
    }

    #[test]
    fn corruption_in_an_earlier_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 200, 10);
        drop(store);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let first = &files[0];
        let mut bytes = std::fs::read(first).unwrap();
        // Inside the payload of the first record.
        bytes[SEGMENT_HEADER_LEN as usize + HEADER + 2] ^= 0x01;
        std::fs::write(first, &bytes).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        match err {
            StoreError::Damaged {
                path,
                offset,
                from,
                to,
                ..
            } => {
                assert_eq!(&path, first);
                assert_eq!(offset, SEGMENT_HEADER_LEN);
                assert_eq!(from, 1);
                let second = parse_name(&files[1]);
                assert_eq!(to, second - 1, "the rest of the first segment");
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(std::fs::read(first).unwrap(), bytes, "nothing was changed");
        // A damaged segment header is refused too.
        let mut bytes = std::fs::read(&files[1]).unwrap();
        bytes[30] ^= 0x01;
        std::fs::write(&files[1], &bytes).unwrap();
        let mut fixed = std::fs::read(first).unwrap();
        fixed[SEGMENT_HEADER_LEN as usize + HEADER + 2] ^= 0x01;
        std::fs::write(first, &fixed).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt { path, offset: 0, reason } if path == &files[1] && reason.contains("header checksum")),
            "{err}"
        );
    }

    #[test]
    fn void_records_cover_skipped_positions_across_reopen_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), small());
            fill(&store, 1, 10, 4);
            store.append_batch(&[Message::void(1000)]).unwrap();
            assert!(matches!(
                store.append_batch(&[msg(1000, "a")]),
                Err(StoreError::NotDense {
                    expected: 1001,
                    got: 1000
                })
            ));
            store
                .append_batch(&[msg(1001, channel_for(1001)), msg(1002, "a")])
                .unwrap();
            assert_eq!(store.persisted(), 1002);
            assert_eq!(store.messages(), 12);
        }
        let store = open(dir.path(), small());
        assert_eq!((store.persisted(), store.messages()), (1002, 12));
        let all: Vec<u64> = store
            .messages_between(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|m| m.position)
            .collect();
        let want: Vec<u64> = (1..=10).chain([1000, 1001, 1002]).collect();
        assert_eq!(all, want);
        // Reads that start or end inside the void.
        let mid: Vec<u64> = store
            .messages_between(500, u64::MAX)
            .unwrap()
            .iter()
            .map(|m| m.position)
            .collect();
        assert_eq!(mid, vec![1000, 1001, 1002]);
        assert!(store.messages_between(10, 500).unwrap().is_empty());
        assert!(store.channels().iter().all(|c| !c.name.is_empty()));
        let page: Vec<u64> = store
            .channel_page("a", 0, 100)
            .unwrap()
            .iter()
            .map(|m| m.position)
            .collect();
        assert_eq!(page.last(), Some(&1002));
    }

    #[test]
    fn segments_roll_and_reads_cross_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        // One big batch that spans several segments, then small ones.
        fill(&store, 1, 150, 150);
        fill(&store, 151, 400, 9);
        let segments = store.segments();
        assert!(segments >= 5, "{segments} segments");
        for f in std::fs::read_dir(dir.path().join("segments")).unwrap() {
            let len = f.unwrap().metadata().unwrap().len();
            assert!(len < 4096 + 200, "segment of {len} bytes");
        }
        for (after, upto) in [
            (0, 400),
            (17, 260),
            (399, 400),
            (400, 500),
            (100, 100),
            (37, 38),
        ] {
            let got = store.messages_between(after, upto).unwrap();
            let want: Vec<Message> = ((after + 1)..=upto.min(400))
                .map(|p| msg(p, channel_for(p)))
                .collect();
            assert_eq!(got, want, "after {after} upto {upto}");
        }
        // Chunks are bounded and continue each other.
        let mut reader = store.read_after(0, u64::MAX);
        let mut next = 1;
        let mut ndjson = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            assert_eq!(chunk.first, next);
            next += chunk.len() as u64;
            let mut joined: Vec<u8> = Vec::new();
            for p in chunk.payloads() {
                joined.extend_from_slice(p);
                joined.push(b'\n');
            }
            let read = chunk.buf.len();
            let lines = chunk.into_ndjson();
            assert_eq!(lines, joined, "NDJSON in place");
            assert!(lines.capacity() <= read, "no buffer beyond the one read");
            ndjson.extend_from_slice(&lines);
        }
        assert_eq!(next, 401);
        let lines: Vec<Message> = ndjson
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 400);
        drop(store);
        let store = open(dir.path(), small());
        assert_eq!(store.segments(), segments);
        assert_eq!(store.messages_between(0, u64::MAX).unwrap().len(), 400);
    }

    #[test]
    fn channel_pages_match_a_naive_filter() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 1000, 33);
        let all: Vec<Message> = (1..=1000).map(|p| msg(p, channel_for(p))).collect();
        for channel in ["a", "b", "c", "rare", "none"] {
            for after in [0, 1, 2, 96, 97, 98, 500, 970, 999, 1000, 5000] {
                for limit in [1, 2, 7, 100, 10_000] {
                    let want: Vec<Message> = all
                        .iter()
                        .filter(|m| m.channel == channel && m.position > after)
                        .take(limit)
                        .cloned()
                        .collect();
                    let got = store.channel_page(channel, after, limit).unwrap();
                    assert_eq!(got, want, "{channel} after {after} limit {limit}");
                }
            }
        }
        // Paging through a channel with `next` visits every message once.
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = store.channel_page("rare", after, 3).unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            seen.extend(page.into_iter().map(|m| m.position));
        }
        assert_eq!(
            seen,
            (1..=1000u64)
                .filter(|p| p.is_multiple_of(97))
                .collect::<Vec<_>>()
        );
        let summary = store.channels();
        assert_eq!(summary.iter().map(|c| c.messages).sum::<u64>(), 1000);
        assert_eq!(
            summary
                .iter()
                .find(|c| c.name == "rare")
                .unwrap()
                .last_position,
            970
        );
    }

    #[test]
    fn readers_see_only_persisted_records_while_appending() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || fill(&store, 1, 3000, 17))
        };
        let mut checks = 0;
        while !writer.is_finished() || checks == 0 {
            let persisted = store.persisted();
            let got = store.messages_between(0, persisted).unwrap();
            assert_eq!(got.len() as u64, persisted);
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, m)| m.position == i as u64 + 1)
            );
            let page = store.channel_page("b", 0, 10_000).unwrap();
            assert!(page.windows(2).all(|w| w[0].position < w[1].position));
            checks += 1;
        }
        writer.join().unwrap();
        assert_eq!(store.persisted(), 3000);
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn parse_name(path: &Path) -> u64 {
        match classify_entry(path.file_name().unwrap().to_str().unwrap()) {
            EntryKind::Segment(first) => first,
            other => panic!("{other:?}"),
        }
    }

    /// (offset, length) of every good record of a segment file, front to back.
    fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut at = match decode_segment_header(bytes) {
            HeadRead::Header(_) => SEGMENT_HEADER_LEN as usize,
            _ => 0,
        };
        let mut out = Vec::new();
        while let Frame::Record(p) = decode_record(&bytes[at..]) {
            out.push((at, HEADER + p.len()));
            at += HEADER + p.len();
        }
        out
    }

    #[test]
    fn damage_decisions() {
        let v = ValidAfter {
            offset: 100,
            first: 7,
            last: 9,
        };
        for (last, valid, want) in [
            (true, None, DamageDecision::Truncate),
            (true, Some(v), DamageDecision::Refuse),
            (false, None, DamageDecision::Refuse),
            (false, Some(v), DamageDecision::Refuse),
        ] {
            assert_eq!(
                decide_damage(last, valid.as_ref()),
                want,
                "last {last} valid {valid:?}"
            );
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        /// Opened with this many records, cut to this length if any.
        Keep { records: usize, cut_to: Option<u64> },
        /// Refused as damage of positions `from..=to` at `offset`.
        Refuse { offset: u64, from: u64, to: u64 },
        /// Refused as a file that does not fit.
        Invalid { offset: u64 },
    }

    fn outcome(bytes: &[u8], first: u64, next: Option<u64>) -> Outcome {
        match check_segment(Path::new("x.seg"), bytes, first, next) {
            Ok(c) => Outcome::Keep {
                records: c.records.len(),
                cut_to: c.truncate.map(|(keep, _)| keep),
            },
            Err(StoreError::Damaged {
                offset, from, to, ..
            }) => Outcome::Refuse { offset, from, to },
            Err(StoreError::Corrupt { offset, .. }) => Outcome::Invalid { offset },
            Err(e) => panic!("unexpected {e}"),
        }
    }

    /// Every case of a segment's bytes: what open keeps, cuts, or refuses.
    #[test]
    fn segment_classification_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), StoreConfig::default());
        fill(&store, 1, 20, 20);
        drop(store);
        let good = std::fs::read(last_segment(dir.path())).unwrap();
        let spans = record_spans(&good);
        assert_eq!(spans.len(), 20);
        let end = good.len();
        // Offset of the record of position p.
        let at = |p: usize| spans[p - 1].0;
        let flip = |offset: usize, bit: u8| {
            let mut b = good.clone();
            b[offset] ^= bit;
            b
        };
        let with = |tail: &[u8]| {
            let mut b = good.clone();
            b.extend_from_slice(tail);
            b
        };
        let zeros_from = |offset: usize| {
            let mut b = good.clone();
            b[offset..].fill(0);
            b
        };
        let garbage: Vec<u8> = (0..300u32).map(|i| (i * 37 + 11) as u8).collect();
        let h = SEGMENT_HEADER_LEN as usize;
        let mid = Outcome::Refuse {
            offset: at(10) as u64,
            from: 10,
            to: 20,
        };
        // (what, segment bytes, first position from its name, next segment's first, outcome)
        type Case = (&'static str, Vec<u8>, u64, Option<u64>, Outcome);
        let cases: Vec<Case> = vec![
            (
                "intact",
                good.clone(),
                1,
                None,
                Outcome::Keep {
                    records: 20,
                    cut_to: None,
                },
            ),
            (
                "torn header: 3 bytes of a next record",
                with(&[7, 0, 0]),
                1,
                None,
                Outcome::Keep {
                    records: 20,
                    cut_to: Some(end as u64),
                },
            ),
            (
                "torn payload: last record cut short",
                good[..end - 5].to_vec(),
                1,
                None,
                Outcome::Keep {
                    records: 19,
                    cut_to: Some(at(20) as u64),
                },
            ),
            (
                "bad checksum in the last record",
                flip(end - 3, 0x55),
                1,
                None,
                Outcome::Keep {
                    records: 19,
                    cut_to: Some(at(20) as u64),
                },
            ),
            (
                "garbage after the last record",
                with(&garbage),
                1,
                None,
                Outcome::Keep {
                    records: 20,
                    cut_to: Some(end as u64),
                },
            ),
            (
                "zeros after the last record",
                with(&[0; 500]),
                1,
                None,
                Outcome::Keep {
                    records: 20,
                    cut_to: Some(end as u64),
                },
            ),
            (
                "bad checksum, then only zeros (interrupted write)",
                zeros_from(at(10) + HEADER + 5),
                1,
                None,
                Outcome::Keep {
                    records: 9,
                    cut_to: Some(at(10) as u64),
                },
            ),
            (
                "bad checksum mid-segment, valid records after",
                flip(at(10) + HEADER + 4, 0x10),
                1,
                None,
                mid,
            ),
            (
                "flipped checksum field mid-segment",
                flip(at(10) + 5, 0x01),
                1,
                None,
                mid,
            ),
            (
                "length grown past the end mid-segment",
                flip(at(10) + 1, 0x40),
                1,
                None,
                mid,
            ),
            (
                "length shrunk mid-segment",
                flip(at(10), 0x01),
                1,
                None,
                mid,
            ),
            (
                "bad checksum mid-segment of an earlier segment",
                flip(at(10) + HEADER + 4, 0x10),
                1,
                Some(21),
                mid,
            ),
            (
                "bad last record of an earlier segment",
                flip(end - 3, 0x55),
                1,
                Some(21),
                Outcome::Refuse {
                    offset: at(20) as u64,
                    from: 20,
                    to: 20,
                },
            ),
            (
                "earlier segment cut short",
                good[..end - 5].to_vec(),
                1,
                Some(21),
                Outcome::Refuse {
                    offset: at(20) as u64,
                    from: 20,
                    to: 20,
                },
            ),
            (
                "magic damaged: read as legacy, valid records after",
                flip(0, 0x01),
                1,
                None,
                Outcome::Refuse {
                    offset: 0,
                    from: 1,
                    to: 20,
                },
            ),
            (
                "empty file",
                Vec::new(),
                1,
                None,
                Outcome::Invalid { offset: 0 },
            ),
            (
                "header only, last segment (being created)",
                good[..h].to_vec(),
                1,
                None,
                Outcome::Keep {
                    records: 0,
                    cut_to: None,
                },
            ),
            (
                "header only, not the last segment",
                good[..h].to_vec(),
                1,
                Some(1),
                Outcome::Invalid { offset: h as u64 },
            ),
            (
                "header only, torn first record",
                good[..h + 5].to_vec(),
                1,
                None,
                Outcome::Keep {
                    records: 0,
                    cut_to: Some(h as u64),
                },
            ),
            (
                "incomplete segment header",
                good[..20].to_vec(),
                1,
                None,
                Outcome::Invalid { offset: 0 },
            ),
            (
                "segment header checksum",
                flip(30, 0x01),
                1,
                None,
                Outcome::Invalid { offset: 0 },
            ),
            (
                "header names another first position",
                good.clone(),
                2,
                None,
                Outcome::Invalid { offset: 0 },
            ),
            (
                "legacy segment (no header)",
                good[h..].to_vec(),
                1,
                None,
                Outcome::Keep {
                    records: 20,
                    cut_to: None,
                },
            ),
            (
                "legacy segment whose first record is not the name's",
                good[h..].to_vec(),
                5,
                None,
                Outcome::Invalid { offset: 0 },
            ),
            (
                "legacy segment with a torn tail",
                good[h..end - 5].to_vec(),
                1,
                None,
                Outcome::Keep {
                    records: 19,
                    cut_to: Some((at(20) - h) as u64),
                },
            ),
            (
                "legacy segment without a complete record",
                good[h..h + 10].to_vec(),
                1,
                None,
                Outcome::Invalid { offset: 0 },
            ),
        ];
        for (name, bytes, first, next, want) in cases {
            assert_eq!(outcome(&bytes, first, next), want, "{name}");
        }
    }

    #[test]
    fn segment_names_table() {
        for (name, want) in [
            ("00000000000000000001.seg", EntryKind::Segment(1)),
            ("00000000000000004097.seg", EntryKind::Segment(4097)),
            ("18446744073709551615.seg", EntryKind::Segment(u64::MAX)),
            ("00000000000000004097.seg.tmp", EntryKind::Creating),
            ("cluster-id", EntryKind::Other),
            ("notes.txt", EntryKind::Other),
        ] {
            assert_eq!(classify_entry(name), want, "{name}");
        }
        for bad in [
            "00000000000000000000.seg",
            "0000000000000000001.seg",
            "000000000000000000001.seg",
            "0000000000000000000a.seg",
            "99999999999999999999.seg",
            "1.seg",
            ".seg",
        ] {
            assert!(
                matches!(classify_entry(bad), EntryKind::BadSegment(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
            cluster: Uuid::new_v4(),
            first: 4097,
        };
        let bytes = encode_segment_header(&h);
        assert_eq!(bytes.len() as u64, SEGMENT_HEADER_LEN);
        assert_eq!(decode_segment_header(&bytes), HeadRead::Header(h));
        let mut version = bytes.clone();
        version[8] = 3;
        let crc = crc32c::crc32c(&version[..36]);
        version[36..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(decode_segment_header(&version), HeadRead::Bad(r) if r.contains("version 3"))
        );
        let mut flipped = bytes.clone();
        flipped[20] ^= 0x04;
        assert!(matches!(decode_segment_header(&flipped), HeadRead::Bad(_)));
        assert!(matches!(
            decode_segment_header(&bytes[..39]),
            HeadRead::Bad(_)
        ));
        assert!(matches!(
            decode_segment_header(&bytes[..3]),
            HeadRead::Bad(_)
        ));
        // A legacy record header cannot start with the magic.
        let mut legacy = Vec::new();
        encode_record(&mut legacy, br#"{"position":1}"#);
        assert_eq!(decode_segment_header(&legacy), HeadRead::Legacy);
        assert!(u32::from_le_bytes([b'C', b'H', b'L', b'O']) > MAX_PAYLOAD);
    }

    /// Fault 1: a bit flipped in the middle of the last segment (records after it) is refused,
    /// naming file, offset and positions, and nothing is truncated.
    #[test]
    fn bit_flip_in_the_middle_of_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            segment_bytes: 65536,
            block_records: 64,
        };
        let store = open(dir.path(), config);
        // Several segments, the last one well past offset 3000 (about the reported 38 KB).
        let mut persisted = 0;
        while store.segments() < 2
            || std::fs::metadata(last_segment(dir.path())).unwrap().len() < 38_000
        {
            fill(&store, persisted + 1, persisted + 50, 50);
            persisted += 50;
        }
        drop(store);
        let path = last_segment(dir.path());
        let first = parse_name(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 6000, "{} bytes", bytes.len());
        let spans = record_spans(&bytes);
        let hit = spans
            .iter()
            .position(|&(at, len)| (at..at + len).contains(&3000))
            .unwrap();
        bytes[3000] ^= 0x08;
        std::fs::write(&path, &bytes).unwrap();
        for _ in 0..2 {
            let err = LogStore::open(dir.path(), config).err().unwrap();
            match &err {
                StoreError::Damaged {
                    path: p,
                    offset,
                    from,
                    to,
                    ..
                } => {
                    assert_eq!(p, &path);
                    assert_eq!(*offset, spans[hit].0 as u64);
                    assert_eq!(*from, first + hit as u64);
                    assert_eq!(*to, persisted);
                }
                other => panic!("unexpected {other}"),
            }
            let line = err.to_string();
            assert!(line.contains(&path.display().to_string()), "{line}");
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "nothing was truncated"
            );
        }
    }

    /// Fault 2: an empty (0-byte) last segment is refused; a header-only one (a crash right after
    /// creating it) opens and is appended to.
    #[test]
    fn empty_last_segment_is_refused_but_a_new_one_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 200, 10);
        drop(store);
        let path = last_segment(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt { path: p, offset: 0, .. } if p == &path),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        std::fs::write(&path, &bytes).unwrap();
        // A segment created but never written.
        let store = open(dir.path(), small());
        let cluster = store.cluster_id().unwrap();
        drop(store);
        let next = dir.path().join("segments").join(segment_name(201));
        std::fs::write(
            &next,
            encode_segment_header(&SegmentHeader {
                cluster,
                first: 201,
            }),
        )
        .unwrap();
        let (store, report) = LogStore::open(dir.path(), small()).unwrap();
        assert_eq!(report.persisted, 200);
        assert_eq!(report.truncated_bytes, 0);
        let store = Arc::new(store);
        fill(&store, 201, 205, 5);
        drop(store);
        let store = open(dir.path(), small());
        assert_eq!(store.persisted(), 205);
        assert_eq!(
            store.messages_between(199, 205).unwrap(),
            (200..=205)
                .map(|p| msg(p, channel_for(p)))
                .collect::<Vec<_>>()
        );
    }

    /// Fault 3: a segment named for position 0 (or otherwise misnamed) is refused; segments that
    /// do not continue each other or whose first record is not the name's are refused.
    #[test]
    fn misnamed_and_misplaced_segments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 200, 10);
        drop(store);
        let files = segment_files(dir.path());
        let zero = dir.path().join("segments").join("00000000000000000000.seg");
        std::fs::copy(&files[0], &zero).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt { path, .. } if path == &zero),
            "{err}"
        );
        std::fs::remove_file(&zero).unwrap();
        // A gap: the second segment is gone.
        let second = std::fs::read(&files[1]).unwrap();
        std::fs::remove_file(&files[1]).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt { path, .. } if path == &files[2]),
            "{err}"
        );
        // The right contents under another name.
        let renamed = dir
            .path()
            .join("segments")
            .join(segment_name(parse_name(&files[1]) + 1));
        std::fs::write(&renamed, &second).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert!(matches!(&err, StoreError::Corrupt { .. }), "{err}");
        std::fs::remove_file(&renamed).unwrap();
        std::fs::write(&files[1], &second).unwrap();
        let (_, report) = LogStore::open(dir.path(), small()).unwrap();
        assert_eq!(report.persisted, 200);
    }

    /// Fault 4: a segment from another cluster with the same positions is refused, naming it.
    #[test]
    fn foreign_segments_are_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        for dir in [&ours, &theirs] {
            let store = open(dir.path(), small());
            fill(&store, 1, 200, 10);
        }
        let our_files = segment_files(ours.path());
        let their_files = segment_files(theirs.path());
        assert_eq!(
            our_files.iter().map(|f| f.file_name()).collect::<Vec<_>>(),
            their_files
                .iter()
                .map(|f| f.file_name())
                .collect::<Vec<_>>()
        );
        let our_id = open(ours.path(), small()).cluster_id().unwrap();
        let their_id = open(theirs.path(), small()).cluster_id().unwrap();
        assert_ne!(our_id, their_id);
        for i in [our_files.len() - 1, 1] {
            let saved = std::fs::read(&our_files[i]).unwrap();
            std::fs::copy(&their_files[i], &our_files[i]).unwrap();
            let err = LogStore::open(ours.path(), small()).err().unwrap();
            match &err {
                StoreError::ForeignSegment { path, found, ours } => {
                    assert_eq!(path, &our_files[i]);
                    assert_eq!(*found, their_id);
                    assert_eq!(*ours, our_id);
                }
                other => panic!("unexpected {other}"),
            }
            std::fs::write(&our_files[i], saved).unwrap();
        }
        // Without the cluster-id file the id comes back from the first segment.
        std::fs::remove_file(ours.path().join(CLUSTER_ID_FILE)).unwrap();
        let (_, report) = LogStore::open(ours.path(), small()).unwrap();
        assert_eq!(report.cluster_id, Some(our_id));
        assert_eq!(read_cluster_id(ours.path()).unwrap(), Some(our_id));
    }

    #[test]
    fn cluster_id_is_fixed_once_adopted_or_proposed() {
        // A new log takes the id derived from the epoch it follows, when it creates a segment.
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let epoch = "0f6d3c1e9a8b4c7d8e2f1a0b3c4d5e6f";
        for dir in [&a, &b] {
            let store = open(dir.path(), small());
            assert_eq!(store.cluster_id(), None);
            store.propose_cluster_id(epoch);
            assert_eq!(
                store.cluster_id(),
                None,
                "only fixed with the first segment"
            );
            fill(&store, 1, 5, 5);
            assert_eq!(store.cluster_id(), Some(Uuid::parse_str(epoch).unwrap()));
            // Later epochs do not change it.
            store.propose_cluster_id("e2");
            fill(&store, 6, 400, 50);
            assert_eq!(store.cluster_id(), Some(Uuid::parse_str(epoch).unwrap()));
        }
        assert_eq!(cluster_id_from_epoch("e1"), cluster_id_from_epoch("e1"));
        assert_ne!(cluster_id_from_epoch("e1"), cluster_id_from_epoch("e2"));
        // A log being bootstrapped adopts the peer's id; a different one is refused after that.
        let c = tempfile::tempdir().unwrap();
        let store = open(c.path(), small());
        store.propose_cluster_id("e9");
        let peer = Uuid::new_v4();
        store
            .adopt_cluster_id(&peer.to_string(), "http://peer")
            .unwrap();
        store
            .adopt_cluster_id(&peer.to_string(), "http://peer")
            .unwrap();
        let err = store
            .adopt_cluster_id(&Uuid::new_v4().to_string(), "http://other")
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ClusterMismatch { ours, .. } if ours == peer),
            "{err}"
        );
        let err = store.adopt_cluster_id("nope", "http://other").unwrap_err();
        assert!(matches!(err, StoreError::BadClusterId { .. }), "{err}");
        fill(&store, 1, 3, 3);
        drop(store);
        let (store, report) = LogStore::open(c.path(), small()).unwrap();
        assert_eq!(report.cluster_id, Some(peer));
        assert_eq!(store.cluster_id(), Some(peer));
        // A garbled cluster-id file is refused.
        std::fs::write(c.path().join(CLUSTER_ID_FILE), "not an id").unwrap();
        assert!(matches!(
            LogStore::open(c.path(), small()).err().unwrap(),
            StoreError::Corrupt { .. }
        ));
    }

    /// Legacy (format v1) segments, written without a header, are still read and appended to;
    /// new segments get a header.
    #[test]
    fn legacy_segments_are_read_and_continued() {
        let dir = tempfile::tempdir().unwrap();
        let seg_dir = dir.path().join("segments");
        std::fs::create_dir_all(&seg_dir).unwrap();
        let mut first = Vec::new();
        let mut second = Vec::new();
        for p in 1..=60 {
            let out = if p <= 40 { &mut first } else { &mut second };
            encode_record(out, &msg(p, channel_for(p)).to_json());
        }
        std::fs::write(seg_dir.join(segment_name(1)), &first).unwrap();
        std::fs::write(seg_dir.join(segment_name(41)), &second).unwrap();
        let (store, report) = LogStore::open(dir.path(), small()).unwrap();
        assert_eq!(report.persisted, 60);
        assert_eq!(report.cluster_id, None);
        let store = Arc::new(store);
        fill(&store, 61, 300, 20);
        assert!(store.cluster_id().is_some());
        let all = store.messages_between(0, u64::MAX).unwrap();
        assert_eq!(
            all,
            (1..=300)
                .map(|p| msg(p, channel_for(p)))
                .collect::<Vec<_>>()
        );
        drop(store);
        let files = segment_files(dir.path());
        assert_eq!(
            decode_segment_header(&std::fs::read(&files[1]).unwrap()),
            HeadRead::Legacy,
            "the legacy last segment was continued as it is"
        );
        assert!(matches!(
            decode_segment_header(&std::fs::read(&files[2]).unwrap()),
            HeadRead::Header(_)
        ));
        let store = open(dir.path(), small());
        assert_eq!(store.persisted(), 300);
    }

    /// A segment whose creation was interrupted (`.seg.tmp`) is removed at open.
    #[test]
    fn interrupted_segment_creation_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 50, 10);
        drop(store);
        let tmp = dir
            .path()
            .join("segments")
            .join(format!("{}.tmp", segment_name(51)));
        std::fs::write(&tmp, [0u8; 17]).unwrap();
        let (_, report) = LogStore::open(dir.path(), small()).unwrap();
        assert_eq!(report.persisted, 50);
        assert!(!tmp.exists());
    }

    /// The fuzzer of issue 9 (e), deterministic: random mutations of a stopped log's segment files
    /// (bit flips, byte overwrites, zeroed ranges, cuts, appended garbage). Open may refuse, or cut
    /// a torn tail, but every record still intact on disk stays in the log.
    #[test]
    fn mutated_segments_never_lose_an_intact_record() {
        let pristine = tempfile::tempdir().unwrap();
        let store = open(pristine.path(), small());
        fill(&store, 1, 300, 7);
        drop(store);
        let files = segment_files(pristine.path());
        let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut refused, mut cut) = (0, 0);
        for run in 0..150 {
            let dir = tempfile::tempdir().unwrap();
            let seg_dir = dir.path().join("segments");
            std::fs::create_dir_all(&seg_dir).unwrap();
            std::fs::copy(
                pristine.path().join(CLUSTER_ID_FILE),
                dir.path().join(CLUSTER_ID_FILE),
            )
            .unwrap();
            // Mostly the last segment, where a torn tail may be cut.
            let victim = if next(4) == 0 {
                next(files.len())
            } else {
                files.len() - 1
            };
            let mut mutated = originals.clone();
            let bytes = &mut mutated[victim];
            let len = bytes.len();
            let what = match next(5) {
                0 => {
                    bytes[next(len)] ^= 1 << next(8);
                    "bit flip"
                }
                1 => {
                    bytes[next(len)] = next(256) as u8;
                    "byte overwrite"
                }
                2 => {
                    let from = next(len);
                    let to = (from + 1 + next(64)).min(len);
                    bytes[from..to].fill(0);
                    "zeroed range"
                }
                3 => {
                    bytes.truncate(next(len));
                    "cut"
                }
                _ => {
                    bytes.extend((0..next(100)).map(|_| next(256) as u8));
                    "appended garbage"
                }
            };
            for (file, bytes) in files.iter().zip(&mutated) {
                std::fs::write(seg_dir.join(file.file_name().unwrap()), bytes).unwrap();
            }
            // Positions whose record bytes are still where they were, unchanged.
            let mut intact = Vec::new();
            for (file, (before, after)) in files.iter().zip(originals.iter().zip(&mutated)) {
                let first = parse_name(file);
                for (i, &(at, len)) in record_spans(before).iter().enumerate() {
                    if after.get(at..at + len) == Some(&before[at..at + len]) {
                        intact.push(first + i as u64);
                    }
                }
            }
            let context = format!("run {run}: {what} in segment {victim}");
            match LogStore::open(dir.path(), small()) {
                Err(_) => refused += 1,
                Ok((store, report)) => {
                    if report.truncated_bytes > 0 {
                        cut += 1;
                    }
                    let kept = report.persisted;
                    assert!(
                        intact.iter().all(|&p| p <= kept),
                        "{context}: kept through {kept}, but intact records after that were dropped"
                    );
                    let store = Arc::new(store);
                    let all = store.messages_between(0, u64::MAX).unwrap();
                    let want: Vec<Message> = (1..=kept).map(|p| msg(p, channel_for(p))).collect();
                    assert_eq!(all, want, "{context}");
                }
            }
        }
        assert!(refused > 10 && cut > 10, "refused {refused}, cut {cut}");
    }

    #[test]
    fn quarantine_set_table() {
        let names: Vec<String> = [
            "00000000000000000001.seg",
            "00000000000000000101.seg",
            "00000000000000000201.seg",
            "00000000000000000000.seg",
            "00000000000000000301.seg.tmp",
            "notes.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (refused, want) in [
            (
                "00000000000000000101.seg",
                vec!["00000000000000000101.seg", "00000000000000000201.seg"],
            ),
            ("00000000000000000201.seg", vec!["00000000000000000201.seg"]),
            (
                "00000000000000000001.seg",
                vec![
                    "00000000000000000001.seg",
                    "00000000000000000101.seg",
                    "00000000000000000201.seg",
                ],
            ),
            // A misnamed file goes alone.
            ("00000000000000000000.seg", vec!["00000000000000000000.seg"]),
        ] {
            assert_eq!(quarantine_set(refused, &names), want, "{refused}");
        }
    }

    #[test]
    fn quarantine_moves_the_refused_segment_and_later_ones_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), small());
        fill(&store, 1, 300, 10);
        drop(store);
        let files = segment_files(dir.path());
        let mut bytes = std::fs::read(&files[2]).unwrap();
        let mid = record_spans(&bytes)[1].0 + HEADER + 3;
        bytes[mid] ^= 0x01;
        std::fs::write(&files[2], &bytes).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert_eq!(err.refused_segment(), Some(files[2].as_path()), "{err}");
        let moved = quarantine(dir.path(), &files[2]).unwrap();
        assert_eq!(moved.len(), files.len() - 2);
        assert_eq!(std::fs::read(&moved[0]).unwrap(), bytes, "kept as it was");
        let (store, report) = LogStore::open(dir.path(), small()).unwrap();
        assert_eq!(report.persisted, parse_name(&files[2]) - 1);
        let store = Arc::new(store);
        fill(&store, report.persisted + 1, 300, 10);
        assert_eq!(store.messages_between(0, 300).unwrap().len(), 300);
        // Errors that moving segments cannot fix name no segment.
        std::fs::write(dir.path().join(CLUSTER_ID_FILE), "garbled").unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        assert_eq!(err.refused_segment(), None, "{err}");
    }
}
