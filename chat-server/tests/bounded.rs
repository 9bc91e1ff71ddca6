//! Bounded resources of a node (issue 10), against the real binaries on loopback: what clients
//! cannot make a node hold (channel state for names nobody wrote to), and the paging and caps of
//! `GET /channels` and message pages.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Cluster, http};

/// 3,000 WebSocket connect-and-close, each to a new channel name, nothing written: no channel is
/// listed and RSS stays near where it started. The bound, 32 MiB, is 11 KiB per name: far below
/// the 170 KiB per name a 4,096-slot live queue cost before (+500 MiB), and above what the
/// allocator keeps of the connections' buffers (measured +4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_unwritten_channels_leave_nothing() {
    let c = Cluster::start(1, 1).await;
    let node = &c.nodes[0];
    let ws_base = node.url.replace("http://", "ws://");
    let before = node.rss_kib();
    for i in 0..3000 {
        let url = format!("{ws_base}/ws?channel=phantom-{i}&after=0");
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        ws.close(None).await.expect("close");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = node.rss_kib();
    let listed: Value = http()
        .get(format!("{}/channels", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = support::status(&node.url).await;
    println!("3000 phantom subscriptions: RSS {before} -> {after} KiB");
    assert_eq!(listed["channels"], serde_json::json!([]), "{listed}");
    assert_eq!(status["channels"], 0, "{status}");
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}
