//! A migration test's world: its own namespace on the shared control plane,
//! its own node simulator, a Kong sidecar fixture, and the operator running
//! in this process, scoped to that namespace.

#![allow(dead_code)] // each test binary uses its own part of this

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_migrator::api::{DISCOVERY_LABEL, Phase, SidecarMigration, StepState};
use sidecar_migrator::metrics::Metrics;
use sidecar_migrator::plan;
use sidecar_migrator::reconcile::{self, Context, Slots};
use sidecar_migrator::testenv::{
    ControlPlane, NodeSimulator, apply_fixture, apply_fixture_as_helm, wait_for,
};
use tokio::task::JoinHandle;

pub const PROXY: &str = "kong-kong";
pub const PROXY_SERVICE: &str = "kong-kong-proxy";
pub const CONTROLLER: &str = "kong-kong-controller";
pub const SIDECAR: &str = "ingress-controller";
/// Generous for a 2-core machine running several tests at once.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Case {
    pub cp: &'static ControlPlane,
    pub client: Client,
    operator_client: Client,
    pub ns: String,
    pub sim: NodeSimulator,
    operator: Option<JoinHandle<()>>,
    pub metrics: Arc<Metrics>,
}

impl Case {
    /// A namespace with `fixture` installed and serving, and the operator running.
    pub async fn new(fixture: &str) -> Case {
        let mut case = Case::without_operator(fixture).await;
        case.start_operator();
        case
    }

    /// [`Case::new`] on a node whose pods take `startup` to start.
    pub async fn with_startup(fixture: &str, startup: Duration) -> Case {
        let mut case = Case::setup(startup).await;
        apply_fixture(&case.client, &case.ns, fixture)
            .await
            .expect("fixture applies");
        case.wait_rollout(PROXY).await;
        case.start_operator();
        case
    }

    /// A namespace with `fixture` installed as `helm install kong` would
    /// (field manager `helm`, Helm's ownership annotations), and the operator.
    pub async fn installed_by_helm(fixture: &str) -> Case {
        let mut case = Case::setup(Duration::ZERO).await;
        apply_fixture_as_helm(&case.client, &case.ns, fixture, "kong")
            .await
            .expect("fixture applies");
        case.wait_rollout(PROXY).await;
        case.start_operator();
        case
    }

    /// [`Case::installed_by_helm`] without the operator.
    pub async fn installed_by_helm_without_operator(fixture: &str) -> Case {
        let case = Case::setup(Duration::ZERO).await;
        apply_fixture_as_helm(&case.client, &case.ns, fixture, "kong")
            .await
            .expect("fixture applies");
        case.wait_rollout(PROXY).await;
        case
    }

    pub async fn without_operator(fixture: &str) -> Case {
        let case = Case::setup(Duration::ZERO).await;
        apply_fixture(&case.client, &case.ns, fixture)
            .await
            .expect("fixture applies");
        case.wait_rollout(PROXY).await;
        case
    }

    /// The namespace, clients and node simulator (its pods taking `startup`
    /// to start), with nothing installed.
    async fn setup(startup: Duration) -> Case {
        // The operator's logs, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "sidecar_migrator=info".into()),
            )
            .try_init();
        let cp = ControlPlane::shared().await;
        let ns = cp.namespace("mig").await.expect("namespace");
        let client = cp.client().await.expect("client");
        let operator_client =
            reconcile::client(cp.config().await.expect("config")).expect("operator client");
        let sim = NodeSimulator::start_with_startup(client.clone(), Some(&ns), startup)
            .await
            .expect("node simulator");
        Case {
            cp,
            client,
            operator_client,
            ns,
            sim,
            operator: None,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// What the operator's reconciler runs with in this case.
    pub fn context(&self) -> Arc<Context> {
        Arc::new(Context::new(
            self.operator_client.clone(),
            Some("test".into()),
            self.metrics.clone(),
            Slots::new(None),
        ))
    }

    pub fn start_operator(&mut self) {
        self.start_operator_with(self.context());
    }

    /// The operator, running with `ctx` (a test's own client, or a context it
    /// keeps to reconcile with or look into).
    pub fn start_operator_with(&mut self, ctx: Arc<Context>) {
        let run = reconcile::run(ctx, Some(self.ns.clone()), || {});
        self.operator = Some(tokio::spawn(run));
    }

    /// Stops the operator mid-flight, as a crash would.
    pub async fn kill_operator(&mut self) {
        if let Some(task) = self.operator.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn migrations(&self) -> Api<SidecarMigration> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies a SidecarMigration as a user would (server-side apply).
    pub async fn apply(&self, name: &str, spec: Value) -> Result<SidecarMigration, kube::Error> {
        let obj = json!({
            "apiVersion": "sidecar-migrator.dev/v1alpha1",
            "kind": "SidecarMigration",
            "metadata": { "name": name },
            "spec": spec,
        });
        self.migrations()
            .patch(
                name,
                &PatchParams::apply("test-user").force(),
                &Patch::Apply(&obj),
            )
            .await
    }

    /// [`Case::apply`] that must be accepted.
    pub async fn start(&self, name: &str, spec: Value) {
        self.apply(name, spec)
            .await
            .expect("the API server accepts it");
    }

    /// Merges `spec` into the SidecarMigration's spec.
    pub async fn set(&self, name: &str, spec: Value) {
        self.migrations()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .expect("spec patch");
    }

    pub async fn wait_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&SidecarMigration) -> bool,
    ) -> SidecarMigration {
        let api = self.migrations();
        let what = format!("SidecarMigration {}/{name}: {what}", self.ns);
        let last = std::sync::Mutex::new(None);
        let result = wait_for(DEADLINE, &what, async || {
            let m = api.get_opt(name).await?;
            if let Some(m) = &m {
                *last.lock().expect("lock") = m.status.clone();
            }
            Ok(m.filter(|m| check(m)))
        })
        .await;
        match result {
            Ok(m) => m,
            Err(e) => panic!("{e}; last status: {:#?}", last.lock().expect("lock")),
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: Phase) -> SidecarMigration {
        self.wait_until(name, &format!("phase {phase}"), |m| {
            m.status.as_ref().is_some_and(|s| s.phase == phase)
        })
        .await
    }

    /// Waits until the migration has entered `step` (it may be past it: a
    /// short step can end between two polls).
    pub async fn wait_step_started(&self, name: &str, step: Phase) -> SidecarMigration {
        self.wait_until(name, &format!("step {step} started"), |m| {
            m.status.as_ref().is_some_and(|s| {
                s.steps
                    .iter()
                    .any(|st| st.name == step && st.state != StepState::Pending)
            })
        })
        .await
    }

    pub async fn wait_rollout(&self, name: &str) -> Deployment {
        let api = self.deployments();
        wait_for(
            DEADLINE,
            &format!("Deployment {name} rolled out"),
            async || Ok(api.get_opt(name).await?.filter(plan::rollout_complete)),
        )
        .await
        .expect("rollout")
    }

    pub async fn pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels("app.kubernetes.io/instance=kong"))
            .await
            .expect("pods")
            .items
    }

    /// Events about the SidecarMigration `name`, oldest first.
    pub async fn events(&self, name: &str) -> Vec<Event> {
        let mut events: Vec<Event> = Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
    }

    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        self.events(name)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    pub async fn wait_event(&self, name: &str, reason: &str) -> Event {
        let what = format!("event {reason} about {name}");
        let found = wait_for(DEADLINE, &what, async || {
            Ok(self
                .events(name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason)))
        })
        .await;
        match found {
            Ok(event) => event,
            Err(e) => {
                let status = self.migrations().get_opt(name).await.ok().flatten();
                let message = status.and_then(|m| m.status).and_then(|s| s.message);
                panic!(
                    "{e}; events seen: {:?}; status message: {message:?}",
                    self.event_reasons(name).await
                )
            }
        }
    }

    /// Runs kubectl against the control plane and returns its stdout; fails
    /// the test with kubectl's stderr if it fails.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        // Not std's blocking output(): the operator runs on this runtime.
        let out = tokio::process::Command::from(self.cp.kubectl())
            .args(args)
            .output()
            .await
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deletes the SidecarMigration and waits until its finalizer let it go.
    pub async fn delete_and_wait_gone(&self, name: &str) {
        let api = self.migrations();
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        wait_for(
            DEADLINE,
            &format!("SidecarMigration {name} to be gone"),
            async || Ok(api.get_opt(name).await?.is_none().then_some(())),
        )
        .await
        .expect("finalizer removed");
    }

    /// Fails if the API server refused any of the operator's requests: the
    /// reconciler publishes ApiRefused for every refusal, an action's or one
    /// returned through `?` (the status write, the finalizer, a read).
    pub async fn assert_nothing_refused(&self, name: &str) {
        let reasons = self.event_reasons(name).await;
        assert!(
            !reasons.iter().any(|r| r == "ApiRefused"),
            "a write was refused: {reasons:?}"
        );
    }

    /// Every object in the namespace, by `group/Kind/name`, with its
    /// resourceVersion: any write changes it. Events and the migrations
    /// themselves are left out: they are what a refusal writes. So are
    /// EndpointSlices: the control plane's endpointslice controller writes
    /// them some time after a pod turns Ready (a snapshot taken right after
    /// the rollout races it), and the operator may only read them.
    pub async fn snapshot(&self) -> std::collections::BTreeMap<String, String> {
        use kube::api::DynamicObject;
        use kube::discovery::{Discovery, Scope, verbs};
        let discovery = Discovery::new(self.client.clone())
            .run()
            .await
            .expect("discovery");
        let mut out = std::collections::BTreeMap::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope != Scope::Namespaced
                    || !caps.supports_operation(verbs::LIST)
                    || ar.kind == "Event"
                    || ar.kind == "SidecarMigration"
                    || ar.kind == "EndpointSlice"
                {
                    continue;
                }
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &self.ns, &ar);
                for o in api.list(&ListParams::default()).await.expect("list").items {
                    out.insert(
                        format!("{}/{}/{}", ar.group, ar.kind, o.name_any()),
                        o.resource_version().unwrap_or_default(),
                    );
                }
            }
        }
        out
    }

    pub async fn controller_exists(&self) -> bool {
        self.deployments()
            .get_opt(CONTROLLER)
            .await
            .expect("get")
            .is_some()
    }

    /// Gives the proxy Deployment rollout settings of a user's own, none of
    /// them the API server's default, so a restore that fell back to the
    /// defaults, or kept the operator's hold, would not match. Returns them.
    pub async fn set_user_rollout(&self) -> Value {
        let patch = json!({ "spec": {
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxSurge": "50%", "maxUnavailable": 1 },
            },
            "minReadySeconds": 1,
            "progressDeadlineSeconds": 900,
        } });
        self.deployments()
            .patch(PROXY, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("rollout settings");
        rollout_settings(&self.wait_rollout(PROXY).await)
    }

    pub fn downtime_ms(&self) -> u128 {
        self.sim.downtime(&self.ns, PROXY_SERVICE).as_millis()
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if let Some(task) = self.operator.take() {
            task.abort();
        }
    }
}

/// After a migration: no sidecar, a Gateway Discovery controller, every pod
/// Ready and the proxy serving.
pub async fn assert_migrated(case: &Case, replicas: usize) {
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(containers(&proxy), vec!["proxy"]);
    assert_eq!(
        env(&proxy, "proxy", "KONG_ADMIN_LISTEN").as_deref(),
        Some("0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl")
    );
    assert_eq!(env(&proxy, "proxy", "KONG_KIC"), None);
    let controller = case.wait_rollout(CONTROLLER).await;
    assert_eq!(
        env(&controller, SIDECAR, "CONTROLLER_KONG_ADMIN_SVC"),
        Some(format!("{}/kong-kong-admin", case.ns))
    );
    assert_eq!(env(&controller, SIDECAR, "CONTROLLER_KONG_ADMIN_URL"), None);
    let pods = case.pods().await;
    assert_eq!(pods.len(), replicas, "{:?}", names(&pods));
    assert!(
        pods.iter().all(|p| !has_sidecar(p) && is_ready(p)),
        "{:?}",
        names(&pods)
    );
    // EndpointSlices follow pod deletions a moment later.
    case.sim
        .wait_ready_endpoints(&case.ns, PROXY_SERVICE, replicas, DEADLINE)
        .await
        .expect("the proxy Service lists exactly the new pods");
    assert!(proxy.metadata.owner_references.is_none());
    assert!(
        controller.metadata.owner_references.is_none(),
        "outlives the CR"
    );
}

/// The installation is back to the chart's sidecar rendering and serves.
pub async fn assert_rolled_back(case: &Case, replicas: usize) {
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(containers(&proxy), vec![SIDECAR, "proxy"]);
    assert_eq!(
        env(&proxy, "proxy", "KONG_ADMIN_LISTEN").as_deref(),
        Some("127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl")
    );
    assert_eq!(env(&proxy, "proxy", "KONG_KIC").as_deref(), Some("on"));
    let labels = proxy
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!labels.contains_key(DISCOVERY_LABEL));
    assert!(!case.controller_exists().await, "no controller Deployment");
    let admin = Api::<Service>::namespaced(case.client.clone(), &case.ns)
        .get_opt("kong-kong-admin")
        .await
        .expect("get");
    assert!(admin.is_none(), "the admin Service it created is gone");
    let pods = case.pods().await;
    assert_eq!(pods.len(), replicas);
    assert!(pods.iter().all(|p| has_sidecar(p) && is_ready(p)));
    case.sim
        .wait_ready_endpoints(&case.ns, PROXY_SERVICE, replicas, DEADLINE)
        .await
        .expect("the proxy serves");
}

/// Every rollout field the operator holds during a migration (strategy with
/// maxSurge and maxUnavailable, minReadySeconds, progressDeadlineSeconds),
/// as the API server returns them: an unset field is `null`.
pub fn rollout_settings(d: &Deployment) -> Value {
    let spec = d.spec.as_ref();
    json!({
        "strategy": spec.and_then(|s| s.strategy.as_ref()),
        "minReadySeconds": spec.and_then(|s| s.min_ready_seconds),
        "progressDeadlineSeconds": spec.and_then(|s| s.progress_deadline_seconds),
    })
}

pub async fn assert_rollout_restored(case: &Case, before: &Value) {
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(
        &rollout_settings(&proxy),
        before,
        "the user's rollout settings are back as they were"
    );
}

pub fn condition<'a>(m: &'a SidecarMigration, type_: &str) -> (&'a str, &'a str) {
    m.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .unwrap_or(("", ""))
}

pub fn containers(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

pub fn env(d: &Deployment, container: &str, name: &str) -> Option<String> {
    plan::template_container(d, container)?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .map(|e| e.value.clone().unwrap_or_else(|| "<valueFrom>".into()))
}

pub fn has_sidecar(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR))
}

pub fn is_ready(p: &Pod) -> bool {
    plan::pod_ready(p)
}

pub fn names(pods: &[Pod]) -> Vec<String> {
    let mut n: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    n.sort();
    n
}
