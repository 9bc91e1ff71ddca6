//! `chat-server`: a node of the chat cluster (see `chat_server::server`).

use std::process::ExitCode;

use chat_server::config::NodeConfig;

/// mimalloc: every message is parsed from Redis replies into many small allocations; glibc's
/// malloc/free was a quarter of this process's CPU under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config: NodeConfig = chat_server::config::parse_or_exit("chat-server");
    if let Err(reason) = config.check() {
        eprintln!("chat-server: {reason}");
        return ExitCode::from(2);
    }
    let access = match config.auth.access() {
        Ok(access) => access,
        Err(reason) => {
            eprintln!("chat-server: {reason}");
            return ExitCode::from(2);
        }
    };
    let broker = match chat_server::broker::BrokerEndpoint::from_flags(
        config.redis_url.clone(),
        config.redis_ca_file.as_deref(),
    ) {
        Ok(broker) => broker,
        Err(reason) => {
            eprintln!("chat-server: {reason}");
            return ExitCode::from(2);
        }
    };
    chat_server::telemetry::init_logging();
    let listener = match chat_server::serve::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chat-server: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = chat_server::shutdown::on_signal();
    match chat_server::server::run(config, access, broker, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-server: {e}");
            ExitCode::FAILURE
        }
    }
}
