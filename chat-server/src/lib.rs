//! chat-cluster data plane.
//!
//! # Layout
//! - [`message`]: the message record, its JSON form and the contract's validation rules.
//! - [`broker`]: the Redis broker — key names, write/anchor Lua scripts, stream reads.
//! - [`http`]: HTTP pieces both services share (JSON errors, page queries, `/metrics`).
//! - [`log_client`]: client of the replication log's HTTP API (snapshots, pages, status).
//! - [`telemetry`]: log set-up (`LOG_FORMAT=json`).
//! - [`shutdown`]: SIGTERM/SIGINT as one cancellation token.
pub mod broker;
pub mod http;
pub mod log_client;
pub mod message;
pub mod shutdown;
pub mod telemetry;
