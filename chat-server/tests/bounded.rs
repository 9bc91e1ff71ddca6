//! Bounded resources of a node (issue 10), against the real binaries on loopback: what clients
//! cannot make a node hold (channel state for names nobody wrote to), and the paging and caps of
//! `GET /channels` and message pages.

mod support;

use chat_wire::redis_acl::RedisRole;
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, http, metrics_text};

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
    // Counted in /metrics: the refusal, and the channels held.
    let text = metrics_text(url).await;
    assert_eq!(
        metric(&text, "chat_server_channel_limit_refusals_total"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "chat_server_channels "), 3.0, "{text}");
}

/// The value of the first line of `text` starting with `name` (panics when there is none).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Posts `n` messages of `text_bytes` to `channel`, `writers` at a time.
async fn fill(url: &str, channel: &str, n: usize, text_bytes: usize, writers: usize) {
    let text = "x".repeat(text_bytes);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (url, channel, text) = (url.to_owned(), channel.to_owned(), text.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(writers) {
                let body = serde_json::json!({"text": text, "id": format!("m-{i}")});
                let (status, reply) = support::post(&url, &channel, body).await;
                assert_eq!(status, 201, "{reply}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

/// Payload bytes of a page's messages, as the node counts them.
fn page_bytes(page: &Value) -> usize {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            ["text", "id", "author", "channel"]
                .iter()
                .map(|k| m[k].as_str().map_or(0, str::len))
                .sum::<usize>()
        })
        .sum()
}

/// Pages are cut at 1 MiB of message bytes, from memory and from the replication log, and are
/// still complete: reading with `after=next` returns every message once, in order. Eight
/// concurrent `limit=10000` reads of 4 KB messages from memory leave RSS within 64 MiB of where
/// it was (each page is at most 1 MiB of payload, about 3 MiB with its copy and JSON; before the
/// cap each read rendered 5,000 messages, about 20 MiB of text, several times over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_capped_by_bytes_and_stay_complete() {
    let c = Cluster::start_with(1, 1, &["--memory-window", "5000"]).await;
    let node = &c.nodes[0];
    let url = &node.url;
    let n = 10_000;
    fill(url, "big", n, 4000, 16).await;
    support::wait_position(
        std::slice::from_ref(url),
        "position",
        n as u64,
        Duration::from_secs(60),
    )
    .await;

    let before = node.rss_kib();
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{url}/channels/big/messages?after=5000&limit=10000");
            tokio::spawn(async move { get_json(&url).await })
        })
        .collect();
    for r in reads {
        let (status, page) = r.await.expect("read");
        assert_eq!(status, 200);
        assert!(page_bytes(&page) <= 1 << 20, "{} bytes", page_bytes(&page));
    }
    let after = node.rss_kib();
    println!("8 concurrent limit=10000 reads of 4 KB messages: RSS {before} -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );

    // The whole channel, crossing from the log (1 ..= 5000) into memory, page by page.
    let mut next = 0u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, page) = get_json(&format!(
            "{url}/channels/big/messages?after={next}&limit=10000"
        ))
        .await;
        if status == 503 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "{page}");
        let Some(last) = page["next"].as_u64() else {
            break;
        };
        assert!(
            page_bytes(&page) <= 1 << 20,
            "page after {next}: {} bytes",
            page_bytes(&page)
        );
        for m in page["messages"].as_array().expect("messages") {
            seen.push(m["position"].as_u64().expect("position"));
        }
        pages += 1;
        next = last;
    }
    println!("read {} messages in {pages} pages", seen.len());
    assert_eq!(seen, (1..=n as u64).collect::<Vec<_>>());
    // About 40 MB of payload in pages of at most 1 MiB.
    assert!(pages >= 38, "{pages} pages");
}

/// With `--memory-window-bytes 16 MiB`, 20,000 messages of 4 KB in 4 channels (about 80 MB of
/// payload, five times the budget) grow the node's RSS by less than 48 MiB (the window's at most
/// 1.1 × 16 MiB, plus the allocator's slack and connection buffers; without the budget the window
/// alone would hold about 84 MiB); evicted history is still read, from the replication log.
/// Restarted over that history, the node bootstraps it from the replica and ends with its
/// window's counted bytes within the budget and its RSS within the same 48 MiB (measured: live
/// +17 MiB, after the restart +33 MiB; see docs/operations.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_budget_bounds_node_memory() {
    let budget = (16u64 << 20).to_string();
    let c = Cluster::start_with(1, 1, &["--memory-window-bytes", &budget]).await;
    let node = &c.nodes[0];
    let url = &node.url;
    let before = node.rss_kib();
    let per_channel = 5000;
    let fills: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(
                async move { fill(&url, &format!("room-{i}"), per_channel, 4000, 4).await },
            )
        })
        .collect();
    for f in fills {
        f.await.expect("fill");
    }
    let total = 4 * per_channel as u64;
    support::wait_position(
        std::slice::from_ref(url),
        "position",
        total,
        Duration::from_secs(60),
    )
    .await;
    let after = node.rss_kib();
    println!("{total} messages of 4 KB, budget 16 MiB: RSS {before} -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 48 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // /metrics shows the budget and a full window within it.
    let text = metrics_text(url).await;
    let held = metric(&text, "chat_server_memory_window_bytes ");
    assert_eq!(
        metric(&text, "chat_server_memory_window_budget_bytes"),
        (16u64 << 20) as f64
    );
    assert!(
        held <= (16u64 << 20) as f64 && held > (15u64 << 20) as f64,
        "window holds {held} bytes"
    );
    // The oldest messages left memory and are read from the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, page) = get_json(&format!("{url}/channels/room-0/messages?limit=3")).await;
        if status == 503 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "{}", page["error"]);
        let positions: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["position"].as_u64().expect("position"))
            .collect();
        // room-0's first messages were among the first written, long evicted from memory.
        assert_eq!(positions.len(), 3, "{positions:?}");
        assert!(positions[0] < 100 && positions.is_sorted(), "{positions:?}");
        break;
    }
    // Restarted over the full history, the node bootstraps it from the replica (5 times its
    // budget) and ends within the same bounds: its window's counted bytes at most the budget,
    // and its RSS within the same 48 MiB of a fresh node's.
    let mut c = c;
    c.nodes[0].restart();
    support::wait_ready(&c.nodes[0].url, Duration::from_secs(60)).await;
    let node = &c.nodes[0];
    let url = &node.url;
    let mut peak = 0;
    for _ in 0..10 {
        peak = peak.max(node.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics_text(url).await;
    let held = metric(&text, "chat_server_memory_window_bytes ");
    println!(
        "restarted over {total} messages of 4 KB, budget 16 MiB: window {held} bytes, RSS {before} -> {peak} KiB"
    );
    assert!(
        held <= (16u64 << 20) as f64 && held > (15u64 << 20) as f64,
        "window holds {held} bytes after the restart"
    );
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "RSS after the restart grew from {before} to {peak} KiB"
    );
}

/// A memory cgroup made by the test (removed on drop): `parent` with a memory limit, and `child`
/// below it without one, so the limit that applies to a process in `child` is its parent's.
struct TestCgroup {
    parent: std::path::PathBuf,
    child: std::path::PathBuf,
}

impl TestCgroup {
    /// Makes the pair below this process's own memory cgroup (cgroup v1) or below the root of the
    /// unified hierarchy (cgroup v2, whose `memory` controller must be enabled there); panics
    /// saying why when neither can be made (the test needs root and a writable cgroup tree).
    fn make(limit: u64) -> TestCgroup {
        use chat_server::cgroup::{Version, cgroup_path, limit_dirs, memory_mounts};
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let (mountinfo, own) = (read("/proc/self/mountinfo"), read("/proc/self/cgroup"));
        let name = format!("chat-bounded-{}", std::process::id());
        let mut tried = Vec::new();
        for mount in memory_mounts(&mountinfo) {
            let base = match mount.version {
                Version::V1 => match cgroup_path(&own, Version::V1) {
                    Some(path) => limit_dirs(&mount, path).remove(0),
                    None => continue,
                },
                Version::V2 => mount.mount_point.clone(),
            };
            if mount.version == Version::V2 {
                let controls = std::fs::read_to_string(base.join("cgroup.subtree_control"));
                if !controls.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
                    tried.push(format!("{}: no memory controller", base.display()));
                    continue;
                }
            }
            let parent = base.join(&name);
            let child = parent.join("node");
            let made = std::fs::create_dir(&parent)
                .and_then(|()| {
                    if mount.version == Version::V2 {
                        std::fs::write(parent.join("cgroup.subtree_control"), "+memory")?;
                    }
                    std::fs::write(parent.join(mount.version.limit_file()), limit.to_string())
                })
                .and_then(|()| std::fs::create_dir(&child));
            let cgroup = TestCgroup { parent, child };
            match made {
                Ok(()) => return cgroup,
                Err(e) => tried.push(format!("{}: {e}", cgroup.parent.display())),
            }
        }
        panic!("cannot make a memory cgroup for the test (run as root): {tried:?}");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The kernel frees a cgroup a moment after its last process exits.
        for _ in 0..50 {
            let _ = std::fs::remove_dir(&self.child);
            if std::fs::remove_dir(&self.parent).is_ok() || !self.parent.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Without `--memory-window-bytes`, a node's byte budget is 40 % of the memory limit that applies
/// to its cgroup, also when the limit is set on a parent (a pod-level limit) and the node's own
/// cgroup sits below the mount's root (no cgroup namespace); the budget in use is shown in
/// `/metrics` and logged. A real process moved into a real memory cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_window_follows_the_cgroup_memory_limit() {
    let limit: u64 = 300 << 20;
    let cgroup = TestCgroup::make(limit);
    let c = Cluster::start(0, 1).await;
    let port = support::free_port();
    let procs = cgroup.child.join("cgroup.procs");
    let procs = procs.to_str().expect("utf-8 path");
    let mut args: Vec<String> = [
        "-c",
        r#"echo $$ > "$CGROUP_PROCS" && exec "$0" "$@""#,
        support::NODE_BIN,
        "--listen",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        format!("127.0.0.1:{port}"),
        "--redis-url".into(),
        c.redis.url_as(RedisRole::ChatServer),
        "--log-url".into(),
        c.log_list(),
    ]);
    args.extend(support::with_auth(&[]));
    let mut node = support::Proc::spawn_env(
        "node-cgroup",
        "/bin/sh",
        args,
        &[("CGROUP_PROCS", procs)],
        port,
        c.dir.path(),
    );
    support::wait_ready(&node.url, Duration::from_secs(60)).await;
    let pid = node.pid().expect("running");
    let in_cgroup = std::fs::read_to_string(procs).unwrap_or_default();
    assert!(
        in_cgroup.lines().any(|l| l == pid.to_string()),
        "node {pid} not in {procs}: {in_cgroup:?}"
    );
    let text = metrics_text(&node.url).await;
    let budget = metric(&text, "chat_server_memory_window_budget_bytes");
    let want = limit / 100 * 40;
    assert_eq!(budget, want as f64, "limit {limit}: {text}");
    let held = metric(&text, "chat_server_memory_window_bytes ");
    assert_eq!(held, 0.0);
    let log = plain(&node.log_text());
    assert!(
        log.contains(&format!("memory_window_bytes={want}")),
        "{log}"
    );
    node.kill9();
    drop(cgroup);
}

/// A process log without its ANSI colour sequences (`ESC [ ... m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Item 9: in a 503 storm (the broker down, every write failing) a node logs a bounded number of
/// warnings: the "write failed" warning at most once per 10 s, the next one naming how many were
/// suppressed, while every request still gets its 503 and `broker_errors` in /metrics counts them
/// all. What was accepted before stays, and writes work again once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_logs_a_bounded_number_of_warnings() {
    let mut c = Cluster::start(1, 1).await;
    let url = c.nodes[0].url.clone();
    let (status, before) = support::post(&url, "storm", serde_json::json!({"text": "kept"})).await;
    assert_eq!(status, 201, "{before}");
    let warnings = |log: &str| log.lines().filter(|l| l.contains(" WARN ")).count();
    let logged_before = warnings(&plain(&c.nodes[0].log_text()));
    c.redis.kill();
    let started = std::time::Instant::now();
    let storm = 400;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut sent = 0;
    while sent < storm {
        let batch: Vec<_> = (0..16)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    support::post(&url, "storm", serde_json::json!({"text": format!("w{i}")})).await
                })
            })
            .collect();
        for b in batch {
            let (status, body) = b.await.expect("post");
            assert!(status == 503 || status == 504, "{status} {body}");
            *statuses.entry(status).or_default() += 1;
        }
        sent += 16;
    }
    // One more after the throttle's interval: logged, with the count of what was suppressed.
    let wait = Duration::from_secs(11).saturating_sub(started.elapsed());
    tokio::time::sleep(wait).await;
    let (status, _) = support::post(&url, "storm", serde_json::json!({"text": "last"})).await;
    assert_eq!(status, 503);
    let elapsed = started.elapsed().as_secs();
    let log = plain(&c.nodes[0].log_text());
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("write failed")).collect();
    let logged = warnings(&log) - logged_before;
    println!(
        "{} failed writes in {elapsed} s ({statuses:?}): {logged} warnings, {} of them 'write failed'",
        storm + 1,
        failed.len()
    );
    assert!(
        failed.len() as u64 <= 2 + elapsed / 10,
        "{} 'write failed' lines in {elapsed} s:\n{}",
        failed.len(),
        failed.join("\n")
    );
    let suppressed: u64 = failed
        .iter()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        suppressed + failed.len() as u64 >= storm as u64,
        "suppressed {suppressed} + logged {} < {storm}:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        logged <= 10 + 2 * elapsed as usize,
        "{logged} warnings in {elapsed} s"
    );
    let text = metrics_text(&url).await;
    assert!(metric(&text, "chat_server_broker_errors_total") >= (storm + 1) as f64);
    // The broker back: what was accepted is there, and writes are accepted again.
    c.redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) =
            support::post(&url, "storm", serde_json::json!({"text": "after"})).await;
        if status == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    support::wait_position(
        std::slice::from_ref(&url),
        "position",
        2,
        Duration::from_secs(30),
    )
    .await;
    let texts: Vec<String> = support::read_all(&url, "storm")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["kept", "after"]);
}
