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

impl ProbeError {
    /// The API server's words when it refused the probe for lack of `pods/proxy` permission
    /// (403 naming `pods/proxy`): the operator's RBAC does not reach this namespace, which no
    /// retry fixes. None for every other failure (the pod not answering yet, a timeout).
    pub fn forbidden(&self) -> Option<&str> {
        match self {
            ProbeError::Get {
                source: kube::Error::Api(status),
                ..
            } if status.code == 403 && status.message.contains("pods/proxy") => {
                Some(status.message.as_str())
            }
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> ProbeError {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "message": message, "reason": "Forbidden",
        }))
        .expect("status");
        ProbeError::Get {
            pod: "p".into(),
            source: kube::Error::Api(Box::new(status)),
        }
    }

    #[test]
    fn forbidden_is_only_the_rbac_refusal_of_the_pod_proxy() {
        let rbac = "pods \"p\" is forbidden: User \"system:serviceaccount:x:op\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"ns\"";
        // (error, refused for RBAC)
        let cases = [
            (api_error(403, rbac), true),
            (api_error(403, "the pod answered 403"), false),
            (api_error(503, "no endpoints available"), false),
            (ProbeError::Timeout { pod: "p".into() }, false),
        ];
        for (error, want) in cases {
            assert_eq!(error.forbidden().is_some(), want, "{error}");
        }
    }
}
