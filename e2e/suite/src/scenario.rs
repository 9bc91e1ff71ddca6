//! The frame every scenario shares: find the cluster (or fail), install the operator, create a
//! namespace and a ChatCluster `demo` in it, wait until it is Running; load helpers; checking the
//! histories of every holder; deleting the namespace at the end.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chat_cluster_operator::crd::ChatClusterSpec;

use crate::cluster::{TestCluster, test_spec};
use crate::harness::{Harness, TestNamespace};
use crate::history::{self, Accepted};
use crate::load::{Load, LoadSpec, Pace};

/// How long a new ChatCluster may take to reach Running.
pub const START_TIMEOUT: Duration = Duration::from_secs(300);

/// One scenario's cluster and namespace.
pub struct Scenario {
    /// The harness.
    pub harness: Harness,
    /// The ChatCluster `demo`.
    pub cluster: TestCluster,
    namespace: TestNamespace,
    started: Instant,
}

impl Scenario {
    /// Sets up a Running ChatCluster from [`test_spec`] changed by `edit`; an error when no
    /// cluster is configured.
    pub async fn start(prefix: &str, edit: impl FnOnce(&mut ChatClusterSpec)) -> Result<Scenario> {
        let harness = Harness::from_env().await?;
        let started = Instant::now();
        harness
            .install_operator()
            .await
            .context("installing the operator")?;
        let namespace = harness.namespace(prefix).await?;
        let mut spec = test_spec(&harness);
        edit(&mut spec);
        let ready = format!("{0}/{0}", spec.replicas);
        let cluster = TestCluster::create(&harness, &namespace.name, "demo", spec).await?;
        let row = cluster.wait_running(&ready, START_TIMEOUT).await?;
        eprintln!(
            "[{prefix}] ChatCluster {}/demo Running {} after {:.1?}",
            namespace.name,
            row.ready,
            started.elapsed()
        );
        Ok(Scenario {
            harness,
            cluster,
            namespace,
            started,
        })
    }

    /// Time since [`Scenario::start`] began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts writers on `channel` through the chat-server Service.
    pub fn load(&self, channel: &str, clients: usize, pace: Pace, prefix: &str) -> Load {
        Load::start(
            self.harness.proxy.clone(),
            LoadSpec {
                target: self.cluster.chat_service(),
                channel: channel.to_owned(),
                clients,
                pace,
                retry_for: Duration::from_secs(120),
                prefix: prefix.to_owned(),
            },
        )
    }

    /// Waits until every chat-server pod and log replica holds the same history (at least up to
    /// the highest accepted position), then checks it: dense from 1 (the scenario writes only
    /// `channel`), identical everywhere, every accepted message present where it was
    /// acknowledged. Returns the number of messages held.
    pub async fn check_histories(&self, channel: &str, accepted: &[Accepted]) -> Result<usize> {
        self.check_histories_with_voids(channel, accepted, 0).await
    }

    /// As [`Scenario::check_histories`], allowing `voids` skipped position ranges: each broker
    /// restart starts a new epoch past every position the previous Redis process may have handed
    /// out (docs/operations.md, "Broker loss").
    pub async fn check_histories_with_voids(
        &self,
        channel: &str,
        accepted: &[Accepted],
        voids: usize,
    ) -> Result<usize> {
        let holders = self.cluster.holders().await?;
        let at_least = accepted.iter().map(|a| a.position).max().unwrap_or(0);
        let started = Instant::now();
        // Replicas serve channel pages only to the data plane's own parts.
        let proxy = self
            .harness
            .proxy
            .with_internal_token(&self.cluster.internal_token().await?)?;
        let histories = history::converged_histories(
            &proxy,
            &holders,
            channel,
            at_least,
            Duration::from_secs(120),
        )
        .await?;
        let names: Vec<&str> = histories.iter().map(|(n, _)| n.as_str()).collect();
        let held = history::check(accepted, &histories, Some(voids)).into_result()?;
        eprintln!(
            "histories of {names:?}: {held} messages each, dense, identical, all {} accepted present (checked in {:.1?})",
            accepted.len(),
            started.elapsed()
        );
        Ok(held)
    }

    /// Deletes the namespace (and so the ChatCluster and its volumes) and waits until it is gone.
    pub async fn finish(self) -> Result<()> {
        let elapsed = self.started.elapsed();
        let (name, cleanup) = (self.namespace.name.clone(), Instant::now());
        self.namespace.delete(Duration::from_secs(300)).await?;
        eprintln!(
            "namespace {name} deleted in {:.1?}; scenario took {elapsed:.1?} (plus cleanup)",
            cleanup.elapsed()
        );
        Ok(())
    }
}
