//! One message, one encoding (issue 14): the WebSocket `message` frame (live and replayed), the
//! element of an HTTP page and the replication log's `/snapshot` record carry the same JSON bytes
//! for the same message, on the node that accepted it and on a node that bootstrapped from the
//! log, against real Redis and real `replication-log` and `chat-server` processes.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use support::{Cluster, http, post, snapshot_text, wait_position};
use tokio_tungstenite::tungstenite::Message as Frame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, query: &str) -> Ws {
    let url = format!("{}/ws?{query}", url.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws handshake")
        .0
}

/// The text of the next `message` frame (other frames, e.g. pings, are skipped).
async fn next_message_frame(ws: &mut Ws) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message frame within 10 s")
            .expect("the connection stays open")
            .expect("a frame");
        if let Frame::Text(t) = frame
            && t.as_str().starts_with(r#"{"type":"message","#)
        {
            return t.as_str().to_owned();
        }
    }
}

/// The raw body of a channel page.
async fn page_body(url: &str, channel: &str) -> String {
    http()
        .get(format!(
            "{url}/channels/{channel}/messages?after=0&limit=10"
        ))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page body")
}

#[tokio::test]
async fn websocket_frame_http_page_and_snapshot_record_carry_the_same_bytes() {
    let mut c = Cluster::start(1, 1).await;
    let node = c.nodes[0].url.clone();
    let log = c.logs[0].url.clone();
    let mut live = connect(&node, "channel=same&after=0").await;
    // Text that exercises JSON escaping: quotes, backslash, slash, control characters, non-ASCII
    // (two- and four-byte UTF-8) and HTML-looking text.
    let text = "h\u{e9}llo \"quoted\" \\ / <b>&</b>\n\ttab \u{1F600} \u{7f}";
    let (status, body) = post(
        &node,
        "same",
        json!({"text": text, "author": "ann \u{e9}", "id": "same-1"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let position = body["position"].as_u64().expect("position");
    wait_position(
        std::slice::from_ref(&log),
        "persisted",
        position,
        Duration::from_secs(30),
    )
    .await;

    // The replica's record: one NDJSON line per message.
    let snapshot = snapshot_text(&log).await;
    let record = snapshot
        .lines()
        .find(|l| l.contains(r#""id":"same-1""#))
        .unwrap_or_else(|| panic!("no record of same-1 in {snapshot:?}"))
        .to_owned();
    assert!(
        record.starts_with(&format!(r#"{{"position":{position},"#)),
        "{record}"
    );
    // The frame is the record with the type spliced in after its opening brace.
    let frame = format!(r#"{{"type":"message",{}"#, &record[1..]);

    assert_eq!(next_message_frame(&mut live).await, frame, "live frame");
    let mut replayed = connect(&node, "channel=same&after=0").await;
    assert_eq!(
        next_message_frame(&mut replayed).await,
        frame,
        "replayed frame"
    );
    let page = page_body(&node, "same").await;
    assert!(
        page.contains(&format!("[{record}]")),
        "page {page} lacks {record}"
    );

    // A node that bootstrapped from the log's snapshot serves the same bytes.
    let i = c.add_node().await;
    let other = c.nodes[i].url.clone();
    let mut replayed = connect(&other, "channel=same&after=0").await;
    assert_eq!(
        next_message_frame(&mut replayed).await,
        frame,
        "frame replayed by a node that bootstrapped from the log"
    );
    let page = page_body(&other, "same").await;
    assert!(
        page.contains(&format!("[{record}]")),
        "page {page} lacks {record}"
    );
}
