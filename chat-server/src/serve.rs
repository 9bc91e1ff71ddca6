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
//! - **Connection limit per client address** (`--max-connections-per-address`, 0 = off, the
//!   default): the connections open from one address (IPv6: one /64, keyed as the rate limits
//!   are by [`crate::limits::address_key`]) are counted, and one past the limit is refused exactly
//!   as above (503 / 1013, with a reason naming this flag). Off by default because behind a
//!   Service load balancer, an ingress or any proxy that hides client addresses every client
//!   shares one address, and the limit would then cap the whole node. The count is bounded: an
//!   address is in the map only while it has a connection open (at most `--max-connections`
//!   entries), and leaves it when its last connection closes.
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

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
use prometheus_client::metrics::family::Family;
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
use crate::limits::{LimitLabel, address_key};

/// The connection flags both binaries share (docs/configuration.md).
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// TCP connections served at once (HTTP, idle keep-alive and WebSocket alike); past it an
    /// HTTP request is answered 503 with Retry-After and a WebSocket is closed with 1013.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// TCP connections served at once from one client address (IPv6: one /64); past it the
    /// connection is refused as over `--max-connections` (0, the default: no limit). Off by
    /// default because behind a Service load balancer, an ingress or any proxy that hides client
    /// addresses every client shares one address; set it where nodes see real client addresses.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub max_connections_per_address: u64,
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
            max_connections_per_address: 0,
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

/// The `limit` label of a connection refused by `--max-connections`.
pub const REFUSED_TOTAL: &str = "max_connections";
/// The `limit` label of a connection refused by `--max-connections-per-address`.
pub const REFUSED_PER_ADDRESS: &str = "max_connections_per_address";

/// Connection metrics, registered into a binary's registry with [`ConnectionMetrics::register`].
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    /// TCP connections open now (each holds a permit of `--max-connections`).
    pub open: Gauge,
    /// Connections refused (answered 503 / 1013, or closed unanswered), by the limit that
    /// refused them: [`REFUSED_TOTAL`] or [`REFUSED_PER_ADDRESS`].
    pub refused: Family<LimitLabel, Counter>,
    /// Client addresses (IPv6: /64 prefixes) with a connection open, counted while
    /// `--max-connections-per-address` is set (0 otherwise).
    pub addresses: Gauge,
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
            "Connections refused (503, WebSocket 1013, or closed), by limit: max_connections or max_connections_per_address",
            self.refused.clone(),
        );
        registry.register(
            "connection_addresses",
            "Client addresses with a connection open, counted for --max-connections-per-address",
            self.addresses.clone(),
        );
    }

    fn refuse(&self, limit: &'static str) {
        self.refused.get_or_create(&LimitLabel { limit }).inc();
    }
}

/// Whether one more connection from an address with `open` connections open is admitted under a
/// limit of `max` per address (0: no limit).
pub fn admits_address(open: u32, max: u32) -> bool {
    max == 0 || open < max
}

/// Connections open per client address (see the module doc). Cheap to clone.
#[derive(Debug, Clone)]
struct PerAddress {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    addresses: Gauge,
}

impl PerAddress {
    fn new(max: u64, addresses: Gauge) -> PerAddress {
        PerAddress {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            open: Arc::new(Mutex::new(HashMap::new())),
            addresses,
        }
    }

    /// A slot for one more connection from `ip`, held until dropped (`None` when the limit is
    /// off: nothing is counted); `Err` when the address already has `max` open.
    fn take(&self, ip: IpAddr) -> Result<Option<AddressSlot>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if !admits_address(*count, self.max) {
            return Err(());
        }
        *count += 1;
        self.addresses.set(open.len() as i64);
        Ok(Some(AddressSlot {
            key,
            owner: self.clone(),
        }))
    }
}

/// One connection's place in its address's count; leaving it removes the address once its last
/// connection is gone.
#[derive(Debug)]
struct AddressSlot {
    key: IpAddr,
    owner: PerAddress,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
        self.owner.addresses.set(open.len() as i64);
    }
}

/// A socket that holds a permit of the connection limit until it is dropped, wherever it goes
/// (hyper hands it to the WebSocket on upgrade).
struct Counted {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Its place in its address's count (`--max-connections-per-address`), when counted.
    _address: Option<AddressSlot>,
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
    let refusal = refusal_router(format!(
        "connection limit reached: {} connections are open (--max-connections); retry after \
         {REFUSE_RETRY_AFTER}s",
        config.max_connections
    ));
    let refusal_per_address = refusal_router(format!(
        "per-address connection limit reached: {} open from this address \
         (--max-connections-per-address); retry after {REFUSE_RETRY_AFTER}s",
        config.max_connections_per_address
    ));
    let per_address = PerAddress::new(
        config.max_connections_per_address,
        metrics.addresses.clone(),
    );
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
        let admitted = per_address
            .take(peer.ip())
            .map_err(|()| REFUSED_PER_ADDRESS)
            .and_then(|slot| {
                let permit = permits.clone().try_acquire_owned();
                permit.map(|p| (p, slot)).map_err(|_| REFUSED_TOTAL)
            });
        match admitted {
            Ok((permit, slot)) => {
                prepare(&tcp, peer);
                metrics.open.inc();
                let io = Counted {
                    io: tcp,
                    _permit: permit,
                    _address: slot,
                    open: Some(metrics.open.clone()),
                };
                let conn = serve_connection(io, peer, app.clone(), header_timeout, stop.clone());
                connections.spawn(conn);
            }
            Err(limit) => {
                metrics.refuse(limit);
                let Ok(permit) = refusing.clone().try_acquire_owned() else {
                    debug!(%peer, "over the connection limit and the refusal pool; closed");
                    continue;
                };
                let io = Counted {
                    io: tcp,
                    _permit: permit,
                    _address: None,
                    open: None,
                };
                let answer = if limit == REFUSED_PER_ADDRESS {
                    refusal_per_address.clone()
                } else {
                    refusal.clone()
                };
                let conn = serve_connection(io, peer, answer, REFUSE_DEADLINE, stop.clone());
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

/// The answers of a connection over a limit, giving `reason`.
fn refusal_router(reason: String) -> Router {
    Router::new().fallback(
        move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
            refuse(ws.ok(), reason.clone())
        },
    )
}

/// Bytes a close frame's reason may hold: a control frame carries at most 125 bytes, two of them
/// the code (RFC 6455 §5.5).
const CLOSE_REASON_BYTES: usize = 123;

/// `reason` cut to [`CLOSE_REASON_BYTES`] at a character boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// `503` with `Retry-After` and `Connection: close`, or a WebSocket closed with 1013.
async fn refuse(ws: Option<WebSocketUpgrade>, reason: String) -> Response {
    match ws {
        Some(ws) => ws.on_upgrade(move |mut socket| async move {
            let close = Frame::Close(Some(CloseFrame {
                code: CLOSE_TRY_AGAIN,
                reason: close_reason(&reason).into(),
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

/// Sets up an accepted connection: `TCP_NODELAY`. Every response and WebSocket frame is written
/// whole when it is ready (pushed frames are batched before they are written), so Nagle's
/// algorithm (RFC 896) would only hold a small write back until the client's delayed ACK of the
/// previous one came (RFC 1122 §4.2.3.2: up to 500 ms, 40 ms on Linux): measured, a WebSocket
/// delivery's p50 at 5,000 msg/s was 6.8 ms with Nagle on and batched frames, 1.5 ms with it off
/// (BENCHMARKS.md).
fn prepare(tcp: &TcpStream, peer: SocketAddr) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(%peer, error = %e, "could not set TCP_NODELAY");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        assert!(!tcp.nodelay().unwrap(), "the kernel's default changed");
        prepare(&tcp, peer);
        assert!(tcp.nodelay().unwrap());
    }

    /// Connections open from an address and the limit → admitted.
    #[test]
    fn admits_address_table() {
        let table = [
            (0, 0, true),
            (1_000_000, 0, true),
            (0, 1, true),
            (1, 1, false),
            (2, 3, true),
            (3, 3, false),
            (4, 3, false),
        ];
        for (open, max, want) in table {
            assert_eq!(admits_address(open, max), want, "open {open} max {max}");
        }
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = format!("{}é{}", "x".repeat(122), "y".repeat(50));
        let table = [("short", "short"), (&long[..], &"x".repeat(122)[..])];
        for (reason, want) in table {
            assert_eq!(close_reason(reason), want);
        }
        assert_eq!(close_reason(&"z".repeat(200)).len(), CLOSE_REASON_BYTES);
    }

    /// Slots count per address (an IPv6 /64 as one), refuse past the limit, and leave no entry
    /// once an address's last connection is gone.
    #[test]
    fn per_address_slots_are_counted_and_forgotten() {
        let gauge = Gauge::default();
        let limit = PerAddress::new(2, gauge.clone());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let a_too: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let b: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limit.take(a).unwrap();
        let second = limit.take(a_too).unwrap();
        assert!(limit.take(a).is_err(), "a third from the same /64");
        let other = limit.take(b).unwrap();
        assert_eq!(gauge.get(), 2);
        drop(first);
        let third = limit.take(a).unwrap();
        drop((second, third, other));
        assert_eq!(gauge.get(), 0);
        assert!(limit.open.lock().unwrap().is_empty());
        // Off: nothing counted.
        let off = PerAddress::new(0, Gauge::default());
        assert!((0..10).all(|_| off.take(b).is_ok_and(|s| s.is_none())));
        assert!(off.open.lock().unwrap().is_empty());
    }
}
