//! The one way the suite talks to the data plane: HTTP through the API server's proxy
//! subresources (`/api/v1/namespaces/{ns}/services/{svc}:{port}/proxy/{path}` and the same under
//! `pods/`). Works from outside any cluster with only the kubeconfig; no port-forward.
//!
//! Credentials ([`Credentials`], for a ChatCluster in token mode): the client token goes in
//! `X-Chat-Token` and the data plane's internal token in `X-Internal-Token` (for the replicas'
//! pages). Not `Authorization`: the API server authenticates the suite with it and removes it
//! before proxying.

use std::time::Duration;

use chat_server::auth::internal::INTERNAL_TOKEN_HEADER;
use kube::Client;
use serde::de::DeserializeOwned;

/// How long one proxied request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// chat-server HTTP port.
pub const CHAT_PORT: u16 = 8080;
/// replication-log HTTP port.
pub const LOG_PORT: u16 = 8090;

/// Something the API server can proxy to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Service (the API server picks a ready endpoint).
    Service {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
        /// Service port.
        port: u16,
    },
    /// One pod.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Container port.
        port: u16,
    },
}

impl Target {
    /// A Service target.
    pub fn service(namespace: &str, name: &str, port: u16) -> Target {
        Target::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
        }
    }

    /// A pod target.
    pub fn pod(namespace: &str, name: &str, port: u16) -> Target {
        Target::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
        }
    }

    /// The API server path proxying to `path` (which starts with `/`, may carry a query).
    pub fn url(&self, path: &str) -> String {
        let (kind, namespace, name, port) = match self {
            Target::Service {
                namespace,
                name,
                port,
            } => ("services", namespace, name, port),
            Target::Pod {
                namespace,
                name,
                port,
            } => ("pods", namespace, name, port),
        };
        format!("/api/v1/namespaces/{namespace}/{kind}/{name}:{port}/proxy{path}")
    }

    /// The pod or Service name.
    pub fn name(&self) -> &str {
        match self {
            Target::Service { name, .. } | Target::Pod { name, .. } => name,
        }
    }
}

/// Why a proxied request failed.
#[derive(Debug)]
pub enum ProxyError {
    /// The API server or the backend answered with this HTTP status.
    Status {
        /// HTTP status code.
        code: u16,
        /// The error text.
        message: String,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    Timeout,
    /// Transport failure, or a 2xx body that was not the expected JSON.
    Other(String),
}

impl ProxyError {
    /// True for answers that retrying the same request cannot change (4xx other than 408/429).
    pub fn is_permanent(&self) -> bool {
        matches!(self, ProxyError::Status { code, .. } if (400..500).contains(code) && *code != 408 && *code != 429)
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Status { code, message } => write!(f, "HTTP {code}: {message}"),
            ProxyError::Timeout => write!(f, "timed out after {REQUEST_TIMEOUT:?}"),
            ProxyError::Other(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Header carrying a client token through the API server's proxy (chat-server's
/// `X-Chat-Token`, docs/api.md).
pub const TOKEN_HEADER: &str = "X-Chat-Token";

/// [`TOKEN_HEADER`] as `http` spells header names (lower case).
const TOKEN_HEADER_NAME: &str = "x-chat-token";

/// What the suite sends to a ChatCluster in token mode.
#[derive(Clone)]
pub struct Credentials {
    /// A client JWT (`X-Chat-Token`).
    pub token: String,
    /// The data plane's internal token (`X-Internal-Token`): the replicas serve pages only with
    /// it.
    pub internal: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// A client for proxied requests (cheap to clone).
#[derive(Clone)]
pub struct Proxy {
    client: Client,
    /// Sent with every request (the API server's proxy passes them on to the backend).
    headers: http::HeaderMap,
}

impl Proxy {
    /// Wraps a kube client; requests carry no credentials.
    pub fn new(client: Client) -> Proxy {
        Proxy {
            client,
            headers: http::HeaderMap::new(),
        }
    }

    /// A copy that sends the data plane's internal token (`X-Internal-Token`, the
    /// `{name}-internal` Secret) with every request: replicas serve channel pages and `/snapshot`,
    /// and both components their full `/status`, only to requests carrying it. An error when
    /// `token` is not a valid header value.
    pub fn with_internal_token(&self, token: &str) -> Result<Proxy, ProxyError> {
        let value = http::HeaderValue::from_str(token)
            .map_err(|e| ProxyError::Other(format!("internal token as a header: {e}")))?;
        let mut proxy = self.clone();
        proxy
            .headers
            .insert(http::HeaderName::from_static(INTERNAL_TOKEN_HEADER), value);
        Ok(proxy)
    }

    /// A copy that sends `credentials` with every request: the client token as `X-Chat-Token`
    /// and the internal token as `X-Internal-Token`. An error when either is not a valid header
    /// value.
    pub fn with_credentials(&self, credentials: &Credentials) -> Result<Proxy, ProxyError> {
        let token = http::HeaderValue::from_str(&credentials.token)
            .map_err(|e| ProxyError::Other(format!("client token as a header: {e}")))?;
        let mut proxy = self.with_internal_token(&credentials.internal)?;
        proxy
            .headers
            .insert(http::HeaderName::from_static(TOKEN_HEADER_NAME), token);
        Ok(proxy)
    }

    /// The same client without credentials (for checking that requests without them are
    /// refused).
    pub fn anonymous(&self) -> Proxy {
        Proxy::new(self.client.clone())
    }

    /// A WebSocket handshake for `path` on `target` through the API server's proxy (RFC 6455
    /// §4.1 request headers): `Ok(())` when the server answered `101 Switching Protocols`, else
    /// the refusal (`Status` with the HTTP code). The connection is not used.
    pub async fn websocket_handshake(&self, target: &Target, path: &str) -> Result<(), ProxyError> {
        let request = http::Request::get(target.url(path))
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .header(http::header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Vec::new())
            .map_err(|e| ProxyError::Other(format!("building GET {path}: {e}")))?;
        let (status, body) = self.exchange(request).await?;
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            Ok(())
        } else {
            Err(refusal(status, &body))
        }
    }

    /// GET `path` on `target`, decoded as JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
    ) -> Result<T, ProxyError> {
        let request = http::Request::get(target.url(path))
            .body(Vec::new())
            .map_err(|e| ProxyError::Other(format!("building GET {path}: {e}")))?;
        self.send(request).await
    }

    /// POST `body` as JSON to `path` on `target`, answer decoded as JSON.
    pub async fn post<T: DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ProxyError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ProxyError::Other(e.to_string()))?;
        let request = http::Request::post(target.url(path))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .map_err(|e| ProxyError::Other(format!("building POST {path}: {e}")))?;
        self.send(request).await
    }

    /// Adds this proxy's headers (credentials) to `request`.
    fn add_headers(&self, request: &mut http::Request<Vec<u8>>) {
        request
            .headers_mut()
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Sends `request` with this proxy's headers and reads the whole answer: `(status, body)`.
    /// The status is the backend's own (kube's typed errors would lose it: they parse any JSON
    /// error body as a `metav1.Status`, whose `code` a chat-server error body does not carry).
    async fn exchange(
        &self,
        mut request: http::Request<Vec<u8>>,
    ) -> Result<(http::StatusCode, bytes::Bytes), ProxyError> {
        self.add_headers(&mut request);
        let exchange = async {
            let response = self
                .client
                .send(request.map(kube::client::Body::from))
                .await?;
            let status = response.status();
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(Err(e)) => Err(ProxyError::Other(e.to_string())),
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<T, ProxyError> {
        let (status, body) = self.exchange(request).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            let head: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            ProxyError::Other(format!("decoding {head:?}: {e}"))
        })
    }
}

/// A non-success answer as [`ProxyError::Status`]: the HTTP code, and as message the `message` of
/// a `metav1.Status` body (the API server's own refusals), the `error` of a chat-server error
/// body, or the first 200 characters of the body.
fn refusal(status: http::StatusCode, body: &[u8]) -> ProxyError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let message = field("message")
        .or_else(|| field("error"))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    ProxyError::Status {
        code: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        assert_eq!(
            Target::service("ns1", "demo-chat-server", CHAT_PORT)
                .url("/channels/c/messages?after=3"),
            "/api/v1/namespaces/ns1/services/demo-chat-server:8080/proxy/channels/c/messages?after=3"
        );
        assert_eq!(
            Target::pod("ns1", "demo-log-0", LOG_PORT).url("/status"),
            "/api/v1/namespaces/ns1/pods/demo-log-0:8090/proxy/status"
        );
    }

    #[tokio::test]
    async fn internal_token_goes_with_every_request() {
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let proxy = Proxy::new(client);
        assert!(proxy.headers.is_empty());
        let with = proxy.with_internal_token("s3cret-token").unwrap();
        assert_eq!(
            with.headers.get("X-Internal-Token").unwrap(),
            "s3cret-token"
        );
        assert!(
            proxy.headers.is_empty(),
            "the original proxy sends no token"
        );
        assert!(proxy.with_internal_token("bad\ntoken").is_err());
        let both = proxy
            .with_credentials(&Credentials {
                token: "client-jwt".into(),
                internal: "s3cret-token".into(),
            })
            .unwrap();
        assert_eq!(both.headers.get(TOKEN_HEADER).unwrap(), "client-jwt");
        assert_eq!(
            both.headers.get("X-Internal-Token").unwrap(),
            "s3cret-token"
        );
        assert!(both.anonymous().headers.is_empty());
    }

    #[test]
    fn refusals_keep_the_http_code_and_the_best_message() {
        let cases: [(u16, &[u8], &str); 4] = [
            (401, br#"{"error":"missing token"}"#, "missing token"),
            (
                503,
                br#"{"kind":"Status","message":"no endpoints available","code":503}"#,
                "no endpoints available",
            ),
            (502, b"Bad Gateway", "Bad Gateway"),
            (403, b"", ""),
        ];
        for (code, body, want) in cases {
            let status = http::StatusCode::from_u16(code).unwrap();
            match refusal(status, body) {
                ProxyError::Status { code: c, message } => {
                    assert_eq!((c, message.as_str()), (code, want));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn permanent_errors() {
        let status = |code| ProxyError::Status {
            code,
            message: String::new(),
        };
        assert!(status(400).is_permanent());
        assert!(status(413).is_permanent());
        assert!(!status(429).is_permanent());
        assert!(!status(503).is_permanent());
        assert!(!ProxyError::Timeout.is_permanent());
    }
}
