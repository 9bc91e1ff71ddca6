//! The `replication-log` command line: flags and environment variables (documented in docs/configuration.md), the
//! `forget-replica` subcommand, and running a replica (open the log, serve HTTP, follow the
//! broker) until SIGTERM drains it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::follower::{self, FollowError};
use super::store::{
    DEFAULT_BLOCK_RECORDS, DEFAULT_SEGMENT_BYTES, LogStore, OpenReport, StoreConfig, quarantine,
};
use super::{Replica, ReplicaSettings, api};
use crate::auth::InternalToken;
use crate::broker::{BrokerEndpoint, BrokerError};
use crate::config::host_name;
use crate::telemetry::redact_url;

/// How long open connections (snapshot streams) may hold up the exit after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A replication-log replica: follows the broker's stream into segment files on local disk and
/// serves them to chat-server nodes and peers.
#[derive(Debug, Clone, Parser)]
#[command(name = "replication-log", version)]
pub struct LogCli {
    #[command(subcommand)]
    pub command: Option<LogCommand>,
    #[command(flatten)]
    pub config: LogConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LogCommand {
    /// Removes a replica from the set whose persisted positions hold stream trimming back (for a
    /// replica that is gone for good). Logs what it did.
    ForgetReplica {
        /// The replica's id (its `--replica-id`).
        id: String,
        /// The Redis broker.
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// PEM CA bundle that signs the broker's TLS certificate, for a `rediss://` URL (default: the
        /// system's roots). Refused with a plain `redis://` URL.
        #[arg(long, env = "REDIS_CA_FILE")]
        redis_ca_file: Option<PathBuf>,
    },
}

/// Flags of a running replica.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Address to serve HTTP on.
    #[arg(long, env = "LOG_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// The Redis broker: `redis://[user:password@]host:port`, or `rediss://…` for TLS.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PEM CA bundle that signs the broker's TLS certificate, for a `rediss://` URL (default: the
    /// system's roots). Refused with a plain `redis://` URL.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Directory of the log's segment files.
    #[arg(long, env = "LOG_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// This replica's name in the broker's replica set, `/status` and logs (default: host name).
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Peer replicas, comma-separated: an empty replica copies the first with history, holes the
    /// stream no longer holds are copied from them. This replica's own URL may be listed.
    #[arg(long = "peer-url", env = "LOG_PEER_URLS", value_delimiter = ',')]
    pub peer_urls: Vec<String>,
    /// Stream entries kept below the lowest persisted position of all replicas when trimming.
    #[arg(long, env = "LOG_TRIM_KEEP", default_value_t = 10_000)]
    pub trim_keep: u64,
    /// Positions the broker may hand out beyond what this replica has persisted. The replica
    /// records each grant on disk before making it, so a broker that loses its data is
    /// re-anchored past every position it may have handed out; writes wait (503) once nobody has
    /// persisted within this many positions of the head.
    #[arg(long, env = "LOG_POSITION_LEASE", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub position_lease: u64,
    /// Anchor a broker that lost its data even while some `--peer-url` replicas cannot be asked
    /// for the limit they recorded. Off by default: an unreachable replica may have recorded a
    /// higher limit, and anchoring below it could hand a position out a second time. Turn it on
    /// (or drop the dead replica from `--peer-url`) only for a replica that is gone for good.
    #[arg(long, env = "LOG_ANCHOR_DESPITE_UNREACHABLE_PEERS")]
    pub anchor_despite_unreachable_peers: bool,
    /// Seconds at least between two reads of the broker's stream while following, from 0 (read
    /// again as soon as a read returns) to 1. What is written meanwhile is read, appended and
    /// fsynced as one batch: at thousands of messages a second this turns one read, one state
    /// check and one fsync per message or two into one per linger. It adds up to the linger to
    /// replication lag, and so to what a broker data loss can take (positions persisted by no
    /// replica yet) and to reads of history that left the nodes' memory; writes are acknowledged
    /// by the broker, not by the replicas.
    #[arg(long, env = "LOG_READ_LINGER", default_value = "0.005", value_parser = read_linger)]
    pub read_linger: Duration,
    /// Size past which a new segment file is started, in bytes.
    #[arg(long, env = "LOG_SEGMENT_BYTES", default_value_t = DEFAULT_SEGMENT_BYTES,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub segment_bytes: u64,
    #[command(flatten)]
    pub serve: crate::serve::ServeConfig,
    #[command(flatten)]
    pub reads: crate::limits::ReadLimitConfig,
    /// When the log refuses to open because of a damaged, misplaced or foreign segment: move that
    /// segment and every later one to `<data-dir>/quarantine/<unix seconds>/` and copy those
    /// positions again from the stream or peers (needs --peer-url). Off: refuse to start.
    #[arg(long, env = "LOG_REPAIR_FROM_PEERS")]
    pub repair_from_peers: bool,
    /// File holding the data plane's internal token: channel pages and `/snapshot` answer only
    /// requests carrying it (header `X-Internal-Token`), `/status` details likewise, and it is
    /// sent to peers. Unset: everything is open (logged as a warning).
    #[arg(long, env = "INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,
    /// The internal token itself (prefer the file, or an environment variable from a Secret).
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
}

/// The longest `--read-linger`: a replica's contact with the broker is judged by its reads
/// (cut off after 5 s without one), and what it reports (`head`, `lag`) is as of its last read.
const MAX_READ_LINGER: Duration = Duration::from_secs(1);

/// Parses `--read-linger`: seconds from 0 to [`MAX_READ_LINGER`], fractions allowed.
fn read_linger(text: &str) -> Result<Duration, String> {
    crate::flag_values::seconds_or_zero(text)
        .ok()
        .filter(|linger| *linger <= MAX_READ_LINGER)
        .ok_or_else(|| format!("expected 0 to 1 seconds, got {text:?}"))
}

/// Why a replica could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("refusing to start: {0}")]
    Open(FollowError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("forget-replica: {0}")]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Config(String),
}

/// Parses the command line; on a bad flag prints a one-line reason and exits 2 (help and version
/// print as usual and exit 0).
pub fn parse_or_exit() -> LogCli {
    crate::config::parse_or_exit("replication-log")
}

/// Runs what the command line asks for.
pub async fn main(cli: LogCli, shutdown: CancellationToken) -> Result<(), RunError> {
    match cli.command {
        Some(LogCommand::ForgetReplica {
            id,
            redis_url,
            redis_ca_file,
        }) => {
            let broker = BrokerEndpoint::from_flags(redis_url, redis_ca_file.as_deref())
                .map_err(RunError::Config)?;
            follower::forget_replica(&broker, &id).await?;
            Ok(())
        }
        None => run(cli.config, shutdown).await,
    }
}

/// Opens the log. With `--repair-from-peers` and peers, a refused segment and every later one
/// are moved aside (kept under `<data-dir>/quarantine/`) until the log opens; their positions are
/// then copied again from the stream or peers by the follower. Otherwise a refusal is returned.
async fn open_log(
    config: &LogConfig,
    store_config: StoreConfig,
) -> Result<(LogStore, OpenReport), RunError> {
    let repair = config.repair_from_peers && config.peer_urls.iter().any(|u| !u.trim().is_empty());
    if config.repair_from_peers && !repair {
        warn!("--repair-from-peers has no effect without --peer-url");
    }
    loop {
        let e = match follower::open_store(config.data_dir.clone(), store_config).await {
            Ok(opened) => return Ok(opened),
            Err(FollowError::Store(e)) if repair => e,
            Err(e) => return Err(RunError::Open(e)),
        };
        let Some(path) = e.refused_segment().map(Path::to_owned) else {
            return Err(RunError::Open(e.into()));
        };
        warn!(error = %e, "the log refuses to open; --repair-from-peers: moving the segment and every later one aside");
        let moved = quarantine(&config.data_dir, &path).map_err(|e| RunError::Open(e.into()))?;
        warn!(
            moved = ?moved,
            "moved aside (kept for inspection); their positions are copied again from the stream or peers"
        );
    }
}

/// Opens the log, serves the API and follows the broker until `shutdown`, then drains.
pub async fn run(config: LogConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let internal_token = InternalToken::load(
        config.internal_token_file.as_deref(),
        config.internal_token.as_deref(),
    )
    .map_err(RunError::Config)?;
    let broker =
        BrokerEndpoint::from_flags(config.redis_url.clone(), config.redis_ca_file.as_deref())
            .map_err(RunError::Config)?;
    if internal_token.is_none() {
        warn!(
            "no internal token (--internal-token-file / INTERNAL_TOKEN): channel pages, \
             /snapshot and /status details are served to anyone who reaches this replica"
        );
    }
    let listener = crate::serve::bind(config.listen).map_err(|source| RunError::Listen {
        addr: config.listen,
        source,
    })?;
    let store_config = StoreConfig {
        segment_bytes: config.segment_bytes,
        block_records: DEFAULT_BLOCK_RECORDS,
    };
    let (store, report) = open_log(&config, store_config).await?;
    let epoch = follower::read_epoch(&config.data_dir).map_err(|e| RunError::Open(e.into()))?;
    let limit = follower::read_limit(&config.data_dir).map_err(|e| RunError::Open(e.into()))?;
    info!(
        data_dir = %config.data_dir.display(),
        persisted = report.persisted,
        segments = report.segments,
        truncated_bytes = report.truncated_bytes,
        cluster_id = %report.cluster_id.map_or_else(|| "none".to_owned(), |id| id.to_string()),
        took_ms = report.took.as_millis() as u64,
        epoch = epoch.as_deref().unwrap_or("none"),
        "log opened"
    );
    let settings = ReplicaSettings {
        replica_id: config.replica_id.clone().unwrap_or_else(host_name),
        data_dir: config.data_dir.clone(),
        peers: config
            .peer_urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .cloned()
            .collect(),
        trim_keep: config.trim_keep,
        position_lease: config.position_lease,
        anchor_despite_unreachable_peers: config.anchor_despite_unreachable_peers,
        read_linger: config.read_linger,
        reads: crate::limits::ReplicaReads::new(&config.reads),
        internal_token,
    };
    let replica = Replica::new(settings, Arc::new(store), epoch);
    replica.set_limit(limit);
    replica
        .metrics()
        .open_seconds
        .set(report.took.as_secs_f64());
    let follower = tokio::spawn(follower::run(replica.clone(), broker, shutdown.clone()));
    info!(
        listen = %config.listen,
        replica_id = %replica.settings().replica_id,
        peers = ?replica.settings().peers.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
        "replication-log serving"
    );
    let serve = crate::serve::serve(
        listener,
        api::router(replica.clone()),
        &config.serve,
        replica.metrics().connections.clone(),
        shutdown.clone(),
    );
    tokio::select! {
        r = serve => r.map_err(RunError::Serve)?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown began; exiting anyway");
        }
    }
    let _ = follower.await;
    info!(
        persisted = replica.store().persisted(),
        "replication-log stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_linger_parse() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("0.005", Some(ms(5))),
            (" 0.25 ", Some(ms(250))),
            ("1", Some(ms(1000))),
            ("1.001", None),
            ("5", None),
            ("86400", None),
            ("-1", None),
            ("NaN", None),
            ("5ms", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(read_linger(text).ok(), *want, "{text:?}");
        }
    }
}
