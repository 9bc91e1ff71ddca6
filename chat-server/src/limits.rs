//! What one client may do to a node or a replica (issue 10, "limits on what one client can
//! do"): this module owns the rate limits (token buckets from the `governor` crate, GCRA), the
//! bounded per-address state behind them, the concurrency limits of a replica's reads, the
//! recognition of a broker that ran out of memory, and the metrics and flags of all of these.
//! The connection limit and the HTTP timeouts live in [`crate::serve`].
//!
//! - Per WebSocket connection: `send` frames take a token from the connection's bucket
//!   (`--ws-send-rate`, `--ws-send-burst`); a frame without a token is answered with an `error`
//!   frame naming `retry_after_ms`, and a client that goes on sending a whole burst of refused
//!   frames in a row is closed with 1008 (policy violation, RFC 6455 §7.4.1).
//! - Per client address: every write, a `POST` or a WebSocket `send` frame, takes a token from
//!   the address's bucket (`--post-rate-per-address`, `--post-burst-per-address`), so opening
//!   more connections does not multiply what one client may write. Without a token a `POST` is
//!   answered `429` with `Retry-After` (RFC 6585 §4) and a `send` frame as above (its refusals
//!   count toward the same 1008 close). IPv6 addresses are keyed by their /64 prefix (one host
//!   usually owns a /64). The buckets are bounded: at most `--rate-limit-addresses` are kept;
//!   past that, full buckets are dropped (`retain_recent`), and addresses that still find no room
//!   share one overflow bucket.
//! - Per token subject: every write that carries a client `id` takes a token from its subject's
//!   bucket (`--id-write-rate-per-author`, `--id-write-burst-per-author`; `--auth token` only).
//!   Such a write leaves a dedupe record in the broker for 15 minutes, so this rate bounds what
//!   one author holds there: at most `burst + rate × 900` records per node (docs/operations.md,
//!   "When the broker runs out of memory"). Refused like a per-address write (429 with
//!   `Retry-After`, or an error frame with `retry_after_ms`). Anonymous authors are names the
//!   client picks, so they are not keyed: `--post-rate-per-address` bounds those clients.
//! - A replica serves at most `--max-snapshots` snapshots and `--max-page-reads` page reads at
//!   once, and a node at most its own `--max-page-reads` pages; past that the answer is `503`
//!   with `Retry-After`. A page keeps its permit until it is sent ([`hold_until_sent`]), for at
//!   most [`PAGE_SEND_TIMEOUT`] per chunk.
//! - Per token subject (`--auth token`): writes with an id (`--id-write-rate-per-author`) and
//!   all writes (`--write-rate-per-author`), each a token bucket; over either, `429`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::ApiError;

/// The per-client limits of a chat-server node (docs/configuration.md). A rate of 0 turns that
/// limit off.
#[derive(Debug, Clone, Args)]
pub struct NodeLimitConfig {
    /// Seconds a client may take to send a whole request body; a slower `POST` is answered 408
    /// and nothing is stored.
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "10", value_parser = crate::flag_values::seconds)]
    pub http_body_timeout: Duration,
    /// WebSocket `send` frames per second one connection may keep up (0: no limit).
    #[arg(long, env = "WS_SEND_RATE", default_value_t = 200)]
    pub ws_send_rate: u32,
    /// `send` frames a WebSocket connection may send at once above its rate; a client that goes
    /// on sending this many refused frames in a row is closed with 1008.
    #[arg(long, env = "WS_SEND_BURST", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_send_burst: u32,
    /// Writes per second one client address (IPv6: one /64) may keep up, `POST`s and WebSocket
    /// `send` frames together, over all its connections (0, the default: no limit). Off by default because behind a Service load balancer, an ingress or any proxy
    /// that hides client addresses every client shares one address, and one bucket would then
    /// throttle the whole node; set it where nodes see real client addresses.
    #[arg(long, env = "POST_RATE_PER_ADDRESS", default_value_t = 0)]
    pub post_rate_per_address: u32,
    /// Writes (`POST`s and `send` frames) one client address may send at once above its rate.
    #[arg(long, env = "POST_BURST_PER_ADDRESS", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..))]
    pub post_burst_per_address: u32,
    /// Client addresses whose buckets a node keeps at most (about 100 bytes each); addresses
    /// past that share one bucket of the same rate. Bounds the per-author buckets alike.
    #[arg(long, env = "RATE_LIMIT_ADDRESSES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit_addresses: u64,
    /// Writes with a client `id` per second one token subject may keep up on this node, `POST`s
    /// and `send` frames together (0: no limit; `--auth token` only). Each such write holds a
    /// dedupe record of about 200 bytes in the broker for 15 minutes, so one author holds at
    /// most `burst + rate × 900` of them per node.
    #[arg(long, env = "ID_WRITE_RATE_PER_AUTHOR", default_value_t = 10)]
    pub id_write_rate_per_author: u32,
    /// Writes with a client `id` one token subject may send at once above its rate.
    #[arg(long, env = "ID_WRITE_BURST_PER_AUTHOR", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub id_write_burst_per_author: u32,
    /// Writes of any kind per second one token subject may keep up on this node, `POST`s and
    /// `send` frames together (0: no limit; `--auth token` only). A write without an id still
    /// holds a dedupe record of about 200 bytes in the broker for 60 s, so one author holds at
    /// most `burst + rate × 60` of those per node.
    #[arg(long, env = "WRITE_RATE_PER_AUTHOR", default_value_t = 50)]
    pub write_rate_per_author: u32,
    /// Writes one token subject may send at once above `--write-rate-per-author`.
    #[arg(long, env = "WRITE_BURST_PER_AUTHOR", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_burst_per_author: u32,
    /// Channel pages (`GET /channels/{channel}/messages`) a node serves at once, each up to 1 MiB
    /// held until the HTTP server has taken its last 16 KiB chunk (a client that stops taking it
    /// loses it after 10 s); more are answered 503 with `Retry-After`.
    #[arg(long, env = "MAX_PAGE_READS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_page_reads: u32,
}

/// The read-concurrency flags of a replica (docs/configuration.md).
#[derive(Debug, Clone, Args)]
pub struct ReadLimitConfig {
    /// `/snapshot` responses a replica streams at once; more are answered 503 with Retry-After.
    #[arg(long, env = "MAX_SNAPSHOTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_snapshots: u32,
    /// Channel pages a replica reads at once; more are answered 503 with Retry-After.
    #[arg(long, env = "MAX_PAGE_READS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_page_reads: u32,
    /// Seconds a `/snapshot` response waits for its client to take the next chunk (the time
    /// between two successful writes, as nginx's `send_timeout`); a client that takes nothing for
    /// that long gets the response aborted and gives its slot among `MAX_SNAPSHOTS` back.
    #[arg(long, env = "SNAPSHOT_SEND_TIMEOUT", default_value = "30", value_parser = crate::flag_values::seconds)]
    pub snapshot_send_timeout: Duration,
}

/// Which limit refused a request (the `limit` label of `rate_limited`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// Metrics of the limits, registered into a binary's registry with [`LimitMetrics::register`].
#[derive(Debug, Clone, Default)]
pub struct LimitMetrics {
    /// Requests or frames refused, by limit: `post_per_address` (a `POST`), `ws_send` (a
    /// connection's bucket), `ws_send_per_address` (a `send` frame refused by its address's
    /// bucket), `id_writes_per_author` (a write with an id refused by its subject's bucket),
    /// `writes_per_author` (any write refused by its subject's write bucket), `snapshots` and
    /// `page_reads` (a replica's or a node's reads over their limit).
    pub refused: Family<LimitLabel, Counter>,
    /// WebSocket connections closed with 1008 for going on sending over their rate.
    pub ws_rate_closes: Counter,
    /// Client addresses with a bucket kept.
    pub addresses: Gauge,
    /// Token subjects with a bucket of id'd writes kept.
    pub authors: Gauge,
}

impl LimitMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Requests or WebSocket frames refused by a limit (429, 503 or an error frame), by limit",
            self.refused.clone(),
        );
        registry.register(
            "websocket_rate_limit_closes",
            "WebSocket connections closed with 1008 for sending a whole burst over their rate",
            self.ws_rate_closes.clone(),
        );
        registry.register(
            "rate_limit_addresses",
            "Client addresses whose rate-limit bucket is kept",
            self.addresses.clone(),
        );
        registry.register(
            "rate_limit_authors",
            "Token subjects whose bucket of writes with an id is kept",
            self.authors.clone(),
        );
    }

    fn refuse(&self, limit: &'static str) {
        self.refused.get_or_create(&LimitLabel { limit }).inc();
    }
}

/// Seconds to send in `Retry-After` for a wait: rounded up, at least 1 (RFC 9110 §10.2.3 takes
/// whole seconds).
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// The bucket key of a client address: an IPv4 address (also when written IPv4-mapped), or the
/// /64 prefix of an IPv6 address (RFC 4291 §2.5.4: hosts get a /64, so one client cannot
/// multiply its buckets by picking addresses inside it).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Which bucket refused a WebSocket `send` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// The connection's own bucket (`--ws-send-rate`).
    Connection,
    /// The client address's bucket, shared with its `POST`s and other connections
    /// (`--post-rate-per-address`).
    Address,
}

impl RefusedBy {
    /// The flag that sets the refusing rate, for error texts.
    pub fn flag(self) -> &'static str {
        match self {
            RefusedBy::Connection => "--ws-send-rate",
            RefusedBy::Address => "--post-rate-per-address",
        }
    }
}

/// What happens to a WebSocket `send` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendVerdict {
    /// Within the rate: answer it.
    Admit,
    /// Over a rate: answer with an error frame; the client may send again after `retry_after`.
    Refuse {
        retry_after: Duration,
        by: RefusedBy,
    },
    /// Over a rate `burst` times in a row: close with 1008.
    Close,
}

/// The verdict on a frame: `admitted` by both buckets or refused by one (with the wait), after
/// `refused_in_row` refusals in a row, for a connection bucket of `burst`.
pub fn send_verdict(
    admitted: Result<(), (Duration, RefusedBy)>,
    refused_in_row: u32,
    burst: u32,
) -> SendVerdict {
    match admitted {
        Ok(()) => SendVerdict::Admit,
        Err(_) if refused_in_row.saturating_add(1) >= burst => SendVerdict::Close,
        Err((retry_after, by)) => SendVerdict::Refuse { retry_after, by },
    }
}

/// The limits a node applies, built once from its flags. Cheap to clone.
#[derive(Clone)]
pub struct RateLimits(Arc<RateInner>);

struct RateInner {
    ws: Option<Quota>,
    ws_burst: u32,
    post_rate: u32,
    addresses: Option<KeyedBuckets<IpAddr>>,
    id_rate: u32,
    authors: Option<KeyedBuckets<String>>,
    write_rate: u32,
    writers: Option<KeyedBuckets<String>>,
    pages: Option<ReadLimit>,
    metrics: LimitMetrics,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("ws", &self.0.ws)
            .field("addresses", &self.0.addresses.as_ref().map(|a| a.quota))
            .finish()
    }
}

fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl RateLimits {
    pub fn new(config: &NodeLimitConfig, metrics: LimitMetrics) -> RateLimits {
        let addresses = quota(config.post_rate_per_address, config.post_burst_per_address)
            .map(|q| KeyedBuckets::new(q, config.rate_limit_addresses));
        let authors = quota(
            config.id_write_rate_per_author,
            config.id_write_burst_per_author,
        )
        .map(|q| KeyedBuckets::new(q, config.rate_limit_addresses));
        let writers = quota(config.write_rate_per_author, config.write_burst_per_author)
            .map(|q| KeyedBuckets::new(q, config.rate_limit_addresses));
        RateLimits(Arc::new(RateInner {
            ws: quota(config.ws_send_rate, config.ws_send_burst),
            ws_burst: config.ws_send_burst,
            post_rate: config.post_rate_per_address,
            addresses,
            id_rate: config.id_write_rate_per_author,
            authors,
            write_rate: config.write_rate_per_author,
            writers,
            pages: Some(ReadLimit::new(
                "node",
                "page_reads",
                config.max_page_reads,
                metrics.clone(),
            )),
            metrics,
        }))
    }

    /// No limits (tests of other parts).
    pub fn unlimited() -> RateLimits {
        RateLimits(Arc::new(RateInner {
            ws: None,
            ws_burst: 1,
            post_rate: 0,
            addresses: None,
            id_rate: 0,
            authors: None,
            write_rate: 0,
            writers: None,
            pages: None,
            metrics: LimitMetrics::default(),
        }))
    }

    pub fn metrics(&self) -> &LimitMetrics {
        &self.0.metrics
    }

    /// Takes a token for a `POST` from `ip`; `Err(wait)` when its bucket is empty.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Duration> {
        self.take_address(ip, "post_per_address")
    }

    /// Takes a token for a write with a client id by the token subject `subject` (see the module
    /// doc); `Err` is the `429` to answer (with `Retry-After`) when its bucket is empty.
    pub fn check_id_write(&self, subject: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.0.authors else {
            return Ok(());
        };
        let r = limiter.check(subject.to_owned());
        self.0.metrics.authors.set(limiter.keyed.len() as i64);
        r.map_err(|wait| {
            self.0.metrics.refuse("id_writes_per_author");
            let seconds = retry_after_secs(wait);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit: this author may send {} writes with an id per second \
                     (--id-write-rate-per-author); nothing was stored, retry after {seconds}s",
                    self.0.id_rate
                ),
            )
            .with_retry_after(seconds)
        })
    }

    /// A permit to serve one channel page (`--max-page-reads`), to hold until the page is sent
    /// ([`hold_until_sent`]); `None` when unlimited (tests of other parts); `503` with
    /// `Retry-After` when all are in use.
    pub fn page_read(&self) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        self.0
            .pages
            .as_ref()
            .map(ReadLimit::try_acquire)
            .transpose()
    }

    /// Takes a token for any write by the token subject `subject`; `Err` is the `429` to answer
    /// (with `Retry-After`) when its bucket is empty.
    pub fn check_write(&self, subject: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.0.writers else {
            return Ok(());
        };
        limiter.check(subject.to_owned()).map_err(|wait| {
            self.0.metrics.refuse("writes_per_author");
            let seconds = retry_after_secs(wait);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit: this author may send {} writes per second \
                     (--write-rate-per-author); nothing was stored, retry after {seconds}s",
                    self.0.write_rate
                ),
            )
            .with_retry_after(seconds)
        })
    }

    /// Takes a token from the bucket of `ip` (counting a refusal under `limit`).
    fn take_address(&self, ip: IpAddr, limit: &'static str) -> Result<(), Duration> {
        let Some(limiter) = &self.0.addresses else {
            return Ok(());
        };
        let r = limiter.check(address_key(ip));
        self.0.metrics.addresses.set(limiter.keyed.len() as i64);
        if r.is_err() {
            self.0.metrics.refuse(limit);
        }
        r
    }

    /// The buckets of a new WebSocket connection from `peer`: its own, and the address's (none
    /// when the address is unknown, as in tests that serve without [`ConnectInfo`]).
    pub fn connection(&self, peer: Option<IpAddr>) -> ConnectionLimiter {
        ConnectionLimiter {
            limiter: self.0.ws.map(RateLimiter::direct),
            address: peer.filter(|_| self.0.addresses.is_some()),
            limits: self.clone(),
            burst: self.0.ws_burst,
            refused_in_row: 0,
        }
    }
}

/// One WebSocket connection's buckets of `send` frames.
pub struct ConnectionLimiter {
    limiter: Option<DefaultDirectRateLimiter>,
    /// The client address whose shared bucket each frame also takes a token from.
    address: Option<IpAddr>,
    limits: RateLimits,
    burst: u32,
    refused_in_row: u32,
}

impl ConnectionLimiter {
    /// Takes a token for a `send` frame from the connection's bucket, then from its address's
    /// (see [`send_verdict`]). A frame the address refuses has spent its connection token: the
    /// connection's rate is then not the binding one.
    pub fn check(&mut self) -> SendVerdict {
        let metrics = &self.limits.0.metrics;
        let own = match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(l.clock().now()))
                .map_err(|wait| {
                    metrics.refuse("ws_send");
                    (wait, RefusedBy::Connection)
                }),
        };
        let admitted = own.and_then(|()| match self.address {
            None => Ok(()),
            Some(ip) => self
                .limits
                .take_address(ip, "ws_send_per_address")
                .map_err(|wait| (wait, RefusedBy::Address)),
        });
        let verdict = send_verdict(admitted, self.refused_in_row, self.burst);
        match verdict {
            SendVerdict::Admit => self.refused_in_row = 0,
            SendVerdict::Refuse { .. } => self.refused_in_row += 1,
            SendVerdict::Close => {
                metrics.ws_rate_closes.inc();
            }
        }
        verdict
    }
}

/// How often a full per-address map may be swept for buckets that are full again.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Buckets by key (client address or token subject), at most `max` kept (see the module doc).
struct KeyedBuckets<K: std::hash::Hash + Eq + Clone> {
    quota: Quota,
    keyed: DefaultKeyedRateLimiter<K>,
    /// The one bucket shared by addresses that found no room.
    overflow: DefaultDirectRateLimiter,
    max: usize,
    last_sweep: Mutex<Option<Instant>>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    fn new(quota: Quota, max: u64) -> KeyedBuckets<K> {
        KeyedBuckets {
            quota,
            keyed: RateLimiter::keyed(quota),
            overflow: RateLimiter::direct(quota),
            max: usize::try_from(max).unwrap_or(usize::MAX),
            last_sweep: Mutex::new(None),
        }
    }

    fn check(&self, key: K) -> Result<(), Duration> {
        if self.keyed.len() >= self.max {
            self.sweep();
        }
        let now = || self.keyed.clock().now();
        if self.keyed.len() >= self.max {
            // Still full: this address shares the overflow bucket (an address already kept
            // goes on using its own only when there is room again).
            return self.overflow.check().map_err(|n| n.wait_time_from(now()));
        }
        self.keyed
            .check_key(&key)
            .map_err(|n| n.wait_time_from(now()))
    }

    /// Drops the buckets that are full again (their addresses are indistinguishable from new
    /// ones), at most once per [`SWEEP_EVERY`].
    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.keyed.retain_recent();
        self.keyed.shrink_to_fit();
    }
}

/// Middleware of a node's router: a `POST` takes a token from its client address's bucket, or
/// is answered `429 Too Many Requests` with `Retry-After` (nothing is stored). The address is
/// the [`ConnectInfo`] that [`crate::serve`] puts on every request. The refusal comes before the
/// body is read, so it says `Connection: close` (RFC 9112 §9.6): the server closes the
/// connection after it, and a client that sends its body later learns that from the answer
/// instead of from a broken pipe on its next request.
pub async fn limit_posts(
    axum::extract::State(limits): axum::extract::State<RateLimits>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::POST
        && let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>()
        && let Err(wait) = limits.check_address(addr.ip())
    {
        let seconds = retry_after_secs(wait);
        let response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit: this client address may write {} messages per second \
                 (--post-rate-per-address); nothing was stored, retry after {seconds}s",
                limits.0.post_rate
            ),
        )
        .with_retry_after(seconds)
        .into_response();
        let mut response = response;
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return response;
    }
    next.run(request).await
}

/// Chunk size of a page answer sent under a read permit ([`hold_until_sent`]).
const SEND_CHUNK: usize = 16 * 1024;

/// How long the HTTP server may take to accept the next chunk of a page answer (the client is
/// not reading) before the answer is abandoned: its permit and its page are freed and the
/// connection is closed. 16 KiB per 10 s is far below any live client.
pub const PAGE_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `response`'s (fully built, in-memory) body in chunks of 16 KiB through a one-deep queue
/// fed by a task that holds `permit` and the page. The HTTP server takes a chunk only when its
/// write buffer (32 KiB, `serve::HEADER_BUFFER_BYTES`) has room, so a client that does not read
/// holds its read's permit — but for at most `send_timeout` per chunk: then the task drops the
/// page and the permit and ends the body with an error, which closes the connection. So the
/// permits bound how many pages sit in memory, and no client keeps one for longer than the
/// timeout. Each chunk is a copy, so the server never holds the page itself. Without a permit
/// the response is returned unchanged.
pub async fn hold_until_sent(
    response: Response,
    permit: Option<OwnedSemaphorePermit>,
    send_timeout: Duration,
) -> Response {
    let Some(permit) = permit else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("building the answer: {e}"),
            )
            .into_response();
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent_all = complete.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut rest = bytes;
        while !rest.is_empty() {
            // A copy, not a slice: a slice would keep the whole page's buffer alive for as long
            // as the server holds any chunk of it.
            let n = rest.len().min(SEND_CHUNK);
            let chunk = bytes::Bytes::copy_from_slice(&rest[..n]);
            bytes::Buf::advance(&mut rest, n);
            match tokio::time::timeout(send_timeout, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                // The connection is gone, or the client stopped taking the page: the page and
                // the permit go now; the body then ends with an error (below).
                Ok(Err(_)) | Err(_) => return,
            }
        }
        sent_all.store(true, std::sync::atomic::Ordering::Release);
    });
    // Chunks as they come; when the queue closes before the whole page went through, one error
    // item, so the server aborts the response (closes the connection) instead of ending a
    // truncated body as if it were whole.
    let chunks = futures::stream::unfold(Some(rx), move |rx| {
        let complete = complete.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(chunk) => Some((Ok(chunk), Some(rx))),
                None if complete.load(std::sync::atomic::Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client did not take the page in time",
                    )),
                    None,
                )),
            }
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(chunks))
}

/// How many reads of one kind a replica (or a node) serves at once. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadLimit {
    /// `replica` or `node`, for the refusal's words.
    who: &'static str,
    kind: &'static str,
    permits: Arc<Semaphore>,
    max: u32,
    metrics: LimitMetrics,
}

impl ReadLimit {
    /// `kind` names the limit in errors and in the `rate_limited` metric; `who` is the serving
    /// process (`replica`, `node`).
    pub fn new(
        who: &'static str,
        kind: &'static str,
        max: u32,
        metrics: LimitMetrics,
    ) -> ReadLimit {
        ReadLimit {
            who,
            kind,
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            metrics,
        }
    }

    /// A permit to serve one read, held until the read's answer is complete; `503` with
    /// `Retry-After: 1` when `max` are being served.
    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.refuse(self.kind);
            ApiError::unavailable(format!(
                "this {} serves at most {} {} at once; retry later",
                self.who,
                self.max,
                self.kind.replace('_', " ")
            ))
            .with_retry_after(1)
        })
    }

    /// Reads being served now.
    pub fn in_use(&self) -> u32 {
        self.max
            .saturating_sub(u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX))
    }
}

/// The read limits of a replica: snapshots and channel pages. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReplicaReads {
    pub snapshots: ReadLimit,
    pub pages: ReadLimit,
    /// `--snapshot-send-timeout`.
    pub snapshot_send_timeout: Duration,
    metrics: LimitMetrics,
}

impl ReplicaReads {
    pub fn new(config: &ReadLimitConfig) -> ReplicaReads {
        let metrics = LimitMetrics::default();
        ReplicaReads {
            snapshots: ReadLimit::new(
                "replica",
                "snapshots",
                config.max_snapshots,
                metrics.clone(),
            ),
            pages: ReadLimit::new(
                "replica",
                "page_reads",
                config.max_page_reads,
                metrics.clone(),
            ),
            snapshot_send_timeout: config.snapshot_send_timeout,
            metrics,
        }
    }

    /// The metrics of these limits, to register into the replica's registry.
    pub fn metrics(&self) -> &LimitMetrics {
        &self.metrics
    }
}

/// The text of a broker error when it says Redis is out of memory (`OOM command not allowed
/// when used memory > 'maxmemory'`, what Redis answers a write under the `noeviction` policy,
/// in whatever form the redis crate renders it),
/// turned into an error an operator can act on; `None` for any other error.
pub fn broker_out_of_memory(error: &str) -> Option<String> {
    // Redis says `-OOM command not allowed when used memory > 'maxmemory'.`; the redis crate
    // renders it as `"OOM": command not allowed when used memory > 'maxmemory'.`.
    let oom = error.contains("OOM") && error.contains("command not allowed when used memory");
    oom.then(|| {
        format!(
            "the broker is out of memory (Redis maxmemory reached): writes are refused until \
             memory frees (replicas trim the stream once they persist it; raise the broker's \
             memory limit if it stays full): {error}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every limit off (rates 0), small bounds; tests override what they exercise.
    fn test_config() -> NodeLimitConfig {
        NodeLimitConfig {
            http_body_timeout: Duration::from_secs(1),
            ws_send_rate: 0,
            ws_send_burst: 1,
            post_rate_per_address: 0,
            post_burst_per_address: 1,
            rate_limit_addresses: 10,
            id_write_rate_per_author: 0,
            id_write_burst_per_author: 1,
            write_rate_per_author: 0,
            write_burst_per_author: 1,
            max_page_reads: 32,
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let table = [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1000), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(30), 30),
        ];
        for (wait, want) in table {
            assert_eq!(retry_after_secs(wait), want, "{wait:?}");
        }
    }

    #[test]
    fn address_keys() {
        let table = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff::1", "2001:db8:1:2::"),
            ("::1", "::"),
        ];
        for (ip, want) in table {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_key(ip), want.parse::<IpAddr>().unwrap(), "{ip}");
        }
    }

    #[test]
    fn send_verdicts() {
        let wait = Duration::from_millis(5);
        let table = [
            (Ok(()), 0, 4, SendVerdict::Admit),
            (Ok(()), 3, 4, SendVerdict::Admit),
            (
                Err((wait, RefusedBy::Connection)),
                0,
                4,
                SendVerdict::Refuse {
                    retry_after: wait,
                    by: RefusedBy::Connection,
                },
            ),
            (
                Err((wait, RefusedBy::Address)),
                2,
                4,
                SendVerdict::Refuse {
                    retry_after: wait,
                    by: RefusedBy::Address,
                },
            ),
            (Err((wait, RefusedBy::Connection)), 3, 4, SendVerdict::Close),
            (Err((wait, RefusedBy::Address)), 3, 4, SendVerdict::Close),
            (Err((wait, RefusedBy::Address)), 0, 1, SendVerdict::Close),
        ];
        for (admitted, row, burst, want) in table {
            assert_eq!(
                send_verdict(admitted, row, burst),
                want,
                "{admitted:?} {row} {burst}"
            );
        }
    }

    /// A connection's bucket admits its burst, then refuses, then closes after a burst of
    /// refusals.
    #[test]
    fn connection_bucket_admits_a_burst_then_refuses_then_closes() {
        let config = NodeLimitConfig {
            ws_send_rate: 1,
            ws_send_burst: 3,
            ..test_config()
        };
        let limits = RateLimits::new(&config, LimitMetrics::default());
        let mut c = limits.connection(Some("192.0.2.1".parse().unwrap()));
        let verdicts: Vec<SendVerdict> = (0..6).map(|_| c.check()).collect();
        assert!(
            verdicts[..3].iter().all(|v| *v == SendVerdict::Admit),
            "{verdicts:?}"
        );
        assert!(
            matches!(verdicts[3], SendVerdict::Refuse { .. }),
            "{verdicts:?}"
        );
        assert!(
            matches!(verdicts[4], SendVerdict::Refuse { .. }),
            "{verdicts:?}"
        );
        assert_eq!(verdicts[5], SendVerdict::Close);
        assert!(limits.check_address("192.0.2.1".parse().unwrap()).is_ok());
    }

    /// Connections from one address share its bucket with its `POST`s: a second connection
    /// does not double what the address may write, and another address is not affected.
    #[test]
    fn connections_of_one_address_share_its_bucket() {
        let config = NodeLimitConfig {
            ws_send_rate: 1000,
            ws_send_burst: 1000,
            post_rate_per_address: 1,
            post_burst_per_address: 4,
            ..test_config()
        };
        let metrics = LimitMetrics::default();
        let limits = RateLimits::new(&config, metrics.clone());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let mut a = limits.connection(Some(ip));
        let mut b = limits.connection(Some(ip));
        assert_eq!(a.check(), SendVerdict::Admit);
        assert_eq!(b.check(), SendVerdict::Admit);
        assert!(limits.check_address(ip).is_ok());
        assert_eq!(b.check(), SendVerdict::Admit);
        // The address's burst of 4 is spent, over two connections and a POST.
        for c in [&mut a, &mut b] {
            assert!(
                matches!(
                    c.check(),
                    SendVerdict::Refuse {
                        by: RefusedBy::Address,
                        ..
                    }
                ),
                "a connection of a spent address is refused"
            );
        }
        assert!(limits.check_address(ip).is_err());
        let mut other = limits.connection(Some("192.0.2.10".parse().unwrap()));
        assert_eq!(other.check(), SendVerdict::Admit);
        let refused = metrics
            .refused
            .get_or_create(&LimitLabel {
                limit: "ws_send_per_address",
            })
            .get();
        assert_eq!(refused, 2);
        // Without a known address only the connection's own bucket applies.
        let mut unknown = limits.connection(None);
        assert_eq!(unknown.check(), SendVerdict::Admit);
    }

    /// The per-address map never holds more than its bound; addresses past it share a bucket.
    #[test]
    fn address_buckets_are_bounded() {
        let config = NodeLimitConfig {
            post_rate_per_address: 1,
            post_burst_per_address: 2,
            rate_limit_addresses: 100,
            ..test_config()
        };
        let limits = RateLimits::new(&config, LimitMetrics::default());
        for i in 0..1000u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            let _ = limits.check_address(ip);
        }
        let kept = limits.0.addresses.as_ref().unwrap().keyed.len();
        assert!(kept <= 100, "{kept} buckets kept");
        // One address: its burst of 2, then refused with a wait of about a second.
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let fresh = RateLimits::new(&config, LimitMetrics::default());
        assert!(fresh.check_address(one).is_ok());
        assert!(fresh.check_address("2001:db8::2".parse().unwrap()).is_ok());
        let wait = fresh.check_address(one).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
    }

    /// Writes with an id take a token from their subject's bucket: a burst, then 429 with
    /// `Retry-After`, counted; another subject has its own bucket; off with a rate of 0.
    #[test]
    fn id_writes_are_limited_per_subject() {
        let mut config = NodeLimitConfig {
            id_write_rate_per_author: 1,
            id_write_burst_per_author: 3,
            ..test_config()
        };
        let metrics = LimitMetrics::default();
        let limits = RateLimits::new(&config, metrics.clone());
        assert!((0..3).all(|_| limits.check_id_write("ann").is_ok()));
        let e = limits.check_id_write("ann").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        assert!(
            e.reason.contains("--id-write-rate-per-author"),
            "{}",
            e.reason
        );
        assert!(limits.check_id_write("bob").is_ok());
        let refused = metrics
            .refused
            .get_or_create(&LimitLabel {
                limit: "id_writes_per_author",
            })
            .get();
        assert_eq!(refused, 1);
        assert_eq!(metrics.authors.get(), 2);
        config.id_write_rate_per_author = 0;
        let off = RateLimits::new(&config, LimitMetrics::default());
        assert!((0..100).all(|_| off.check_id_write("ann").is_ok()));
    }

    /// Every write of a subject, with or without an id, takes a token from its write bucket.
    #[test]
    fn all_writes_are_limited_per_subject() {
        let mut config = NodeLimitConfig {
            write_rate_per_author: 1,
            write_burst_per_author: 2,
            ..test_config()
        };
        let metrics = LimitMetrics::default();
        let limits = RateLimits::new(&config, metrics.clone());
        assert!((0..2).all(|_| limits.check_write("ann").is_ok()));
        let e = limits.check_write("ann").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        assert!(e.reason.contains("--write-rate-per-author"), "{}", e.reason);
        assert!(limits.check_write("bob").is_ok());
        let refused = metrics
            .refused
            .get_or_create(&LimitLabel {
                limit: "writes_per_author",
            })
            .get();
        assert_eq!(refused, 1);
        config.write_rate_per_author = 0;
        let off = RateLimits::new(&config, LimitMetrics::default());
        assert!((0..100).all(|_| off.check_write("ann").is_ok()));
    }

    /// A page answer keeps its permit until the server has taken its last chunk, goes out in
    /// chunks of at most 16 KiB, and arrives whole.
    #[tokio::test]
    async fn a_page_keeps_its_permit_until_its_last_chunk_is_taken() {
        use http_body_util::BodyExt;
        let page: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let limit = ReadLimit::new("node", "page_reads", 1, LimitMetrics::default());
        let permit = limit.try_acquire().expect("permit");
        let response = hold_until_sent(
            axum::body::Body::from(page.clone()).into_response(),
            Some(permit),
            PAGE_SEND_TIMEOUT,
        )
        .await;
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            assert!(data.len() <= SEND_CHUNK);
            got.extend_from_slice(&data);
            if got.len() < page.len() {
                assert_eq!(limit.in_use(), 1, "released after {} bytes", got.len());
                assert!(limit.try_acquire().is_err());
            }
        }
        drop(body);
        assert_eq!(got, page);
        // The feeding task ends right after the last chunk.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(limit.in_use(), 0);
        // Without a permit (unlimited) the answer is untouched.
        let plain = hold_until_sent(
            axum::body::Body::from("x").into_response(),
            None,
            PAGE_SEND_TIMEOUT,
        )
        .await;
        assert_eq!(
            plain.into_body().collect().await.expect("body").to_bytes(),
            "x"
        );
    }

    /// A client that stops taking a page loses its permit after the send timeout: the body
    /// ends with an error and the permit is free for the next reader.
    #[tokio::test]
    async fn a_page_nobody_takes_gives_its_permit_back() {
        use http_body_util::BodyExt;
        let page = vec![7u8; 200_000];
        let limit = ReadLimit::new("node", "page_reads", 1, LimitMetrics::default());
        let permit = limit.try_acquire().expect("permit");
        let response = hold_until_sent(
            axum::body::Body::from(page).into_response(),
            Some(permit),
            Duration::from_millis(200),
        )
        .await;
        let mut body = response.into_body();
        // One chunk taken, then the client stalls.
        let first = body.frame().await.expect("frame").expect("ok");
        assert!(first.is_data());
        assert_eq!(limit.in_use(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(limit.in_use(), 0, "the stalled page still holds its permit");
        // The body ends with the timeout error (after the chunk already queued).
        let mut ended_with_error = false;
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                ended_with_error = true;
                break;
            }
        }
        assert!(ended_with_error);
    }

    #[test]
    fn out_of_memory_is_recognised() {
        let oom = "OOM command not allowed when used memory > 'maxmemory'.";
        assert!(broker_out_of_memory(oom).unwrap().contains("out of memory"));
        assert!(broker_out_of_memory(&format!("broker script: {oom}")).is_some());
        let rendered =
            "broker script: \"OOM\": command not allowed when used memory > 'maxmemory'.";
        assert!(broker_out_of_memory(rendered).is_some());
        assert_eq!(broker_out_of_memory("connection refused"), None);
    }

    #[test]
    fn read_limit_refuses_past_its_max() {
        let limit = ReadLimit::new("replica", "snapshots", 2, LimitMetrics::default());
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        let e = limit.try_acquire().unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        assert_eq!(limit.in_use(), 2);
        drop(a);
        assert!(limit.try_acquire().is_ok());
    }
}
