//! The executor: reads what `plan` needs, writes the status it decides (before
//! any action that depends on it), publishes its events and carries out its
//! actions. Every decision lives in `plan.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::core::Selector;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::*;
use crate::kong;
use crate::metrics::Metrics;
use crate::plan::{self, Action, Observed, Plan};

mod access_review;
mod cache;
mod client_cert;

pub use cache::{Cache, CacheError, Change, Interest, View};

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// One of the plan's actions failed; the event names which.
    #[error("{action}: {source}")]
    Action {
        action: String,
        /// The phase the plan was in.
        phase: Phase,
        source: kube::Error,
    },
    #[error("SidecarMigration has no namespace")]
    NoNamespace,
    #[error(transparent)]
    Cache(#[from] CacheError),
}

pub struct Context {
    pub client: Client,
    /// Each migration's Event recorder. kube's Recorder keeps every Event it
    /// wrote for six minutes, to count a repeat into that Event's series;
    /// one a migration, dropped once it is finished, lets those go (at 200
    /// migrations at once, a shared one held a quarter of the heap).
    recorders: Mutex<HashMap<String, Recorder>>,
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub slots: Slots,
    pub policy: plan::Policy,
    /// Failed reconciles in a row, by migration, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// What the reconciler reads.
    pub cache: Cache,
    /// The resourceVersion of the operator's last write of each migration
    /// (a copy older than that is stale), and when it was made.
    written: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// When each migration's report, unwritten, was first put off.
    put_off: Mutex<HashMap<String, std::time::Instant>>,
}

/// `--max-concurrent-migrations`: the migrations in flight are the started,
/// unfinished ones the watches show, and those admitted since but whose
/// status has not come back through a watch yet.
#[derive(Default)]
pub struct Slots {
    pub limit: Option<usize>,
    admitted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    stores: std::sync::Mutex<Vec<Store<SidecarMigration>>>,
}

impl Slots {
    pub fn new(limit: Option<usize>) -> Self {
        Slots {
            limit,
            ..Default::default()
        }
    }

    fn check(&self, scm: &SidecarMigration) -> plan::Slot {
        let Some(limit) = self.limit else {
            return plan::Slot::Free;
        };
        let me = key(scm);
        let (Ok(mut admitted), Ok(stores)) = (self.admitted.lock(), self.stores.lock()) else {
            return plan::Slot::Taken { limit };
        };
        if !in_flight(scm) && (finished(scm) || scm.metadata.deletion_timestamp.is_some()) {
            admitted.remove(&me);
            return plan::Slot::Free;
        }
        let mut busy: std::collections::BTreeSet<String> = stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|m| in_flight(m))
            .map(|m| key(&m))
            .collect();
        busy.extend(admitted.iter().cloned());
        if busy.contains(&me) || busy.len() < limit {
            admitted.insert(me);
            plan::Slot::Free
        } else {
            plan::Slot::Taken { limit }
        }
    }
}

fn key(scm: &SidecarMigration) -> String {
    format!("{}/{}", scm.namespace().unwrap_or_default(), scm.name_any())
}

fn finished(scm: &SidecarMigration) -> bool {
    scm.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::RolledBack))
}

/// Whether a change to a Deployment, Pod, Service or EndpointSlice can move
/// this migration. A finished one has nothing left to wait for: only a change
/// to the SidecarMigration itself (deletion, a new spec) can, and that comes
/// through its own watch. A Failed one is woken: fixing its input resumes it.
fn woken_by_cluster(scm: &SidecarMigration) -> bool {
    !finished(scm)
}

/// Whether a change to its proxy or controller Deployment wakes it: also a
/// Succeeded migration whose hand-off is unfinished, since `helm install` of
/// the controller release changes the controller Deployment (its
/// ServiceAccount), which the hand-off reports. Its Pods, Services and
/// EndpointSlices still wake it not: those churn, and the hand-off reads
/// none of them. RBAC changes no watch sees: `plan::HANDOFF_RECHECK` bounds
/// those, and stops with the hand-off.
fn woken_by_deployment(scm: &SidecarMigration) -> bool {
    woken_by_cluster(scm) || plan::handoff_pending(scm)
}

/// What the cache keeps of a finished migration: what decides whether
/// anything wakes it (its phase, observed generation and hand-off states,
/// the controller release its Deployment names follow) and what metrics
/// show. Its rollback record, plan, steps, conditions, warnings and the
/// hand-off's values and commands are most of its size, and a cluster
/// keeps finished migrations for as long as their hand-off waits or nobody
/// deletes them. A finished migration with work left (a hand-off to check,
/// a rollback asked for, a deletion) is read in full before it is planned
/// (`reconcile_once`).
fn keep_finished(scm: &mut SidecarMigration) {
    if !finished(scm) {
        return;
    }
    if let Some(status) = scm.status.as_mut() {
        status.original = None;
        status.plan = Vec::new();
        status.steps = Vec::new();
        status.conditions = Vec::new();
        status.warnings = Vec::new();
        status.legacy_pods = Vec::new();
        if let Some(handoff) = status.handoff.as_mut() {
            handoff.notes = Vec::new();
            for r in &mut handoff.releases {
                r.values = String::new();
                r.command = String::new();
                r.before = Vec::new();
                r.after = Vec::new();
                r.message = None;
            }
        }
    }
}

fn in_flight(scm: &SidecarMigration) -> bool {
    scm.status.as_ref().is_some_and(|s| s.original.is_some()) && !finished(scm)
}

/// The operator's client. kube's built-in retry of 429/503/504 is off: it
/// would wait out a PodDisruptionBudget's refusal inside the eviction call,
/// hiding it from status and events and blocking the reconcile; the
/// controller's error policy is the one place that retries.
pub fn client(mut config: kube::Config) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Client::try_from(config)
}

impl Context {
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        slots: Slots,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGED_BY.into(),
            instance,
        };
        Context {
            recorders: Mutex::default(),
            reporter,
            cache: Cache::new(client.clone()),
            written: Mutex::default(),
            put_off: Mutex::default(),
            client,
            metrics,
            slots,
            policy: plan::Policy::default(),
            failures: Mutex::default(),
        }
    }

    pub fn with_policy(mut self, policy: plan::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The client the cache's watches use (by default the reconciler's).
    pub fn with_watch_client(mut self, client: Client) -> Self {
        self.cache = Cache::new(client);
        self
    }
}

impl Error {
    /// A short CamelCase label for metrics.
    pub fn reason(&self) -> String {
        match self.kube() {
            Some(kube::Error::Api(e)) if !e.reason.is_empty() => e.reason.clone(),
            Some(kube::Error::Api(e)) => format!("Http{}", e.code),
            Some(_) => "Transport".into(),
            None if matches!(self, Error::NoNamespace) => "NoNamespace".into(),
            None => "CacheTimeout".into(),
        }
    }

    fn kube(&self) -> Option<&kube::Error> {
        match self {
            Error::Kube(e)
            | Error::Action { source: e, .. }
            | Error::Cache(CacheError::Watch { source: e, .. }) => Some(e),
            Error::NoNamespace | Error::Cache(CacheError::Timeout(_)) => None,
        }
    }

    /// A refusal that retrying cannot fix (invalid, forbidden, ...), as the
    /// note of an `ApiRefused` event; not a conflict, a missing object or a
    /// PodDisruptionBudget's 429, which a retry resolves.
    fn refusal(&self) -> Option<String> {
        let what = match self {
            Error::Action { action, .. } => action.as_str(),
            _ => "a request",
        };
        match self.kube() {
            Some(kube::Error::Api(e))
                if (400..500).contains(&e.code) && ![404, 409, 429].contains(&e.code) =>
            {
                Some(format!(
                    "the API server refused {what}: {} ({}); retrying",
                    e.message, e.reason
                ))
            }
            _ => None,
        }
    }
}

/// Reconciles running at once (each migration has at most one). Unbounded,
/// a restart over hundreds of migrations reads them all at once, and the
/// memory that peak takes stays with the process.
const RECONCILE_CONCURRENCY: u16 = 8;

/// SidecarMigrations listed a page at a time, at start-up and on a relist.
/// Each carries its rollback record (10-20 KB of JSON); kube's default page
/// of 500 held about 10 MB of response and its decoded objects at once, and
/// the process kept that peak. Paging needs the list's default semantic
/// (resourceVersion unset): the API server ignores a limit on "any" (`0`).
const MIGRATIONS_PAGE: u32 = 50;

/// How often the readiness probe's watcher asks whether the cache has synced.
const SYNC_POLL: Duration = Duration::from_millis(200);

/// Runs the controller until the process is told to stop, over every
/// namespace or, with `namespace`, over that one alone.
/// `synced` is called once the SidecarMigration cache has listed them all
/// (the watches of what migrations read open with the first migration that
/// needs them: see [`cache`]).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    synced: impl FnOnce() + Send + 'static,
) {
    let client = ctx.client.clone();
    let metrics = ctx.metrics.clone();
    let migrations: Api<SidecarMigration> = scoped(&client, &namespace);
    // The cache keeps every migration of the cluster, finished ones too:
    // nothing reads a SidecarMigration's managedFields (with a status
    // written by server-side apply, its largest part), and a finished one
    // keeps only what wakes it (see `keep_finished`).
    let (store, writer) = reflector::store();
    let migrations = watcher(
        migrations,
        watcher::Config::default().page_size(MIGRATIONS_PAGE),
    )
    .modify(|scm: &mut SidecarMigration| {
        scm.managed_fields_mut().clear();
        keep_finished(scm);
    })
    .default_backoff();
    let controller = Controller::for_stream(
        reflector::reflector(writer, migrations).applied_objects(),
        store.clone(),
    )
    .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY));
    if let Ok(mut stores) = ctx.slots.stores.lock() {
        stores.push(store.clone());
    }
    {
        let store = store.clone();
        tokio::spawn(async move {
            // The store's readiness signal wakes only its last waiter, and
            // the Controller waits on it too: ask again until it answers.
            loop {
                match tokio::time::timeout(SYNC_POLL, store.wait_until_ready()).await {
                    Ok(Ok(())) => return synced(),
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
        });
    }
    ctx.cache.cover(namespace.clone());
    let (wake, woken) = futures::channel::mpsc::unbounded();
    {
        let store = store.clone();
        ctx.cache.on_change(namespace.clone(), move |change| {
            for m in woken_by(&store, &change) {
                let _ = wake.unbounded_send(m);
            }
        });
    }
    // The watches close once no migration needs them; also when this
    // controller stops (a lost Lease).
    let _release = Release(ctx.clone());
    controller
        .reconcile_on(woken)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            let metrics = metrics.clone();
            async move {
                match res {
                    // Deleted without passing through our finalizer (removed
                    // by hand, or never added): forget its phase all the same.
                    Err(controller::Error::ObjectNotFound(gone)) => metrics.set_phase(
                        &format!("{}/{}", gone.namespace.unwrap_or_default(), gone.name),
                        None,
                    ),
                    Err(e) => warn!(error = %e, "reconcile failed"),
                    Ok(_) => {}
                }
            }
        })
        .await;
}

struct Release(Arc<Context>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.cache.keep(Default::default());
    }
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The migrations a change the cache saw can move.
fn woken_by(store: &Store<SidecarMigration>, change: &Change) -> Vec<ObjectRef<SidecarMigration>> {
    let ns = Some(change.namespace.clone());
    let name = change.name.as_str();
    match change.kind {
        // A watch (re)listed: whatever changed meanwhile is not known.
        _ if name.is_empty() => matching(store, ns, woken_by_deployment),
        "Deployment" => matching(store, ns, move |m| {
            woken_by_deployment(m)
                && (m.spec.proxy_deployment == name
                    || plan::with_controller_release(m, None)
                        .spec
                        .controller_name()
                        == name)
        }),
        "Service" => in_namespace(store, ns, move |m| {
            m.spec.admin_service_name() == name || plan::webhook_service_name(&m.spec) == name
        }),
        "EndpointSlice" => {
            let service = change
                .labels
                .get(kong::SERVICE_NAME_LABEL)
                .cloned()
                .unwrap_or_default();
            in_namespace(store, ns, move |m| {
                m.spec.admin_service_name() == service
                    || plan::webhook_service_name(&m.spec) == service
            })
        }
        "Role" | "RoleBinding" => in_namespace(store, ns, move |m| {
            rbac_name(&plan::with_controller_release(m, None).spec) == name
        }),
        _ => in_namespace(store, ns, |_| true),
    }
}

/// A finished migration whose status answers its spec, not being deleted,
/// with no hand-off to follow: no change in the cluster can move it, and
/// planning it would change nothing.
fn at_rest(scm: &SidecarMigration) -> bool {
    finished(scm)
        && scm.metadata.deletion_timestamp.is_none()
        && !plan::handoff_pending(scm)
        && scm.status.as_ref().and_then(|s| s.observed_generation) == scm.metadata.generation
}

/// Whether the watches must stay open for this migration's namespace: the
/// changes that can move it come through them.
fn needs_watches(scm: &SidecarMigration) -> bool {
    woken_by_cluster(scm) || scm.metadata.deletion_timestamp.is_some()
}

/// The namespaces whose objects the watches keep, for these migrations.
fn interest<'a>(migrations: impl Iterator<Item = &'a SidecarMigration>) -> Interest {
    let mut interest = Interest::default();
    for m in migrations {
        let Some(ns) = m.namespace() else { continue };
        if needs_watches(m) {
            interest.all.insert(ns);
        } else if plan::handoff_pending(m) {
            interest.deployments.insert(ns);
        }
    }
    interest
}

impl Context {
    /// Tells the cache which namespaces still need its watches.
    fn refresh_interest(&self) {
        let Ok(stores) = self.slots.stores.lock() else {
            return;
        };
        let migrations: Vec<_> = stores.iter().flat_map(|s| s.state()).collect();
        self.cache
            .keep(interest(migrations.iter().map(|m| m.as_ref())));
    }

    /// The other migrations of a namespace, as the SidecarMigration caches
    /// show them.
    fn migrations_in(&self, ns: &str) -> Vec<SidecarMigration> {
        let Ok(stores) = self.slots.stores.lock() else {
            return Vec::new();
        };
        stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|m| m.namespace().as_deref() == Some(ns))
            .map(|m| m.as_ref().clone())
            .collect()
    }

    /// Records the operator's write of a migration.
    fn wrote_migration(&self, scm: &SidecarMigration) {
        if let (Ok(mut w), Some(rv)) = (self.written.lock(), scm.resource_version()) {
            w.insert(key(scm), (rv, std::time::Instant::now()));
        }
    }

    /// How long this plan's status write may wait (None: write it now):
    /// see [`plan::status_wait`]. A report is put off from the first
    /// reconcile that meets it until it is written or no longer differs.
    fn status_can_wait(&self, scm: &SidecarMigration, plan: &Plan) -> Option<Duration> {
        let old = scm.status.as_ref()?;
        let key = key(scm);
        let since_write = self
            .written
            .lock()
            .ok()
            .and_then(|w| w.get(&key).map(|(_, at)| at.elapsed()));
        let mut put_off = self.put_off.lock().ok()?;
        if *old == plan.status {
            put_off.remove(&key);
            return None;
        }
        let first = *put_off
            .entry(key.clone())
            .or_insert_with(std::time::Instant::now);
        let wait = plan::status_wait(old, plan, first.elapsed(), since_write);
        if wait.is_none() {
            put_off.remove(&key);
        }
        wait
    }

    /// How many migrations hold an Event recorder now.
    pub fn event_recorders(&self) -> usize {
        self.recorders.lock().map_or(0, |r| r.len())
    }

    fn forget_events(&self, scm: &SidecarMigration) {
        if let Ok(mut r) = self.recorders.lock() {
            r.remove(&key(scm));
        }
    }

    /// Whether this copy predates the operator's own last write of it.
    fn stale(&self, scm: &SidecarMigration) -> bool {
        let Ok(w) = self.written.lock() else {
            return false;
        };
        w.get(&key(scm)).is_some_and(|(rv, _)| {
            cache::version(scm.resource_version().as_deref()) < cache::version(Some(rv))
        })
    }
}

/// The migrations in `ns` that a change to one of its objects should wake.
fn in_namespace(
    store: &Store<SidecarMigration>,
    ns: Option<String>,
    keep: impl Fn(&SidecarMigration) -> bool,
) -> Vec<ObjectRef<SidecarMigration>> {
    matching(store, ns, move |m| woken_by_cluster(m) && keep(m))
}

fn matching(
    store: &Store<SidecarMigration>,
    ns: Option<String>,
    keep: impl Fn(&SidecarMigration) -> bool,
) -> Vec<ObjectRef<SidecarMigration>> {
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == ns && keep(m))
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

fn error_policy(scm: Arc<SidecarMigration>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failed(&error.reason());
    let failures = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(key(&scm)).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 1,
    };
    let delay = retry_delay(failures);
    warn!(%error, failures, retry_in = ?delay, "will retry");
    Requeue::requeue(delay)
}

/// Exponential backoff for failed reconciles: quick after a transient fault,
/// never a hot loop while one persists.
pub fn retry_delay(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(60);
    FIRST
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX)
}

#[tracing::instrument(skip_all, fields(migration = %format!("{}/{}", scm.namespace().unwrap_or_default(), scm.name_any())))]
pub async fn reconcile(scm: Arc<SidecarMigration>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if finished(&scm) {
        // What a finished migration still tells (a hand-off step done, a
        // refusal) is said once, not repeated into a series.
        ctx.forget_events(&scm);
    }
    let result = reconcile_once(&scm, &ctx).await;
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&key(&scm));
    }
    // Every refusal passes here, whichever request of the reconcile met it,
    // so each one is visible on the migration, not only in the logs.
    if let Err(e) = &result
        && let Some(note) = e.refusal()
    {
        let phase = match e {
            Error::Action { phase, .. } => *phase,
            _ => scm.status.as_ref().map(|s| s.phase).unwrap_or_default(),
        };
        publish(&ctx, &scm, phase.as_str(), true, "ApiRefused", note).await;
    }
    result
}

async fn reconcile_once(scm: &SidecarMigration, ctx: &Context) -> Result<Requeue, Error> {
    let ns = scm.namespace().ok_or(Error::NoNamespace)?;
    ctx.metrics.reconciled();
    // The trigger's copy can predate this operator's own last write of it
    // (its watch event not in yet): planning from it would repeat that
    // transition and its Event. The event is on its way and wakes it again.
    if ctx.stale(scm) {
        debug!("the migration's copy predates our last write of it: waiting for the watch");
        return Ok(Requeue::requeue(STALE_RECHECK));
    }
    let migrations: Api<SidecarMigration> = Api::namespaced(ctx.client.clone(), &ns);
    if scm.metadata.deletion_timestamp.is_none() && !scm.finalizers().iter().any(|f| f == FINALIZER)
    {
        // The finalizer makes deleting an unfinished migration roll it back.
        let mut finalizers = scm.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        let written = set_finalizers(&migrations, scm, finalizers).await?;
        ctx.wrote_migration(&written);
        return Ok(Requeue::await_change());
    }
    if at_rest(scm) {
        // Nothing to observe: opening the watches for it would cost a list
        // of each kind, for every finished migration, at every start-up.
        // Its slot, if it held one, is free; its namespace's watches close
        // unless another migration there needs them.
        ctx.slots.check(scm);
        ctx.refresh_interest();
        if let Some(status) = &scm.status {
            ctx.metrics.set_phase(&key(scm), Some(status.phase));
        }
        return Ok(Requeue::await_change());
    }
    // The cache keeps a finished migration in part (`keep_finished`): plan
    // from all of it, its rollback record included, or the status written
    // back would lose what the cache left out.
    let full;
    let scm = if finished(scm) {
        let name = scm.name_any();
        full = read(|| migrations.get(&name)).await?;
        &full
    } else {
        scm
    };
    let view = ctx.cache.view(&ns).await?;
    let mut observed = observe(scm, &view, ctx).await?;
    // The names the executor derives follow the release the plan uses.
    let scm = plan::with_controller_release(scm, observed.proxy.as_ref()).into_owned();
    if let Some(check) = plan::access_check(&scm, &observed) {
        observed.handoff_access = Some(access_review::run(&ctx.client, &check).await?);
    }
    observed.slot = ctx.slots.check(&scm);
    observed.policy = ctx.policy.clone();
    let mut plan = plan::plan(&scm, &observed, Timestamp::now());
    if let plan::Slot::Taken { .. } = observed.slot {
        // The slot frees when a migration elsewhere ends: nothing this
        // migration's namespace shows.
        plan.requeue_after = Some(
            plan.requeue_after
                .map_or(SLOT_RECHECK, |r| r.min(SLOT_RECHECK)),
        );
    }
    let result = execute(&scm, ctx, &view, &ns, plan).await;
    // Before the view lets go of the namespace: its watches stay open
    // if a migration there still needs them.
    ctx.refresh_interest();
    result
}

/// How often a migration waiting for a slot looks again (from the cache: no
/// request).
const SLOT_RECHECK: Duration = Duration::from_secs(2);

/// How soon a reconcile that met a stale copy looks again, should the watch
/// event it waits for not wake it first.
const STALE_RECHECK: Duration = Duration::from_secs(1);

/// The objects a plan is made from, as the cache shows them.
async fn observe(scm: &SidecarMigration, view: &View, ctx: &Context) -> Result<Observed, Error> {
    let proxy = view.deployment(&scm.spec.proxy_deployment);
    let effective = plan::with_controller_release(scm, proxy.as_ref());
    let spec = &effective.spec;
    let selector = proxy
        .as_ref()
        .map(plan::selector_labels)
        .unwrap_or_default();
    let selects = |labels: &std::collections::BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    // An empty selector would select every pod in the namespace.
    let pods = match selector.is_empty() {
        true => Vec::new(),
        false => view
            .pods()
            .into_iter()
            .filter(|p| selects(p.labels()))
            .collect(),
    };
    // ReplicaSets are read only where Kong's order orphans the legacy ones:
    // one list there costs less than a watch on every migration.
    let replica_sets = if !selector.is_empty() && plan::reads_replica_sets(scm) {
        let uid = proxy.as_ref().and_then(|p| p.uid());
        let selector: Selector = selector.clone().into_iter().collect();
        let lp = ListParams::default().labels_from(&selector);
        let api = Api::<ReplicaSet>::namespaced(ctx.client.clone(), view.namespace());
        read(|| api.list(&lp))
            .await?
            .items
            .into_iter()
            .filter(|rs| {
                rs.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .collect()
    } else {
        Vec::new()
    };
    let admin = spec.admin_service_name();
    // Read only while validating: the warning it feeds is written then.
    let validating = matches!(
        scm.status.as_ref().map(|s| s.phase),
        None | Some(Phase::Pending | Phase::Validating | Phase::Failed)
    );
    let sidecar_only_services = match &proxy {
        Some(proxy) if validating => plan::sidecar_only_services(spec, proxy, &view.services()),
        _ => Vec::new(),
    };
    let webhook = plan::webhook_service_name(spec);
    let webhook_service = (webhook.len() <= 63)
        .then(|| view.service(&webhook))
        .flatten();
    let webhook_slices = match webhook_service {
        Some(_) => view.slices_of(&webhook),
        None => Vec::new(),
    };
    let skipped_rbac_reads = !plan::reads_rbac_and_policies(scm);
    let (controller_role, controller_role_binding, network_policies) = if !skipped_rbac_reads {
        let rbac = rbac_name(spec);
        (
            view.role(&rbac),
            view.role_binding(&rbac),
            view.network_policies(),
        )
    } else {
        (None, None, Vec::new())
    };
    let (client_ca, missing_client_secrets) =
        observe_client_tls(scm, &ctx.client, view.namespace(), validating).await?;
    let others = ctx
        .migrations_in(view.namespace())
        .into_iter()
        .filter(|o| o.name_any() != scm.name_any())
        .collect();
    Ok(Observed {
        controller: view.deployment(&spec.controller_name()),
        proxy,
        pods,
        replica_sets,
        admin_service: view.service(&admin),
        admin_slices: view.slices_of(&admin),
        webhook_service,
        webhook_slices,
        sidecar_only_services,
        controller_role,
        controller_role_binding,
        network_policies,
        skipped_rbac_reads,
        client_ca,
        missing_client_secrets,
        others,
        ..Default::default()
    })
}

/// `clientTLS`: the CA ConfigMap (Generate), and which of the user's
/// Secrets are missing (Secret, while validating). The operator may not read
/// a Secret, so it asks whether one exists the only way `create` allows: a
/// dry-run create of an empty Secret of that name answers 409 AlreadyExists
/// when it exists and stores nothing when it does not; no data is sent back
/// but what was sent.
async fn observe_client_tls(
    scm: &SidecarMigration,
    client: &Client,
    ns: &str,
    validating: bool,
) -> Result<(Option<ConfigMap>, Vec<String>), kube::Error> {
    let Some(tls) = scm.spec.client_tls() else {
        return Ok((None, Vec::new()));
    };
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let name = plan::client_ca_config_map_name(&scm.spec);
    let client_ca = read(|| config_maps.get_opt(&name)).await?;
    let mut missing = Vec::new();
    if validating && tls.source == ClientTlsSource::Secret {
        let secrets = Api::<Secret>::namespaced(client.clone(), ns);
        let probe = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        for name in plan::user_secrets(&scm.spec) {
            let empty = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match secrets.create(&probe, &empty).await {
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Ok(_) => missing.push(name),
                Err(e) => return Err(e),
            }
        }
    }
    Ok((client_ca, missing))
}

/// A read, asked once more at once if the answer was a transient failure.
/// Reads change nothing, so repeating one is safe, and a reconcile makes a
/// dozen of them: without this, one lost answer in ten (tests/faults.rs)
/// fails most reconciles, and the backoff, not the cluster, sets the pace.
async fn read<T, F, Fut>(f: F) -> Result<T, kube::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    match f().await {
        Err(kube::Error::Api(e)) if !(e.code >= 500 || e.code == 429 || e.code == 409) => {
            Err(kube::Error::Api(e))
        }
        Err(_) => f().await,
        ok => ok,
    }
}

fn rbac_name(spec: &SidecarMigrationSpec) -> String {
    format!("{}-endpointslices", spec.controller_name())
}

async fn execute(
    scm: &SidecarMigration,
    ctx: &Context,
    view: &View,
    ns: &str,
    plan: Plan,
) -> Result<Requeue, Error> {
    let client = &ctx.client;
    let cache = &ctx.cache;
    let name = scm.name_any();
    if let Some(wait) = ctx.status_can_wait(scm, &plan) {
        return Ok(Requeue::requeue(wait));
    }
    if scm.status.as_ref() != Some(&plan.status) {
        let patch = json!({
            "apiVersion": SidecarMigration::api_version(&()),
            "kind": SidecarMigration::kind(&()),
            "status": plan.status,
        });
        let written = Api::<SidecarMigration>::namespaced(client.clone(), ns)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        ctx.wrote_migration(&written);
        let key = format!("{ns}/{name}");
        ctx.metrics
            .status_written(&key, scm.status.as_ref(), &plan.status);
    }
    for ev in &plan.events {
        info!(reason = %ev.reason, "{}", ev.note);
        let phase = plan.status.phase.as_str();
        publish(ctx, scm, phase, ev.warning, &ev.reason, ev.note.clone()).await;
    }
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // Each write is recorded, so the next reconcile reads the cache only
    // once the cache shows it.
    for action in plan.actions {
        debug!("performing {}", action.describe());
        let result = match &action {
            Action::ReplaceProxy(d) => {
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                deployments
                    .replace(&d.name_any(), &pp, d)
                    .await
                    .map(|d| cache.wrote(&d))
            }
            Action::ApplyAdminService(s) => {
                let live = services
                    .patch(&s.name_any(), &apply, &Patch::Apply(s.as_ref()))
                    .await?;
                cache.wrote(&live);
                // Apply leaves ports another manager owns (an adopted chart
                // Service's plain-HTTP `kong-admin`, which KIC would dial over
                // HTTPS): the port list is replaced whole, as rendered.
                let want = s.spec.as_ref().and_then(|s| s.ports.clone());
                let has = live.spec.as_ref().and_then(|s| s.ports.as_ref());
                let extra = has.is_some_and(|has| {
                    has.iter().any(|p| {
                        !want
                            .iter()
                            .flatten()
                            .any(|w| w.port == p.port && w.name == p.name)
                    })
                });
                if extra {
                    let pp = PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    };
                    services
                        .patch(
                            &s.name_any(),
                            &pp,
                            &Patch::Merge(json!({ "spec": { "ports": want } })),
                        )
                        .await
                        .map(|s| cache.wrote(&s))
                } else {
                    Ok(())
                }
            }
            Action::ApplyNetworkPolicy(n) => Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .patch(&n.name_any(), &apply, &Patch::Apply(n.as_ref()))
                .await
                .map(|n| cache.wrote(&n)),
            Action::DeleteNetworkPolicy(uid) => {
                Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                    .delete(
                        &scm.spec.network_policy_name(),
                        &only(uid, DeleteParams::default()),
                    )
                    .await
                    .map(|r| deleted(cache, r.left()))
            }
            Action::GenerateClientCertificate(ca) => client_cert::run(client, ns, scm, ca).await,
            Action::DeleteClientCa(uid) => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .delete(
                    &plan::client_ca_config_map_name(&scm.spec),
                    &only(uid, DeleteParams::background()),
                )
                .await
                .map(drop),
            Action::ApplyController(objs) => {
                let role = roles
                    .patch(&objs.role.name_any(), &apply, &Patch::Apply(&objs.role))
                    .await?;
                cache.wrote(&role);
                let binding = bindings
                    .patch(
                        &objs.role_binding.name_any(),
                        &apply,
                        &Patch::Apply(&objs.role_binding),
                    )
                    .await?;
                cache.wrote(&binding);
                deployments
                    .patch(
                        &objs.deployment.name_any(),
                        &apply,
                        &Patch::Apply(&objs.deployment),
                    )
                    .await
                    .map(|d| cache.wrote(&d))
            }
            Action::DeleteController {
                deployment,
                role,
                role_binding,
            } => {
                let rbac = rbac_name(&scm.spec);
                if let Some(uid) = deployment {
                    let dp = only(uid, DeleteParams::foreground());
                    ignore_missing(
                        deployments
                            .delete(&scm.spec.controller_name(), &dp)
                            .await
                            .map(|r| deleted(cache, r.left())),
                    )?;
                }
                if let Some(uid) = role_binding {
                    let dp = only(uid, DeleteParams::default());
                    ignore_missing(
                        bindings
                            .delete(&rbac, &dp)
                            .await
                            .map(|r| deleted(cache, r.left())),
                    )?;
                }
                match role {
                    Some(uid) => roles
                        .delete(&rbac, &only(uid, DeleteParams::default()))
                        .await
                        .map(|r| deleted(cache, r.left())),
                    None => Ok(()),
                }
            }
            Action::RepointWebhook(s) => {
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                services
                    .replace(&s.name_any(), &pp, s)
                    .await
                    .map(|s| cache.wrote(&s))
            }
            Action::DeleteAdminService => services
                .delete(&scm.spec.admin_service_name(), &DeleteParams::default())
                .await
                .map(|r| deleted(cache, r.left())),
            Action::OrphanReplicaSet(rs) => {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Orphan),
                    ..Default::default()
                };
                Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .delete(rs, &dp)
                    .await
                    .map(|r| deleted(cache, r.left()))
            }
            Action::EvictPod(pod) => match pods.evict(pod, &EvictParams::default()).await {
                Ok(_) => {
                    if let Some(uid) = view.pod_uid(pod) {
                        cache.evicted(ns, &uid);
                    }
                    ctx.metrics.evicted();
                    publish(
                        ctx,
                        scm,
                        Phase::DeletingLegacyPods.as_str(),
                        false,
                        "LegacyPodEvicted",
                        format!("evicted legacy pod {pod}"),
                    )
                    .await;
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 429 => {
                    let note = format!(
                        "eviction of legacy pod {pod} refused: a PodDisruptionBudget allows no disruption now ({}); retrying",
                        e.message
                    );
                    let phase = Phase::DeletingLegacyPods.as_str();
                    publish(ctx, scm, phase, true, "EvictionBlocked", note).await;
                    return Ok(Requeue::requeue(Duration::from_secs(5)));
                }
                Err(e) => Err(e),
            },
            Action::RemoveFinalizer => {
                let finalizers = scm
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                let removed =
                    set_finalizers(&Api::namespaced(client.clone(), ns), scm, finalizers).await;
                if removed.is_ok() {
                    // Without our finalizer the object goes away, and with it
                    // its place in the per-phase gauge and its recorder.
                    ctx.metrics.set_phase(&key(scm), None);
                    ctx.forget_events(scm);
                }
                removed.map(drop)
            }
        };
        debug!(ok = result.is_ok(), "done: {}", action.describe());
        match ignore_missing(result) {
            Ok(()) => {}
            // Someone changed the object since it was read: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Requeue::requeue(Duration::from_millis(500)));
            }
            Err(source) => {
                return Err(Error::Action {
                    action: action.describe(),
                    phase: plan.status.phase,
                    source,
                });
            }
        }
    }
    Ok(plan
        .requeue_after
        .map(Requeue::requeue)
        .unwrap_or_else(Requeue::await_change))
}

/// Records a delete the API server answered with the object (its version is
/// the deletion's); a Status answer carries none.
fn deleted<K: Resource<DynamicType = ()>>(cache: &Cache, answer: Option<K>) {
    if let Some(obj) = answer {
        cache.wrote(&obj);
    }
}

/// A merge patch carrying the resourceVersion it was computed from, so it
/// fails rather than drop a finalizer someone else added meanwhile.
async fn set_finalizers(
    api: &Api<SidecarMigration>,
    scm: &SidecarMigration,
    finalizers: Vec<String>,
) -> Result<SidecarMigration, kube::Error> {
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": scm.resource_version() } });
    api.patch(
        &scm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Deletes only the object with this uid: one re-created under the same name
/// by someone else is not the one the plan saw as ours.
fn only(uid: &str, mut dp: DeleteParams) -> DeleteParams {
    dp.preconditions = Some(kube::api::Preconditions {
        uid: Some(uid.to_string()),
        resource_version: None,
    });
    dp
}

fn ignore_missing(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// An Event about the migration; `action` is the phase it happened in.
async fn publish(
    ctx: &Context,
    scm: &SidecarMigration,
    action: &str,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    let recorder = match ctx.recorders.lock() {
        Ok(mut r) => r
            .entry(key(scm))
            .or_insert_with(|| Recorder::new(ctx.client.clone(), ctx.reporter.clone()))
            .clone(),
        Err(_) => Recorder::new(ctx.client.clone(), ctx.reporter.clone()),
    };
    if let Err(e) = recorder.publish(&event, &scm.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration with every part of its status filled in.
    fn with_status(phase: Phase, handoff: HandoffState) -> SidecarMigration {
        let spec: SidecarMigrationSpec =
            serde_json::from_value(json!({ "proxyDeployment": "kong-kong" })).expect("spec");
        let mut m = SidecarMigration::new("kong", spec);
        m.metadata.namespace = Some("kong".into());
        m.metadata.generation = Some(2);
        let status = json!({
            "phase": phase,
            "observedGeneration": 2,
            "controllerRelease": "kong-controller",
            "step": "5/5",
            "message": "migrated",
            "original": { "sidecar": "{}", "sidecarIndex": 1, "proxyEnv": "[]", "proxyPorts": "[]" },
            "plan": [{ "step": "DisablingSidecar", "object": "Deployment/kong-kong", "change": "remove container" }],
            "steps": [{ "name": "Validating", "state": "Succeeded", "attempts": 1 }],
            "conditions": [{ "type": "Ready", "status": "True", "reason": "Succeeded", "message": "",
                             "lastTransitionTime": "2026-11-27T00:00:00Z" }],
            "warnings": ["Service kong-kong-metrics selects the gateway pods"],
            "legacyPods": ["kong-kong-0"],
            "handoff": {
                "releases": [{ "name": "kong", "namespace": "kong", "values": "admin:\n  enabled: true\n",
                               "command": "helm upgrade kong kong/kong -f values.yaml",
                               "before": ["kubectl annotate ingressclass kong"], "after": ["kubectl delete"],
                               "state": handoff, "message": "run it" }],
                "notes": ["check the values"],
            },
        });
        m.status = Some(serde_json::from_value(status).expect("status"));
        m
    }

    #[test]
    fn the_cache_keeps_of_a_finished_migration_what_wakes_it() {
        use HandoffState::{Done, Ready};
        let cases = [
            // phase, hand-off state, kept in part
            (Phase::Succeeded, Ready, true),
            (Phase::Succeeded, Done, true),
            (Phase::RolledBack, Done, true),
            (Phase::Failed, Ready, false),
            (Phase::DeletingLegacyPods, Ready, false),
            (Phase::RollingBack, Ready, false),
            (Phase::Paused, Ready, false),
        ];
        for (phase, handoff, in_part) in cases {
            let full = with_status(phase, handoff);
            let mut kept = full.clone();
            keep_finished(&mut kept);
            let what = format!("{phase:?} with its hand-off {handoff:?}");
            assert_eq!(kept.status != full.status, in_part, "{what}: kept in part");
            let status = kept.status.as_ref().expect("status");
            if in_part {
                assert!(status.original.is_none(), "{what}: no rollback record");
                assert!(status.plan.is_empty() && status.steps.is_empty());
                assert!(status.conditions.is_empty() && status.warnings.is_empty());
                let release = &status.handoff.as_ref().expect("hand-off").releases[0];
                assert!(release.values.is_empty() && release.command.is_empty());
            }
            // Whatever the cache left out, the same changes wake it, the same
            // watches stay open for it, and it is at rest or not alike.
            assert_eq!(at_rest(&kept), at_rest(&full), "{what}: at rest");
            assert_eq!(woken_by_cluster(&kept), woken_by_cluster(&full), "{what}");
            assert_eq!(
                woken_by_deployment(&kept),
                woken_by_deployment(&full),
                "{what}"
            );
            assert_eq!(
                interest([&kept].into_iter()),
                interest([&full].into_iter()),
                "{what}: watches kept"
            );
            assert_eq!(
                plan::with_controller_release(&kept, None)
                    .spec
                    .controller_name(),
                plan::with_controller_release(&full, None)
                    .spec
                    .controller_name(),
                "{what}: the controller's name"
            );
            assert_eq!(status.phase, phase);
        }
    }

    #[test]
    fn only_unfinished_migrations_are_woken_by_their_objects() {
        let (store, mut writer) = kube::runtime::reflector::store();
        let spec: SidecarMigrationSpec =
            serde_json::from_value(json!({ "proxyDeployment": "kong-kong" })).expect("spec");
        let cases = [
            (None, true),
            (Some(Phase::Pending), true),
            (Some(Phase::Validating), true),
            (Some(Phase::DeletingLegacyPods), true),
            (Some(Phase::Paused), true),
            (Some(Phase::RollingBack), true),
            (Some(Phase::Failed), true),
            (Some(Phase::Succeeded), false),
            (Some(Phase::RolledBack), false),
        ];
        for (i, (phase, _)) in cases.iter().enumerate() {
            let mut m = SidecarMigration::new(&format!("m{i}"), spec.clone());
            m.metadata.namespace = Some("kong".into());
            m.status = phase.map(|phase| SidecarMigrationStatus {
                phase,
                ..Default::default()
            });
            writer.apply_watcher_event(&watcher::Event::Apply(m));
        }
        let mut other = SidecarMigration::new("elsewhere", spec.clone());
        other.metadata.namespace = Some("other".into());
        writer.apply_watcher_event(&watcher::Event::Apply(other));

        let woken: Vec<String> = in_namespace(&store, Some("kong".into()), |_| true)
            .into_iter()
            .map(|r| r.name)
            .collect();
        for (i, (phase, wakes)) in cases.iter().enumerate() {
            assert_eq!(
                woken.contains(&format!("m{i}")),
                *wakes,
                "a migration in phase {phase:?}"
            );
        }
        assert!(!woken.contains(&"elsewhere".to_string()));
    }

    /// Which watches a migration keeps open for its namespace: every kind
    /// while it is unfinished or being deleted, the Deployments alone while
    /// its hand-off waits for the user's Helm releases, none once at rest.
    #[test]
    fn the_watches_follow_the_unfinished_migrations_and_a_pending_hand_off_keeps_deployments() {
        let spec: SidecarMigrationSpec =
            serde_json::from_value(json!({ "proxyDeployment": "kong-kong" })).expect("spec");
        let handoff = |states: [HandoffState; 2]| Handoff {
            releases: states
                .map(|state| HandoffRelease {
                    state,
                    ..Default::default()
                })
                .into(),
            ..Default::default()
        };
        let pending = Some(handoff([HandoffState::Done, HandoffState::Ready]));
        let done = Some(handoff([HandoffState::Done, HandoffState::Done]));
        // namespace, phase, hand-off, being deleted, watches: all / Deployments only / none
        let cases = [
            (
                "running",
                Some(Phase::DeletingLegacyPods),
                None,
                false,
                "all",
            ),
            ("new", None, None, false, "all"),
            ("failed", Some(Phase::Failed), None, false, "all"),
            ("deleted", Some(Phase::Succeeded), None, true, "all"),
            (
                "handing-off",
                Some(Phase::Succeeded),
                pending.clone(),
                false,
                "deployments",
            ),
            ("handed-off", Some(Phase::Succeeded), done, false, "none"),
            ("succeeded", Some(Phase::Succeeded), None, false, "none"),
            ("rolled-back", Some(Phase::RolledBack), None, false, "none"),
        ];
        let migrations: Vec<SidecarMigration> = cases
            .iter()
            .map(|(ns, phase, handoff, deleted, _)| {
                let mut m = SidecarMigration::new("kong", spec.clone());
                m.metadata.namespace = Some(ns.to_string());
                if *deleted {
                    m.metadata.deletion_timestamp = Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
                    );
                }
                m.status = phase.map(|phase| SidecarMigrationStatus {
                    phase,
                    handoff: handoff.clone(),
                    ..Default::default()
                });
                m
            })
            .collect();
        let got = interest(migrations.iter());
        for (ns, _, _, _, want) in cases {
            let has = match (got.all.contains(ns), got.deployments.contains(ns)) {
                (true, _) => "all",
                (false, true) => "deployments",
                (false, false) => "none",
            };
            assert_eq!(has, want, "the migration in namespace {ns}");
        }
    }

    #[test]
    fn a_pending_hand_off_is_woken_by_deployments_only_and_a_finished_one_by_nothing() {
        let (store, mut writer) = kube::runtime::reflector::store();
        let spec: SidecarMigrationSpec =
            serde_json::from_value(json!({ "proxyDeployment": "kong-kong" })).expect("spec");
        let release = |state| HandoffRelease {
            state,
            ..Default::default()
        };
        let cases = [
            (
                "pending",
                Some([HandoffState::Ready, HandoffState::Waiting]),
                true,
            ),
            (
                "half",
                Some([HandoffState::Done, HandoffState::Ready]),
                true,
            ),
            (
                "done",
                Some([HandoffState::Done, HandoffState::Done]),
                false,
            ),
            ("none", None, false),
        ];
        for (name, states, _) in &cases {
            let mut m = SidecarMigration::new(name, spec.clone());
            m.metadata.namespace = Some("kong".into());
            m.status = Some(SidecarMigrationStatus {
                phase: Phase::Succeeded,
                handoff: states.map(|s| Handoff {
                    releases: s.into_iter().map(release).collect(),
                    notes: Vec::new(),
                }),
                ..Default::default()
            });
            writer.apply_watcher_event(&watcher::Event::Apply(m));
        }
        let names = |refs: Vec<ObjectRef<SidecarMigration>>| -> Vec<String> {
            refs.into_iter().map(|r| r.name).collect()
        };
        let by_deployment = names(matching(&store, Some("kong".into()), woken_by_deployment));
        let by_pod = names(in_namespace(&store, Some("kong".into()), |_| true));
        for (name, _, wakes) in cases {
            assert_eq!(by_deployment.contains(&name.to_string()), wakes, "{name}");
        }
        assert!(by_pod.is_empty(), "{by_pod:?}");
    }

    #[test]
    fn a_change_wakes_the_unfinished_migrations_it_can_move() {
        let (store, mut writer) = kube::runtime::reflector::store();
        let spec: SidecarMigrationSpec =
            serde_json::from_value(json!({ "proxyDeployment": "kong-kong" })).expect("spec");
        for (name, phase) in [
            ("running", Phase::DeletingLegacyPods),
            ("done", Phase::Succeeded),
        ] {
            let mut m = SidecarMigration::new(name, spec.clone());
            m.metadata.namespace = Some("kong".into());
            m.status = Some(SidecarMigrationStatus {
                phase,
                ..Default::default()
            });
            writer.apply_watcher_event(&watcher::Event::Apply(m));
        }
        let admin = spec.admin_service_name();
        let rbac = rbac_name(&spec);
        let change = |kind, ns: &str, name: &str, labels: &[(&str, &str)]| Change {
            kind,
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let slice_label = [(kong::SERVICE_NAME_LABEL, admin.as_str())];
        let cases = [
            (change("Deployment", "kong", "kong-kong", &[]), true),
            (
                change("Deployment", "kong", &spec.controller_name(), &[]),
                true,
            ),
            (change("Deployment", "kong", "web", &[]), false),
            (change("Service", "kong", &admin, &[]), true),
            (change("Service", "kong", "web", &[]), false),
            (change("EndpointSlice", "kong", "a-1", &slice_label), true),
            (change("EndpointSlice", "kong", "web-1", &[]), false),
            (change("Role", "kong", &rbac, &[]), true),
            (change("Role", "kong", "web", &[]), false),
            (change("Pod", "kong", "kong-kong-1", &[]), true),
            (change("NetworkPolicy", "kong", "any", &[]), true),
            // A watch that was down: anything may have changed.
            (change("Service", "kong", "", &[]), true),
            (change("Deployment", "other", "kong-kong", &[]), false),
        ];
        for (c, wakes) in cases {
            let woken: Vec<String> = woken_by(&store, &c).into_iter().map(|r| r.name).collect();
            let want: Vec<String> = if wakes {
                vec!["running".into()]
            } else {
                vec![]
            };
            assert_eq!(woken, want, "{c:?}");
        }
    }

    #[test]
    fn only_a_finished_migration_with_nothing_to_follow_is_left_unobserved() {
        let spec: SidecarMigrationSpec =
            serde_json::from_value(json!({ "proxyDeployment": "kong-kong" })).expect("spec");
        let pending = Handoff {
            releases: vec![HandoffRelease::default()],
            notes: Vec::new(),
        };
        let cases = [
            ("succeeded", Phase::Succeeded, Some(1), false, None, true),
            ("rolled back", Phase::RolledBack, Some(1), false, None, true),
            ("a new spec", Phase::Succeeded, Some(0), false, None, false),
            (
                "being deleted",
                Phase::Succeeded,
                Some(1),
                true,
                None,
                false,
            ),
            (
                "hand-off pending",
                Phase::Succeeded,
                Some(1),
                false,
                Some(pending),
                false,
            ),
            (
                "unfinished",
                Phase::DeletingLegacyPods,
                Some(1),
                false,
                None,
                false,
            ),
        ];
        for (name, phase, observed, deleting, handoff, rests) in cases {
            let mut m = SidecarMigration::new("m", spec.clone());
            m.metadata.generation = Some(1);
            if deleting {
                m.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
                );
            }
            m.status = Some(SidecarMigrationStatus {
                phase,
                observed_generation: observed,
                handoff,
                ..Default::default()
            });
            assert_eq!(at_rest(&m), rests, "{name}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_minute() {
        let cases = [
            (1, 500),
            (2, 1_000),
            (3, 2_000),
            (5, 8_000),
            (8, 60_000),
            (40, 60_000),
            (u32::MAX, 60_000),
        ];
        for (failures, ms) in cases {
            assert_eq!(
                retry_delay(failures),
                Duration::from_millis(ms),
                "after {failures} failures"
            );
        }
    }
}
