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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

use crate::message::Message;

/// A message as it is fanned out to live subscribers: the record and its WebSocket frame,
/// rendered once for all of them.
#[derive(Debug)]
pub struct Live {
    pub message: Arc<Message>,
    pub frame: Utf8Bytes,
}

impl Live {
    fn new(message: Arc<Message>) -> Live {
        let frame = Utf8Bytes::from(ws_frame(&message));
        Live { message, frame }
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

/// One channel's counters and recent window.
#[derive(Debug, Default)]
struct Channel {
    recent: VecDeque<Arc<Message>>,
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
    window_bytes: usize,
    channels: HashMap<String, Channel>,
    /// Live queues by channel name; a name is here only while it has a subscriber.
    subscribers: HashMap<String, Vec<Subscriber>>,
    /// Void ranges `(from, to)` applied, ascending.
    voids: Vec<(u64, u64)>,
}

impl Store {
    /// An empty store that keeps `window` messages per channel and gives each live subscriber a
    /// queue of `queue` messages.
    pub fn new(window: usize, queue: usize) -> Store {
        Store {
            cursor: 0,
            window: window.max(1),
            queue: queue.max(1),
            total: 0,
            window_bytes: 0,
            channels: HashMap::new(),
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

    /// Messages currently held in memory, and their payload bytes.
    pub fn in_memory(&self) -> (usize, usize) {
        let n = self.channels.values().map(|c| c.recent.len()).sum();
        (n, self.window_bytes)
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
            self.voids.push((self.cursor + 1, message.position));
            self.cursor = message.position;
            return Ok(());
        }
        self.cursor = message.position;
        self.total += 1;
        self.window_bytes += message.payload_bytes();
        let channel = self.channels.entry(message.channel.clone()).or_default();
        channel.count += 1;
        channel.last_position = message.position;
        let message = Arc::new(message);
        if let Some(subscribers) = self.subscribers.get_mut(&message.channel) {
            let live = Arc::new(Live::new(message.clone()));
            subscribers.retain(|s| match s.tx.try_send(live.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if subscribers.is_empty() {
                self.subscribers.remove(&message.channel);
            }
        }
        channel.recent.push_back(message);
        while channel.recent.len() > self.window {
            if let Some(old) = channel.recent.pop_front() {
                channel.evicted_through = old.position;
                self.window_bytes -= old.payload_bytes();
            }
        }
        Ok(())
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
        let Some(ch) = self.channels.get(channel) else {
            return LocalPage::Complete(Vec::new());
        };
        if after < ch.evicted_through {
            return LocalPage::Evicted {
                evicted_through: ch.evicted_through,
            };
        }
        let start = ch.recent.partition_point(|m| m.position <= after);
        let page = ch
            .recent
            .range(start..)
            .take_while(|m| m.position <= upto)
            .take(limit)
            .cloned()
            .collect();
        LocalPage::Complete(page)
    }

    /// Number of channels seen.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Every channel with its counters, sorted by name.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let mut list: Vec<ChannelInfo> = self
            .channels
            .iter()
            .map(|(name, c)| ChannelInfo {
                name: name.clone(),
                messages: c.count,
                last_position: c.last_position,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
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
            id: format!("id-{position}"),
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
        s.apply(Message::void(100)).unwrap();
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
