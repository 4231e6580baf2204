//! `sidecar-migrator bench`: migrations on the local control plane with the
//! node simulator, measured. Prints a Markdown table (docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};

use crate::api::{Cutover, FIELD_MANAGER, Phase, SidecarMigration};
use crate::demo::wait_rollout;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Slots};
use crate::testenv::{self, ControlPlane, NodeSimulator};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Migrations per cutover mode.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The sidecar install to migrate, from tests/fixtures/. Not the one
    /// with a PodDisruptionBudget: under it DeleteLegacyPods stops at the
    /// first refused eviction, by design.
    #[arg(long, default_value = "sidecar-1-replica.yaml")]
    pub fixture: String,
}

struct Sample {
    downtime: Duration,
    to_succeeded: Duration,
    /// Requests kube-apiserver served during the migration, every client
    /// (operator, controller-manager, simulator) together.
    requests: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let sim = NodeSimulator::start(cp.client().await?).await?;
    let client = reconcile::client(cp.config().await?)?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("bench".into()),
        Arc::new(Metrics::default()),
        Slots::new(None),
    ));
    let operator = tokio::spawn(reconcile::run(ctx, None, || {}));

    let mut rows = Vec::new();
    for cutover in [Cutover::ZeroDowntime, Cutover::DeleteLegacyPods] {
        let mut samples = Vec::new();
        for i in 0..args.runs {
            let ns = format!("bench-{}-{i}", format!("{cutover:?}").to_lowercase());
            samples.push(migrate_once(&client, &sim, &ns, &args.fixture, cutover).await?);
        }
        rows.push((cutover, samples));
    }
    operator.abort();
    sim.shutdown().await;
    drop(cp);

    println!(
        "| cutover | runs | downtime ms (each run) | max downtime ms | time to Succeeded s (median) | API requests, all clients (median) |"
    );
    println!("|---|---|---|---|---|---|");
    for (cutover, samples) in rows {
        let downtimes: Vec<String> = samples
            .iter()
            .map(|s| s.downtime.as_millis().to_string())
            .collect();
        let max = samples.iter().map(|s| s.downtime).max().unwrap_or_default();
        let mut times: Vec<f64> = samples
            .iter()
            .map(|s| s.to_succeeded.as_secs_f64())
            .collect();
        let mut requests: Vec<f64> = samples.iter().map(|s| s.requests).collect();
        println!(
            "| {cutover:?} | {} | {} | {} | {:.2} | {:.0} |",
            samples.len(),
            downtimes.join(", "),
            max.as_millis(),
            median(&mut times),
            median(&mut requests),
        );
    }
    Ok(())
}

async fn migrate_once(
    client: &Client,
    sim: &NodeSimulator,
    ns: &str,
    fixture: &str,
    cutover: Cutover,
) -> anyhow::Result<Sample> {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    testenv::apply_fixture(client, ns, fixture).await?;
    wait_rollout(client, ns, "kong-kong", Duration::from_secs(120)).await?;
    let replicas = crate::testenv::load_fixture(fixture, ns)?
        .iter()
        .find_map(|o| o.data.pointer("/spec/replicas").and_then(|r| r.as_u64()))
        .unwrap_or(1) as usize;
    sim.wait_ready_endpoints(ns, "kong-kong-proxy", replicas, Duration::from_secs(60))
        .await?;

    let mut scm: SidecarMigration = serde_yaml::from_str(crate::demo::EXAMPLE)?;
    scm.spec.cutover = cutover;
    let requests_before = apiserver_requests(client).await?;
    let t0 = Instant::now();
    let api: Api<SidecarMigration> = Api::namespaced(client.clone(), ns);
    api.patch(
        &scm.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&scm),
    )
    .await?;
    let ended = |m: Option<&SidecarMigration>| {
        m.and_then(|m| m.status.as_ref()).is_some_and(|s| {
            matches!(
                s.phase,
                Phase::Succeeded | Phase::Failed | Phase::RolledBack
            )
        })
    };
    let done = tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(api.clone(), &scm.name_any(), ended),
    )
    .await
    .with_context(|| format!("{ns}: the migration did not end in 120 s"))??;
    let to_succeeded = t0.elapsed();
    let phase = done.and_then(|m| m.status).map(|s| s.phase);
    anyhow::ensure!(phase == Some(Phase::Succeeded), "{ns}: ended {phase:?}");
    let requests = apiserver_requests(client).await? - requests_before;
    Ok(Sample {
        downtime: sim.downtime(ns, "kong-kong-proxy"),
        to_succeeded,
        requests,
    })
}

/// The sum of kube-apiserver's own `apiserver_request_total`.
async fn apiserver_requests(client: &Client) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or_default()
}
