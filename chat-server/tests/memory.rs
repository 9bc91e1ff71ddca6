//! The node's memory bound: bytes held per in-window message, measured with a counting global
//! allocator over the real [`Store`], against the contract's 2.5 × payload bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chat_server::message::Message;
use chat_server::node::store::Store;

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
