//! The replication log's storage engine: segment files of framed records on local disk, the
//! in-memory index that finds a position or a channel's messages without scanning from the start,
//! tail verification at open, and group-committed appends. Plain synchronous file I/O (callers in
//! async code use `spawn_blocking`).
//!
//! # On disk
//! `<data-dir>/segments/<first position, 20 digits>.seg`, each a run of records
//! `[len u32 LE][crc32c u32 LE of payload][payload]` where the payload is the message's JSON.
//! Positions are dense across segments: a segment starts at the position after the previous
//! segment's last record. A new segment starts once the current one is past
//! [`StoreConfig::segment_bytes`].
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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::message::Message;

/// Default size past which a new segment is started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default number of records per index block.
pub const DEFAULT_BLOCK_RECORDS: u32 = 64;
/// Bytes of a record header (length and CRC).
const HEADER: usize = 8;
/// Longest payload a record may hold; a longer length in a header is corruption.
const MAX_PAYLOAD: u32 = 16 << 20;
/// About how many bytes one sequential read covers.
const READ_CHUNK: u64 = 256 << 10;

/// What went wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt log: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("batch does not continue the log: expected position {expected}, got {got}")]
    NotDense { expected: u64, got: u64 },
    #[error("message {position} is {len} bytes, more than a record may hold")]
    TooLarge { position: u64, len: usize },
    #[error("the log refuses writes after a failed sync ({0}); restart the replica")]
    Poisoned(String),
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
    /// Bytes cut from the tail of the last segment (a torn or corrupt last record), if any.
    pub truncated_bytes: u64,
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
    first: u64,
    path: PathBuf,
    /// Read handle (`pread`), shared with readers.
    file: Arc<File>,
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

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Encodes one record (header and payload) onto `out`.
fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why a record could not be read back.
enum Frame<'a> {
    Record(&'a [u8]),
    /// Not enough bytes for the header or payload the header announces.
    Torn(&'static str),
    Bad(String),
}

/// Reads the record at the start of `buf`.
fn decode_record(buf: &[u8]) -> Frame<'_> {
    if buf.len() < HEADER {
        return Frame::Torn("incomplete record header");
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Frame::Bad(format!("record length {len} exceeds the limit"));
    }
    let end = HEADER + len as usize;
    if buf.len() < end {
        return Frame::Torn("incomplete record payload");
    }
    let payload = &buf[HEADER..end];
    if crc32c::crc32c(payload) != crc {
        return Frame::Bad("checksum mismatch".to_owned());
    }
    Frame::Record(payload)
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, verifying every segment and rebuilding the index.
    /// A torn or corrupt record in the last segment is cut off together with everything after
    /// it (logged); corruption anywhere else is an error naming the file and offset.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(LogStore, OpenReport), StoreError> {
        let started = Instant::now();
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir).map_err(io_err("creating", &seg_dir))?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(&seg_dir).map_err(io_err("listing", &seg_dir))? {
            let entry = entry.map_err(io_err("listing", &seg_dir))?;
            let name = entry.file_name();
            match name.to_str().and_then(parse_segment_name) {
                Some(first) => firsts.push(first),
                None => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a segment")
                }
            }
        }
        firsts.sort_unstable();
        let mut meta = Meta::default();
        let mut truncated_bytes = 0;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
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
            let file = File::open(&path).map_err(io_err("opening", &path))?;
            meta.segments.push(Segment {
                first,
                path: path.clone(),
                file: Arc::new(file),
                len: 0,
                records: 0,
            });
            let last = i + 1 == count;
            truncated_bytes += scan_segment(&mut meta, config, i as u32, last)?;
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
            took: started.elapsed(),
        };
        let store = LogStore {
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
        let (mut segment_len, mut expected) = {
            let meta = self.meta();
            (meta.segments.last().map(|s| s.len), meta.persisted + 1)
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
            let full = segment_len.is_some_and(|len| {
                let used = len + w.buf.len() as u64;
                used > 0 && used >= self.config.segment_bytes
            });
            if segment_len.is_none() || full {
                if !w.buf.is_empty() {
                    stats.sync += self.commit(&mut w)?;
                }
                // A segment is named by the first position it covers (a void record covers
                // from the position after the previous record).
                self.roll(&mut w, expected)?;
                segment_len = Some(0);
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
            let offset = segment_len.unwrap_or(0) + w.buf.len() as u64;
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

    /// Starts a new segment whose first record will be `first`.
    fn roll(&self, w: &mut Writer, first: u64) -> Result<(), StoreError> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        sync_dir(&self.dir)?;
        let reader = File::open(&path).map_err(io_err("opening", &path))?;
        let append = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("opening for append", &path))?;
        drop(file);
        let mut meta = self.meta_mut();
        if meta.segments.is_empty() {
            meta.base = first - 1;
        }
        meta.segments.push(Segment {
            first,
            path,
            file: Arc::new(reader),
            len: 0,
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
        let mut out = Vec::new();
        let plan: Vec<(Arc<File>, PathBuf, Block)> = {
            let meta = self.meta();
            let Some(ch) = meta.channels.get(channel) else {
                return Ok(out);
            };
            if ch.last_position <= after || limit == 0 {
                return Ok(out);
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
                out.push(m);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
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

/// Verifies segment `index` record by record, indexing what is good. In the last segment a bad
/// record and everything after it is cut off; elsewhere it is an error. Returns bytes cut.
fn scan_segment(
    meta: &mut Meta,
    config: StoreConfig,
    index: u32,
    last: bool,
) -> Result<u64, StoreError> {
    let (path, first) = {
        let seg = &meta.segments[index as usize];
        (seg.path.clone(), seg.first)
    };
    let file = File::open(&path).map_err(io_err("opening", &path))?;
    let file_len = file
        .metadata()
        .map_err(io_err("reading metadata of", &path))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut position = first;
    let mut payload = Vec::new();
    let problem: Option<String> = loop {
        if offset == file_len {
            break None;
        }
        let mut header = [0u8; HEADER];
        if file_len - offset < HEADER as u64 {
            break Some("incomplete record header".to_owned());
        }
        reader
            .read_exact(&mut header)
            .map_err(io_err("reading", &path))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            break Some(format!("record length {len} exceeds the limit"));
        }
        if file_len - offset - (HEADER as u64) < u64::from(len) {
            break Some("incomplete record payload".to_owned());
        }
        payload.resize(len as usize, 0);
        reader
            .read_exact(&mut payload)
            .map_err(io_err("reading", &path))?;
        if crc32c::crc32c(&payload) != crc {
            break Some("checksum mismatch".to_owned());
        }
        // A record whose checksum holds but whose content is wrong is not a torn write: refuse.
        let head: RecordHead = parse_json(&payload, &path, offset)?;
        // A void record (empty channel) covers every position up to its own.
        let void = head.channel.is_empty() && head.position >= position;
        if void {
            position = head.position;
        }
        if head.position != position {
            return Err(StoreError::Corrupt {
                path,
                offset,
                reason: format!(
                    "record holds position {}, expected {position}",
                    head.position
                ),
            });
        }
        let rec_len = HEADER as u64 + u64::from(len);
        meta.index(
            config.block_records,
            index,
            offset,
            rec_len,
            position,
            &head.channel,
        );
        offset += rec_len;
        position += 1;
    };
    let Some(reason) = problem else {
        return Ok(0);
    };
    if !last {
        return Err(StoreError::Corrupt {
            path,
            offset,
            reason,
        });
    }
    let cut = file_len - offset;
    tracing::warn!(
        file = %path.display(),
        offset,
        bytes = cut,
        reason,
        kept_through = position - 1,
        "truncating a torn or corrupt tail of the last segment"
    );
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    f.set_len(offset).map_err(io_err("truncating", &path))?;
    f.sync_all().map_err(io_err("syncing", &path))?;
    Ok(cut)
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
        Frame::Torn(reason) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: base + at as u64,
            reason: reason.to_owned(),
        }),
        Frame::Bad(reason) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: base + at as u64,
            reason,
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

    /// Appends the records as NDJSON lines to `out`.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        for p in self.payloads() {
            out.extend_from_slice(p);
            out.push(b'\n');
        }
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

/// Result of [`bench_append`].
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub messages: u64,
    pub batch: usize,
    pub payload: usize,
    pub elapsed: Duration,
    pub syncs: u64,
    pub sync_total: Duration,
    pub sync_max: Duration,
}

impl BenchResult {
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log append: {} messages of {} text bytes in batches of {} in {:.3} s = {:.0} msg/s; \
             {} fdatasync calls, mean {:.3} ms, max {:.3} ms",
            self.messages,
            self.payload,
            self.batch,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.syncs,
            self.sync_total.as_secs_f64() * 1000.0 / self.syncs.max(1) as f64,
            self.sync_max.as_secs_f64() * 1000.0,
        )
    }
}

/// Appends `n` messages with `payload` bytes of text in batches of `batch` (one fdatasync per
/// batch) to a fresh log under `dir`, and measures the rate. Message encoding is included.
pub fn bench_append(
    dir: &Path,
    n: u64,
    batch: usize,
    payload: usize,
) -> Result<BenchResult, StoreError> {
    let (store, _) = LogStore::open(dir, StoreConfig::default())?;
    let start_at = store.persisted();
    let text = "x".repeat(payload.max(1));
    let batch = batch.max(1);
    let mut result = BenchResult {
        messages: n,
        batch,
        payload,
        elapsed: Duration::ZERO,
        syncs: 0,
        sync_total: Duration::ZERO,
        sync_max: Duration::ZERO,
    };
    let started = Instant::now();
    let mut next = start_at + 1;
    let end = start_at + n;
    let mut msgs = Vec::with_capacity(batch);
    while next <= end {
        msgs.clear();
        while msgs.len() < batch && next <= end {
            msgs.push(Message {
                position: next,
                channel: format!("bench-{}", next % 5),
                id: format!("bench-{next}"),
                author: "bench".to_owned(),
                text: text.clone(),
                sent_at: 1_764_000_000_000 + next as i64,
            });
            next += 1;
        }
        let stats = store.append_batch(&msgs)?;
        result.syncs += 1;
        result.sync_total += stats.sync;
        result.sync_max = result.sync_max.max(stats.sync);
    }
    result.elapsed = started.elapsed();
    Ok(result)
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
        bytes[HEADER + 2] ^= 0x01;
        std::fs::write(first, &bytes).unwrap();
        let err = LogStore::open(dir.path(), small()).err().unwrap();
        match err {
            StoreError::Corrupt { path, offset, .. } => {
                assert_eq!(&path, first);
                assert_eq!(offset, 0);
            }
            other => panic!("unexpected {other}"),
        }
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
            chunk.write_ndjson(&mut ndjson);
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

    /// The log-append benchmark and the open (verify + index) time of the log it leaves:
    /// `cargo test --release -p chat-server --lib bench_append_1m -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn bench_append_1m() {
        let dir = tempfile::tempdir().unwrap();
        let result = bench_append(dir.path(), 1_000_000, 1000, 200).unwrap();
        println!("{result}");
        let (store, report) = LogStore::open(dir.path(), StoreConfig::default()).unwrap();
        println!(
            "open: {} messages in {} segments verified and indexed in {:.3} s",
            store.messages(),
            report.segments,
            report.took.as_secs_f64()
        );
        let store = Arc::new(store);
        let started = Instant::now();
        let page = store.channel_page("bench-3", 900_000, 1000).unwrap();
        println!(
            "channel page of {} near the end: {:?}",
            page.len(),
            started.elapsed()
        );
        let started = Instant::now();
        let mut reader = store.read_after(0, u64::MAX);
        let mut bytes = 0;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            out.clear();
            chunk.write_ndjson(&mut out);
            bytes += out.len();
        }
        println!(
            "snapshot read: {bytes} bytes of NDJSON in {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn bench_append_reports_a_rate() {
        let dir = tempfile::tempdir().unwrap();
        let r = bench_append(dir.path(), 2000, 500, 200).unwrap();
        assert_eq!(r.syncs, 4);
        assert!(r.per_second() > 0.0);
        let store = open(dir.path(), StoreConfig::default());
        assert_eq!(store.persisted(), 2000);
    }
}
