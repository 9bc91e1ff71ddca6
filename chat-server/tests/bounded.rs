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

async fn get_json(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET /channels` pages by name with `next`; a write that would create a channel beyond
/// `--max-channels` is refused with `409` and stores nothing, writes to existing channels go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_paged_and_capped() {
    let c = Cluster::start_with(1, 1, &["--max-channels", "3"]).await;
    let url = &c.nodes[0].url;
    for name in ["b", "a", "c"] {
        let (status, body) = support::post(url, name, serde_json::json!({"text": "hi"})).await;
        assert_eq!(status, 201, "{body}");
    }
    // The limit counts the channels this node has applied.
    support::wait_position(
        std::slice::from_ref(url),
        "position",
        3,
        Duration::from_secs(10),
    )
    .await;
    let (status, body) = support::post(url, "d", serde_json::json!({"text": "hi"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("channel limit reached")),
        "{body}"
    );
    let (status, body) = support::post(url, "a", serde_json::json!({"text": "again"})).await;
    assert_eq!(status, 201, "{body}");
    support::wait_position(
        std::slice::from_ref(url),
        "position",
        4,
        Duration::from_secs(10),
    )
    .await;

    let names = |v: &Value| -> Vec<String> {
        v["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let (_, all) = get_json(&format!("{url}/channels")).await;
    assert_eq!(names(&all), ["a", "b", "c"], "{all}");
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["channels"][0]["messages"], 2);
    assert_eq!(all["channels"][0]["last_position"], 4);
    let (_, first) = get_json(&format!("{url}/channels?limit=2")).await;
    assert_eq!(names(&first), ["a", "b"], "{first}");
    assert_eq!(first["next"], "b");
    let (_, second) = get_json(&format!("{url}/channels?after=b&limit=2")).await;
    assert_eq!(names(&second), ["c"], "{second}");
    assert_eq!(second["next"], Value::Null);
    let (status, _) = get_json(&format!("{url}/channels?limit=0")).await;
    assert_eq!(status, 400);
    let (_, gone) = get_json(&format!("{url}/channels/d/messages")).await;
    assert_eq!(gone["messages"], serde_json::json!([]), "{gone}");
}
