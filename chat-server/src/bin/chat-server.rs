//! `chat-server`: a node of the chat cluster (see `chat_server::server`).

use std::process::ExitCode;

use chat_server::config::NodeConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config: NodeConfig = chat_server::config::parse_or_exit("chat-server");
    chat_server::telemetry::init_logging();
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chat-server: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = chat_server::shutdown::on_signal();
    match chat_server::server::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-server: {e}");
            ExitCode::FAILURE
        }
    }
}
