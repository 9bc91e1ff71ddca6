//! The WebSocket API, `GET /ws?channel=C&after=P`: replays the channel's history after P, then
//! streams live messages, with no duplicate and no hole across the boundary; accepts `send`
//! frames and answers each with an `ack` or an `error`. This module owns each session's bounds
//! and endings (docs/api.md, "Close codes"):
//! - a bounded live queue (`--ws-queue`) and a deadline on every socket write
//!   (`--ws-write-timeout`): a consumer that falls behind or stops reading is closed with 4008
//!   and the position to resume from;
//! - bounded buffers: the tungstenite read buffer is sized for chat frames and the write buffer
//!   holds at most one frame and a close frame;
//! - a ping every `--ws-ping-interval`; a client silent for `--ws-ping-timeout` is closed (4009);
//! - close codes for client faults per RFC 6455 §7.4.1, chosen by [`close_code_for`] (the
//!   connection is then failed, §7.1.7: close frame, then TCP close), and the echo of a client's
//!   close (§5.5.1);
//! - on shutdown ([`Sessions`]), a 1001 close naming the position to resume from;
//! - admission ([`Access`]): the Origin check and the client's token at the handshake (refused
//!   with 401/403 like HTTP), read permission for a live connection, publish permission for
//!   `send` frames (and for a `live=false` connection); when the token expires the connection
//!   is closed with [`CLOSE_TOKEN_EXPIRED`] and the position to resume from.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use super::messages::{body_limit, check_publish, check_read, new_message};
use super::{read_page, write};
use crate::auth::{Access, Identity, WS_PROTOCOL};
use crate::broker::WriteOutcome;
use crate::http::{ApiError, form_pairs};
use crate::limits::{RefusedBy, SendVerdict};
use crate::message::validate_channel;
use crate::node::Node;
use crate::node::store::{LiveEnd, ws_frame};
use crate::protocol::{Resume, resume_point};

/// Close code when the node shuts down (RFC 6455 §7.4.1 "going away"); the reason names the
/// position to resume from.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a WebSocket protocol error by the client (RFC 6455 §7.4.1, §5.1, §5.2, §5.4,
/// §5.5, §7.4.1 for close codes it may not send).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text message that is not UTF-8 (RFC 6455 §7.4.1, §8.1).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a message that violates the node's policy (RFC 6455 §7.4.1).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a frame or message over the size limit (RFC 6455 §7.4.1).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a condition on the node's side (RFC 6455 §7.4.1 "internal error").
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code for a consumer that fell behind its queue or stopped taking frames (application
/// range 4000–4999, RFC 6455 §7.4.2).
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a client that sent no frame, not even a pong, within `--ws-ping-timeout`
/// (application range, RFC 6455 §7.4.2: no code of §7.4.1 means "the peer went silent").
pub const CLOSE_PING_TIMEOUT: u16 = 4009;
/// Close code when the node drops its history to bootstrap again.
pub const CLOSE_RESET: u16 = 1012;
/// Close code when the client's token expires on an open connection (application range,
/// RFC 6455 §7.4.2; the code Centrifugo and others use for "unauthorized"): reconnect with a
/// fresh token and `after=` the position in the reason.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code when history the replay needs is not available yet (RFC 6455 §7.4.1 "Try Again
/// Later"); the reason names the position to resume from.
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// Messages replayed per page.
const REPLAY_PAGE: usize = 1000;
/// How long a replay waits for the replication log to hold a range that left memory.
const REPLAY_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting replay asks again.
const REPLAY_RETRY: Duration = Duration::from_millis(250);
/// Bytes of the tungstenite read buffer (its initial capacity and the most read per call): a
/// chat `send` frame fits; a longer one grows the buffer for that frame. tungstenite's default
/// of 128 KiB was most of an idle connection's memory.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Room in the write buffer beyond one frame of the size limit: a close frame and a pong.
const WRITE_BUFFER_SLACK: usize = 1024;
/// Bytes of frames the write buffer collects before it writes them to the socket even without a
/// flush: live messages queued behind one another are written together (one `write` for a batch
/// of small frames), and every batch is flushed when it ends, so no frame waits in the buffer.
/// The buffer keeps the capacity it grew to (tungstenite never shrinks it): a connection that
/// once got a burst keeps up to about twice this (with 4 KiB, 6–10 KiB more per connection were
/// measured after a burst; 2 KiB still writes ~8 chat frames at a time).
const WRITE_BATCH_BYTES: usize = 2 * 1024;

type Sink = SplitSink<WebSocket, Frame>;
type Stream = SplitStream<WebSocket>;

/// The open WebSocket sessions of a node and the signal that ends them: on shutdown each one is
/// closed with [`CLOSE_GOING_AWAY`], and [`Sessions::drain`] waits for them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sessions {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Sessions {
    /// Sessions that end when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Sessions {
        Sessions {
            stop,
            tracker: TaskTracker::new(),
        }
    }

    /// Waits up to `deadline` for every session to finish its closing handshake; `false` if some
    /// were still open at the deadline (they are cut when the process exits).
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        timeout(deadline, self.tracker.wait()).await.is_ok()
    }

    /// Sessions still running.
    pub fn open(&self) -> usize {
        self.tracker.len()
    }
}

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        text: Option<String>,
        author: Option<String>,
        id: Option<String>,
    },
}

pub(super) async fn upgrade(
    State(node): State<Node>,
    Extension(sessions): Extension<Sessions>,
    Extension(access): Extension<Access>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    access.check_origin(&headers)?;
    let who = access.identify(&headers, query.as_deref())?;
    let mut channel = None;
    let mut after = 0;
    let mut live = true;
    for (key, value) in form_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "channel" => channel = Some(value),
            "after" => {
                after = value.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "after must be a non-negative integer, got {value:?}"
                    ))
                })?
            }
            "live" => {
                live = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("live must be true or false, got {value:?}"))
                })?
            }
            _ => {}
        }
    }
    let channel =
        channel.ok_or_else(|| ApiError::bad_request("the channel query parameter is required"))?;
    validate_channel(&channel)?;
    if live {
        check_read(&who, &channel)?;
    } else {
        check_publish(&who, &channel)?;
    }
    if sessions.stop.is_cancelled() {
        return Err(ApiError::unavailable("the node is shutting down"));
    }
    let limit = body_limit(node.settings().max_message_bytes);
    let tracker = sessions.tracker.clone();
    let stop = sessions.stop.clone();
    Ok(ws
        // A browser sends its token as the subprotocol `bearer.<jwt>` next to `chat-cluster`;
        // the server selects `chat-cluster` (never echoing the token).
        .protocols([WS_PROTOCOL])
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames go to the socket when a batch ends (or past WRITE_BATCH_BYTES); the buffer holds
        // at most a batch, the one frame a stalled write left, and the close frame after it.
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(WRITE_BATCH_BYTES + limit + WRITE_BUFFER_SLACK)
        .on_upgrade(move |socket| {
            let span = info_span!("ws", channel = %channel, after, live);
            let client = Client {
                who,
                channel,
                peer: peer.map(|Extension(ConnectInfo(addr))| addr.ip()),
            };
            tracker.track_future(session(node, stop, socket, client, after, live).instrument(span))
        }))
}

/// Who a session serves, on which channel, and from which address (for the per-address
/// write bucket; unknown when the router is served without [`ConnectInfo`]).
struct Client {
    who: Identity,
    channel: String,
    peer: Option<IpAddr>,
}

impl Client {
    /// When the client's token expires, as a timer deadline (`None`: it does not).
    fn expires(&self) -> Option<Instant> {
        let exp = self.who.expires_at?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
    }
}

/// Sleeps until `deadline`, forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The close of a connection whose token expired; `last` is the position to resume from.
fn token_expired(last: Option<u64>) -> End {
    let resume = last.map(|p| format!(" and after={p}")).unwrap_or_default();
    End::Close(Ending::new(
        CLOSE_TOKEN_EXPIRED,
        &format!("token expired; reconnect with a fresh token{resume}"),
    ))
}

/// Why a session ended, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ending {
    code: u16,
    reason: String,
}

impl Ending {
    fn new(code: u16, reason: &str) -> Ending {
        Ending {
            code,
            reason: short(reason),
        }
    }
}

/// How a session ends.
#[derive(Debug)]
enum End {
    /// The client sent a close frame; tungstenite queued the answer (RFC 6455 §5.5.1: the echo
    /// of its code, or 1002 for a code it may not send), which is flushed.
    ClientClosed,
    /// The node closes with this code and reason, and waits for the client's close.
    Close(Ending),
    /// The client broke the protocol: the node sends this close frame and closes TCP without
    /// waiting for an answer (RFC 6455 §7.1.7, "Fail the WebSocket Connection").
    Fail(Ending),
    /// The connection is gone: nothing more can be sent.
    Gone,
}

/// A session's timing settings.
#[derive(Debug, Clone, Copy)]
struct Timing {
    write: Duration,
    ping_interval: Duration,
    ping_timeout: Duration,
}

/// The sending half of a session: every write has a deadline, and `last` is the position of the
/// last message handed to the socket (every frame before a close frame reaches the client
/// before it).
struct Out<'a> {
    node: &'a Node,
    sink: Sink,
    write_timeout: Duration,
    last: u64,
    /// The connection's bucket of `send` frames (`--ws-send-rate`).
    sends: crate::limits::ConnectionLimiter,
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The client took no frame within the write deadline.
    #[error("the client did not take a frame within {0:?}")]
    Stalled(Duration),
    /// The connection failed.
    #[error("the connection failed: {0}")]
    Failed(axum::Error),
}

impl Out<'_> {
    /// Writes `frame` within the write deadline; `queued` is called once the frame is certain
    /// to precede anything written later.
    async fn write(
        &mut self,
        frame: Frame,
        queued: impl FnOnce(&mut u64),
    ) -> Result<(), WriteError> {
        self.queue(frame, queued).await?;
        self.flush_queued().await
    }

    /// Hands `frame` to the connection's write buffer within the write deadline, without
    /// flushing it to the socket (the buffer is written out when it fills, or by
    /// [`Out::flush_queued`]); `queued` as for [`Out::write`].
    async fn queue(
        &mut self,
        frame: Frame,
        queued: impl FnOnce(&mut u64),
    ) -> Result<(), WriteError> {
        match timeout(self.write_timeout, self.sink.feed(frame)).await {
            Err(_) => Err(WriteError::Stalled(self.write_timeout)),
            Ok(Err(e)) => Err(WriteError::Failed(e)),
            Ok(Ok(())) => {
                queued(&mut self.last);
                Ok(())
            }
        }
    }

    /// Writes out what [`Out::queue`] buffered, within the write deadline.
    async fn flush_queued(&mut self) -> Result<(), WriteError> {
        match timeout(self.write_timeout, self.sink.flush()).await {
            Err(_) => Err(WriteError::Stalled(self.write_timeout)),
            Ok(Err(e)) => Err(WriteError::Failed(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends a frame that is not a message (ack, error, waiting, lost, ping).
    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        let r = self.write(frame, |_| {}).await;
        self.ended(r)
    }

    /// Queues the message at `position` (advancing `last`) without flushing: the caller flushes
    /// ([`Out::flush`]) once the batch or page is queued.
    async fn queue_message(&mut self, frame: Utf8Bytes, position: u64) -> Result<(), End> {
        let r = self
            .queue(Frame::Text(frame), |last| *last = position)
            .await;
        self.ended(r)
    }

    /// Writes out what was queued.
    async fn flush(&mut self) -> Result<(), End> {
        let r = self.flush_queued().await;
        self.ended(r)
    }

    fn ended(&self, r: Result<(), WriteError>) -> Result<(), End> {
        match r {
            Ok(()) => Ok(()),
            Err(WriteError::Stalled(t)) => {
                self.node.metrics().slow_consumers.inc();
                Err(End::Close(Ending::new(
                    CLOSE_SLOW_CONSUMER,
                    &format!(
                        "slow consumer: a write did not complete in {}s; reconnect with after={}",
                        t.as_secs_f64(),
                        self.last
                    ),
                )))
            }
            Err(e @ WriteError::Failed(_)) => {
                debug!(error = %e, "websocket write failed");
                Err(End::Gone)
            }
        }
    }

    fn going_away(&self) -> End {
        End::Close(going_away(Some(self.last)))
    }
}

/// The 1001 close of a shutdown; `last` is the position to resume from (none for a
/// `live=false` connection).
fn going_away(last: Option<u64>) -> Ending {
    match last {
        Some(p) => Ending::new(
            CLOSE_GOING_AWAY,
            &format!("node is shutting down; reconnect with after={p}"),
        ),
        None => Ending::new(CLOSE_GOING_AWAY, "node is shutting down; reconnect"),
    }
}

async fn session(
    node: Node,
    stop: CancellationToken,
    socket: WebSocket,
    client: Client,
    after: u64,
    live: bool,
) {
    node.metrics().ws_connections.inc();
    let settings = node.settings();
    let timing = Timing {
        write: settings.ws_write_timeout,
        ping_interval: settings.ws_ping_interval,
        ping_timeout: settings.ws_ping_timeout,
    };
    let (sink, mut stream) = socket.split();
    let mut out = Out {
        node: &node,
        sink,
        write_timeout: timing.write,
        last: after,
        sends: node.settings().rate_limits.connection(client.peer),
    };
    let end = if live {
        serve(&node, &stop, &mut out, &mut stream, &client, timing).await
    } else {
        serve_writes(&node, &stop, &mut out, &mut stream, &client, timing).await
    };
    // The session no longer counts once it stops serving; the closing handshake below is
    // bounded by the write deadline.
    node.metrics().ws_connections.dec();
    let mut sink = out.sink;
    match end {
        End::Gone => {}
        End::ClientClosed => {
            let _ = timeout(timing.write, sink.close()).await;
        }
        End::Fail(Ending { code, reason }) => {
            debug!(code, %reason, "failing websocket");
            node.metrics().ws_closed(code);
            let _ = timeout(timing.write, sink.send(close_frame(code, reason))).await;
        }
        End::Close(Ending { code, reason }) => {
            debug!(code, %reason, "closing websocket");
            node.metrics().ws_closed(code);
            if let Ok(Ok(())) = timeout(timing.write, sink.send(close_frame(code, reason))).await {
                // RFC 6455 §7.1.1: wait for the client's close before closing TCP.
                let _ = timeout(timing.write, async {
                    while let Some(Ok(f)) = stream.next().await {
                        if matches!(f, Frame::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
}

fn close_frame(code: u16, reason: String) -> Frame {
    Frame::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// What a frame from the client means to a session.
enum Incoming {
    /// A text frame: a client frame to answer.
    Text(Utf8Bytes),
    /// A binary frame: answered with an error frame.
    Binary,
    /// Ping or pong: only proof of life.
    Control,
    /// The session ends.
    End(End),
}

fn incoming(frame: Option<Result<Frame, axum::Error>>) -> Incoming {
    match frame {
        None => Incoming::End(End::Gone),
        Some(Ok(Frame::Close(_))) => Incoming::End(End::ClientClosed),
        Some(Ok(Frame::Text(text))) => Incoming::Text(text),
        Some(Ok(Frame::Binary(_))) => Incoming::Binary,
        Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => Incoming::Control,
        Some(Err(e)) => Incoming::End(read_error(e)),
    }
}

/// The end of a session whose client sent something tungstenite refused.
fn read_error(e: axum::Error) -> End {
    let text = e.to_string();
    let code = match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => close_code_for(&e),
        Err(_) => Some(CLOSE_INTERNAL),
    };
    match code {
        Some(code) => End::Fail(Ending::new(code, &format!("bad frame: {text}"))),
        None => End::Gone,
    }
}

/// The close code (RFC 6455 §7.4.1) for an error reading a client's frames, or `None` when the
/// connection is gone and no close frame can be sent.
fn close_code_for(e: &tungstenite::Error) -> Option<u16> {
    use tungstenite::error::{CapacityError, Error as E, ProtocolError as P};
    match e {
        E::Capacity(CapacityError::MessageTooLong { .. }) => Some(CLOSE_TOO_BIG),
        E::Utf8(_) => Some(CLOSE_INVALID_DATA),
        E::Protocol(P::ResetWithoutClosingHandshake) => None,
        E::Protocol(_) | E::Capacity(_) => Some(CLOSE_PROTOCOL_ERROR),
        E::AttackAttempt => Some(CLOSE_POLICY),
        E::ConnectionClosed | E::AlreadyClosed | E::Io(_) | E::Tls(_) => None,
        _ => Some(CLOSE_INTERNAL),
    }
}

/// Answers a text or binary frame from the client.
async fn answer(
    node: &Node,
    out: &mut Out<'_>,
    client: &Client,
    frame: Incoming,
) -> Result<(), End> {
    let reply = match frame {
        Incoming::Text(text) => match out.sends.check() {
            SendVerdict::Admit => handle_client_frame(node, client, text.as_str()).await,
            SendVerdict::Refuse { retry_after, by } => rate_limited_frame(&text, retry_after, by),
            SendVerdict::Close => {
                return Err(End::Close(Ending::new(
                    CLOSE_POLICY,
                    "rate limit: a whole burst of send frames refused in a row",
                )));
            }
        },
        Incoming::Binary => error_frame(
            None,
            "binary frames are not supported; send JSON text frames",
        ),
        Incoming::Control => return Ok(()),
        Incoming::End(end) => return Err(end),
    };
    out.send(Frame::Text(reply.into())).await
}

/// The ping timer of a session: a ping every `ping_interval`, and the deadline by which the
/// client must have sent some frame.
struct Liveness {
    ping: tokio::time::Interval,
    timeout: Duration,
    silent_until: Instant,
}

impl Liveness {
    fn new(timing: Timing) -> Liveness {
        let mut ping =
            tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Liveness {
            ping,
            timeout: timing.ping_timeout,
            silent_until: Instant::now() + timing.ping_timeout,
        }
    }

    /// The client sent a frame.
    fn heard(&mut self) {
        self.silent_until = Instant::now() + self.timeout;
    }

    fn expired(&self, last: Option<u64>) -> End {
        let resume = last
            .map(|p| format!("; reconnect with after={p}"))
            .unwrap_or_default();
        End::Close(Ending::new(
            CLOSE_PING_TIMEOUT,
            &format!(
                "ping timeout: no frame from the client in {}s{resume}",
                self.timeout.as_secs_f64()
            ),
        ))
    }
}

async fn serve(
    node: &Node,
    stop: &CancellationToken,
    out: &mut Out<'_>,
    stream: &mut Stream,
    client: &Client,
    timing: Timing,
) -> End {
    match serve_live(node, stop, out, stream, client, timing).await {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

async fn serve_live(
    node: &Node,
    stop: &CancellationToken,
    out: &mut Out<'_>,
    stream: &mut Stream,
    client: &Client,
    timing: Timing,
) -> Result<std::convert::Infallible, End> {
    let channel = client.channel.as_str();
    let expires = client.expires();
    // The history this connection serves: if the node reloads (the broker lost its data), the
    // replay must not go on reading the new store (see `replay`).
    let generation = node.generation();
    let mut told = None;
    tell_lost(node, out, &mut told).await?;
    // Replay what is there now without holding a live queue, then subscribe and replay the
    // little that arrived meanwhile: from then on the queue carries exactly what follows.
    let upto = node.read_lock().cursor();
    replay(node, stop, out, channel, upto, generation).await?;
    let (mut live, upto) = node.subscribe(channel);
    // A reader that came from a node further than this one may hold positions a void applied
    // since it connected covers; later voids come through the live queue.
    tell_lost(node, out, &mut told).await?;
    replay(node, stop, out, channel, upto, generation).await?;
    let mut alive = Liveness::new(timing);
    loop {
        tokio::select! {
            frame = stream.next() => {
                alive.heard();
                answer(node, out, client, incoming(frame)).await?;
            }
            item = live.recv() => match item {
                Ok(first) => {
                    // The first message and whatever else is queued behind it (at most a
                    // batch) go out with one flush: one write to the socket, and one wake-up of
                    // this task, for all the messages one round of the follower applied.
                    let mut next = Some(first);
                    let mut batch = 0;
                    while let Some(l) = next.take() {
                        push_live(node, out, &l, &mut told).await?;
                        batch += 1;
                        if batch < LIVE_BATCH {
                            // A lagged or closed queue stays so: the next `recv` reports it.
                            next = live.poll_next().unwrap_or(None);
                        }
                    }
                    out.flush().await?;
                }
                Err(LiveEnd::Lagged) => {
                    node.metrics().slow_consumers.inc();
                    let n = node.settings().ws_queue;
                    return Err(End::Close(Ending::new(
                        CLOSE_SLOW_CONSUMER,
                        &format!("slow consumer: fell {n} messages behind; reconnect with after={}", out.last),
                    )));
                }
                Err(LiveEnd::Closed) if stop.is_cancelled() => return Err(out.going_away()),
                Err(LiveEnd::Closed) => {
                    return Err(End::Close(Ending::new(
                        CLOSE_RESET,
                        &format!("node is reloading its history; reconnect with after={}", out.last),
                    )));
                }
            },
            _ = alive.ping.tick() => out.send(Frame::Ping(Default::default())).await?,
            () = tokio::time::sleep_until(alive.silent_until) => return Err(alive.expired(Some(out.last))),
            () = until(expires) => return Err(token_expired(Some(out.last))),
            () = stop.cancelled() => return Err(out.going_away()),
        }
    }
}

/// A connection opened with `live=false`: no replay and no live messages, only `send` frames
/// and their answers (for writers that do not read the channel).
async fn serve_writes(
    node: &Node,
    stop: &CancellationToken,
    out: &mut Out<'_>,
    stream: &mut Stream,
    client: &Client,
    timing: Timing,
) -> End {
    let mut alive = Liveness::new(timing);
    let expires = client.expires();
    loop {
        let step = tokio::select! {
            frame = stream.next() => {
                alive.heard();
                answer(node, out, client, incoming(frame)).await
            }
            _ = alive.ping.tick() => out.send(Frame::Ping(Default::default())).await,
            () = tokio::time::sleep_until(alive.silent_until) => Err(alive.expired(None)),
            () = until(expires) => Err(token_expired(None)),
            () = stop.cancelled() => Err(End::Close(going_away(None))),
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Most live messages queued behind one another that are written to a WebSocket with one flush.
const LIVE_BATCH: usize = 64;

/// Queues one live message for the reader (not flushed: the caller flushes the batch). A message
/// at or below what the reader has is skipped; a void record the reader's position lies in sends
/// the `lost` frame (flushed), once per void.
async fn push_live(
    node: &Node,
    out: &mut Out<'_>,
    l: &crate::node::store::Live,
    told: &mut Option<u64>,
) -> Result<(), End> {
    if l.message.is_void() {
        if let Some(from) = l.void_from
            && (from..=l.message.position).contains(&out.last)
            && *told != Some(from)
        {
            *told = Some(from);
            node.metrics().history_resets.inc();
            let frame = lost_frame(from, out.last, l.message.position);
            out.send(Frame::Text(frame.into())).await?;
        }
        return Ok(());
    }
    if l.message.position <= out.last {
        return Ok(());
    }
    out.queue_message(l.frame.clone(), l.message.position).await
}

/// Sends the `lost` frame when the reader's position lies in a void this node applied (a broker
/// data loss voided positions the reader may hold), once per void (`told`: the first position of
/// the void already told).
async fn tell_lost(node: &Node, out: &mut Out<'_>, told: &mut Option<u64>) -> Result<(), End> {
    let resume = resume_point(out.last, node.read_lock().voids());
    if let Resume::Lost { lost_from, void_to } = resume
        && *told != Some(lost_from)
    {
        // What follows the reader's position is complete.
        *told = Some(lost_from);
        node.metrics().history_resets.inc();
        let frame = lost_frame(lost_from, out.last, void_to);
        out.send(Frame::Text(frame.into())).await?;
    }
    Ok(())
}

/// Sends the channel's messages in `out.last+1 ..= upto`, advancing `out.last`. Never skips:
/// when a part of the range has left memory and no replica holds it yet, it sends a `waiting`
/// frame and waits (retrying every [`REPLAY_RETRY`]) up to [`REPLAY_WAIT`], then ends the
/// session with [`CLOSE_TRY_AGAIN`] and the position to resume from. Ends with
/// [`CLOSE_GOING_AWAY`] between pages once the node shuts down. When the node reloaded its
/// history since the connection started (`generation` changed) it ends with [`CLOSE_RESET`]: an
/// empty page from the new, still empty store would otherwise end the replay early, and the old
/// store's live queue would then deliver positions the cluster may have lost (found by the
/// protocol simulation, `crate::protocol::sim`).
async fn replay(
    node: &Node,
    stop: &CancellationToken,
    out: &mut Out<'_>,
    channel: &str,
    upto: u64,
    generation: u64,
) -> Result<(), End> {
    let reloaded = |last: u64| {
        (node.generation() != generation).then(|| {
            End::Close(Ending::new(
                CLOSE_RESET,
                &format!("node is reloading its history; reconnect with after={last}"),
            ))
        })
    };
    if let Some(end) = reloaded(out.last) {
        return Err(end);
    }
    let mut waiting_since: Option<std::time::Instant> = None;
    while out.last < upto {
        if stop.is_cancelled() {
            return Err(out.going_away());
        }
        let page = read_page(node, channel, out.last, upto, REPLAY_PAGE).await;
        if let Some(end) = reloaded(out.last) {
            return Err(end);
        }
        let page = match page {
            Ok(page) => page,
            Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                let last = out.last;
                if waiting_since.is_none() {
                    // Tell the reader why nothing comes, once per stall.
                    out.send(Frame::Text(waiting_frame(last, &e.reason).into()))
                        .await?;
                }
                let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= REPLAY_WAIT {
                    return Err(End::Close(Ending::new(
                        CLOSE_TRY_AGAIN,
                        &format!(
                            "history after {last} is not available yet; reconnect with after={last}"
                        ),
                    )));
                }
                debug!(error = %e.reason, "replay waits for the replication log");
                tokio::select! {
                    () = tokio::time::sleep(REPLAY_RETRY) => {}
                    () = stop.cancelled() => return Err(out.going_away()),
                }
                continue;
            }
            Err(e) => return Err(End::Close(Ending::new(CLOSE_INTERNAL, &e.reason))),
        };
        waiting_since = None;
        if page.is_empty() {
            return Ok(());
        }
        // A page goes out in write batches (WRITE_BATCH_BYTES), not one socket write per
        // message, and is flushed whole before the next page is read.
        for m in page {
            out.queue_message(ws_frame(&m).into(), m.position).await?;
        }
        out.flush().await?;
    }
    Ok(())
}

async fn handle_client_frame(node: &Node, client: &Client, text: &str) -> String {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let reason = if serde_json::from_str::<serde_json::Value>(text).is_ok() {
                format!("unsupported frame: {e}; the only frame type is \"send\"")
            } else {
                format!("invalid JSON frame: {e}")
            };
            return error_frame(None, &reason);
        }
    };
    let ClientFrame::Send { text, author, id } = frame;
    if let Err(e) = check_publish(&client.who, &client.channel) {
        return error_frame(id.as_deref(), &e.to_string());
    }
    let msg = new_message(
        &client.who,
        client.channel.clone(),
        id.clone(),
        author,
        text,
    );
    match write(node, msg).await {
        Ok(WriteOutcome::Accepted(m)) => ack(&m.id, m.position),
        Ok(WriteOutcome::Duplicate(o)) => ack(&o.id, o.position),
        Err(ApiError {
            reason,
            write: Some((id, fate)),
            ..
        }) => serde_json::json!({"type": "error", "id": id, "error": reason, "outcome": fate})
            .to_string(),
        Err(ApiError {
            reason,
            retry_after: Some(seconds),
            ..
        }) => serde_json::json!({
            "type": "error",
            "id": id,
            "error": reason,
            "retry_after_ms": u64::from(seconds) * 1000,
        })
        .to_string(),
        Err(e) => error_frame(id.as_deref(), &e.reason),
    }
}

/// `{"type":"waiting","after":P,"reason":...}`: the replay is held at `P` because the history
/// after it has left this node's memory and no replica holds it yet; it goes on when one does,
/// or the connection is closed with 1013 and `after=P` (documented in docs/api.md).
fn waiting_frame(after: u64, reason: &str) -> String {
    serde_json::json!({"type": "waiting", "after": after, "reason": reason}).to_string()
}

/// `{"type":"lost","from":F,"to":T,"reason":...}`: positions `F ..= T` the reader may hold were
/// acknowledged but never persisted before the broker lost its data; they are gone, and the
/// cluster's history continues after `void_to` (documented in docs/api.md).
fn lost_frame(from: u64, to: u64, void_to: u64) -> String {
    serde_json::json!({
        "type": "lost",
        "from": from,
        "to": to,
        "reason": format!(
            "the broker lost its data: positions {from}..{to} were never persisted and are gone; \
             the history continues after position {void_to}"
        ),
    })
    .to_string()
}

fn ack(id: &str, position: u64) -> String {
    serde_json::json!({"type": "ack", "id": id, "position": position}).to_string()
}

/// The answer to a `send` frame over the connection's rate: an `error` frame with the frame's
/// id (when it has one) and `retry_after_ms`; nothing was stored.
fn rate_limited_frame(text: &str, retry_after: Duration, by: RefusedBy) -> String {
    let id = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
    let what = match by {
        RefusedBy::Connection => "this connection",
        RefusedBy::Address => "this client address, over all its connections and POSTs",
    };
    serde_json::json!({
        "type": "error",
        "id": id,
        "error": format!(
            "rate limit: too many writes from {what} ({}); nothing was stored",
            by.flag()
        ),
        "retry_after_ms": retry_after.as_millis().max(1) as u64,
    })
    .to_string()
}

fn error_frame(id: Option<&str>, reason: &str) -> String {
    serde_json::json!({"type": "error", "id": id, "error": reason}).to_string()
}

/// Close reasons must fit in a control frame (123 bytes).
fn short(reason: &str) -> String {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use tungstenite::error::{CapacityError, Error as E, ProtocolError as P};

    use super::*;

    /// Each error reading a client's frames closes with the RFC 6455 §7.4.1 code for it, or
    /// sends nothing when the connection is gone.
    #[test]
    fn read_errors_close_with_the_rfc_code() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let cases: Vec<(&str, E, Option<u16>)> = vec![
            (
                "message over the limit",
                E::Capacity(CapacityError::MessageTooLong {
                    size: 40_000,
                    max_size: 28_672,
                }),
                Some(1009),
            ),
            ("invalid UTF-8", E::Utf8("invalid".into()), Some(1007)),
            (
                "unmasked",
                E::Protocol(P::UnmaskedFrameFromClient),
                Some(1002),
            ),
            ("rsv bits", E::Protocol(P::NonZeroReservedBits), Some(1002)),
            (
                "fragmented ping",
                E::Protocol(P::FragmentedControlFrame),
                Some(1002),
            ),
            (
                "control too big",
                E::Protocol(P::ControlFrameTooBig),
                Some(1002),
            ),
            (
                "reserved data opcode",
                E::Protocol(P::UnknownDataFrameType(3)),
                Some(1002),
            ),
            (
                "reserved control opcode",
                E::Protocol(P::UnknownControlFrameType(11)),
                Some(1002),
            ),
            (
                "lone continuation",
                E::Protocol(P::UnexpectedContinueFrame),
                Some(1002),
            ),
            ("bad opcode", E::Protocol(P::InvalidOpcode(15)), Some(1002)),
            (
                "bad close",
                E::Protocol(P::InvalidCloseSequence),
                Some(1002),
            ),
            (
                "after close",
                E::Protocol(P::ReceivedAfterClosing),
                Some(1002),
            ),
            (
                "too many headers",
                E::Capacity(CapacityError::TooManyHeaders),
                Some(1002),
            ),
            ("attack", E::AttackAttempt, Some(1008)),
            ("reset", E::Protocol(P::ResetWithoutClosingHandshake), None),
            ("io", E::Io(io()), None),
            ("closed", E::ConnectionClosed, None),
            ("already closed", E::AlreadyClosed, None),
        ];
        for (name, error, want) in cases {
            assert_eq!(close_code_for(&error), want, "{name}: {error}");
        }
    }

    /// A close reason always fits a control frame, cut on a character boundary.
    #[test]
    fn reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let cut = short(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
        assert_eq!(short("ok"), "ok");
    }

    /// A shutdown close names the position to resume from when there is one.
    #[test]
    fn going_away_names_the_resume_position() {
        assert_eq!(
            going_away(Some(42)),
            Ending {
                code: 1001,
                reason: "node is shutting down; reconnect with after=42".into()
            }
        );
        assert_eq!(going_away(None).code, 1001);
    }
}
