//! The replication log (`replication-log` binary): a durable, ordered copy of the broker's stream
//! on local disk, served to chat-server nodes and peers.
//!
//! - [`store`]: segment files, record framing, index, tail verification, group commit.
pub mod store;
