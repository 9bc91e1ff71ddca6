//! Accepting and serving the HTTP/1.1 connections of both binaries (chat-server and
//! replication-log), with the bounds of issue 10 that sit below the router:
//!
//! - **Connection limit** (`--max-connections`): every accepted TCP connection holds a permit
//!   for as long as its socket lives, whether it carries HTTP requests, waits idle between
//!   them, or was upgraded to a WebSocket. Past the limit a connection is still read, briefly
//!   and by a small separate pool ([`REFUSING`]), to tell the client why: an HTTP request gets
//!   `503` with `Retry-After` and `Connection: close`; a WebSocket handshake is accepted and at
//!   once closed with 1013 "Try Again Later" (RFC 6455 §7.4.1, IANA close code registry),
//!   because a browser cannot read the status of a refused handshake (RFC 6455 §4.1: the client
//!   only learns that the connection failed, reported as 1006). Past that pool, connections are
//!   closed unanswered.
//! - **Header and idle timeout** (`--http-header-timeout`): hyper's `header_read_timeout` runs
//!   whenever a connection waits for a request head, from accept and again from the end of each
//!   response, so it closes a slowloris client (headers trickling in), a TCP connection that
//!   never sends anything, and a keep-alive connection idle between requests.
//! - **Header size**: at most [`HEADER_BUFFER_BYTES`] of buffered request head per connection
//!   (larger heads are answered `431`).
//!
//! Each request carries the client's address as [`ConnectInfo`] (for per-address limits). On
//! `stop`, no more connections are accepted, idle ones are closed, requests in flight finish,
//! and [`serve`] returns once every HTTP connection is closed (upgraded WebSockets are drained by
//! their owner).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::flag_values::seconds;
use crate::http::ApiError;

/// The connection flags both binaries share (docs/configuration.md).
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// TCP connections served at once (HTTP, idle keep-alive and WebSocket alike); past it an
    /// HTTP request is answered 503 with Retry-After and a WebSocket is closed with 1013.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Seconds a connection may take to send a complete request head, counted from accept and
    /// from the end of the previous response: closes slow-header clients, silent TCP
    /// connections and idle keep-alive connections.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub http_header_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            max_connections: 10_000,
            http_header_timeout: Duration::from_secs(10),
        }
    }
}

/// Bytes of request head buffered per connection at most (hyper's `max_buf_size`; a larger
/// head is answered `431`). Room for a long `Authorization` header and cookies.
pub const HEADER_BUFFER_BYTES: usize = 32 * 1024;

/// Connections over the limit that are answered at once; past that they are closed unanswered.
pub const REFUSING: usize = 64;
/// Deadline of a refused connection: reading its request, answering, and a WebSocket's close.
const REFUSE_DEADLINE: Duration = Duration::from_secs(2);
/// Close code of a WebSocket refused for the limit: "Try Again Later" (RFC 6455 §7.4.1).
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// `Retry-After` of a refused connection, in seconds.
const REFUSE_RETRY_AFTER: u32 = 1;

/// Connection metrics, registered into a binary's registry with [`ConnectionMetrics::register`].
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    /// TCP connections open now (each holds a permit of `--max-connections`).
    pub open: Gauge,
    /// Connections refused for the limit (answered 503 / 1013, or closed unanswered).
    pub refused: Counter,
}

impl ConnectionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections",
            "TCP connections open (HTTP, idle keep-alive and WebSocket), bounded by --max-connections",
            self.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused because --max-connections were open (503, WebSocket 1013, or closed)",
            self.refused.clone(),
        );
    }
}

/// A socket that holds a permit of the connection limit until it is dropped, wherever it goes
/// (hyper hands it to the WebSocket on upgrade).
struct Counted {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Option<Gauge>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Length of the listen queue asked for: connections the kernel completes before the accept
/// loop takes them, e.g. while thousands of clients reconnect at once after a node restarts.
/// Linux caps it at `net.core.somaxconn` (4096 by default since Linux 5.4; `listen(2)`);
/// tokio's own `TcpListener::bind` asks for 1024.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with `SO_REUSEADDR` and a listen queue of [`LISTEN_BACKLOG`].
///
/// Errors: the address is in use, not local, or the process may not bind it (`bind(2)`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `stop` is cancelled (see the module doc).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServeConfig,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) -> io::Result<()> {
    let max = usize::try_from(config.max_connections).unwrap_or(usize::MAX);
    let permits = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let refusal = refusal_router(config.max_connections);
    let connections = TaskTracker::new();
    let header_timeout = config.http_header_timeout;
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    if !is_connection_error(&e) {
                        warn!(error = %e, "accept failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics.open.inc();
                let io = Counted {
                    io: tcp,
                    _permit: permit,
                    open: Some(metrics.open.clone()),
                };
                let conn = serve_connection(io, peer, app.clone(), header_timeout, stop.clone());
                connections.spawn(conn);
            }
            Err(_) => {
                metrics.refused.inc();
                let Ok(permit) = refusing.clone().try_acquire_owned() else {
                    debug!(%peer, "over the connection limit and the refusal pool; closed");
                    continue;
                };
                let io = Counted {
                    io: tcp,
                    _permit: permit,
                    open: None,
                };
                let conn =
                    serve_connection(io, peer, refusal.clone(), REFUSE_DEADLINE, stop.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSE_DEADLINE, conn).await;
                });
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one incoming connection (the listener itself is fine).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection: HTTP/1.1 with upgrades, the header timeout, and a graceful close
/// once `stop` is cancelled.
async fn serve_connection(
    io: Counted,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let service = TowerToHyperService::new(app.map_request(
        move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.map(axum::body::Body::new)
        },
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HEADER_BUFFER_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "connection ended");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "connection ended");
    }
}

/// The answers of a connection over the limit.
fn refusal_router(max: u64) -> Router {
    let reason = format!(
        "connection limit reached: {max} connections are open (--max-connections); retry after \
         {REFUSE_RETRY_AFTER}s"
    );
    Router::new().fallback(
        move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
            refuse(ws.ok(), reason.clone())
        },
    )
}

/// `503` with `Retry-After` and `Connection: close`, or a WebSocket closed with 1013.
async fn refuse(ws: Option<WebSocketUpgrade>, reason: String) -> Response {
    match ws {
        Some(ws) => ws.on_upgrade(move |mut socket| async move {
            let close = Frame::Close(Some(CloseFrame {
                code: CLOSE_TRY_AGAIN,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(REFUSE_DEADLINE, async {
                if socket.send(close).await.is_ok() {
                    // Wait for the client's close (RFC 6455 §7.1.1), within the deadline.
                    while let Some(Ok(f)) = socket.recv().await {
                        if matches!(f, Frame::Close(_)) {
                            break;
                        }
                    }
                }
            })
            .await;
        }),
        None => {
            let mut resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
                .with_retry_after(REFUSE_RETRY_AFTER)
                .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}
