//! The shared internal token of the data plane: chat-server nodes send it to replicas (history
//! pages, snapshots), replicas to their peers, and the operator with its `/status` probes, in
//! the [`INTERNAL_TOKEN_HEADER`] header. A replica (and a node's `/status` details) answer the
//! internal endpoints only to a request carrying it, compared in constant time.
//!
//! A custom header and not `Authorization`: the operator reaches pods through the API server's
//! pod proxy, which consumes `Authorization` (its own credentials) and never forwards it.

use std::path::Path;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;

use super::token::trim_secret;

/// The header carrying the internal token.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// Shortest internal token accepted, in bytes.
pub const MIN_INTERNAL_TOKEN_BYTES: usize = 16;

/// The internal token (cheap to clone; never printed).
#[derive(Clone)]
pub struct InternalToken(Arc<[u8]>);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(<redacted>)")
    }
}

impl InternalToken {
    /// From `--internal-token-file` or the `INTERNAL_TOKEN` value (trailing newlines removed);
    /// `None` when neither is given. Errors: both given, unreadable file, shorter than 16 bytes,
    /// or bytes not allowed in an HTTP header.
    pub fn load(file: Option<&Path>, value: Option<&str>) -> Result<Option<InternalToken>, String> {
        let bytes = match (file, value.filter(|v| !v.is_empty())) {
            (Some(_), Some(_)) => {
                return Err(
                    "give the internal token once: --internal-token-file or INTERNAL_TOKEN".into(),
                );
            }
            (None, None) => return Ok(None),
            (Some(path), None) => std::fs::read(path).map_err(|e| {
                format!("cannot read --internal-token-file {}: {e}", path.display())
            })?,
            (None, Some(v)) => v.as_bytes().to_vec(),
        };
        InternalToken::from_bytes(trim_secret(bytes)).map(Some)
    }

    /// A token from its bytes (see [`InternalToken::load`] for the rules).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<InternalToken, String> {
        if bytes.len() < MIN_INTERNAL_TOKEN_BYTES {
            return Err(format!(
                "the internal token is {} bytes; at least {MIN_INTERNAL_TOKEN_BYTES} are needed",
                bytes.len()
            ));
        }
        if HeaderValue::from_bytes(&bytes).is_err() {
            return Err("the internal token holds bytes not allowed in an HTTP header".into());
        }
        Ok(InternalToken(bytes.into()))
    }

    /// Whether `headers` carry this token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(INTERNAL_TOKEN_HEADER)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(&self.0)))
    }

    /// The header value to send (marked sensitive: never logged by hyper/reqwest).
    pub fn header_value(&self) -> HeaderValue {
        let mut v = HeaderValue::from_bytes(&self.0).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

/// Whether a request may see internal details: always when no token is configured
/// (compatibility, warned at start), else only with the token.
pub fn admitted(token: Option<&InternalToken>, headers: &HeaderMap) -> bool {
    token.is_none_or(|t| t.admits(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token configuration × presented header → admitted or not.
    #[test]
    fn internal_token_admission() {
        let token = InternalToken::from_bytes(b"s3cret-internal-token".to_vec()).expect("token");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                INTERNAL_TOKEN_HEADER,
                HeaderValue::from_str(v).expect("value"),
            );
            h
        };
        let table: Vec<(Option<&InternalToken>, HeaderMap, bool)> = vec![
            (None, HeaderMap::new(), true),
            (None, with("anything"), true),
            (Some(&token), HeaderMap::new(), false),
            (Some(&token), with("s3cret-internal-token"), true),
            (Some(&token), with("s3cret-internal-tokeN"), false),
            (Some(&token), with("s3cret-internal-token-and-more"), false),
            (Some(&token), with(""), false),
        ];
        for (i, (t, headers, want)) in table.into_iter().enumerate() {
            assert_eq!(admitted(t, &headers), want, "case {i}");
        }
        assert!(InternalToken::from_bytes(b"short".to_vec()).is_err());
        assert!(InternalToken::from_bytes(b"bad\nnewline-inside-token".to_vec()).is_err());
        assert!(InternalToken::load(None, None).expect("none").is_none());
        assert!(format!("{token:?}").contains("redacted"));
    }
}
