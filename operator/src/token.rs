//! Client tokens for a ChatCluster in token mode (`chat-cluster-operator token`): what a token
//! grants ([`Grant`]), minting it as an HS256 JWT (RFC 7519, signed with `jsonwebtoken`), the
//! `--ttl` and pattern parsers, and finding the signing key of a ChatCluster (its auth Secret).
//!
//! The claims are the ones chat-server's `--auth token` reads (docs/api.md, "Authentication and
//! permissions"; `chat_server::auth::{token, grants}`): `sub` (the user, written as the author of
//! their messages and the scope of their idempotency keys), optional `name` (a display name, read
//! when chat-server runs with `AUTH_NAME_CLAIM=name`), `channels` (patterns readable and
//! publishable), `subscribe` (readable only), `publish` (publishable only), `iat`, `exp`, and
//! `aud` / `iss` when the cluster checks them. A pattern is a channel name, `prefix.*` or `*`,
//! refused here by the same rules as the data plane's (a test keeps the two equal), so a token
//! never carries a grant the server would refuse.
//!
//! Pure apart from [`cluster_key`], which reads the ChatCluster and its Secret through kube.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use crate::crd::{AuthMode, ChatCluster};
use crate::names::{HMAC_KEY_KEY, Names};

/// Shortest HS256 key accepted: the hash's output size, 256 bits (RFC 7518 §3.2); chat-server
/// refuses shorter keys at start.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest channel name, in bytes (the data plane's `MAX_CHANNEL_BYTES`).
pub const MAX_CHANNEL_BYTES: usize = 128;
/// Longest `--ttl` accepted: 366 days. A longer-lived token cannot be revoked short of
/// rotating the key.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// What a token grants, and to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `sub`: the user.
    pub user: String,
    /// `name`: a display name.
    pub name: Option<String>,
    /// `channels`: patterns the user may read and publish to.
    pub channels: Vec<String>,
    /// `subscribe`: patterns the user may only read.
    pub subscribe: Vec<String>,
    /// `publish`: patterns the user may only publish to.
    pub publish: Vec<String>,
    /// Lifetime, from `iat` to `exp`.
    pub ttl: Duration,
    /// `aud`, when the cluster requires one.
    pub audience: Option<String>,
    /// `iss`, when the cluster requires one.
    pub issuer: Option<String>,
}

/// Why no token (or no key) could be had. Each message names the flag or object to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The key is shorter than [`MIN_KEY_BYTES`].
    #[error(
        "the HS256 key has {0} bytes; at least {MIN_KEY_BYTES} are needed (RFC 7518 §3.2; chat-server refuses shorter keys)"
    )]
    ShortKey(usize),
    /// `--user` is empty.
    #[error("--user may not be empty: it is the token's subject (sub), the author of messages")]
    NoUser,
    /// No pattern in `--channels`, `--subscribe` or `--publish`.
    #[error(
        "the token grants no channel: give --channels (read and publish), --subscribe (read) or --publish, e.g. --channels 'general,team.*'"
    )]
    NoGrant,
    /// A pattern the data plane would refuse.
    #[error(
        "{flag}: bad channel pattern {pattern:?}: a channel name (a letter or digit, then letters, digits, '.', '_', '-'; at most {MAX_CHANNEL_BYTES} bytes), 'prefix.*' or '*'"
    )]
    Pattern {
        /// The flag holding it.
        flag: &'static str,
        /// The pattern.
        pattern: String,
    },
    /// A `--ttl` that does not parse or is out of range.
    #[error(
        "--ttl {0:?}: expected a positive number with a unit s, m, h or d (e.g. 24h, 90m, 7d), at most 366d"
    )]
    Ttl(String),
    /// `--audience` / `--issuer` given empty.
    #[error("{0} may not be empty")]
    EmptyClaim(&'static str),
    /// The ChatCluster serves anonymous clients.
    #[error(
        "ChatCluster {0} has spec.auth.mode none: its chat-servers accept anonymous clients and ignore tokens"
    )]
    AnonymousCluster(String),
    /// The auth Secret lacks the key.
    #[error("Secret {secret} has no key {HMAC_KEY_KEY:?} (the HS256 key chat-server reads)")]
    SecretWithoutKey {
        /// `namespace/name` of the Secret.
        secret: String,
    },
    /// Reading the ChatCluster or its Secret failed.
    #[error("reading {what}: {reason}")]
    Kube {
        /// What was read (`ChatCluster ns/name`, `Secret ns/name`).
        what: String,
        /// The API server's answer.
        reason: String,
    },
    /// Signing failed.
    #[error("signing the token: {0}")]
    Sign(String),
}

/// The claims of a minted token (RFC 7519 §4.1 names plus the data plane's grant claims).
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    subscribe: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    publish: &'a [String],
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

/// Signs `grant` with the HS256 `key`, issued at `now` (seconds since the Unix epoch): the
/// compact JWS (`header.payload.signature`). Errors: a key under [`MIN_KEY_BYTES`], an empty
/// user, audience or issuer, nothing granted, a pattern the data plane refuses.
pub fn mint(grant: &Grant, key: &[u8], now: u64) -> Result<String, TokenError> {
    if key.len() < MIN_KEY_BYTES {
        return Err(TokenError::ShortKey(key.len()));
    }
    if grant.user.trim().is_empty() {
        return Err(TokenError::NoUser);
    }
    if grant.audience.as_deref() == Some("") {
        return Err(TokenError::EmptyClaim("--audience"));
    }
    if grant.issuer.as_deref() == Some("") {
        return Err(TokenError::EmptyClaim("--issuer"));
    }
    if grant.channels.is_empty() && grant.subscribe.is_empty() && grant.publish.is_empty() {
        return Err(TokenError::NoGrant);
    }
    for (flag, list) in [
        ("--channels", &grant.channels),
        ("--subscribe", &grant.subscribe),
        ("--publish", &grant.publish),
    ] {
        if let Some(bad) = list.iter().find(|p| !valid_pattern(p)) {
            return Err(TokenError::Pattern {
                flag,
                pattern: bad.clone(),
            });
        }
    }
    let claims = Claims {
        sub: &grant.user,
        name: grant.name.as_deref().filter(|n| !n.trim().is_empty()),
        channels: &grant.channels,
        subscribe: &grant.subscribe,
        publish: &grant.publish,
        iat: now,
        exp: now.saturating_add(grant.ttl.as_secs()),
        aud: grant.audience.as_deref(),
        iss: grant.issuer.as_deref(),
    };
    let key = EncodingKey::from_secret(key).map_err(|e| TokenError::Sign(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Whether the data plane accepts `pattern`: `*`, a channel name, or `<channel name>.*`.
pub fn valid_pattern(pattern: &str) -> bool {
    pattern == "*" || valid_channel(pattern.strip_suffix(".*").unwrap_or(pattern))
}

/// The data plane's channel-name rule: 1 to [`MAX_CHANNEL_BYTES`] bytes, an ASCII letter or
/// digit first, then letters, digits, `.`, `_`, `-`.
fn valid_channel(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CHANNEL_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A comma-separated pattern list, items trimmed, empty items dropped: `"general, team.*"` →
/// `["general", "team.*"]`.
pub fn patterns(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A lifetime: a positive number with a unit `s`, `m`, `h` or `d` (`24h`, `90m`, `3600s`, `7d`),
/// or plain seconds (`3600`); at most [`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, TokenError> {
    let bad = || TokenError::Ttl(text.to_owned());
    let trimmed = text.trim();
    let (number, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => trimmed.split_at(at),
        None => (trimmed, "s"),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(scale) {
        Some(seconds) if seconds > 0 && seconds <= MAX_TTL.as_secs() => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(bad()),
    }
}

/// Key bytes as chat-server reads a key file or Secret value: trailing `\n` / `\r` removed (a
/// key written with `echo` ends with one).
pub fn key_bytes(raw: &[u8]) -> &[u8] {
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &raw[..end]
}

/// Where a ChatCluster's tokens are checked: the Secret holding its HS256 key and the claims
/// its chat-servers require.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterAuth {
    /// Namespace of the ChatCluster and the Secret.
    pub namespace: String,
    /// `spec.auth.secretName`, else `{name}-auth`.
    pub secret_name: String,
    /// `spec.auth.audience`.
    pub audience: Option<String>,
    /// `spec.auth.issuer`.
    pub issuer: Option<String>,
}

/// The token settings of `cluster` (in `namespace`); an error when it runs `spec.auth.mode
/// none`.
pub fn cluster_auth(cluster: &ChatCluster, namespace: &str) -> Result<ClusterAuth, TokenError> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let auth = &cluster.spec.auth;
    if auth.mode == AuthMode::None {
        return Err(TokenError::AnonymousCluster(format!("{namespace}/{name}")));
    }
    Ok(ClusterAuth {
        namespace: namespace.to_owned(),
        secret_name: auth
            .secret_name
            .clone()
            .unwrap_or_else(|| Names::of(&name).auth),
        audience: auth.audience.clone(),
        issuer: auth.issuer.clone(),
    })
}

/// The HS256 key held by the auth Secret (key `hmac-key`, trailing newlines removed); errors
/// when it lacks the key or the key is too short to sign with.
pub fn secret_key(secret: &Secret, namespace: &str) -> Result<Vec<u8>, TokenError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(HMAC_KEY_KEY))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(HMAC_KEY_KEY))
                .map(|v| v.as_bytes().to_vec())
        })
        .ok_or_else(|| TokenError::SecretWithoutKey {
            secret: format!("{namespace}/{name}"),
        })?;
    let key = key_bytes(&raw).to_vec();
    if key.len() < MIN_KEY_BYTES {
        return Err(TokenError::ShortKey(key.len()));
    }
    Ok(key)
}

/// Reads ChatCluster `namespace/name` and its auth Secret: the HS256 key and the cluster's
/// token settings. Needs `get` on the ChatCluster and on that Secret.
pub async fn cluster_key(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(Vec<u8>, ClusterAuth), TokenError> {
    let kube_error = |what: String| {
        move |e: kube::Error| TokenError::Kube {
            what,
            reason: e.to_string(),
        }
    };
    let cluster = kube::Api::<ChatCluster>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(kube_error(format!("ChatCluster {namespace}/{name}")))?;
    let auth = cluster_auth(&cluster, namespace)?;
    let secret = kube::Api::<Secret>::namespaced(client, namespace)
        .get(&auth.secret_name)
        .await
        .map_err(kube_error(format!(
            "Secret {namespace}/{} (the ChatCluster's HS256 key)",
            auth.secret_name
        )))?;
    Ok((secret_key(&secret, namespace)?, auth))
}

/// Seconds since the Unix epoch by this machine's clock (0 for a clock before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chat_server::auth::{ClaimRules, KeySource, TokenVerifier, grants::Grants};
    use jsonwebtoken::{DecodingKey, Validation, decode};
    use k8s_openapi::ByteString;
    use serde_json::{Value, json};

    use super::*;
    use crate::crd::AuthSpec;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn grant() -> Grant {
        Grant {
            user: "ann".into(),
            name: None,
            channels: patterns("general,team.*"),
            subscribe: vec![],
            publish: vec![],
            ttl: Duration::from_secs(3600),
            audience: None,
            issuer: None,
        }
    }

    fn verifier(audience: Option<&str>, issuer: Option<&str>, name_claim: bool) -> TokenVerifier {
        TokenVerifier::new(
            &KeySource::Hmac(KEY.to_vec()),
            ClaimRules {
                audience: audience.map(str::to_owned),
                issuer: issuer.map(str::to_owned),
                leeway: 5,
                name_claim: name_claim.then(|| "name".to_owned()),
            },
        )
        .expect("verifier")
    }

    /// A minted token passes the data plane's own verifier (chat-server's code): subject,
    /// author, grants, expiry, audience and issuer as minted; another key, audience or issuer
    /// fails it.
    #[test]
    fn minted_tokens_verify_with_the_data_planes_verifier() {
        let now = unix_now();
        let token = mint(
            &Grant {
                name: Some("Ann".into()),
                subscribe: vec!["news".into()],
                publish: vec!["inbox.*".into()],
                audience: Some("chat".into()),
                issuer: Some("ops".into()),
                ..grant()
            },
            KEY,
            now,
        )
        .expect("mint");
        let id = verifier(Some("chat"), Some("ops"), true)
            .verify(&token)
            .expect("verifies");
        assert_eq!(id.subject.as_deref(), Some("ann"));
        assert_eq!(id.author.as_deref(), Some("Ann"));
        assert_eq!(id.expires_at, Some(now + 3600));
        let readable = ["general", "team.a", "news"];
        let publishable = ["general", "team.a", "inbox.ann"];
        for channel in readable {
            assert!(id.grants.may_read(channel), "{channel}");
        }
        for channel in publishable {
            assert!(id.grants.may_publish(channel), "{channel}");
        }
        assert!(!id.grants.may_publish("news"));
        assert!(!id.grants.may_read("inbox.ann"));
        assert!(!id.grants.may_read("random"));
        assert!(!id.grants.may_read("team"));
        assert!(!matches!(id.grants, Grants::Everything));

        // Without the display-name claim rule the author is the subject.
        let plain = verifier(Some("chat"), Some("ops"), false);
        assert_eq!(
            plain.verify(&token).expect("verifies").author.as_deref(),
            Some("ann")
        );
        assert!(
            verifier(Some("other"), Some("ops"), true)
                .verify(&token)
                .is_err()
        );
        assert!(
            verifier(Some("chat"), Some("evil"), true)
                .verify(&token)
                .is_err()
        );
        let other_key = TokenVerifier::new(
            &KeySource::Hmac(b"another-key-another-key-another-key".to_vec()),
            ClaimRules::default(),
        )
        .expect("verifier");
        assert!(other_key.verify(&token).is_err());
    }

    /// Every claim, decoded with jsonwebtoken alone: the names and shapes docs/api.md gives.
    #[test]
    fn claims_are_the_documented_ones() {
        let token = mint(
            &Grant {
                channels: vec!["*".into()],
                audience: Some("chat".into()),
                ..grant()
            },
            KEY,
            1_000,
        )
        .expect("mint");
        assert_eq!(
            jsonwebtoken::decode_header(&token).expect("header").alg,
            Algorithm::HS256
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_audience(&["chat"]);
        let claims = decode::<Value>(
            &token,
            &DecodingKey::from_secret(KEY).expect("key"),
            &validation,
        )
        .expect("decodes")
        .claims;
        assert_eq!(
            claims,
            json!({"sub": "ann", "channels": ["*"], "iat": 1_000, "exp": 4_600, "aud": "chat"})
        );
    }

    /// Bad inputs give the error naming the flag to fix.
    #[test]
    fn bad_inputs_are_refused() {
        type Case = (&'static str, Grant, &'static [u8], TokenError);
        let cases: Vec<Case> = vec![
            ("short key", grant(), b"short", TokenError::ShortKey(5)),
            (
                "empty user",
                Grant {
                    user: " ".into(),
                    ..grant()
                },
                KEY,
                TokenError::NoUser,
            ),
            (
                "empty channel list",
                Grant {
                    channels: patterns(" , "),
                    ..grant()
                },
                KEY,
                TokenError::NoGrant,
            ),
            (
                "bad pattern",
                Grant {
                    publish: vec!["team*".into()],
                    ..grant()
                },
                KEY,
                TokenError::Pattern {
                    flag: "--publish",
                    pattern: "team*".into(),
                },
            ),
            (
                "empty audience",
                Grant {
                    audience: Some(String::new()),
                    ..grant()
                },
                KEY,
                TokenError::EmptyClaim("--audience"),
            ),
        ];
        for (case, grant, key, want) in cases {
            assert_eq!(mint(&grant, key, 0), Err(want), "{case}");
        }
        assert!(
            TokenError::NoGrant.to_string().contains("--channels"),
            "the message says what to give"
        );
    }

    /// The pattern rule is the data plane's: every pattern chat-server parses is accepted
    /// here, every one it refuses is refused here.
    #[test]
    fn pattern_rule_matches_the_data_plane() {
        let long = "a".repeat(MAX_CHANNEL_BYTES);
        let too_long = "a".repeat(MAX_CHANNEL_BYTES + 1);
        let long_prefix = format!("{long}.*");
        let cases = [
            "*",
            "general",
            "team.*",
            "a.b-c_d.*",
            "9lives",
            long.as_str(),
            long_prefix.as_str(),
            too_long.as_str(),
            "",
            ".*",
            "team*",
            "*.x",
            "-x",
            "_x",
            ".x",
            "a b",
            "é",
            "a.*.*",
            "**",
            "team.",
        ];
        for pattern in cases {
            let server = chat_server::auth::grants::Pattern::parse(pattern).is_ok();
            assert_eq!(valid_pattern(pattern), server, "{pattern:?}");
        }
    }

    #[test]
    fn ttls_parse_with_units() {
        let table = [
            ("24h", Some(86_400)),
            ("90m", Some(5_400)),
            ("3600s", Some(3_600)),
            ("3600", Some(3_600)),
            ("7d", Some(604_800)),
            ("366d", Some(366 * 86_400)),
            ("367d", None),
            ("0h", None),
            ("h", None),
            ("1w", None),
            ("1.5h", None),
            ("-5m", None),
            ("24 h", None),
            ("99999999999999999999d", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_ttl(text).ok().map(|d| d.as_secs()), want, "{text:?}");
        }
        assert!(
            parse_ttl("1w")
                .expect_err("unknown unit")
                .to_string()
                .contains("s, m, h or d")
        );
    }

    #[test]
    fn key_files_lose_trailing_newlines_only() {
        assert_eq!(key_bytes(b"abc\n"), b"abc");
        assert_eq!(key_bytes(b"abc\r\n\n"), b"abc");
        assert_eq!(key_bytes(b" abc "), b" abc ");
        assert_eq!(key_bytes(b""), b"");
    }

    fn secret(data: &[(&str, &[u8])]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("demo-auth".into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        s
    }

    /// The key of an auth Secret, or why it cannot be used.
    #[test]
    fn secret_keys() {
        let mut with_newline = KEY.to_vec();
        with_newline.push(b'\n');
        assert_eq!(
            secret_key(&secret(&[("hmac-key", &with_newline)]), "ns"),
            Ok(KEY.to_vec())
        );
        assert_eq!(
            secret_key(&secret(&[("password", KEY)]), "ns"),
            Err(TokenError::SecretWithoutKey {
                secret: "ns/demo-auth".into()
            })
        );
        assert_eq!(
            secret_key(&Secret::default(), "ns"),
            Err(TokenError::SecretWithoutKey {
                secret: "ns/".into()
            })
        );
        assert_eq!(
            secret_key(&secret(&[("hmac-key", b"short\n")]), "ns"),
            Err(TokenError::ShortKey(5))
        );
        let message = secret_key(&secret(&[]), "ns")
            .expect_err("no key")
            .to_string();
        assert!(message.contains("hmac-key") && message.contains("ns/demo-auth"));
    }

    /// A ChatCluster's Secret name and claims: the generated `{name}-auth` or the named one,
    /// and an error for an anonymous cluster.
    #[test]
    fn cluster_auth_settings() {
        let cluster = |auth: AuthSpec| {
            let mut cc = ChatCluster::new("demo", Default::default());
            cc.spec.auth = auth;
            cc
        };
        assert_eq!(
            cluster_auth(&cluster(AuthSpec::default()), "ns"),
            Ok(ClusterAuth {
                namespace: "ns".into(),
                secret_name: "demo-auth".into(),
                audience: None,
                issuer: None,
            })
        );
        assert_eq!(
            cluster_auth(
                &cluster(AuthSpec {
                    secret_name: Some("my-key".into()),
                    audience: Some("chat".into()),
                    issuer: Some("ops".into()),
                    ..AuthSpec::default()
                }),
                "ns"
            ),
            Ok(ClusterAuth {
                namespace: "ns".into(),
                secret_name: "my-key".into(),
                audience: Some("chat".into()),
                issuer: Some("ops".into()),
            })
        );
        assert_eq!(
            cluster_auth(
                &cluster(AuthSpec {
                    mode: AuthMode::None,
                    ..AuthSpec::default()
                }),
                "ns"
            ),
            Err(TokenError::AnonymousCluster("ns/demo".into()))
        );
    }
}
