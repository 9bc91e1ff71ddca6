//! `replication-log`: a replica of the chat cluster's durable history (see `chat_server::log`).

use std::process::ExitCode;

/// mimalloc: every message is parsed from Redis replies into many small allocations; glibc's
/// malloc/free was a quarter of this process's CPU under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = chat_server::log::cli::parse_or_exit();
    chat_server::telemetry::init_logging();
    let shutdown = chat_server::shutdown::on_signal();
    match chat_server::log::cli::main(cli, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "replication-log failed");
            eprintln!("replication-log: {e}");
            ExitCode::FAILURE
        }
    }
}
