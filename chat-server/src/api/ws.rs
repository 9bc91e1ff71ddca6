//! The WebSocket API, `GET /ws?channel=C&after=P`: replays the channel's history after P, then
//! streams live messages, with no duplicate and no hole across the boundary; accepts `send`
//! frames and answers each with an `ack` or an `error`. Every connection has a bounded queue; a
//! consumer that falls further behind is closed with a reason and recovers with `after`.

use axum::extract::ws::{CloseFrame, Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tracing::{Instrument, debug, info_span};

use super::messages::body_limit;
use super::{read_page, write};
use crate::broker::WriteOutcome;
use crate::http::{ApiError, form_pairs};
use crate::message::{NewMessage, validate_channel};
use crate::node::Node;
use crate::node::store::ws_frame;
use crate::protocol::{Resume, resume_point};

/// Close code for a consumer that fell behind its queue (application range 4000–4999).
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code when the node drops its history to bootstrap again.
pub const CLOSE_RESET: u16 = 1012;
/// Close code when history the replay needs is not available yet (RFC 6455 §7.4.1 "Try Again
/// Later"); the reason names the position to resume from.
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Messages replayed per page.
const REPLAY_PAGE: usize = 1000;
/// How long a replay waits for the replication log to hold a range that left memory.
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a waiting replay asks again.
const REPLAY_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

type Sink = SplitSink<WebSocket, Frame>;

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
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
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
    let limit = body_limit(node.settings().max_message_bytes);
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let span = info_span!("ws", channel = %channel, after, live);
            session(node, socket, channel, after, live).instrument(span)
        }))
}

/// Why a session ended, and what the client is told.
struct Ending {
    code: u16,
    reason: String,
}

async fn session(node: Node, socket: WebSocket, channel: String, after: u64, live: bool) {
    node.metrics().ws_connections.inc();
    let (mut sink, mut stream) = socket.split();
    let ending = if live {
        serve(&node, &mut sink, &mut stream, &channel, after).await
    } else {
        serve_writes(&node, &mut sink, &mut stream, &channel).await
    };
    if let Some(Ending { code, reason }) = ending {
        debug!(code, %reason, "closing websocket");
        let _ = sink
            .send(Frame::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            })))
            .await;
    }
    node.metrics().ws_connections.dec();
}

async fn serve(
    node: &Node,
    sink: &mut Sink,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    channel: &str,
    after: u64,
) -> Option<Ending> {
    let mut last = after;
    // The history this connection serves: if the node reloads (the broker lost its data), the
    // replay must not go on reading the new store (see `replay`).
    let generation = node.generation();
    let resume = resume_point(after, node.read().voids());
    if let Resume::Lost { lost_from, void_to } = resume {
        // The reader holds positions the cluster lost in a broker data loss: say so, once,
        // before anything else; what follows `after` is complete.
        node.metrics().history_resets.inc();
        let frame = lost_frame(lost_from, after, void_to);
        if sink.send(Frame::Text(frame.into())).await.is_err() {
            return None;
        }
    }
    // Replay what is there now without holding a live queue, then subscribe and replay the
    // little that arrived meanwhile: from then on the queue carries exactly what follows.
    let upto = node.read().cursor();
    if let Err(e) = replay(node, sink, channel, &mut last, upto, generation).await {
        return e;
    }
    let (mut live, upto) = node.write().subscribe(channel);
    if let Err(e) = replay(node, sink, channel, &mut last, upto, generation).await {
        return e;
    }
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Ok(Frame::Close(_))) => return None,
                Some(Err(e)) => {
                    return Some(Ending { code: CLOSE_TOO_BIG, reason: short(&format!("bad frame: {e}")) });
                }
                Some(Ok(Frame::Text(text))) => {
                    let reply = handle_client_frame(node, channel, text.as_str()).await;
                    if sink.send(Frame::Text(reply.into())).await.is_err() {
                        return None;
                    }
                }
                Some(Ok(Frame::Binary(_))) => {
                    let reply = error_frame(None, "binary frames are not supported; send JSON text frames");
                    if sink.send(Frame::Text(reply.into())).await.is_err() {
                        return None;
                    }
                }
                Some(Ok(_)) => {}
            },
            item = live.recv() => match item {
                Ok(l) if l.message.position <= last => {}
                Ok(l) => {
                    last = l.message.position;
                    if sink.send(Frame::Text(l.frame.clone())).await.is_err() {
                        return None;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    node.metrics().slow_consumers.inc();
                    return Some(Ending {
                        code: CLOSE_SLOW_CONSUMER,
                        reason: short(&format!("slow consumer: fell {n} messages behind; reconnect with after={last}")),
                    });
                }
                Err(RecvError::Closed) => {
                    return Some(Ending {
                        code: CLOSE_RESET,
                        reason: format!("node is reloading its history; reconnect with after={last}"),
                    });
                }
            },
        }
    }
}

/// A connection opened with `live=false`: no replay and no live messages, only `send` frames
/// and their answers (for writers that do not read the channel).
async fn serve_writes(
    node: &Node,
    sink: &mut Sink,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    channel: &str,
) -> Option<Ending> {
    loop {
        match stream.next().await {
            None | Some(Ok(Frame::Close(_))) => return None,
            Some(Err(e)) => {
                return Some(Ending {
                    code: CLOSE_TOO_BIG,
                    reason: short(&format!("bad frame: {e}")),
                });
            }
            Some(Ok(Frame::Text(text))) => {
                let reply = handle_client_frame(node, channel, text.as_str()).await;
                if sink.send(Frame::Text(reply.into())).await.is_err() {
                    return None;
                }
            }
            Some(Ok(Frame::Binary(_))) => {
                let reply = error_frame(
                    None,
                    "binary frames are not supported; send JSON text frames",
                );
                if sink.send(Frame::Text(reply.into())).await.is_err() {
                    return None;
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Sends the channel's messages in `last+1 ..= upto`, advancing `last`. Never skips: when a part
/// of the range has left memory and no replica holds it yet, it sends a `waiting` frame and
/// waits (retrying every [`REPLAY_RETRY`]) up to [`REPLAY_WAIT`], then ends the session with
/// [`CLOSE_TRY_AGAIN`] and the position to resume from. When the node reloaded its history
/// since the connection started (`generation` changed) it ends with [`CLOSE_RESET`]: an empty
/// page from the new, still empty store would otherwise end the replay early, and the old
/// store's live queue would then deliver positions the cluster may have lost (found by the
/// protocol simulation, `crate::protocol::sim`).
async fn replay(
    node: &Node,
    sink: &mut Sink,
    channel: &str,
    last: &mut u64,
    upto: u64,
    generation: u64,
) -> Result<(), Option<Ending>> {
    let reloaded = |last: u64| {
        (node.generation() != generation).then(|| Ending {
            code: CLOSE_RESET,
            reason: format!("node is reloading its history; reconnect with after={last}"),
        })
    };
    if let Some(ending) = reloaded(*last) {
        return Err(Some(ending));
    }
    let mut waiting_since: Option<std::time::Instant> = None;
    while *last < upto {
        let page = read_page(node, channel, *last, upto, REPLAY_PAGE).await;
        if let Some(ending) = reloaded(*last) {
            return Err(Some(ending));
        }
        let page = match page {
            Ok(page) => page,
            Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                if waiting_since.is_none() {
                    // Tell the reader why nothing comes, once per stall.
                    let frame = waiting_frame(*last, &e.reason);
                    if sink.send(Frame::Text(frame.into())).await.is_err() {
                        return Err(None);
                    }
                }
                let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= REPLAY_WAIT {
                    return Err(Some(Ending {
                        code: CLOSE_TRY_AGAIN,
                        reason: short(&format!(
                            "history after {last} is not available yet; reconnect with after={last}"
                        )),
                    }));
                }
                debug!(error = %e.reason, "replay waits for the replication log");
                tokio::time::sleep(REPLAY_RETRY).await;
                continue;
            }
            Err(e) => {
                return Err(Some(Ending {
                    code: 1011,
                    reason: short(&e.reason),
                }));
            }
        };
        waiting_since = None;
        let Some(end) = page.last().map(|m| m.position) else {
            return Ok(());
        };
        for m in page {
            if sink.send(Frame::Text(ws_frame(&m).into())).await.is_err() {
                return Err(None);
            }
        }
        *last = end;
    }
    Ok(())
}

async fn handle_client_frame(node: &Node, channel: &str, text: &str) -> String {
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
    let msg = NewMessage {
        channel: channel.to_owned(),
        id: id.clone(),
        author: author.unwrap_or_else(|| "anonymous".to_owned()),
        text: text.unwrap_or_default(),
    };
    match write(node, msg).await {
        Ok(WriteOutcome::Accepted(m)) => ack(&m.id, m.position),
        Ok(WriteOutcome::Duplicate(o)) => ack(&o.id, o.position),
        Err(ApiError {
            reason,
            write: Some((id, fate)),
            ..
        }) => serde_json::json!({"type": "error", "id": id, "error": reason, "outcome": fate})
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
