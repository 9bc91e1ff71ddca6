//! Verifying connection tokens (JWT, RFC 7519) with the `jsonwebtoken` crate: the key and the
//! one algorithm it verifies, the claim checks, and turning verified claims into an
//! [`Identity`].
//!
//! Rules (docs/api.md, "Authentication and permissions"):
//! - the key decides the algorithm: an HMAC secret verifies HS256 only, an RSA public key RS256
//!   only, an EC P-256 public key ES256 only, a JWKS key the algorithm of its type. A token whose
//!   header names another algorithm is refused before any signature check, so a public key can
//!   never be used as an HMAC secret (algorithm confusion), and `alg: none` is never accepted;
//! - `exp` is required, `nbf` is checked when present, both with `--auth-leeway` seconds of
//!   clock skew (RFC 7519 §4.1.4, §4.1.5);
//! - `aud` and `iss` must match when `--auth-audience` / `--auth-issuer` are set (RFC 7519
//!   §4.1.3, §4.1.1);
//! - `sub` is required and non-empty: it is the author and the scope of idempotency keys.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use super::grants::Grants;

/// Shortest HMAC secret accepted: 32 bytes, the output size of SHA-256 (RFC 7518 §3.2).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// Who a request is and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject (`sub`), or `None` for an anonymous request (`--auth none`).
    pub subject: Option<String>,
    /// The author written on this identity's messages: the display-name claim when configured
    /// and present, else the subject.
    pub author: Option<String>,
    pub grants: Grants,
    /// When the token expires (Unix seconds), if it does.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An anonymous request under `--auth none`: every channel, the author it claims.
    pub fn anonymous() -> Identity {
        Identity {
            subject: None,
            author: None,
            grants: Grants::Everything,
            expires_at: None,
        }
    }
}

/// Why a token was refused; each maps to an RFC 6750 `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's algorithm is not accepted (this server verifies {0} only)")]
    Algorithm(String),
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the token's key id (kid) is not in the key set")]
    UnknownKey,
    #[error("{0}")]
    BadClaim(String),
    #[error("the token is malformed")]
    Malformed,
}

/// A key configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the HMAC key is {0} bytes; at least {MIN_HMAC_KEY_BYTES} are needed (RFC 7518 §3.2)")]
    ShortHmacKey(usize),
    #[error("{path} is neither an RSA nor an EC P-256 public key in PEM")]
    BadPublicKey { path: String },
    #[error("{path} holds a private key; give the server only the public key")]
    PrivateKey { path: String },
    #[error("{path}: {reason}")]
    BadJwks { path: String, reason: String },
}

/// Where the verification key comes from (one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The HS256 secret itself (trailing newlines removed).
    Hmac(Vec<u8>),
    /// A PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    PublicKeyFile(std::path::PathBuf),
    /// A JWKS file (RFC 7517 §5) of RSA and EC P-256 public keys, chosen by the token's `kid`.
    JwksFile(std::path::PathBuf),
}

/// Claim checks besides the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    /// Claim holding the display name written as `author` (e.g. `name`); the subject when unset
    /// or absent.
    pub name_claim: Option<String>,
}

/// A key with the single algorithm it verifies.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against one key (or a key set) and the claim rules.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<Key>,
    rules: ClaimRules,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.algorithms())
            .field("rules", &self.rules)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A secret as read from a file or variable: trailing `\n`/`\r` removed (a Secret written with
/// `echo` ends with one).
pub fn trim_secret(mut bytes: Vec<u8>) -> Vec<u8> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    bytes
}

impl TokenVerifier {
    /// Loads the key and checks it. Errors: unreadable file, an HMAC key under 32 bytes, a PEM
    /// that is no RSA or EC public key, a JWKS without a usable key.
    pub fn new(source: &KeySource, rules: ClaimRules) -> Result<TokenVerifier, KeyError> {
        let keys = match source {
            KeySource::Hmac(secret) => {
                if secret.len() < MIN_HMAC_KEY_BYTES {
                    return Err(KeyError::ShortHmacKey(secret.len()));
                }
                let key =
                    DecodingKey::from_secret(secret).map_err(|_| KeyError::ShortHmacKey(0))?;
                vec![Key {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    key,
                }]
            }
            KeySource::PublicKeyFile(path) => {
                let pem = read(path)?;
                if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
                    return Err(KeyError::PrivateKey {
                        path: path.display().to_string(),
                    });
                }
                let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (Algorithm::RS256, k)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (Algorithm::ES256, k)
                } else {
                    return Err(KeyError::BadPublicKey {
                        path: path.display().to_string(),
                    });
                };
                vec![Key {
                    kid: None,
                    algorithm: key.0,
                    key: key.1,
                }]
            }
            KeySource::JwksFile(path) => jwks_keys(path, &read(path)?)?,
        };
        Ok(TokenVerifier { keys, rules })
    }

    /// The algorithms this verifier accepts.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs: Vec<Algorithm> = self.keys.iter().map(|k| k.algorithm).collect();
        algs.dedup();
        algs
    }

    /// Verifies `token` at the current time; the identity it proves.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let key = match &header.kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.is_some()) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(TokenError::UnknownKey)?,
            _ if self.keys.len() == 1 => &self.keys[0],
            _ => return Err(TokenError::UnknownKey),
        };
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.rules.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.rules.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.rules.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::Algorithm(format!("{:?}", key.algorithm))
                    }
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::InvalidIssuer => TokenError::Issuer,
                    ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                    _ => TokenError::Malformed,
                })?;
        self.identity(&data.claims)
    }

    /// The identity of verified claims.
    fn identity(&self, claims: &serde_json::Map<String, Value>) -> Result<Identity, TokenError> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(TokenError::MissingClaim("sub".into())),
        };
        let name = self
            .rules
            .name_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let grants = Grants::from_claims(claims).map_err(TokenError::BadClaim)?;
        Ok(Identity {
            author: Some(name.unwrap_or_else(|| subject.clone())),
            subject: Some(subject),
            grants,
            expires_at: claims.get("exp").and_then(Value::as_u64),
        })
    }
}

/// The usable keys of a JWKS document: RSA keys verify RS256, EC P-256 keys ES256; symmetric
/// (`oct`) and other keys are refused (a key set publishes public keys).
fn jwks_keys(path: &Path, bytes: &[u8]) -> Result<Vec<Key>, KeyError> {
    let bad = |reason: String| KeyError::BadJwks {
        path: path.display().to_string(),
        reason,
    };
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                return Err(bad(format!(
                    "key {:?}: only RSA and EC P-256 public keys are accepted",
                    jwk.common.key_id
                )));
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| bad(format!("key {:?}: {e}", jwk.common.key_id)))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("no keys".into()));
    }
    if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
        return Err(bad("with several keys, every key needs a kid".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    use super::*;
    use crate::auth::grants::Pattern;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
    }

    fn hs(claims: &Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret).expect("key"),
        )
        .expect("encode")
    }

    fn rs(claims: &Value, private: &str) -> String {
        let key = EncodingKey::from_rsa_pem(&fixture(private)).expect("rsa key");
        encode(&Header::new(Algorithm::RS256), claims, &key).expect("encode")
    }

    /// URL-safe base64 without padding (RFC 7515 §2), for hand-built hostile tokens.
    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn hmac_verifier(rules: ClaimRules) -> TokenVerifier {
        TokenVerifier::new(&KeySource::Hmac(SECRET.to_vec()), rules).expect("verifier")
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway: 5,
            ..ClaimRules::default()
        }
    }

    /// Each kind of bad token is refused with its reason; good ones give the identity.
    #[test]
    fn token_verification_table() {
        let exp = now() + 600;
        let good = json!({"sub": "ann", "exp": exp, "channels": ["general"]});
        let hmac = hmac_verifier(rules());
        let strict = hmac_verifier(ClaimRules {
            audience: Some("chat".into()),
            issuer: Some("https://issuer.example".into()),
            ..rules()
        });
        let rsa = TokenVerifier::new(
            &KeySource::PublicKeyFile(format!("{FIXTURES}/rsa-public.pem").into()),
            rules(),
        )
        .expect("rsa verifier");
        let rsa_public_pem = fixture("rsa-public.pem");
        let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(good.to_string().as_bytes());
        let alg_none = format!("{header_none}.{body}.");
        let cases: Vec<(&str, &TokenVerifier, String, Result<(), TokenError>)> = vec![
            ("good", &hmac, hs(&good, SECRET), Ok(())),
            (
                "expired",
                &hmac,
                hs(&json!({"sub": "ann", "exp": now() - 60}), SECRET),
                Err(TokenError::Expired),
            ),
            (
                "expired within the leeway",
                &hmac,
                hs(&json!({"sub": "ann", "exp": now() - 2}), SECRET),
                Ok(()),
            ),
            (
                "not yet valid",
                &hmac,
                hs(&json!({"sub": "ann", "exp": exp, "nbf": now() + 120}), SECRET),
                Err(TokenError::NotYetValid),
            ),
            (
                "wrong key",
                &hmac,
                hs(&good, b"another-secret-another-secret-another-secret"),
                Err(TokenError::BadSignature),
            ),
            (
                "no exp",
                &hmac,
                hs(&json!({"sub": "ann"}), SECRET),
                Err(TokenError::MissingClaim("exp".into())),
            ),
            (
                "missing sub",
                &hmac,
                hs(&json!({"exp": exp}), SECRET),
                Err(TokenError::MissingClaim("sub".into())),
            ),
            (
                "empty sub",
                &hmac,
                hs(&json!({"sub": "", "exp": exp}), SECRET),
                Err(TokenError::MissingClaim("sub".into())),
            ),
            ("alg none", &hmac, alg_none.clone(), Err(TokenError::Malformed)),
            ("alg none, RSA server", &rsa, alg_none, Err(TokenError::Malformed)),
            (
                "wrong audience",
                &strict,
                hs(
                    &json!({"sub": "ann", "exp": exp, "aud": "other", "iss": "https://issuer.example"}),
                    SECRET,
                ),
                Err(TokenError::Audience),
            ),
            (
                "no audience",
                &strict,
                hs(&json!({"sub": "ann", "exp": exp, "iss": "https://issuer.example"}), SECRET),
                Err(TokenError::MissingClaim("aud".into())),
            ),
            (
                "wrong issuer",
                &strict,
                hs(
                    &json!({"sub": "ann", "exp": exp, "aud": "chat", "iss": "https://evil.example"}),
                    SECRET,
                ),
                Err(TokenError::Issuer),
            ),
            (
                "audience and issuer right",
                &strict,
                hs(
                    &json!({"sub": "ann", "exp": exp, "aud": ["x", "chat"], "iss": "https://issuer.example"}),
                    SECRET,
                ),
                Ok(()),
            ),
            ("rs256", &rsa, rs(&good, "rsa-private.pem"), Ok(())),
            (
                "rs256 other key",
                &rsa,
                rs(&good, "rsa-other-private.pem"),
                Err(TokenError::BadSignature),
            ),
            (
                "RS256 public key used as an HS256 secret",
                &rsa,
                hs(&good, &rsa_public_pem),
                Err(TokenError::Algorithm("RS256".into())),
            ),
            (
                "RS256 token at an HMAC server",
                &hmac,
                rs(&good, "rsa-private.pem"),
                Err(TokenError::Algorithm("HS256".into())),
            ),
            (
                "bad channels claim",
                &hmac,
                hs(&json!({"sub": "ann", "exp": exp, "channels": ["x*"]}), SECRET),
                Err(TokenError::BadClaim(
                    "claim \"channels\": bad channel pattern \"x*\": a channel name, \"prefix.*\" or \"*\"".into(),
                )),
            ),
            ("garbage", &hmac, "not-a-token".into(), Err(TokenError::Malformed)),
            ("empty", &hmac, String::new(), Err(TokenError::Malformed)),
        ];
        for (name, verifier, token, want) in cases {
            let got = verifier.verify(&token).map(|_| ());
            assert_eq!(got, want, "{name}");
        }
    }

    /// ES256 with an EC public key, and a JWKS choosing the key by kid.
    #[test]
    fn ec_keys_and_key_sets() {
        let exp = now() + 600;
        let claims = json!({"sub": "bob", "exp": exp, "subscribe": ["news"]});
        let ec_private = EncodingKey::from_ec_pem(&fixture("ec-private.pem")).expect("ec key");
        let es = encode(&Header::new(Algorithm::ES256), &claims, &ec_private).expect("encode");
        let ec = TokenVerifier::new(
            &KeySource::PublicKeyFile(format!("{FIXTURES}/ec-public.pem").into()),
            rules(),
        )
        .expect("ec verifier");
        assert_eq!(ec.verify(&es).map(|i| i.subject), Ok(Some("bob".into())));

        let rsa_private = EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).expect("rsa");
        let mut rsa_jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_private, Algorithm::RS256).expect("jwk");
        rsa_jwk.common.key_id = Some("rsa-1".into());
        let mut ec_jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&ec_private, Algorithm::ES256).expect("jwk");
        ec_jwk.common.key_id = Some("ec-1".into());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [rsa_jwk, ec_jwk]}).to_string()).expect("write");
        let jwks = TokenVerifier::new(&KeySource::JwksFile(path), rules()).expect("jwks");
        let with_kid = |alg, kid: &str, key: &EncodingKey| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.into());
            encode(&h, &claims, key).expect("encode")
        };
        let cases = [
            (with_kid(Algorithm::RS256, "rsa-1", &rsa_private), Ok(())),
            (with_kid(Algorithm::ES256, "ec-1", &ec_private), Ok(())),
            (
                with_kid(Algorithm::ES256, "rsa-1", &ec_private),
                Err(TokenError::Algorithm("RS256".into())),
            ),
            (
                with_kid(Algorithm::RS256, "nope", &rsa_private),
                Err(TokenError::UnknownKey),
            ),
            (rs(&claims, "rsa-private.pem"), Err(TokenError::UnknownKey)),
        ];
        for (i, (token, want)) in cases.into_iter().enumerate() {
            assert_eq!(jwks.verify(&token).map(|_| ()), want, "case {i}");
        }
    }

    /// Claims → identity: author from sub or the display-name claim, grants, expiry.
    #[test]
    fn claims_to_identity() {
        let exp = now() + 600;
        let named = hmac_verifier(ClaimRules {
            name_claim: Some("name".into()),
            ..rules()
        });
        let plain = hmac_verifier(rules());
        let token = hs(
            &json!({"sub": "u-1", "name": "Ann", "exp": exp, "channels": ["general", "team.*"], "subscribe": ["news"]}),
            SECRET,
        );
        let id = named.verify(&token).expect("identity");
        assert_eq!(id.subject.as_deref(), Some("u-1"));
        assert_eq!(id.author.as_deref(), Some("Ann"));
        assert_eq!(id.expires_at, Some(exp));
        assert_eq!(
            id.grants,
            Grants::Patterns {
                read: vec![
                    Pattern::Exact("news".into()),
                    Pattern::Exact("general".into()),
                    Pattern::Prefix("team.".into())
                ],
                publish: vec![
                    Pattern::Exact("general".into()),
                    Pattern::Prefix("team.".into())
                ],
            }
        );
        assert_eq!(
            plain.verify(&token).expect("id").author.as_deref(),
            Some("u-1")
        );
        let blank_name = hs(&json!({"sub": "u-2", "name": " ", "exp": exp}), SECRET);
        assert_eq!(
            named.verify(&blank_name).expect("id").author.as_deref(),
            Some("u-2")
        );
    }

    /// Keys that cannot be used are refused at start.
    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            TokenVerifier::new(&KeySource::Hmac(b"short".to_vec()), rules()),
            Err(KeyError::ShortHmacKey(5))
        ));
        assert!(matches!(
            TokenVerifier::new(
                &KeySource::PublicKeyFile(format!("{FIXTURES}/rsa-private.pem").into()),
                rules()
            ),
            Err(KeyError::PrivateKey { .. })
        ));
        let dir = tempfile::tempdir().expect("dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .expect("write");
        assert!(matches!(
            TokenVerifier::new(&KeySource::PublicKeyFile(junk), rules()),
            Err(KeyError::BadPublicKey { .. })
        ));
        assert!(matches!(
            TokenVerifier::new(
                &KeySource::PublicKeyFile("/nonexistent.pem".into()),
                rules()
            ),
            Err(KeyError::Read { .. })
        ));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).expect("write");
        assert!(matches!(
            TokenVerifier::new(&KeySource::JwksFile(path), rules()),
            Err(KeyError::BadJwks { .. })
        ));
        assert_eq!(trim_secret(b"abc\r\n\n".to_vec()), b"abc");
    }
}
