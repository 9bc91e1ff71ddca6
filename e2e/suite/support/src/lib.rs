//! Test support shared by the project's three harnesses — the data plane's integration tests
//! (`chat-server/tests`), the operator's tests against a real API server (`operator/tests`) and
//! the end-to-end suite (`e2e/suite`). A dev-dependency only; nothing here is compiled into a
//! binary.
//!
//! # Layout
//! - [`free_port`]: a loopback port that was free a moment ago.
//! - [`tail`]: the last lines of a process log, for a failing test's message.
//! - [`poll`]: wait until a check yields a value, or time out naming what was awaited (and the
//!   check's last error).
//! - [`kubectl_path`], [`kubectl`]: the kubectl the e2e cluster scripts built, or the PATH's.
//! - [`k8s`] (feature `kube`, default): an API client for a kubeconfig file and
//!   [`k8s::TestNamespace`], a namespace that is deleted when the test ends.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[cfg(feature = "kube")]
pub mod k8s;

/// Errors of the support functions (the harnesses turn them into panics or `anyhow` errors).
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// [`poll`] ran out of time.
    #[error("timed out after {after:?} waiting for {what}{}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// The time allowed.
        after: Duration,
        /// The check's last error, if it failed rather than said "not yet".
        last_error: Option<String>,
    },
    /// A kubeconfig could not be read or loaded.
    #[cfg(feature = "kube")]
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The API server refused or failed a request.
    #[cfg(feature = "kube")]
    #[error("{what}: {source}")]
    Api {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// The last `lines` lines of `text` (all of it when shorter), joined with `\n`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Ports [`free_port`] hands out: below Linux's default ephemeral range (32768–60999, where the
/// kernel picks the local port of every outgoing connection) and below Kubernetes' NodePort range
/// (30000–32767).
const LISTEN_PORTS: std::ops::Range<u16> = 20000..30000;

/// A loopback port to listen on, free a moment ago (bound on `127.0.0.1`, then released), and
/// not handed out before by this process.
///
/// Taken from [`LISTEN_PORTS`], starting at a random place: a port the kernel gave out as
/// `127.0.0.1:0` is in the ephemeral range, where any test's outgoing connection (an HTTP
/// client, a Redis connection) can take it before the child process that was meant to listen
/// on it binds it — "Address already in use" (seen in CI).
///
/// # Panics
/// When no port in the range can be bound (a test environment without loopback).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let span = LISTEN_PORTS.end - LISTEN_PORTS.start;
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = (hasher.finish() % u64::from(span)) as u16;
    for i in 0..span {
        let port = LISTEN_PORTS.start + (start + i) % span;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {LISTEN_PORTS:?}")
}

/// Calls `check` every `every` until it yields `Ok(Some(value))`, and returns that value. `Ok(None)`
/// means "not yet"; an `Err` also counts as "not yet" and is kept: after `within` the
/// [`SupportError::Timeout`] names `what` and the last error (formatted with `{:#}`, so an
/// `anyhow` chain shows in full).
pub async fn poll<T, E, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, SupportError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if started.elapsed() >= within {
            return Err(SupportError::Timeout {
                what: what.to_owned(),
                after: within,
                last_error,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// kubectl: `$KUBECTL`, `$K8S_BIN/kubectl`, the newest `~/.cache/chat-cluster/*/bin/kubectl`
/// (what `e2e/k8s/build` produces), or `kubectl` on the PATH.
pub fn kubectl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return p.into();
    }
    if let Some(bin) = std::env::var_os("K8S_BIN") {
        return PathBuf::from(bin).join("kubectl");
    }
    let cache =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/chat-cluster");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/kubectl"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| "kubectl".into())
}

/// A `kubectl` command ([`kubectl_path`]) for the cluster of `kubeconfig`, not yet run.
pub fn kubectl(kubeconfig: &Path) -> Command {
    let mut command = Command::new(kubectl_path());
    command.env("KUBECONFIG", kubeconfig);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value comes back as soon as the check yields it; a check that never does times out
    /// naming what was awaited and the last error.
    #[tokio::test]
    async fn poll_returns_the_value_or_times_out_with_the_last_error() {
        let mut calls = 0;
        let got = poll("third call", Duration::from_secs(5), Duration::ZERO, || {
            calls += 1;
            let n = calls;
            async move { Ok::<_, String>((n == 3).then_some(n)) }
        })
        .await
        .expect("yields");
        assert_eq!(got, 3);
        let err = poll::<(), _, _, _>(
            "never",
            Duration::from_millis(50),
            Duration::ZERO,
            || async { Err("refused".to_owned()) },
        )
        .await
        .expect_err("times out");
        let text = err.to_string();
        assert!(
            text.contains("waiting for never") && text.contains("last error: refused"),
            "{text}"
        );
    }
}
