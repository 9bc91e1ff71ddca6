//! HTTP pieces shared by the chat-server and replication-log APIs: the JSON error type, the
//! `after`/`limit` query of message pages, the page response, and `/metrics` rendering.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::message::{InvalidInput, Message};

/// Default and largest `limit` of a message page.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// An API error: an HTTP status and a reason, answered as `{"error": "<reason>"}`. A failed write
/// that got past validation also names its id and outcome: `{"error", "id", "outcome"}`, with a
/// `Retry-After` header (docs/api.md, "Write semantics").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
    /// Seconds after which a retry may succeed, sent as `Retry-After` (RFC 9110 §10.2.3).
    pub retry_after: Option<u32>,
    /// For a write: its id (the client's, or the one the server generated) and what is known of
    /// its outcome.
    pub write: Option<(String, WriteFate)>,
    /// A `WWW-Authenticate` challenge (RFC 6750 §3) for a 401/403 of the token check.
    pub challenge: Option<String>,
}

/// What an error answer says about the write it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteFate {
    /// Nothing was stored, and nothing will be: retrying (with or without the id) is safe.
    NotStored,
    /// It may or may not be stored: retry with the same id to learn which, without storing twice.
    Unknown,
}

/// Seconds a client should wait before retrying a failed write (the `Retry-After` header).
pub const WRITE_RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
            retry_after: None,
            write: None,
            challenge: None,
        }
    }

    /// The same error, telling the client to retry after `seconds`.
    pub fn with_retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }

    pub fn unavailable(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }

    /// A write that failed after validation: `503` when nothing was stored, `504` when the outcome
    /// is unknown; both name the write's `id`.
    pub fn write_failed(
        reason: impl Into<String>,
        id: impl Into<String>,
        fate: WriteFate,
    ) -> ApiError {
        let status = match fate {
            WriteFate::NotStored => StatusCode::SERVICE_UNAVAILABLE,
            WriteFate::Unknown => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError {
            status,
            reason: reason.into(),
            retry_after: Some(WRITE_RETRY_AFTER_SECS as u32),
            write: Some((id.into(), fate)),
            challenge: None,
        }
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> ApiError {
        let status = match e {
            InvalidInput::TextTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<WriteFate>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: &self.reason,
            id: self.write.as_ref().map(|(id, _)| id.as_str()),
            outcome: self.write.as_ref().map(|(_, fate)| *fate),
        });
        let mut resp = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if let Some(challenge) = self
            .challenge
            .as_deref()
            .and_then(|c| axum::http::HeaderValue::from_str(c).ok())
        {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, challenge);
        }
        resp
    }
}

/// `?after=P&limit=N`, validated: `after` a non-negative integer (default 0), `limit` in
/// `1..=10000` (default 1000). Unknown parameters are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    pub after: u64,
    pub limit: usize,
}

impl PageQuery {
    /// Parses a raw query string.
    pub fn parse(query: Option<&str>) -> Result<PageQuery, ApiError> {
        let mut page = PageQuery {
            after: 0,
            limit: DEFAULT_LIMIT,
        };
        for (key, value) in form_pairs(query.unwrap_or("")) {
            match key.as_str() {
                "after" => {
                    page.after = value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "after must be a non-negative integer, got {value:?}"
                        ))
                    })?
                }
                "limit" => {
                    let limit: usize = value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}, got {value:?}"
                        ))
                    })?;
                    if !(1..=MAX_LIMIT).contains(&limit) {
                        return Err(ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}, got {limit}"
                        )));
                    }
                    page.limit = limit;
                }
                _ => {}
            }
        }
        Ok(page)
    }
}

/// Default and largest `limit` of a `GET /channels` page.
pub const CHANNELS_DEFAULT_LIMIT: usize = 1000;
pub const CHANNELS_MAX_LIMIT: usize = 10_000;

/// `GET /channels?after=NAME&limit=N`, validated: `after` a channel name (default: from the
/// first), `limit` in `1..=10000` (default 1000). Unknown parameters are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelsQuery {
    pub after: Option<String>,
    pub limit: usize,
}

impl ChannelsQuery {
    /// Parses a raw query string.
    pub fn parse(query: Option<&str>) -> Result<ChannelsQuery, ApiError> {
        let mut page = ChannelsQuery {
            after: None,
            limit: CHANNELS_DEFAULT_LIMIT,
        };
        for (key, value) in form_pairs(query.unwrap_or("")) {
            match key.as_str() {
                "after" => page.after = Some(value).filter(|v| !v.is_empty()),
                "limit" => {
                    page.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=CHANNELS_MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be an integer from 1 to {CHANNELS_MAX_LIMIT}, got {value:?}"
                            ))
                        })?;
                }
                _ => {}
            }
        }
        Ok(page)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ChannelsQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ChannelsQuery, ApiError> {
        ChannelsQuery::parse(parts.uri.query())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<PageQuery, ApiError> {
        PageQuery::parse(parts.uri.query())
    }
}

/// Decodes `a=1&b=x%20y` into pairs (percent-decoding and `+` as space).
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"messages": [...], "next": P'}`: `next` is the last position returned, or null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MessagesPage {
    pub messages: Vec<Message>,
    pub next: Option<u64>,
}

impl MessagesPage {
    pub fn new(messages: Vec<Message>) -> MessagesPage {
        let next = messages.last().map(|m| m.position);
        MessagesPage { messages, next }
    }
}

/// Renders a registry in the Prometheus text format.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_query_defaults_and_bounds() {
        assert_eq!(
            PageQuery::parse(None).unwrap(),
            PageQuery {
                after: 0,
                limit: 1000
            }
        );
        assert_eq!(
            PageQuery::parse(Some("after=5&limit=10000&x=y")).unwrap(),
            PageQuery {
                after: 5,
                limit: 10000
            }
        );
        for bad in ["after=x", "after=-1", "limit=0", "limit=10001", "limit=abc"] {
            let e = PageQuery::parse(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn form_pairs_decode() {
        assert_eq!(
            form_pairs("channel=a%2Db&after=3&q=x+y&bad=%zz"),
            vec![
                ("channel".into(), "a-b".into()),
                ("after".into(), "3".into()),
                ("q".into(), "x y".into()),
                ("bad".into(), "%zz".into())
            ]
        );
    }

    /// `GET /channels` query strings → page or 400.
    #[test]
    fn channels_query_table() {
        let ok = |after: Option<&str>, limit| ChannelsQuery {
            after: after.map(str::to_owned),
            limit,
        };
        let table: Vec<(Option<&str>, Result<ChannelsQuery, ()>)> = vec![
            (None, Ok(ok(None, 1000))),
            (Some(""), Ok(ok(None, 1000))),
            (Some("after="), Ok(ok(None, 1000))),
            (Some("after=room-1"), Ok(ok(Some("room-1"), 1000))),
            (Some("after=a%2Eb&limit=2"), Ok(ok(Some("a.b"), 2))),
            (Some("limit=10000&x=y"), Ok(ok(None, 10000))),
            (Some("limit=0"), Err(())),
            (Some("limit=10001"), Err(())),
            (Some("limit=-1"), Err(())),
            (Some("limit=abc"), Err(())),
        ];
        for (query, want) in table {
            let got = ChannelsQuery::parse(query);
            match (&got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, &want, "{query:?}"),
                (Err(e), Err(())) => assert_eq!(e.status, StatusCode::BAD_REQUEST, "{query:?}"),
                (got, want) => panic!("{query:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
