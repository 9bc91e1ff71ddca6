//! Test support: real processes on loopback. A [`Redis`](redis::RedisServer) per test, the
//! `replication-log` and `chat-server` binaries started on free ports ([`Proc`]), a [`Cluster`]
//! of them, and small HTTP helpers to talk to them like a client would.
#![allow(dead_code)]

pub mod proxy;
pub mod redis;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_server::message::Message;
use chat_wire::redis_acl::RedisRole;
use serde_json::Value;

pub use self::redis::RedisServer;

/// A port that was free a moment ago (shared with the other harnesses).
pub use chat_test_support::{free_port, tail};

/// A child process of the test, killed on drop; its output goes to a log file kept for failures.
pub struct Proc {
    pub name: String,
    pub url: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, program: &str, args: Vec<String>, port: u16, logs: &Path) -> Proc {
        Proc::spawn_env(name, program, args, &[], port, logs)
    }

    /// As [`Proc::spawn`], with these environment variables set.
    pub fn spawn_env(
        name: &str,
        program: &str,
        args: Vec<String>,
        env: &[(&str, &str)],
        port: u16,
        logs: &Path,
    ) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            program: PathBuf::from(program),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: logs.join(format!("{name}.log")),
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident set size of the running process in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// SIGKILL, no drain.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status, or `None` if
    /// it is still running (it is left running) or was not started.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Redis + replication-log replicas + chat-server nodes, all on loopback.
pub struct Cluster {
    pub redis: RedisServer,
    pub logs: Vec<Proc>,
    pub nodes: Vec<Proc>,
    pub dir: tempfile::TempDir,
    log_ports: Vec<u16>,
    pub node_args: Vec<String>,
    /// Extra flags of every replica.
    pub log_args: Vec<String>,
    /// The Redis URL the replicas use (a [`proxy::Proxy`] to cut them off), if not Redis's own.
    log_redis_url: Option<String>,
}

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_chat-server");
pub const LOG_BIN: &str = env!("CARGO_BIN_EXE_replication-log");

impl Cluster {
    /// Starts Redis, `replicas` log replicas and `nodes` nodes, and waits until all are ready.
    pub async fn start(nodes: usize, replicas: usize) -> Cluster {
        Cluster::start_with(nodes, replicas, &[]).await
    }

    /// As [`Cluster::start`], with extra flags for every node.
    /// Nodes run `--auth none` unless `node_args` name an `--auth` mode or a token key.
    pub async fn start_with(nodes: usize, replicas: usize, node_args: &[&str]) -> Cluster {
        Cluster::start_inner(RedisServer::start(), nodes, replicas, node_args, &[], false)
            .await
            .0
    }

    /// As [`Cluster::start`] with the broker reachable only over TLS: every node and replica
    /// connects with `rediss://` and `--redis-ca-file` (the CA that signed Redis's certificate).
    pub async fn start_tls(nodes: usize, replicas: usize) -> Cluster {
        let redis = RedisServer::start_tls();
        let ca = redis.ca_file().expect("TLS broker").display().to_string();
        let ca_args = ["--redis-ca-file", ca.as_str()];
        Cluster::start_inner(redis, nodes, replicas, &ca_args, &ca_args, false)
            .await
            .0
    }

    /// As [`Cluster::start_with`], with extra flags for every replica too.
    pub async fn start_with_logs(
        nodes: usize,
        replicas: usize,
        node_args: &[&str],
        log_args: &[&str],
    ) -> Cluster {
        Cluster::start_inner(
            RedisServer::start(),
            nodes,
            replicas,
            node_args,
            log_args,
            false,
        )
        .await
        .0
    }

    /// As [`Cluster::start_with`], with every replica reaching Redis through a [`proxy::Proxy`]
    /// that the test can pause to cut the replicas off while the nodes still reach Redis.
    pub async fn start_cut_off(
        nodes: usize,
        replicas: usize,
        node_args: &[&str],
    ) -> (Cluster, proxy::Proxy) {
        let (c, p) =
            Cluster::start_inner(RedisServer::start(), nodes, replicas, node_args, &[], true).await;
        (c, p.expect("proxy"))
    }

    async fn start_inner(
        redis: RedisServer,
        nodes: usize,
        replicas: usize,
        node_args: &[&str],
        log_args: &[&str],
        proxied: bool,
    ) -> (Cluster, Option<proxy::Proxy>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let proxy = if proxied {
            Some(proxy::Proxy::start(redis.port()).await)
        } else {
            None
        };
        let mut c = Cluster {
            redis,
            logs: Vec::new(),
            nodes: Vec::new(),
            log_ports: (0..replicas).map(|_| free_port()).collect(),
            dir,
            node_args: with_auth(node_args),
            log_args: log_args.iter().map(|s| s.to_string()).collect(),
            log_redis_url: proxy.as_ref().map(|p| p.url(RedisRole::ReplicationLog)),
        };
        for i in 0..replicas {
            let p = c.spawn_log(i);
            c.logs.push(p);
        }
        for p in &c.logs {
            wait_ready(&p.url, Duration::from_secs(30)).await;
        }
        for _ in 0..nodes {
            c.add_node().await;
        }
        (c, proxy)
    }

    pub fn log_list(&self) -> String {
        self.log_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn log_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("log-{i}"))
    }

    fn spawn_log(&self, i: usize) -> Proc {
        let port = self.log_ports[i];
        let data = self.log_dir(i);
        std::fs::create_dir_all(&data).expect("log data dir");
        let args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--redis-url".into(),
            self.log_redis_url
                .clone()
                .unwrap_or_else(|| self.redis.url_as(RedisRole::ReplicationLog)),
            "--data-dir".into(),
            data.display().to_string(),
            "--replica-id".into(),
            format!("log-{i}"),
            "--peer-url".into(),
            self.log_list(),
        ];
        let mut args = args;
        args.extend(self.log_args.iter().cloned());
        Proc::spawn(&format!("log-{i}"), LOG_BIN, args, port, self.dir.path())
    }

    /// Adds a replica with a new empty data dir that bootstraps from its peers.
    pub async fn add_log(&mut self) -> usize {
        let i = self.log_ports.len();
        self.log_ports.push(free_port());
        let p = self.spawn_log(i);
        self.logs.push(p);
        i
    }

    /// Starts one more node and waits until it is ready. Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let url = self.redis.url_as(RedisRole::ChatServer);
        self.add_node_via(&url).await
    }

    /// As [`Cluster::add_node`], the node reaching Redis at `redis_url` (a [`proxy::Proxy`]).
    pub async fn add_node_via(&mut self, redis_url: &str) -> usize {
        let i = self.nodes.len();
        let port = free_port();
        let mut args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--redis-url".into(),
            redis_url.to_owned(),
            "--log-url".into(),
            self.log_list(),
            "--node-id".into(),
            format!("node-{i}"),
        ];
        args.extend(self.node_args.iter().cloned());
        let p = Proc::spawn(&format!("node-{i}"), NODE_BIN, args, port, self.dir.path());
        wait_ready(&p.url, Duration::from_secs(60)).await;
        self.nodes.push(p);
        i
    }

    /// Prints every process log (for a failing test's output).
    pub fn dump_logs(&self) {
        for p in self.logs.iter().chain(self.nodes.iter()) {
            eprintln!("===== {} =====\n{}", p.name, tail(&p.log_text(), 60));
        }
    }
}

/// `args`, with `--auth none` added unless they choose an auth mode or a token key.
pub fn with_auth(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if !args.iter().any(|a| a.starts_with("--auth")) {
        out.extend(["--auth".to_owned(), "none".to_owned()]);
    }
    out
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Waits until `GET {url}/readyz` answers 200.
pub async fn wait_ready(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let client = http();
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET {url}/status` as JSON.
pub async fn status(url: &str) -> Value {
    http()
        .get(format!("{url}/status"))
        .send()
        .await
        .expect("status request")
        .json()
        .await
        .expect("status json")
}

/// Posts a message; returns (HTTP status, body).
pub async fn post(url: &str, channel: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{url}/channels/{channel}/messages"))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The text of a component's `/metrics` (a node's or a replica's).
pub async fn metrics_text(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Every message of a channel, paging with `after` until the end.
pub async fn read_all(url: &str, channel: &str) -> Vec<Message> {
    let client = http();
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page: Value = client
            .get(format!(
                "{url}/channels/{channel}/messages?after={after}&limit=10000"
            ))
            .send()
            .await
            .expect("read page")
            .json()
            .await
            .expect("page json");
        let msgs: Vec<Message> =
            serde_json::from_value(page["messages"].clone()).expect("messages");
        if msgs.is_empty() {
            return all;
        }
        after = page["next"].as_u64().expect("next");
        all.extend(msgs);
    }
}

/// A replica's whole `/snapshot` body (NDJSON), as sent.
pub async fn snapshot_text(url: &str) -> String {
    http()
        .get(format!("{url}/snapshot?after=0"))
        .send()
        .await
        .expect("snapshot")
        .text()
        .await
        .expect("snapshot body")
}

/// A replica's whole history via `/snapshot`.
pub async fn snapshot(url: &str) -> Vec<Message> {
    let body = snapshot_text(url).await;
    body.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("snapshot line"))
        .collect()
}

/// Waits until every URL's `/status` shows `position >= target`.
pub async fn wait_position(urls: &[String], field: &str, target: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for url in urls {
        loop {
            let s = status(url).await;
            if s[field].as_u64().unwrap_or(0) >= target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} stuck at {s} (want {field} >= {target})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The whole history of a node, merged from all its channels, in position order.
pub async fn node_history(url: &str, channels: &[String]) -> BTreeMap<u64, Message> {
    let mut all = BTreeMap::new();
    for c in channels {
        for m in read_all(url, c).await {
            let position = m.position;
            assert!(
                all.insert(position, m).is_none(),
                "{url}: position {position} twice"
            );
        }
    }
    all
}
