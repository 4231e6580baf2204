//! What the reconciler reads, from watches it holds only while a namespace
//! has an unfinished migration, and closes when none is left.
//!
//! One watch a kind (or a kind and namespace, when the operator is confined
//! to namespaces): a watch a kind and migration namespace would be a
//! connection each (kube-client speaks HTTP/1.1), hundreds of them for
//! hundreds of migrations. The watch keeps the objects of the namespaces of
//! interest only. It opens with a streaming list (`sendInitialEvents`: one
//! request, however big the cluster); a namespace that joins while it runs
//! is listed on its own and the watch goes on; a namespace that leaves has
//! its objects dropped. With no namespace of interest the watches close: an
//! idle operator holds the SidecarMigration watch alone.
//!
//! Never a stale view: a reader waits until every kind has listed its
//! namespace, and until every kind's watch has delivered the operator's own
//! last write there (resource versions compared as the integers they are,
//! as Kubernetes documents them since 1.35, KEP-5504, and as they are in
//! every etcd-backed release), and each pod it evicted shows terminating or
//! gone. An event older than a namespace's list is already in it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Namespaces whose objects the watches keep.
type Namespaces = BTreeSet<String>;

/// The namespaces each watch keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Every kind: namespaces with an unfinished migration, or a reconcile
    /// running.
    pub all: Namespaces,
    /// Deployments alone: a finished migration whose hand-off waits for the
    /// user's Helm releases reads and is woken by its Deployments only.
    pub deployments: Namespaces,
}

impl Interest {
    fn of(&self, kind: &str) -> Namespaces {
        match kind {
            "Deployment" => self.all.union(&self.deployments).cloned().collect(),
            _ => self.all.clone(),
        }
    }
}

/// How long a reader waits for a watch to list or to catch up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a watch waits after a failure before it asks again.
const RETRY: Duration = Duration::from_secs(1);

/// The bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A change the watches saw in a namespace of interest; the reconciler
/// decides which migrations it concerns. An empty name: anything in the
/// namespace may have changed (a watch was down).
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

type WakeFn = Arc<dyn Fn(Change) + Send + Sync>;

#[derive(thiserror::Error, Debug)]
pub enum CacheError {
    #[error("the watch of {kind} failed: {source}")]
    Watch {
        kind: &'static str,
        source: kube::Error,
    },
    #[error("the watches of namespace {0} did not list or catch up in 30 s")]
    Timeout(String),
}

/// The cluster state the reconciler reads. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Namespaces held by a running reconcile, with how many hold each.
    held: Mutex<BTreeMap<String, usize>>,
    /// Namespaces with a migration that needs the watches.
    standing: Mutex<Interest>,
    interest: watch::Sender<Interest>,
    /// Bumped on every event and list: readers waiting on a condition look again.
    changed: watch::Sender<u64>,
    targets: Mutex<Vec<Arc<Target>>>,
    wake: Mutex<Vec<(Option<String>, WakeFn)>>,
    /// Pods evicted and not yet seen terminating or gone, by namespace.
    evicted: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(targets) = self.targets.lock() {
            for t in targets.iter() {
                for task in &t.tasks {
                    task.abort();
                }
            }
        }
    }
}

/// The watches of every kind over one scope: every namespace (`None`) or one.
struct Target {
    covers: Option<String>,
    deployments: Arc<Kind<Deployment>>,
    pods: Arc<Kind<Pod>>,
    services: Arc<Kind<Service>>,
    slices: Arc<Kind<EndpointSlice>>,
    roles: Arc<Kind<Role>>,
    role_bindings: Arc<Kind<RoleBinding>>,
    network_policies: Arc<Kind<NetworkPolicy>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Target {
    fn kinds(&self) -> [&dyn Tracked; 7] {
        [
            self.deployments.as_ref(),
            self.pods.as_ref(),
            self.services.as_ref(),
            self.slices.as_ref(),
            self.roles.as_ref(),
            self.role_bindings.as_ref(),
            self.network_policies.as_ref(),
        ]
    }
}

/// One kind's watch over a target: its objects by namespace and name.
struct Kind<K> {
    name: &'static str,
    state: Mutex<KindState<K>>,
    /// Highest resourceVersion the watch delivered (events and bookmarks
    /// come in that order).
    seen: AtomicU64,
}

struct KindState<K> {
    objects: HashMap<String, BTreeMap<String, Stored<K>>>,
    /// Namespaces listed, with the resourceVersion of their list.
    listed: BTreeMap<String, u64>,
    /// Highest resourceVersion of the operator's own writes, by namespace.
    written: BTreeMap<String, u64>,
    /// An error met while listing, for a reader to report.
    error: Option<kube::Error>,
}

/// A cached object as its compact JSON, decoded for the reader who asks:
/// a quarter of its size as a Kubernetes type (a Kong proxy Deployment is
/// about 8 KB of JSON and 36 KB of structs, mostly `Option`s left empty),
/// and the cache holds every object of every namespace with a migration
/// under way. A decode costs tens of microseconds, on a reconcile's reads.
struct Stored<K> {
    json: Arc<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Stored<K> {
    fn clone(&self) -> Self {
        Stored {
            json: self.json.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Serialize> Stored<K> {
    fn encode(obj: &K) -> Option<Self> {
        match serde_json::to_string(obj) {
            Ok(json) => Some(Stored {
                json: json.into(),
                kind: PhantomData,
            }),
            Err(e) => {
                warn!(error = %e, "could not encode an object for the cache");
                None
            }
        }
    }
}

impl<K: DeserializeOwned> Stored<K> {
    fn decode(&self, kind: &str) -> Option<K> {
        match serde_json::from_str(&self.json) {
            Ok(obj) => Some(obj),
            Err(e) => {
                warn!(kind, error = %e, "could not decode a cached object");
                None
            }
        }
    }
}

trait Tracked: Send + Sync {
    /// Listed, and caught up with the operator's writes in `ns`.
    fn ready(&self, ns: &str) -> Result<bool, CacheError>;
}

impl<K: Send + Sync> Tracked for Kind<K> {
    fn ready(&self, ns: &str) -> Result<bool, CacheError> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(false);
        };
        if let Some(&listed) = state.listed.get(ns) {
            let written = state.written.get(ns).copied().unwrap_or(0);
            return Ok(self.seen.load(Ordering::SeqCst).max(listed) >= written);
        }
        match state.error.take() {
            Some(source) => Err(CacheError::Watch {
                kind: self.name,
                source,
            }),
            None => Ok(false),
        }
    }
}

impl<K> Kind<K> {
    fn new(name: &'static str) -> Self {
        Kind {
            name,
            state: Mutex::new(KindState {
                objects: HashMap::new(),
                listed: BTreeMap::new(),
                written: BTreeMap::new(),
                error: None,
            }),
            seen: AtomicU64::new(0),
        }
    }

    /// The namespace's objects, decoded outside the lock.
    fn all(&self, ns: &str) -> Vec<K>
    where
        K: DeserializeOwned,
    {
        let stored: Vec<Stored<K>> = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.objects.get(ns).map(|m| m.values().cloned().collect()))
            .unwrap_or_default();
        stored.iter().filter_map(|o| o.decode(self.name)).collect()
    }

    fn get(&self, ns: &str, name: &str) -> Option<K>
    where
        K: DeserializeOwned,
    {
        let stored = self
            .state
            .lock()
            .ok()?
            .objects
            .get(ns)
            .and_then(|m| m.get(name).cloned())?;
        stored.decode(self.name)
    }

    fn wrote(&self, ns: &str, rv: u64) {
        if let Ok(mut s) = self.state.lock() {
            let w = s.written.entry(ns.to_string()).or_insert(0);
            *w = (*w).max(rv);
        }
    }

    fn listed(&self) -> Namespaces {
        self.state
            .lock()
            .map(|s| s.listed.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops every namespace `keep` does not hold.
    fn retain(&self, keep: &Namespaces) {
        if let Ok(mut s) = self.state.lock() {
            s.objects.retain(|ns, _| keep.contains(ns));
            s.listed.retain(|ns, _| keep.contains(ns));
            s.written.retain(|ns, _| keep.contains(ns));
        }
    }

    fn failed(&self, error: kube::Error) {
        if let Ok(mut s) = self.state.lock() {
            s.error = Some(error);
        }
    }
}

/// A resourceVersion as the integer it is (see the module's note); 0 when
/// it is not one, which no comparison then waits on.
pub(crate) fn version(rv: Option<&str>) -> u64 {
    rv.and_then(|v| v.parse().ok()).unwrap_or(0)
}

trait Cached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
}
impl<K> Cached for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static
{
}

impl Cache {
    pub fn new(client: Client) -> Self {
        Cache {
            inner: Arc::new(Inner {
                client,
                held: Mutex::default(),
                standing: Mutex::default(),
                interest: watch::Sender::new(Interest::default()),
                changed: watch::Sender::new(0),
                targets: Mutex::default(),
                wake: Mutex::default(),
                evicted: Mutex::default(),
            }),
        }
    }

    /// Watches over `scope` (every namespace, or one), opened while a
    /// namespace it covers is of interest. Idempotent.
    pub fn cover(&self, scope: Option<String>) {
        let Ok(mut targets) = self.inner.targets.lock() else {
            return;
        };
        if targets.iter().any(|t| t.covers == scope) {
            return;
        }
        let mut tasks = Vec::new();
        targets.push(Arc::new(Target {
            deployments: self.spawn("Deployment", &scope, &mut tasks),
            pods: self.spawn("Pod", &scope, &mut tasks),
            services: self.spawn("Service", &scope, &mut tasks),
            slices: self.spawn("EndpointSlice", &scope, &mut tasks),
            roles: self.spawn("Role", &scope, &mut tasks),
            role_bindings: self.spawn("RoleBinding", &scope, &mut tasks),
            network_policies: self.spawn("NetworkPolicy", &scope, &mut tasks),
            covers: scope,
            tasks,
        }));
    }

    fn spawn<K: Cached>(
        &self,
        name: &'static str,
        scope: &Option<String>,
        tasks: &mut Vec<tokio::task::AbortHandle>,
    ) -> Arc<Kind<K>> {
        let kind = Arc::new(Kind::new(name));
        let task = tokio::spawn(run_kind(
            kind.clone(),
            self.inner.client.clone(),
            scope.clone(),
            self.inner.interest.subscribe(),
            Arc::downgrade(&self.inner),
        ));
        tasks.push(task.abort_handle());
        kind
    }

    /// Calls `wake` with every change the watches see in a namespace that
    /// `scope` covers.
    pub fn on_change(&self, scope: Option<String>, wake: impl Fn(Change) + Send + Sync + 'static) {
        if let Ok(mut w) = self.inner.wake.lock() {
            w.push((scope, Arc::new(wake)));
        }
    }

    /// The namespaces whose migrations need the watches, as the
    /// SidecarMigration caches show them now.
    pub fn keep(&self, interest: Interest) {
        if let Ok(mut s) = self.inner.standing.lock() {
            *s = interest;
        }
        self.publish_interest();
    }

    fn publish_interest(&self) {
        let (Ok(held), Ok(standing)) = (self.inner.held.lock(), self.inner.standing.lock()) else {
            return;
        };
        let want = Interest {
            all: standing.all.iter().chain(held.keys()).cloned().collect(),
            deployments: standing.deployments.clone(),
        };
        self.inner.interest.send_if_modified(|now| {
            if *now == want {
                return false;
            }
            *now = want;
            true
        });
    }

    fn target(&self, ns: &str) -> Option<Arc<Target>> {
        let targets = self.inner.targets.lock().ok()?;
        targets
            .iter()
            .find(|t| t.covers.as_deref() == Some(ns))
            .or_else(|| targets.iter().find(|t| t.covers.is_none()))
            .cloned()
    }

    /// The namespace's objects, once every watch has listed it and caught up
    /// with the operator's own writes. The namespace stays of interest while
    /// the view lives.
    pub async fn view(&self, ns: &str) -> Result<View, CacheError> {
        if self.target(ns).is_none() {
            // A reconcile outside `reconcile::run` (tests): watch its
            // namespace alone.
            self.cover(Some(ns.to_string()));
        }
        let target = self
            .target(ns)
            .ok_or_else(|| CacheError::Timeout(ns.into()))?;
        if let Ok(mut held) = self.inner.held.lock() {
            *held.entry(ns.to_string()).or_insert(0) += 1;
        }
        let view = View {
            cache: self.clone(),
            target,
            ns: ns.to_string(),
        };
        self.publish_interest();
        let mut changed = self.inner.changed.subscribe();
        let ready = tokio::time::timeout(SYNC_TIMEOUT, async {
            loop {
                changed.borrow_and_update();
                if view.ready()? {
                    return Ok(());
                }
                if changed.changed().await.is_err() {
                    return Err(CacheError::Timeout(ns.to_string()));
                }
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(view),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CacheError::Timeout(ns.to_string())),
        }
    }

    /// Records one of the operator's writes: readers of its namespace wait
    /// until its kind's watch has delivered it.
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let Some(target) = self.target(&ns) else {
            return;
        };
        let rv = version(obj.meta().resource_version.as_deref());
        match K::kind(&()).as_ref() {
            "Deployment" => target.deployments.wrote(&ns, rv),
            "Pod" => target.pods.wrote(&ns, rv),
            "Service" => target.services.wrote(&ns, rv),
            "EndpointSlice" => target.slices.wrote(&ns, rv),
            "Role" => target.roles.wrote(&ns, rv),
            "RoleBinding" => target.role_bindings.wrote(&ns, rv),
            "NetworkPolicy" => target.network_policies.wrote(&ns, rv),
            _ => {}
        }
    }

    /// Records a pod the operator evicted: readers wait until the pod watch
    /// shows it terminating or gone (an eviction answers with no version).
    pub fn evicted(&self, ns: &str, pod_uid: &str) {
        if let Ok(mut e) = self.inner.evicted.lock() {
            e.entry(ns.to_string()).or_default().insert(pod_uid.into());
        }
    }
}

/// A namespace's cached objects; the namespace stays of interest while it lives.
pub struct View {
    cache: Cache,
    target: Arc<Target>,
    ns: String,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Ok(mut held) = self.cache.inner.held.lock()
            && let Some(n) = held.get_mut(&self.ns)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ns);
            }
        }
        self.cache.publish_interest();
    }
}

impl View {
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn ready(&self) -> Result<bool, CacheError> {
        for kind in self.target.kinds() {
            if !kind.ready(&self.ns)? {
                return Ok(false);
            }
        }
        Ok(self.evictions_seen())
    }

    /// Every pod the operator evicted here shows terminating or gone.
    fn evictions_seen(&self) -> bool {
        let Ok(mut evicted) = self.cache.inner.evicted.lock() else {
            return false;
        };
        let Some(uids) = evicted.get_mut(&self.ns) else {
            return true;
        };
        let pods = self.target.pods.all(&self.ns);
        uids.retain(|uid| {
            pods.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none()
            })
        });
        let seen = uids.is_empty();
        if seen {
            evicted.remove(&self.ns);
        }
        seen
    }

    pub fn deployment(&self, name: &str) -> Option<Deployment> {
        self.target.deployments.get(&self.ns, name)
    }

    /// The namespace's pods, as [`trim_pod`] keeps them.
    pub fn pods(&self) -> Vec<Pod> {
        self.target.pods.all(&self.ns)
    }

    pub fn pod_uid(&self, name: &str) -> Option<String> {
        self.target.pods.get(&self.ns, name)?.metadata.uid
    }

    pub fn service(&self, name: &str) -> Option<Service> {
        self.target.services.get(&self.ns, name)
    }

    pub fn services(&self) -> Vec<Service> {
        self.target.services.all(&self.ns)
    }

    /// The EndpointSlices of a Service (by the label kube-controller-manager sets).
    pub fn slices_of(&self, service: &str) -> Vec<EndpointSlice> {
        self.target
            .slices
            .all(&self.ns)
            .into_iter()
            .filter(|s| {
                s.labels()
                    .get(crate::kong::SERVICE_NAME_LABEL)
                    .map(String::as_str)
                    == Some(service)
            })
            .collect()
    }

    pub fn role(&self, name: &str) -> Option<Role> {
        self.target.roles.get(&self.ns, name)
    }

    pub fn role_binding(&self, name: &str) -> Option<RoleBinding> {
        self.target.role_bindings.get(&self.ns, name)
    }

    pub fn network_policies(&self) -> Vec<NetworkPolicy> {
        self.target.network_policies.all(&self.ns)
    }
}

type Events<K> = BoxStream<'static, kube::Result<WatchEvent<K>>>;

/// Keeps one kind's watch open while a namespace it covers is of interest:
/// closed when none is left, a joining namespace listed on its own.
async fn run_kind<K: Cached>(
    kind: Arc<Kind<K>>,
    client: Client,
    scope: Option<String>,
    mut interest: watch::Receiver<Interest>,
    cache: Weak<Inner>,
) {
    let api: Api<K> = match &scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let covered = |interest: &Interest| -> Namespaces {
        let all = interest.of(kind.name);
        match &scope {
            Some(ns) => all.into_iter().filter(|n| n == ns).collect(),
            None => all,
        }
    };
    let mut streaming = true;
    // Whether the watch was open before: reopening after a failure wakes
    // every migration of its namespaces (what changed meanwhile is unknown).
    let mut reopened = false;
    'open: loop {
        kind.retain(&Namespaces::new());
        let mut want = covered(&interest.borrow_and_update());
        while want.is_empty() {
            reopened = false;
            if interest.changed().await.is_err() {
                return;
            }
            want = covered(&interest.borrow_and_update());
        }
        let opened = match streaming {
            true => open_streaming(&kind, &api, &want, &cache).await,
            false => open_listed(&kind, &api, &client, &want, &cache).await,
        };
        let (mut events, mut last) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // A server without WatchList (off by default in 1.33):
                // list, then watch.
                if streaming
                    && matches!(&e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 403 && s.code != 410)
                {
                    streaming = false;
                }
                warn!(kind = kind.name, error = %e, "could not open the watch; retrying");
                kind.failed(e);
                notify(&cache, Vec::new());
                tokio::time::sleep(RETRY).await;
                continue 'open;
            }
        };
        debug!(kind = kind.name, ?want, "watch open");
        if reopened {
            let changes = want.iter().map(|ns| Change {
                kind: kind.name,
                namespace: ns.clone(),
                name: String::new(),
                labels: BTreeMap::new(),
            });
            notify(&cache, changes.collect());
        }
        reopened = true;
        let mut unlisted = Namespaces::new();
        loop {
            let retry = tokio::time::sleep(RETRY);
            tokio::select! {
                event = events.next() => {
                    // Whether to resume the watch, and after which failure.
                    let resume_after = match event {
                        Some(Ok(WatchEvent::Error(e))) if e.code == 410 => continue 'open,
                        Some(Ok(WatchEvent::Error(e))) => Some(Some(e.message)),
                        Some(Ok(event)) => {
                            apply(&kind, event, &mut last, &cache);
                            None
                        }
                        Some(Err(e)) => Some(Some(e.to_string())),
                        // The watch's timeout: go on from where it was.
                        None => Some(None),
                    };
                    if let Some(failure) = resume_after {
                        if let Some(error) = failure {
                            warn!(kind = kind.name, %error, "watch failed; resuming");
                            tokio::time::sleep(RETRY).await;
                        }
                        events = match resume(&api, &last).await {
                            Some(e) => e,
                            None => continue 'open,
                        };
                    }
                }
                changed = interest.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = covered(&interest.borrow_and_update());
                    if now.is_empty() {
                        continue 'open;
                    }
                    kind.retain(&now);
                    unlisted = now.difference(&kind.listed()).cloned().collect();
                }
                _ = retry, if !unlisted.is_empty() => {}
            }
            // Namespaces that joined: listed on their own, the watch goes on.
            for ns in std::mem::take(&mut unlisted) {
                if let Err(e) = list_into(&kind, &client, &ns, &cache).await {
                    warn!(kind = kind.name, namespace = %ns, error = %e, "could not list; retrying");
                    kind.failed(e);
                    notify(&cache, Vec::new());
                    unlisted.insert(ns);
                }
            }
        }
    }
}

/// Bookmarks move `seen` and the resume point on while nothing changes.
fn watch_params() -> WatchParams {
    WatchParams::default().timeout(290)
}

async fn watch_from<K: Cached>(api: &Api<K>, rv: &str) -> kube::Result<Events<K>> {
    Ok(api.watch(&watch_params(), rv).await?.boxed())
}

/// The watch again from `rv`; None when it must be opened anew (that
/// version is gone, or the server refuses).
async fn resume<K: Cached>(api: &Api<K>, rv: &str) -> Option<Events<K>> {
    match watch_from(api, rv).await {
        Ok(events) => Some(events),
        Err(e) => {
            debug!(error = %e, "could not resume the watch: opening it anew");
            None
        }
    }
}

/// Opens the watch with a streaming list of its current objects (the
/// latest, not a cache's older copy: resourceVersion unset); keeps those of
/// `want`. Returns the stream and the resourceVersion it is at.
async fn open_streaming<K: Cached>(
    kind: &Kind<K>,
    api: &Api<K>,
    want: &Namespaces,
    cache: &Weak<Inner>,
) -> kube::Result<(Events<K>, String)> {
    let mut events = api
        .watch(&WatchParams::streaming_lists().timeout(290), "")
        .await?
        .boxed();
    let mut objects: HashMap<String, BTreeMap<String, Stored<K>>> = HashMap::new();
    while let Some(event) = events.try_next().await? {
        match event {
            WatchEvent::Added(obj) | WatchEvent::Modified(obj) => {
                kind.seen.fetch_max(
                    version(obj.meta().resource_version.as_deref()),
                    Ordering::SeqCst,
                );
                if let Some(ns) = obj.namespace().filter(|ns| want.contains(ns)) {
                    let name = obj.name_any();
                    if let Some(stored) = keep(obj) {
                        objects.entry(ns).or_default().insert(name, stored);
                    }
                }
            }
            WatchEvent::Deleted(_) => {}
            WatchEvent::Bookmark(b) => {
                let rv = version(Some(&b.metadata.resource_version));
                kind.seen.fetch_max(rv, Ordering::SeqCst);
                if b.metadata
                    .annotations
                    .get(INITIAL_EVENTS_END)
                    .map(String::as_str)
                    == Some("true")
                {
                    if let Ok(mut s) = kind.state.lock() {
                        s.objects = objects;
                        s.listed = want.iter().map(|ns| (ns.clone(), rv)).collect();
                        s.error = None;
                    }
                    notify(cache, Vec::new());
                    return Ok((events, b.metadata.resource_version));
                }
            }
            WatchEvent::Error(e) => return Err(kube::Error::Api(e)),
        }
    }
    Err(kube::Error::Service(
        "the streaming list ended before its last initial event".into(),
    ))
}

/// Opens the watch the way servers without streaming lists allow: each
/// namespace listed, then a watch from the oldest of those lists.
async fn open_listed<K: Cached>(
    kind: &Kind<K>,
    api: &Api<K>,
    client: &Client,
    want: &Namespaces,
    cache: &Weak<Inner>,
) -> kube::Result<(Events<K>, String)> {
    let mut from = u64::MAX;
    for ns in want {
        from = from.min(list_into(kind, client, ns, cache).await?);
    }
    let from = from.to_string();
    Ok((watch_from(api, &from).await?, from))
}

/// Lists one namespace into the kind's objects; returns the list's version.
async fn list_into<K: Cached>(
    kind: &Kind<K>,
    client: &Client,
    ns: &str,
    cache: &Weak<Inner>,
) -> kube::Result<u64> {
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let rv = version(list.metadata.resource_version.as_deref());
    let objects = list
        .items
        .into_iter()
        .filter_map(|o| Some((o.name_any(), keep(o)?)))
        .collect();
    if let Ok(mut s) = kind.state.lock() {
        s.objects.insert(ns.to_string(), objects);
        s.listed.insert(ns.to_string(), rv);
        s.error = None;
    }
    notify(cache, Vec::new());
    Ok(rv)
}

/// One event of a running watch.
fn apply<K: Cached>(kind: &Kind<K>, event: WatchEvent<K>, last: &mut String, cache: &Weak<Inner>) {
    let (obj, deleted) = match event {
        WatchEvent::Added(obj) | WatchEvent::Modified(obj) => (obj, false),
        WatchEvent::Deleted(obj) => (obj, true),
        WatchEvent::Bookmark(b) => {
            kind.seen.fetch_max(
                version(Some(&b.metadata.resource_version)),
                Ordering::SeqCst,
            );
            *last = b.metadata.resource_version;
            notify(cache, Vec::new());
            return;
        }
        WatchEvent::Error(_) => return,
    };
    let rv = version(obj.meta().resource_version.as_deref());
    if let Some(v) = &obj.meta().resource_version {
        last.clone_from(v);
    }
    let mut changes = Vec::new();
    if let (Some(ns), Ok(mut state)) = (obj.namespace(), kind.state.lock()) {
        // Older than the namespace's list: already in it.
        if state.listed.get(&ns).is_some_and(|&listed| rv > listed) {
            let name = obj.name_any();
            changes.push(Change {
                kind: kind.name,
                namespace: ns.clone(),
                name: name.clone(),
                labels: obj.labels().clone(),
            });
            let objects = state.objects.entry(ns).or_default();
            match deleted {
                true => objects.remove(&name),
                false => match keep(obj) {
                    Some(stored) => objects.insert(name, stored),
                    None => objects.remove(&name),
                },
            };
        }
    }
    // After the store: a reader woken by `seen` finds the object in it.
    kind.seen.fetch_max(rv, Ordering::SeqCst);
    notify(cache, changes);
}

/// An object as the cache keeps it: trimmed, then encoded. Encoding these
/// types cannot fail (their maps have string keys); should it, the object
/// reads as absent and a warning says why.
fn keep<K: Cached>(obj: K) -> Option<Stored<K>> {
    Stored::encode(&trim(obj))
}

/// What the cache keeps of an object. Pods keep what `plan` reads of them
/// (`plan::facts`): their metadata, container names and ports, and the
/// status of their conditions and containers; the rest of a pod (env,
/// volumes, probes) is most of its size. `metadata.managedFields` keep, for
/// Deployments and Services, who wrote which top-level part (drift names who
/// changed the proxy Deployment's or the admin Service's spec); the field
/// sets under those, as JSON trees, outweighed the objects themselves.
fn trim<K: Cached>(mut obj: K) -> K {
    let kind = K::kind(&());
    let meta = obj.meta_mut();
    if kind == "Deployment" || kind == "Service" {
        for entry in meta.managed_fields.iter_mut().flatten() {
            if let Some(serde_json::Value::Object(fields)) =
                entry.fields_v1.as_mut().map(|f| &mut f.0)
            {
                for owned in fields.values_mut() {
                    *owned = serde_json::Value::Object(Default::default());
                }
            }
        }
    } else {
        meta.managed_fields = None;
    }
    if let Some(pod) = (&mut obj as &mut dyn std::any::Any).downcast_mut::<Pod>() {
        trim_pod(pod);
    }
    obj
}

pub(super) fn trim_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.take() {
        let containers = spec
            .containers
            .into_iter()
            .map(|c| k8s_openapi::api::core::v1::Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect();
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers,
            ..Default::default()
        });
    }
    if let Some(status) = pod.status.take() {
        let statuses = status.container_statuses.map(|cs| {
            cs.into_iter()
                .map(|c| k8s_openapi::api::core::v1::ContainerStatus {
                    name: c.name,
                    ready: c.ready,
                    started: c.started,
                    state: c.state,
                    ..Default::default()
                })
                .collect()
        });
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            conditions: status.conditions,
            container_statuses: statuses,
            phase: status.phase,
            ..Default::default()
        });
    }
}

fn notify(cache: &Weak<Inner>, changes: Vec<Change>) {
    let Some(c) = cache.upgrade() else {
        return;
    };
    c.changed.send_modify(|n| *n = n.wrapping_add(1));
    if changes.is_empty() {
        return;
    }
    let hooks: Vec<(Option<String>, WakeFn)> = match c.wake.lock() {
        Ok(w) => w.clone(),
        Err(_) => return,
    };
    for change in changes {
        for (scope, wake) in &hooks {
            if scope.as_ref().is_none_or(|s| *s == change.namespace) {
                wake(change.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{container_started, has_container, owned_by, pod_ready};

    /// A gateway pod as kubelet reports it, with what `trim_pod` drops.
    fn pod(containers: &[&str], ready: bool, started: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "kong-kong-6d4f-abcde", "namespace": "kong", "uid": "u1",
                "generateName": "kong-kong-6d4f-",
                "labels": { "app": "kong", "pod-template-hash": "6d4f" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "kong-kong-6d4f", "uid": "rs", "controller": true }],
                "managedFields": [{ "manager": "kube-controller-manager", "operation": "Update" }],
            },
            "spec": {
                "containers": containers.iter().map(|c| serde_json::json!({
                    "name": c, "image": "kong:3.9",
                    "env": [{ "name": "KONG_ADMIN_LISTEN", "value": "127.0.0.1:8444" }],
                    "ports": [{ "name": "admin", "containerPort": 8444 }],
                    "readinessProbe": { "httpGet": { "path": "/status/ready", "port": 8100 } },
                })).collect::<Vec<_>>(),
                "volumes": [{ "name": "tmp", "emptyDir": {} }],
                "nodeName": "sim",
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                "containerStatuses": containers.iter().map(|c| serde_json::json!({
                    "name": c, "ready": ready, "started": started, "restartCount": 0,
                    "image": "kong:3.9", "imageID": "sha256:0",
                    "state": { "running": { "startedAt": "2026-11-26T00:00:00Z" } },
                })).collect::<Vec<_>>(),
            },
        }))
        .expect("pod")
    }

    #[test]
    fn a_trimmed_pod_answers_every_question_plan_asks_of_it() {
        let cases = [
            (
                pod(&["ingress-controller", "proxy"], true, true),
                "a Ready sidecar pod",
            ),
            (
                pod(&["proxy"], false, true),
                "a started, not Ready gateway pod",
            ),
            (pod(&["proxy"], false, false), "a gateway pod not started"),
        ];
        for (full, name) in cases {
            let mut trimmed = full.clone();
            trim_pod(&mut trimmed);
            for c in ["ingress-controller", "proxy"] {
                assert_eq!(
                    has_container(&trimmed, c),
                    has_container(&full, c),
                    "{name}: {c}"
                );
                assert_eq!(
                    container_started(&trimmed, c),
                    container_started(&full, c),
                    "{name}: {c} started"
                );
            }
            assert_eq!(pod_ready(&trimmed), pod_ready(&full), "{name}: ready");
            assert_eq!(
                owned_by(&trimmed, "kong-kong"),
                owned_by(&full, "kong-kong"),
                "{name}"
            );
            assert_eq!(trimmed.metadata.labels, full.metadata.labels, "{name}");
            let spec = trimmed.spec.as_ref().expect("spec");
            assert!(spec.containers.iter().all(|c| c.env.is_none()), "{name}");
            assert!(spec.volumes.is_none(), "{name}");
        }
    }

    /// Every object of a kind in `tests/fixtures/sidecar-1-replica.yaml`.
    fn fixture<K: DeserializeOwned>(kind: &str) -> Vec<K> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sidecar-1-replica.yaml");
        let text = std::fs::read_to_string(path).expect("fixture readable");
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).expect("fixture parses");
        docs.into_iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| serde_json::from_value(d).expect("object parses"))
            .collect()
    }

    /// The cache keeps objects as JSON text: each must read back exactly
    /// as `trim` left it, or a plan would be made from something else.
    #[test]
    fn a_cached_object_reads_back_as_it_was_kept() {
        fn check<K: Cached + PartialEq>(objects: Vec<K>) -> usize {
            for obj in &objects {
                let kept = keep(obj.clone()).expect("encodes");
                assert_eq!(kept.decode("test"), Some(trim(obj.clone())), "{obj:?}");
            }
            objects.len()
        }
        let read = [
            check(fixture::<Deployment>("Deployment")),
            check(fixture::<Service>("Service")),
            check(fixture::<Role>("Role")),
            check(fixture::<RoleBinding>("RoleBinding")),
            check(vec![pod(&["ingress-controller", "proxy"], true, true)]),
        ];
        assert!(read.iter().all(|&n| n > 0), "{read:?}");
    }

    fn service(ns: &str, name: &str, rv: u64) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.metadata.resource_version = Some(rv.to_string());
        s
    }

    /// Events after a namespace's list change it; those before are in the
    /// list already; other namespaces are not kept; every event moves `seen`.
    #[test]
    fn a_running_watch_applies_only_what_is_newer_than_the_namespace_list() {
        let kind: Kind<Service> = Kind::new("Service");
        if let Ok(mut s) = kind.state.lock() {
            s.listed.insert("kong".into(), 10);
            s.objects.entry("kong".into()).or_default().insert(
                "admin".into(),
                keep(service("kong", "admin", 8)).expect("kept"),
            );
        }
        let mut last = String::new();
        let none = Weak::new();
        let cases: [(WatchEvent<Service>, Option<u64>, u64); 5] = [
            // Older than the list: it already shows this or newer.
            (
                WatchEvent::Modified(service("kong", "admin", 9)),
                Some(8),
                9,
            ),
            (
                WatchEvent::Modified(service("kong", "admin", 11)),
                Some(11),
                11,
            ),
            (
                WatchEvent::Added(service("other", "admin", 12)),
                Some(11),
                12,
            ),
            (
                WatchEvent::Deleted(service("kong", "admin", 7)),
                Some(11),
                12,
            ),
            (WatchEvent::Deleted(service("kong", "admin", 13)), None, 13),
        ];
        for (i, (event, kept, seen)) in cases.into_iter().enumerate() {
            apply(&kind, event, &mut last, &none);
            let got = kind
                .get("kong", "admin")
                .map(|s| version(s.metadata.resource_version.as_deref()));
            assert_eq!(got, kept, "event {i}");
            assert_eq!(kind.seen.load(Ordering::SeqCst), seen, "event {i}");
            assert!(kind.get("other", "admin").is_none(), "event {i}");
        }
        assert_eq!(last, "13");
    }

    /// A namespace is ready once listed and once the watch (or the list)
    /// has reached the operator's last write there.
    #[test]
    fn a_namespace_is_read_only_once_the_operators_own_write_is_in() {
        let cases = [
            (None, 0, 0, false, "not listed"),
            (Some(10), 0, 0, true, "listed, nothing written"),
            (
                Some(10),
                12,
                11,
                false,
                "a write the watch has not delivered",
            ),
            (Some(10), 12, 12, true, "the write delivered"),
            (Some(15), 12, 0, true, "listed after the write"),
        ];
        for (listed, written, seen, ready, name) in cases {
            let kind: Kind<Service> = Kind::new("Service");
            if let (Ok(mut s), Some(rv)) = (kind.state.lock(), listed) {
                s.listed.insert("kong".into(), rv);
            }
            kind.wrote("kong", written);
            kind.wrote("other", 99);
            kind.seen.store(seen, Ordering::SeqCst);
            assert_eq!(kind.ready("kong").ok(), Some(ready), "{name}");
        }
    }

    #[test]
    fn a_pending_hand_off_keeps_the_deployment_watch_alone() {
        let interest = Interest {
            all: ["a".to_string()].into(),
            deployments: ["b".to_string()].into(),
        };
        let ab: Namespaces = ["a".to_string(), "b".to_string()].into();
        assert_eq!(interest.of("Deployment"), ab);
        for kind in ["Pod", "Service", "EndpointSlice", "Role"] {
            assert_eq!(interest.of(kind), interest.all, "{kind}");
        }
    }
}
