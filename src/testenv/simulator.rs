//! The node simulator: plays kubelet for the pods on one Node, and plays Kong
//! and KIC to decide their readiness, by the rules of DESIGN.md ("Testing
//! against a real control plane"):
//!
//! - A gateway pod (a container `proxy` running a `kong` image) with the
//!   `ingress-controller` sidecar is Ready by itself, as is one in DB mode
//!   (`KONG_DATABASE` other than `off`; unset means Kong's default, postgres).
//! - A DB-less gateway pod without the sidecar is Ready once a Ready discovery
//!   controller's admin Service lists it with a reachable Admin API; it stays
//!   Ready after that, as Kong keeps its configuration in memory.
//! - A discovery controller (a container with `CONTROLLER_KONG_ADMIN_SVC`) is
//!   Ready when its admin Service exists and lists at least one Admin API on a
//!   port named in `CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES`, and every one listed
//!   is reachable: not a loopback-only `KONG_ADMIN_LISTEN`, TLS, that port.
//!   Until then it "exits" every [`RESTART_PERIOD`]. KIC checks this only at
//!   start-up, so once Ready it stays Ready.
//! - Any other pod is Ready by itself. An image containing `invalid` never
//!   pulls. Pods being deleted turn not Ready and are then deleted for good.
//!
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

use crate::kong;

/// How often a discovery controller that cannot start exits and restarts.
const RESTART_PERIOD: Duration = Duration::from_secs(1);
const NODE_IP: &str = "10.0.0.10";
const FIELD_MANAGER: &str = "node-simulator";
/// KIC 3.x's default for `--kong-admin-svc-port-names`.
const DEFAULT_ADMIN_PORT_NAMES: &str = "admin-tls,kong-admin-tls";
const UNPULLABLE: &str = "invalid";

/// Namespace and name of a Service.
type ServiceKey = (String, String);

pub struct NodeSimulator {
    timelines: Arc<Timelines>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeSimulator {
    /// Simulates node `sim-node` for the pods of every namespace. It must be
    /// the only simulator on the cluster: two would race to bind the same pods.
    pub async fn start(client: Client) -> anyhow::Result<NodeSimulator> {
        Self::run(client, None, Duration::ZERO).await
    }

    /// Like [`NodeSimulator::start`] (or, with `namespace`,
    /// [`NodeSimulator::start_in_namespace`]), but no container turns Ready
    /// until `startup` has passed since its pod was bound: Kong and KIC take
    /// seconds to start, and traffic waits that long for a replaced pod.
    pub async fn start_with_startup(
        client: Client,
        namespace: Option<&str>,
        startup: Duration,
    ) -> anyhow::Result<NodeSimulator> {
        Self::run(client, namespace, startup).await
    }

    /// Simulates node `sim-<namespace>` for the pods of one namespace, so
    /// tests sharing a control plane can each run their own. It sees only
    /// that namespace's Services and EndpointSlices, so a controller's admin
    /// Service must live there too.
    pub async fn start_in_namespace(
        client: Client,
        namespace: &str,
    ) -> anyhow::Result<NodeSimulator> {
        Self::run(client, Some(namespace), Duration::ZERO).await
    }

    async fn run(
        client: Client,
        namespace: Option<&str>,
        startup: Duration,
    ) -> anyhow::Result<NodeSimulator> {
        let node = namespace.map_or_else(|| "sim-node".to_string(), |ns| format!("sim-{ns}"));
        register_node(&client, &node).await?;
        let wake = Arc::new(Notify::new());
        let timelines = Arc::new(Timelines {
            by_service: Mutex::default(),
            changed: watch::Sender::new(()),
        });
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
                    startup,
                    started: HashMap::new(),
                    crashing_since: HashMap::new(),
                }
                .run(wake),
            ),
        ];
        Ok(NodeSimulator { timelines, tasks })
    }

    /// Each change of the number of ready endpoints of the Service (ready,
    /// not terminating, counted across its EndpointSlices), with its time.
    pub fn timeline(&self, namespace: &str, service: &str) -> Vec<(Instant, usize)> {
        self.timelines.get(namespace, service)
    }

    pub fn ready_endpoints(&self, namespace: &str, service: &str) -> usize {
        self.timeline(namespace, service)
            .last()
            .map_or(0, |&(_, n)| n)
    }

    /// Time the Service spent without a ready endpoint since it first had one,
    /// up to now.
    pub fn downtime(&self, namespace: &str, service: &str) -> Duration {
        let mut total = Duration::ZERO;
        let mut down_since = None;
        let mut was_up = false;
        for (at, ready) in self.timeline(namespace, service) {
            if ready > 0 {
                was_up = true;
                if let Some(since) = down_since.take() {
                    total += at - since;
                }
            } else if was_up && down_since.is_none() {
                down_since = Some(at);
            }
        }
        total + down_since.map_or(Duration::ZERO, |since| since.elapsed())
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

struct Timelines {
    by_service: Mutex<HashMap<ServiceKey, Vec<(Instant, usize)>>>,
    changed: watch::Sender<()>,
}

impl Timelines {
    fn get(&self, namespace: &str, service: &str) -> Vec<(Instant, usize)> {
        let by_service = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_service
            .get(&(namespace.to_string(), service.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn record(&self, slices: &[Arc<EndpointSlice>]) {
        let now = Instant::now();
        let mut ready: HashMap<ServiceKey, HashSet<&str>> = HashMap::new();
        for slice in slices {
            let (Some(namespace), Some(service)) = (
                &slice.metadata.namespace,
                slice.labels().get(kong::SERVICE_NAME_LABEL),
            ) else {
                continue;
            };
            let addresses = ready
                .entry((namespace.clone(), service.clone()))
                .or_default();
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.as_ref();
                if conditions.and_then(|c| c.ready) == Some(true)
                    && conditions.and_then(|c| c.terminating) != Some(true)
                {
                    addresses.extend(endpoint.addresses.iter().map(String::as_str));
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
        for (key, addresses) in ready {
            let timeline = by_service.entry(key).or_default();
            if timeline.last().map(|&(_, n)| n) != Some(addresses.len()) {
                timeline.push((now, addresses.len()));
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
    /// How long a pod's containers take to start (see
    /// [`NodeSimulator::start_with_startup`]).
    startup: Duration,
    /// When each bound pod (by UID) was first seen on this node.
    started: HashMap<String, Instant>,
    /// When each crash-looping controller pod (by UID) last (re)started.
    crashing_since: HashMap<String, Instant>,
}

impl Kubelet {
    async fn run(mut self, wake: Arc<Notify>) {
        // Deciding on half-filled caches would, say, take an admin Service for missing.
        let _ = self.pods.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        loop {
            match self.sync().await {
                Some(restart_in) => {
                    let _ = tokio::time::timeout(restart_in, wake.notified()).await;
                }
                None => wake.notified().await,
            }
        }
    }

    /// Brings every pod of this node to the state the rules give it; returns
    /// when a crash-looping controller restarts or a pod finishes starting
    /// next, if one does.
    async fn sync(&mut self) -> Option<Duration> {
        let world = World::observe(&self.pods, &self.services, &self.slices);
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
        let is_live = |uid: &String| live.iter().any(|p| p.uid().as_deref() == Some(uid));
        self.crashing_since.retain(|uid, _| is_live(uid));
        self.started.retain(|uid, _| is_live(uid));

        let now = Instant::now();
        let mut next_restart: Option<Duration> = None;
        let mut starting = HashSet::new();
        for pod in &live {
            let uid = pod.uid().unwrap_or_default();
            let since = *self.started.entry(uid.clone()).or_insert(now);
            let left = self.startup.saturating_sub(now - since);
            if !left.is_zero() {
                starting.insert(uid);
                next_restart = Some(next_restart.map_or(left, |n| n.min(left)));
            }
        }
        let starting = |pod: &Pod| starting.contains(&pod.uid().unwrap_or_default());

        // Controllers first: a gateway turns Ready through a Ready controller.
        let mut ready_admin_services = Vec::new();
        let mut verdicts = Vec::new();
        for pod in &live {
            let Role::Controller { container, admin } = role(pod) else {
                continue;
            };
            let ready = !image_pull_fails(pod)
                && !starting(pod)
                && (crate::plan::pod_ready(pod)
                    || admin.as_ref().is_some_and(|a| world.discovery_succeeds(a)));
            let mut restarted = None;
            if ready {
                ready_admin_services.extend(admin);
            } else if !image_pull_fails(pod) && !starting(pod) {
                let since = self
                    .crashing_since
                    .entry(pod.uid().unwrap_or_default())
                    .or_insert(now);
                let mut wait = RESTART_PERIOD.saturating_sub(now - *since);
                if wait.is_zero() {
                    *since = now;
                    wait = RESTART_PERIOD;
                    restarted = Some(container);
                }
                next_restart = Some(next_restart.map_or(wait, |n| n.min(wait)));
            }
            verdicts.push((pod, ready, restarted));
        }
        for pod in &live {
            let ready = match role(pod) {
                Role::Controller { .. } => continue,
                _ if image_pull_fails(pod) || starting(pod) => false,
                Role::Gateway {
                    self_configured: true,
                } => true,
                Role::Gateway {
                    self_configured: false,
                } => {
                    crate::plan::pod_ready(pod)
                        || ready_admin_services
                            .iter()
                            .any(|a| world.configures(a, pod))
                }
                Role::Other => true,
            };
            verdicts.push((pod, ready, None));
        }

        for (pod, ready, restarted) in verdicts {
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_else(next_pod_ip);
            let status = desired_status(pod, &ip, ready, restarted.as_deref());
            if pod.status.as_ref() != Some(&status) {
                self.write_status(pod, status).await;
            }
        }
        next_restart
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
            self.write_status(pod, desired_status(pod, ip, false, None))
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
    pods: HashMap<(String, String), Arc<Pod>>,
    services: HashSet<ServiceKey>,
    slices: Vec<Arc<EndpointSlice>>,
}

/// The Service a discovery controller reads, and the port names it keeps.
struct AdminService {
    service: ServiceKey,
    port_names: Vec<String>,
}

impl World {
    fn observe(
        pods: &Store<Pod>,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
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

    fn discovery_succeeds(&self, admin: &AdminService) -> bool {
        self.admin_apis(admin).is_some_and(|apis| {
            !apis.is_empty()
                && apis
                    .iter()
                    .all(|&(pod, port)| pod.is_some_and(|p| admin_api_reachable(p, port)))
        })
    }

    fn configures(&self, admin: &AdminService, gateway: &Pod) -> bool {
        self.admin_apis(admin)
            .into_iter()
            .flatten()
            .any(|(pod, port)| {
                pod.is_some_and(|p| p.uid() == gateway.uid()) && admin_api_reachable(gateway, port)
            })
    }
}

enum Role {
    /// `self_configured`: has the sidecar or reads its configuration from a database.
    Gateway {
        self_configured: bool,
    },
    /// `admin` is None when `CONTROLLER_KONG_ADMIN_SVC` is not `namespace/name`
    /// (KIC refuses to start then).
    Controller {
        container: String,
        admin: Option<AdminService>,
    },
    Other,
}

fn role(pod: &Pod) -> Role {
    let containers = containers(pod);
    if let Some(proxy) = proxy_container(pod) {
        let sidecar = containers.iter().any(|c| c.name == "ingress-controller");
        let db = env(proxy, "KONG_DATABASE").is_none_or(|db| db != "off");
        return Role::Gateway {
            self_configured: sidecar || db,
        };
    }
    for container in containers {
        if let Some(service) = env(container, "CONTROLLER_KONG_ADMIN_SVC") {
            let port_names = env(container, "CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES")
                .unwrap_or(DEFAULT_ADMIN_PORT_NAMES);
            let admin = service
                .split_once('/')
                .map(|(namespace, name)| AdminService {
                    service: (namespace.to_string(), name.to_string()),
                    port_names: port_names
                        .split(',')
                        .map(|n| n.trim().to_string())
                        .collect(),
                });
            return Role::Controller {
                container: container.name.clone(),
                admin,
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

fn image_pull_fails(pod: &Pod) -> bool {
    containers(pod).iter().any(unpullable)
}

fn unpullable(container: &Container) -> bool {
    container
        .image
        .as_deref()
        .is_some_and(|i| i.contains(UNPULLABLE))
}

/// Whether KIC could reach the pod's Admin API at `https://<podIP>:<port>`.
fn admin_api_reachable(pod: &Pod, port: i32) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !image_pull_fails(pod)
        && proxy_container(pod)
            .and_then(|c| env(c, "KONG_ADMIN_LISTEN"))
            .is_some_and(|listen| listens_beyond_loopback(listen, port))
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
fn desired_status(pod: &Pod, ip: &str, ready: bool, restarted: Option<&str>) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let start_time = old.start_time.clone().unwrap_or_else(|| now.clone());
    let conditions = [
        ("PodReadyToStartContainers", true),
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
            container_status(
                pod,
                c,
                previous,
                ready,
                restarted == Some(c.name.as_str()),
                &start_time,
                &now,
            )
        })
        .collect();
    PodStatus {
        phase: Some(
            if image_pull_fails(pod) {
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
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(start_time),
        conditions: Some(conditions.to_vec()),
        container_statuses: Some(container_statuses),
        ..old
    }
}

fn container_status(
    pod: &Pod,
    container: &Container,
    previous: Option<&ContainerStatus>,
    ready: bool,
    restarted: bool,
    pod_started: &Time,
    now: &Time,
) -> ContainerStatus {
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
    let started_at = if restarted {
        now.clone()
    } else {
        running_since.unwrap_or_else(|| pod_started.clone())
    };
    ContainerStatus {
        name: container.name.clone(),
        image: image.clone(),
        image_id: format!("{image}@simulated"),
        container_id: Some(format!(
            "simulated://{}/{}",
            pod.uid().unwrap_or_default(),
            container.name
        )),
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
    use super::listens_beyond_loopback;

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
