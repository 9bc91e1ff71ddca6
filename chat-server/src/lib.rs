//! chat-cluster data plane.
//!
//! # Layout
//! The `/status` documents of both binaries and their phases are defined once in the `chat-wire`
//! crate (`chat-server/wire`), which the operator decodes too; `node::Phase`, `node::NodeStatus`,
//! `log::Phase` and `log::ReplicaStatus` are its types.
//! - [`message`]: the message record, its JSON form and the contract's validation rules.
//! - [`broker`]: the Redis broker — key names, write/anchor Lua scripts, stream reads.
//! - [`protocol`]: the replication protocol's decisions as pure functions (gaps, page coverage,
//!   anchoring after a broker data loss, resume points).
//! - [`http`]: HTTP pieces both services share (JSON errors, page queries, `/metrics`).
//! - [`log_client`]: client of the replication log's HTTP API (snapshots, pages, status).
//! - [`telemetry`]: tracing output (`RUST_LOG_FORMAT=json`; `LOG_FORMAT` deprecated) and
//!   redaction of credentials in logged URLs.
//! - [`shutdown`]: SIGTERM/SIGINT as one cancellation token.
//! - [`backoff`]: exponential backoff between retries, cut short by shutdown.
//! - [`config`]: flags and environment variables of the binaries.
//! - [`cgroup`]: the memory limit of the process's cgroup (the default window budget).
//! - [`flag_values`]: value parsers the flag structs share (seconds).
//! - [`node`]: a chat-server node's state (in-memory window, cursor, phase), its `/status` and its
//!   follower.
//! - [`auth`]: who may do what: `--auth`, JWT connection tokens, channel permissions, the
//!   Origin check, the data plane's internal token.
//! - [`api`]: the chat-server's HTTP and WebSocket API.
//! - [`ui`]: the chat page served at `/`.
//! - [`server`]: running a node: follower + API + graceful shutdown.
//! - [`serve`]: accepting and serving HTTP connections: connection limit, header/idle timeout.
//! - [`limits`]: rate limits (per WebSocket connection, per client address), replica read
//!   concurrency, a broker out of memory.
//! - [`log`]: the replication log: on-disk store, stream follower, HTTP API, `replication-log` CLI.
pub mod api;
pub mod auth;
pub mod backoff;
pub mod broker;
pub mod cgroup;
pub mod config;
pub mod flag_values;
pub mod http;
pub mod limits;
pub mod log;
pub mod log_client;
pub mod message;
pub mod node;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod ui;
