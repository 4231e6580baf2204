//! `sidecar-migrator bench`: migrations on the local control plane with the
//! node simulator, measured, beside Kong's manual procedure replayed on the
//! same install. Prints Markdown tables (docs/benchmarks.md).

mod apiserver;
mod manual;
mod observe;
mod wakeups;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_deleted};
use kube::{Client, ResourceExt};

use crate::api::{Cutover, FIELD_MANAGER, Phase, SidecarMigration};
use crate::testenv::{self, ControlPlane, NodeSimulator};
use observe::Observer;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Migrations per cutover mode, and replays of the manual procedure.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The sidecar install to migrate, from tests/fixtures/. Not the one
    /// with a PodDisruptionBudget: under it DeleteLegacyPods stops at the
    /// first refused eviction, by design.
    #[arg(long, default_value = "sidecar-1-replica.yaml")]
    pub fixture: String,
    /// Time every pod takes from binding to Ready in the node simulator (0:
    /// at once). Kong takes seconds to start; a replaced pod makes traffic
    /// wait that long.
    #[arg(long, default_value_t = 0)]
    pub pod_startup_ms: u64,
    /// How long the replay of Kong's manual procedure keeps deleting sidecar
    /// pods before it gives up; such a run counts as not done, with the
    /// downtime it caused until then.
    #[arg(long, default_value_t = 600)]
    pub manual_give_up_s: u64,
    /// Replays of Kong's manual procedure (default: `--runs`).
    #[arg(long)]
    pub manual_runs: Option<usize>,
    /// Replay Kong's manual procedure only: for installs the operator
    /// refuses (Kong < 3.3 probed on `/status`), to measure what the manual
    /// way costs there.
    #[arg(long)]
    pub manual_only: bool,
    /// Then this many migrations at once, each in a namespace of its own,
    /// with the operator as a process of its own (peak RSS, CPU seconds,
    /// watches held). 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub scale: usize,
    /// Then the operator process idle (no unfinished migration) as the
    /// cluster is, and again once each of these numbers of unrelated pods
    /// runs (comma-separated, growing: `10000,50000`). Empty skips it.
    #[arg(long, value_delimiter = ',')]
    pub idle_pods: Vec<usize>,
    /// Then this many pods created and deleted beside a finished migration:
    /// the reconciles and requests they cost. 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub wakeup_pods: usize,
    /// Another build of sidecar-migrator to measure beside this one, in
    /// every table the operator's build changes, for before/after in one
    /// run; its rows say `(baseline)`.
    #[arg(long)]
    pub baseline: Option<std::path::PathBuf>,
    /// The RBAC the baseline runs with (default: `deploy/rbac.yaml` of the
    /// checkout its binary was built in, `<checkout>/target/<profile>/`).
    #[arg(long)]
    pub baseline_rbac: Option<std::path::PathBuf>,
    /// The cutovers the operator migrates with, as spec.cutover spells
    /// them (default: both).
    #[arg(long, value_delimiter = ',', value_parser = parse_cutover)]
    pub cutover: Vec<Cutover>,
    /// RUST_LOG of the operator processes, whose output the bench passes
    /// on: `kube_client=debug` logs each request with its span, to see
    /// where a slow reaction's time went.
    #[arg(long, default_value = "error")]
    pub operator_log: String,
}

impl Build {
    /// Its operator process, with its RBAC.
    async fn start(&self, cp: &ControlPlane, client: &Client) -> anyhow::Result<OperatorProcess> {
        apiserver::grant(cp, &self.rbac).await?;
        OperatorProcess::start_binary(cp, client, &self.exe, &self.log).await
    }
}

fn parse_cutover(s: &str) -> Result<Cutover, String> {
    serde_json::from_value(serde_json::json!(s)).map_err(|e| e.to_string())
}

/// A build of the operator the bench runs as a process of its own.
struct Build {
    exe: std::path::PathBuf,
    /// The RBAC it runs with.
    rbac: std::path::PathBuf,
    /// Empty for this build, ` (baseline)` for the other: the rows' suffix.
    suffix: &'static str,
    /// Its RUST_LOG.
    log: String,
}

#[derive(Clone, Copy, Debug)]
enum Procedure {
    /// The operator, with the build of the given suffix.
    Operator(Cutover, &'static str),
    /// Kong's documented steps, by hand: see [`manual`].
    Manual,
}

impl std::fmt::Display for Procedure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Procedure::Operator(c, build) => write!(f, "operator, {c:?}{build}"),
            Procedure::Manual => f.write_str("manual (Kong's docs)"),
        }
    }
}

struct Sample {
    /// Time the proxy Service had no endpoint both Ready and configured:
    /// traffic lost, 404s from an unconfigured gateway included.
    downtime: Duration,
    /// Time it had no Ready endpoint at all (the measure before issue 11).
    unready: Duration,
    /// From the SidecarMigration's creation (or the manual procedure's first
    /// step) until done.
    to_done: Duration,
    /// Growth of `apiserver_request_total`, every client together.
    requests_all: f64,
    /// Requests kube-apiserver dispatched for the operator alone.
    requests_operator: Option<f64>,
    /// One per entry of [`REACTIONS`], where measured.
    reactions: [Option<Duration>; 3],
    /// `kubectl delete pod` commands the manual procedure took.
    deletes: Option<usize>,
    /// False for a manual replay that gave up.
    done: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cp = ControlPlane::start_with_kubectl().await?;
    let admin = cp.client().await?;
    let startup = Duration::from_millis(args.pod_startup_ms);
    let sim = NodeSimulator::start_with_startup(admin.clone(), None, startup).await?;
    apiserver::install_operator_identity(&cp, &admin).await?;
    let mut builds = Vec::new();
    if let Some(exe) = &args.baseline {
        let checkout = exe.ancestors().nth(3).map(|c| c.join("deploy/rbac.yaml"));
        let rbac = args
            .baseline_rbac
            .clone()
            .or(checkout.filter(|r| r.exists()))
            .context("the baseline's RBAC: give --baseline-rbac")?;
        builds.push(Build {
            exe: exe.clone(),
            rbac,
            suffix: " (baseline)",
            log: args.operator_log.clone(),
        });
    }
    builds.push(Build {
        exe: std::env::current_exe()?,
        rbac: apiserver::RBAC.into(),
        suffix: "",
        log: args.operator_log.clone(),
    });
    let cutovers = if args.cutover.is_empty() {
        vec![Cutover::ZeroDowntime, Cutover::DeleteLegacyPods]
    } else {
        args.cutover.clone()
    };
    let give_up = Duration::from_secs(args.manual_give_up_s);

    let mut rows = Vec::new();
    for build in builds.iter().filter(|_| !args.manual_only && args.runs > 0) {
        let operator = build.start(&cp, &admin).await?;
        for cutover in &cutovers {
            let procedure = Procedure::Operator(*cutover, build.suffix);
            let mut samples = Vec::new();
            for i in 0..args.runs {
                let label = if build.suffix.is_empty() { "" } else { "base-" };
                let ns = format!("bench-{label}{}-{i}", format!("{cutover:?}").to_lowercase());
                samples.push(once(&admin, &sim, &ns, &args.fixture, procedure, give_up).await?);
            }
            rows.push((procedure, samples));
        }
        operator.stop().await;
    }
    let mut samples = Vec::new();
    for i in 0..args.manual_runs.unwrap_or(args.runs) {
        let ns = format!("bench-manual-{i}");
        let procedure = Procedure::Manual;
        samples.push(once(&admin, &sim, &ns, &args.fixture, procedure, give_up).await?);
    }
    if !samples.is_empty() {
        rows.push((Procedure::Manual, samples));
    }

    let mut scale = Vec::new();
    if args.scale > 0 {
        for build in &builds {
            scale.push(at_scale(&cp, &admin, &args.fixture, args.scale, build).await?);
        }
    }
    let idle = match args.idle_pods.is_empty() {
        true => Vec::new(),
        false => idle(&cp, &admin, &args.idle_pods, &builds).await?,
    };
    let mut wakeups = Vec::new();
    if args.wakeup_pods > 0 {
        for build in &builds {
            let label = if build.suffix.is_empty() {
                "this"
            } else {
                "baseline"
            };
            wakeups.push(wakeups::measure(&cp, &admin, build, label, args.wakeup_pods).await?);
        }
    }
    sim.shutdown().await;
    drop(cp);

    print_migrations(&rows);
    println!();
    print_reactions(&rows);
    if !scale.is_empty() {
        println!();
        println!(
            "| migrations at once | time to all Succeeded s | operator peak RSS MiB | operator CPU s | operator requests (per migration) | reconciles (failed) | watches held by the operator (median) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for s in &scale {
            println!(
                "| {}{} | {:.1} | {:.1} | {:.1} | {:.0} ({:.1}) | {:.0} ({:.0}) | {} |",
                s.migrations,
                s.suffix,
                s.elapsed.as_secs_f64(),
                kib_to_mib(s.usage.peak_rss_kib),
                s.usage.cpu_seconds,
                s.requests,
                s.requests / s.migrations as f64,
                s.reconciles,
                s.errors,
                s.watches
            );
        }
    }
    if !wakeups.is_empty() {
        println!();
        println!(
            "| build | pods created and deleted beside a finished migration | reconciles | operator requests |"
        );
        println!("|---|---|---|---|");
        for w in &wakeups {
            println!(
                "| {} | {} | {:.0} | {:.0} |",
                w.build, w.pods, w.reconciles, w.requests
            );
        }
    }
    if !idle.is_empty() {
        println!();
        println!(
            "| unrelated pods | operator RSS idle MiB | peak RSS MiB | CPU s while idle 10 s | operator requests while idle 10 s |"
        );
        println!("|---|---|---|---|---|");
        for m in &idle {
            println!(
                "| {}{} | {:.1} | {:.1} | {:.2} | {:.0} |",
                m.pods,
                m.suffix,
                kib_to_mib(m.rss_kib),
                kib_to_mib(m.peak_rss_kib),
                m.cpu_seconds,
                m.requests
            );
        }
    }
    Ok(())
}

fn print_migrations(rows: &[(Procedure, Vec<Sample>)]) {
    println!(
        "| procedure | runs | runs with downtime | downtime ms (median / max) | time to done s (median) | API requests, all clients (median) | by the operator (median) | pod deletes by hand (median / max) | runs given up | no Ready endpoint ms (median / max) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (procedure, samples) in rows {
        let of = |f: &dyn Fn(&Sample) -> Option<f64>| summarize(samples.iter().filter_map(f));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let downtime = of(&|s| Some(ms(s.downtime)));
        let unready = of(&|s| Some(ms(s.unready)));
        let with_downtime = samples.iter().filter(|s| !s.downtime.is_zero()).count();
        let dash = |v: Option<Summary>, f: &dyn Fn(&Summary) -> String| {
            v.as_ref().map_or_else(|| "-".to_string(), f)
        };
        let given_up = samples.iter().filter(|s| !s.done).count();
        println!(
            "| {procedure} | {} | {with_downtime} | {} | {} | {} | {} | {} | {given_up} | {} |",
            samples.len(),
            dash(downtime, &|v| format!("{:.0} / {:.0}", v.median, v.max)),
            dash(
                of(&|s| s.done.then_some(s.to_done.as_secs_f64())),
                &|v| format!("{:.2}", v.median)
            ),
            dash(of(&|s| Some(s.requests_all)), &|v| format!(
                "{:.0}",
                v.median
            )),
            dash(of(&|s| s.requests_operator), &|v| format!(
                "{:.0}",
                v.median
            )),
            dash(of(&|s| s.deletes.map(|d| d as f64)), &|v| format!(
                "{:.0} / {:.0}",
                v.median, v.max
            )),
            dash(unready, &|v| format!("{:.0} / {:.0}", v.median, v.max)),
        );
    }
}

/// One migration (or manual replay) of a fresh install in namespace `ns`.
async fn once(
    client: &Client,
    sim: &NodeSimulator,
    ns: &str,
    fixture: &str,
    procedure: Procedure,
    give_up: Duration,
) -> anyhow::Result<Sample> {
    testenv::install_fixture(client, ns, fixture, Duration::from_secs(120)).await?;
    let replicas = testenv::load_fixture(fixture, ns)?
        .iter()
        .find_map(|o| o.data.pointer("/spec/replicas").and_then(|r| r.as_u64()))
        .unwrap_or(1) as usize;
    sim.wait_ready_endpoints(ns, "kong-kong-proxy", replicas, Duration::from_secs(60))
        .await?;
    let mut seen = Observer::new(client, ns);
    seen.wait_ready(Duration::from_secs(30)).await?;

    let all_before = apiserver::all_requests(client).await?;
    let operator_before = apiserver::operator_requests(client).await?;
    let t0 = Instant::now();
    let (reactions, replay) = match procedure {
        Procedure::Operator(cutover, _) => {
            let reactions = tokio::spawn(reactions(seen, cutover, ns.to_string()));
            migrate(client, ns, cutover).await?;
            let reactions = tokio::time::timeout(Duration::from_secs(15), reactions)
                .await
                .context("the reaction watch did not see the migration end")??;
            (reactions, None)
        }
        Procedure::Manual => {
            drop(seen);
            ([None; 3], Some(manual::replay(client, ns, give_up).await?))
        }
    };
    let to_done = t0.elapsed();
    let requests_all = apiserver::all_requests(client).await? - all_before;
    let requests_operator = match procedure {
        Procedure::Operator(..) => {
            Some(apiserver::operator_requests(client).await? - operator_before)
        }
        Procedure::Manual => None,
    };
    let sample = Sample {
        downtime: sim.downtime(ns, "kong-kong-proxy"),
        unready: sim.unready_time(ns, "kong-kong-proxy"),
        to_done,
        requests_all,
        requests_operator,
        reactions,
        deletes: replay.as_ref().map(|r| r.deletes),
        done: replay.is_none_or(|r| r.done),
    };
    remove_namespace(client, ns).await?;
    Ok(sample)
}

/// Deletes `ns`, so that every run, of either build, starts in a cluster of
/// about the same size: a run left behind keeps its pods running on the
/// simulator and its objects in every watch, a cost the runs after it would
/// pay and the runs before it would not. Waits only until the operator has
/// let its SidecarMigrations go (their finalizer is its part); the rest
/// terminates beside the next run, as it does for either build.
async fn remove_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let migrations: Api<SidecarMigration> = Api::namespaced(client.clone(), ns);
    // Deleted first and by name: the namespace controller would come to
    // them only after a discovery pass, seconds later.
    for m in migrations.list(&Default::default()).await?.items {
        let Some(uid) = m.uid() else { continue };
        migrations
            .delete(&m.name_any(), &DeleteParams::default())
            .await?;
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(migrations.clone(), &m.name_any(), is_deleted(&uid)),
        )
        .await
        .with_context(|| format!("{ns}: the operator did not let {} go in 60 s", m.name_any()))??;
    }
    Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await?;
    Ok(())
}

/// Applies the example SidecarMigration with `cutover` and waits until it
/// has Succeeded.
async fn migrate(client: &Client, ns: &str, cutover: Cutover) -> anyhow::Result<()> {
    let mut scm: SidecarMigration = serde_saphyr::from_str(crate::demo::EXAMPLE)?;
    scm.spec.cutover = cutover;
    let api: Api<SidecarMigration> = Api::namespaced(client.clone(), ns);
    api.patch(
        &scm.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&scm),
    )
    .await?;
    let done = tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(api, &scm.name_any(), |m: Option<&SidecarMigration>| {
            m.and_then(|m| m.status.as_ref())
                .is_some_and(|s| s.phase.is_at_rest())
        }),
    )
    .await
    .with_context(|| format!("{ns}: the migration did not end in 120 s"))??;
    let phase = done.and_then(|m| m.status).map(|s| s.phase);
    anyhow::ensure!(phase == Some(Phase::Succeeded), "{ns}: ended {phase:?}");
    Ok(())
}

fn print_reactions(rows: &[(Procedure, Vec<Sample>)]) {
    println!(
        "| reaction: condition → the operator's answer | cutover | median ms | p99 ms | max ms | n |"
    );
    println!("|---|---|---|---|---|---|");
    for (procedure, samples) in rows {
        let Procedure::Operator(cutover, build) = procedure else {
            continue;
        };
        for (i, name) in REACTIONS.iter().enumerate() {
            let ms = samples
                .iter()
                .filter_map(|s| s.reactions[i])
                .map(|d| d.as_secs_f64() * 1000.0);
            if let Some(v) = summarize(ms) {
                println!(
                    "| {name} | {cutover:?}{build} | {:.0} | {:.0} | {:.0} | {} |",
                    v.median, v.p99, v.max, v.n
                );
            }
        }
    }
}

/// The conditions whose reaction latency is measured, and the answer to each.
/// The second is ZeroDowntime's alone: in Kong's order that step ends on
/// another condition.
const REACTIONS: [&str; 3] = [
    "SidecarMigration created → finalizer added",
    "controller Available, a new gateway pod Ready → next step",
    "no legacy pod left, rolled out → rollout strategy restored",
];

/// Reaction latency: from the moment the bench's watches see one of
/// [`REACTIONS`]' conditions hold to the moment they see the operator's
/// answer. If the answer comes before or with the condition (the operator
/// read it before the bench's watch brought it), the sample is 0.
async fn reactions(mut seen: Observer, cutover: Cutover, ns: String) -> [Option<Duration>; 3] {
    struct Probe {
        since: Option<Instant>,
        sample: Option<Duration>,
    }
    let mut probes = [(); 3].map(|_| Probe {
        since: None,
        sample: None,
    });
    // After the end, the bench's own watches may still owe the last
    // condition (the Deployment's rollout) for a moment.
    let mut over = false;
    loop {
        let wait = if over { 5 } else { 120 };
        if seen.changed(Duration::from_secs(wait)).await.is_err() {
            break;
        }
        let Some(scm) = seen.migration() else {
            continue;
        };
        let status = scm.status.clone().unwrap_or_default();
        let phase = status.phase;
        let controller_available = seen
            .deployment(
                &crate::plan::with_controller_release(&scm, None)
                    .spec
                    .controller_name(),
            )
            .is_some_and(|d| crate::plan::deployment_available(&d));
        let gateway_ready = seen
            .gateway_pods()
            .iter()
            .any(|p| crate::plan::pod_ready(p));
        let rolled_out = seen.legacy_pods().is_empty()
            && seen
                .deployment(&scm.spec.proxy_deployment)
                .is_some_and(|d| crate::plan::rollout_complete(&d));
        let conditions = [
            (true, !scm.finalizers().is_empty()),
            (
                cutover == Cutover::ZeroDowntime && controller_available && gateway_ready,
                matches!(
                    phase,
                    Phase::AwaitingApproval | Phase::DeletingLegacyPods | Phase::Succeeded
                ),
            ),
            (
                rolled_out && matches!(phase, Phase::DeletingLegacyPods | Phase::Succeeded),
                phase == Phase::Succeeded
                    || status
                        .message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("no legacy pod left")),
            ),
        ];
        for (i, (probe, (holds, answered))) in probes.iter_mut().zip(conditions).enumerate() {
            if probe.sample.is_some() {
                continue;
            }
            if holds && probe.since.is_none() {
                probe.since = Some(Instant::now());
                if answered {
                    probe.sample = Some(Duration::ZERO);
                    continue;
                }
            }
            if answered && let Some(since) = probe.since {
                let sample = since.elapsed();
                // With the operator's own log, where a slow answer's time went.
                tracing::debug!(%ns, reaction = REACTIONS[i], ms = sample.as_millis() as u64, "answered");
                probe.sample = Some(sample);
            }
        }
        over = phase.is_at_rest();
        let measured = probes
            .iter()
            .enumerate()
            .all(|(i, p)| p.sample.is_some() || (i == 1 && cutover != Cutover::ZeroDowntime));
        if over && measured {
            break;
        }
    }
    probes.map(|p| p.sample)
}

struct Usage {
    peak_rss_kib: u64,
    rss_kib: u64,
    cpu_seconds: f64,
}

struct Scale {
    migrations: usize,
    /// The build's row suffix.
    suffix: &'static str,
    elapsed: Duration,
    usage: Usage,
    requests: f64,
    /// The operator's own count of reconciles, and of failed ones.
    reconciles: f64,
    errors: f64,
    watches: f64,
}

/// The operator binary (`run`, every namespace), as its ServiceAccount.
struct OperatorProcess {
    child: tokio::process::Child,
    pid: u32,
    http: std::net::SocketAddr,
    /// Watches kube-apiserver held before the process started.
    watches_before: f64,
    _kubeconfig: tempfile::NamedTempFile,
}

impl OperatorProcess {
    /// Starts a build of the operator and returns once it is settled:
    /// /readyz answers, its SidecarMigration watch is open and it has made no
    /// request for QUIET (it reconciles every migration it finds once at
    /// start-up).
    async fn start_binary(
        cp: &ControlPlane,
        client: &Client,
        exe: &std::path::Path,
        log: &str,
    ) -> anyhow::Result<OperatorProcess> {
        let watches_before = apiserver::watches(client).await?;
        let operator = Self::spawn(cp, watches_before, exe, log).await?;
        operator.wait_ready(Duration::from_secs(300)).await?;
        operator.settled(client).await?;
        Ok(operator)
    }

    /// Returns once the operator's watches are open and it has made no
    /// request for QUIET.
    async fn settled(&self, client: &Client) -> anyhow::Result<()> {
        const QUIET: Duration = Duration::from_secs(2);
        let mut last = (apiserver::operator_requests(client).await?, Instant::now());
        testenv::wait_for(
            Duration::from_secs(300),
            "the operator to settle",
            async || {
                let requests = apiserver::operator_requests(client).await?;
                if requests != last.0 {
                    last = (requests, Instant::now());
                }
                let watching =
                    apiserver::watches(client).await? - self.watches_before >= OPERATOR_WATCHES;
                Ok((watching && last.1.elapsed() >= QUIET).then_some(()))
            },
        )
        .await
    }

    async fn spawn(
        cp: &ControlPlane,
        watches_before: f64,
        exe: &std::path::Path,
        log: &str,
    ) -> anyhow::Result<OperatorProcess> {
        let kubeconfig = tempfile::NamedTempFile::new()?;
        apiserver::write_operator_kubeconfig(cp, kubeconfig.path())?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = tokio::process::Command::new(exe)
            .args(["run", "--http-addr", &http.to_string()])
            .env("KUBECONFIG", kubeconfig.path())
            .env("RUST_LOG", log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("the operator process has a pid")?;
        Ok(OperatorProcess {
            child,
            pid,
            http,
            watches_before,
            _kubeconfig: kubeconfig,
        })
    }

    /// Waits until /readyz answers 200: its caches have synced.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("http://{}/readyz to answer 200", self.http);
        // The probe endpoint has no watch to wait on; poll it.
        testenv::wait_for(timeout, &what, async || {
            Ok((http_status(&self.http, "/readyz").await == Some(200)).then_some(()))
        })
        .await
    }

    /// The sum of one of the operator's own counters, from its /metrics.
    async fn counter(&self, name: &str) -> f64 {
        let text = http_get(&self.http, "/metrics").await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    }

    fn usage(&self) -> anyhow::Result<Usage> {
        process_usage(self.pid)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The status code of a plain HTTP/1.1 GET, or None if it failed.
async fn http_status(addr: &std::net::SocketAddr, path: &str) -> Option<u16> {
    let response = http_get(addr, path).await?;
    response.get(9..12)?.parse().ok()
}

/// The whole response (head and body) to a plain HTTP/1.1 GET.
async fn http_get(addr: &std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// `n` namespaces with the fixture, then `n` SidecarMigrations at once,
/// handled by the operator process.
async fn at_scale(
    cp: &ControlPlane,
    client: &Client,
    fixture: &str,
    n: usize,
    build: &Build,
) -> anyhow::Result<Scale> {
    use futures::{StreamExt, TryStreamExt};
    let prefix = if build.suffix.is_empty() {
        "scale-"
    } else {
        "scale-base-"
    };
    let namespaces: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    futures::stream::iter(namespaces.clone())
        .map(|ns| async move {
            testenv::install_fixture(client, &ns, fixture, Duration::from_secs(600)).await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;

    let operator = build.start(cp, client).await?;
    let watches_before = operator.watches_before;
    let requests_before = apiserver::operator_requests(client).await?;

    let scm: SidecarMigration = serde_saphyr::from_str(crate::demo::EXAMPLE)?;
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
    // Other clients reopen watches now and then; the median of the samples
    // is the operator's.
    let mut watches = Vec::new();
    loop {
        let list = all.list(&Default::default()).await?;
        let succeeded = list
            .items
            .iter()
            .filter(|m| namespaces.contains(&m.namespace().unwrap_or_default()))
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Succeeded)
            })
            .count();
        watches.push(apiserver::watches(client).await? - watches_before);
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
    let usage = operator.usage()?;
    let requests = apiserver::operator_requests(client).await? - requests_before;
    let reconciles = operator.counter("sidecar_migrator_reconciles_total").await;
    let errors = operator
        .counter("sidecar_migrator_reconcile_errors_total")
        .await;
    operator.stop().await;
    Ok(Scale {
        migrations: n,
        suffix: build.suffix,
        elapsed,
        usage,
        requests,
        reconciles,
        errors,
        watches: summarize(watches.into_iter()).map_or(0.0, |w| w.median),
    })
}

struct IdleSample {
    pods: usize,
    /// The build's row suffix.
    suffix: &'static str,
    rss_kib: u64,
    peak_rss_kib: u64,
    cpu_seconds: f64,
    requests: f64,
}

/// The operator process with nothing to do: once as the cluster is, then
/// after unrelated pods (100 per namespace) have been created and run, up to
/// each number of `pods`; each build at each size.
async fn idle(
    cp: &ControlPlane,
    client: &Client,
    pods: &[usize],
    builds: &[Build],
) -> anyhow::Result<Vec<IdleSample>> {
    let mut samples = Vec::new();
    let mut created = 0;
    for n in std::iter::once(0).chain(pods.iter().copied()) {
        create_unrelated_pods(client, created, n).await?;
        created = created.max(n);
        for build in builds {
            samples.push(idle_sample(cp, client, created, build).await?);
        }
    }
    Ok(samples)
}

/// The watches an idle operator holds: SidecarMigrations. Those of what a
/// migration reads open with an unfinished migration (src/reconcile/cache.rs).
const OPERATOR_WATCHES: f64 = 1.0;

/// How long the idle operator is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

async fn idle_sample(
    cp: &ControlPlane,
    client: &Client,
    pods: usize,
    build: &Build,
) -> anyhow::Result<IdleSample> {
    let operator = build.start(cp, client).await?;
    let start = operator.usage()?;
    let requests_before = apiserver::operator_requests(client).await?;
    // Measuring over a window is the point here, not a wait for a state.
    tokio::time::sleep(IDLE_WINDOW).await;
    let end = operator.usage()?;
    let requests = apiserver::operator_requests(client).await? - requests_before;
    operator.stop().await;
    Ok(IdleSample {
        pods,
        suffix: build.suffix,
        rss_kib: end.rss_kib,
        peak_rss_kib: end.peak_rss_kib,
        cpu_seconds: end.cpu_seconds - start.cpu_seconds,
        requests,
    })
}

/// `n` pods of an ordinary web app, 100 to a namespace, Running and Ready
/// on the simulated node.
async fn create_unrelated_pods(client: &Client, from: usize, n: usize) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Pod;
    const PER_NAMESPACE: usize = 100;
    if n <= from {
        return Ok(());
    }
    let namespaces = n.div_ceil(PER_NAMESPACE);
    for i in from.div_ceil(PER_NAMESPACE)..namespaces {
        let ns: Namespace = serde_json::from_value(
            serde_json::json!({ "metadata": { "name": format!("idle-{i}") } }),
        )?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
    }
    futures::stream::iter(from..n)
        .map(|i| async move {
            let ns = format!("idle-{}", i / PER_NAMESPACE);
            let pod: Pod = serde_json::from_value(unrelated_pod(i))?;
            Api::<Pod>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &pod)
                .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    // Wait until the simulator has them all Ready, from a watch: listing
    // 50,000 pods again and again would load the API server the pods wait on.
    use kube::runtime::watcher;
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().labels("bench=unrelated");
    let mut ready = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(pods, config));
    let deadline = Duration::from_secs(1800);
    let counted = tokio::time::timeout(deadline, async {
        while let Some(event) = events.try_next().await? {
            let mut count = |pod: &Pod| {
                let key = (pod.namespace(), pod.name_any());
                match crate::plan::pod_ready(pod) {
                    true => ready.insert(key),
                    false => ready.remove(&key),
                };
            };
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => count(&p),
                watcher::Event::Delete(p) => {
                    ready.remove(&(p.namespace(), p.name_any()));
                }
                watcher::Event::Init => ready.clear(),
                watcher::Event::InitDone => {}
            }
            if ready.len() >= n {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the watch of unrelated pods ended")
    })
    .await;
    let ready = ready.len();
    counted.map_err(|_| anyhow::anyhow!("{ready}/{n} unrelated pods Ready after {deadline:?}"))?
}

fn unrelated_pod(i: usize) -> serde_json::Value {
    let app = format!("web-{}", i % 50);
    serde_json::json!({
        "metadata": {
            "name": format!("{app}-{i}"),
            "labels": { "app": app, "bench": "unrelated", "pod-template-hash": "5d8f7c9b6d" },
            "annotations": { "kubectl.kubernetes.io/default-container": "web" },
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "env": [
                    { "name": "APP_ENV", "value": "production" },
                    { "name": "LOG_LEVEL", "value": "info" },
                ],
                "resources": {
                    "requests": { "cpu": "100m", "memory": "128Mi" },
                    "limits": { "memory": "256Mi" },
                },
                "readinessProbe": { "httpGet": { "path": "/healthz", "port": 8080 } },
                "securityContext": { "runAsNonRoot": true, "allowPrivilegeEscalation": false },
            }],
        },
    })
}

/// Peak and current resident memory (KiB) and CPU seconds (user + system) of
/// a process.
fn process_usage(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{key} in /proc/<pid>/status"))
    };
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
    Ok(Usage {
        peak_rss_kib: kib("VmHWM:")?,
        rss_kib: kib("VmRSS:")?,
        cpu_seconds: (ticks(11) + ticks(12)) / hz,
    })
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Summary {
    median: f64,
    /// Nearest rank: with fewer than 100 values, the maximum.
    p99: f64,
    max: f64,
    n: usize,
}

fn summarize(values: impl Iterator<Item = f64>) -> Option<Summary> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(Summary {
        median: *v.get(v.len() / 2)?,
        p99: *v.get(rank(0.99))?,
        max: *v.last()?,
        n: v.len(),
    })
}
