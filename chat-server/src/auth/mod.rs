//! Who may do what on a chat-server node (docs/api.md, "Authentication and permissions"): the
//! `--auth` mode and its flags ([`AuthFlags`]), the node's [`Access`] rules built from them, and
//! how a request's credentials become an [`Identity`] or an RFC 6750 error.
//!
//! - [`token`]: verifying JWT connection tokens (jsonwebtoken) into identities;
//! - [`grants`]: per-channel read/publish permissions from token claims;
//! - [`origin`]: the `Origin` check of browser WebSocket handshakes and POSTs;
//! - [`internal`]: the data plane's shared internal token (replicas, `/status` details).
//!
//! Token transport: HTTP requests send `Authorization: Bearer <jwt>` (RFC 6750 §2.1), or, behind
//! a proxy that consumes `Authorization` (the Kubernetes API server's service and pod proxy,
//! `kubectl proxy`), the token alone in [`TOKEN_HEADER`] (`X-Chat-Token`).
//! WebSocket handshakes send the same header, or, from browsers (whose WebSocket API cannot set
//! headers), the subprotocols `chat-cluster` and `bearer.<jwt>`: the server selects
//! `chat-cluster` and never echoes the token. A token in the URL query is refused: URLs are
//! written to access logs, proxy logs and browser history (RFC 6750 §5.3).

pub mod grants;
pub mod internal;
pub mod origin;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use clap::{Args, ValueEnum};

use crate::http::ApiError;
pub use grants::Grants;
pub use internal::InternalToken;
pub use origin::OriginPolicy;
pub use token::{ClaimRules, Identity, KeySource, TokenError, TokenVerifier};

/// The realm named in `WWW-Authenticate` challenges.
pub const REALM: &str = "chat-cluster";
/// The WebSocket subprotocol a browser offers next to `bearer.<jwt>`, and the one selected.
pub const WS_PROTOCOL: &str = "chat-cluster";
/// Prefix of the subprotocol carrying a token.
pub const WS_BEARER_PREFIX: &str = "bearer.";
/// Header carrying the token alone, for clients behind a proxy that consumes `Authorization`
/// and never forwards it (the Kubernetes API server's service and pod proxy authenticates the
/// caller with it and removes it; `kubectl proxy` likewise). `Authorization` wins when both are
/// sent.
pub const TOKEN_HEADER: &str = "x-chat-token";

/// `--auth`: how clients are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Anonymous: every client may read and write every channel under any author it names.
    None,
    /// A JWT on every client request (HTTP and WebSocket).
    Token,
}

/// Authentication flags of chat-server (docs/configuration.md, "Authentication").
#[derive(Debug, Clone, Default, Args)]
pub struct AuthFlags {
    /// `none` (anonymous; for local runs and tests) or `token` (a JWT on every client request).
    /// Required unless a key flag implies `token`.
    #[arg(long, env = "CHAT_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// File holding the HS256 secret (at least 32 bytes; trailing newlines are removed), e.g. a
    /// mounted Kubernetes Secret.
    #[arg(long, env = "AUTH_HMAC_KEY_FILE")]
    pub auth_hmac_key_file: Option<PathBuf>,
    /// The HS256 secret itself (prefer the file, or set it from a Secret as an environment
    /// variable: a flag's value shows in the process list).
    #[arg(long, env = "AUTH_HMAC_KEY", hide_env_values = true)]
    pub auth_hmac_key: Option<String>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    #[arg(long, env = "AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,
    /// JWKS file (RFC 7517) of RSA / EC P-256 public keys; tokens name theirs with `kid`.
    #[arg(long, env = "AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Required `aud` of tokens (unchecked when unset).
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Required `iss` of tokens (unchecked when unset).
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "AUTH_LEEWAY", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_leeway: u64,
    /// Claim holding a display name written as the message's `author` (e.g. `name`); the
    /// subject (`sub`) when unset or absent. Idempotency keys are always scoped to `sub`.
    #[arg(long, env = "AUTH_NAME_CLAIM")]
    pub auth_name_claim: Option<String>,
    /// Origins (scheme://host[:port]) whose browser pages may open WebSockets and POST, besides
    /// the node's own (same host and port as the request's Host); comma-separated, `*` for any.
    #[arg(long, env = "ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// File holding the data plane's internal token: sent to replicas, and required from
    /// whoever asks for this node's `/status` details.
    #[arg(long, env = "INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,
    /// The internal token itself (prefer the file or an environment variable from a Secret).
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
}

/// A node's access rules. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Access {
    pub authenticator: Authenticator,
    pub origins: OriginPolicy,
    pub internal: Option<InternalToken>,
}

impl Access {
    /// Anonymous, same-origin, no internal token (tests of other modules).
    pub fn anonymous() -> Access {
        Access {
            authenticator: Authenticator::Anonymous,
            origins: OriginPolicy::default(),
            internal: None,
        }
    }
}

/// How a node identifies client requests.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// `--auth none`.
    Anonymous,
    /// `--auth token`.
    Token(Arc<TokenVerifier>),
}

impl AuthFlags {
    /// The key source the flags name, if any; an error when more than one is given.
    fn key_source(&self) -> Result<Option<KeySource>, String> {
        let mut sources = Vec::new();
        if let Some(path) = &self.auth_hmac_key_file {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read --auth-hmac-key-file {}: {e}", path.display()))?;
            sources.push(KeySource::Hmac(token::trim_secret(bytes)));
        }
        if let Some(key) = self.auth_hmac_key.as_ref().filter(|k| !k.is_empty()) {
            sources.push(KeySource::Hmac(token::trim_secret(key.as_bytes().to_vec())));
        }
        if let Some(path) = &self.auth_public_key_file {
            sources.push(KeySource::PublicKeyFile(path.clone()));
        }
        if let Some(path) = &self.auth_jwks_file {
            sources.push(KeySource::JwksFile(path.clone()));
        }
        match sources.len() {
            0 => Ok(None),
            1 => Ok(sources.pop()),
            _ => Err("give one token key: --auth-hmac-key-file, AUTH_HMAC_KEY, \
                      --auth-public-key-file or --auth-jwks-file"
                .into()),
        }
    }

    /// The access rules these flags describe. Errors (one line each, for the start-up exit):
    /// no `--auth` and no key; `--auth none` with a key; `--auth token` without one; a key or
    /// origin list that cannot be used.
    pub fn access(&self) -> Result<Access, String> {
        let source = self.key_source()?;
        let authenticator = match (self.auth, source) {
            (None, None) => {
                return Err(
                    "no authentication configured: pass --auth token with a key \
                     (--auth-hmac-key-file, --auth-public-key-file or --auth-jwks-file), or \
                     --auth none (CHAT_AUTH=none) to serve anonymous clients"
                        .into(),
                );
            }
            (Some(AuthMode::None), Some(_)) => {
                return Err("--auth none contradicts the token key given; drop one".into());
            }
            (Some(AuthMode::Token), None) => {
                return Err(
                    "--auth token needs a key: --auth-hmac-key-file, AUTH_HMAC_KEY, \
                            --auth-public-key-file or --auth-jwks-file"
                        .into(),
                );
            }
            (Some(AuthMode::None), None) => Authenticator::Anonymous,
            (Some(AuthMode::Token) | None, Some(source)) => {
                let rules = ClaimRules {
                    audience: self.auth_audience.clone(),
                    issuer: self.auth_issuer.clone(),
                    leeway: self.auth_leeway,
                    name_claim: self.auth_name_claim.clone(),
                };
                let verifier = TokenVerifier::new(&source, rules).map_err(|e| e.to_string())?;
                Authenticator::Token(Arc::new(verifier))
            }
        };
        Ok(Access {
            authenticator,
            origins: OriginPolicy::parse(&self.allowed_origins)?,
            internal: InternalToken::load(
                self.internal_token_file.as_deref(),
                self.internal_token.as_deref(),
            )?,
        })
    }
}

/// Why a client request is refused, answered per RFC 6750 §3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials: 401 with a bare `Bearer realm` challenge (§3.1: no error code).
    #[error("authentication required: send a bearer token")]
    Missing,
    /// Bad credentials: 401 `invalid_token`.
    #[error("invalid token: {0}")]
    Invalid(TokenError),
    /// A malformed request (a token in the URL, a broken Authorization header): 400
    /// `invalid_request`.
    #[error("{0}")]
    BadRequest(String),
    /// The token does not grant this: 403 `insufficient_scope`.
    #[error("{0}")]
    Forbidden(String),
    /// A cross-origin browser request: 403.
    #[error("{0}")]
    Origin(String),
}

/// Longest `error_description` sent, in characters (the JSON body keeps the whole reason).
const MAX_DESCRIPTION: usize = 200;

/// `text` as an RFC 6750 §3 `error_description` value: only printable ASCII other than `"` and
/// `\` (`%x20-21 / %x23-5B / %x5D-7E`; others become `'` or `?`), at most [`MAX_DESCRIPTION`]
/// characters (a reason can quote a client-supplied claim of any size).
fn quoted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_DESCRIPTION)
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    if text.chars().count() > MAX_DESCRIPTION {
        out.push_str("...");
    }
    out
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let reason = e.to_string();
        let (status, challenge) = match &e {
            AuthError::Missing => (
                StatusCode::UNAUTHORIZED,
                Some(format!("Bearer realm=\"{REALM}\"")),
            ),
            AuthError::Invalid(_) => (
                StatusCode::UNAUTHORIZED,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                    quoted(&reason)
                )),
            ),
            AuthError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{}\"",
                    quoted(&reason)
                )),
            ),
            AuthError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                    quoted(&reason)
                )),
            ),
            AuthError::Origin(_) => (StatusCode::FORBIDDEN, None),
        };
        let mut err = ApiError::new(status, reason);
        err.challenge = challenge;
        err
    }
}

/// Query parameters that would carry a token in a URL; refused.
const TOKEN_QUERY_PARAMS: [&str; 2] = ["token", "access_token"];

impl Access {
    /// The identity of a client request from its headers (`Authorization: Bearer`, and for a
    /// WebSocket handshake the `bearer.<jwt>` subprotocol) and query (which must not carry a
    /// token). Anonymous under `--auth none`.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(q) = query
            && crate::http::form_pairs(q)
                .iter()
                .any(|(k, _)| TOKEN_QUERY_PARAMS.contains(&k.as_str()))
        {
            return Err(AuthError::BadRequest(
                "a token in the URL is refused (URLs are logged): send it in the Authorization \
                 header or the bearer.<token> WebSocket subprotocol"
                    .into(),
            ));
        }
        let verifier = match &self.authenticator {
            Authenticator::Anonymous => return Ok(Identity::anonymous()),
            Authenticator::Token(v) => v,
        };
        let token = bearer(headers)?.ok_or(AuthError::Missing)?;
        verifier.verify(&token).map_err(AuthError::Invalid)
    }

    /// The Origin check of a state-changing browser request (POST, WebSocket handshake).
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
        };
        self.origins
            .check(text(header::ORIGIN), text(header::HOST))
            .map_err(AuthError::Origin)
    }

    /// Whether the request may see internal details (see [`internal::admitted`]).
    pub fn internal(&self, headers: &HeaderMap) -> bool {
        internal::admitted(self.internal.as_ref(), headers)
    }
}

/// The bearer token of a request: `Authorization: Bearer <t>` (scheme case-insensitive,
/// RFC 6750 §2.1), else `X-Chat-Token: <t>` ([`TOKEN_HEADER`]), else a `bearer.<t>` entry of
/// `Sec-WebSocket-Protocol`. An `Authorization` header of another scheme, or an empty
/// `X-Chat-Token`, is a 400.
pub fn bearer(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or("");
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::BadRequest(
                "the Authorization header must be \"Bearer <token>\"".into(),
            ));
        }
        return Ok(Some(token.to_owned()));
    }
    if let Some(value) = headers.get(TOKEN_HEADER) {
        let token = value.to_str().unwrap_or("").trim();
        if token.is_empty() {
            return Err(AuthError::BadRequest(
                "the X-Chat-Token header must hold the token".into(),
            ));
        }
        return Ok(Some(token.to_owned()));
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(WS_BEARER_PREFIX))
        .map(str::to_owned);
    Ok(offered.filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn error_description_is_rfc_6750_ascii() {
        // (reason, description)
        let long = "x".repeat(300);
        let cases = [
            ("plain words", "plain words".to_owned()),
            ("a \"quoted\" \\ path", "a 'quoted' ' path".to_owned()),
            ("caf\u{e9}\r\ninjected: 1", "caf???injected: 1".to_owned()),
            (long.as_str(), format!("{}...", "x".repeat(MAX_DESCRIPTION))),
        ];
        for (reason, want) in cases {
            assert_eq!(quoted(reason), want, "{reason:?}");
        }
    }

    /// Headers → the bearer token found, or the refusal.
    #[test]
    fn bearer_extraction() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        let table: Vec<(HeaderMap, Result<Option<&str>, ()>)> = vec![
            (headers(&[]), Ok(None)),
            (
                headers(&[("authorization", "Bearer abc.def.ghi")]),
                Ok(Some("abc.def.ghi")),
            ),
            (
                headers(&[("authorization", "bearer   abc")]),
                Ok(Some("abc")),
            ),
            (headers(&[("authorization", "Basic dXNlcjpwdw==")]), Err(())),
            (headers(&[("authorization", "Bearer")]), Err(())),
            (
                headers(&[("sec-websocket-protocol", "chat-cluster, bearer.x.y.z")]),
                Ok(Some("x.y.z")),
            ),
            (
                headers(&[
                    ("sec-websocket-protocol", "chat-cluster"),
                    ("sec-websocket-protocol", "bearer.t"),
                ]),
                Ok(Some("t")),
            ),
            (
                headers(&[("sec-websocket-protocol", "chat-cluster")]),
                Ok(None),
            ),
            (headers(&[("sec-websocket-protocol", "bearer.")]), Ok(None)),
            (
                headers(&[
                    ("authorization", "Bearer h"),
                    ("sec-websocket-protocol", "bearer.p"),
                ]),
                Ok(Some("h")),
            ),
            (headers(&[("x-chat-token", " a.b.c ")]), Ok(Some("a.b.c"))),
            (headers(&[("x-chat-token", "")]), Err(())),
            (
                headers(&[("authorization", "Bearer h"), ("x-chat-token", "x")]),
                Ok(Some("h")),
            ),
            (
                headers(&[
                    ("x-chat-token", "x"),
                    ("sec-websocket-protocol", "chat-cluster, bearer.p"),
                ]),
                Ok(Some("x")),
            ),
        ];
        for (i, (h, want)) in table.into_iter().enumerate() {
            let got = bearer(&h);
            match want {
                Ok(t) => assert_eq!(got, Ok(t.map(str::to_owned)), "case {i}"),
                Err(()) => assert!(matches!(got, Err(AuthError::BadRequest(_))), "case {i}"),
            }
        }
    }

    /// Flags → access rules or the one-line start-up error.
    #[test]
    fn flags_to_access() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            auth: AuthFlags,
        }
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
        let key = key.display().to_string();
        let parse = |args: &[&str]| {
            let mut argv = vec!["chat-server"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).expect("flags").auth.access()
        };
        let anonymous = |r: &Result<Access, String>| {
            matches!(
                r,
                Ok(Access {
                    authenticator: Authenticator::Anonymous,
                    ..
                })
            )
        };
        let token = |r: &Result<Access, String>| {
            matches!(
                r,
                Ok(Access {
                    authenticator: Authenticator::Token(_),
                    ..
                })
            )
        };
        let no_auth = parse(&[]);
        assert!(
            no_auth
                .as_ref()
                .is_err_and(|e| e.contains("--auth none") && !e.contains('\n')),
            "{no_auth:?}"
        );
        assert!(anonymous(&parse(&["--auth", "none"])));
        assert!(token(&parse(&[
            "--auth",
            "token",
            "--auth-hmac-key-file",
            &key
        ])));
        assert!(
            token(&parse(&["--auth-hmac-key-file", &key])),
            "a key implies token"
        );
        assert!(parse(&["--auth", "token"]).is_err());
        assert!(parse(&["--auth", "none", "--auth-hmac-key-file", &key]).is_err());
        assert!(parse(&["--auth", "token", "--auth-hmac-key-file", "/nonexistent"]).is_err());
        assert!(parse(&["--auth", "none", "--allowed-origins", "not-an-origin"]).is_err());
    }
}
