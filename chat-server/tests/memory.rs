//! The node's memory bound, measured with a counting global allocator over the real [`Store`]:
//! bytes held per in-window message against the contract's 2.5 × payload bytes, and bytes held
//! by a store with a byte budget against 1.1 × the budget (the documented overhead factor), and
//! bytes held by an idle live subscription.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chat_server::message::Message;
use chat_server::node::store::{MESSAGE_OVERHEAD, Store};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The count is process-wide: tests measuring it run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn message(position: u64, text_bytes: usize) -> Message {
    Message {
        position,
        channel: format!("room-{}", position % 5),
        id: format!("{:08x}-0000-4000-8000-{:012x}", position, position),
        author: "author-1".to_owned(),
        text: "x".repeat(text_bytes),
        sent_at: 1_764_000_000_000,
    }
}

/// Bytes allocated per message in a full window, and the payload bytes per message.
fn measure(text_bytes: usize, window: usize) -> (f64, f64) {
    let channels = 5;
    let n = (window * channels) as u64;
    let before = LIVE.load(Ordering::Relaxed);
    let mut store = Store::new(window, 16);
    let mut payload = 0;
    // Twice the window, so every channel's window is full and has evicted.
    for p in 1..=2 * n {
        let m = message(p, text_bytes);
        if p > n {
            payload += m.payload_bytes();
        }
        store.apply(m).expect("in order");
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(store.in_memory().0 as u64, n);
    let per_message = held as f64 / n as f64;
    drop(store);
    (per_message, payload as f64 / n as f64)
}

#[test]
fn in_window_messages_cost_at_most_two_and_a_half_times_their_payload() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for text in [200, 1000] {
        let (bytes, payload) = measure(text, 20_000);
        let ratio = bytes / payload;
        println!(
            "memory: {text}-byte text: {bytes:.0} bytes held per message, payload {payload:.0} bytes, ratio {ratio:.2}"
        );
        assert!(
            ratio <= 2.5,
            "{text}-byte texts: {bytes:.0} bytes per message for {payload:.0} payload bytes ({ratio:.2}x)"
        );
    }
}

/// The documented factor between the bytes a full window holds and its byte budget.
const BUDGET_OVERHEAD: f64 = 1.1;

/// A store with a byte budget, fed 4 KB messages (and, separately, small ones) in 4 channels far
/// past its budget, holds at most budget × [`BUDGET_OVERHEAD`] bytes, and its window is full.
#[test]
fn a_byte_budget_bounds_what_the_window_holds() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let budget = 16 << 20;
    for text in [4000, 200] {
        let before = LIVE.load(Ordering::Relaxed);
        // The per-channel message cap is far away: only the byte budget bounds the window.
        let mut store = Store::with_budget(1_000_000, budget, 16);
        let mut peak = 0;
        let n = (3 * budget / (text + MESSAGE_OVERHEAD)) as u64;
        for p in 1..=n {
            let mut m = message(p, text);
            m.channel = format!("room-{}", p % 4);
            store.apply(m).expect("in order");
            if p % 1000 == 0 {
                peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
            }
        }
        let held = LIVE.load(Ordering::Relaxed) - before;
        peak = peak.max(held);
        let (messages, counted) = store.in_memory();
        let ratio = peak as f64 / budget as f64;
        println!(
            "memory: {text}-byte texts, budget {budget}: {messages} messages, counted {counted}, \
             held {held} bytes, peak {peak} ({ratio:.3} x budget)"
        );
        assert!(counted <= budget && counted + text + MESSAGE_OVERHEAD + 100 > budget);
        assert!(
            ratio <= BUDGET_OVERHEAD,
            "{text}-byte texts: held {peak} bytes for a budget of {budget} ({ratio:.3}x)"
        );
        drop(store);
    }
}

/// An idle subscriber's live queue costs its first block, not its bound: 1,000 subscriptions to
/// distinct channels with a 4,096-message queue each hold about 1 KiB apiece (a broadcast buffer
/// of 4,096 slots allocated up front cost about 170 KiB per channel).
#[test]
fn idle_subscriptions_cost_little_whatever_their_queue_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut store = Store::new(100, 4096);
    let before = LIVE.load(Ordering::Relaxed);
    let subs: Vec<_> = (0..1000)
        .map(|i| store.subscribe(&format!("room-{i}")).0)
        .collect();
    let per = (LIVE.load(Ordering::Relaxed) - before) / subs.len();
    println!("memory: an idle subscription holds {per} bytes");
    assert!(per < 2048, "{per} bytes per idle subscription");
    drop(subs);
}
