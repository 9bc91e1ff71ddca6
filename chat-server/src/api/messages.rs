//! HTTP handlers for messages and channels: `POST`/`GET /channels/{channel}/messages`,
//! `GET /messages` and `GET /channels`. Each one identifies the client first ([`Access`]): a
//! POST needs the Origin check and publish permission, reads need read permission, and the
//! channel list holds only readable channels.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{original_body, page_body, read_page, write};
use crate::auth::{Access, AuthError, Identity};
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
    pub(crate) fn into_new_message(self, channel: String, who: &Identity) -> NewMessage {
        new_message(who, channel, self.id, self.author, self.text)
    }
}

/// A write by `who`: under `--auth token` the author comes from the token and a client-supplied
/// one is ignored, and the id is scoped to the token's subject; anonymous clients name their
/// author (default `anonymous`).
pub(crate) fn new_message(
    who: &Identity,
    channel: String,
    id: Option<String>,
    author: Option<String>,
    text: Option<String>,
) -> NewMessage {
    let author = match &who.author {
        Some(from_token) => from_token.clone(),
        None => author.unwrap_or_else(|| "anonymous".to_owned()),
    };
    NewMessage {
        channel,
        id,
        author,
        text: text.unwrap_or_default(),
        scope: who.subject.clone(),
    }
}

/// The refusal when `who` may not read `channel`.
pub(crate) fn check_read(who: &Identity, channel: &str) -> Result<(), AuthError> {
    if who.grants.may_read(channel) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(format!(
            "the token does not grant reading channel {channel}"
        )))
    }
}

/// The refusal when `who` may not publish to `channel`.
pub(crate) fn check_publish(who: &Identity, channel: &str) -> Result<(), AuthError> {
    if who.grants.may_publish(channel) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(format!(
            "the token does not grant publishing to channel {channel}"
        )))
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
    Extension(access): Extension<Access>,
    Path(channel): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.check_origin(&headers)?;
    let who = access.identify(&headers, query.as_deref())?;
    validate_channel(&channel)?;
    check_publish(&who, &channel)?;
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
    let outcome = write(&node, parsed.into_new_message(channel, &who)).await?;
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
    Extension(access): Extension<Access>,
    Path(channel): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    page: PageQuery,
) -> Result<Response, ApiError> {
    let who = access.identify(&headers, query.as_deref())?;
    validate_channel(&channel)?;
    check_read(&who, &channel)?;
    let permit = node.settings().rate_limits.page_read()?;
    let messages = read_page(&node, &channel, page.after, u64::MAX, page.limit).await?;
    let response = Json(page_body(messages)).into_response();
    Ok(crate::limits::hold_until_sent(response, permit, crate::limits::PAGE_SEND_TIMEOUT).await)
}

pub(super) async fn read_default(
    State(node): State<Node>,
    access: Extension<Access>,
    query: RawQuery,
    headers: HeaderMap,
    page: PageQuery,
) -> Result<Response, ApiError> {
    read_channel(
        State(node),
        access,
        Path(DEFAULT_CHANNEL.to_owned()),
        query,
        headers,
        page,
    )
    .await
}

/// `GET /channels?after=NAME&limit=N`: a page of the channels the client may read, by name,
/// `{"channels": [{"name", "messages", "last_position"}], "next": NAME|null}`. The store lock is
/// held only to copy out the page (the channels are kept sorted).
pub(super) async fn list_channels(
    State(node): State<Node>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    query: ChannelsQuery,
) -> Result<Response, ApiError> {
    let who = access.identify(&headers, raw.as_deref())?;
    let (channels, next) =
        node.read_lock()
            .channels_page_where(query.after.as_deref(), query.limit, |name| {
                who.grants.may_read(name)
            });
    Ok(Json(serde_json::json!({ "channels": channels, "next": next })).into_response())
}
