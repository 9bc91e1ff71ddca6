//! Validate step: turns a fetched `ChatCluster` into a [`Validated`] one, checking what the
//! schema cannot (object identity, a parseable duration) and parsing once what later steps need.
//! Pure: no client.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::{ChatCluster, ChatClusterSpec};
use crate::names::MAX_NAME_LEN;

/// A ChatCluster that every later step can rely on.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// metadata.name.
    pub name: String,
    /// metadata.namespace.
    pub namespace: String,
    /// metadata.generation (0 when the server did not set one).
    pub generation: i64,
    /// Controller owner reference to put on every child.
    pub owner_ref: OwnerReference,
    /// The spec, with defaults applied by the API server.
    pub spec: ChatClusterSpec,
    /// `spec.rollout.catchUpTimeout`, parsed.
    pub catch_up_timeout: Duration,
}

/// Why a ChatCluster cannot be reconciled; each becomes the Degraded condition's message.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidateError {
    /// Namespaced resource without a namespace (only possible for hand-built objects).
    #[error("metadata.namespace is missing")]
    MissingNamespace,
    /// Object not read from the API server (no uid to own children with).
    #[error("metadata.uid is missing")]
    MissingUid,
    /// Name too long for the derived child names.
    #[error("metadata.name {0:?} is longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    /// `spec.rollout.catchUpTimeout` does not parse.
    #[error("spec.rollout.catchUpTimeout: {0}")]
    CatchUpTimeout(String),
}

/// Validates `cluster`.
pub fn validate(cluster: &ChatCluster) -> Result<Validated, ValidateError> {
    let name = cluster.name_any();
    if name.len() > MAX_NAME_LEN {
        return Err(ValidateError::NameTooLong(name));
    }
    let namespace = cluster.namespace().ok_or(ValidateError::MissingNamespace)?;
    let owner_ref = cluster
        .controller_owner_ref(&())
        .ok_or(ValidateError::MissingUid)?;
    let catch_up_timeout = parse_duration(&cluster.spec.rollout.catch_up_timeout)
        .map_err(ValidateError::CatchUpTimeout)?;
    Ok(Validated {
        name,
        namespace,
        generation: cluster.meta().generation.unwrap_or(0),
        owner_ref,
        spec: cluster.spec.clone(),
        catch_up_timeout,
    })
}

/// Parses an unsigned Go duration (`1h30m`, `90s`, `1.5m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 5m or 90s");
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "m", "5 m", "-5m", "5d", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn validates_identity_and_timeout() {
        let ok = validate(&ChatCluster::test()).expect("valid");
        assert_eq!(ok.name, "demo");
        assert_eq!(ok.namespace, "default");
        assert_eq!(ok.catch_up_timeout, Duration::from_secs(300));
        assert_eq!(ok.owner_ref.controller, Some(true));

        let mut no_ns = ChatCluster::test();
        no_ns.metadata.namespace = None;
        assert_eq!(validate(&no_ns), Err(ValidateError::MissingNamespace));

        let mut no_uid = ChatCluster::test();
        no_uid.metadata.uid = None;
        assert_eq!(validate(&no_uid), Err(ValidateError::MissingUid));

        let long = ChatCluster::test().with_name(&"x".repeat(41));
        assert!(matches!(
            validate(&long),
            Err(ValidateError::NameTooLong(_))
        ));

        let bad_timeout = ChatCluster::test().with_catch_up_timeout("soon");
        assert!(matches!(
            validate(&bad_timeout),
            Err(ValidateError::CatchUpTimeout(_))
        ));
    }
}
