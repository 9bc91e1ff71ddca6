//! `chat-bench`: drives a running data plane (e.g. `e2e/processes up`) and prints figures.
//!
//! - `throughput`: accepted messages per second from many concurrent WebSocket (or HTTP) senders.
//! - `latency`: at a fixed rate, time from send until the message is visible on every node.
//! - `fanout`: WebSocket deliveries per second to many subscribers of one channel.
//! - `bootstrap`: time for a new node to become ready over a long history (loads it first).
//! - `log-append`: the replication log's append rate with one fsync per batch ([`log_append`]).
//! - `idle`: resident memory of a node holding many idle WebSocket connections (starts the node).
//!
//! Every run is bounded in time and count and talks only to the URLs it is given (loopback).
//! Its own package (not the data-plane crate) so that the WebSocket client library is a
//! dependency of the benchmark only.

mod log_append;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_server::broker::{Broker, BrokerOps};
use chat_server::message::NewMessage;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as Frame;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Benchmarks a running chat-cluster data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accepted messages per second.
    Throughput {
        /// chat-server base URLs, comma-separated.
        #[arg(long, default_value = "http://127.0.0.1:17200")]
        nodes: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        channels: usize,
        /// Send with HTTP POST instead of WebSocket `send` frames.
        #[arg(long)]
        http: bool,
    },
    /// Send-to-visible-on-every-node latency at a fixed rate.
    Latency {
        #[arg(long, default_value = "http://127.0.0.1:17200")]
        nodes: String,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// WebSocket deliveries per second to many subscribers.
    Fanout {
        #[arg(long, default_value = "http://127.0.0.1:17200")]
        nodes: String,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Messages per second sent to the channel.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
    /// Loads a history through the broker, then times a new node until ready.
    Bootstrap {
        #[arg(long, default_value = "redis://127.0.0.1:17000")]
        redis_url: String,
        /// Replication-log replicas, comma-separated.
        #[arg(long, default_value = "http://127.0.0.1:17100")]
        log_url: String,
        /// The chat-server binary to start.
        #[arg(long, default_value = "target/release/chat-server")]
        node_bin: String,
        /// Messages to load first (0: use the history as it is).
        #[arg(long, default_value_t = 1_000_000)]
        load: u64,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value_t = 17299)]
        port: u16,
    },
    /// RSS of a new node holding many idle WebSocket subscriptions (needs `ulimit -n` above
    /// twice `--connections`: the node and this client each hold one descriptor per connection).
    Idle {
        #[arg(long, default_value = "redis://127.0.0.1:17000")]
        redis_url: String,
        /// Replication-log replicas, comma-separated.
        #[arg(long, default_value = "http://127.0.0.1:17100")]
        log_url: String,
        /// The chat-server binary to start.
        #[arg(long, default_value = "target/release/chat-server")]
        node_bin: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Channels the connections subscribe to (round robin).
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Seconds to hold the connections open after the last one opened (pings flow meanwhile).
        #[arg(long, default_value_t = 10)]
        hold: u64,
        #[arg(long, default_value_t = 17298)]
        port: u16,
    },
    /// The replication log's append rate, fsync per batch.
    LogAppend {
        /// Directory for the log's files (created; removed afterwards).
        #[arg(long, default_value = "target/bench-log")]
        dir: String,
        #[arg(long, default_value_t = 500_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Throughput {
            nodes,
            seconds,
            connections,
            size,
            channels,
            http,
        } => throughput(split(&nodes), seconds, connections, size, channels, http).await,
        Command::Latency {
            nodes,
            rate,
            seconds,
            size,
            connections,
        } => latency(split(&nodes), rate, seconds, size, connections).await,
        Command::Fanout {
            nodes,
            subscribers,
            rate,
            seconds,
            size,
        } => fanout(split(&nodes), subscribers, rate, seconds, size).await,
        Command::Bootstrap {
            redis_url,
            log_url,
            node_bin,
            load,
            size,
            port,
        } => bootstrap(&redis_url, &log_url, &node_bin, load, size, port).await,
        Command::Idle {
            redis_url,
            log_url,
            node_bin,
            connections,
            channels,
            hold,
            port,
        } => {
            idle(
                &redis_url,
                &log_url,
                &node_bin,
                connections,
                channels,
                hold,
                port,
            )
            .await
        }
        Command::LogAppend {
            dir,
            messages,
            batch,
            size,
        } => log_append(&dir, messages, batch, size),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn text_of(size: usize, tag: &str) -> String {
    let mut t = String::with_capacity(size.max(tag.len() + 1));
    t.push_str(tag);
    t.push('|');
    while t.len() < size {
        t.push('x');
    }
    t
}

async fn ws_connect(node: &str, channel: &str, after: &str) -> Result<Ws, AnyError> {
    let url = format!(
        "{}/ws?channel={channel}&after={after}",
        node.replace("http://", "ws://")
    );
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(ws)
}

/// A node's current position (`/status`), so a subscriber can start from now.
async fn position_of(node: &str) -> Result<u64, AnyError> {
    let s: Value = reqwest::get(format!("{node}/status")).await?.json().await?;
    s["position"]
        .as_u64()
        .ok_or_else(|| format!("{node}/status has no position: {s}").into())
}

/// Sends one `send` frame and waits for its ack.
async fn ws_send(ws: &mut Ws, text: &str) -> Result<u64, AnyError> {
    ws.send(Frame::Text(
        json!({"type": "send", "text": text}).to_string().into(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("ack") => {
                        return v["position"]
                            .as_u64()
                            .ok_or_else(|| "ack without position".into());
                    }
                    Some("error") => return Err(format!("write refused: {}", v["error"]).into()),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection closed".into()),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn throughput(
    nodes: Vec<String>,
    seconds: u64,
    connections: usize,
    size: usize,
    channels: usize,
    http: bool,
) -> Result<(), AnyError> {
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let node = nodes[c % nodes.len()].clone();
        let channel = format!("bench-{}", c % channels.max(1));
        let (accepted, failed, client) = (accepted.clone(), failed.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let text = text_of(size, &format!("c{c}"));
            let mut ws = if http {
                None
            } else {
                Some(ws_connect(&node, &channel, "0&live=false").await?)
            };
            while Instant::now() < deadline {
                let ok = match ws.as_mut() {
                    Some(ws) => ws_send(ws, &text).await.is_ok(),
                    None => client
                        .post(format!("{node}/channels/{channel}/messages"))
                        .json(&json!({"text": text}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                };
                if ok { &accepted } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), AnyError>(())
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = accepted.load(Ordering::Relaxed);
    println!(
        "throughput: {n} accepted, {} failed in {secs:.1}s = {:.0} messages/s ({} {} connections, {size}-byte texts, {} nodes)",
        failed.load(Ordering::Relaxed),
        n as f64 / secs,
        connections,
        if http { "HTTP" } else { "WebSocket" },
        nodes.len()
    );
    Ok(())
}

async fn latency(
    nodes: Vec<String>,
    rate: u64,
    seconds: u64,
    size: usize,
    connections: usize,
) -> Result<(), AnyError> {
    const CHANNEL: &str = "bench-latency";
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    // One subscriber per node records when each message became visible there.
    let mut subs = Vec::new();
    for node in &nodes {
        let mut ws = ws_connect(node, CHANNEL, &position_of(node).await?.to_string()).await?;
        let done = done.clone();
        subs.push(tokio::spawn(async move {
            let mut seen: HashMap<u64, f64> = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                    Ok(Some(Ok(Frame::Text(t)))) => {
                        let at = start.elapsed().as_secs_f64();
                        if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                            && let Some(p) = v["position"].as_u64()
                        {
                            seen.insert(p, at);
                        }
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    _ => break,
                }
            }
            seen
        }));
    }
    // Senders pace themselves so that together they offer `rate` messages per second.
    let sent: Arc<Mutex<HashMap<u64, f64>>> = Arc::new(Mutex::new(HashMap::new()));
    let per_conn = Duration::from_secs_f64(connections as f64 / rate as f64);
    let deadline = start + Duration::from_secs(seconds);
    let mut senders = Vec::new();
    for c in 0..connections {
        let node = nodes[c % nodes.len()].clone();
        let sent = sent.clone();
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let text = text_of(size, &format!("c{c}"));
            let mut next = Instant::now() + per_conn.mul_f64(c as f64 / connections as f64);
            let mut behind = 0u64;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let at = start.elapsed().as_secs_f64();
                let r = client
                    .post(format!("{node}/channels/{CHANNEL}/messages"))
                    .json(&json!({"text": text}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    return Err::<u64, AnyError>(format!("write refused: {}", r.status()).into());
                }
                let v: Value = r.json().await?;
                sent.lock()
                    .await
                    .insert(v["position"].as_u64().unwrap_or(0), at);
                next += per_conn;
                if Instant::now() > next + per_conn {
                    behind += 1;
                }
            }
            Ok(behind)
        }));
    }
    let mut behind = 0;
    for s in senders {
        behind += s.await??;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for s in subs {
        seen.push(s.await?);
    }
    let sent = sent.lock().await;
    let mut lat = Vec::with_capacity(sent.len());
    let mut missing = 0;
    for (p, at) in sent.iter() {
        let mut worst: f64 = 0.0;
        let mut everywhere = true;
        for s in &seen {
            match s.get(p) {
                Some(v) => worst = worst.max(v - at),
                None => everywhere = false,
            }
        }
        if everywhere {
            lat.push(worst * 1000.0);
        } else {
            missing += 1;
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "latency: {} messages at {rate}/s offered over {seconds}s ({} late sends), send -> visible on all {} nodes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {missing} not seen everywhere",
        lat.len(),
        behind,
        nodes.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

async fn fanout(
    nodes: Vec<String>,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    size: usize,
) -> Result<(), AnyError> {
    let channel = "bench-fanout";
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    let mut positions = Vec::new();
    for node in &nodes {
        positions.push(position_of(node).await?.to_string());
    }
    for i in 0..subscribers {
        let n = i % nodes.len();
        let mut ws = ws_connect(&nodes[n], channel, &positions[n]).await?;
        let (delivered, done) = (delivered.clone(), done.clone());
        subs.push(tokio::spawn(async move {
            let mut closed = None;
            while !done.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                    Ok(Some(Ok(Frame::Text(_)))) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(Frame::Close(c)))) => {
                        closed = c.map(|c| c.reason.to_string());
                        break;
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    _ => break,
                }
            }
            closed
        }));
    }
    // Several writers, each paced at its share of the rate: one writer waiting for each ack in
    // turn would measure the write round trip, not the fan-out.
    const WRITERS: u64 = 8;
    let text = text_of(size, "fanout");
    let period = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let base = delivered.load(Ordering::Relaxed);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut writer =
            ws_connect(&nodes[w as usize % nodes.len()], channel, "0&live=false").await?;
        let text = text.clone();
        writers.push(tokio::spawn(async move {
            let mut next = started + period.mul_f64(w as f64 / WRITERS as f64);
            let mut sent = 0u64;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                ws_send(&mut writer, &text).await?;
                sent += 1;
                next += period;
            }
            Ok::<u64, AnyError>(sent)
        }));
    }
    let mut sent = 0u64;
    for w in writers {
        sent += w.await??;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let expected = sent * subscribers as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) - base < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut dropped = 0;
    for s in subs {
        if s.await?.is_some() {
            dropped += 1;
        }
    }
    let got = delivered.load(Ordering::Relaxed) - base;
    println!(
        "fanout: {subscribers} subscribers over {} nodes, {sent} messages sent in {send_secs:.1}s; {got}/{expected} deliveries in {total_secs:.1}s = {:.0} deliveries/s; {dropped} subscribers dropped",
        nodes.len(),
        got as f64 / total_secs
    );
    Ok(())
}

async fn bootstrap(
    redis_url: &str,
    log_url: &str,
    node_bin: &str,
    load: u64,
    size: usize,
    port: u16,
) -> Result<(), AnyError> {
    let broker = Broker::connect(redis_url).await?;
    if load > 0 {
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        // A write names the epoch it belongs to (the replication log anchored the broker).
        let epoch = Arc::new(
            broker
                .state()
                .await?
                .epoch
                .ok_or("the broker has no epoch yet: start a replication-log replica first")?,
        );
        let mut tasks = Vec::new();
        for w in 0..128 {
            let (broker, next, epoch) = (broker.clone(), next.clone(), epoch.clone());
            tasks.push(tokio::spawn(async move {
                let text = text_of(size, &format!("w{w}"));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= load {
                        return Ok::<(), AnyError>(());
                    }
                    let msg = NewMessage {
                        channel: format!("history-{}", i % 10),
                        id: None,
                        author: "bench".into(),
                        text: text.clone(),
                        scope: None,
                    };
                    broker
                        .write(
                            &msg,
                            &format!("h{i}"),
                            chat_server::message::now_millis(),
                            0,
                            &epoch,
                        )
                        .await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!(
            "bootstrap: loaded {load} messages in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    let head = broker.state().await?.head;
    let client = reqwest::Client::new();
    let log = log_url
        .split(',')
        .next()
        .unwrap_or(log_url)
        .trim_end_matches('/');
    let wait = Instant::now();
    loop {
        let s: Value = client
            .get(format!("{log}/status"))
            .send()
            .await?
            .json()
            .await?;
        if s["persisted"].as_u64().unwrap_or(0) >= head {
            break;
        }
        if wait.elapsed() > Duration::from_secs(600) {
            return Err(format!("the log did not persist {head} messages: {s}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let mut child = tokio::process::Command::new(node_bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            redis_url,
            "--log-url",
            log_url,
        ])
        .args(["--node-id", "bench-bootstrap", "--auth", "none"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    wait_node_ready(&client, &url, started).await?;
    let ready = started.elapsed().as_secs_f64();
    let s: Value = client
        .get(format!("{url}/status"))
        .send()
        .await?
        .json()
        .await?;
    let rss = rss_kib(child.id().unwrap_or(0));
    println!(
        "bootstrap: new node ready in {ready:.2}s holding {} messages (position {}, {size}-byte texts), RSS {} MiB",
        s["messages"],
        s["position"],
        rss / 1024
    );
    child.kill().await?;
    Ok(())
}

/// Waits up to 300 s (from `started`) for a node's `/readyz` to answer 200.
async fn wait_node_ready(
    client: &reqwest::Client,
    url: &str,
    started: Instant,
) -> Result<(), AnyError> {
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("{url} did not become ready within 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS`), 0 when unreadable.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// A gauge's value from a node's `/metrics`.
async fn gauge(client: &reqwest::Client, node: &str, name: &str) -> Result<f64, AnyError> {
    let text = client
        .get(format!("{node}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{node}/metrics has no {name}").into())
}

/// Starts a node, opens `connections` idle live WebSocket subscriptions to it, and prints its
/// RSS before and after, per connection.
async fn idle(
    redis_url: &str,
    log_url: &str,
    node_bin: &str,
    connections: usize,
    channels: usize,
    hold: u64,
    port: u16,
) -> Result<(), AnyError> {
    let client = reqwest::Client::new();
    let mut child = tokio::process::Command::new(node_bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            redis_url,
            "--log-url",
            log_url,
            "--node-id",
            "bench-idle",
            "--max-connections",
            &(connections + 100).to_string(),
            "--auth",
            "none",
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the node exited at once")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_node_ready(&client, &url, Instant::now()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let ws_base = url.replace("http://", "ws://");
    let opening = Instant::now();
    let mut open = Vec::with_capacity(connections);
    // 100 handshakes at a time.
    for batch in (0..connections).collect::<Vec<_>>().chunks(100) {
        let handshakes = batch.iter().map(|i| {
            let target = format!("{ws_base}/ws?channel=idle-{}", i % channels.max(1));
            tokio_tungstenite::connect_async_with_config(target, Some(config), false)
        });
        for r in futures::future::join_all(handshakes).await {
            match r {
                Ok((ws, _)) => open.push(ws),
                Err(e) => {
                    return Err(format!(
                        "connection {} failed: {e} (raise `ulimit -n` above {})",
                        open.len() + 1,
                        2 * connections + 100
                    )
                    .into());
                }
            }
        }
    }
    let opened_in = opening.elapsed().as_secs_f64();
    // Pings are answered by tungstenite only when the stream is polled: keep every connection
    // read (nothing else arrives) while holding.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut readers = Vec::with_capacity(open.len());
    for mut ws in open {
        let ready_tx = ready_tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
            let _ = ready_tx.try_send(());
        }));
    }
    drop(ready_tx);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    if ready_rx.try_recv().is_ok() {
        return Err("a connection ended while held".into());
    }
    let after = rss_kib(pid);
    let counted = gauge(&client, &url, "chat_server_websocket_connections").await?;
    let per = (after.saturating_sub(before) as f64) / connections.max(1) as f64;
    println!(
        "idle: {connections} WebSockets on {channels} channels opened in {opened_in:.1}s, held {hold}s; node RSS {} MiB before, {} MiB after: {per:.1} KiB per connection; websocket_connections {counted}",
        before / 1024,
        after / 1024
    );
    for r in readers {
        r.abort();
    }
    child.kill().await?;
    Ok(())
}

fn log_append(dir: &str, messages: u64, batch: usize, size: usize) -> Result<(), AnyError> {
    let path = std::path::Path::new(dir);
    if path.exists() {
        std::fs::remove_dir_all(path)?;
    }
    std::fs::create_dir_all(path)?;
    let report = log_append::append(path, messages, batch, size)?;
    println!("log-append: {report}");
    for line in log_append::read_back(path)? {
        println!("log-append: {line}");
    }
    std::fs::remove_dir_all(path)?;
    Ok(())
}
