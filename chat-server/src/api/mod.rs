//! The chat-server's HTTP and WebSocket API (documented in docs/api.md): routes, and the write and read
//! paths shared by HTTP and WebSocket clients.

mod messages;
mod ws;

pub use ws::Sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::Access;
use crate::broker::{BrokerError, Original, WriteOutcome};
use crate::http::{ApiError, MessagesPage, WriteFate, metrics_response};
use crate::message::{Message, NewMessage, now_millis};
use crate::node::Node;
use crate::node::store::{LocalPage, within_bytes};

/// CORS (Fetch standard) for the origins `--allowed-origins` lists: a page on one of them may
/// call the HTTP API from the browser with its token — preflights for `GET`/`POST` with
/// `Authorization`, `Content-Type` and `X-Chat-Token` are answered, and responses carry
/// `Access-Control-Allow-Origin` for that origin (never `*` with credentials: tokens travel in
/// headers, no cookie is used). Other origins get no CORS headers, so their pages cannot read
/// answers; their state-changing requests are refused by the Origin check as before.
pub fn cors(access: &Access) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method, header};
    let origins = access.origins.clone();
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(
            move |origin, _| origin.to_str().is_ok_and(|o| origins.lists(o)),
        ))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static(crate::auth::TOKEN_HEADER),
        ])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(std::time::Duration::from_secs(600))
}

/// Builds the router of a node; its WebSocket sessions are tracked in `sessions`, clients are
/// admitted by `access`.
pub fn router(node: Node, sessions: Sessions, access: Access) -> Router {
    let cors = cors(&access);
    Router::new()
        .route("/channels", get(messages::list_channels))
        .route(
            "/channels/{channel}/messages",
            get(messages::read_channel).post(messages::post_message),
        )
        .route("/messages", get(messages::read_default))
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .merge(crate::ui::routes())
        .layer(
            // A span per request; answers are logged at debug (a 503 from /readyz while
            // bootstrapping is expected, and failed writes log their own warning).
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(axum::Extension(sessions))
        .layer(axum::Extension(access))
        .layer(cors)
        .with_state(node)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(node): State<Node>) -> Response {
    let status = node.status();
    if node.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        let why = status.error.map(|e| format!(": {e}")).unwrap_or_default();
        ApiError::unavailable(format!(
            "phase is {:?}, lag {}{why}",
            status.phase, status.lag
        ))
        .into_response()
    }
}

/// `GET /status`. Its details (`epoch`, `error`: broker and replica errors) go only to the
/// data plane and the operator, which send the internal token (when one is configured); others
/// see the counters the operator's rollout gate reads.
async fn status(
    State(node): State<Node>,
    axum::Extension(access): axum::Extension<Access>,
    headers: axum::http::HeaderMap,
) -> Response {
    let status = node.status();
    let status = if access.internal(&headers) {
        status
    } else {
        status.without_details()
    };
    axum::Json(status).into_response()
}

async fn metrics(State(node): State<Node>) -> Response {
    let (held, channels) = {
        let store = node.read_lock();
        (store.held_bytes(), store.channel_count())
    };
    let m = node.metrics();
    m.window_bytes.set(i64::try_from(held).unwrap_or(i64::MAX));
    m.channels.set(i64::try_from(channels).unwrap_or(i64::MAX));
    metrics_response(&m.registry)
}

/// At most one "write failed" warning per 10 s: in a broker outage every request fails, and the
/// count of the others is logged with the next one (`broker_errors` in /metrics counts them all).
static WRITE_FAILED_LOG: crate::telemetry::Throttle =
    crate::telemetry::Throttle::new(std::time::Duration::from_secs(10));

/// Writes one message through the broker: validation, then the Lua script. Every write has an
/// id (the client's, or a generated UUID). `Ok` means stored (new or an earlier write with the
/// same id); an error is `400`/`413` (bad input), `409` (a new channel over `--max-channels`,
/// nothing stored), `429` (a write over its token subject's rate, `--write-rate-per-author`, or
/// one with an id over `--id-write-rate-per-author`; nothing stored), `503` (not stored) or `504` (outcome unknown),
/// the last two naming the id to retry with (docs/api.md, "Write semantics").
pub(crate) async fn write(node: &Node, msg: NewMessage) -> Result<WriteOutcome, ApiError> {
    if let Err(e) = msg.validate(node.settings().max_message_bytes) {
        node.metrics().rejected.inc();
        return Err(e.into());
    }
    let max = node.settings().max_channels;
    if !node.read_lock().admits(&msg.channel, max) {
        node.metrics().channel_limit_refusals.inc();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "channel limit reached: {max} channels exist (--max-channels); nothing was \
                 stored, write to an existing channel"
            ),
        ));
    }
    let generated = crate::message::random_uuid().to_string();
    let id = msg.id.clone().unwrap_or_else(|| generated.clone());
    let Some(broker) = node.broker() else {
        return Err(ApiError::write_failed(
            "broker unavailable: not connected yet",
            id,
            WriteFate::NotStored,
        ));
    };
    // A write belongs to the epoch its node follows (the script refuses it in any other), so
    // a lost reply can be resolved: a node that has not read the broker's epoch cannot write.
    let Some(epoch) = node.epoch() else {
        return Err(ApiError::write_failed(
            "broker unavailable: this node has not read the broker's epoch yet (it is starting)",
            id,
            WriteFate::NotStored,
        ));
    };
    // A node that has not caught up with the broker (bootstrapping, catching up, or reloading
    // after a broker loss) holds less than the broker handed out, so the write script's check
    // that the broker did not go back below what this node holds (`holds`) would vouch for
    // nothing: a write through it could take a position another node already applied with
    // another message (found by a reviewer: a broker rolled back in place, and a starting node
    // that held position 0 wrote 11..20 over 11..20). It writes once it is live.
    match node.phase() {
        Ok(crate::node::Phase::Live) => {}
        phase => {
            let phase = phase.map_or("unknown", |p| p.as_str());
            return Err(ApiError::write_failed(
                format!(
                    "broker unavailable: this node is {phase}, not live: it has not caught up \
                     with the broker yet; retry (on another node)"
                ),
                id,
                WriteFate::NotStored,
            ));
        }
    }
    // Per-author limits last among the refusals that store nothing, so a write refused for
    // another reason spends no token; the write bucket before the id bucket, for the same reason.
    if let Some(subject) = &msg.scope {
        let limits = &node.settings().rate_limits;
        limits.check_write(subject)?;
        if msg.id.is_some() {
            limits.check_id_write(subject)?;
        }
    }
    let started = std::time::Instant::now();
    let holds = node.read_lock().cursor();
    let outcome = broker
        .write(&msg, &generated, now_millis(), holds, &epoch)
        .await
        .map_err(|e| {
            node.note_broker_write(Some(&e.to_string()));
            node.metrics().broker_errors.inc();
            if e.is_outcome_unknown() {
                node.metrics().outcome_unknown.inc();
            }
            if let Some(suppressed) = WRITE_FAILED_LOG.admit(std::time::Instant::now()) {
                tracing::warn!(
                    error = %e,
                    id = %id,
                    suppressed,
                    "write failed (further failures within 10 s are counted, not logged)"
                );
            }
            write_error(&e, id)
        })?;
    node.note_broker_write(None);
    node.metrics()
        .write_seconds
        .observe(started.elapsed().as_secs_f64());
    match &outcome {
        WriteOutcome::Accepted(_) => node.metrics().accepted.inc(),
        WriteOutcome::Duplicate(_) => node.metrics().duplicates.inc(),
    };
    Ok(outcome)
}

/// The answer to a write the broker did not store, or may have: `504` with outcome `unknown` when
/// the broker could not tell, else `503` with outcome `not_stored` (saying so when Redis is out
/// of memory).
fn write_error(e: &BrokerError, id: String) -> ApiError {
    if e.is_outcome_unknown() {
        ApiError::write_failed(
            format!("outcome unknown: {e}; retry with the same id"),
            id,
            WriteFate::Unknown,
        )
    } else {
        let text = e.to_string();
        let reason = crate::limits::broker_out_of_memory(&text)
            .unwrap_or_else(|| format!("broker unavailable: {text}"));
        ApiError::write_failed(reason, id, WriteFate::NotStored)
    }
}

/// The original message of a repeated id as the HTTP API answers it (`200`). The text comes from
/// the broker's stream entry; once that was trimmed, from this node's history by position (memory,
/// then the replication log). When neither holds it, the answer has `"text": null`.
pub(crate) async fn original_body(node: &Node, original: Original) -> serde_json::Value {
    let message = match original.message() {
        Some(m) => Some(m),
        None => read_page(
            node,
            &original.channel,
            original.position.saturating_sub(1),
            original.position,
            1,
        )
        .await
        .ok()
        .and_then(|page| page.into_iter().next())
        .filter(|m| m.position == original.position && m.id == original.id)
        .map(Arc::unwrap_or_clone),
    };
    let known = message.is_some();
    let message = message.unwrap_or_else(|| Message {
        position: original.position,
        channel: original.channel,
        id: original.id,
        author: original.author,
        text: String::new(),
        sent_at: original.sent_at,
    });
    let mut body = serde_json::to_value(&message).unwrap_or_default();
    if !known {
        body["text"] = serde_json::Value::Null;
    }
    body
}

/// Payload bytes (text, id, author, channel) a page of messages holds at most: 1 MiB, so a
/// reader asking for 10,000 large messages cannot make a node copy and render tens of MiB. A
/// single message larger than this is a page of its own.
pub const PAGE_BYTES: usize = 1 << 20;

/// How many messages to ask the replication log for when a page of `limit` reaches below the
/// window: at most `8 × PAGE_BYTES / max_message_bytes` (2,048 at the default 4,096-byte limit),
/// so the log's answer a node parses stays within about 8 MiB of text whatever `limit` is; at
/// least 1.
pub fn log_request_limit(limit: usize, max_message_bytes: usize) -> usize {
    limit.min(8 * PAGE_BYTES / max_message_bytes.max(1)).max(1)
}

/// One page of a channel: from memory when the window holds it, else from the replication log
/// and then memory; at most `limit` messages and [`PAGE_BYTES`] of payload. Never returns a page
/// with a hole, and never ends early: every page is complete up to its last message (a page cut
/// by `limit` or by bytes continues at its last position), an empty page means nothing exists in
/// `after+1 ..= upto`, and a range that left the window and that no replica holds yet is an error
/// (`503` with `Retry-After`), not an empty page.
pub(crate) async fn read_page(
    node: &Node,
    channel: &str,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<Arc<Message>>, ApiError> {
    let local = node
        .read_lock()
        .page_within(channel, after, upto, limit, PAGE_BYTES);
    let evicted_through = match local {
        LocalPage::Complete(page) => return Ok(page),
        LocalPage::Evicted { evicted_through } => evicted_through,
    };
    let needed = evicted_through.min(upto);
    let unavailable = |why: String| {
        node.metrics().history_unavailable.inc();
        ApiError::unavailable(format!(
            "history of {channel} after position {after} has left this node's memory and the \
             replication log does not hold it yet: {why}"
        ))
        .with_retry_after(1)
    };
    let asked = log_request_limit(limit, node.settings().max_message_bytes);
    let from_log = node
        .log()
        .channel_page(channel, after, asked, needed)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    // A full answer may stop short of `needed`: then it is the page, complete up to its end.
    let full = from_log.page.messages.len() >= asked;
    let mut page: Vec<Arc<Message>> = from_log
        .page
        .messages
        .into_iter()
        .take_while(|m| m.position <= upto && m.position <= from_log.covered)
        .map(Arc::new)
        .collect();
    let fits = within_bytes(page.iter().map(|m| m.payload_bytes()), PAGE_BYTES);
    if fits < page.len() {
        // Cut by bytes: complete up to its last message, which is all a page promises.
        page.truncate(fits);
        return Ok(page);
    }
    if !from_log.enough {
        // The log is behind: what it returned is complete up to its last message; past that
        // nothing can be said yet.
        if page.is_empty() {
            return Err(unavailable(format!(
                "{} holds it only through position {}, position {needed} is needed",
                from_log.source, from_log.covered
            )));
        }
        return Ok(page);
    }
    if full {
        return Ok(page);
    }
    let reached = page.last().map_or(after, |m| m.position).max(needed);
    if page.len() < limit
        && let LocalPage::Complete(rest) =
            node.read_lock()
                .page(channel, reached, upto, limit - page.len())
    {
        page.extend(rest);
        let fits = within_bytes(page.iter().map(|m| m.payload_bytes()), PAGE_BYTES);
        page.truncate(fits);
    }
    Ok(page)
}

/// A page as the HTTP API answers it.
pub(crate) fn page_body(page: Vec<Arc<Message>>) -> MessagesPage {
    MessagesPage::new(page.into_iter().map(Arc::unwrap_or_clone).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page limit and message size limit → messages asked of the replication log.
    #[test]
    fn log_request_limit_table() {
        let table = [
            (10_000, 4096, 2048),
            (1000, 4096, 1000),
            (1, 4096, 1),
            (10_000, 1, 10_000),
            (10_000, 1 << 20, 8),
            (10_000, 1 << 24, 1),
            (10_000, 0, 10_000),
        ];
        for (limit, max_message_bytes, want) in table {
            assert_eq!(
                log_request_limit(limit, max_message_bytes),
                want,
                "limit {limit} max message {max_message_bytes}"
            );
        }
    }

    /// Broker error → status, outcome and id of the answer.
    #[test]
    fn write_errors_say_whether_anything_was_stored() {
        let table: Vec<(BrokerError, StatusCode, WriteFate)> = vec![
            (
                BrokerError::NotAnchored,
                StatusCode::SERVICE_UNAVAILABLE,
                WriteFate::NotStored,
            ),
            (
                BrokerError::NotValidated,
                StatusCode::SERVICE_UNAVAILABLE,
                WriteFate::NotStored,
            ),
            (
                BrokerError::DeadlinePassed,
                StatusCode::SERVICE_UNAVAILABLE,
                WriteFate::NotStored,
            ),
            (
                BrokerError::Abandoned("timed out".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                WriteFate::NotStored,
            ),
            (
                BrokerError::Protocol("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                WriteFate::NotStored,
            ),
            (
                BrokerError::OutcomeUnknown("timed out".into()),
                StatusCode::GATEWAY_TIMEOUT,
                WriteFate::Unknown,
            ),
        ];
        for (e, status, fate) in table {
            let answer = write_error(&e, "k1".into());
            assert_eq!(answer.status, status, "{e}");
            assert_eq!(answer.write, Some(("k1".to_owned(), fate)), "{e}");
        }
    }
}
