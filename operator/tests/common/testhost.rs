//! A "test host" for the tests that need the real data plane behind pod IPs: the API server
//! refuses to proxy to loopback, so a test makes a network namespace with a veth to the host and
//! a few addresses, runs Debian's `redis-server` and the workspace's `replication-log` and
//! `chat-server` binaries in it, and plays kubelet by giving Pods those addresses.
//!
//! Needs root, `ip` (iproute2), `redis-server`, and the data-plane binaries next to the
//! operator's (`cargo build -p chat-server --bins`; `scripts/test` builds the workspace's bins).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Operator;

/// A data-plane binary of this workspace: it sits next to the operator binary being tested.
pub fn bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_chat-cluster-operator"))
        .with_file_name(name)
        .with_extension(std::env::consts::EXE_EXTENSION);
    assert!(
        path.exists(),
        "{} is missing: build the data plane first (`cargo build -p chat-server --bins`)",
        path.display()
    );
    path
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One process running in the test host, its output in a file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Names and addresses of one test host.
pub struct HostConfig {
    /// The network namespace.
    pub netns: &'static str,
    /// The host's end of the veth.
    pub host_if: &'static str,
    /// The namespace's end of the veth.
    pub ns_if: &'static str,
    /// The host's address on the veth (a /24).
    pub host_addr: &'static str,
    /// The namespace's addresses (same /24): the "pod IPs".
    pub addrs: &'static [&'static str],
}

/// A network namespace with a veth to the host and the processes the test started in it.
/// Dropping it kills them and deletes the namespace and veth (printing their logs when the test
/// failed).
pub struct TestHost {
    config: HostConfig,
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl TestHost {
    /// Creates the namespace, the veth and the addresses.
    pub fn start(config: HostConfig) -> TestHost {
        // A previous run killed before its Drop may have left these behind.
        ip(&["link", "del", config.host_if]);
        ip(&["netns", "del", config.netns]);
        let (netns, host_if, ns_if) = (config.netns, config.host_if, config.ns_if);
        assert!(ip(&["netns", "add", netns]), "ip netns add (needs root)");
        assert!(ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", ns_if
        ]));
        assert!(ip(&["link", "set", ns_if, "netns", netns]));
        let host_cidr = format!("{}/24", config.host_addr);
        assert!(ip(&["addr", "add", &host_cidr, "dev", host_if]));
        assert!(ip(&["link", "set", host_if, "up"]));
        for addr in config.addrs {
            let cidr = format!("{addr}/24");
            assert!(ip(&["-n", netns, "addr", "add", &cidr, "dev", ns_if]));
        }
        assert!(ip(&["-n", netns, "link", "set", ns_if, "up"]));
        assert!(ip(&["-n", netns, "link", "set", "lo", "up"]));
        TestHost {
            config,
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Runs `program args` inside the namespace (`ip netns exec` execs it: the child is it).
    pub fn spawn(&mut self, name: &str, program: &PathBuf, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("process log");
        let err = out.try_clone().expect("process log");
        let child = Command::new("ip")
            .args(["netns", "exec", self.config.netns])
            .arg(program)
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push(Proc {
            name: name.into(),
            child,
            log,
        });
    }

    fn data_dir(&self, name: &str) -> String {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("data dir");
        dir.display().to_string()
    }

    /// Redis on the namespace's loopback, without persistence.
    pub fn start_redis(&mut self) {
        let dir = self.data_dir("redis");
        let redis = PathBuf::from("redis-server");
        self.spawn(
            "redis",
            &redis,
            &[
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ],
        );
    }

    /// A replication-log replica on `listen`, bootstrapping from `peer` when given.
    pub fn start_log(&mut self, id: &str, listen: &str, peer: Option<&str>) {
        let data = self.data_dir(id);
        let mut args = vec![
            "--listen",
            listen,
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--data-dir",
            &data,
            "--replica-id",
            id,
        ];
        if let Some(peer) = peer {
            args.extend(["--peer-url", peer]);
        }
        self.spawn(id, &bin("replication-log"), &args);
    }

    /// A chat-server on `ip:8080` reading the log at `log_url`.
    pub fn start_chat_server(&mut self, id: &str, ip: &str, log_url: &str) {
        self.start_chat_server_on(id, &format!("{ip}:8080"), log_url);
    }

    /// A chat-server listening on `listen` (`ip:port`) instead of the pods' port 8080.
    pub fn start_chat_server_on(&mut self, id: &str, listen: &str, log_url: &str) {
        self.spawn(
            id,
            &bin("chat-server"),
            &[
                "--listen",
                listen,
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--log-url",
                log_url,
                "--node-id",
                id,
                "--auth",
                "none",
            ],
        );
    }

    fn dump_logs(&self) {
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            eprintln!("===== {} =====\n{}", p.name, tail(&text, 40));
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        ip(&["link", "del", self.config.host_if]);
        ip(&["netns", "del", self.config.netns]);
    }
}

/// Prints the operator's log when the test fails.
pub struct DumpOnPanic<'a>(pub &'a Operator);

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== operator =====\n{}", tail(&self.0.log_text(), 60));
        }
    }
}

pub use chat_test_support::tail;

/// A minimal HTTP/1.0 request to `addr` (a test-host address): status code and body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Plays kubelet: the pod runs at `pod_ip` with its containers ready, and with `ready` its Ready
/// condition True too (false: Ready is left to wait, e.g. for a readiness gate).
pub async fn run_pod(pods: &Api<Pod>, name: &str, pod_ip: &str, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut conditions =
        vec![json!({"type": "ContainersReady", "status": "True", "lastTransitionTime": now})];
    if ready {
        conditions.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": now}));
    }
    let patch = json!({"status": {
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": conditions,
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("pod status");
}
