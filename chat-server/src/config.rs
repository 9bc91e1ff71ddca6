//! Command-line flags and environment variables of the data-plane binaries (documented in docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use crate::flag_values::{seconds, seconds_or_zero};

/// A chat-server node: serves users over HTTP and WebSocket, writes through the Redis broker and
/// follows its stream, bootstrapping from the replication log.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-server", version)]
pub struct NodeConfig {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The Redis broker: `redis://[user:password@]host:port`, or `rediss://…` for TLS.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PEM CA bundle that signs the broker's TLS certificate, for a `rediss://` URL (default: the
    /// system's roots). Refused with a plain `redis://` URL.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Replication-log replicas, comma-separated; the first that answers is used.
    #[arg(
        long = "log-url",
        env = "REPLICATION_LOG_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub log_url: String,
    /// This node's name in `/status` and logs (default: the host name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Longest message text, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_message_bytes: u64,
    /// Messages kept in memory per channel; older history is read from the replication log.
    #[arg(long, env = "MEMORY_WINDOW", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_window: u64,
    /// Bytes of messages kept in memory over all channels (each message counted as its payload
    /// plus 160 bytes); default: 40 % of the memory limit of the process's cgroup (the lowest
    /// on the way up: container or pod; cgroup v2 or v1), or 256 MiB when there is none.
    #[arg(long, env = "MEMORY_WINDOW_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_window_bytes: Option<u64>,
    /// Channels a node accepts writes to; a write that would create one more is refused (409).
    #[arg(long, env = "MAX_CHANNELS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_channels: u64,
    /// Messages a WebSocket subscriber may fall behind before it is disconnected.
    #[arg(long, env = "WS_QUEUE", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ws_queue: u64,
    /// Seconds a WebSocket write may take; a client that takes no frame for that long is closed
    /// with 4008 (or dropped when not even a close frame goes through).
    #[arg(long, env = "WS_WRITE_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub ws_write_timeout: Duration,
    /// Seconds between WebSocket pings.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "30", value_parser = seconds)]
    pub ws_ping_interval: Duration,
    /// Seconds a WebSocket client may send no frame (not even a pong) before it is closed with
    /// 4009; should be more than the ping interval plus a round trip.
    #[arg(long, env = "WS_PING_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub ws_ping_timeout: Duration,
    /// Seconds a shutting-down node waits for its WebSockets to finish their close handshake
    /// (after a close 1001) before it exits; keep it below the orchestrator's grace period.
    #[arg(long, env = "WS_DRAIN_TIMEOUT", default_value = "5", value_parser = seconds)]
    pub ws_drain_timeout: Duration,
    /// Seconds a node keeps serving after SIGTERM with `/readyz` answering 503, before it stops
    /// accepting: time for Kubernetes to take it out of the Service's endpoints, so no request
    /// is sent to a node that no longer accepts (0: stop at once). The operator sets 5.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0", value_parser = seconds_or_zero)]
    pub shutdown_delay: Duration,
    #[command(flatten)]
    pub serve: crate::serve::ServeConfig,
    #[command(flatten)]
    pub limits: crate::limits::NodeLimitConfig,
    #[command(flatten)]
    pub auth: crate::auth::AuthFlags,
}

impl NodeConfig {
    /// Checks the flags that bound each other: the ping timeout must leave room for at least
    /// one ping and its answer, so it must exceed the ping interval.
    pub fn check(&self) -> Result<(), String> {
        if self.ws_ping_timeout <= self.ws_ping_interval {
            return Err(format!(
                "--ws-ping-timeout ({}s) must be more than --ws-ping-interval ({}s)",
                self.ws_ping_timeout.as_secs_f64(),
                self.ws_ping_interval.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Share of the container's memory limit the default byte budget takes, in percent. The window
/// costs up to 1.1 × its budget (docs/architecture.md), leaving the rest of the limit to the
/// process, WebSocket queues and pages in flight.
pub const MEMORY_BUDGET_PERCENT: u64 = 40;
/// Byte budget when the container has no memory limit: 256 MiB.
pub const UNLIMITED_MEMORY_BUDGET: u64 = 256 << 20;

impl NodeConfig {
    /// The byte budget of the memory window: `--memory-window-bytes`, else derived from the
    /// memory limit of the process's cgroup ([`crate::cgroup::memory_limit`]) by
    /// [`default_memory_budget`].
    pub fn memory_window_bytes(&self) -> u64 {
        self.memory_window_bytes
            .unwrap_or_else(|| default_memory_budget(crate::cgroup::memory_limit()))
    }
}

/// The default byte budget: [`MEMORY_BUDGET_PERCENT`] of the memory limit, or
/// [`UNLIMITED_MEMORY_BUDGET`] without one; at least 1 MiB.
pub fn default_memory_budget(limit: Option<u64>) -> u64 {
    limit
        .map_or(UNLIMITED_MEMORY_BUDGET, |l| l / 100 * MEMORY_BUDGET_PERCENT)
        .max(1 << 20)
}

/// The machine's host name, the default identity of nodes and replicas.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Parses the command line of `program`; on a bad flag prints a one-line reason and exits 2
/// (`--help` and `--version` print as usual and exit 0).
pub fn parse_or_exit<T: Parser>(program: &str) -> T {
    match T::try_parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("bad arguments");
            eprintln!("{program}: {}", line.trim_start_matches("error: "));
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ping timeout must exceed the ping interval.
    #[test]
    fn ping_timeout_exceeds_the_interval() {
        let cases = [
            ("30", "60", true),
            ("0.2", "1", true),
            ("30", "30", false),
            ("30", "10", false),
        ];
        for (interval, timeout, ok) in cases {
            let config = NodeConfig::try_parse_from([
                "chat-server",
                "--ws-ping-interval",
                interval,
                "--ws-ping-timeout",
                timeout,
            ])
            .expect("flags");
            assert_eq!(config.check().is_ok(), ok, "{interval} {timeout}");
        }
        let defaults = NodeConfig::try_parse_from(["chat-server"]).expect("defaults");
        assert_eq!(defaults.check(), Ok(()));
    }

    /// Durations are positive seconds with fractions; anything else is a one-line error.
    #[test]
    fn seconds_parse() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("10", Some(Duration::from_secs(10))),
            ("0.25", Some(Duration::from_millis(250))),
            (" 2 ", Some(Duration::from_secs(2))),
            ("86400", Some(Duration::from_secs(86_400))),
            ("0", None),
            ("-1", None),
            ("86401", None),
            ("NaN", None),
            ("inf", None),
            ("10s", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(seconds(text).ok(), *want, "{text:?}");
        }
    }

    /// Memory limit → default byte budget.
    #[test]
    fn default_memory_budget_table() {
        let mib = 1 << 20;
        let table: [(Option<u64>, u64); 5] = [
            (None, 256 * mib),
            (Some(512 * mib), 512 * mib / 100 * 40),
            (Some(1024 * mib), 1024 * mib / 100 * 40),
            (Some(2 * mib), mib),
            (Some(100), mib),
        ];
        for (limit, want) in table {
            assert_eq!(default_memory_budget(limit), want, "{limit:?}");
        }
    }

    /// The flag wins over the derived default, and the old per-channel flag still parses.
    #[test]
    fn memory_window_flags_parse() {
        let c = NodeConfig::try_parse_from([
            "chat-server",
            "--memory-window",
            "50",
            "--memory-window-bytes",
            "1000000",
        ])
        .unwrap();
        assert_eq!(c.memory_window, 50);
        assert_eq!(c.memory_window_bytes(), 1_000_000);
    }
}
