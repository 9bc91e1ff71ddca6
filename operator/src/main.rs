//! `chat-cluster-operator`: the command line. `run` (default) elects a leader on a Lease and runs
//! the controller while leading, serving metrics and health on `--metrics-listen`; `crd` prints
//! the CustomResourceDefinition YAML.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chat_cluster_operator::{controller, crd, leader::Elector, metrics::Metrics};
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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // RUST_LOG_FORMAT; the old name LOG_FORMAT is accepted for one release, with a warning.
    let new = std::env::var("RUST_LOG_FORMAT").ok();
    let old = std::env::var("LOG_FORMAT").ok();
    let deprecated = new.is_none() && old.is_some();
    if new.or(old).is_some_and(|f| f == "json") {
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
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
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

    let mut elector = Elector::new(client.clone(), &args.namespace, &args.lease_name, &identity);
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
    metrics.set_leader(true);

    let (stop_controller, controller_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut controller = tokio::spawn(controller::run(
        client.clone(),
        metrics.clone(),
        identity.clone(),
        async {
            let _ = controller_stopped.await;
        },
    ));

    tokio::select! {
        reason = elector.hold() => {
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
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "releasing the leader lease");
    } else {
        tracing::info!("released the leader lease");
    }
    let _ = stop_http.send(());
    let _ = http.await;
    Ok(())
}
