//! End-to-end tests of the data plane on loopback: real Redis, real `replication-log` and
//! `chat-server` processes, clients speaking HTTP and WebSocket.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_server::message::Message;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{
    Cluster, http, metrics_text, node_history, post, read_all, snapshot, status, wait_position,
    wait_ready,
};
use tokio_tungstenite::tungstenite::Message as Frame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn channels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("room-{i}")).collect()
}

async fn ws_connect(url: &str, channel: &str, after: u64) -> Ws {
    let ws_url = format!(
        "{}/ws?channel={channel}&after={after}",
        url.replace("http://", "ws://")
    );
    let (ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("ws connect");
    ws
}

/// Sends over a WebSocket and waits for the ack, skipping pushed messages meanwhile.
async fn ws_send(ws: &mut Ws, text: &str, id: &str) -> Result<u64, String> {
    let frame = json!({"type": "send", "text": text, "author": "ws", "id": id}).to_string();
    ws.send(Frame::Text(frame.into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .map_err(|_| "ack timeout".to_string())?;
        match f {
            Some(Ok(Frame::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                match v["type"].as_str() {
                    Some("ack") if v["id"] == id => {
                        return v["position"].as_u64().ok_or("no position".into());
                    }
                    Some("error") => return Err(v["error"].to_string()),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// A sender: `count` messages to its channel, through node URLs chosen round-robin; a failed write
/// is retried with the same id on the next node until acknowledged. Returns (id, position) pairs.
async fn sender(
    k: usize,
    urls: Arc<Vec<String>>,
    channel: String,
    count: usize,
    ws: bool,
) -> Vec<(String, u64)> {
    let mut acked = Vec::with_capacity(count);
    let mut node = k % urls.len();
    let mut socket: Option<Ws> = None;
    for i in 0..count {
        let id = format!("s{k}-m{i}");
        let text = format!("message {i} from sender {k}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "sender {k} could not deliver {id}"
            );
            let result = if ws {
                if socket.is_none() {
                    let url = format!(
                        "{}/ws?channel={channel}&after={}",
                        urls[node].replace("http://", "ws://"),
                        u64::MAX
                    );
                    socket = tokio_tungstenite::connect_async(url)
                        .await
                        .ok()
                        .map(|(s, _)| s);
                }
                match socket.as_mut() {
                    Some(s) => ws_send(s, &text, &id).await,
                    None => Err("connect failed".into()),
                }
            } else {
                match http()
                    .post(format!("{}/channels/{channel}/messages", urls[node]))
                    .json(&json!({"text": text, "author": format!("s{k}"), "id": id}))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.unwrap_or_default();
                        v["position"]
                            .as_u64()
                            .ok_or_else(|| "no position".to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            };
            match result {
                Ok(p) => {
                    acked.push((id, p));
                    break;
                }
                Err(_) => {
                    socket = None;
                    node = (node + 1) % urls.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    acked
}

/// Runs `senders` concurrent senders over `channels`, half HTTP, half WebSocket.
async fn load(
    urls: Vec<String>,
    senders: usize,
    per_sender: usize,
    chans: Vec<String>,
) -> BTreeMap<String, u64> {
    let urls = Arc::new(urls);
    let tasks: Vec<_> = (0..senders)
        .map(|k| {
            tokio::spawn(sender(
                k,
                urls.clone(),
                chans[k % chans.len()].clone(),
                per_sender,
                k % 2 == 1,
            ))
        })
        .collect();
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (id, p) in t.await.expect("sender") {
            assert!(acked.insert(id, p).is_none());
        }
    }
    acked
}

/// Asserts a node's history holds exactly the acknowledged messages, each id once at its
/// position, from position 1 and dense but for at most `voids` skipped ranges (a broker restart
/// skips the positions its previous process may have handed out).
fn assert_complete(
    who: &str,
    history: &BTreeMap<u64, Message>,
    acked: &BTreeMap<String, u64>,
    voids: usize,
) {
    let n = acked.len() as u64;
    assert_eq!(
        history.len() as u64,
        n,
        "{who}: holds {} messages, want {n}",
        history.len()
    );
    let positions: Vec<u64> = history.keys().copied().collect();
    assert_eq!(
        positions.first().copied(),
        Some(1),
        "{who}: does not start at 1"
    );
    let skips: Vec<(u64, u64)> = positions
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        skips.len() <= voids,
        "{who}: positions skip {skips:?} (at most {voids} skipped ranges expected)"
    );
    for (id, p) in acked {
        assert_eq!(&history[p].id, id, "{who}: position {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_reach_every_node_and_replica_in_one_order() {
    let mut cluster = Cluster::start(3, 2).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|p| p.url.clone()).collect();
    let chans = channels(5);

    // Kill node 2 a little into the load and bring it back: its senders move to other nodes.
    let load = tokio::spawn(load(urls.clone(), 16, 625, chans.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&urls[0]).await["position"].as_u64().unwrap_or(0) < 2000 {
        assert!(Instant::now() < deadline, "load did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.nodes[2].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[2].restart();
    let acked = load.await.expect("load");
    assert_eq!(acked.len(), 10_000);
    assert_eq!(
        acked.values().copied().collect::<BTreeSet<_>>(),
        (1..=10_000).collect()
    );

    wait_ready(&urls[2], Duration::from_secs(60)).await;
    wait_position(&urls, "position", 10_000, Duration::from_secs(60)).await;
    let logs: Vec<String> = cluster.logs.iter().map(|p| p.url.clone()).collect();
    wait_position(&logs, "persisted", 10_000, Duration::from_secs(60)).await;

    let reference = node_history(&urls[0], &chans).await;
    assert_complete("node-0", &reference, &acked, 0);
    for url in &urls[1..] {
        assert_eq!(
            node_history(url, &chans).await,
            reference,
            "{url} differs from node-0"
        );
    }
    let order: Vec<Message> = reference.values().cloned().collect();
    for url in &logs {
        assert_eq!(snapshot(url).await, order, "replica {url} differs");
    }

    // A node started after all that holds everything once it is ready.
    let i = cluster.add_node().await;
    let late = cluster.nodes[i].url.clone();
    let s = status(&late).await;
    assert_eq!(
        (s["phase"].as_str(), s["position"].as_u64()),
        (Some("live"), Some(10_000)),
        "{s}"
    );
    assert_eq!(node_history(&late, &chans).await, reference);
    let listed: Value = http()
        .get(format!("{late}/channels"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: u64 = listed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["messages"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_replay_and_live_meet_without_duplicate_or_hole() {
    let cluster = Cluster::start(2, 1).await;
    let (a, b) = (cluster.nodes[0].url.clone(), cluster.nodes[1].url.clone());
    for i in 0..300 {
        let (code, _) = post(&a, "live", json!({"text": format!("before {i}")})).await;
        assert_eq!(code, 201);
    }
    // Writers keep going on both nodes while a subscriber joins mid-history on node b.
    let writers = tokio::spawn(load(
        vec![a.clone(), b.clone()],
        4,
        150,
        vec!["live".to_string(), "other".to_string()],
    ));
    let mut ws = ws_connect(&b, "live", 100).await;
    let acked = writers.await.unwrap();
    let expected: Vec<u64> = {
        wait_position(
            std::slice::from_ref(&b),
            "position",
            300 + acked.len() as u64,
            Duration::from_secs(30),
        )
        .await;
        read_all(&b, "live")
            .await
            .into_iter()
            .map(|m| m.position)
            .filter(|p| *p > 100)
            .collect()
    };
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let f = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("pushed message");
        if let Some(Ok(Frame::Text(t))) = f {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["type"], "message");
            assert_eq!(v["channel"], "live");
            got.push(v["position"].as_u64().unwrap());
        }
    }
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_closed_with_a_reason_and_recovers_with_after() {
    let cluster =
        Cluster::start_with(1, 1, &["--ws-queue", "16", "--max-message-bytes", "60000"]).await;
    let url = cluster.nodes[0].url.clone();
    let mut ws = ws_connect(&url, "firehose", 0).await;
    // Fill every buffer between the node and this unread socket.
    let big = "x".repeat(50_000);
    let writers = tokio::spawn({
        let url = url.clone();
        async move {
            for i in 0..600 {
                let (code, _) = post(&url, "firehose", json!({"text": format!("{i} {big}")})).await;
                assert_eq!(code, 201);
            }
        }
    });
    writers.await.unwrap();
    let mut last = 0;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frame")
        {
            Some(Ok(Frame::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let p = v["position"].as_u64().unwrap();
                assert!(p > last);
                last = p;
            }
            Some(Ok(Frame::Close(c))) => break c.expect("close frame with a reason"),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    assert!(close.reason.as_str().contains("slow consumer"), "{close:?}");
    assert!(last < 600, "the consumer was never behind");
    // Reconnecting with after=<last seen> recovers everything else.
    let mut ws = ws_connect(&url, "firehose", last).await;
    while last < 600 {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frame")
        {
            Some(Ok(Frame::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["position"].as_u64().unwrap(), last + 1);
                last += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_id_returns_the_original_message_and_stores_nothing_new() {
    let cluster = Cluster::start(2, 1).await;
    let (a, b) = (cluster.nodes[0].url.clone(), cluster.nodes[1].url.clone());
    let (code, first) = post(
        &a,
        "general",
        json!({"text": "hello", "author": "ann", "id": "k1"}),
    )
    .await;
    assert_eq!(code, 201);
    let (code, again) = post(
        &b,
        "general",
        json!({"text": "changed", "author": "ann", "id": "k1"}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(again, first);
    let (code, other) = post(&a, "elsewhere", json!({"text": "hello", "id": "k1"})).await;
    assert_eq!(code, 201, "same id on another channel is another message");
    assert_eq!(other["position"], 2);
    // Over WebSocket too (the WebSocket test client writes as author "ws").
    let mut ws = ws_connect(&b, "general", u64::MAX).await;
    assert_eq!(ws_send(&mut ws, "from ws", "k1").await, Ok(3));
    assert_eq!(ws_send(&mut ws, "again", "k1").await, Ok(3));
    let (code, via_http) = post(
        &a,
        "general",
        json!({"text": "x", "author": "ws", "id": "k1"}),
    )
    .await;
    assert_eq!((code, via_http["text"].as_str()), (200, Some("from ws")));
    wait_position(
        &[a.clone(), b.clone()],
        "position",
        3,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(read_all(&b, "general").await.len(), 2);
}

/// Issue 11: an idempotency key belongs to its author. One author's `msg-42` does not make
/// another author's `msg-42` return the first one's message. Issue 10: the dedupe record holds no
/// body, and a repeat still answers the original text once the stream entry is trimmed (from the
/// node's own history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_scoped_to_the_author_and_records_hold_no_body() {
    let cluster = Cluster::start(1, 1).await;
    let url = cluster.nodes[0].url.clone();
    let (code, attacker) = post(
        &url,
        "c",
        json!({"id": "msg-42", "text": "attacker text", "author": "mallory"}),
    )
    .await;
    assert_eq!(code, 201);
    let (code, real) = post(
        &url,
        "c",
        json!({"id": "msg-42", "text": "real text", "author": "alice"}),
    )
    .await;
    assert_eq!(code, 201, "{real}");
    assert_eq!(real["text"], "real text");
    assert_ne!(real["position"], attacker["position"]);
    let long_author = "x".repeat(128);
    let (code, long) = post(
        &url,
        "c",
        json!({"id": "msg-42", "text": "long", "author": long_author}),
    )
    .await;
    assert_eq!(code, 201, "{long}");
    for (who, text, original) in [
        ("alice", "retry", &real),
        ("mallory", "retry", &attacker),
        (long_author.as_str(), "retry", &long),
    ] {
        let (code, again) = post(
            &url,
            "c",
            json!({"id": "msg-42", "text": text, "author": who}),
        )
        .await;
        assert_eq!((code, &again), (200, original), "{who}");
    }

    // Records: position, sent_at and the write's token, never the text; id-less writes too,
    // with a short TTL.
    let mut conn = cluster.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("chat:idem:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let (code, anonymous) = post(&url, "c", json!({"text": "no id"})).await;
    assert_eq!(code, 201);
    let generated = anonymous["id"].as_str().unwrap();
    let key = format!("chat:idem:c:a9:anonymous:{generated}");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert!((1..=60).contains(&ttl), "{key}: ttl {ttl}");
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("chat:idem:*")
        .query(&mut conn)
        .unwrap();
    for key in &all {
        let fields: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap();
        assert_eq!(
            fields.keys().map(String::as_str).collect::<Vec<_>>(),
            ["p", "s", "w"],
            "{key}"
        );
    }
    let ttl: i64 = redis::cmd("TTL")
        .arg("chat:idem:c:a5:alice:msg-42")
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 14 * 60, "client ids are kept 15 minutes: {ttl}");

    // The stream entry is gone (trimmed): the node's own history answers.
    wait_position(
        std::slice::from_ref(&url),
        "position",
        4,
        Duration::from_secs(10),
    )
    .await;
    let _: u64 = redis::cmd("XTRIM")
        .arg("chat:stream")
        .arg("MINID")
        .arg("100-0")
        .query(&mut conn)
        .unwrap();
    let (code, again) = post(
        &url,
        "c",
        json!({"id": "msg-42", "text": "other", "author": "alice"}),
    )
    .await;
    assert_eq!((code, &again), (200, &real));
    assert_eq!(read_all(&url, "c").await.len(), 4);

    // A record of the previous version (body inside, not scoped to the author) still answers a
    // repeat by its author while it lives; another author's same id is a new message.
    let _: () = redis::cmd("HSET")
        .arg("chat:dedupe:c:old-1")
        .arg(&[
            "p",
            "1",
            "s",
            "1764140664123",
            "a",
            "mallory",
            "t",
            "attacker text",
        ])
        .query(&mut conn)
        .unwrap();
    let (code, legacy) = post(
        &url,
        "c",
        json!({"id": "old-1", "text": "again", "author": "mallory"}),
    )
    .await;
    assert_eq!(
        (code, legacy["position"].as_u64(), legacy["text"].as_str()),
        (200, Some(1), Some("attacker text"))
    );
    let (code, fresh) = post(
        &url,
        "c",
        json!({"id": "old-1", "text": "mine", "author": "alice"}),
    )
    .await;
    assert_eq!((code, fresh["text"].as_str()), (201, Some("mine")));
}

/// A repeat whose original text is in neither the broker's stream (trimmed), the node's memory
/// window nor a reachable replication-log replica answers `200` with what is known and
/// `"text": null`; once a replica answers again, with the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_answers_what_is_known_when_no_copy_of_the_text_is_reachable() {
    let mut cluster = Cluster::start_with(1, 1, &["--memory-window", "2"]).await;
    let url = cluster.nodes[0].url.clone();
    let body = json!({"id": "k1", "text": "first", "author": "ann"});
    let (code, first) = post(&url, "c", body.clone()).await;
    assert_eq!(code, 201);
    for i in 0..3 {
        assert_eq!(
            post(&url, "c", json!({"text": format!("more {i}")}))
                .await
                .0,
            201
        );
    }
    let logs = vec![cluster.logs[0].url.clone()];
    wait_position(&logs, "persisted", 4, Duration::from_secs(20)).await;
    let _: u64 = redis::cmd("XTRIM")
        .arg("chat:stream")
        .arg("MINID")
        .arg("100-0")
        .query(&mut cluster.redis.conn())
        .unwrap();
    cluster.logs[0].kill9();
    let (code, known) = post(&url, "c", body.clone()).await;
    let mut want = first.clone();
    want["text"] = Value::Null;
    assert_eq!((code, &known), (200, &want));
    cluster.logs[0].restart();
    wait_ready(&logs[0], Duration::from_secs(30)).await;
    let (code, again) = post(&url, "c", body).await;
    assert_eq!((code, &again), (200, &first));
}

/// The last position the broker handed out (`chat:seq`), read from Redis itself.
fn broker_head(redis: &support::RedisServer) -> u64 {
    redis::cmd("GET")
        .arg("chat:seq")
        .query::<Option<u64>>(&mut redis.conn())
        .unwrap()
        .unwrap_or(0)
}

/// Issue 9 (c): every write has a definite answer. Redis is stopped (SIGSTOP) for longer than the
/// node's response timeout while clients write, with and without ids, over HTTP and WebSocket.
/// A write in flight during a stall shorter than the node's resolve window ends in
/// `503 not_stored` (the node fenced the write once Redis answered); during a longer one in
/// `504 unknown` with the id to retry with. Writes queued behind it in the node's batch queue are
/// refused by their deadline without being sent (`503 not_stored`), and writes queued in Redis by
/// the script's deadline once it runs again. Every answer is true, and retrying with the answered
/// id stores each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_broker_gets_true_answers_and_retries_never_store_twice() {
    let cluster = Cluster::start(1, 1).await;
    let url = cluster.nodes[0].url.clone();
    assert_eq!(post(&url, "c", json!({"text": "warm-up"})).await.0, 201);

    // Stalls of 6 s (resolved when Redis runs again) and 9 s (unknown: Redis is still stopped
    // when the resolve budget ends, 7 s after the write started).
    let mut unknown = 0;
    for (stall, want_status, want_outcome) in [(6, 503, "not_stored"), (9, 504, "unknown")] {
        let tag = format!("stall-{stall}");
        cluster.redis.pause();
        let started = Instant::now();
        let mut writes = Vec::new();
        for (text, id) in [
            (format!("{tag} without id"), None),
            (format!("{tag} with id"), Some(format!("{tag}-k"))),
        ] {
            let url = url.clone();
            writes.push(tokio::spawn(async move {
                let mut body = json!({"text": text, "author": "ann"});
                if let Some(id) = &id {
                    body["id"] = json!(id);
                }
                let (code, answer) = post(&url, "c", body).await;
                (text, id, code, answer)
            }));
        }
        let ws_id = format!("{tag}-ws");
        let ws_write = {
            let (url, ws_id, text) = (url.clone(), ws_id.clone(), format!("{tag} over ws"));
            tokio::spawn(async move {
                let ws_url = format!(
                    "{}/ws?channel=c&live=false",
                    url.replace("http://", "ws://")
                );
                let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
                let frame = json!({"type": "send", "text": text, "author": "ann", "id": ws_id});
                ws.send(Frame::Text(frame.to_string().into()))
                    .await
                    .unwrap();
                let reply = tokio::time::timeout(Duration::from_secs(20), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                serde_json::from_str::<Value>(reply.to_text().unwrap()).unwrap()
            })
        };
        tokio::time::sleep(Duration::from_secs(stall).saturating_sub(started.elapsed())).await;
        cluster.redis.resume();
        let mut answers = Vec::new();
        for w in writes {
            answers.push(w.await.unwrap());
        }
        let ws_answer = ws_write.await.unwrap();
        eprintln!("{tag}: {answers:?} ws {ws_answer}");

        // Once writes work again, each answer is checked against the history.
        writes_resume_and_node_has_applied(&url, &cluster.redis).await;
        let history = read_all(&url, "c").await;
        let count = |text: &str| history.iter().filter(|m| m.text == text).count();
        // The write in flight gets the stall's answer; one queued behind it in the node may be
        // refused by its deadline before it is sent.
        let queued_behind = |code: u16, answer: &Value| {
            code == 503
                && answer["outcome"] == "not_stored"
                && answer["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("deadline"))
        };
        let mut in_flight = 0;
        assert_eq!(ws_answer["type"], "error", "{tag}: {ws_answer}");
        assert_eq!(ws_answer["id"], ws_id.as_str(), "{tag}: {ws_answer}");
        if ws_answer["outcome"] == want_outcome {
            in_flight += 1;
        } else {
            assert!(queued_behind(503, &ws_answer), "{tag}: {ws_answer}");
        }
        assert_eq!(
            count(&format!("{tag} over ws")),
            0,
            "{tag}: ws write stored"
        );
        let mut retries = Vec::new();
        for (text, id, code, answer) in answers {
            if (code, answer["outcome"].as_str()) == (want_status, Some(want_outcome)) {
                in_flight += 1;
            } else {
                assert!(
                    queued_behind(code, &answer),
                    "{tag} {text}: {code} {answer}"
                );
            }
            let answered_id = answer["id"].as_str().expect("error names the id");
            if let Some(id) = &id {
                assert_eq!(answered_id, id);
            } else {
                assert_eq!(answered_id.len(), 36, "a generated UUID: {answer}");
            }
            // Not stored, and (past its deadline) never will be.
            assert_eq!(
                count(&text),
                0,
                "{tag}: {text:?} answered {code} yet stored"
            );
            retries.push((text, answered_id.to_owned()));
        }
        assert!(in_flight >= 1, "{tag}: no write got the stall's answer");
        if want_outcome == "unknown" {
            unknown = in_flight;
        }
        // Retrying with the answered id stores each message once; a second retry repeats it.
        for (text, id) in retries {
            let body = json!({"text": text, "author": "ann", "id": id});
            let (code, first) = post(&url, "c", body.clone()).await;
            assert_eq!(code, 201, "{tag} retry of {text}: {first}");
            let (code, second) = post(&url, "c", body).await;
            assert_eq!((code, &second), (200, &first));
        }
        let head = broker_head(&cluster.redis);
        wait_position(
            std::slice::from_ref(&url),
            "position",
            head,
            Duration::from_secs(10),
        )
        .await;
        let history = read_all(&url, "c").await;
        for suffix in ["without id", "with id"] {
            let text = format!("{tag} {suffix}");
            assert_eq!(
                history.iter().filter(|m| m.text == text).count(),
                1,
                "{text}"
            );
        }
    }
    // The long stall's unknown answers are counted.
    let metrics = metrics_text(&url).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("chat_server_writes_outcome_unknown_total {unknown}")),
        "{metrics}"
    );
}

/// Redis killed (its connections drop): writes get `503` (not stored) or `504` (unknown, with the
/// id) and never a false answer; after Redis restarts on its AOF, a retry with the answered id
/// stores each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_gets_true_answers_and_retries_never_store_twice() {
    let mut cluster = Cluster::start(1, 1).await;
    let url = cluster.nodes[0].url.clone();
    assert_eq!(post(&url, "c", json!({"text": "warm-up"})).await.0, 201);
    cluster.redis.kill();
    let mut answers = Vec::new();
    for i in 0..3 {
        let text = format!("while killed {i}");
        let started = Instant::now();
        let (code, answer) = post(&url, "c", json!({"text": text, "author": "ann"})).await;
        eprintln!("{text}: {code} after {:?}: {answer}", started.elapsed());
        assert!(code == 503 || code == 504, "{text}: {code} {answer}");
        let outcome = if code == 503 { "not_stored" } else { "unknown" };
        assert_eq!(answer["outcome"], outcome, "{answer}");
        answers.push((text, code, answer["id"].as_str().unwrap().to_owned()));
    }
    cluster.redis.restart();
    writes_resume_and_node_has_applied(&url, &cluster.redis).await;
    let history = read_all(&url, "c").await;
    for (text, code, id) in &answers {
        if *code == 503 {
            assert!(
                history.iter().all(|m| &m.text != text),
                "{text} answered 503 yet stored"
            );
        }
        let (retry, _) = post(&url, "c", json!({"text": text, "author": "ann", "id": id})).await;
        assert!(retry == 201 || retry == 200, "retry of {text}: {retry}");
    }
    let head = broker_head(&cluster.redis);
    wait_position(
        std::slice::from_ref(&url),
        "position",
        head,
        Duration::from_secs(10),
    )
    .await;
    let history = read_all(&url, "c").await;
    for (text, _, _) in &answers {
        assert_eq!(
            history.iter().filter(|m| &m.text == text).count(),
            1,
            "{text}"
        );
    }
}

/// Sends a request head and as much of `body` as the server takes, then reads the answer.
async fn raw_post(url: &str, path: &str, extra_head: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\n{extra_head}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before taking all of it.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let json = body
        .find('{')
        .and_then(|i| serde_json::from_str(body[i..].trim_end_matches(|c| c != '}')).ok());
    (code, json.unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_contract_status_and_loses_nothing() {
    let cluster = Cluster::start_with(1, 1, &["--max-message-bytes", "100"]).await;
    let url = cluster.nodes[0].url.clone();
    let (code, ok) = post(&url, "c", json!({"text": "kept"})).await;
    assert_eq!(code, 201);
    let client = http();
    let raw = |path: &str, body: Vec<u8>| {
        let client = client.clone();
        let url = format!("{url}{path}");
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (code, v)
        }
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("/channels/c/messages", b"{not json".to_vec(), 400),
        ("/channels/c/messages", br#"{"author":"a"}"#.to_vec(), 400),
        ("/channels/c/messages", br#"{"text":""}"#.to_vec(), 400),
        (
            "/channels/c/messages",
            format!(r#"{{"text":"{}"}}"#, "x".repeat(101)).into_bytes(),
            413,
        ),
        (
            "/channels/c/messages",
            b"{\"text\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        ("/channels/-bad/messages", br#"{"text":"a"}"#.to_vec(), 400),
        (
            "/channels/c/messages",
            format!(r#"{{"text":"a","id":"{}"}}"#, "i".repeat(129)).into_bytes(),
            400,
        ),
        ("/channels/c/messages", br#"{"text":5}"#.to_vec(), 400),
    ];
    for (path, body, want) in cases {
        let preview = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let (code, v) = raw(path, body).await;
        assert_eq!(code, want, "{path} {preview}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path} {preview}: no reason in {v}"
        );
    }
    // An unbounded body is refused before it is read: by its declared length, or, sent chunked
    // without one, as soon as it passes the limit. The client is still writing when the answer
    // comes, so talk raw HTTP and read the answer.
    for (head, body) in [
        ("Content-Length: 10000000\r\n", vec![b'x'; 1000]),
        ("Transfer-Encoding: chunked\r\n", {
            let mut chunked = Vec::new();
            for _ in 0..100 {
                chunked.extend_from_slice(b"2710\r\n");
                chunked.extend(std::iter::repeat_n(b'x', 10_000));
                chunked.extend_from_slice(b"\r\n");
            }
            chunked
        }),
    ] {
        let (code, v) = raw_post(&url, "/channels/c/messages", head, &body).await;
        assert_eq!(code, 413, "{head}: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("larger than")),
            "{head}: {v}"
        );
    }
    for query in [
        "after=x",
        "after=-1",
        "limit=0",
        "limit=10001",
        "limit=many",
    ] {
        let r = client
            .get(format!("{url}/channels/c/messages?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().is_some(), "{query}");
    }
    let r = client
        .get(format!("{url}/channels/bad%20name/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // WebSocket: unknown frame types, bad JSON, binary, too-long text get error frames; an
    // oversized frame closes the connection with 1009.
    let mut ws = ws_connect(&url, "c", u64::MAX).await;
    for frame in [
        Frame::Text(r#"{"type":"shout","text":"x"}"#.into()),
        Frame::Text("nonsense".into()),
        Frame::Binary(vec![1, 2, 3].into()),
        Frame::Text(
            json!({"type":"send","text": "y".repeat(101), "id": "long"})
                .to_string()
                .into(),
        ),
        Frame::Text(json!({"type":"send","text": ""}).to_string().into()),
    ] {
        ws.send(frame).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    ws.send(Frame::Text("z".repeat(1_000_000).into()))
        .await
        .ok();
    let mut closed_with = None;
    while let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match f {
            Ok(Frame::Close(c)) => {
                closed_with = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(closed_with, Some(1009));

    // Nothing accepted was lost and nothing refused was stored.
    let all = read_all(&url, "c").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].position, ok["position"].as_u64().unwrap());
    assert_eq!(status(&url).await["messages"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restart_with_aof_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(2, 1).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|p| p.url.clone()).collect();
    let chans = channels(2);
    let load = tokio::spawn(load(urls.clone(), 4, 500, chans.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&urls[0]).await["position"].as_u64().unwrap_or(0) < 500 {
        assert!(Instant::now() < deadline, "load did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.redis.restart();
    let acked = load.await.unwrap();
    wait_position(&urls, "position", 2000, Duration::from_secs(60)).await;
    let reference = node_history(&urls[0], &chans).await;
    // No command was refused by the ACL users, neither a role's nor the AOF loader's replay of
    // a MULTI/EXEC (Redis 7.0-7.2 checks those against `default`: chat_wire::redis_acl).
    cluster.redis.assert_no_acl_denial();
    // The restarted Redis process is validated: one void range after what its AOF held.
    assert_complete("node-0", &reference, &acked, 1);
    assert_eq!(node_history(&urls[1], &chans).await, reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_broker_is_detected_reported_and_the_order_continues_from_the_log() {
    let mut cluster = Cluster::start(2, 2).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|p| p.url.clone()).collect();
    let logs: Vec<String> = cluster.logs.iter().map(|p| p.url.clone()).collect();
    for i in 0..50 {
        assert_eq!(
            post(&urls[i % 2], "c", json!({"text": format!("old {i}")}))
                .await
                .0,
            201
        );
    }
    wait_position(&logs, "persisted", 50, Duration::from_secs(20)).await;
    let epoch = status(&urls[0]).await["epoch"].as_str().map(str::to_owned);
    assert!(epoch.is_some());

    cluster.redis.wipe();
    // Nodes notice and say so, naming the old epoch.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reported = Arc::new(AtomicU64::new(0));
    for url in &urls {
        loop {
            let s = status(url).await;
            if s["error"]
                .as_str()
                .is_some_and(|e| e.contains(epoch.as_deref().unwrap()))
            {
                reported.fetch_add(1, Ordering::Relaxed);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not report the lost broker: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(reported.load(Ordering::Relaxed), 2);
    // The replication log re-anchors the broker past every position the old epoch may have
    // handed out (the replicas' recorded limit: the default lease of 100000 positions); the
    // order continues after it, 51..=100000 are void.
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        let (code, v) = post(&urls[0], "c", json!({"text": "after the wipe"})).await;
        if code == 201 {
            break v["position"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume: {code} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 100_001 unless an anchoring attempt was retried after recording a higher limit.
    assert!(next > 100_000, "{next}");
    wait_position(&urls, "position", next, Duration::from_secs(30)).await;
    for url in &urls {
        let all = read_all(url, "c").await;
        assert_eq!(
            all.iter().map(|m| m.position).collect::<Vec<_>>(),
            (1..=50).chain([next]).collect::<Vec<_>>()
        );
        assert_eq!(all[50].text, "after the wipe");
    }
    // Detecting the wipe, anchoring a new epoch and retiring the old one: all within the roles.
    cluster.redis.assert_no_acl_denial();
}

/// Waits until a write through `url` succeeds again, then until that node has applied the
/// broker's head (so its history can be checked against every answer given meanwhile).
async fn writes_resume_and_node_has_applied(url: &str, redis: &support::RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(url, "probe", json!({"text": "p"})).await.0 != 201 {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let head = broker_head(redis);
    wait_position(&[url.to_owned()], "position", head, Duration::from_secs(10)).await;
}

/// The `_sum` and `_count` of a histogram in a Prometheus text exposition.
fn histogram_sum_count(exposition: &str, name: &str) -> (f64, u64) {
    let field = |suffix: &str| {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .unwrap_or_else(|| panic!("no {name}_{suffix} in {exposition}"))
            .trim()
            .to_owned()
    };
    (
        field("sum").parse().unwrap(),
        field("count").parse().unwrap(),
    )
}

/// Issue 14 (batch writes): a node sends the writes that queue up while a batch is in flight as
/// one run of the write script, and every write still gets its own true answer. 120 concurrent
/// POSTs (60 ids sent twice at once, with different texts, and 60 without an id): each id is
/// stored once (one `201`, one `200` naming the same position and the stored text), every `201`
/// has its own position, positions stay dense, the history is exactly what was acknowledged, and
/// the node's metrics show runs of more than one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_script_runs_and_each_gets_its_own_answer() {
    let cluster = Cluster::start(1, 1).await;
    let url = cluster.nodes[0].url.clone();
    assert_eq!(post(&url, "c", json!({"text": "warm-up"})).await.0, 201);
    let mut writes = Vec::new();
    for i in 0..60 {
        for copy in ["a", "b"] {
            let body =
                json!({"text": format!("k{i} {copy}"), "author": "ann", "id": format!("k{i}")});
            let url = url.clone();
            writes.push(tokio::spawn(async move { post(&url, "c", body).await }));
        }
        let body = json!({"text": format!("free {i}"), "author": "ann"});
        let url = url.clone();
        writes.push(tokio::spawn(async move { post(&url, "c", body).await }));
    }
    let mut stored = BTreeMap::new();
    let mut by_id: BTreeMap<String, Vec<(u16, Value)>> = BTreeMap::new();
    for w in writes {
        let (code, answer) = w.await.unwrap();
        assert!(code == 201 || code == 200, "{code} {answer}");
        let position = answer["position"].as_u64().unwrap();
        if code == 201 {
            let text = answer["text"].as_str().unwrap().to_owned();
            assert!(
                stored.insert(position, text).is_none(),
                "position {position} acknowledged twice"
            );
        }
        if let Some(text) = answer["text"].as_str().filter(|t| t.starts_with('k')) {
            let id = text.split(' ').next().unwrap().to_owned();
            by_id.entry(id).or_default().push((code, answer));
        }
    }
    assert_eq!(
        stored.len(),
        120,
        "one message per id and per write without one"
    );
    assert_eq!(by_id.len(), 60);
    for (id, answers) in &by_id {
        let mut codes: Vec<u16> = answers.iter().map(|(c, _)| *c).collect();
        codes.sort();
        assert_eq!(codes, [200, 201], "{id}: {answers:?}");
        assert_eq!(
            answers[0].1, answers[1].1,
            "{id}: the repeat names the original"
        );
    }
    // Dense after the warm-up, and the history is exactly what was acknowledged.
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (2..=121).collect::<Vec<_>>()
    );
    wait_position(
        std::slice::from_ref(&url),
        "position",
        121,
        Duration::from_secs(10),
    )
    .await;
    let history: BTreeMap<u64, String> = read_all(&url, "c")
        .await
        .into_iter()
        .filter(|m| m.position > 1)
        .map(|m| (m.position, m.text))
        .collect();
    assert_eq!(history, stored);
    let metrics = metrics_text(&url).await;
    let (writes_sent, runs) = histogram_sum_count(&metrics, "chat_server_broker_write_batch_size");
    assert_eq!(writes_sent, 181.0, "every write was sent once: {metrics}");
    assert!(
        (runs as f64) < writes_sent,
        "no run of the write script carried more than one write: {runs} runs"
    );
}

/// Issue 14 (batch writes), at the broker layer against the cluster's Redis: one run of the write
/// script holds each write to its own checks. 96 concurrent writes through one [`Broker`]: a third
/// name an epoch the broker is not in (refused, `EPOCH`), a third claim to hold a position the
/// broker has not reached (refused, `BEHIND`), and a third are valid (stored at dense positions);
/// runs mixed them, and a refusal never touched its neighbours.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_script_run_holds_each_write_to_its_own_checks() {
    use chat_server::broker::{Broker, BrokerError, BrokerOps, WriteOutcome};
    use chat_server::message::{NewMessage, now_millis};
    use prometheus_client::metrics::histogram::Histogram;

    let cluster = Cluster::start(1, 1).await;
    let url = cluster.nodes[0].url.clone();
    assert_eq!(post(&url, "c", json!({"text": "warm-up"})).await.0, 201);
    let sizes = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
    let broker = Broker::connect_observed(&cluster.redis.url(), sizes.clone())
        .await
        .unwrap();
    broker.check_instance().await.unwrap();
    let epoch = broker.state().await.unwrap().epoch.unwrap();
    let mut writes = Vec::new();
    for i in 0..96u64 {
        let (broker, epoch) = (broker.clone(), epoch.clone());
        writes.push(tokio::spawn(async move {
            let msg = NewMessage {
                channel: "c".into(),
                id: None,
                author: "ann".into(),
                text: format!("w{i}"),
                scope: None,
            };
            let (holds, epoch) = match i % 3 {
                0 => (0, epoch),
                1 => (1_000_000, epoch),
                _ => (0, "another-epoch".to_owned()),
            };
            let generated = format!("gen-{i}");
            let outcome = broker
                .write(&msg, &generated, now_millis(), holds, &epoch)
                .await;
            (i, outcome)
        }));
    }
    let mut positions = BTreeSet::new();
    for w in writes {
        let (i, outcome) = w.await.unwrap();
        match (i % 3, outcome) {
            (0, Ok(WriteOutcome::Accepted(m))) => {
                assert_eq!(m.text, format!("w{i}"));
                assert!(positions.insert(m.position));
            }
            (1, Err(BrokerError::WentBack(_))) | (2, Err(BrokerError::EpochChanged(_))) => {}
            (_, other) => panic!("write {i}: {other:?}"),
        }
    }
    assert_eq!(
        positions.into_iter().collect::<Vec<_>>(),
        (2..=33).collect::<Vec<_>>()
    );
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("sizes", "writes per run", sizes);
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();
    let (sent, runs) = histogram_sum_count(&exposition, "sizes");
    assert_eq!(sent, 96.0);
    assert!(
        (runs as f64) < sent,
        "every run carried one write: {exposition}"
    );
    wait_position(
        std::slice::from_ref(&url),
        "position",
        33,
        Duration::from_secs(10),
    )
    .await;
    let texts: BTreeSet<String> = read_all(&url, "c")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    for i in 0..96 {
        assert_eq!(texts.contains(&format!("w{i}")), i % 3 == 0, "w{i}");
    }
}

/// Issue 9 (c) with batched writes: a script run that fails part-way through a batch has stored
/// the writes before the failure and none after it, so its error reply is no answer for any of
/// them. Each write is then resolved on its own. Redis is paused while two single-write batches
/// are in flight, and 41 writes with ids queue up in order behind them as one batch; the 21st
/// names an id whose dedupe record key was set to a string by hand, so the script fails on it
/// (`WRONGTYPE`). Every answer must be true: the 20 writes before it `201` (stored, found by
/// their records), the 20 after it `503` (not stored: fenced), and the failing one `504` (its
/// record cannot be read, so nobody can say) — and the stream holds exactly the 201s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_script_failing_part_way_through_a_batch_answers_each_write_truly() {
    use chat_server::broker::{Broker, BrokerError, BrokerOps, WriteOutcome};
    use chat_server::message::{NewMessage, now_millis};

    let cluster = Cluster::start(1, 1).await;
    let url = cluster.nodes[0].url.clone();
    assert_eq!(post(&url, "c", json!({"text": "warm-up"})).await.0, 201);
    let broker = Broker::connect(&cluster.redis.url()).await.unwrap();
    broker.check_instance().await.unwrap();
    let epoch = broker.state().await.unwrap().epoch.unwrap();
    // The dedupe record key of author `ann`, id `poisoned` on channel `c`, as a string.
    redis::cmd("SET")
        .arg("chat:idem:c:a3:ann:poisoned")
        .arg("not a record")
        .query::<()>(&mut cluster.redis.conn())
        .unwrap();

    let write = |id: String| {
        let (broker, epoch) = (broker.clone(), epoch.clone());
        tokio::spawn(async move {
            let msg = NewMessage {
                channel: "c".into(),
                id: Some(id.clone()),
                author: "ann".into(),
                text: format!("text of {id}"),
                scope: None,
            };
            let outcome = broker.write(&msg, "unused", now_millis(), 0, &epoch).await;
            (id, outcome)
        })
    };
    cluster.redis.pause();
    let mut writes = Vec::new();
    // Two batches of one write each, in flight while Redis is stopped...
    for id in ["first", "second"] {
        writes.push(write(id.to_owned()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the next batch, queued in this order behind them.
    let ids: Vec<String> = (0..20)
        .map(|i| format!("before-{i}"))
        .chain(["poisoned".to_owned()])
        .chain((0..20).map(|i| format!("after-{i}")))
        .collect();
    for id in &ids {
        writes.push(write(id.clone()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.redis.resume();

    let stream: Vec<(String, Vec<(String, String)>)> = {
        let mut answers = BTreeMap::new();
        for w in writes {
            let (id, outcome) = w.await.unwrap();
            answers.insert(id, outcome);
        }
        for (id, outcome) in &answers {
            let expected = if id.starts_with("after-") {
                "not stored"
            } else if id == "poisoned" {
                "unknown"
            } else {
                "stored"
            };
            let got = match outcome {
                Ok(WriteOutcome::Accepted(_)) => "stored",
                Err(e) if e.is_outcome_unknown() => "unknown",
                Err(BrokerError::Abandoned(_)) => "not stored",
                other => panic!("{id}: {other:?}"),
            };
            assert_eq!(got, expected, "{id}: {outcome:?}");
        }
        let stream = redis::cmd("XRANGE")
            .arg("chat:stream")
            .arg("-")
            .arg("+")
            .query(&mut cluster.redis.conn())
            .unwrap();
        // Every stored write is in the stream at its answered position, and nothing else is.
        let entries: &Vec<(String, Vec<(String, String)>)> = &stream;
        let text_at = |position: u64| {
            entries
                .iter()
                .find(|(entry_id, _)| *entry_id == format!("{position}-0"))
                .and_then(|(_, fields)| fields.iter().find(|(f, _)| f == "t"))
                .map(|(_, t)| t.clone())
        };
        for (id, outcome) in &answers {
            if let Ok(WriteOutcome::Accepted(m)) = outcome {
                assert_eq!(text_at(m.position), Some(format!("text of {id}")), "{id}");
            }
        }
        stream
    };
    let stored: BTreeSet<String> = stream
        .iter()
        .filter_map(|(_, fields)| fields.iter().find(|(f, _)| f == "t"))
        .map(|(_, t)| t.clone())
        .collect();
    let expected: BTreeSet<String> = ["warm-up".to_owned()]
        .into_iter()
        .chain(["first", "second"].iter().map(|id| format!("text of {id}")))
        .chain((0..20).map(|i| format!("text of before-{i}")))
        .collect();
    assert_eq!(stored, expected);
}
