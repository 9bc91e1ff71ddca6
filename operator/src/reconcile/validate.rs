//! Validate step: turns a fetched `ChatCluster` into a [`Validated`] one, checking what the
//! schema cannot (object identity, a parseable duration) and parsing once what later steps need.
//! Pure: no client.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::{
    ChatCluster, ChatClusterSpec, DEFAULT_WS_PING_INTERVAL_SECONDS, DEFAULT_WS_PING_TIMEOUT_SECONDS,
};
use k8s_openapi::api::core::v1::EnvVar;

use crate::crd::settings::{CHAT_SERVER_MEMORY_LIMIT, MAX_WINDOW_PERCENT_OF_LIMIT};
use crate::names::{BROKER_ENV, CHAT_SERVER_ENV, LOG_ENV, MAX_NAME_LEN};
use crate::quantity::to_units;

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
    /// metadata.creationTimestamp (None for an object not read from the API server).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
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
    /// Not a DNS-1035 label (RFC 1035 §2.3.1): the Services named after it would be refused.
    #[error(
        "metadata.name {0:?} must start with a lowercase letter, hold only lowercase letters, digits and \"-\", and end with a letter or digit (the Services the operator creates are named after it)"
    )]
    InvalidName(String),
    /// Several problems, each its own message, joined with `; ` in [`Display`](std::fmt::Display).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Problems(Vec<ValidateError>),
    /// Name too long for the derived child names.
    #[error("metadata.name {0:?} is longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    /// `spec.rollout.catchUpTimeout` does not parse.
    #[error("spec.rollout.catchUpTimeout: {0}")]
    CatchUpTimeout(String),
    /// `spec.rollout.catchUpTimeout` is below one second.
    #[error("spec.rollout.catchUpTimeout must be at least 1s (it is {0})")]
    CatchUpTimeoutTooShort(String),
    /// A storage size or a resource value that is not a (positive, for storage) quantity. The
    /// admission policy refuses these at the API server; this check covers clusters where the
    /// policy is not installed.
    #[error("{field}: {value:?} is not {what}")]
    Quantity {
        /// The field, e.g. `spec.broker.storage.size` or `spec.chatServer.resources.limits.memory`.
        field: String,
        /// The value as written.
        value: String,
        /// What it should be, in words.
        what: &'static str,
    },
    /// A component's `env` names a variable the operator sets.
    #[error(
        "{field}: {name} is set by the operator and cannot be overridden (docs/configuration.md)"
    )]
    ReservedEnv {
        /// The list, e.g. `spec.chatServer.env[2].name`.
        field: String,
        /// The variable.
        name: String,
    },
    /// A component's `env` names a variable twice.
    #[error("{field}: {name} is listed twice")]
    DuplicateEnv {
        /// The second entry, e.g. `spec.broker.env[3].name`.
        field: String,
        /// The variable.
        name: String,
    },
    /// A connection setting given both as a spec field and as a variable in `env`.
    #[error("{field}: {name} is also set by spec.chatServer.{spec_field}; keep one of the two")]
    EnvAndField {
        /// The env entry, e.g. `spec.chatServer.env[0].name`.
        field: String,
        /// The variable.
        name: String,
        /// The field under `spec.chatServer`.
        spec_field: &'static str,
    },
    /// The WebSocket ping timeout is not longer than the ping interval (the binary would refuse
    /// to start).
    #[error(
        "spec.chatServer.wsPingTimeoutSeconds ({timeout}) must be more than wsPingIntervalSeconds ({interval}); unset fields count as their defaults (60 and 30)"
    )]
    PingTimeout {
        /// The timeout in effect, in seconds.
        timeout: i32,
        /// The interval in effect, in seconds.
        interval: i32,
    },
    /// `spec.chatServer.memoryWindowBytes` leaves too little of the memory limit.
    #[error(
        "spec.chatServer.memoryWindowBytes: {window} bytes is more than {MAX_WINDOW_PERCENT_OF_LIMIT} % of the chat-server memory limit ({limit} bytes); raise spec.chatServer.resources.limits.memory or lower the window"
    )]
    WindowOverLimit {
        /// The window asked for.
        window: i64,
        /// The container memory limit in bytes.
        limit: u128,
    },
    /// `spec.monitoring.podMonitorInterval` is not a positive Prometheus duration (the
    /// PodMonitor's own schema would refuse it, as an apply error far from the field).
    #[error(
        "spec.monitoring.podMonitorInterval: {0:?} is not a Prometheus duration such as 30s or 1m30s (whole numbers with the units y, w, d, h, m, s, ms, largest first, more than zero)"
    )]
    PodMonitorInterval(String),
}

/// Validates `cluster`.
pub fn validate(cluster: &ChatCluster) -> Result<Validated, ValidateError> {
    let name = cluster.name_any();
    if !is_dns_1035_label(&name) {
        return Err(ValidateError::InvalidName(name));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ValidateError::NameTooLong(name));
    }
    let namespace = cluster.namespace().ok_or(ValidateError::MissingNamespace)?;
    let owner_ref = cluster
        .controller_owner_ref(&())
        .ok_or(ValidateError::MissingUid)?;
    // Every problem of the spec, each its own message (like the admission policy's answer).
    let spec = &cluster.spec;
    let mut problems = Vec::new();
    let catch_up_timeout = match parse_duration(&spec.rollout.catch_up_timeout) {
        Ok(t) if t < Duration::from_secs(1) => {
            problems.push(ValidateError::CatchUpTimeoutTooShort(
                spec.rollout.catch_up_timeout.clone(),
            ));
            t
        }
        Ok(t) => t,
        Err(e) => {
            problems.push(ValidateError::CatchUpTimeout(e));
            Duration::ZERO
        }
    };
    let checks = [
        check_quantities(spec),
        check_env(
            "spec.chatServer.env",
            &spec.chat_server.pod.env,
            CHAT_SERVER_ENV,
        ),
        check_env(
            "spec.replicationLog.env",
            &spec.replication_log.pod.env,
            LOG_ENV,
        ),
        check_env("spec.broker.env", &spec.broker.pod.env, BROKER_ENV),
        check_window(spec),
        check_connection_settings(spec),
        check_monitoring(spec),
    ];
    problems.extend(checks.into_iter().filter_map(Result::err));
    match problems.len() {
        0 => {}
        1 => return Err(problems.remove(0)),
        _ => return Err(ValidateError::Problems(problems)),
    }
    Ok(Validated {
        name,
        namespace,
        generation: cluster.meta().generation.unwrap_or(0),
        owner_ref,
        spec: cluster.spec.clone(),
        catch_up_timeout,
        created: cluster.creation_timestamp().map(|t| t.0),
    })
}

/// RFC 1035 §2.3.1 label syntax as Kubernetes checks Service names: a lowercase letter, then
/// lowercase letters, digits and `-`, ending with a letter or digit.
fn is_dns_1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && bytes.last() != Some(&b'-')
}

/// Refuses storage sizes that are not positive quantities and resource values that are not
/// quantities (the same checks as the admission policy, `crd::admission`).
fn check_quantities(spec: &ChatClusterSpec) -> Result<(), ValidateError> {
    for (field, size) in [
        ("spec.broker.storage.size", &spec.broker.storage.size),
        (
            "spec.replicationLog.storage.size",
            &spec.replication_log.storage.size,
        ),
    ] {
        let bound = to_units(crate::crd::admission::MAX_STORAGE).unwrap_or(u128::MAX);
        if to_units(size).is_none_or(|bytes| bytes == 0 || bytes > bound) {
            return Err(ValidateError::Quantity {
                field: field.into(),
                value: size.clone(),
                what: "a positive quantity such as 1Gi (at most 8Ei)",
            });
        }
    }
    for (component, pod) in [
        ("chatServer", &spec.chat_server.pod),
        ("replicationLog", &spec.replication_log.pod),
        ("broker", &spec.broker.pod),
    ] {
        let Some(resources) = &pod.resources else {
            continue;
        };
        for (kind, values) in [
            ("limits", &resources.limits),
            ("requests", &resources.requests),
        ] {
            for (key, value) in values.iter().flatten() {
                if to_units(&value.0).is_none() {
                    return Err(ValidateError::Quantity {
                        field: format!("spec.{component}.resources.{kind}.{key}"),
                        value: value.0.clone(),
                        what: "a non-negative quantity such as 500m or 1Gi",
                    });
                }
            }
        }
    }
    Ok(())
}

/// Refuses an `env` list (at `field`) that names a variable of `reserved` or one name twice.
fn check_env(field: &str, env: &[EnvVar], reserved: &[&str]) -> Result<(), ValidateError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, var) in env.iter().enumerate() {
        let field = format!("{field}[{i}].name");
        if reserved.contains(&var.name.as_str()) {
            return Err(ValidateError::ReservedEnv {
                field,
                name: var.name.clone(),
            });
        }
        if !seen.insert(var.name.as_str()) {
            return Err(ValidateError::DuplicateEnv {
                field,
                name: var.name.clone(),
            });
        }
    }
    Ok(())
}

/// Refuses a `chatServer.memoryWindowBytes` over [`MAX_WINDOW_PERCENT_OF_LIMIT`] % of the
/// chat-server memory limit (the default limit when `resources` is unset; no bound without a
/// limit).
fn check_window(spec: &ChatClusterSpec) -> Result<(), ValidateError> {
    let Some(window) = spec.chat_server.memory_window_bytes else {
        return Ok(());
    };
    let limit = spec
        .chat_server
        .pod
        .memory_limit_bytes(CHAT_SERVER_MEMORY_LIMIT);
    match limit {
        Some(limit)
            if u128::try_from(window).unwrap_or(0) * 100 > limit * MAX_WINDOW_PERCENT_OF_LIMIT =>
        {
            Err(ValidateError::WindowOverLimit { window, limit })
        }
        _ => Ok(()),
    }
}

/// Refuses a connection setting given both as a `spec.chatServer` field and in
/// `spec.chatServer.env`, and a ping timeout not above the ping interval when either is a spec
/// field (the other counting as its default unless it is in `env`, which the binary checks).
fn check_connection_settings(spec: &ChatClusterSpec) -> Result<(), ValidateError> {
    let settings = spec.chat_server.connection_settings();
    for (i, var) in spec.chat_server.pod.env.iter().enumerate() {
        if let Some((name, spec_field, _)) = settings
            .iter()
            .find(|(name, _, value)| value.is_some() && *name == var.name)
        {
            return Err(ValidateError::EnvAndField {
                field: format!("spec.chatServer.env[{i}].name"),
                name: (*name).to_owned(),
                spec_field,
            });
        }
    }
    let server = &spec.chat_server;
    let in_env = |name: &str| server.pod.env.iter().any(|v| v.name == name);
    if (server.ws_ping_timeout_seconds.is_some() || server.ws_ping_interval_seconds.is_some())
        && !in_env("WS_PING_INTERVAL")
        && !in_env("WS_PING_TIMEOUT")
    {
        let timeout = server
            .ws_ping_timeout_seconds
            .unwrap_or(DEFAULT_WS_PING_TIMEOUT_SECONDS);
        let interval = server
            .ws_ping_interval_seconds
            .unwrap_or(DEFAULT_WS_PING_INTERVAL_SECONDS);
        if timeout <= interval {
            return Err(ValidateError::PingTimeout { timeout, interval });
        }
    }
    Ok(())
}

/// Refuses a `spec.monitoring.podMonitorInterval` that is not a positive Prometheus duration
/// (checked whether or not the PodMonitor is enabled, as a schema pattern would be).
fn check_monitoring(spec: &ChatClusterSpec) -> Result<(), ValidateError> {
    let interval = spec
        .monitoring
        .as_ref()
        .and_then(|m| m.pod_monitor_interval.as_deref());
    match interval {
        Some(text) if parse_prometheus_duration(text).is_none_or(|d| d.is_zero()) => {
            Err(ValidateError::PodMonitorInterval(text.to_owned()))
        }
        _ => Ok(()),
    }
}

/// Parses a Prometheus duration as the Prometheus Operator's schema accepts it
/// (`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`,
/// with at least one unit): whole numbers, each unit at most once, largest first; `y` is 365 days.
/// None when `text` is not one.
pub fn parse_prometheus_duration(text: &str) -> Option<Duration> {
    /// The units in the only order allowed, with their length in milliseconds.
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let index = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
        millis = millis.checked_add(number.checked_mul(UNITS[index].1)?)?;
        next_unit = index + 1;
        rest = &rest[unit_len..];
    }
    (next_unit > 0).then(|| Duration::from_millis(millis))
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

    /// Prometheus durations as the PodMonitor schema's pattern accepts them, and the one message
    /// for an interval that is not one.
    #[test]
    fn pod_monitor_intervals_are_prometheus_durations() {
        for (text, millis) in [
            ("30s", Some(30_000)),
            ("1m30s", Some(90_000)),
            ("1h", Some(3_600_000)),
            ("2d12h", Some(216_000_000)),
            ("1w", Some(604_800_000)),
            ("1y", Some(31_536_000_000)),
            ("500ms", Some(500)),
            ("1s500ms", Some(1_500)),
            ("0", Some(0)),
            ("0s", Some(0)),
            ("", None),
            ("30", None),
            ("s", None),
            ("1.5s", None),
            ("30s1m", None),
            ("1m1m", None),
            ("-30s", None),
            ("30 s", None),
            ("30sec", None),
            ("1us", None),
            ("99999999999999999999s", None),
        ] {
            assert_eq!(
                parse_prometheus_duration(text),
                millis.map(Duration::from_millis),
                "{text:?}"
            );
        }
        let with_interval = |interval: &str| {
            let mut cluster = ChatCluster::test();
            cluster.spec.monitoring = Some(crate::crd::MonitoringSpec {
                pod_monitor_interval: Some(interval.into()),
                ..Default::default()
            });
            validate(&cluster).err().map(|e| e.to_string())
        };
        assert_eq!(with_interval("15s"), None);
        for bad in ["15", "1.5m", "0s"] {
            assert_eq!(
                with_interval(bad).as_deref(),
                Some(format!(
                    "spec.monitoring.podMonitorInterval: {bad:?} is not a Prometheus duration such as 30s or 1m30s (whole numbers with the units y, w, d, h, m, s, ms, largest first, more than zero)"
                ).as_str()),
                "{bad:?}"
            );
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
        let short = ChatCluster::test().with_catch_up_timeout("500ms");
        assert_eq!(
            validate(&short).map(|_| ()).map_err(|e| e.to_string()),
            Err("spec.rollout.catchUpTimeout must be at least 1s (it is 500ms)".to_owned())
        );
    }

    /// Every problem is reported, each its own message; names must be DNS-1035 labels.
    #[test]
    fn every_problem_is_reported_and_names_are_dns_labels() {
        let mut c = ChatCluster::test();
        c.spec.broker.storage.size = "1e100".into();
        c.spec.rollout.catch_up_timeout = "0s".into();
        assert_eq!(
            validate(&c).map(|_| ()).map_err(|e| e.to_string()),
            Err(
                "spec.rollout.catchUpTimeout must be at least 1s (it is 0s); \
                 spec.broker.storage.size: \"1e100\" is not a positive quantity such as 1Gi (at \
                 most 8Ei)"
                    .to_owned()
            )
        );
        for (name, ok) in [
            ("demo", true),
            ("a", true),
            ("a-1", true),
            ("1abc", false),
            ("a.b", false),
            ("Abc", false),
            ("abc-", false),
        ] {
            let got = validate(&ChatCluster::test().with_name(name));
            assert_eq!(
                !matches!(got, Err(ValidateError::InvalidName(_))),
                ok,
                "{name}: {got:?}"
            );
        }
    }

    /// The quantity checks the admission policy makes, repeated for clusters without it.
    #[test]
    fn quantities_are_checked_like_the_admission_policy() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        // (broker size, log size, chat-server memory limit, error)
        let cases = [
            ("1Gi", "1Gi", "512Mi", None),
            ("1500M", "0.5Gi", "1G", None),
            (
                "lots",
                "1Gi",
                "512Mi",
                Some(
                    "spec.broker.storage.size: \"lots\" is not a positive quantity such as 1Gi \
                     (at most 8Ei)",
                ),
            ),
            (
                "1Gi",
                "0",
                "512Mi",
                Some(
                    "spec.replicationLog.storage.size: \"0\" is not a positive quantity such as 1Gi (at most 8Ei)",
                ),
            ),
            (
                "1Gi",
                "1Gi",
                "x",
                Some(
                    "spec.chatServer.resources.limits.memory: \"x\" is not a non-negative \
                     quantity such as 500m or 1Gi",
                ),
            ),
        ];
        for (broker, log, memory, want) in cases {
            let mut c = ChatCluster::test();
            c.spec.broker.storage.size = broker.into();
            c.spec.replication_log.storage.size = log.into();
            c.spec.chat_server.pod.resources = Some(ResourceRequirements {
                limits: Some([("memory".to_owned(), Quantity(memory.into()))].into()),
                ..ResourceRequirements::default()
            });
            let got = validate(&c).map(|_| ()).map_err(|e| e.to_string());
            match want {
                None => assert_eq!(got, Ok(()), "{broker} {log} {memory}"),
                Some(message) => {
                    assert_eq!(got, Err(message.to_owned()), "{broker} {log} {memory}")
                }
            }
        }
    }

    /// Each invalid setting the schema cannot see gives one message naming the field.
    #[test]
    fn pod_settings_are_checked_with_one_message_naming_the_field() {
        let env = |name: &str| EnvVar {
            name: name.into(),
            value: Some("1".into()),
            ..EnvVar::default()
        };
        let limit = |memory: &str| {
            Some(k8s_openapi::api::core::v1::ResourceRequirements {
                limits: Some(
                    [(
                        "memory".to_owned(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity(memory.into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            })
        };
        type Edit = Box<dyn Fn(&mut ChatClusterSpec)>;
        let table: Vec<(&str, Edit, Option<&str>)> = vec![
            (
                "user env passes",
                Box::new(move |s| s.chat_server.pod.env = vec![env("WS_QUEUE")]),
                None,
            ),
            (
                "reserved chat-server variable",
                Box::new(move |s| s.chat_server.pod.env = vec![env("WS_QUEUE"), env("REDIS_URL")]),
                Some(
                    "spec.chatServer.env[1].name: REDIS_URL is set by the operator and cannot be overridden (docs/configuration.md)",
                ),
            ),
            (
                "reserved log variable",
                Box::new(move |s| s.replication_log.pod.env = vec![env("LOG_PEER_URLS")]),
                Some(
                    "spec.replicationLog.env[0].name: LOG_PEER_URLS is set by the operator and cannot be overridden (docs/configuration.md)",
                ),
            ),
            (
                "reserved broker variable",
                Box::new(move |s| s.broker.pod.env = vec![env("REDISCLI_AUTH")]),
                Some(
                    "spec.broker.env[0].name: REDISCLI_AUTH is set by the operator and cannot be overridden (docs/configuration.md)",
                ),
            ),
            (
                "duplicate variable",
                Box::new(move |s| s.broker.pod.env = vec![env("TZ"), env("X"), env("TZ")]),
                Some("spec.broker.env[2].name: TZ is listed twice"),
            ),
            (
                "window within 80 % of the default 512Mi",
                Box::new(|s| s.chat_server.memory_window_bytes = Some(400 << 20)),
                None,
            ),
            (
                "window over 80 % of the default 512Mi",
                Box::new(|s| s.chat_server.memory_window_bytes = Some(450 << 20)),
                Some(
                    "spec.chatServer.memoryWindowBytes: 471859200 bytes is more than 80 % of the chat-server memory limit (536870912 bytes); raise spec.chatServer.resources.limits.memory or lower the window",
                ),
            ),
            (
                "window within a raised limit",
                Box::new(move |s| {
                    s.chat_server.memory_window_bytes = Some(450 << 20);
                    s.chat_server.pod.resources = limit("2Gi");
                }),
                None,
            ),
            (
                "a connection setting as a spec field",
                Box::new(move |s| {
                    s.chat_server.ws_queue = Some(128);
                    s.chat_server.pod.env = vec![env("TZ")];
                }),
                None,
            ),
            (
                "a connection setting in env (as before the fields existed)",
                Box::new(move |s| {
                    s.chat_server.pod.env = vec![env("WS_QUEUE"), env("WS_PING_TIMEOUT")]
                }),
                None,
            ),
            (
                "a connection setting both as a field and in env",
                Box::new(move |s| {
                    s.chat_server.http_body_timeout_seconds = Some(5);
                    s.chat_server.pod.env = vec![env("TZ"), env("HTTP_BODY_TIMEOUT")];
                }),
                Some(
                    "spec.chatServer.env[1].name: HTTP_BODY_TIMEOUT is also set by spec.chatServer.httpBodyTimeoutSeconds; keep one of the two",
                ),
            ),
            (
                "ping timeout above the interval",
                Box::new(|s| {
                    s.chat_server.ws_ping_interval_seconds = Some(10);
                    s.chat_server.ws_ping_timeout_seconds = Some(25);
                }),
                None,
            ),
            (
                "ping interval raised to the default timeout",
                Box::new(|s| s.chat_server.ws_ping_interval_seconds = Some(60)),
                Some(
                    "spec.chatServer.wsPingTimeoutSeconds (60) must be more than wsPingIntervalSeconds (60); unset fields count as their defaults (60 and 30)",
                ),
            ),
            (
                "ping timeout lowered below the default interval",
                Box::new(|s| s.chat_server.ws_ping_timeout_seconds = Some(20)),
                Some(
                    "spec.chatServer.wsPingTimeoutSeconds (20) must be more than wsPingIntervalSeconds (30); unset fields count as their defaults (60 and 30)",
                ),
            ),
            (
                "ping interval as a field, timeout in env: the binary checks",
                Box::new(move |s| {
                    s.chat_server.ws_ping_interval_seconds = Some(90);
                    s.chat_server.pod.env = vec![env("WS_PING_TIMEOUT")];
                }),
                None,
            ),
            (
                "window with no memory limit",
                Box::new(|s| {
                    s.chat_server.memory_window_bytes = Some(1 << 40);
                    s.chat_server.pod.resources = Some(Default::default());
                }),
                None,
            ),
        ];
        for (what, edit, want) in table {
            let mut cluster = ChatCluster::test();
            edit(&mut cluster.spec);
            let got = validate(&cluster).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{what}");
        }
    }
}
