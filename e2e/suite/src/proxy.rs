//! The one way the suite talks to the data plane: HTTP through the API server's proxy
//! subresources (`/api/v1/namespaces/{ns}/services/{svc}:{port}/proxy/{path}` and the same under
//! `pods/`). Works from outside any cluster with only the kubeconfig; no port-forward.

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

/// A client for proxied requests (cheap to clone).
#[derive(Clone)]
pub struct Proxy {
    client: Client,
    /// Sent with every request (the API server's proxy passes them on to the backend).
    headers: http::HeaderMap,
}

impl Proxy {
    /// Wraps a kube client.
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

    async fn send<T: DeserializeOwned>(
        &self,
        mut request: http::Request<Vec<u8>>,
    ) -> Result<T, ProxyError> {
        request
            .headers_mut()
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let text =
            match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request_text(request)).await {
                Err(_) => return Err(ProxyError::Timeout),
                Ok(Err(kube::Error::Api(status))) => {
                    return Err(ProxyError::Status {
                        code: status.code,
                        message: status.message.clone(),
                    });
                }
                Ok(Err(e)) => return Err(ProxyError::Other(e.to_string())),
                Ok(Ok(text)) => text,
            };
        serde_json::from_str(&text).map_err(|e| {
            let head: String = text.chars().take(200).collect();
            ProxyError::Other(format!("decoding {head:?}: {e}"))
        })
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
