use std::sync::Arc;

use clap::{Parser, Subcommand};
use sidecar_migrator::{api, reconcile};

#[derive(Parser)]
#[command(
    version,
    about = "Migrates Kong Ingress Controller from the sidecar topology to Gateway Discovery"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig or service account (the default).
    Run {
        /// Watch only this namespace (repeatable); every namespace when absent.
        #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
        namespaces: Vec<String>,
    },
    /// Print the SidecarMigration CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command.unwrap_or(Command::Run {
        namespaces: Vec::new(),
    }) {
        Command::Crd => print!("{}", api::crd_yaml()?),
        Command::Run { namespaces } => {
            let client = kube::Client::try_default().await?;
            let instance = std::env::var("POD_NAME").ok();
            let ctx = Arc::new(reconcile::Context::new(client, instance));
            if namespaces.is_empty() {
                reconcile::run(ctx, None).await;
            } else {
                let controllers = namespaces
                    .into_iter()
                    .map(|ns| reconcile::run(ctx.clone(), Some(ns)));
                futures::future::join_all(controllers).await;
            }
        }
    }
    Ok(())
}

fn init_logging(json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if json {
        fmt().json().with_env_filter(filter).init();
    } else {
        fmt().with_env_filter(filter).init();
    }
}
