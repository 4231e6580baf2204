use clap::{Parser, Subcommand};
use sidecar_migrator::{api, operator};

#[derive(Parser)]
#[command(
    version,
    about = "Migrates Kong Ingress Controller from the sidecar topology to Gateway Discovery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig or service account.
    Run(RunArgs),
    /// Print the SidecarMigration CustomResourceDefinition as YAML.
    Crd,
    /// Write the values files of a Succeeded migration's Helm releases
    /// (status.handoff) and print the commands, in order.
    Handoff(HandoffArgs),
    /// Migrate the Kong chart's sidecar install end to end and show it live,
    /// on a local control plane with simulated nodes unless --kubeconfig.
    #[cfg(feature = "testenv")]
    Demo(sidecar_migrator::demo::DemoArgs),
    /// Measure migrations on the local control plane (downtime per cutover,
    /// time to Succeeded, API requests) and print a Markdown table.
    #[cfg(feature = "testenv")]
    Bench(sidecar_migrator::bench::BenchArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (repeatable); every namespace when absent.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Hold this Lease (`namespace/name`) while acting, so that of several
    /// replicas only one ever writes.
    #[arg(long, env = "LEADER_ELECTION_LEASE")]
    leader_election_lease: Option<String>,
    /// This replica's name in the Lease and in Events (default: host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Start at most this many migrations at once; the rest wait in Pending.
    #[arg(long, env = "MAX_CONCURRENT_MIGRATIONS")]
    max_concurrent_migrations: Option<usize>,
    /// Images (patterns with `*` and `?`, matched against the reference as
    /// written) that spec.controller.image may name besides the sidecar's own
    /// repository. The new controller runs with the sidecar's ServiceAccount
    /// and Secrets: list only images you trust with them.
    #[arg(long, env = "ALLOWED_CONTROLLER_IMAGES", value_delimiter = ',')]
    allowed_controller_images: Vec<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
}

#[derive(clap::Args)]
struct HandoffArgs {
    /// The SidecarMigration, as `namespace/name`.
    migration: String,
    /// Where to write `<release>-values.yaml`.
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
}

async fn handoff(args: HandoffArgs) -> anyhow::Result<()> {
    let (ns, name) = args
        .migration
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("takes namespace/name, got {:?}", args.migration))?;
    let client = kube::Client::try_default().await?;
    let scm = kube::Api::<api::SidecarMigration>::namespaced(client, ns)
        .get(name)
        .await?;
    let Some(handoff) = scm.status.and_then(|s| s.handoff) else {
        anyhow::bail!(
            "{ns}/{name} has no status.handoff: it is filled once the migration of a Helm release has Succeeded"
        );
    };
    for release in &handoff.releases {
        let path = args.dir.join(format!("{}-values.yaml", release.name));
        std::fs::write(&path, &release.values)?;
        eprintln!("wrote {}", path.display());
    }
    for note in &handoff.notes {
        eprintln!("note: {note}");
    }
    // What the operator last proved of each step (stderr: stdout is the
    // commands alone, to pipe).
    for release in &handoff.releases {
        let message = release.message.as_deref().unwrap_or("not checked yet");
        eprintln!("release {}: {:?}: {message}", release.name, release.state);
    }
    for release in &handoff.releases {
        for command in release
            .before
            .iter()
            .chain([&release.command])
            .chain(&release.after)
        {
            println!("{command}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // The demo prints its own progress; the control plane's start-up
        // probes would drown it.
        #[cfg(feature = "testenv")]
        Command::Demo(_) | Command::Bench(_) => {
            "warn,kube_client=off,sidecar_migrator::testenv=error"
        }
        _ => "info,kube=warn",
    };
    init_logging(cli.log_json, default_filter);
    match cli.command {
        Command::Crd => print!("{}", api::crd_yaml()?),
        Command::Handoff(args) => handoff(args).await?,
        #[cfg(feature = "testenv")]
        Command::Demo(args) => sidecar_migrator::demo::run(args).await?,
        #[cfg(feature = "testenv")]
        Command::Bench(args) => sidecar_migrator::bench::run(args).await?,
        Command::Run(args) => {
            let lease = match args.leader_election_lease {
                Some(l) => {
                    let (ns, name) = l.split_once('/').ok_or_else(|| {
                        anyhow::anyhow!("--leader-election-lease takes namespace/name, got {l:?}")
                    })?;
                    Some((ns.to_string(), name.to_string()))
                }
                None => None,
            };
            let identity = args.identity.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| format!("sidecar-migrator-{}", std::process::id()))
            });
            let opts = operator::Options {
                namespaces: args.namespaces,
                lease,
                identity,
                http: args.http_addr,
                max_concurrent_migrations: args.max_concurrent_migrations,
                allowed_controller_images: args.allowed_controller_images,
            };
            operator::run(kube::Config::infer().await?, opts).await?;
        }
    }
    Ok(())
}

fn init_logging(json: bool, default_filter: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if json {
        fmt().json().with_env_filter(filter).init();
    } else {
        fmt().with_env_filter(filter).init();
    }
}
