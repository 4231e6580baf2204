//! The node simulator: plays kubelet for the pods on one Node, and plays Kong
//! and KIC, version by version, to decide their readiness. Each rule is a fact
//! of `shared/KIC-FACTS.md` (read from KIC's, Kong's and the kong chart's
//! source); versions come from the images (`kong:3.9`,
//! `kong/kubernetes-ingress-controller:3.4.2`; a tag naming no version counts
//! as the newest).
//!
//! | rule | versions | source |
//! |---|---|---|
//! | a bound pod has no IP (so no endpoint) until its sandbox is up, about 1 s: a deleted pod's replacement leaves a gap in its Services' endpoints | kubelet | kubelet's `RunPodSandbox` and CNI `ADD` before `PodReadyToStartContainers` |
//! | a container reports `started` (and listens) only after the sandbox and then the start-up time ([`Timing::startup`], or the pod's [`STARTUP_ANNOTATION`]) | kubelet | kubelet |
//! | a DB-less gateway probed on `/status/ready` is Ready only once configured | Kong ≥ 3.3 | `kong/status/ready.lua` |
//! | probed on `/status` (or not probed) it is Ready at once, configured or not: Ready and unconfigured answers 404, **traffic lost** | any; the chart's probe below 2.26, or Kong < 3.3 (`compatibleReadiness`) | chart `_helpers.tpl` |
//! | `/status/ready` below Kong 3.3 does not exist (404): never Ready | Kong < 3.3 | Kong 3.3 changelog |
//! | a gateway with the sidecar is Ready (and configured) after its sidecar's first push; in DB mode (`KONG_DATABASE` not `off`) at once | all | KIC-FACTS "When things are Ready" |
//! | a gateway container restart ([`NodeSimulator::restart_gateway`]) empties its configuration until the leader re-pushes | all | `configuration_hash` of zeros, KIC's sync loop |
//! | KIC keeps admin Service ports named in `CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES`, default `admin,admin-tls,kong-admin,kong-admin-tls` | KIC 2.11, 2.12 | `internal/manager/config.go`, KIC #5043 |
//! | … default `admin-tls,kong-admin-tls` | KIC ≥ 3.0 | same |
//! | KIC dials `https://<podIP>:<port>` only: a port whose listen lacks `ssl`, a loopback-only listen, a pod not yet listening (start-up), terminating or gone, is unreachable | all | `internal/adminapi/endpoints.go` |
//! | a gateway that demands a client certificate (`KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT=on`) is unreachable for a controller that presents none (`CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE` and `_KEY_FILE` unset) | all | KIC-FACTS "Admin API mTLS is a chart feature"; chart `_helpers.tpl`@kong-2.52.0 |
//! | KIC verifies the Admin API's certificate unless `CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY` is true (the chart's default): dialled by pod IP (KIC < 3.5) it never verifies; dialled as `pod.<svc>.<ns>.svc` (3.5) only a certificate of the user's own (`KONG_ADMIN_SSL_CERT`, assumed made for that name) does, Kong's self-signed default does not | all | KIC-FACTS "Discovery" (scheme, address, TLS) |
//! | an unreachable endpoint at start-up: retried 60 × 1 s, then exit 1; the endpoints tried are those listed when the admin Service first listed any (a pod deleted meanwhile stays in the list, its replacement is not added) | KIC 2.11–3.3, ≥ 3.4.4 | `internal/manager/setup.go` (discover, then a client per address with retries) |
//! | … exit 1 at once | KIC 3.4.0–3.4.3 | same |
//! | admin Service missing or without endpoints at start-up: retried forever, `/readyz` failing | KIC ≤ 3.4.3 | same |
//! | … exit 1 after about 60 s | KIC ≥ 3.4.4 | same |
//! | every exit: CrashLoopBackOff, 10 s doubling to 5 min, the container `waiting` meanwhile | kubelet | kubelet |
//! | after start-up nothing exits; a gateway listed later is configured within the 10 s pending re-check | all | `kongadminapi_controller.go` |
//! | only the holder of the Lease `CONTROLLER_ELECTION_ID` pushes; non-leaders are Ready at once; a vanished holder keeps it 15 s | DB-less discovery, DB mode (sidecars too) | KIC-FACTS "Leader election" |
//! | the leader's first push (and its Ready): 5 s after start plus the 3 s sync tick | all | KIC-FACTS "When things are Ready" |
//!
//! Times scale with [`Timing::scale`] (1 = real; tests run at
//! [`Timing::FAST`]). Downtime is the time the Service had no endpoint both
//! Ready and configured; [`NodeSimulator::unready_time`] keeps the older
//! measure (no Ready endpoint at all). Every Service gets its timeline, the
//! admission webhook's as well as the proxy's.
//!
//! An endpoint in an EndpointSlice without ports (its pod lacks the Service's
//! named targetPort) counts as no endpoint.
//!
//! Not modelled: which CA signed the Admin API's certificate (one of the
//! user's own is assumed to verify), whether the client certificate a controller
//! presents is one the gateway's CA signed (a test checks the two files'
//! sources), 30 s dial hangs, KIC's DNS `service` strategy.
//!
//! Any other pod is Ready by itself. An image containing `invalid` never
//! pulls. Pods being deleted turn not Ready and are then deleted for good.
//! Pod IPs are data in the API only; nothing is ever dialled.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Node, Pod, PodCondition, PodIP, PodStatus,
    Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::kong::{self, Version};

const NODE_IP: &str = "10.0.0.10";
const FIELD_MANAGER: &str = "node-simulator";
const UNPULLABLE: &str = "invalid";
/// A pod annotation giving that pod's start-up time in milliseconds.
pub const STARTUP_ANNOTATION: &str = "testenv/startup-ms";

/// KIC's start-up: 60 tries, 1 s apart (`--kong-admin-init-retries`).
const INIT_RETRIES_SECS: f64 = 60.0;
/// KIC's init wait before the first sync, and its sync tick.
const INIT_WAIT_SECS: f64 = 5.0;
const SYNC_TICK_SECS: f64 = 3.0;
/// How often KIC re-checks endpoints that appeared after start-up.
const PENDING_RECHECK_SECS: f64 = 10.0;
const LEASE_EXPIRY_SECS: f64 = 15.0;
const BACKOFF_FIRST_SECS: f64 = 10.0;
const BACKOFF_MAX_SECS: f64 = 300.0;
/// From binding until the pod sandbox has its network (the pod IP): a
/// typical kubelet with a CNI plugin, not a KIC fact.
const SANDBOX_SECS: f64 = 1.0;
/// How often a waiting KIC looks at the admin Service again.
const RETRY_SECS: f64 = 1.0;

/// Namespace and name of a Service.
type ServiceKey = (String, String);
/// When, ready endpoints, ready and configured endpoints.
type Counts = (Instant, usize, usize);
/// Namespace and name of a pod.
type PodKey = (String, String);

/// How long things take on the simulated node.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a pod's containers take to start (listen) after binding.
    pub startup: Duration,
    /// Multiplies every KIC and kubelet time (1 = real).
    pub scale: f64,
}

impl Timing {
    /// KIC's and kubelet's real times.
    pub const REAL: Timing = Timing {
        startup: Duration::ZERO,
        scale: 1.0,
    };
    /// A twentieth of real time: a first push after 0.4 s, a 60 s retry
    /// loop in 3 s; every order and ratio kept.
    pub const FAST: Timing = Timing {
        startup: Duration::ZERO,
        scale: 0.05,
    };

    fn secs(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.scale)
    }
}

pub struct NodeSimulator {
    timelines: Arc<Timelines>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the kubelet task knows and tests may read or poke.
#[derive(Default)]
struct Shared {
    /// Lease holders: (namespace, election ID) → pod name.
    leaders: Mutex<HashMap<(String, String), String>>,
    /// Gateway pods whose Kong process restarted, for the kubelet to apply.
    restarts: Mutex<Vec<PodKey>>,
}

impl NodeSimulator {
    /// Simulates node `sim-node` for the pods of every namespace, at real
    /// KIC timing. It must be the only simulator on the cluster: two would
    /// race to bind the same pods.
    pub async fn start(client: Client) -> anyhow::Result<NodeSimulator> {
        Self::run(client, None, Timing::REAL).await
    }

    /// Like [`NodeSimulator::start`] (or, with `namespace`,
    /// [`NodeSimulator::start_in_namespace`]), but no container starts until
    /// `startup` has passed since its pod was bound, at [`Timing::FAST`].
    pub async fn start_with_startup(
        client: Client,
        namespace: Option<&str>,
        startup: Duration,
    ) -> anyhow::Result<NodeSimulator> {
        Self::run(
            client,
            namespace,
            Timing {
                startup,
                ..Timing::FAST
            },
        )
        .await
    }

    /// Any timing, any scope.
    pub async fn start_timed(
        client: Client,
        namespace: Option<&str>,
        timing: Timing,
    ) -> anyhow::Result<NodeSimulator> {
        Self::run(client, namespace, timing).await
    }

    /// Simulates node `sim-<namespace>` for the pods of one namespace, at
    /// [`Timing::FAST`], so tests sharing a control plane can each run their
    /// own. It sees only that namespace's Services and EndpointSlices, so a
    /// controller's admin Service must live there too.
    pub async fn start_in_namespace(
        client: Client,
        namespace: &str,
    ) -> anyhow::Result<NodeSimulator> {
        Self::run(client, Some(namespace), Timing::FAST).await
    }

    async fn run(
        client: Client,
        namespace: Option<&str>,
        timing: Timing,
    ) -> anyhow::Result<NodeSimulator> {
        let node = namespace.map_or_else(|| "sim-node".to_string(), |ns| format!("sim-{ns}"));
        register_node(&client, &node).await?;
        let wake = Arc::new(Notify::new());
        let timelines = Arc::new(Timelines {
            by_service: Mutex::default(),
            serving: Mutex::default(),
            changed: watch::Sender::new(()),
        });
        let shared = Arc::new(Shared::default());
        let (pods, pods_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store::<EndpointSlice>();
        let record = {
            let (timelines, slices) = (timelines.clone(), slices.clone());
            move || timelines.record(&slices.state())
        };
        let tasks = vec![
            tokio::spawn(mirror(
                scoped_api(&client, namespace),
                pods_writer,
                wake.clone(),
                || {},
            )),
            tokio::spawn(mirror(
                scoped_api(&client, namespace),
                services_writer,
                wake.clone(),
                || {},
            )),
            tokio::spawn(mirror(
                scoped_api(&client, namespace),
                slices_writer,
                wake.clone(),
                record,
            )),
            tokio::spawn(
                Kubelet {
                    client,
                    node,
                    pods,
                    services,
                    slices,
                    timing,
                    timelines: timelines.clone(),
                    shared: shared.clone(),
                    started: HashMap::new(),
                    controllers: HashMap::new(),
                    configured: HashSet::new(),
                    leases: HashMap::new(),
                    gateway_restarts: HashMap::new(),
                }
                .run(wake),
            ),
        ];
        Ok(NodeSimulator {
            timelines,
            shared,
            tasks,
        })
    }

    /// Each change of the number of ready endpoints of the Service (ready,
    /// not terminating, counted across its EndpointSlices), with its time.
    pub fn timeline(&self, namespace: &str, service: &str) -> Vec<(Instant, usize)> {
        self.timelines
            .get(namespace, service)
            .into_iter()
            .map(|(at, ready, _)| (at, ready))
            .collect()
    }

    /// Like [`NodeSimulator::timeline`], counting only endpoints that are
    /// Ready *and* configured: the ones that answer traffic with a route.
    pub fn serving_timeline(&self, namespace: &str, service: &str) -> Vec<(Instant, usize)> {
        self.timelines
            .get(namespace, service)
            .into_iter()
            .map(|(at, _, serving)| (at, serving))
            .collect()
    }

    pub fn ready_endpoints(&self, namespace: &str, service: &str) -> usize {
        self.timeline(namespace, service)
            .last()
            .map_or(0, |&(_, n)| n)
    }

    /// Time the Service had no endpoint both Ready and configured, since it
    /// first had one, up to now: traffic lost, whether refused for want of an
    /// endpoint or answered 404 by an unconfigured gateway counted Ready.
    pub fn downtime(&self, namespace: &str, service: &str) -> Duration {
        time_at_zero(&self.serving_timeline(namespace, service))
    }

    /// Time the Service had no Ready endpoint at all (the measure before
    /// configuration was tracked; an unconfigured Ready gateway counts as up).
    pub fn unready_time(&self, namespace: &str, service: &str) -> Duration {
        time_at_zero(&self.timeline(namespace, service))
    }

    /// The pod holding the Lease `election_id` in `namespace`, if any.
    pub fn leader(&self, namespace: &str, election_id: &str) -> Option<String> {
        self.shared
            .leaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_string(), election_id.to_string()))
            .cloned()
    }

    /// Restarts the Kong container of a gateway pod: its in-memory
    /// configuration is gone until a leader pushes again.
    pub fn restart_gateway(&self, namespace: &str, pod: &str) {
        self.shared
            .restarts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((namespace.to_string(), pod.to_string()));
        self.timelines.changed.send_replace(());
    }

    /// Waits until the Service has exactly `n` ready endpoints.
    pub async fn wait_ready_endpoints(
        &self,
        namespace: &str,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut changed = self.timelines.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self.ready_endpoints(namespace, service);
            if ready == n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {n} ready endpoints of Service \
                     {namespace}/{service} (it has {ready})"
                );
            }
        }
    }

    /// Stops the simulator and waits until it has stopped writing.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Time spent at zero since the count was first above zero, up to now.
fn time_at_zero(timeline: &[(Instant, usize)]) -> Duration {
    let mut total = Duration::ZERO;
    let mut down_since = None;
    let mut was_up = false;
    for &(at, n) in timeline {
        if n > 0 {
            was_up = true;
            if let Some(since) = down_since.take() {
                total += at - since;
            }
        } else if was_up && down_since.is_none() {
            down_since = Some(at);
        }
    }
    total + down_since.map_or(Duration::ZERO, |since: Instant| since.elapsed())
}

struct Timelines {
    /// (time, ready endpoints, ready and configured endpoints).
    by_service: Mutex<HashMap<ServiceKey, Vec<Counts>>>,
    /// Pods that would not answer a request with a route (DB-less gateways
    /// without configuration), kept by the kubelet.
    serving: Mutex<HashSet<PodKey>>,
    changed: watch::Sender<()>,
}

impl Timelines {
    fn get(&self, namespace: &str, service: &str) -> Vec<Counts> {
        let by_service = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_service
            .get(&(namespace.to_string(), service.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn set_unconfigured(&self, unconfigured: HashSet<PodKey>, slices: &[Arc<EndpointSlice>]) {
        let mut current = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == unconfigured {
            return;
        }
        *current = unconfigured;
        drop(current);
        self.record(slices);
    }

    fn record(&self, slices: &[Arc<EndpointSlice>]) {
        let now = Instant::now();
        let unconfigured = self
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut ready: HashMap<ServiceKey, (HashSet<&str>, HashSet<&str>)> = HashMap::new();
        for slice in slices {
            let (Some(namespace), Some(service)) = (
                &slice.metadata.namespace,
                slice.labels().get(kong::SERVICE_NAME_LABEL),
            ) else {
                continue;
            };
            let (addresses, serving) = ready
                .entry((namespace.clone(), service.clone()))
                .or_default();
            // The endpointslice controller puts pods lacking the Service's
            // named targetPort (the webhook's, without the sidecar) in a
            // slice with no ports: listed, Ready, and serving nothing.
            if slice.ports.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.as_ref();
                if conditions.and_then(|c| c.ready) == Some(true)
                    && conditions.and_then(|c| c.terminating) != Some(true)
                {
                    addresses.extend(endpoint.addresses.iter().map(String::as_str));
                    let pod = endpoint.target_ref.as_ref().map(|t| {
                        (
                            t.namespace.clone().unwrap_or_else(|| namespace.clone()),
                            t.name.clone().unwrap_or_default(),
                        )
                    });
                    if !pod.is_some_and(|p| unconfigured.contains(&p)) {
                        serving.extend(endpoint.addresses.iter().map(String::as_str));
                    }
                }
            }
        }
        let mut by_service = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A Service whose last slice went away has no ready endpoint either.
        for key in by_service.keys() {
            ready.entry(key.clone()).or_default();
        }
        let mut changed = false;
        for (key, (addresses, serving)) in ready {
            let timeline = by_service.entry(key).or_default();
            let counts = (addresses.len(), serving.len());
            if timeline.last().map(|&(_, r, s)| (r, s)) != Some(counts) {
                timeline.push((now, counts.0, counts.1));
                changed = true;
            }
        }
        if changed {
            self.changed.send_replace(());
        }
    }
}
fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Keeps `writer`'s store in step with the cluster and wakes the kubelet on
/// every change.
async fn mirror<K>(api: Api<K>, writer: Writer<K>, wake: Arc<Notify>, on_change: impl Fn())
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => {
                on_change();
                wake.notify_one();
            }
            Err(error) => {
                tracing::warn!(%error, kind = %K::kind(&()), "node simulator: watch failed, retrying")
            }
        }
    }
}

async fn register_node(client: &Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        }},
    });
    nodes.patch(name, &params, &Patch::Apply(&node)).await?;
    let now = Timestamp::now().to_string();
    let resources = json!({ "cpu": "8", "memory": "32Gi", "pods": "250" });
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "node simulator", "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [{ "type": "InternalIP", "address": NODE_IP }, { "type": "Hostname", "address": name }],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": { "kubeletVersion": "v1.34.4", "operatingSystem": "linux", "architecture": "amd64" },
        },
    });
    nodes
        .patch_status(name, &params, &Patch::Apply(&status))
        .await?;
    Ok(())
}

struct Kubelet {
    client: Client,
    node: String,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    timing: Timing,
    timelines: Arc<Timelines>,
    shared: Arc<Shared>,
    /// When each bound pod (by UID) was first seen on this node.
    started: HashMap<String, Instant>,
    /// The KIC process of each discovery controller pod, by UID.
    controllers: HashMap<String, Kic>,
    /// DB-less gateways (by UID) that hold a configuration.
    configured: HashSet<String>,
    /// Lease holders by (namespace, election ID).
    leases: HashMap<(String, String), Lease>,
    /// Gateways (by UID) whose Kong restarted: how often, and when last.
    gateway_restarts: HashMap<String, (i32, Instant)>,
}

struct Kic {
    /// Exits so far, for CrashLoopBackOff.
    exits: u32,
    state: KicState,
}

enum KicState {
    /// Discovering gateways; `listed`: the endpoints found once the admin
    /// Service listed any, which are the ones tried until the attempt ends
    /// (a pod deleted meanwhile is not swapped for its replacement);
    /// `failing_since`: when one of them first did not answer.
    StartingUp {
        since: Instant,
        listed: Option<Vec<Listed>>,
        failing_since: Option<Instant>,
    },
    BackOff {
        until: Instant,
    },
    Running {
        since: Instant,
        /// When each gateway (by UID) was first seen listed.
        seen: HashMap<String, Instant>,
    },
}

/// An endpoint KIC read at start-up: its pod's UID (none if the endpoint
/// named no existing pod) and port.
type Listed = (Option<String>, i32);

struct Lease {
    holder: Option<String>,
    holder_name: String,
    acquired: Instant,
    /// When the holder was first seen gone: the Lease expires after that.
    vanished: Option<Instant>,
}

/// A candidate for a Lease: pod UID, name, running since.
type Candidate = (String, String, Instant);

impl Kubelet {
    async fn run(mut self, wake: Arc<Notify>) {
        // Deciding on half-filled caches would, say, take an admin Service for missing.
        let _ = self.pods.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let mut poked = self.timelines.changed.subscribe();
        loop {
            let next = self.sync().await;
            tokio::select! {
                _ = wake.notified() => {}
                _ = poked.changed() => {}
                _ = async {
                    match next {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Brings every pod of this node to the state the rules give it; returns
    /// when the next timer (a start-up, a retry, a back-off, a push, a Lease
    /// expiry) falls due, if one is pending.
    async fn sync(&mut self) -> Option<Duration> {
        let mut live = Vec::new();
        for pod in self.pods.state() {
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n != self.node)
            {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion(&pod).await;
            } else if pod.spec.as_ref().is_some_and(|s| s.node_name.is_none()) {
                self.bind(&pod).await;
            } else {
                live.push(pod);
            }
        }
        let uid = |p: &Pod| p.uid().unwrap_or_default();
        let live_uids: HashSet<String> = live.iter().map(|p| uid(p)).collect();
        self.started.retain(|u, _| live_uids.contains(u));
        self.controllers.retain(|u, _| live_uids.contains(u));
        self.configured.retain(|u| live_uids.contains(u));
        self.gateway_restarts.retain(|u, _| live_uids.contains(u));

        let now = Instant::now();
        let t = self.timing;
        let mut timers: Vec<Instant> = Vec::new();

        let restarts: Vec<PodKey> = std::mem::take(
            &mut *self
                .shared
                .restarts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut gateway_restarted = HashSet::new();
        for (ns, name) in restarts {
            if let Some(pod) = live
                .iter()
                .find(|p| p.namespace().as_deref() == Some(&ns) && p.name_any() == name)
            {
                self.configured.remove(&uid(pod));
                let entry = self.gateway_restarts.entry(uid(pod)).or_insert((0, now));
                *entry = (entry.0 + 1, now);
                gateway_restarted.insert(uid(pod));
            }
        }

        let mut listening = HashSet::new();
        let mut sandboxed = HashSet::new();
        for pod in &live {
            let since = *self.started.entry(uid(pod)).or_insert(now);
            let sandbox_up = since + t.secs(SANDBOX_SECS);
            if now >= sandbox_up {
                sandboxed.insert(uid(pod));
            } else {
                timers.push(sandbox_up);
            }
            let at = sandbox_up + startup(pod, t);
            if image_pull_fails(pod) {
                continue;
            }
            if now >= at {
                listening.insert(uid(pod));
            } else {
                timers.push(at);
            }
        }
        let world = World::observe(&self.pods, &self.services, &self.slices, &listening);
        let is_listening = |p: &Pod| listening.contains(&uid(p));

        // KIC processes: start-up, exits and back-off.
        let mut exited: HashSet<String> = HashSet::new();
        for pod in &live {
            let Role::Controller { admin, kic, .. } = role(pod) else {
                continue;
            };
            if !is_listening(pod) {
                continue;
            }
            let state = self.controllers.entry(uid(pod)).or_insert(Kic {
                exits: 0,
                state: KicState::StartingUp {
                    since: now,
                    listed: None,
                    failing_since: None,
                },
            });
            if let KicState::BackOff { until } = state.state {
                if now < until {
                    timers.push(until);
                    continue;
                }
                state.state = KicState::StartingUp {
                    since: now,
                    listed: None,
                    failing_since: None,
                };
            }
            let KicState::StartingUp {
                since,
                listed,
                failing_since,
            } = &mut state.state
            else {
                continue;
            };
            let since = *since;
            let retries_end = |from: Instant| from + t.secs(INIT_RETRIES_SECS);
            let exit = match &admin {
                // A malformed CONTROLLER_KONG_ADMIN_SVC fails flag parsing.
                None => true,
                Some(a) if listed.is_none() && world.lists_nothing(a) => {
                    if exits_when_no_endpoints(kic) {
                        let end = retries_end(since);
                        timers.push(end.min(now + t.secs(RETRY_SECS)));
                        now >= end
                    } else {
                        timers.push(now + t.secs(RETRY_SECS));
                        false
                    }
                }
                Some(a) => {
                    let listed = listed.get_or_insert_with(|| {
                        let apis = world.admin_apis(a).into_iter().flatten();
                        apis.map(|(p, port)| (p.and_then(|p| p.uid()), port))
                            .collect()
                    });
                    if world.all_reachable(listed, a) {
                        let seen = listed
                            .iter()
                            .filter_map(|(u, _)| u.clone())
                            .map(|u| (u, now))
                            .collect();
                        state.state = KicState::Running { since: now, seen };
                        false
                    } else if exits_on_first_unreachable(kic) {
                        true
                    } else {
                        let failing = *failing_since.get_or_insert(now);
                        let end = retries_end(failing);
                        timers.push(end.min(now + t.secs(RETRY_SECS)));
                        now >= end
                    }
                }
            };
            if exit {
                state.exits += 1;
                let backoff =
                    (BACKOFF_FIRST_SECS * 2f64.powi(state.exits as i32 - 1)).min(BACKOFF_MAX_SECS);
                let until = now + t.secs(backoff);
                state.state = KicState::BackOff { until };
                timers.push(until);
                exited.insert(uid(pod));
            }
        }

        // Leader election: running discovery controllers, and sidecars in DB mode.
        let mut candidates: HashMap<(String, String), Vec<Candidate>> = HashMap::new();
        for pod in &live {
            let ns = pod.namespace().unwrap_or_default();
            let election = match role(pod) {
                Role::Controller { election, .. } => match self.controllers.get(&uid(pod)) {
                    Some(Kic {
                        state: KicState::Running { since, .. },
                        ..
                    }) => Some((election, *since)),
                    _ => None,
                },
                Role::Gateway {
                    sidecar: Some(election),
                    db: true,
                    ..
                } if is_listening(pod) => self.started.get(&uid(pod)).map(|s| (election, *s)),
                _ => None,
            };
            if let Some((election, since)) = election {
                candidates.entry((ns, election)).or_default().push((
                    uid(pod),
                    pod.name_any(),
                    since,
                ));
            }
        }
        let keys: HashSet<(String, String)> = candidates
            .keys()
            .chain(self.leases.keys())
            .cloned()
            .collect();
        for key in keys {
            let mut list = candidates.remove(&key).unwrap_or_default();
            list.sort_by(|a, b| a.2.cmp(&b.2).then(a.1.cmp(&b.1)));
            let lease = self.leases.entry(key).or_insert(Lease {
                holder: None,
                holder_name: String::new(),
                acquired: now,
                vanished: None,
            });
            if let Some(holder) = &lease.holder
                && !list.iter().any(|c| &c.0 == holder)
            {
                // A holder that is gone keeps the Lease until it expires.
                let gone = *lease.vanished.get_or_insert(now);
                let expiry = gone + t.secs(LEASE_EXPIRY_SECS);
                if now >= expiry {
                    lease.holder = None;
                } else {
                    timers.push(expiry);
                }
            }
            if lease.holder.is_none()
                && let Some((uid, name, _)) = list.first()
            {
                lease.holder = Some(uid.clone());
                lease.holder_name = name.clone();
                lease.acquired = now;
                lease.vanished = None;
            }
        }
        self.leases.retain(|_, l| l.holder.is_some());
        *self
            .shared
            .leaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self
            .leases
            .iter()
            .filter_map(|(k, l)| {
                l.holder
                    .as_ref()
                    .map(|_| (k.clone(), l.holder_name.clone()))
            })
            .collect();

        // Pushes: only a running leader configures the gateways it reaches.
        let mut controller_ready: HashSet<String> = HashSet::new();
        for pod in &live {
            let Role::Controller {
                admin, election, ..
            } = role(pod)
            else {
                continue;
            };
            let Some(Kic {
                state: KicState::Running { since, seen },
                ..
            }) = self.controllers.get_mut(&uid(pod))
            else {
                continue;
            };
            let key = (pod.namespace().unwrap_or_default(), election);
            let lease = self
                .leases
                .get(&key)
                .filter(|l| l.holder.as_deref() == Some(&uid(pod)));
            let Some(lease) = lease else {
                // A non-leader is Ready and pushes nothing.
                controller_ready.insert(uid(pod));
                continue;
            };
            let first_sync = (*since + t.secs(INIT_WAIT_SECS + SYNC_TICK_SECS))
                .max(lease.acquired + t.secs(SYNC_TICK_SECS));
            if now < first_sync {
                timers.push(first_sync);
                continue;
            }
            // A sync to zero gateways counts.
            controller_ready.insert(uid(pod));
            let Some(admin) = &admin else { continue };
            for (gateway, port) in world.admin_apis(admin).into_iter().flatten() {
                let Some(gateway) = gateway.filter(|g| world.reachable(g, port, admin)) else {
                    continue;
                };
                let gw = uid(gateway);
                let seen_at = *seen.entry(gw.clone()).or_insert(now);
                let mut at = first_sync;
                if seen_at > *since {
                    at = at.max(seen_at + t.secs(PENDING_RECHECK_SECS));
                }
                if let Some(&(_, restarted)) = self.gateway_restarts.get(&gw) {
                    // The zeroed configuration_hash is noticed on a sync tick.
                    at = at.max(restarted + t.secs(SYNC_TICK_SECS));
                }
                if now >= at {
                    self.configured.insert(gw);
                } else {
                    timers.push(at);
                }
            }
        }

        let mut verdicts = Vec::new();
        let mut unconfigured = HashSet::new();
        for pod in &live {
            let u = uid(pod);
            let mut backing_off = None;
            let (ready, restarted) = match role(pod) {
                Role::Controller { container, .. } => {
                    if let Some(Kic {
                        state: KicState::BackOff { .. },
                        ..
                    }) = self.controllers.get(&u)
                    {
                        backing_off = Some(container.clone());
                    }
                    (
                        controller_ready.contains(&u),
                        exited.contains(&u).then_some(container),
                    )
                }
                _ if !is_listening(pod) => (false, None),
                Role::Gateway { db: true, .. } => (true, None),
                Role::Gateway {
                    sidecar: Some(_), ..
                } => {
                    // Its own sidecar pushes on its first sync.
                    let at = self.started.get(&u).copied().unwrap_or(now)
                        + t.secs(SANDBOX_SECS)
                        + startup(pod, t)
                        + t.secs(INIT_WAIT_SECS + SYNC_TICK_SECS);
                    if now < at {
                        timers.push(at);
                    }
                    (now >= at, None)
                }
                Role::Gateway { probe, kong, .. } => {
                    let configured = self.configured.contains(&u);
                    if !configured {
                        unconfigured.insert((pod.namespace().unwrap_or_default(), pod.name_any()));
                    }
                    let restarted = gateway_restarted.contains(&u).then(|| "proxy".to_string());
                    (probe.ready(kong, configured), restarted)
                }
                Role::Other => (true, None),
            };
            verdicts.push((pod, ready, restarted, backing_off, is_listening(pod)));
        }
        self.timelines
            .set_unconfigured(unconfigured, &self.slices.state());

        for (pod, ready, restarted, backing_off, listening) in verdicts {
            let ip = sandboxed.contains(&uid(pod)).then(|| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_else(next_pod_ip)
            });
            let status = desired_status(
                pod,
                ip.as_deref(),
                ready,
                restarted.as_deref(),
                backing_off.as_deref(),
                !listening,
            );
            if pod.status.as_ref() != Some(&status) {
                self.write_status(pod, status).await;
            }
        }
        timers
            .into_iter()
            .filter(|&at| at > now)
            .min()
            .map(|at| at - now)
    }

    async fn bind(&self, pod: &Pod) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": pod.name_any() },
            "target": { "apiVersion": "v1", "kind": "Node", "name": self.node },
        });
        let result = self
            .pods_api(pod)
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await;
        report("binding", pod, result.map(drop));
    }

    /// No kubelet confirms that the containers stopped, so the simulator does.
    async fn finish_deletion(&self, pod: &Pod) {
        if crate::plan::pod_ready(pod)
            && let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())
        {
            self.write_status(pod, desired_status(pod, Some(ip), false, None, None, false))
                .await;
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        report(
            "deleting",
            pod,
            self.pods_api(pod)
                .delete(&pod.name_any(), &params)
                .await
                .map(drop),
        );
    }

    async fn write_status(&self, pod: &Pod, status: PodStatus) {
        // The resourceVersion makes this a compare-and-swap: a stale decision
        // fails with a conflict and the newer pod triggers the next sync.
        let patch =
            json!({ "metadata": { "resourceVersion": pod.resource_version() }, "status": status });
        let result = self
            .pods_api(pod)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        report("updating the status of", pod, result.map(drop));
    }

    fn pods_api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default())
    }
}

/// Logs failures other than the races a later sync resolves by itself.
fn report(action: &str, pod: &Pod, result: kube::Result<()>) {
    match result {
        Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {}
        Err(error) => {
            tracing::warn!(%error, pod = %pod.name_any(), "node simulator: {action} pod failed")
        }
        Ok(()) => {}
    }
}

/// The cluster as the simulator's caches see it at the start of a sync.
struct World {
    pods: HashMap<PodKey, Arc<Pod>>,
    services: HashSet<ServiceKey>,
    slices: Vec<Arc<EndpointSlice>>,
    /// Pods (by UID) whose containers have started and listen.
    listening: HashSet<String>,
}

/// The Service a discovery controller reads, and the port names it keeps.
struct AdminService {
    service: ServiceKey,
    port_names: Vec<String>,
    /// The controller presents a client certificate.
    client_cert: bool,
    /// The controller verifies the Admin API's certificate: None when it
    /// skips that; else whether it dials with a name (SNI, KIC 3.5) rather
    /// than a bare pod IP.
    verifies: Option<bool>,
}

impl World {
    fn observe(
        pods: &Store<Pod>,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        listening: &HashSet<String>,
    ) -> World {
        let key = |meta: &kube::api::ObjectMeta| {
            (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            )
        };
        World {
            pods: pods
                .state()
                .into_iter()
                .map(|p| (key(&p.metadata), p))
                .collect(),
            services: services.state().iter().map(|s| key(&s.metadata)).collect(),
            slices: slices.state(),
            listening: listening.clone(),
        }
    }

    /// What KIC discovers: for each endpoint of the admin Service (not
    /// terminating, backed by a pod, on a kept port) the pod, if it still
    /// exists, and the port. None when the Service does not exist.
    fn admin_apis(&self, admin: &AdminService) -> Option<Vec<(Option<&Pod>, i32)>> {
        if !self.services.contains(&admin.service) {
            return None;
        }
        let (namespace, name) = &admin.service;
        let mut found = Vec::new();
        for slice in &self.slices {
            if slice.metadata.namespace.as_ref() != Some(namespace)
                || slice.labels().get(kong::SERVICE_NAME_LABEL) != Some(name)
            {
                continue;
            }
            let ports = slice.ports.iter().flatten();
            let kept = ports.filter(|p| {
                p.name
                    .as_ref()
                    .is_some_and(|n| admin.port_names.contains(n))
            });
            for port in kept.filter_map(|p| p.port) {
                for endpoint in &slice.endpoints {
                    let terminating =
                        endpoint.conditions.as_ref().and_then(|c| c.terminating) == Some(true);
                    let Some(target) = endpoint
                        .target_ref
                        .as_ref()
                        .filter(|t| t.kind.as_deref() == Some("Pod"))
                    else {
                        continue;
                    };
                    if terminating {
                        continue;
                    }
                    let pod_key = (
                        target
                            .namespace
                            .clone()
                            .unwrap_or_else(|| namespace.clone()),
                        target.name.clone().unwrap_or_default(),
                    );
                    found.push((self.pods.get(&pod_key).map(|p| &**p), port));
                }
            }
        }
        Some(found)
    }

    fn lists_nothing(&self, admin: &AdminService) -> bool {
        self.admin_apis(admin).is_none_or(|apis| apis.is_empty())
    }

    /// Whether every endpoint KIC read at start-up answers now.
    fn all_reachable(&self, listed: &[Listed], admin: &AdminService) -> bool {
        listed.iter().all(|(uid, port)| {
            let pod = uid
                .as_ref()
                .and_then(|u| self.pods.values().find(|p| p.uid().as_ref() == Some(u)));
            pod.is_some_and(|p| self.reachable(p, *port, admin))
        })
    }

    /// Whether KIC, reading `admin`, could reach the pod's Admin API at
    /// `https://<podIP>:<port>`.
    fn reachable(&self, pod: &Pod, port: i32, admin: &AdminService) -> bool {
        pod.metadata.deletion_timestamp.is_none()
            && self.listening.contains(&pod.uid().unwrap_or_default())
            && proxy_container(pod).is_some_and(|c| {
                env(c, "KONG_ADMIN_LISTEN").is_some_and(|l| listens_beyond_loopback(l, port))
                    && (admin.client_cert || !demands_client_certificate(c))
                    && admin
                        .verifies
                        .is_none_or(|sni| sni && serves_own_certificate(c))
            })
    }
}

/// The path of the proxy container's readinessProbe, as the rule needs it.
enum Probe {
    /// `/status/ready`: 200 once a configuration is loaded (Kong ≥ 3.3).
    StatusReady,
    /// `/status`, another path, or no probe: 200 once Kong runs.
    Running,
}

impl Probe {
    fn of(container: &Container) -> Probe {
        let path = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref());
        match path {
            Some("/status/ready") => Probe::StatusReady,
            _ => Probe::Running,
        }
    }

    fn ready(&self, kong: Option<Version>, configured: bool) -> bool {
        match self {
            Probe::Running => true,
            // The endpoint came with Kong 3.3; before, it is a 404.
            Probe::StatusReady => configured && kong.is_none_or(|v| v >= KONG_STATUS_READY),
        }
    }
}

const KONG_STATUS_READY: Version = Version {
    major: 3,
    minor: 3,
    patch: 0,
};

fn version(major: u32, minor: u32, patch: u32) -> Version {
    Version {
        major,
        minor,
        patch,
    }
}

/// KIC 3.4.0–3.4.3 try an unreachable endpoint once at start-up.
fn exits_on_first_unreachable(kic: Option<Version>) -> bool {
    kic.is_some_and(|v| v >= version(3, 4, 0) && v <= version(3, 4, 3))
}

/// KIC 3.4.4 and later give up on an admin Service without endpoints.
fn exits_when_no_endpoints(kic: Option<Version>) -> bool {
    kic.is_none_or(|v| v >= version(3, 4, 4))
}

/// `--kong-admin-svc-port-names`'s default: 2.x also keeps the HTTP names.
fn default_admin_port_names(kic: Option<Version>) -> &'static str {
    match kic {
        Some(v) if v.major < 3 => "admin,admin-tls,kong-admin,kong-admin-tls",
        _ => "admin-tls,kong-admin-tls",
    }
}

enum Role {
    Gateway {
        /// The sidecar's election ID, when it has the sidecar.
        sidecar: Option<String>,
        /// Reads its configuration from a database.
        db: bool,
        probe: Probe,
        kong: Option<Version>,
    },
    /// `admin` is None when `CONTROLLER_KONG_ADMIN_SVC` is not `namespace/name`
    /// (KIC refuses to start then).
    Controller {
        container: String,
        admin: Option<AdminService>,
        kic: Option<Version>,
        election: String,
    },
    Other,
}

fn election_id(container: &Container) -> String {
    env(container, kong::ENV_CONTROLLER_ELECTION_ID)
        .unwrap_or(kong::DEFAULT_ELECTION_ID)
        .to_string()
}

fn role(pod: &Pod) -> Role {
    let containers = containers(pod);
    if let Some(proxy) = proxy_container(pod) {
        let sidecar = containers.iter().find(|c| c.name == "ingress-controller");
        return Role::Gateway {
            sidecar: sidecar.map(election_id),
            // Unset means Kong's default, postgres (not the chart's "off").
            db: env(proxy, "KONG_DATABASE").is_none_or(|db| db != "off"),
            probe: Probe::of(proxy),
            kong: proxy.image.as_deref().and_then(kong::image_version),
        };
    }
    for container in containers {
        if let Some(service) = env(container, "CONTROLLER_KONG_ADMIN_SVC") {
            let kic = container.image.as_deref().and_then(kong::image_version);
            let port_names = env(container, "CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES")
                .unwrap_or(default_admin_port_names(kic));
            let admin = service
                .split_once('/')
                .map(|(namespace, name)| AdminService {
                    service: (namespace.to_string(), name.to_string()),
                    port_names: port_names
                        .split(',')
                        .map(|n| n.trim().to_string())
                        .collect(),
                    client_cert: presents_client_certificate(container),
                    verifies: env(container, kong::ENV_CONTROLLER_ADMIN_TLS_SKIP_VERIFY)
                        .is_none_or(|v| !kong::parses_true(v))
                        .then(|| kic.is_none_or(|v| v >= kong::MIN_KIC_ADMIN_SNI)),
                });
            return Role::Controller {
                container: container.name.clone(),
                admin,
                kic,
                election: election_id(container),
            };
        }
    }
    Role::Other
}

fn containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn proxy_container(pod: &Pod) -> Option<&Container> {
    containers(pod)
        .iter()
        .find(|c| c.name == "proxy" && c.image.as_deref().is_some_and(|i| i.contains("kong")))
}

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

/// The Admin API serves a certificate of the user's own (assumed made for
/// the name KIC 3.5 dials), not Kong's self-signed default.
fn serves_own_certificate(proxy: &Container) -> bool {
    env(proxy, kong::ENV_ADMIN_SSL_CERT).is_some()
}

/// Kong's Admin API demands a client certificate (the chart's
/// `admin.tls.client.*`): nginx's `ssl_verify_client on`.
fn demands_client_certificate(proxy: &Container) -> bool {
    env(proxy, kong::ENV_ADMIN_SSL_VERIFY_CLIENT).is_some_and(|v| v == "on")
}

/// KIC presents a client certificate (the chart's
/// `ingressController.adminApi.tls.client.enabled`): both files set.
fn presents_client_certificate(controller: &Container) -> bool {
    env(controller, kong::ENV_CONTROLLER_TLS_CLIENT_CERT_FILE).is_some()
        && env(controller, kong::ENV_CONTROLLER_TLS_CLIENT_KEY_FILE).is_some()
}

fn image_pull_fails(pod: &Pod) -> bool {
    containers(pod).iter().any(unpullable)
}

fn unpullable(container: &Container) -> bool {
    container
        .image
        .as_deref()
        .is_some_and(|i| i.contains(UNPULLABLE))
}

/// Parses Kong's `admin_listen` (`addr:port [flags]` entries, comma-separated).
fn listens_beyond_loopback(listen: &str, port: i32) -> bool {
    listen.split(',').any(|entry| {
        let mut words = entry.split_whitespace();
        let Some((host, entry_port)) = words.next().and_then(|a| a.rsplit_once(':')) else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        !loopback && entry_port.parse() == Ok(port) && words.any(|flag| flag == "ssl")
    })
}

fn next_pod_ip() -> String {
    // Process-wide, so simulators sharing a control plane never hand out the same IP.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("10.244.{}.{}", n / 250 % 256, n % 250 + 2)
}

/// The status a kubelet would report. Conditions and container statuses
/// that keep their meaning are carried over unchanged, so a pod already in
/// its desired state compares equal and is not written again.
/// `ip`: none while the sandbox is being created. `restarted`: the container
/// that exited just now; `backing_off`: the one waiting out its
/// CrashLoopBackOff before it runs again. `starting`: the containers
/// are still being created (the start-up time), so none reports `started`
/// and nothing listens yet.
fn desired_status(
    pod: &Pod,
    ip: Option<&str>,
    ready: bool,
    restarted: Option<&str>,
    backing_off: Option<&str>,
    starting: bool,
) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let start_time = old.start_time.clone().unwrap_or_else(|| now.clone());
    let conditions = [
        ("PodReadyToStartContainers", ip.is_some()),
        ("Initialized", true),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodScheduled", true),
    ]
    .map(|(type_, ok)| {
        let status = if ok { "True" } else { "False" };
        let kept = old
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == status);
        kept.cloned().unwrap_or_else(|| PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            last_transition_time: Some(now.clone()),
            ..Default::default()
        })
    });
    let container_statuses = containers(pod)
        .iter()
        .map(|c| {
            let previous = old
                .container_statuses
                .iter()
                .flatten()
                .find(|s| s.name == c.name);
            if starting && !unpullable(c) {
                return creating(c, previous);
            }
            container_status(
                pod,
                c,
                previous,
                ready,
                Exit {
                    now: restarted == Some(c.name.as_str()),
                    backing_off: backing_off == Some(c.name.as_str()),
                },
                &start_time,
                &now,
            )
        })
        .collect();
    PodStatus {
        phase: Some(
            if image_pull_fails(pod) || ip.is_none() {
                "Pending"
            } else {
                "Running"
            }
            .to_string(),
        ),
        host_ip: Some(NODE_IP.to_string()),
        host_ips: Some(vec![HostIP {
            ip: NODE_IP.to_string(),
        }]),
        pod_ip: ip.map(str::to_string),
        pod_ips: ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(start_time),
        conditions: Some(conditions.to_vec()),
        container_statuses: Some(container_statuses),
        ..old
    }
}

/// A pod's start-up time: [`STARTUP_ANNOTATION`] in milliseconds, else the
/// node's. Kong starts slower than KIC, and the order of the two matters.
fn startup(pod: &Pod, timing: Timing) -> Duration {
    pod.annotations()
        .get(STARTUP_ANNOTATION)
        .and_then(|ms| ms.parse().ok())
        .map_or(timing.startup, Duration::from_millis)
}

/// A container's exits as kubelet sees them.
#[derive(Clone, Copy)]
struct Exit {
    /// It exited just now.
    now: bool,
    /// It waits out its CrashLoopBackOff before running again.
    backing_off: bool,
}

/// A container still being created: not started, listening on nothing.
fn creating(container: &Container, previous: Option<&ContainerStatus>) -> ContainerStatus {
    if let Some(previous) =
        previous.filter(|s| s.state.as_ref().and_then(|s| s.waiting.as_ref()).is_some())
    {
        return previous.clone();
    }
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".to_string()),
                message: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_status(
    pod: &Pod,
    container: &Container,
    previous: Option<&ContainerStatus>,
    ready: bool,
    exit: Exit,
    pod_started: &Time,
    now: &Time,
) -> ContainerStatus {
    let Exit {
        now: restarted,
        backing_off,
    } = exit;
    let image = container.image.clone().unwrap_or_default();
    let waiting = |s: &ContainerStatus| s.state.as_ref().and_then(|s| s.waiting.as_ref()).is_some();
    if unpullable(container) {
        if let Some(previous) = previous.filter(|s| waiting(s)) {
            return previous.clone();
        }
        return ContainerStatus {
            name: container.name.clone(),
            image: image.clone(),
            started: Some(false),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ErrImagePull".to_string()),
                    message: Some(format!("failed to pull image \"{image}\": not found")),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
    }
    let running_since =
        previous.and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone());
    if let Some(previous) = previous
        && !restarted
        && !backing_off
        && previous.ready == ready
        && running_since.is_some()
    {
        return previous.clone();
    }
    let restarts = previous.map_or(0, |s| s.restart_count) + i32::from(restarted);
    let last_state = if restarted {
        Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                reason: Some("Error".to_string()),
                finished_at: Some(now.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        previous.and_then(|s| s.last_state.clone())
    };
    let container_id = Some(format!(
        "simulated://{}/{}",
        pod.uid().unwrap_or_default(),
        container.name
    ));
    if backing_off {
        return ContainerStatus {
            name: container.name.clone(),
            image: image.clone(),
            image_id: format!("{image}@simulated"),
            container_id,
            ready: false,
            restart_count: restarts,
            started: Some(false),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".to_string()),
                    message: Some(format!(
                        "back-off restarting failed container {}",
                        container.name
                    )),
                }),
                ..Default::default()
            }),
            last_state,
            ..Default::default()
        };
    }
    let backed_off = previous.is_some_and(|s| {
        let reason = s
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref()?.reason.as_deref());
        reason == Some("CrashLoopBackOff")
    });
    let started_at = if restarted || backed_off {
        now.clone()
    } else {
        running_since.unwrap_or_else(|| pod_started.clone())
    };
    ContainerStatus {
        name: container.name.clone(),
        image: image.clone(),
        image_id: format!("{image}@simulated"),
        container_id,
        ready,
        restart_count: restarts,
        started: Some(true),
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at),
            }),
            ..Default::default()
        }),
        last_state,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_demanding_a_client_certificate_is_unreachable_without_one() {
        let env_of = |vars: &[(&str, &str)]| {
            Some(
                vars.iter()
                    .map(|(n, v)| k8s_openapi::api::core::v1::EnvVar {
                        name: n.to_string(),
                        value: Some(v.to_string()),
                        value_from: None,
                    })
                    .collect(),
            )
        };
        let listen = ("KONG_ADMIN_LISTEN", "0.0.0.0:8444 http2 ssl");
        let gateway = |vars: &[(&str, &str)]| {
            let mut pod = Pod::default();
            pod.metadata.uid = Some("gw".into());
            pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![Container {
                    name: "proxy".into(),
                    image: Some("kong:3.9".into()),
                    env: env_of(vars),
                    ..Default::default()
                }],
                ..Default::default()
            });
            pod
        };
        let controller = |vars: &[(&str, &str)]| {
            let c = Container {
                name: "ingress-controller".into(),
                env: env_of(vars),
                ..Default::default()
            };
            AdminService {
                service: ("kong".into(), "kong-kong-admin".into()),
                port_names: vec!["kong-admin-tls".into()],
                client_cert: presents_client_certificate(&c),
                verifies: None,
            }
        };
        let world = World {
            pods: HashMap::new(),
            services: HashSet::new(),
            slices: Vec::new(),
            listening: HashSet::from(["gw".to_string()]),
        };
        let demanding = gateway(&[listen, ("KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT", "on")]);
        let open = gateway(&[listen]);
        let cert = [
            (
                "CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE",
                "/etc/secrets/admin-api-cert/tls.crt",
            ),
            (
                "CONTROLLER_KONG_ADMIN_TLS_CLIENT_KEY_FILE",
                "/etc/secrets/admin-api-cert/tls.key",
            ),
        ];
        let cases = [
            (&demanding, controller(&[]), false),
            (&demanding, controller(&cert[..1]), false),
            (&demanding, controller(&cert), true),
            (&open, controller(&[]), true),
            (&open, controller(&cert), true),
        ];
        for (i, (pod, admin, reachable)) in cases.iter().enumerate() {
            assert_eq!(world.reachable(pod, 8444, admin), *reachable, "case {i}");
        }
    }

    #[test]
    fn a_verified_admin_certificate_must_name_what_kic_dials() {
        let gateway = |own_certificate: bool| {
            let mut env = vec![("KONG_ADMIN_LISTEN", "0.0.0.0:8444 http2 ssl")];
            if own_certificate {
                env.push(("KONG_ADMIN_SSL_CERT", "/etc/admin-tls/tls.crt"));
            }
            let mut pod: Pod = serde_json::from_value(json!({
                "metadata": { "uid": "gw" },
                "spec": { "containers": [{
                    "name": "proxy",
                    "image": "kong:3.9",
                    "env": env.iter().map(|(n, v)| json!({ "name": n, "value": v })).collect::<Vec<_>>(),
                }] },
            }))
            .expect("pod");
            pod.metadata.uid = Some("gw".into());
            pod
        };
        let admin = |verifies| AdminService {
            service: ("kong".into(), "kong-kong-admin".into()),
            port_names: vec!["kong-admin-tls".into()],
            client_cert: false,
            verifies,
        };
        let world = World {
            pods: HashMap::new(),
            services: HashSet::new(),
            slices: Vec::new(),
            listening: HashSet::from(["gw".to_string()]),
        };
        // (verifies: None = skip-verify, Some(sni)), own certificate, reachable
        let cases = [
            (None, false, true),
            (Some(false), true, false),
            (Some(false), false, false),
            (Some(true), false, false),
            (Some(true), true, true),
        ];
        for (verifies, own, reachable) in cases {
            assert_eq!(
                world.reachable(&gateway(own), 8444, &admin(verifies)),
                reachable,
                "{verifies:?}, own certificate: {own}"
            );
        }
    }

    #[test]
    fn admin_listen_reachability() {
        assert!(!listens_beyond_loopback(
            "127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl",
            8444
        ));
        assert!(listens_beyond_loopback(
            "0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl",
            8444
        ));
        assert!(!listens_beyond_loopback("0.0.0.0:8444 http2 ssl", 8001));
        assert!(!listens_beyond_loopback("0.0.0.0:8001", 8001));
        assert!(!listens_beyond_loopback("off", 8444));
        assert!(!listens_beyond_loopback("localhost:8444 ssl", 8444));
    }
}
