//! `chat-bench log-append`: the replication log store's append rate with one `fdatasync` per
//! batch, then the open (verify + index), channel-page and snapshot-read times of the log it
//! wrote. Runs the store in-process ([`chat_server::log::store::LogStore`]); no server needed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::log::store::{LogStore, StoreConfig, StoreError};
use chat_server::message::Message;

/// Result of [`append`]: `messages` appended in batches of `batch` (one fsync each).
#[derive(Debug, Clone, Copy)]
pub struct AppendResult {
    pub messages: u64,
    pub batch: usize,
    /// Text bytes per message.
    pub payload: usize,
    pub elapsed: Duration,
    pub syncs: u64,
    pub sync_total: Duration,
    pub sync_max: Duration,
}

impl AppendResult {
    /// Messages appended per second of wall-clock time.
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for AppendResult {
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
/// batch) to a fresh log under `dir`, and measures the rate. Building the messages is included.
///
/// Errors: the store's ([`StoreError`]), e.g. `dir` not writable.
pub fn append(
    dir: &Path,
    n: u64,
    batch: usize,
    payload: usize,
) -> Result<AppendResult, StoreError> {
    let (store, _) = LogStore::open(dir, StoreConfig::default())?;
    let start_at = store.persisted();
    let text = "x".repeat(payload.max(1));
    let batch = batch.max(1);
    let mut result = AppendResult {
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

/// Reopens the log under `dir` (verify + index), reads one channel page near its end and the
/// whole log as NDJSON chunks (the snapshot path); returns one line per figure.
pub fn read_back(dir: &Path) -> Result<Vec<String>, StoreError> {
    let (store, report) = LogStore::open(dir, StoreConfig::default())?;
    let mut lines = vec![format!(
        "open: {} messages in {} segments verified and indexed in {:.3} s",
        store.messages(),
        report.segments,
        report.took.as_secs_f64()
    )];
    let store = Arc::new(store);
    let persisted = store.persisted();
    let started = Instant::now();
    let page = store.channel_page("bench-3", persisted.saturating_sub(100_000), 1000)?;
    lines.push(format!(
        "channel page of {} near the end: {:.3} ms",
        page.len(),
        started.elapsed().as_secs_f64() * 1000.0
    ));
    let started = Instant::now();
    let mut reader = store.read_after(0, u64::MAX);
    let mut bytes = 0;
    while let Some(chunk) = reader.next_chunk()? {
        bytes += chunk.into_ndjson().len();
    }
    lines.push(format!(
        "snapshot read: {bytes} bytes of NDJSON in {:.3} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_reports_a_rate_and_the_log_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = append(dir.path(), 2000, 500, 200).unwrap();
        assert_eq!(r.syncs, 4);
        assert!(r.per_second() > 0.0);
        let lines = read_back(dir.path()).unwrap();
        assert!(lines[0].starts_with("open: 2000 messages"), "{lines:?}");
        assert!(lines[1].starts_with("channel page of 400 "), "{lines:?}");
    }
}
