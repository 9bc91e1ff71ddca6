//! `chat-cluster-operator`: the command line. `run` (default) elects a leader on a Lease (unless
//! `--leader-election false`) and runs the controller while leading, over the namespaces of
//! `--watch-namespaces` (all when empty), serving metrics and health on `--metrics-listen`; `crd`
//! prints the CustomResourceDefinition YAML; `token` prints a client token (HS256 JWT) for a
//! ChatCluster in token mode, signed with a key file or the ChatCluster's auth Secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chat_cluster_operator::controller::{self, WatchScope};
use chat_cluster_operator::{crd, leader::Elector, metrics::Metrics, token};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "chat-cluster-operator",
    version,
    about = "The ChatCluster operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print the ChatCluster ValidatingAdmissionPolicy and its binding as YAML (installed with the
    /// CRD: quantities, durations, the name length and the storage transition rules).
    AdmissionPolicy,
    /// Print a client token (an HS256 JWT) for a ChatCluster in token mode: its `sub` is the
    /// user, its grants the channel patterns given. Only the token goes to stdout.
    Token(TokenArgs),
}

/// `chat-cluster-operator token` (docs/chatcluster.md, "Tokens for users"; docs/security.md).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["key_file", "chatcluster"])))]
struct TokenArgs {
    /// The user: the token's subject (`sub`), written as the author of their messages.
    #[arg(long)]
    user: String,
    /// A display name (`name` claim), shown as the author when chat-server runs with
    /// AUTH_NAME_CLAIM=name.
    #[arg(long)]
    name: Option<String>,
    /// Channel patterns the user may read and publish to, comma-separated: a channel name,
    /// `prefix.*` or `*` (e.g. 'general,team.*').
    #[arg(long, default_value = "")]
    channels: String,
    /// Channel patterns the user may only read.
    #[arg(long, default_value = "")]
    subscribe: String,
    /// Channel patterns the user may only publish to.
    #[arg(long, default_value = "")]
    publish: String,
    /// Lifetime: a number with a unit s, m, h or d (24h, 90m, 7d); at most 366d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// `aud` claim (with --chatcluster, default: its spec.auth.audience).
    #[arg(long)]
    audience: Option<String>,
    /// `iss` claim (with --chatcluster, default: its spec.auth.issuer).
    #[arg(long)]
    issuer: Option<String>,
    /// Sign with the HS256 key in this file (trailing newlines ignored, as chat-server's
    /// --auth-hmac-key-file).
    #[arg(long, value_name = "PATH")]
    key_file: Option<std::path::PathBuf>,
    /// Sign with the key of this ChatCluster: its Secret spec.auth.secretName, else
    /// `{name}-auth` (key `hmac-key`), read through the kubeconfig; aud/iss from its spec.
    #[arg(long, value_name = "NAME")]
    chatcluster: Option<String>,
    /// Namespace of --chatcluster (default: the kubeconfig context's).
    #[arg(long, short = 'n', requires = "chatcluster")]
    namespace: Option<String>,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "chat-cluster-system")]
    namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "chat-cluster-operator")]
    lease_name: String,
    /// Identity in the Lease (default: POD_NAME, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Elect a leader on the Lease before reconciling. `false` only with a single replica:
    /// two replicas without election would both reconcile.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespaces whose ChatClusters to reconcile, comma-separated; empty: every namespace.
    /// The operator then needs RBAC only in these (a Role per namespace, no ClusterRole).
    #[arg(long, env = "WATCH_NAMESPACES", default_value = "")]
    watch_namespaces: String,
}

/// The log filter without `RUST_LOG`. `kube_client::client::builder` is off: it logs every
/// non-2xx answer at ERROR (each pod-proxy probe of a pod not yet serving, each 404 of a child
/// looked up before it exists), which the operator handles and reports itself — dozens of lines
/// a second from a healthy operator otherwise.
const DEFAULT_LOG_FILTER: &str = "info,kube_runtime=warn,kube_client::client::builder=off";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let (json, deprecated) = log_format(
        std::env::var("RUST_LOG_FORMAT").ok().as_deref(),
        std::env::var("LOG_FORMAT").ok().as_deref(),
    );
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
    if deprecated {
        tracing::warn!(
            "LOG_FORMAT is deprecated and will be removed in the next release; set RUST_LOG_FORMAT instead"
        );
    }
}

/// The tracing output format from `RUST_LOG_FORMAT` and its deprecated former name `LOG_FORMAT`
/// (accepted for one release; the new name wins when both are set): `(json, deprecated name
/// used)`. `json` in any case selects JSON lines, as for the data-plane binaries
/// (`chat_server::telemetry::format_choice`); anything else is human-readable text.
fn log_format(new: Option<&str>, old: Option<&str>) -> (bool, bool) {
    match (new, old) {
        (Some(v), _) => (v.eq_ignore_ascii_case("json"), false),
        (None, Some(v)) => (v.eq_ignore_ascii_case("json"), true),
        (None, None) => (false, false),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd::crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Some(Command::AdmissionPolicy) => {
            print!(
                "{}",
                crd::policy_yaml().context("rendering the admission policy")?
            );
            Ok(())
        }
        Some(Command::Token(args)) => {
            println!("{}", mint(args).await?);
            Ok(())
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

/// Reads the key (the file, or the ChatCluster's Secret) and mints the token.
async fn mint(args: TokenArgs) -> anyhow::Result<String> {
    let (key, audience, issuer) = match (&args.key_file, &args.chatcluster) {
        (Some(path), _) => {
            let raw = std::fs::read(path)
                .with_context(|| format!("reading --key-file {}", path.display()))?;
            (token::key_bytes(&raw).to_vec(), args.audience, args.issuer)
        }
        (None, Some(name)) => {
            let client = kube::Client::try_default()
                .await
                .context("creating the Kubernetes client (for --chatcluster)")?;
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let (key, auth) = token::cluster_key(client, &namespace, name).await?;
            (
                key,
                args.audience.or(auth.audience),
                args.issuer.or(auth.issuer),
            )
        }
        (None, None) => anyhow::bail!("give --key-file PATH or --chatcluster NAME"),
    };
    let grant = token::Grant {
        user: args.user,
        name: args.name,
        channels: token::patterns(&args.channels),
        subscribe: token::patterns(&args.subscribe),
        publish: token::patterns(&args.publish),
        ttl: token::parse_ttl(&args.ttl)?,
        audience,
        issuer,
    };
    Ok(token::mint(&grant, &key, token::unix_now())?)
}

/// Holds the lease until leadership is lost (the reason); never returns without election.
async fn hold(elector: Option<&mut Elector>) -> String {
    match elector {
        Some(elector) => elector.hold().await,
        None => std::future::pending().await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    let scope = WatchScope::parse(&args.watch_namespaces)?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let client = kube::Client::try_default()
        .await
        .context("creating the Kubernetes client")?;
    let metrics = Arc::new(Metrics::new());

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(chat_cluster_operator::metrics::serve(
        args.metrics_listen,
        metrics.clone(),
        async {
            let _ = http_stopped.await;
        },
    ));
    metrics.set_ready(true);

    let mut elector = args
        .leader_election
        .then(|| Elector::new(client.clone(), &args.namespace, &args.lease_name, &identity));
    if let Some(elector) = elector.as_mut() {
        tracing::info!(
            identity,
            namespace = args.namespace,
            lease = args.lease_name,
            "waiting for leadership"
        );
        tokio::select! {
            () = elector.acquire() => {}
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
        }
    } else {
        tracing::warn!(
            identity,
            "leader election is off: run only one replica of the operator"
        );
    }
    metrics.set_leader(true);

    let (stop_controller, controller_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut controller = tokio::spawn(controller::run(
        client.clone(),
        metrics.clone(),
        identity.clone(),
        scope,
        async {
            let _ = controller_stopped.await;
        },
    ));

    tokio::select! {
        reason = hold(elector.as_mut()) => {
            tracing::error!(reason, "lost leadership; exiting so that no two replicas reconcile at once");
            std::process::exit(1);
        }
        result = &mut controller => {
            tracing::error!(?result, "controller stopped unexpectedly");
            std::process::exit(1);
        }
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_controller.send(());
    if tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .is_err()
    {
        tracing::warn!("in-flight reconciles did not finish within 10s");
    }
    if let Some(elector) = elector.as_mut() {
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "releasing the leader lease");
        } else {
            tracing::info!("released the leader lease");
        }
    }
    let _ = stop_http.send(());
    let _ = http.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_format;

    #[test]
    fn log_format_matches_the_data_plane_rule() {
        // (RUST_LOG_FORMAT, LOG_FORMAT) -> (json, deprecated name used)
        let cases = [
            (None, None, (false, false)),
            (Some("json"), None, (true, false)),
            (Some("JSON"), None, (true, false)),
            (Some("text"), None, (false, false)),
            (None, Some("json"), (true, true)),
            (None, Some("Json"), (true, true)),
            (Some("text"), Some("json"), (false, false)),
            (Some("json"), Some("text"), (true, false)),
        ];
        for (new, old, want) in cases {
            assert_eq!(log_format(new, old), want, "{new:?} {old:?}");
        }
    }
}
