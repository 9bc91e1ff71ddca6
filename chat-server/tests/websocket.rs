//! The WebSocket API's bounds and endings (issue 10, "Bounded resources"), against real Redis and
//! real `replication-log` and `chat-server` processes:
//! - a client that stops reading is closed within `--ws-write-timeout` with 4008 and `after=P`,
//!   while other clients go on, and resuming from `P` loses nothing;
//! - an idle WebSocket costs the node at most 16 KiB of resident memory;
//! - a client that answers no ping is closed with 4009 and `after=P`, one that reads stays;
//! - protocol violations close with the RFC 6455 §7.4.1 code, a client's close is echoed;
//! - SIGTERM closes every WebSocket with 1001 and `after=P`, and the process exits 0.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Cluster, http, post, read_all};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

fn ws_url(url: &str, query: &str) -> String {
    format!("{}/ws?{query}", url.replace("http://", "ws://"))
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// A WebSocket client over a socket whose receive buffer is `rcvbuf` bytes (if given).
async fn connect(url: &str, query: &str, rcvbuf: Option<u32>) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let stream = socket
        .connect(addr(url).parse().expect("address"))
        .await
        .expect("connect");
    // A small client read buffer: the idle test holds thousands of these.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    tokio_tungstenite::client_async_with_config(ws_url(url, query), stream, Some(config))
        .await
        .expect("ws handshake")
        .0
}

/// What a client saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Message(u64),
    Other(Value),
    Ping,
    Close(u16, String),
    /// The connection ended without a close frame (or with an error).
    Ended(String),
}

/// The next frame within `timeout`; `None` on timeout.
async fn next(ws: &mut Ws, timeout: Duration) -> Option<Seen> {
    let f = tokio::time::timeout(timeout, ws.next()).await.ok()?;
    Some(match f {
        Some(Ok(Frame::Text(t))) => {
            let v: Value = serde_json::from_str(t.as_str()).expect("json frame");
            match (v["type"].as_str(), v["position"].as_u64()) {
                (Some("message"), Some(p)) => Seen::Message(p),
                _ => Seen::Other(v),
            }
        }
        Some(Ok(Frame::Ping(_))) => Seen::Ping,
        Some(Ok(Frame::Close(c))) => match c {
            Some(c) => Seen::Close(c.code.into(), c.reason.to_string()),
            None => Seen::Close(1005, String::new()),
        },
        Some(Ok(other)) => Seen::Other(json!(format!("{other:?}"))),
        Some(Err(e)) => Seen::Ended(e.to_string()),
        None => Seen::Ended("end of stream".into()),
    })
}

/// Reads message positions until the close frame (or the end): (positions, ending).
async fn read_until_close(ws: &mut Ws, timeout: Duration) -> (Vec<u64>, Seen) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(ws, left).await {
            Some(Seen::Message(p)) => got.push(p),
            Some(Seen::Ping | Seen::Other(_)) => {}
            Some(end) => return (got, end),
            None => return (got, Seen::Ended("timeout".into())),
        }
    }
}

/// Reads message positions until `want` of them arrived.
async fn read_messages(ws: &mut Ws, want: usize, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(ws, left).await {
            Some(Seen::Message(p)) => got.push(p),
            Some(Seen::Ping | Seen::Other(_)) => {}
            other => panic!("after {} messages: {other:?}", got.len()),
        }
    }
    got
}

/// `P` of a reason's `after=P`.
fn after_in(reason: &str) -> Option<u64> {
    reason.split("after=").nth(1)?.parse().ok()
}

/// A metric's value from `/metrics` (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    let text = support::metrics_text(url).await;
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn post_text(url: &str, channel: &str, text: &str) -> u64 {
    let (status, body) = post(url, channel, json!({"text": text, "author": "t"})).await;
    assert_eq!(status, 201, "{body}");
    body["position"].as_u64().expect("position")
}

/// Item 1: a subscriber that never reads is closed within the write deadline with 4008 and
/// `after=P` (counted in `slow_consumers_dropped`), another subscriber gets everything meanwhile,
/// and resuming from `P` delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_write_deadline() {
    const N: usize = 1500;
    let c = Cluster::start_with(1, 1, &["--ws-queue", "64", "--ws-write-timeout", "2"]).await;
    let url = c.nodes[0].url.clone();
    let mut stuck = connect(&url, "channel=slow&after=0", Some(4096)).await;
    let mut reader = connect(&url, "channel=slow&after=0", None).await;
    let reading = tokio::spawn(async move {
        let got = read_messages(&mut reader, N, Duration::from_secs(120)).await;
        (got, reader)
    });
    // 1500 × 3.5 KiB: more than the kernel buffers of the stuck connection hold.
    let filler = "x".repeat(3500);
    let mut writers = Vec::new();
    for w in 0..6 {
        let (url, filler) = (url.clone(), filler.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..N / 6 {
                post_text(&url, "slow", &format!("{w}-{i}:{filler}")).await;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let (got, _reader) = reading.await.expect("reader");
    assert_eq!(
        got,
        (1..=N as u64).collect::<Vec<_>>(),
        "the reading client"
    );

    // The stuck one is closed: the gauge drops and the counter counts it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = metric(&url, "chat_server_websocket_connections").await;
        let dropped = metric(&url, "chat_server_slow_consumers_dropped_total").await;
        if open <= 1.0 && dropped >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never closed: websocket_connections={open} slow_consumers_dropped={dropped}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It reads again: a dense prefix, then 4008 naming the last position it got.
    let (prefix, end) = read_until_close(&mut stuck, Duration::from_secs(30)).await;
    assert_eq!(prefix, (1..=prefix.len() as u64).collect::<Vec<_>>());
    assert!(prefix.len() < N, "the stuck client got everything");
    let Seen::Close(code, reason) = end else {
        panic!("no close frame after {} messages: {end:?}", prefix.len());
    };
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
    assert_eq!(after_in(&reason), Some(prefix.len() as u64), "{reason}");
    let mut resumed = connect(&url, &format!("channel=slow&after={}", prefix.len()), None).await;
    let rest = read_messages(&mut resumed, N - prefix.len(), Duration::from_secs(30)).await;
    assert_eq!(
        rest,
        (prefix.len() as u64 + 1..=N as u64).collect::<Vec<_>>()
    );
    eprintln!(
        "stuck client: {} messages before 4008 ({reason}); resumed {}",
        prefix.len(),
        rest.len()
    );
}

/// Opens `n` live WebSockets on `channel` (one message to replay) and waits until each got it.
async fn open_idle(url: &str, n: usize) -> Vec<Ws> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = connect(url, "channel=idle&after=0", None).await;
        read_messages(&mut ws, 1, Duration::from_secs(10)).await;
        open.push(ws);
    }
    open
}

/// Item 2: an idle WebSocket costs the node at most 16 KiB of resident memory: the growth of
/// the node's RSS from a second batch of idle connections opened on top of a first (the first
/// batch's figure also holds the allocator's warm-up and is reported too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_costs_at_most_16_kib() {
    // Many, as RSS grows in steps of the allocator's segments (2 MiB and more): with 1,000 one
    // step more or less moved the figure by 2 KiB (12.3, 14.3, 16.4 KiB for the same build).
    const CONNECTIONS: usize = 2000;
    let c = Cluster::start(1, 1).await;
    let url = c.nodes[0].url.clone();
    let pid = c.nodes[0].pid().expect("node pid");
    post_text(&url, "idle", "hello").await;
    drop(open_idle(&url, 10).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rss = vec![rss_kib(pid)];
    let mut open = Vec::new();
    for batch in 1..=2 {
        open.extend(open_idle(&url, CONNECTIONS).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gauge = metric(&url, "chat_server_websocket_connections").await;
        assert_eq!(gauge, (batch * CONNECTIONS) as f64);
        rss.push(rss_kib(pid));
    }
    let per = |i: usize| rss[i].saturating_sub(rss[i - 1]) as f64 / CONNECTIONS as f64;
    eprintln!(
        "node RSS {} -> {} -> {} KiB with 0, {CONNECTIONS}, {} idle WebSockets: \
         {:.1} KiB each in the first batch, {:.1} KiB each in the second",
        rss[0],
        rss[1],
        rss[2],
        2 * CONNECTIONS,
        per(1),
        per(2)
    );
    assert!(per(2) <= 16.0, "{:.1} KiB per idle WebSocket", per(2));
}

/// Item 3: the node pings; a client that answers stays, one that sends nothing is closed with
/// 4009 and `after=P`, and resuming from `P` loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed() {
    let args = [
        "--ws-ping-interval",
        "0.2",
        "--ws-ping-timeout",
        "1",
        "--ws-write-timeout",
        "2",
    ];
    let c = Cluster::start_with(1, 1, &args).await;
    let url = c.nodes[0].url.clone();
    for i in 0..3 {
        post_text(&url, "ping", &format!("m{i}")).await;
    }
    let mut silent = connect(&url, "channel=ping&after=0", None).await;
    let mut alive = connect(&url, "channel=ping&after=0", None).await;
    // The live client reads (and so answers pings) for 2.5 s: it is pinged and stays.
    let mut pings = 0;
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        match next(&mut alive, Duration::from_millis(100)).await {
            None => {}
            Some(Seen::Ping) => pings += 1,
            Some(Seen::Message(p)) => got.push(p),
            Some(other) => panic!("the answering client got {other:?}"),
        }
    }
    assert!(pings >= 5, "{pings} pings in 2.5 s");
    assert_eq!(got, vec![1, 2, 3]);
    alive
        .send(Frame::Text(
            json!({"type": "send", "text": "still here", "id": "alive-1"})
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
    let (acked, _) = loop {
        match next(&mut alive, Duration::from_secs(10)).await {
            Some(Seen::Other(v)) if v["type"] == "ack" => break (v["position"].as_u64(), v),
            Some(Seen::Ping | Seen::Message(_)) => {}
            other => panic!("no ack: {other:?}"),
        }
    };
    assert_eq!(acked, Some(4));
    // The silent one read nothing for 2.5 s: its messages, then 4009 naming the last one.
    let (prefix, end) = read_until_close(&mut silent, Duration::from_secs(10)).await;
    assert_eq!(prefix, vec![1, 2, 3]);
    let Seen::Close(code, reason) = end else {
        panic!("no close frame: {end:?}");
    };
    assert_eq!(code, 4009, "{reason}");
    assert_eq!(after_in(&reason), Some(3), "{reason}");
    let mut resumed = connect(&url, "channel=ping&after=3", None).await;
    assert_eq!(
        read_messages(&mut resumed, 1, Duration::from_secs(10)).await,
        vec![4]
    );
}

/// A raw WebSocket client for frames no library sends: the handshake, then bytes.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(url: &str, path: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr(url)).await.expect("connect");
        let host = addr(url);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("handshake");
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("handshake answer");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        Raw {
            tcp,
            buf: buf.split_off(end),
        }
    }

    /// Sends one frame: `opcode`, FIN, RSV bits (`rsv`, 0–7), masked or not.
    async fn send(&mut self, opcode: u8, payload: &[u8], fin: bool, mask: bool, rsv: u8) {
        let mut frame = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(m | n as u8),
            n if n < 65536 => {
                frame.push(m | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(m | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if mask {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The node may close before it read everything: a failed write shows in the answer.
        let _ = self.tcp.write_all(&frame).await;
    }

    /// The next frame from the node: (opcode, payload), or `None` at the end or after 5 s.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.buf.len() >= 2 {
                let (op, len7) = (self.buf[0] & 0x0f, (self.buf[1] & 0x7f) as usize);
                let (len, start) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.tcp.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the node closes TCP within 2 s.
    async fn closed_by_node(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.tcp.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The close frame's (code, reason), skipping other frames; `None` if none came.
    async fn close(&mut self) -> Option<(u16, String)> {
        loop {
            let (op, payload) = self.frame().await?;
            if op == 8 {
                let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
                return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        }
    }

    /// The `ack` of the send frame just sent.
    async fn ack(&mut self) -> Value {
        loop {
            let (op, payload) = self.frame().await.expect("an ack");
            if op == 1 {
                let v: Value = serde_json::from_slice(&payload).expect("json");
                match v["type"].as_str() {
                    Some("ack") => return v,
                    Some("message") => {}
                    _ => panic!("expected an ack: {v}"),
                }
            }
        }
    }
}

/// A violation a client commits on a fresh connection.
type Act = fn(&mut Raw) -> futures::future::BoxFuture<'_, ()>;

/// Item 4: each protocol violation closes with its RFC 6455 §7.4.1 code, a client's close is
/// echoed (§5.5.1), and every `send` acknowledged before is stored.
#[tokio::test]
async fn violations_close_with_the_rfc_code_and_client_closes_are_echoed() {
    let c = Cluster::start(1, 1).await;
    let url = c.nodes[0].url.clone();
    let send: &[u8] = br#"{"type":"send","text":"x"}"#;
    let cases: Vec<(&str, &str, u16, Act)> = vec![
        ("invalid UTF-8", "live=false", 1007, |w| {
            Box::pin(w.send(
                1,
                b"{\"type\":\"send\",\"text\":\"\xc3\x28\"}",
                true,
                true,
                0,
            ))
        }),
        ("invalid UTF-8 in a fragment", "live=false", 1007, |w| {
            Box::pin(async move {
                w.send(1, b"{\"type\":\"send\",", false, true, 0).await;
                w.send(0, b"\"text\":\"\xed\xa0\x80", false, true, 0).await;
                w.send(0, b"\"}", true, true, 0).await;
            })
        }),
        ("unmasked", "live=false", 1002, |w| {
            Box::pin(w.send(1, br#"{"type":"send","text":"x"}"#, true, false, 0))
        }),
        ("RSV1 without extension", "live=false", 1002, |w| {
            Box::pin(w.send(1, br#"{"type":"send","text":"x"}"#, true, true, 4))
        }),
        ("fragmented ping", "live=false", 1002, |w| {
            Box::pin(w.send(9, b"p", false, true, 0))
        }),
        ("continuation without a start", "live=false", 1002, |w| {
            Box::pin(w.send(0, br#"{"type":"send","text":"x"}"#, true, true, 0))
        }),
        ("reserved opcode", "live=false", 1002, |w| {
            Box::pin(w.send(3, b"x", true, true, 0))
        }),
        ("close code 0", "live=false", 1002, |w| {
            Box::pin(w.send(8, &[0, 0], true, true, 0))
        }),
        ("40 KB text", "live=false", 1009, |w| {
            Box::pin(async move {
                let big = format!(r#"{{"type":"send","text":"{}"}}"#, "y".repeat(40_000));
                w.send(1, big.as_bytes(), true, true, 0).await;
            })
        }),
        ("client close 1000", "live=false", 1000, |w| {
            Box::pin(w.send(8, b"\x03\xe8bye", true, true, 0))
        }),
        ("client close 1000, live", "after=0", 1000, |w| {
            Box::pin(w.send(8, b"\x03\xe8bye", true, true, 0))
        }),
        ("client close 4321", "live=false", 4321, |w| {
            Box::pin(w.send(8, b"\x10\xe1", true, true, 0))
        }),
    ];
    let mut acked = Vec::new();
    for (name, query, want, act) in &cases {
        let mut w = Raw::connect(&url, &format!("/ws?channel=codes&{query}")).await;
        w.send(1, send, true, true, 0).await;
        acked.push(w.ack().await["position"].as_u64().expect("position"));
        act(&mut w).await;
        let got = w.close().await;
        assert_eq!(got.as_ref().map(|c| c.0), Some(*want), "{name}: {got:?}");
        // The node closes TCP after its close frame (RFC 6455 §7.1.1, §7.1.7).
        assert!(w.closed_by_node().await, "{name}: TCP still open");
    }
    let stored: Vec<u64> = read_all(&url, "codes")
        .await
        .iter()
        .map(|m| m.position)
        .collect();
    assert_eq!(stored, acked);
    // The node's own closes are counted by code; answers to a client's close are not (the 1002
    // answering close code 0 among them).
    for (code, n) in [(1007, 2.0), (1002, 5.0), (1009, 1.0), (1000, 0.0)] {
        let name = format!("chat_server_websocket_closes_total{{code=\"{code}\"}}");
        assert_eq!(metric(&url, &name).await, n, "{name}");
    }
}

/// Item 5: SIGTERM closes every WebSocket with 1001 and `after=P` (the last position each
/// delivered), the process exits 0, and resuming from `P` on another node loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_websocket_with_1001_and_the_resume_position() {
    let mut c = Cluster::start_with(1, 1, &["--ws-drain-timeout", "3"]).await;
    let url = c.nodes[0].url.clone();
    for i in 0..5 {
        post_text(&url, "bye", &format!("m{i}")).await;
    }
    let mut clients = Vec::new();
    for after in [0, 2] {
        let mut ws = connect(&url, &format!("channel=bye&after={after}"), None).await;
        let got = read_messages(&mut ws, 5 - after, Duration::from_secs(10)).await;
        assert_eq!(got.last(), Some(&5));
        clients.push(tokio::spawn(async move {
            let (more, end) = read_until_close(&mut ws, Duration::from_secs(20)).await;
            // Go on reading so the client's close answer goes out, as a browser's would.
            let _ = next(&mut ws, Duration::from_secs(5)).await;
            (more, end)
        }));
    }
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| c.nodes[0].terminate()).expect("exit status");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    for client in clients {
        let (more, end) = client.await.expect("client");
        assert!(more.is_empty(), "{more:?}");
        let Seen::Close(code, reason) = end else {
            panic!("no close frame: {end:?}");
        };
        assert_eq!(code, 1001, "{reason}");
        assert_eq!(after_in(&reason), Some(5), "{reason}");
    }
    let log = c.nodes[0].log_text();
    assert!(!log.contains("still open at the drain deadline"), "{log}");
    let i = c.add_node().await;
    let url = c.nodes[i].url.clone();
    let mut resumed = connect(&url, "channel=bye&after=5", None).await;
    post_text(&url, "bye", "after the restart").await;
    assert_eq!(
        read_messages(&mut resumed, 1, Duration::from_secs(10)).await,
        vec![6]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_shutdown_delay_serves_on_unready_then_exits() {
    let mut c = Cluster::start_with(1, 1, &["--shutdown-delay", "2"]).await;
    let url = c.nodes[0].url.clone();
    post_text(&url, "delay", "before").await;
    let pid = c.nodes[0].pid().expect("running");
    let started = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    // Unready at once, yet still serving: a request that arrives before the Service dropped the
    // pod is answered, not refused.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = http().get(format!("{url}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let (code, body) = post(&url, "delay", json!({"text": "during the delay"})).await;
    assert_eq!(code, 201, "{body}");
    let status = tokio::task::block_in_place(|| c.nodes[0].terminate()).expect("exit status");
    assert!(status.success(), "exit status {status:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "exited after {took:?}"
    );
}
