//! `sidecar-migrator bench`: migrations on the local control plane with the
//! node simulator, measured. Prints a Markdown table (docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};

use crate::api::{Cutover, FIELD_MANAGER, Phase, SidecarMigration};
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
    /// Then this many migrations at once, each in a namespace of its own,
    /// with the operator as a process of its own (peak RSS, CPU seconds,
    /// watches held). 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub scale: usize,
}

struct Sample {
    /// From the moment WaitingForAdminService's condition holds (controller
    /// Available, a new gateway pod Ready) to the operator moving on, both
    /// as this process's watches see them.
    reaction: Option<Duration>,
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
    let scale = if args.scale > 0 {
        Some(at_scale(&cp, &client, &args.fixture, args.scale).await?)
    } else {
        None
    };
    sim.shutdown().await;
    drop(cp);

    println!(
        "| cutover | runs | downtime ms (each run) | max downtime ms | time to Succeeded s (median) | API requests, all clients (median) | reaction ms (median / p99) |"
    );
    println!("|---|---|---|---|---|---|---|");
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
        let mut reactions: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.reaction)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        let reaction = if reactions.is_empty() {
            "-".to_string()
        } else {
            let med = median(&mut reactions);
            format!("{med:.0} / {:.0}", percentile(&reactions, 0.99))
        };
        println!(
            "| {cutover:?} | {} | {} | {} | {:.2} | {:.0} | {reaction} |",
            samples.len(),
            downtimes.join(", "),
            max.as_millis(),
            median(&mut times),
            median(&mut requests),
        );
    }
    if let Some(s) = scale {
        println!();
        println!(
            "| migrations at once | time to all Succeeded s | operator peak RSS MiB | operator CPU s | watches held by the operator |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            s.migrations,
            s.elapsed.as_secs_f64(),
            s.peak_rss_kib as f64 / 1024.0,
            s.cpu_seconds,
            s.watches
        );
    }
    Ok(())
}

struct Scale {
    migrations: usize,
    elapsed: Duration,
    peak_rss_kib: u64,
    cpu_seconds: f64,
    watches: f64,
}

/// `n` namespaces with the fixture, then `n` SidecarMigrations at once,
/// handled by the operator binary (`run`, every namespace) as a process.
async fn at_scale(
    cp: &ControlPlane,
    client: &Client,
    fixture: &str,
    n: usize,
) -> anyhow::Result<Scale> {
    use futures::{StreamExt, TryStreamExt};
    let namespaces: Vec<String> = (0..n).map(|i| format!("scale-{i}")).collect();
    futures::stream::iter(namespaces.clone())
        .map(|ns| async move {
            testenv::install_fixture(client, &ns, fixture, Duration::from_secs(600)).await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;

    let watches_before = apiserver_watches(client).await?;
    let mut operator = tokio::process::Command::new(std::env::current_exe()?)
        .args(["run", "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()?;
    let pid = operator.id().context("the operator process has a pid")?;

    let scm: SidecarMigration = serde_yaml::from_str(crate::demo::EXAMPLE)?;
    let t0 = Instant::now();
    futures::stream::iter(namespaces.clone())
        .map(|ns| {
            let scm = scm.clone();
            async move {
                Api::<SidecarMigration>::namespaced(client.clone(), &ns)
                    .patch(
                        &scm.name_any(),
                        &PatchParams::apply(FIELD_MANAGER),
                        &Patch::Apply(&scm),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let all: Api<SidecarMigration> = Api::all(client.clone());
    let deadline = t0 + Duration::from_secs(900);
    let mut watches = 0.0;
    loop {
        let list = all.list(&Default::default()).await?;
        let succeeded = list
            .items
            .iter()
            .filter(|m| m.namespace().is_some_and(|ns| ns.starts_with("scale-")))
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Succeeded)
            })
            .count();
        watches = f64::max(watches, apiserver_watches(client).await? - watches_before);
        if succeeded == n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{succeeded}/{n} Succeeded after 900 s"
        );
        // Polling the list is the bench's own load; twice a second is enough.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = t0.elapsed();
    let (peak_rss_kib, cpu_seconds) = process_usage(pid)?;
    operator.start_kill()?;
    let _ = operator.wait().await;
    Ok(Scale {
        migrations: n,
        elapsed,
        peak_rss_kib,
        cpu_seconds,
        watches,
    })
}

/// Peak resident memory (KiB) and CPU seconds (user + system) of a process.
fn process_usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/<pid>/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((hwm, (ticks(11) + ticks(12)) / hz))
}

/// Watches kube-apiserver holds open now, every client together.
async fn apiserver_watches(client: &Client) -> anyhow::Result<f64> {
    Ok(apiserver_metric(client, "apiserver_longrunning_requests{")
        .await?
        .iter()
        .filter(|(labels, _)| labels.contains("verb=\"WATCH\""))
        .map(|(_, v)| v)
        .sum())
}

async fn migrate_once(
    client: &Client,
    sim: &NodeSimulator,
    ns: &str,
    fixture: &str,
    cutover: Cutover,
) -> anyhow::Result<Sample> {
    testenv::install_fixture(client, ns, fixture, Duration::from_secs(120)).await?;
    let replicas = crate::testenv::load_fixture(fixture, ns)?
        .iter()
        .find_map(|o| o.data.pointer("/spec/replicas").and_then(|r| r.as_u64()))
        .unwrap_or(1) as usize;
    sim.wait_ready_endpoints(ns, "kong-kong-proxy", replicas, Duration::from_secs(60))
        .await?;

    let mut scm: SidecarMigration = serde_yaml::from_str(crate::demo::EXAMPLE)?;
    scm.spec.cutover = cutover;
    let reaction = tokio::spawn(reaction_latency(client.clone(), ns.to_string()));
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
    let reaction = match cutover {
        Cutover::ZeroDowntime => tokio::time::timeout(Duration::from_secs(10), reaction)
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten(),
        // Its admin-Service step ends on another condition.
        Cutover::DeleteLegacyPods => {
            reaction.abort();
            None
        }
    };
    Ok(Sample {
        reaction,
        downtime: sim.downtime(ns, "kong-kong-proxy"),
        to_succeeded,
        requests,
    })
}

/// Watches the namespace during one ZeroDowntime migration: see
/// [`Sample::reaction`].
async fn reaction_latency(client: Client, ns: String) -> Option<Duration> {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{WatchStreamExt, watcher};
    enum Seen {
        Deployment(Box<Deployment>),
        Pod(Box<Pod>),
        Migration(Box<SidecarMigration>),
    }
    let cfg = watcher::Config::default();
    let deployments = watcher(
        Api::<Deployment>::namespaced(client.clone(), &ns),
        cfg.clone(),
    )
    .applied_objects()
    .map(|r| r.map(|d| Seen::Deployment(Box::new(d))));
    let pods = watcher(Api::<Pod>::namespaced(client.clone(), &ns), cfg.clone())
        .applied_objects()
        .map(|r| r.map(|p| Seen::Pod(Box::new(p))));
    let migrations = watcher(Api::<SidecarMigration>::namespaced(client, &ns), cfg)
        .applied_objects()
        .map(|r| r.map(|m| Seen::Migration(Box::new(m))));
    let mut events =
        futures::stream::select_all([deployments.boxed(), pods.boxed(), migrations.boxed()]);
    let (mut available, mut new_ready, mut since) = (false, false, None);
    while let Some(Ok(seen)) = events.next().await {
        match seen {
            Seen::Deployment(d) if d.name_any() == "kong-kong-controller" => {
                available = crate::plan::deployment_available(&d);
            }
            Seen::Pod(p) => {
                let gateway = p
                    .spec
                    .as_ref()
                    .is_some_and(|s| !s.containers.iter().any(|c| c.name == "ingress-controller"))
                    && p.labels()
                        .get("app.kubernetes.io/component")
                        .map(String::as_str)
                        == Some("app");
                new_ready |= gateway && crate::plan::pod_ready(&p);
            }
            Seen::Migration(m) => {
                let phase = m.status.map(|s| s.phase).unwrap_or_default();
                let past = matches!(
                    phase,
                    Phase::AwaitingApproval | Phase::DeletingLegacyPods | Phase::Succeeded
                );
                if past {
                    return since.map(|t: Instant| t.elapsed());
                }
            }
            Seen::Deployment(_) => {}
        }
        if available && new_ready && since.is_none() {
            since = Some(Instant::now());
        }
    }
    None
}

/// The sum of kube-apiserver's own `apiserver_request_total`.
async fn apiserver_requests(client: &Client) -> anyhow::Result<f64> {
    Ok(apiserver_metric(client, "apiserver_request_total{")
        .await?
        .iter()
        .map(|(_, v)| v)
        .sum())
}

/// The samples of one kube-apiserver metric: labels and value.
async fn apiserver_metric(client: &Client, prefix: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse::<f64>().ok()?))
        })
        .collect())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or_default()
}
