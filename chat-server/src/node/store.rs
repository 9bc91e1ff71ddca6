//! A node's in-memory copy of the history: the cursor (last applied position), a bounded window of
//! recent messages per channel, per-channel counters, and the live fan-out to subscribers.
//!
//! Pure data structure: no I/O. Messages are applied strictly in position order; a message that
//! does not continue the cursor is refused, so a hole can never be stored.
//!
//! Only messages create channel state: a subscription to a channel nobody wrote to holds its own
//! queue (in a map separate from the channels) and nothing else, and [`Store::release`] forgets
//! it when its receiver is gone. Each subscriber's queue is a bounded `tokio::sync::mpsc` channel
//! of `queue` messages, whose memory grows with what is queued (blocks of 32 slots), not with
//! its bound.
//!
//! The window is bounded twice: at most `window` messages per channel, and at most `budget`
//! bytes over all channels, each message counted as [`message_cost`] (its payload plus a fixed
//! [`MESSAGE_OVERHEAD`]). Over the byte budget, the oldest message of the channel holding the
//! most bytes leaves first ([`eviction_victim`]): a flood in one channel trims that channel, not
//! the quiet ones. Either way a channel remembers the highest position it dropped, so a page
//! reaching below it is answered by the replication log ([`LocalPage::Evicted`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

use crate::message::Message;

/// A message as it is fanned out to live subscribers: the record and its WebSocket frame,
/// rendered once for all of them. A void record (positions `void_from ..= message.position`
/// skipped after a broker data loss) goes to the subscribers of every channel, with no frame: a
/// subscriber holding a position in it must be told it is lost.
#[derive(Debug)]
pub struct Live {
    pub message: Arc<Message>,
    pub frame: Utf8Bytes,
    /// For a void record, the first position it voids.
    pub void_from: Option<u64>,
}

impl Live {
    fn new(message: Arc<Message>) -> Live {
        let frame = Utf8Bytes::from(ws_frame(&message));
        Live {
            message,
            frame,
            void_from: None,
        }
    }
}

/// The `{"type":"message", ...message}` frame the WebSocket API pushes.
pub fn ws_frame(message: &Message) -> String {
    let json = message.to_json();
    // `to_json` is an object: splice the type in after its opening brace.
    let mut frame = String::with_capacity(json.len() + 18);
    frame.push_str(r#"{"type":"message","#);
    frame.push_str(std::str::from_utf8(&json[1..]).unwrap_or("}"));
    frame
}

/// Refusal to apply a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("position {got} does not continue the cursor {cursor}")]
pub struct OutOfOrder {
    pub cursor: u64,
    pub got: u64,
}

/// Bytes a message is counted for beyond its payload: the `Arc<Message>` allocation (the
/// `Message` struct and two counters, 128 bytes) and its window slot, rounded up. Measured in
/// `chat-server/tests/memory.rs`: held bytes stay within 1.1 × the counted bytes.
pub const MESSAGE_OVERHEAD: usize = 160;

/// Bytes a message is counted for against the byte budget.
pub fn message_cost(message: &Message) -> usize {
    message.payload_bytes() + MESSAGE_OVERHEAD
}

/// How many of the leading messages of a page (their payload `sizes`, in order) fit in
/// `max_bytes`: the longest prefix whose sizes sum to at most `max_bytes`, and at least one when
/// there is any (a message larger than the cap is a page of its own, so a reader always moves on).
pub fn within_bytes(sizes: impl IntoIterator<Item = usize>, max_bytes: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if total > max_bytes && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// Whether a write to a channel may be accepted under a limit of `max` channels: always for a
/// channel that `exists` (holds a message), for a new one only while fewer than `max` exist.
pub fn admits_channel(exists: bool, channels: usize, max: usize) -> bool {
    exists || channels < max
}

/// The byte-budget eviction rule: while `held` bytes exceed `budget`, the oldest message of the
/// channel holding the most bytes leaves (ties: the name sorting last); `None` when within
/// budget or no channel holds anything. `candidates` are `(name, bytes held)`; the store passes
/// only its heaviest channel (its index is sorted by the same key).
pub fn eviction_victim<'a>(
    held: usize,
    budget: usize,
    candidates: impl IntoIterator<Item = (&'a str, usize)>,
) -> Option<&'a str> {
    if held <= budget {
        return None;
    }
    candidates
        .into_iter()
        .filter(|&(_, bytes)| bytes > 0)
        .max_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)))
        .map(|(name, _)| name)
}

/// One channel's counters and recent window.
#[derive(Debug, Default)]
struct Channel {
    recent: VecDeque<Arc<Message>>,
    /// Bytes of `recent`, counted by [`message_cost`].
    bytes: usize,
    /// Highest position of this channel dropped from the window (0: none).
    evicted_through: u64,
    count: u64,
    last_position: u64,
}

/// The store's end of one subscriber's queue.
#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<Arc<Live>>,
    /// Set when the queue overflowed (and the store dropped `tx`).
    lagged: Arc<AtomicBool>,
}

/// Queues `live` for every subscriber; drops those whose queue is full (marking them lagged) or
/// gone.
fn fan_out(subscribers: &mut Vec<Subscriber>, live: &Arc<Live>) {
    subscribers.retain(|s| match s.tx.try_send(live.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            s.lagged.store(true, Ordering::Release);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}

/// Why a [`Subscription`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LiveEnd {
    /// The subscriber fell more than the queue's bound behind; the store dropped it.
    #[error("fell more than the queue's bound behind")]
    Lagged,
    /// The store was replaced (the node reloads its history).
    #[error("the store was replaced")]
    Closed,
}

/// A subscriber's end of its live queue: the messages of one channel applied after
/// [`Store::subscribe`], in order.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Live>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next live message; [`LiveEnd::Lagged`] as soon as the queue overflowed (what was
    /// still queued is not delivered: the subscriber resumes from its last position instead).
    pub async fn recv(&mut self) -> Result<Arc<Live>, LiveEnd> {
        if self.lagged.load(Ordering::Acquire) {
            return Err(LiveEnd::Lagged);
        }
        match self.rx.recv().await {
            Some(live) if !self.lagged.load(Ordering::Acquire) => Ok(live),
            Some(_) => Err(LiveEnd::Lagged),
            None if self.lagged.load(Ordering::Acquire) => Err(LiveEnd::Lagged),
            None => Err(LiveEnd::Closed),
        }
    }

    /// [`Subscription::recv`] without waiting: `Ok(None)` when nothing is queued.
    pub fn poll_next(&mut self) -> Result<Option<Arc<Live>>, LiveEnd> {
        use tokio::sync::mpsc::error::TryRecvError;
        let lagged = || self.lagged.load(Ordering::Acquire);
        if lagged() {
            return Err(LiveEnd::Lagged);
        }
        match self.rx.try_recv() {
            Ok(_) if lagged() => Err(LiveEnd::Lagged),
            Ok(live) => Ok(Some(live)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) if lagged() => Err(LiveEnd::Lagged),
            Err(TryRecvError::Disconnected) => Err(LiveEnd::Closed),
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next live message if one is queued (tests and polling).
    pub fn try_recv(&mut self) -> Option<Arc<Live>> {
        self.rx.try_recv().ok()
    }

    /// Stops receiving: the store sees this subscriber as gone ([`Store::release`] forgets it).
    pub fn close(&mut self) {
        self.rx.close();
    }
}

/// Summary of one channel, as `GET /channels` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelInfo {
    pub name: String,
    pub messages: u64,
    pub last_position: u64,
}

/// A channel page answered from memory, or the part of it memory cannot answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalPage {
    /// Every message of the page is in the window.
    Complete(Vec<Arc<Message>>),
    /// Messages after `after` up to `evicted_through` left the window: read those from the log,
    /// then continue from memory.
    Evicted { evicted_through: u64 },
}

/// The in-memory history of a node.
#[derive(Debug)]
pub struct Store {
    cursor: u64,
    window: usize,
    queue: usize,
    total: u64,
    /// Byte budget of the windows of all channels, counted by [`message_cost`].
    budget: usize,
    /// Bytes held in all windows, counted by [`message_cost`].
    held: usize,
    channels: BTreeMap<Arc<str>, Channel>,
    /// `(bytes held, name)` of every channel holding bytes: the heaviest is the last.
    by_bytes: BTreeSet<(usize, Arc<str>)>,
    /// Live queues by channel name; a name is here only while it has a subscriber.
    subscribers: HashMap<String, Vec<Subscriber>>,
    /// Void ranges `(from, to)` applied, ascending.
    voids: Vec<(u64, u64)>,
}

impl Store {
    /// An empty store that keeps `window` messages per channel, with no byte budget, and gives
    /// each live subscriber a queue of `queue` messages.
    pub fn new(window: usize, queue: usize) -> Store {
        Store::with_budget(window, usize::MAX, queue)
    }

    /// An empty store that keeps at most `window` messages per channel and at most `budget`
    /// bytes (counted by [`message_cost`]) over all channels, and gives each live subscriber a
    /// queue of `queue` messages.
    pub fn with_budget(window: usize, budget: usize, queue: usize) -> Store {
        Store {
            cursor: 0,
            window: window.max(1),
            queue: queue.max(1),
            total: 0,
            budget,
            held: 0,
            channels: BTreeMap::new(),
            by_bytes: BTreeSet::new(),
            subscribers: HashMap::new(),
            voids: Vec::new(),
        }
    }

    /// Last applied position.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Position ranges `(from, to)` (inclusive, ascending) that hold nothing because a broker
    /// data loss skipped them.
    pub fn voids(&self) -> &[(u64, u64)] {
        &self.voids
    }

    /// Messages applied in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Messages currently held in memory, and their bytes counted by [`message_cost`].
    pub fn in_memory(&self) -> (usize, usize) {
        let n = self.channels.values().map(|c| c.recent.len()).sum();
        (n, self.held)
    }

    /// Bytes of the messages held in memory, counted by [`message_cost`] (at most the budget).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Applies the next message; it must be at `cursor + 1`, or be a void record past the cursor
    /// (positions skipped after a broker data loss: remembered in [`Store::voids`]).
    pub fn apply(&mut self, message: Message) -> Result<(), OutOfOrder> {
        if !message.continues(self.cursor) {
            return Err(OutOfOrder {
                cursor: self.cursor,
                got: message.position,
            });
        }
        if message.is_void() {
            let from = self.cursor + 1;
            self.voids.push((from, message.position));
            self.cursor = message.position;
            let live = Arc::new(Live {
                message: Arc::new(message),
                frame: Utf8Bytes::default(),
                void_from: Some(from),
            });
            for subscribers in self.subscribers.values_mut() {
                fan_out(subscribers, &live);
            }
            self.subscribers.retain(|_, s| !s.is_empty());
            return Ok(());
        }
        self.cursor = message.position;
        self.total += 1;
        let message = Arc::new(message);
        if let Some(subscribers) = self.subscribers.get_mut(&message.channel) {
            let live = Arc::new(Live::new(message.clone()));
            fan_out(subscribers, &live);
            if subscribers.is_empty() {
                self.subscribers.remove(&message.channel);
            }
        }
        let name: Arc<str> = match self.channels.get_key_value(message.channel.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(message.channel.as_str()),
        };
        let channel = self.channels.entry(name.clone()).or_default();
        let before = channel.bytes;
        channel.count += 1;
        channel.last_position = message.position;
        channel.bytes += message_cost(&message);
        self.held += message_cost(&message);
        channel.recent.push_back(message);
        while channel.recent.len() > self.window {
            if let Some(old) = channel.recent.pop_front() {
                channel.evicted_through = old.position;
                channel.bytes -= message_cost(&old);
                self.held -= message_cost(&old);
            }
        }
        let after = channel.bytes;
        self.reindex(&name, before, after);
        while let Some((bytes, heaviest)) = self.by_bytes.last().cloned() {
            if eviction_victim(self.held, self.budget, [(heaviest.as_ref(), bytes)]).is_none() {
                break;
            }
            self.evict_oldest(&heaviest);
        }
        Ok(())
    }

    /// Drops the oldest in-window message of `name`.
    fn evict_oldest(&mut self, name: &Arc<str>) {
        let Some(channel) = self.channels.get_mut(name.as_ref()) else {
            return;
        };
        let Some(old) = channel.recent.pop_front() else {
            return;
        };
        let before = channel.bytes;
        channel.evicted_through = old.position;
        channel.bytes -= message_cost(&old);
        self.held -= message_cost(&old);
        let after = channel.bytes;
        self.reindex(name, before, after);
    }

    /// Moves `name` in the by-bytes index from `before` to `after` bytes.
    fn reindex(&mut self, name: &Arc<str>, before: usize, after: usize) {
        if before == after {
            return;
        }
        if before > 0 {
            self.by_bytes.remove(&(before, name.clone()));
        }
        if after > 0 {
            self.by_bytes.insert((after, name.clone()));
        }
    }

    /// Applies a dense batch in order; stops at the first message that does not fit.
    pub fn apply_all(
        &mut self,
        batch: impl IntoIterator<Item = Message>,
    ) -> Result<usize, OutOfOrder> {
        let mut n = 0;
        for m in batch {
            self.apply(m)?;
            n += 1;
        }
        Ok(n)
    }

    /// Messages of `channel` with position in `after+1 ..= upto`, at most `limit`, from memory.
    pub fn page(&self, channel: &str, after: u64, upto: u64, limit: usize) -> LocalPage {
        self.page_within(channel, after, upto, limit, usize::MAX)
    }

    /// As [`Store::page`], and at most `max_bytes` of payload (see [`within_bytes`]): a page cut
    /// by bytes is complete up to its last message.
    pub fn page_within(
        &self,
        channel: &str,
        after: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> LocalPage {
        let Some(ch) = self.channels.get(channel) else {
            return LocalPage::Complete(Vec::new());
        };
        if after < ch.evicted_through {
            return LocalPage::Evicted {
                evicted_through: ch.evicted_through,
            };
        }
        let start = ch.recent.partition_point(|m| m.position <= after);
        let candidates = || {
            ch.recent
                .range(start..)
                .take_while(|m| m.position <= upto)
                .take(limit)
        };
        let n = within_bytes(candidates().map(|m| m.payload_bytes()), max_bytes);
        LocalPage::Complete(candidates().take(n).cloned().collect())
    }

    /// Number of channels seen.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether a write to `channel` may be accepted with at most `max` channels (see
    /// [`admits_channel`]).
    pub fn admits(&self, channel: &str, max: usize) -> bool {
        admits_channel(
            self.channels.contains_key(channel),
            self.channels.len(),
            max,
        )
    }

    /// At most `limit` channels with names sorting after `after` (from the first when `None`),
    /// sorted by name, and the name to continue after when more follow (`None`: this was the
    /// last page). Costs O(log channels + limit): the channels are kept sorted.
    pub fn channels_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ChannelInfo>, Option<String>) {
        self.channels_page_where(after, limit, |_| true)
    }

    /// As [`Store::channels_page`], over only the channels `visible` admits (a client's readable
    /// channels): the page is full whenever more visible channels follow, and `next` is set only
    /// then.
    pub fn channels_page_where(
        &self,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> (Vec<ChannelInfo>, Option<String>) {
        use std::ops::Bound;
        let from = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        let mut range = self
            .channels
            .range::<str, _>((from, Bound::Unbounded))
            .filter(|(name, _)| visible(name))
            .map(|(name, c)| ChannelInfo {
                name: name.to_string(),
                messages: c.count,
                last_position: c.last_position,
            });
        let page: Vec<ChannelInfo> = range.by_ref().take(limit).collect();
        let next = match range.next() {
            Some(_) => page.last().map(|c| c.name.clone()),
            None => None,
        };
        (page, next)
    }

    /// Every channel with its counters, sorted by name.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.channels
            .iter()
            .map(|(name, c)| ChannelInfo {
                name: name.to_string(),
                messages: c.count,
                last_position: c.last_position,
            })
            .collect()
    }

    /// Subscribes to the live messages of `channel` applied after this call; returns the
    /// subscription and the cursor at the moment of subscription (everything up to it is in the
    /// store, everything after it arrives on the subscription). Creates no channel: only a
    /// message does. The queue holds at most `queue` messages; past that the subscriber is
    /// dropped ([`LiveEnd::Lagged`]).
    pub fn subscribe(&mut self, channel: &str) -> (Subscription, u64) {
        let (tx, rx) = mpsc::channel(self.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subscribers
            .entry(channel.to_owned())
            .or_default()
            .push(Subscriber {
                tx,
                lagged: lagged.clone(),
            });
        (Subscription { rx, lagged }, self.cursor)
    }

    /// Forgets the subscribers of `channel` whose [`Subscription`] was closed or dropped, and the
    /// channel's entry once none is left.
    pub fn release(&mut self, channel: &str) {
        if let Some(subscribers) = self.subscribers.get_mut(channel) {
            subscribers.retain(|s| !s.tx.is_closed());
            if subscribers.is_empty() {
                self.subscribers.remove(channel);
            }
        }
    }

    /// Live subscribers held, over all channels.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(position: u64, channel: &str) -> Message {
        Message {
            position,
            channel: channel.into(),
            id: format!("id-{position:04}"),
            author: "a".into(),
            text: "hello".into(),
            sent_at: 0,
        }
    }

    fn positions(page: LocalPage) -> Vec<u64> {
        match page {
            LocalPage::Complete(v) => v.iter().map(|m| m.position).collect(),
            LocalPage::Evicted { evicted_through } => panic!("evicted through {evicted_through}"),
        }
    }

    #[test]
    fn applies_only_in_order() {
        let mut s = Store::new(10, 4);
        s.apply(msg(1, "a")).unwrap();
        assert_eq!(s.apply(msg(3, "a")), Err(OutOfOrder { cursor: 1, got: 3 }));
        assert_eq!(s.apply(msg(1, "a")), Err(OutOfOrder { cursor: 1, got: 1 }));
        s.apply(msg(2, "b")).unwrap();
        assert_eq!(s.cursor(), 2);
        assert_eq!(s.total(), 2);
    }

    #[test]
    fn pages_filter_by_channel_after_and_limit() {
        let mut s = Store::new(100, 4);
        for p in 1..=10 {
            s.apply(msg(p, if p % 2 == 0 { "even" } else { "odd" }))
                .unwrap();
        }
        assert_eq!(
            positions(s.page("even", 0, u64::MAX, 100)),
            vec![2, 4, 6, 8, 10]
        );
        assert_eq!(positions(s.page("even", 4, u64::MAX, 2)), vec![6, 8]);
        assert_eq!(positions(s.page("even", 4, 7, 100)), vec![6]);
        assert_eq!(
            positions(s.page("none", 0, u64::MAX, 100)),
            Vec::<u64>::new()
        );
        let info = s.channels();
        assert_eq!(info[0].name, "even");
        assert_eq!((info[0].messages, info[0].last_position), (5, 10));
    }

    #[test]
    fn window_is_bounded_and_reports_evictions() {
        let mut s = Store::new(3, 4);
        for p in 1..=10 {
            s.apply(msg(p, "c")).unwrap();
        }
        assert_eq!(s.in_memory().0, 3);
        assert_eq!(
            s.page("c", 5, u64::MAX, 10),
            LocalPage::Evicted { evicted_through: 7 }
        );
        assert_eq!(positions(s.page("c", 7, u64::MAX, 10)), vec![8, 9, 10]);
        assert_eq!(s.channels()[0].messages, 10);
    }

    #[test]
    fn void_records_skip_positions_and_are_remembered() {
        let mut s = Store::new(10, 4);
        s.apply(msg(1, "c")).unwrap();
        let (mut on_c, _) = s.subscribe("c");
        let (mut on_d, _) = s.subscribe("d");
        s.apply(Message::void(100)).unwrap();
        // Every live subscriber, whatever its channel, learns of the void.
        for rx in [&mut on_c, &mut on_d] {
            let live = rx.poll_next().unwrap().unwrap();
            assert!(live.message.is_void());
            assert_eq!((live.void_from, live.message.position), (Some(2), 100));
        }
        assert_eq!(s.cursor(), 100);
        assert_eq!(s.voids(), &[(2, 100)]);
        assert_eq!(s.total(), 1);
        assert_eq!(
            s.apply(msg(100, "c")),
            Err(OutOfOrder {
                cursor: 100,
                got: 100
            })
        );
        s.apply(msg(101, "c")).unwrap();
        assert_eq!(positions(s.page("c", 0, u64::MAX, 10)), vec![1, 101]);
        assert_eq!(s.channel_count(), 1);
    }

    #[test]
    fn subscribers_get_what_follows_their_cursor() {
        let mut s = Store::new(10, 4);
        s.apply(msg(1, "c")).unwrap();
        let (mut rx, at) = s.subscribe("c");
        assert_eq!(at, 1);
        s.apply(msg(2, "c")).unwrap();
        s.apply(msg(3, "other")).unwrap();
        let live = rx.try_recv().unwrap();
        assert_eq!(live.message.position, 2);
        assert!(
            live.frame
                .as_str()
                .starts_with(r#"{"type":"message","position":2,"#),
            "{}",
            live.frame.as_str()
        );
        assert!(rx.try_recv().is_none());
    }

    /// The byte-budget rule: within budget nothing leaves; over it, the heaviest channel does
    /// (ties: the name sorting last); empty channels are never chosen.
    #[test]
    fn eviction_victim_table() {
        type Case = (
            usize,
            usize,
            Vec<(&'static str, usize)>,
            Option<&'static str>,
        );
        let table: Vec<Case> = vec![
            (0, 0, vec![], None),
            (100, 100, vec![("a", 100)], None),
            (99, 100, vec![("a", 99)], None),
            (101, 100, vec![], None),
            (101, 100, vec![("a", 101)], Some("a")),
            (300, 100, vec![("a", 100), ("b", 200)], Some("b")),
            (300, 100, vec![("b", 200), ("a", 100)], Some("b")),
            (200, 100, vec![("a", 100), ("b", 100)], Some("b")),
            (200, 100, vec![("b", 100), ("a", 100)], Some("b")),
            (150, 100, vec![("a", 0), ("b", 150)], Some("b")),
            (150, 100, vec![("a", 0)], None),
            (usize::MAX, 0, vec![("z", 1), ("y", 2)], Some("y")),
        ];
        for (held, budget, candidates, want) in table {
            assert_eq!(
                eviction_victim(held, budget, candidates.clone()),
                want,
                "held {held} budget {budget} {candidates:?}"
            );
        }
    }

    /// A flood in one channel trims that channel and leaves the quiet one whole; both report
    /// what they dropped, so a page below the window goes to the log.
    #[test]
    fn the_byte_budget_trims_the_heaviest_channel() {
        let cost = message_cost(&msg(1, "loud"));
        let mut s = Store::with_budget(1000, 10 * cost, 4);
        s.apply(msg(1, "calm")).unwrap();
        s.apply(msg(2, "calm")).unwrap();
        for p in 3..=30 {
            s.apply(msg(p, "loud")).unwrap();
            assert!(s.in_memory().1 <= 10 * cost);
        }
        assert_eq!(s.in_memory(), (10, 10 * cost));
        assert_eq!(positions(s.page("calm", 0, u64::MAX, 10)), vec![1, 2]);
        assert_eq!(
            s.page("loud", 0, u64::MAX, 10),
            LocalPage::Evicted {
                evicted_through: 22
            }
        );
        assert_eq!(
            positions(s.page("loud", 22, u64::MAX, 100)),
            (23..=30).collect::<Vec<_>>()
        );
        // The calm channel grows: the loud one gives way until the calm one is the heavier.
        for p in 31..=36 {
            s.apply(msg(p, "calm")).unwrap();
        }
        assert_eq!(s.in_memory(), (10, 10 * cost));
        assert_eq!(
            s.page("calm", 0, u64::MAX, 10),
            LocalPage::Evicted {
                evicted_through: 31
            }
        );
        assert_eq!(
            positions(s.page("calm", 31, u64::MAX, 10)),
            vec![32, 33, 34, 35, 36]
        );
        assert_eq!(
            s.page("loud", 22, u64::MAX, 10),
            LocalPage::Evicted {
                evicted_through: 25
            }
        );
        assert_eq!(
            positions(s.page("loud", 25, u64::MAX, 10)),
            vec![26, 27, 28, 29, 30]
        );
        assert_eq!(s.channels()[1].messages, 28);
    }

    /// Payload sizes and a byte cap → how many leading messages a page takes.
    #[test]
    fn within_bytes_table() {
        let table: [(&[usize], usize, usize); 9] = [
            (&[], 100, 0),
            (&[10], 100, 1),
            (&[10, 20, 30], 100, 3),
            (&[10, 20, 30], 60, 3),
            (&[10, 20, 30], 59, 2),
            (&[10, 20, 30], 30, 2),
            (&[10, 20, 30], 10, 1),
            (&[500, 1], 100, 1),
            (&[usize::MAX - 1, 2], usize::MAX - 1, 1),
        ];
        for (sizes, max, want) in table {
            assert_eq!(
                within_bytes(sizes.iter().copied(), max),
                want,
                "{sizes:?} max {max}"
            );
        }
        let mut s = Store::new(100, 4);
        for p in 1..=10 {
            s.apply(msg(p, "c")).unwrap();
        }
        let size = msg(1, "c").payload_bytes();
        assert_eq!(
            positions(s.page_within("c", 2, u64::MAX, 100, 3 * size + 1)),
            vec![3, 4, 5]
        );
        assert_eq!(positions(s.page_within("c", 2, u64::MAX, 100, 1)), vec![3]);
    }

    /// Admission under a channel limit: existing channels always, new ones below the limit.
    #[test]
    fn admits_channel_table() {
        let table = [
            (true, 0, 0, true),
            (true, 10, 10, true),
            (true, 11, 10, true),
            (false, 0, 1, true),
            (false, 9, 10, true),
            (false, 10, 10, false),
            (false, 11, 10, false),
            (false, 0, 0, false),
        ];
        for (exists, channels, max, want) in table {
            assert_eq!(
                admits_channel(exists, channels, max),
                want,
                "exists {exists} channels {channels} max {max}"
            );
        }
        let mut s = Store::new(10, 4);
        s.apply(msg(1, "a")).unwrap();
        s.apply(msg(2, "b")).unwrap();
        assert!(s.admits("a", 2) && !s.admits("c", 2) && s.admits("c", 3));
    }

    /// Pages of channels follow the names, and `next` is set exactly when more follow.
    #[test]
    fn channels_page_by_name() {
        let mut s = Store::new(10, 4);
        for (p, name) in ["d", "b", "a", "c", "e"].iter().enumerate() {
            s.apply(msg(p as u64 + 1, name)).unwrap();
        }
        let names = |page: (Vec<ChannelInfo>, Option<String>)| {
            let list: Vec<String> = page.0.into_iter().map(|c| c.name).collect();
            (list, page.1)
        };
        let v = |l: &[&str]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        type Case = (
            Option<&'static str>,
            usize,
            Vec<String>,
            Option<&'static str>,
        );
        let table: [Case; 7] = [
            (None, 10, v(&["a", "b", "c", "d", "e"]), None),
            (None, 5, v(&["a", "b", "c", "d", "e"]), None),
            (None, 2, v(&["a", "b"]), Some("b")),
            (Some("b"), 2, v(&["c", "d"]), Some("d")),
            (Some("d"), 2, v(&["e"]), None),
            (Some("bb"), 1, v(&["c"]), Some("c")),
            (Some("e"), 2, v(&[]), None),
        ];
        for (after, limit, want, next) in table {
            assert_eq!(
                names(s.channels_page(after, limit)),
                (want, next.map(str::to_owned)),
                "after {after:?} limit {limit}"
            );
        }
    }

    /// A subscription creates no channel, and a released one leaves nothing behind.
    #[test]
    fn subscriptions_to_unwritten_channels_leave_no_state() {
        let mut s = Store::new(10, 4096);
        for i in 0..100 {
            let (mut sub, _) = s.subscribe(&format!("room-{i}"));
            sub.close();
            s.release(&format!("room-{i}"));
        }
        assert_eq!(s.channel_count(), 0);
        assert!(s.channels().is_empty());
        assert_eq!(s.subscriber_count(), 0);
        // Dropped without release: forgotten at the next message of the channel.
        let (sub, _) = s.subscribe("c");
        drop(sub);
        assert_eq!(s.subscriber_count(), 1);
        s.apply(msg(1, "c")).unwrap();
        assert_eq!(s.subscriber_count(), 0);
        assert_eq!(s.channel_count(), 1);
    }

    /// A subscriber whose queue overflows is dropped and told so; the others go on.
    #[tokio::test]
    async fn an_overflowing_subscriber_is_dropped_as_lagged() {
        let mut s = Store::new(100, 2);
        let (mut slow, _) = s.subscribe("c");
        let (mut fast, _) = s.subscribe("c");
        for p in 1..=3 {
            s.apply(msg(p, "c")).unwrap();
            assert_eq!(fast.recv().await.unwrap().message.position, p);
        }
        assert_eq!(slow.recv().await.unwrap_err(), LiveEnd::Lagged);
        assert_eq!(s.subscriber_count(), 1);
        drop(s);
        assert_eq!(fast.recv().await.unwrap_err(), LiveEnd::Closed);
    }
}
