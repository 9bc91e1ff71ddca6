//! The replication log's HTTP API: channel pages, `/snapshot` (NDJSON streamed from disk up to the
//! persisted position at request time), `/healthz`, `/readyz`, `/status` and `/metrics`.
//!
//! With an internal token configured (`--internal-token-file`), channel pages and `/snapshot`
//! answer only requests carrying it (403 otherwise), and `/status` / `/readyz` show their
//! details (`limit`, `epoch`, `error`, `broker_loss`) only to them; `/healthz` and `/metrics`
//! stay open. Without one, everything is open (compatibility; warned at start).

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_stream::wrappers::ReceiverStream;

use futures::StreamExt;
use tracing::{debug, warn};

use super::{Phase, Replica};
use crate::api::PAGE_BYTES;
use crate::auth::internal::{INTERNAL_TOKEN_HEADER, admitted};
use crate::http::{ApiError, MessagesPage, PageQuery, form_pairs, metrics_response};
use crate::log_client::{
    LOG_CLUSTER_ID_HEADER, PERSISTED_POSITION_HEADER, SNAPSHOT_POSITION_HEADER,
};
use crate::message::validate_channel;

/// The replica's routes.
pub fn router(replica: Replica) -> Router {
    let internal = Router::new()
        .route("/channels/{channel}/messages", get(channel_messages))
        .route("/messages/{channel}", get(channel_messages))
        .route("/snapshot", get(snapshot))
        .route_layer(middleware::from_fn_with_state(
            replica.clone(),
            internal_only,
        ));
    Router::new()
        .merge(internal)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(replica)
}

/// Refuses (403) a request without the internal token, when one is configured.
async fn internal_only(State(replica): State<Replica>, request: Request, next: Next) -> Response {
    if admitted(
        replica.settings().internal_token.as_ref(),
        request.headers(),
    ) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this endpoint serves only the data plane: send the internal token in the \
                 {INTERNAL_TOKEN_HEADER} header"
            ),
        )
        .into_response()
    }
}

/// The replica's status as `headers`' sender may see it: without the internal token (when one
/// is configured), only the counters the operator's gate reads.
fn visible_status(replica: &Replica, headers: &HeaderMap) -> serde_json::Value {
    let status = replica.status();
    let status = if admitted(replica.settings().internal_token.as_ref(), headers) {
        status
    } else {
        status.without_details()
    };
    // Through a `Value` (keys in sorted order), as this document has always been served.
    serde_json::to_value(status).unwrap_or_default()
}

/// A channel page, with the persisted position read before it in `X-Persisted-Position`: the
/// page holds every message of the channel after `after` up to that position (or is full), so a
/// reader can tell "nothing more" from "this replica is behind". A page holds at most
/// [`PAGE_BYTES`] of message payload (like a node's); one cut there names its last position in
/// `X-Persisted-Position` instead, as far as it is complete. At most `--max-page-reads` pages
/// are read at once (`503` with `Retry-After` past that).
async fn channel_messages(
    State(replica): State<Replica>,
    Path(channel): Path<String>,
    page: PageQuery,
) -> Result<Response, ApiError> {
    validate_channel(&channel)?;
    refuse_if_diverged(&replica)?;
    let permit = replica.settings().reads.pages.try_acquire()?;
    let store = replica.store().clone();
    let persisted = store.persisted();
    let (messages, cut) = tokio::task::spawn_blocking(move || {
        store.channel_page_within(&channel, page.after, page.limit, PAGE_BYTES)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("read task failed: {e}"),
        )
    })?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // A page cut for bytes is complete only up to its last message: saying so in the header
    // keeps a reader from taking the rest of the range as empty (`protocol::page_covers`).
    let complete_through = match (cut, messages.last()) {
        (true, Some(last)) => last.position,
        _ => persisted,
    };
    let mut resp = Json(MessagesPage::new(messages)).into_response();
    resp.headers_mut().insert(
        PERSISTED_POSITION_HEADER,
        HeaderValue::from(complete_through),
    );
    // The permit goes with the answer until it is sent, not when it is handed to the server.
    Ok(crate::limits::hold_until_sent(resp, Some(permit), crate::limits::PAGE_SEND_TIMEOUT).await)
}

/// A replica whose log diverged from the cluster's history (it holds positions a broker data
/// loss declared void) serves none of it: `503`, so nodes and peers read from another replica
/// instead of copying history the cluster declared lost.
fn refuse_if_diverged(replica: &Replica) -> Result<(), ApiError> {
    if replica.phase() == Phase::Diverged {
        return Err(ApiError::unavailable(format!(
            "this replica's log diverged from the cluster's history and serves none of it ({}); read from another replica",
            replica.error().unwrap_or_default()
        )));
    }
    Ok(())
}

/// Chunks of a snapshot queued between the thread reading them from disk and the response.
/// With the chunk hyper is writing and the one being read, a response holds at most 3 chunks
/// of about 256 KiB (one index block of 64 records may make a chunk larger: 64 messages of 4 KB
/// are about 280 KiB).
const SNAPSHOT_QUEUE: usize = 1;

/// `GET /snapshot?after=P`: every message after P up to the persisted position now, in order,
/// streamed from disk a chunk at a time (each chunk turned into NDJSON in its own buffer; at most
/// [`SNAPSHOT_QUEUE`] queued), so a reader, fast or stalled, holds at most 3 chunks, under 1 MiB,
/// of this replica's memory. At most `--max-snapshots` are
/// streamed at once (`503` with `Retry-After` past that).
/// Headers: `X-Snapshot-Position` (that position) and `X-Log-Cluster-Id` (the log's cluster id,
/// when it has one; a replica copying the snapshot adopts it or refuses a different one).
async fn snapshot(
    State(replica): State<Replica>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut after = 0u64;
    for (key, value) in form_pairs(query.as_deref().unwrap_or("")) {
        if key == "after" {
            after = value.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "after must be a non-negative integer, got {value:?}"
                ))
            })?;
        }
    }
    refuse_if_diverged(&replica)?;
    let store = replica.store().clone();
    let position = store.persisted();
    if after > position {
        return Err(ApiError::unavailable(format!(
            "this replica holds positions up to {position}, not past {after}"
        )));
    }
    let permit = replica.settings().reads.snapshots.try_acquire()?;
    let send_timeout = replica.settings().reads.snapshot_send_timeout;
    replica.metrics().snapshots.inc();
    debug!(after, position, "serving a snapshot");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(SNAPSHOT_QUEUE);
    let stalled = Arc::new(AtomicBool::new(false));
    let mut reader = store.read_after(after, position);
    let runtime = tokio::runtime::Handle::current();
    let stalled_writer = stalled.clone();
    let timeouts = replica.metrics().snapshot_send_timeouts.clone();
    tokio::task::spawn_blocking(move || {
        // Held until the snapshot is sent, the client went away or stopped taking it.
        let _permit = permit;
        loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    let out = chunk.into_ndjson();
                    let sent = runtime.block_on(tokio::time::timeout(
                        send_timeout,
                        tx.send(Ok(Bytes::from(out))),
                    ));
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return, // The client went away.
                        Err(_) => {
                            stalled_writer.store(true, Ordering::Relaxed);
                            timeouts.inc();
                            warn!(
                                after,
                                position,
                                timeout_s = send_timeout.as_secs_f64(),
                                "a snapshot client took nothing for the send timeout; aborting its response"
                            );
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "snapshot read failed; aborting the response");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
    });
    // A stalled response ends with an error, never with a clean end of the body: a client must
    // not take a cut snapshot for a whole one.
    let tail = futures::stream::once(async move {
        stalled
            .load(Ordering::Relaxed)
            .then(|| Err(std::io::Error::other("snapshot send timeout")))
    })
    .filter_map(std::future::ready);
    let body = ReceiverStream::new(rx).chain(tail);
    let mut resp = Body::from_stream(body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(SNAPSHOT_POSITION_HEADER, HeaderValue::from(position));
    if let Some(id) = store.cluster_id()
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        headers.insert(LOG_CLUSTER_ID_HEADER, value);
    }
    Ok(resp)
}

async fn readyz(State(replica): State<Replica>, headers: HeaderMap) -> Response {
    let status = visible_status(&replica, &headers);
    let code = if replica.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status)).into_response()
}

async fn status(State(replica): State<Replica>, headers: HeaderMap) -> Response {
    Json(visible_status(&replica, &headers)).into_response()
}

async fn metrics(State(replica): State<Replica>) -> Response {
    replica.update_lag();
    metrics_response(&replica.metrics().registry)
}
