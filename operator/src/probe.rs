//! The one way the operator reads the data plane's `/status` documents (defined once in
//! `chat-wire`: [`chat_wire::NodeStatus`], [`chat_wire::ReplicaStatus`]; an unknown phase fails
//! the probe instead of being guessed): a GET through the API server's pod proxy subresource (`/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/status`),
//! which works from inside and outside the cluster and needs only `pods/proxy` get.

use std::time::Duration;

use kube::Client;

use crate::names::INTERNAL_TOKEN_HEADER;
use serde::de::DeserializeOwned;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The request could not be built (bad pod name).
    #[error("building the request for pod {pod}: {source}")]
    Request {
        /// Pod.
        pod: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// The API server or the pod answered with an error, or the body was not the expected JSON.
    #[error("GET /status of pod {pod}: {source}")]
    Get {
        /// Pod.
        pod: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// No answer within the probe timeout.
    #[error("GET /status of pod {pod}: timed out")]
    Timeout {
        /// Pod.
        pod: String,
    },
}

/// The proxy path of `pod`'s `/status` on `port`.
pub fn status_path(namespace: &str, pod: &str, port: u16) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/status")
}

/// GETs `pod`'s `/status` on `port` through the API server and decodes it as `T`, sending the
/// data plane's internal token in `X-Internal-Token` when there is one (the pods then show their
/// `/status` details only with it; the pod proxy forwards this header but not `Authorization`).
pub async fn status<T: DeserializeOwned>(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
    internal_token: Option<&str>,
) -> Result<T, ProbeError> {
    let mut request = http::Request::get(status_path(namespace, pod, port));
    if let Some(token) = internal_token {
        request = request.header(INTERNAL_TOKEN_HEADER, token);
    }
    let request = request
        .body(Vec::new())
        .map_err(|source| ProbeError::Request {
            pod: pod.to_owned(),
            source,
        })?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.request::<T>(request)).await {
        Ok(result) => result.map_err(|source| ProbeError::Get {
            pod: pod.to_owned(),
            source,
        }),
        Err(_) => Err(ProbeError::Timeout {
            pod: pod.to_owned(),
        }),
    }
}
