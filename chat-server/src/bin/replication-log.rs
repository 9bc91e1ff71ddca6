//! `replication-log`: a replica of the chat cluster's durable history (see `chat_server::log`).

use std::process::ExitCode;

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
