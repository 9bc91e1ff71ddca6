//! The replication protocol's promises at its edges, against real Redis and real binaries, with
//! one component cut off from Redis by a pausable TCP proxy (the partition others do not see):
//! - a history read never ends early or skips when the replication log is behind (input 1 of
//!   issue "Replication protocol"): pages are complete up to their end or a 503, the WebSocket
//!   replay says `waiting` and goes on without a hole once the log catches up;
//! - a position is never handed out twice after the broker loses its data while the log lags
//!   (input 2), and a reader holding lost positions is told so with a `lost` frame;
//! - nor after the broker restarts from an older copy of its data that no replica or node read
//!   past (same epoch): the restarted Redis process is validated before any write goes through;
//! - a node cut off from a broker the others still reach notices within seconds, says so in
//!   `/status`, and is not ready until it reaches the broker again (kind d).

mod support;

use chat_wire::redis_acl::RedisRole;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::{Cluster, http, post, status, wait_position, wait_ready};
use tokio_tungstenite::tungstenite::Message as Frame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str, channel: &str, after: u64) -> Ws {
    let ws_url = format!(
        "{}/ws?channel={channel}&after={after}",
        url.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("ws connect")
        .0
}

/// What a reader saw: JSON frames, or the close frame (code, reason).
#[derive(Debug)]
enum Seen {
    Json(Value),
    Close(u16, String),
}

/// The next frame within `timeout` (None on timeout).
async fn next_frame(ws: &mut Ws, timeout: Duration) -> Option<Seen> {
    loop {
        let f = tokio::time::timeout(timeout, ws.next()).await.ok()??;
        match f {
            Ok(Frame::Text(t)) => return Some(Seen::Json(serde_json::from_str(&t).unwrap())),
            Ok(Frame::Close(c)) => {
                return Some(match c {
                    Some(c) => Seen::Close(c.code.into(), c.reason.to_string()),
                    None => Seen::Close(1005, String::new()),
                });
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Expects the next frame to be `{"type":"lost","from":from,"to":to}`.
async fn expect_lost(ws: &mut Ws, from: u64, to: u64) {
    match next_frame(ws, Duration::from_secs(15)).await {
        Some(Seen::Json(v)) if v["type"] == "lost" => {
            assert_eq!(
                (v["from"].as_u64(), v["to"].as_u64()),
                (Some(from), Some(to)),
                "{v}"
            );
        }
        other => panic!("expected a lost frame, got {other:?}"),
    }
}

/// The positions of the next `n` message frames; anything else fails the test.
async fn read_positions(ws: &mut Ws, n: usize, timeout: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        match next_frame(ws, timeout).await {
            Some(Seen::Json(v)) if v["type"] == "message" => {
                got.push(v["position"].as_u64().unwrap())
            }
            other => panic!("after {got:?}: unexpected {other:?}"),
        }
    }
    got
}

async fn get_page(url: &str, channel: &str, after: u64) -> (u16, Option<String>, Value) {
    let r = http()
        .get(format!("{url}/channels/{channel}/messages?after={after}"))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (code, retry, r.json().await.unwrap())
}

fn positions(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["position"].as_u64().unwrap())
        .collect()
}

async fn post_ok(url: &str, channel: &str, text: &str) -> u64 {
    let (code, v) = post(url, channel, json!({"text": text})).await;
    assert_eq!(code, 201, "{v}");
    v["position"].as_u64().unwrap()
}

/// One node (with `node_args`) and one replica reaching Redis through a proxy; 5 messages on
/// channel `c` written and persisted by the replica.
async fn five_persisted(node_args: &[&str], tag: &str) -> (Cluster, support::proxy::Proxy) {
    let (cluster, proxy) = Cluster::start_cut_off(1, 1, node_args).await;
    let node = cluster.nodes[0].url.clone();
    for i in 0..5 {
        post_ok(&node, "c", &format!("{tag} {i}")).await;
    }
    let log = cluster.logs[0].url.clone();
    wait_position(&[log], "persisted", 5, Duration::from_secs(20)).await;
    (cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_end_early_while_the_log_is_behind() {
    let (cluster, proxy) = five_persisted(&["--memory-window", "5"], "before").await;
    let node = cluster.nodes[0].url.clone();
    proxy.pause();
    for i in 0..40 {
        post_ok(&node, "c", &format!("during {i}")).await;
    }
    // Memory holds 41..45, the log 1..5: 6..40 are nowhere a page could come from.
    let (code, _, page) = get_page(&node, "c", 0).await;
    assert_eq!(code, 200);
    assert_eq!(
        positions(&page),
        (1..=5).collect::<Vec<_>>(),
        "a prefix, complete"
    );
    let (code, retry, body) = get_page(&node, "c", 5).await;
    assert_eq!(code, 503, "an empty 200 would say 'nothing more': {body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        body["error"].as_str().unwrap().contains("replication log"),
        "{body}"
    );

    // The WebSocket replay delivers 1..5, says it waits, and goes on without a hole once the
    // log catches up.
    let mut ws = ws_connect(&node, "c", 0).await;
    let mut got = Vec::new();
    let mut waited = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waited && Instant::now() < deadline {
        match next_frame(&mut ws, Duration::from_secs(1)).await {
            Some(Seen::Json(v)) if v["type"] == "message" => {
                got.push(v["position"].as_u64().unwrap())
            }
            Some(Seen::Json(v)) if v["type"] == "waiting" => {
                assert_eq!(v["after"], 5, "{v}");
                waited = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(waited, "no waiting frame; got {got:?}");
    assert_eq!(got, (1..=5).collect::<Vec<_>>());
    proxy.resume();
    let live = post_ok(&node, "c", "live").await;
    assert_eq!(live, 46);
    while got.last() != Some(&46) {
        match next_frame(&mut ws, Duration::from_secs(15)).await {
            Some(Seen::Json(v)) if v["type"] == "message" => {
                got.push(v["position"].as_u64().unwrap())
            }
            other => panic!("after {got:?}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        (1..=46).collect::<Vec<_>>(),
        "gap-free replay then live"
    );

    // With the log still cut off, a replay that cannot go on ends with 1013 and where to resume.
    proxy.pause();
    for i in 0..10 {
        post_ok(&node, "c", &format!("second cut {i}")).await;
    }
    let mut ws = ws_connect(&node, "c", 46).await;
    let mut closed = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed.is_none() && Instant::now() < deadline {
        match next_frame(&mut ws, Duration::from_secs(15)).await {
            Some(Seen::Close(code, reason)) => closed = Some((code, reason)),
            Some(Seen::Json(v)) => assert_eq!(v["type"], "waiting", "{v}"),
            None => break,
        }
    }
    let (code, reason) = closed.expect("closed with a code");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("after=46"), "{reason}");
    proxy.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_loss_never_hands_a_position_out_twice() {
    let (mut cluster, proxy) = five_persisted(&[], "old").await;
    let node = cluster.nodes[0].url.clone();
    // The replica is cut off; 6..15 are acknowledged and delivered, persisted by no replica.
    proxy.pause();
    let mut ws = ws_connect(&node, "c", 0).await;
    let mut held: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..10 {
        post_ok(&node, "c", &format!("acked then lost {i}")).await;
    }
    while held.len() < 15 {
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Some(Seen::Json(v)) if v["type"] == "message" => {
                held.insert(
                    v["position"].as_u64().unwrap(),
                    v["text"].as_str().unwrap().to_owned(),
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The broker loses its data; the replica comes back and re-anchors it.
    let mut conn = cluster.redis.conn();
    redis::cmd("FLUSHALL").query::<()>(&mut conn).unwrap();
    proxy.resume();
    let close = match next_frame(&mut ws, Duration::from_secs(30)).await {
        Some(Seen::Close(code, reason)) => (code, reason),
        Some(Seen::Json(v)) => panic!("unexpected {v}"),
        None => panic!("the reader was not told about the reload"),
    };
    assert_eq!(close.0, 1012, "{close:?}");
    assert!(close.1.contains("after=15"), "{close:?}");
    wait_ready(&node, Duration::from_secs(60)).await;

    // Resuming where it was told: first the explicit word that 6..15 are gone, then every
    // message accepted after the loss, none of them at a position the reader already holds.
    let mut ws = ws_connect(&node, "c", 15).await;
    expect_lost(&mut ws, 6, 15).await;
    let mut new = Vec::new();
    for i in 0..10 {
        new.push(post_ok(&node, "c", &format!("new {i}")).await);
    }
    assert!(
        new.iter().all(|p| !held.contains_key(p)),
        "positions handed out twice: {new:?}"
    );
    let got = read_positions(&mut ws, new.len(), Duration::from_secs(10)).await;
    assert_eq!(got, new);
    let (code, _, page) = get_page(&node, "c", 15).await;
    assert_eq!(code, 200);
    assert_eq!(positions(&page), new);
    // A node started now gets the same history: 1..5, then the new messages.
    let i = cluster.add_node().await;
    let (_, _, page) = get_page(&cluster.nodes[i].url, "c", 0).await;
    assert_eq!(
        positions(&page),
        (1..=5).chain(new.iter().copied()).collect::<Vec<_>>()
    );
}

/// One replica, node `a` reaching Redis directly and node `b` through a pausable proxy: the
/// cluster, the proxy and the two nodes' URLs.
async fn node_behind_proxy() -> (Cluster, support::proxy::Proxy, String, String) {
    let mut cluster = Cluster::start(1, 1).await;
    let proxy = support::proxy::Proxy::start(cluster.redis.port()).await;
    let b = cluster
        .add_node_via(&proxy.url(RedisRole::ChatServer))
        .await;
    let (a, b) = (cluster.nodes[0].url.clone(), cluster.nodes[b].url.clone());
    (cluster, proxy, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_broker_stops_counting_itself_ready() {
    let (_cluster, proxy, a, b) = node_behind_proxy().await;
    for i in 0..5 {
        post_ok(&a, "c", &format!("before {i}")).await;
    }
    wait_position(
        &[a.clone(), b.clone()],
        "position",
        5,
        Duration::from_secs(20),
    )
    .await;
    proxy.pause();
    for i in 0..10 {
        post_ok(&a, "c", &format!("while b is cut off {i}")).await;
    }
    // Within the silence bound (5 s) plus a watchdog round, b says it is cut off and unready.
    let started = Instant::now();
    let s = loop {
        let r = http().get(format!("{b}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            break status(&b).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "b stayed ready while cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        s["error"].as_str().is_some_and(|e| e.contains("cut off")),
        "{s}"
    );
    assert_eq!(s["position"], 5, "{s}");
    // a, which reaches the broker, stays ready throughout.
    let r = http().get(format!("{a}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Back in touch: b catches up and is ready again.
    proxy.resume();
    wait_position(
        std::slice::from_ref(&b),
        "position",
        15,
        Duration::from_secs(30),
    )
    .await;
    wait_ready(&b, Duration::from_secs(30)).await;
    assert!(status(&b).await["error"].is_null());
}

/// Posts until the node accepts, for up to `timeout`, as docs/api.md tells a client to: a 503
/// (nothing stored) or a 504 (outcome unknown — a write sent on a connection whose Redis process
/// died before it answered) is retried with the id the answer names, so the message is stored
/// at most once whatever happened to the first attempt.
async fn post_retrying(url: &str, channel: &str, text: &str, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut id: Option<String> = None;
    loop {
        let body = match &id {
            Some(id) => json!({"text": text, "id": id}),
            None => json!({"text": text}),
        };
        let (code, v) = post(url, channel, body).await;
        match code {
            200 | 201 => return v["position"].as_u64().unwrap(),
            503 | 504 if Instant::now() < deadline => {
                id = v["id"].as_str().map(str::to_owned);
                assert!(id.is_some(), "{code} names no id to retry with: {v}");
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => panic!("{code} {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restored_from_an_older_copy_never_hands_a_position_out_twice() {
    // Node a reaches Redis directly; the replica and node b through the proxy.
    let (mut cluster, proxy) = Cluster::start_cut_off(1, 1, &[]).await;
    let b = cluster
        .add_node_via(&proxy.url(RedisRole::ChatServer))
        .await;
    let (a, b) = (cluster.nodes[0].url.clone(), cluster.nodes[b].url.clone());
    for i in 0..5 {
        post_ok(&a, "c", &format!("kept {i}")).await;
    }
    let log = cluster.logs[0].url.clone();
    wait_position(
        std::slice::from_ref(&log),
        "persisted",
        5,
        Duration::from_secs(20),
    )
    .await;
    wait_position(
        std::slice::from_ref(&b),
        "position",
        5,
        Duration::from_secs(20),
    )
    .await;
    // The copy the broker will be restored from: positions 1..5, same epoch.
    let copy = cluster.redis.copy_data();
    let mut on_b = ws_connect(&b, "c", 0).await;

    // 6..15 are acknowledged and delivered by a; nobody else reads them, and a crashes.
    proxy.pause();
    let mut on_a = ws_connect(&a, "c", 0).await;
    for i in 0..10 {
        post_ok(&a, "c", &format!("acked then lost {i}")).await;
    }
    let mut held: BTreeMap<u64, String> = BTreeMap::new();
    while held.len() < 15 {
        match next_frame(&mut on_a, Duration::from_secs(10)).await {
            Some(Seen::Json(v)) if v["type"] == "message" => {
                held.insert(
                    v["position"].as_u64().unwrap(),
                    v["text"].as_str().unwrap().to_owned(),
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(on_a);
    cluster.nodes[0].kill9();
    // The broker comes back from the older copy: same epoch, head 5, an empty script cache.
    cluster.redis.restart_from(&copy);
    proxy.resume();

    // Writes through b: refused (503, not stored) until the replica validated the new Redis
    // process, then past every position the old one may have handed out.
    let mut new = Vec::new();
    for i in 0..5 {
        new.push(post_retrying(&b, "c", &format!("new {i}"), Duration::from_secs(60)).await);
    }
    assert!(
        new.iter().all(|p| *p > 15),
        "positions handed out twice: {new:?} (held {:?})",
        held.keys().collect::<Vec<_>>()
    );
    let s = status(&log).await;
    assert!(
        cluster.logs[0].log_text().contains("never validated"),
        "the replica did not say why it re-anchored: {s}"
    );

    // b's reader. b held 1..5, the base of the new epoch. Either it never saw 6..15 and its
    // reader goes on with the new messages, or the old process's answer with 6..15 (queued in
    // the paused proxy, so it arrives after the restore) was applied — its entries carry the
    // epoch b followed — and b, finding the broker behind it, reloaded: the reader is closed
    // with 1012 and the position to resume from, and resuming there says 6..15 are lost. Either
    // way no position reaches it twice with two messages.
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut closed = None;
    while closed.is_none() && !new.iter().all(|p| seen.contains_key(p)) {
        match next_frame(&mut on_b, Duration::from_secs(15)).await {
            Some(Seen::Json(v)) if v["type"] == "message" => {
                let p = v["position"].as_u64().unwrap();
                assert!(
                    seen.keys().all(|q| *q < p),
                    "not in order: {p} after {seen:?}"
                );
                seen.insert(p, v["text"].as_str().unwrap().to_owned());
            }
            Some(Seen::Close(1012, reason)) => closed = Some(reason),
            other => panic!("b's reader, after {:?}: unexpected {other:?}", seen.keys()),
        }
    }
    for (p, text) in &seen {
        if let Some(held_text) = held.get(p) {
            assert_eq!(text, held_text, "position {p} seen with two texts");
        }
    }
    if let Some(reason) = closed {
        let after: u64 = reason
            .rsplit("after=")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("1012 without a position to resume from: {reason}"));
        assert_eq!(after, *seen.keys().last().unwrap());
        let mut resumed = ws_connect(&b, "c", after).await;
        if after > 5 {
            expect_lost(&mut resumed, 6, after).await;
        }
        let got = read_positions(&mut resumed, new.len(), Duration::from_secs(10)).await;
        assert_eq!(got, new);
    } else {
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            (1..=5).chain(new.iter().copied()).collect::<Vec<_>>()
        );
    }

    // a's reader resumes from 15 on b: told that 6..15 are gone, then everything after.
    let mut resumed = ws_connect(&b, "c", 15).await;
    expect_lost(&mut resumed, 6, 15).await;
    let got = read_positions(&mut resumed, new.len(), Duration::from_secs(10)).await;
    assert_eq!(got, new);

    // a comes back; every holder has the same history, and no position maps to two messages.
    cluster.nodes[0].restart();
    wait_ready(&a, Duration::from_secs(60)).await;
    let want: Vec<u64> = (1..=5).chain(new.iter().copied()).collect();
    for url in [&a, &b] {
        let (code, _, page) = get_page(url, "c", 0).await;
        assert_eq!(code, 200);
        assert_eq!(positions(&page), want, "{url}");
        for m in page["messages"].as_array().unwrap() {
            let p = m["position"].as_u64().unwrap();
            if let Some(text) = held.get(&p) {
                assert_eq!(
                    m["text"].as_str(),
                    Some(text.as_str()),
                    "position {p} reused"
                );
            }
        }
    }
    let logged: Vec<u64> = support::snapshot(&log)
        .await
        .into_iter()
        .filter(|m| !m.is_void())
        .map(|m| m.position)
        .collect();
    assert_eq!(logged, want);
}

/// Kind (c) across a broker data loss: a write whose script ran but whose reply was lost, when
/// the broker loses its data before the node resolves it, is answered 504 (outcome unknown),
/// never 503 "not stored": the write may already be in the replication log, as it is here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_resolved_after_a_broker_data_loss_is_outcome_unknown() {
    let (cluster, proxy, a, b) = node_behind_proxy().await;
    let replica = cluster.logs[0].url.clone();
    assert_eq!(post_ok(&a, "c", "before").await, 1);
    wait_position(
        &[a.clone(), b.clone()],
        "position",
        1,
        Duration::from_secs(20),
    )
    .await;

    // b's request reaches Redis and runs; its reply is held back.
    proxy.pause_replies();
    let started = Instant::now();
    let write = tokio::spawn({
        let b = b.clone();
        async move {
            post(
                &b,
                "c",
                json!({"id": "k1", "author": "ann", "text": "lost reply"}),
            )
            .await
        }
    });
    // The write is stored at 2 and persisted by the replica (it reads Redis directly) ...
    wait_position(
        std::slice::from_ref(&replica),
        "persisted",
        2,
        Duration::from_secs(4),
    )
    .await;
    // ... then the broker loses its data, before b's 5 s wait ends and it resolves the write.
    let mut conn = cluster.redis.conn();
    redis::cmd("FLUSHALL").query::<()>(&mut conn).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "too slow to stage the loss"
    );
    // b resolves in the broker's new state; let its answer through.
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(started.elapsed()) + Duration::from_millis(500),
    )
    .await;
    proxy.resume();
    let (code, body) = write.await.unwrap();
    assert_eq!(code, 504, "{body}");
    assert_eq!(body["outcome"], "unknown", "{body}");
    assert_eq!(body["id"], "k1", "{body}");
    // It was stored: the replica holds it at 2, and the re-anchored cluster serves it.
    let (_, _, page) = get_page(&replica, "c", 0).await;
    assert_eq!(positions(&page), vec![1, 2], "{page}");
    assert_eq!(page["messages"][1]["text"], "lost reply", "{page}");
}

/// A node that has not caught up with the broker takes no writes: its replication log is
/// unreachable, so it reads the broker's epoch but never finishes bootstrapping; a write through
/// it is refused (503, not stored, the phase named) and the broker hands out nothing. (With
/// writes taken in that state, a broker rolled back in place let a node holding nothing write
/// over positions another node had applied.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_caught_up_takes_no_writes() {
    let cluster = Cluster::start(1, 1).await;
    let a = cluster.nodes[0].url.clone();
    for i in 0..3 {
        post_ok(&a, "c", &format!("m{i}")).await;
    }
    let port = support::free_port();
    let args = support::with_auth(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--redis-url",
        &cluster.redis.url_as(RedisRole::ChatServer),
        "--log-url",
        &format!("http://127.0.0.1:{}", support::free_port()),
        "--node-id",
        "starting",
    ]);
    let starting = support::Proc::spawn(
        "starting",
        support::NODE_BIN,
        args,
        port,
        cluster.dir.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        if let Ok(r) = http().get(format!("{}/status", starting.url)).send().await
            && let Ok(s) = r.json::<Value>().await
            && s["epoch"].is_string()
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the node never read the epoch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["phase"], "bootstrapping", "{s}");
    let (code, v) = post(
        &starting.url,
        "c",
        json!({"text": "through a starting node"}),
    )
    .await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["outcome"], "not_stored", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("bootstrapping, not live")),
        "{v}"
    );
    // Nothing was handed out: the next write through the live node takes position 4.
    assert_eq!(post_ok(&a, "c", "after").await, 4);
}
