//! HTTP handlers for messages and channels: `POST`/`GET /channels/{channel}/messages`,
//! `GET /messages` and `GET /channels`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{original_body, page_body, read_page, write};
use crate::broker::WriteOutcome;
use crate::http::{ApiError, ChannelsQuery, PageQuery};
use crate::message::{DEFAULT_CHANNEL, NewMessage, validate_channel};
use crate::node::Node;

/// The body of `POST /channels/{channel}/messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct PostBody {
    pub text: Option<String>,
    pub author: Option<String>,
    pub id: Option<String>,
}

impl PostBody {
    pub(crate) fn into_new_message(self, channel: String) -> NewMessage {
        NewMessage {
            channel,
            id: self.id,
            author: self.author.unwrap_or_else(|| "anonymous".to_owned()),
            text: self.text.unwrap_or_default(),
        }
    }
}

/// The largest request body worth reading: the text at its limit with every byte escaped as
/// `\u00XX`, plus room for id, author and the JSON around them.
pub(crate) fn body_limit(max_message_bytes: usize) -> usize {
    max_message_bytes * 6 + 4096
}

/// Whether reading a body failed on its length limit (413) rather than on the connection.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[tracing::instrument(skip_all, fields(channel = %channel))]
pub(super) async fn post_message(
    State(node): State<Node>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_channel(&channel)?;
    let limit = body_limit(node.settings().max_message_bytes);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let deadline = node.settings().http_body_timeout;
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_length_limit(&e) => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(ApiError::bad_request(format!(
                "reading the request body failed: {e}; nothing was stored"
            )));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s (--http-body-timeout); nothing \
                     was stored",
                    deadline.as_secs_f64()
                ),
            ));
        }
    };
    let parsed: PostBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let outcome = write(&node, parsed.into_new_message(channel)).await?;
    Ok(match outcome {
        WriteOutcome::Accepted(m) => (StatusCode::CREATED, Json(m)).into_response(),
        WriteOutcome::Duplicate(o) => {
            (StatusCode::OK, Json(original_body(&node, o).await)).into_response()
        }
    })
}

#[tracing::instrument(skip_all, fields(channel = %channel))]
pub(super) async fn read_channel(
    State(node): State<Node>,
    Path(channel): Path<String>,
    page: PageQuery,
) -> Result<Response, ApiError> {
    validate_channel(&channel)?;
    let messages = read_page(&node, &channel, page.after, u64::MAX, page.limit).await?;
    Ok(Json(page_body(messages)).into_response())
}

pub(super) async fn read_default(
    State(node): State<Node>,
    page: PageQuery,
) -> Result<Response, ApiError> {
    read_channel(State(node), Path(DEFAULT_CHANNEL.to_owned()), page).await
}

/// `GET /channels?after=NAME&limit=N`: a page of channels by name,
/// `{"channels": [{"name", "messages", "last_position"}], "next": NAME|null}`. The store lock is
/// held only to copy out the page (the channels are kept sorted).
pub(super) async fn list_channels(State(node): State<Node>, query: ChannelsQuery) -> Response {
    let (channels, next) = node
        .read()
        .channels_page(query.after.as_deref(), query.limit);
    Json(serde_json::json!({ "channels": channels, "next": next })).into_response()
}
