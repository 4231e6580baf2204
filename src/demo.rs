//! `sidecar-migrator demo`: one migration end to end, shown as it happens.
//! Without a cluster it starts the local control plane and the node
//! simulator; with `--kubeconfig` it uses that cluster instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, ResourceExt};

use crate::api::{Cutover, FIELD_MANAGER, Phase, SidecarMigration};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Slots};
use crate::testenv::{self, ControlPlane, NodeSimulator};

pub(crate) const EXAMPLE: &str = include_str!("../examples/sidecarmigration.yaml");

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Run against this cluster instead of a local control plane (the Kong
    /// fixture is installed into --namespace there, with real images).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    #[arg(long, default_value = "kong-demo")]
    pub namespace: String,
    /// The sidecar install to migrate, from tests/fixtures/.
    #[arg(long, default_value = "sidecar-3-replicas-pdb.yaml")]
    pub fixture: String,
    #[arg(long, value_enum, default_value = "zero-downtime")]
    pub cutover: DemoCutover,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DemoCutover {
    ZeroDowntime,
    DeleteLegacyPods,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (client, local) = match &args.kubeconfig {
        Some(path) => {
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(path)?,
                &Default::default(),
            )
            .await?;
            let client = reconcile::client(config)?;
            // The local control plane installs crds/ itself.
            install_crd(&client).await?;
            (client, None)
        }
        None => {
            println!(
                "starting a local control plane (etcd, kube-apiserver, kube-controller-manager)…"
            );
            let cp = ControlPlane::start().await?;
            println!(
                "control plane ready in {:.1}s; kubeconfig: {}",
                started.elapsed().as_secs_f64(),
                cp.kubeconfig_path().display()
            );
            let sim = NodeSimulator::start(cp.client().await?).await?;
            let client = reconcile::client(cp.config().await?)?;
            (client, Some((cp, sim)))
        }
    };
    let ns = args.namespace.as_str();
    println!(
        "installing the kong chart's sidecar rendering ({}) into namespace {ns}…",
        args.fixture
    );
    testenv::install_fixture(
        &client,
        ns,
        &args.fixture,
        Duration::from_secs(args.timeout),
    )
    .await?;
    println!("Deployment kong-kong is up with the ingress-controller sidecar");

    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("demo".into()),
        Arc::new(Metrics::default()),
        Slots::new(None),
    ));
    let operator = tokio::spawn(reconcile::run(ctx, Some(ns.to_string()), || {}));

    let mut example: SidecarMigration = serde_saphyr::from_str(EXAMPLE)?;
    example.spec.cutover = match args.cutover {
        DemoCutover::ZeroDowntime => Cutover::ZeroDowntime,
        DemoCutover::DeleteLegacyPods => Cutover::DeleteLegacyPods,
    };
    let name = example.name_any();
    let migrations: Api<SidecarMigration> = Api::namespaced(client.clone(), ns);
    migrations
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&example),
        )
        .await?;
    println!(
        "applied examples/sidecarmigration.yaml (cutover {:?}); watching it:\n",
        example.spec.cutover
    );
    let t0 = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        follow(&migrations, &name, t0),
    )
    .await
    .context("the migration did not finish in time")?;
    operator.abort();
    let phase = outcome?;
    println!("\n{name}: {phase} in {:.1}s", t0.elapsed().as_secs_f64());
    if let Some((_, sim)) = &local {
        let downtime = sim.downtime(ns, "kong-kong-proxy");
        println!(
            "downtime of Service kong-kong-proxy (time with no endpoint both Ready and configured): {} ms",
            downtime.as_millis()
        );
    }
    if let Some((cp, sim)) = local {
        // The simulator first, so its watches do not outlive the API server.
        sim.shutdown().await;
        drop(cp);
    }
    anyhow::ensure!(phase == Phase::Succeeded, "the migration ended {phase}");
    Ok(())
}

async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = SidecarMigration::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let established = kube::runtime::wait::conditions::is_crd_established();
    kube::runtime::wait::await_condition(crds, &crd.name_any(), established).await?;
    Ok(())
}

/// Prints a line each time phase, step or message changes, like
/// `kubectl get sidecarmigrations -w`, until the migration ends.
async fn follow(api: &Api<SidecarMigration>, name: &str, t0: Instant) -> anyhow::Result<Phase> {
    println!(
        "{:>7}  {:<24} {:<5} {:<6} MESSAGE",
        "TIME", "PHASE", "STEP", "READY"
    );
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api.clone(), cfg).applied_objects().boxed();
    let mut last = String::new();
    while let Some(scm) = stream.try_next().await? {
        let Some(st) = scm.status.clone() else {
            continue;
        };
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
            .unwrap_or_default();
        let line = format!(
            "{:<24} {:<5} {:<6} {}",
            st.phase.as_str(),
            st.step.clone().unwrap_or_default(),
            ready,
            st.message.clone().unwrap_or_default()
        );
        if line != last {
            println!("{:>6.1}s  {line}", t0.elapsed().as_secs_f64());
            last = line;
        }
        if st.phase.is_at_rest() {
            return Ok(st.phase);
        }
    }
    anyhow::bail!("the watch on SidecarMigration {name} ended")
}
