//! Running a chat-server node: wires the config into a [`Node`], starts the follower and serves
//! the API until shutdown, then drains: for `--shutdown-delay` it keeps serving with `/readyz`
//! answering 503 (so Kubernetes takes it out of the Service first), then it stops accepting,
//! every WebSocket is closed with 1001 and its resume position, and the node waits up to
//! `--ws-drain-timeout` for them.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api;
use crate::auth::{Access, Authenticator};
use crate::broker::BrokerEndpoint;
use crate::config::{NodeConfig, host_name};
use crate::limits::{LimitMetrics, RateLimits, limit_posts};
use crate::log_client::LogClient;
use crate::node::{Node, NodeSettings, follower};
use crate::serve::serve;

/// Serves a node on `listener` until `shutdown` is cancelled, admitting clients by `access`
/// (built from `config.auth` by [`crate::auth::AuthFlags::access`]) and reaching the broker at
/// `broker` (built from `--redis-url` and `--redis-ca-file` by [`BrokerEndpoint::from_flags`]).
pub async fn run(
    config: NodeConfig,
    access: Access,
    broker: BrokerEndpoint,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let settings = NodeSettings {
        node_id: config.node_id.clone().unwrap_or_else(host_name),
        max_message_bytes: config.max_message_bytes as usize,
        memory_window: config.memory_window as usize,
        memory_window_bytes: usize::try_from(config.memory_window_bytes()).unwrap_or(usize::MAX),
        ws_queue: config.ws_queue as usize,
        ws_write_timeout: config.ws_write_timeout,
        ws_ping_interval: config.ws_ping_interval,
        ws_ping_timeout: config.ws_ping_timeout,
        max_channels: usize::try_from(config.max_channels).unwrap_or(usize::MAX),
        http_body_timeout: config.limits.http_body_timeout,
        rate_limits: RateLimits::new(&config.limits, LimitMetrics::default()),
    };
    match &access.authenticator {
        Authenticator::Anonymous => warn!(
            "--auth none: clients are anonymous; anyone who reaches this node may read and write \
             every channel under any author name"
        ),
        Authenticator::Token(verifier) => info!(
            algorithms = ?verifier.algorithms(),
            "--auth token: every client request needs a bearer token"
        ),
    }
    if access.internal.is_none() {
        warn!(
            "no internal token (--internal-token-file / INTERNAL_TOKEN): replicas are asked \
             without one, and /status shows its details to anyone"
        );
    }
    let log = LogClient::from_list(&config.log_url).with_internal_token(access.internal.clone());
    let node = Node::new(settings, log);
    // `shutdown` is the signal; `stop` ends serving, `--shutdown-delay` after it.
    let stop = CancellationToken::new();
    {
        let (node, stop, signal, delay) = (
            node.clone(),
            stop.clone(),
            shutdown.clone(),
            config.shutdown_delay,
        );
        tokio::spawn(async move {
            signal.cancelled().await;
            node.set_terminating();
            if !delay.is_zero() {
                info!(
                    seconds = delay.as_secs_f64(),
                    "not ready; serving on until the Service has dropped this node"
                );
                tokio::time::sleep(delay).await;
            }
            stop.cancel();
        });
    }
    let shutdown = stop;
    let follower = tokio::spawn(follower::run(node.clone(), broker, shutdown.clone()));
    info!(
        listen = %listener.local_addr()?,
        node_id = %node.settings().node_id,
        memory_window_bytes = node.settings().memory_window_bytes,
        "chat-server serving"
    );
    let sessions = api::Sessions::new(shutdown.clone());
    let connections = node.metrics().connections.clone();
    let rate_limits = node.settings().rate_limits.clone();
    let app = api::router(node, sessions.clone(), access).layer(
        axum::middleware::from_fn_with_state(rate_limits, limit_posts),
    );
    serve(listener, app, &config.serve, connections, shutdown.clone()).await?;
    // axum does not wait for upgraded connections: the WebSocket sessions are drained here.
    if !sessions.drain(config.ws_drain_timeout).await {
        warn!(
            open = sessions.open(),
            "WebSockets still open at the drain deadline; cutting them"
        );
    }
    let _ = follower.await;
    info!("chat-server stopped");
    Ok(())
}
