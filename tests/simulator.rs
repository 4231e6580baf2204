//! The test control plane and node simulator behave as the operator's tests
//! rely on: real Deployment rollouts and EndpointSlices, and Kong/KIC
//! readiness by the rules of DESIGN.md.

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde_json::json;
use sidecar_migrator::plan::pod_ready;
use sidecar_migrator::testenv::{self, ControlPlane, NodeSimulator, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const PROXY_SERVICE: &str = "kong-kong-proxy";

struct Env {
    client: Client,
    ns: String,
    sim: NodeSimulator,
}

async fn setup(prefix: &str) -> Env {
    let cp = ControlPlane::shared().await;
    let client = cp
        .client()
        .await
        .expect("a client for the shared control plane");
    let ns = cp.namespace(prefix).await.expect("a test namespace");
    let sim = NodeSimulator::start_in_namespace(client.clone(), &ns)
        .await
        .expect("the node simulator starts");
    Env { client, ns, sim }
}

impl Env {
    async fn install(&self, fixture: &str) {
        testenv::apply_fixture(&self.client, &self.ns, fixture)
            .await
            .expect("the fixture applies");
    }

    async fn apply<K>(&self, object: serde_json::Value) -> K
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("the object has a name")
            .to_string();
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.ns);
        api.patch(
            &name,
            &PatchParams::apply("simulator-test").force(),
            &Patch::Apply(&object),
        )
        .await
        .expect("the object applies")
    }

    async fn pods(&self, selector: &str) -> anyhow::Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(api
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }

    /// The one pod matching `selector` once it satisfies `ok`.
    async fn wait_pod(&self, selector: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
        wait_for(TIMEOUT, what, async || {
            let pods = self.pods(selector).await?;
            Ok(pods.into_iter().find(|p| ok(p)))
        })
        .await
        .expect(what)
    }
}

fn restarts(pod: &Pod) -> i32 {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    statuses
        .into_iter()
        .flatten()
        .map(|s| s.restart_count)
        .sum()
}

fn waiting_reasons(pod: &Pod) -> Vec<String> {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let states = statuses
        .into_iter()
        .flatten()
        .filter_map(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone());
    states.collect()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the pod has an IP")
}

/// The selector the chart's Services use: it matches every pod of the release.
fn chart_labels() -> serde_json::Map<String, serde_json::Value> {
    let labels = [
        ("app.kubernetes.io/name", "kong"),
        ("app.kubernetes.io/instance", "kong"),
        ("app.kubernetes.io/component", "app"),
    ];
    labels
        .iter()
        .map(|&(k, v)| (k.to_string(), json!(v)))
        .collect()
}

fn deployment(
    name: &str,
    labels: serde_json::Value,
    containers: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": labels },
            "template": { "metadata": { "labels": labels }, "spec": { "containers": containers } },
        },
    })
}

/// Kong's documented manual procedure, done naively: a gateway Deployment
/// and a discovery controller next to the sidecar install, with an admin
/// Service that selects the chart's labels and so lists the old sidecar pod.
#[tokio::test]
async fn the_discovery_controller_crash_loops_while_the_sidecar_pod_is_listed() {
    let env = setup("seed").await;
    env.install("sidecar-1-replica.yaml").await;
    env.sim
        .wait_ready_endpoints(&env.ns, PROXY_SERVICE, 1, TIMEOUT)
        .await
        .expect("the sidecar pod serves");

    let mut gateway_labels = chart_labels();
    gateway_labels.insert("topology".into(), json!("gateway-discovery"));
    let gateway = json!([{
        "name": "proxy",
        "image": "kong:3.9",
        "env": [
            { "name": "KONG_DATABASE", "value": "off" },
            { "name": "KONG_ADMIN_LISTEN", "value": "0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl" },
        ],
        "ports": [{ "name": "admin-tls", "containerPort": 8444 }],
        // The chart's probe from 2.26 on: Ready only once configured.
        "readinessProbe": { "httpGet": { "path": "/status/ready", "port": 8100 } },
    }]);
    env.apply::<Deployment>(deployment("kong-gateway", gateway_labels.into(), gateway))
        .await;
    env.apply::<Service>(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "kong-admin" },
        "spec": {
            "clusterIP": "None",
            "selector": chart_labels(),
            "ports": [{ "name": "kong-admin-tls", "port": 8444, "targetPort": 8444 }],
        },
    }))
    .await;
    let controller = json!([{
        "name": "ingress-controller",
        "image": "kong/kubernetes-ingress-controller:3.5",
        "env": [
            { "name": "CONTROLLER_KONG_ADMIN_SVC", "value": format!("{}/kong-admin", env.ns) },
            // As the chart renders it: Kong's self-signed certificate.
            { "name": "CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY", "value": "true" },
        ],
    }]);
    env.apply::<Deployment>(deployment(
        "kong-controller",
        json!({ "app": "kong-controller" }),
        controller,
    ))
    .await;

    // Readiness latches, so a pod not Ready after two restarts never was.
    let crashed = env
        .wait_pod(
            "app=kong-controller",
            "the controller restarting twice",
            |p| restarts(p) >= 2 && !pod_ready(p),
        )
        .await;
    // Its next try has begun (60 s of retries, 3 s here) with the sidecar
    // pod listed.
    let trying = env
        .wait_pod("app=kong-controller", "the controller running again", |p| {
            restarts(p) == restarts(&crashed) && waiting_reasons(p).is_empty()
        })
        .await;
    let gateway = env
        .wait_pod("topology=gateway-discovery", "the gateway pod", |p| {
            p.status.is_some()
        })
        .await;
    assert!(
        !pod_ready(&gateway),
        "no controller configured the gateway pod, yet it is Ready"
    );

    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .delete("kong-kong", &DeleteParams::background())
        .await
        .expect("deleting the sidecar install");
    let ready = env
        .wait_pod(
            "app=kong-controller",
            "the controller Ready once the sidecar pod is gone",
            pod_ready,
        )
        .await;
    assert!(
        restarts(&ready) > restarts(&trying),
        "KIC retries the endpoints it read at start-up, so the try that read \
         the sidecar pod fails even after that pod is gone; only the next one succeeds"
    );
    env.wait_pod(
        "topology=gateway-discovery",
        "the gateway pod Ready once configured",
        pod_ready,
    )
    .await;
    env.sim
        .wait_ready_endpoints(&env.ns, PROXY_SERVICE, 1, TIMEOUT)
        .await
        .expect("the gateway pod serves");
    assert!(
        env.sim.downtime(&env.ns, PROXY_SERVICE) > Duration::ZERO,
        "the manual procedure leaves a moment without a Ready proxy"
    );
}

#[tokio::test]
async fn a_template_change_rolls_the_deployment_out() {
    let env = setup("rollout").await;
    env.install("sidecar-1-replica.yaml").await;
    let old_pod = env
        .wait_pod("app=kong-kong", "the sidecar pod Ready", pod_ready)
        .await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    let old_rs = wait_for(TIMEOUT, "the first ReplicaSet", async || {
        Ok(replica_sets
            .list(&ListParams::default().labels("app=kong-kong"))
            .await?
            .items
            .pop())
    })
    .await
    .expect("the first ReplicaSet");

    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let restart = json!({ "spec": { "template": { "metadata": { "annotations": { "testenv/restart": "1" } } } } });
    deployments
        .patch(
            "kong-kong",
            &PatchParams::default(),
            &Patch::Merge(&restart),
        )
        .await
        .expect("patching the pod template");

    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), &env.ns);
    let slice_selector = format!("kubernetes.io/service-name={PROXY_SERVICE}");
    wait_for(TIMEOUT, "the rollout to replace the pod", async || {
        let sets = replica_sets
            .list(&ListParams::default().labels("app=kong-kong"))
            .await?
            .items;
        let old_scaled_down = sets.iter().any(|rs| {
            rs.uid() == old_rs.uid() && rs.spec.as_ref().and_then(|s| s.replicas) == Some(0)
        });
        let new_rs = sets.iter().any(|rs| rs.uid() != old_rs.uid());
        let pods = env.pods("app=kong-kong").await?;
        let [new_pod] = pods.as_slice() else {
            return Ok(None);
        };
        if !(old_scaled_down && new_rs && new_pod.uid() != old_pod.uid() && pod_ready(new_pod)) {
            return Ok(None);
        }
        let endpoints = slices
            .list(&ListParams::default().labels(&slice_selector))
            .await?
            .items;
        let listed_ready = endpoints.iter().flat_map(|s| &s.endpoints).any(|e| {
            e.addresses.contains(&pod_ip(new_pod))
                && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
        });
        let old_listed = endpoints
            .iter()
            .flat_map(|s| &s.endpoints)
            .any(|e| e.addresses.contains(&pod_ip(&old_pod)));
        Ok((listed_ready && !old_listed).then_some(()))
    })
    .await
    .expect("the rollout completes and the EndpointSlice follows");
}

#[tokio::test]
async fn scaling_to_zero_and_back_records_downtime() {
    let env = setup("downtime").await;
    env.install("sidecar-1-replica.yaml").await;
    env.sim
        .wait_ready_endpoints(&env.ns, PROXY_SERVICE, 1, TIMEOUT)
        .await
        .expect("the proxy serves");
    assert_eq!(env.sim.downtime(&env.ns, PROXY_SERVICE), Duration::ZERO);

    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    for (replicas, ready) in [(0, 0), (1, 1)] {
        let scale = json!({ "spec": { "replicas": replicas } });
        deployments
            .patch("kong-kong", &PatchParams::default(), &Patch::Merge(&scale))
            .await
            .expect("scaling");
        env.sim
            .wait_ready_endpoints(&env.ns, PROXY_SERVICE, ready, TIMEOUT)
            .await
            .expect("the endpoints follow");
    }

    let downtime = env.sim.downtime(&env.ns, PROXY_SERVICE);
    assert!(downtime > Duration::ZERO);
    assert_eq!(
        env.sim.downtime(&env.ns, PROXY_SERVICE),
        downtime,
        "downtime grows only while down"
    );
    let counts: Vec<usize> = env
        .sim
        .timeline(&env.ns, PROXY_SERVICE)
        .iter()
        .map(|&(_, n)| n)
        .collect();
    assert!(counts.ends_with(&[1, 0, 1]), "timeline {counts:?}");
}

#[tokio::test]
async fn with_a_startup_time_pods_turn_ready_that_much_after_binding() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.expect("a client");
    let ns = cp.namespace("startup").await.expect("a test namespace");
    let startup = Duration::from_secs(2);
    let sim = NodeSimulator::start_with_startup(client.clone(), Some(&ns), startup)
        .await
        .expect("the node simulator starts");
    let env = Env { client, ns, sim };
    let app = json!([{ "name": "app", "image": "busybox:1.36" }]);
    env.apply::<Deployment>(deployment("slow", json!({ "app": "slow" }), app))
        .await;

    env.wait_pod("app=slow", "the pod bound, with an IP", |p| {
        p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
    })
    .await;
    let bound = std::time::Instant::now();
    env.wait_pod("app=slow", "the pod Ready", pod_ready).await;
    // The IP and the end of start-up are written by the same simulator, so
    // only the first write's way to this test can eat into the start-up.
    assert!(
        bound.elapsed() >= startup / 2,
        "Ready {:?} after the IP, start-up is {startup:?}",
        bound.elapsed()
    );
}

/// Kong's manual order only works if KIC starts while no sidecar pod is
/// listed: the gap between a deleted pod and its replacement's IP is what it
/// waits for, so a replacement must not be listed the moment it is bound.
#[tokio::test]
async fn a_bound_pod_has_no_ip_until_its_sandbox_is_up() {
    let env = setup("sandbox").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let mut events = watcher::watcher(pods, watcher::Config::default().labels("app=sandboxed"))
        .applied_objects()
        .boxed();
    let app = json!([{ "name": "app", "image": "busybox:1.36" }]);
    env.apply::<Deployment>(deployment("sandboxed", json!({ "app": "sandboxed" }), app))
        .await;

    let condition = |pod: &Pod, type_: &str| {
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    };
    let mut pending = false;
    let got_ip = tokio::time::timeout(TIMEOUT, async {
        while let Some(pod) = events.try_next().await.expect("the pod watch") {
            let has_ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if condition(&pod, "PodReadyToStartContainers").as_deref() == Some("False") {
                assert!(!has_ip, "an IP before the sandbox is up: {:?}", pod.status);
                assert_eq!(phase.as_deref(), Some("Pending"));
                pending = true;
            }
            if has_ip {
                return;
            }
        }
    })
    .await;
    assert!(got_ip.is_ok(), "the pod never got an IP");
    // How long the gap lasts is the simulator's timer; that it exists, and
    // comes first, is what Kong's order depends on.
    assert!(
        pending,
        "the simulator reported the pod bound and without an IP first"
    );
}

#[tokio::test]
async fn an_unpullable_image_never_turns_ready() {
    let env = setup("pull").await;
    let broken = json!([{ "name": "app", "image": "kong:invalid-tag" }]);
    env.apply::<Deployment>(deployment("broken", json!({ "app": "broken" }), broken))
        .await;
    let pod = env
        .wait_pod("app=broken", "ErrImagePull", |p| {
            waiting_reasons(p).contains(&"ErrImagePull".to_string())
        })
        .await;
    assert!(!pod_ready(&pod));
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // A pod created later turning Ready shows the simulator has moved past
    // the broken one without changing its mind.
    let fine = json!([{ "name": "app", "image": "busybox:1.36" }]);
    env.apply::<Deployment>(deployment("fine", json!({ "app": "fine" }), fine))
        .await;
    env.wait_pod("app=fine", "the later pod Ready", pod_ready)
        .await;
    let pod = env.wait_pod("app=broken", "the broken pod", |_| true).await;
    assert!(!pod_ready(&pod) && waiting_reasons(&pod) == ["ErrImagePull"]);
}

#[tokio::test]
async fn every_fixture_installs_and_turns_ready() {
    let fixtures = [
        ("sidecar-1-replica.yaml", 1),
        ("sidecar-3-replicas-pdb.yaml", 3),
        ("sidecar-token-secret.yaml", 1),
        ("sidecar-db-postgres.yaml", 1),
        ("chart-2.52.0-sidecar.yaml", 1),
        ("chart-2.30.0-sidecar.yaml", 1),
    ];
    let installs = fixtures.map(|(fixture, replicas)| async move {
        let env = setup("fixture").await;
        env.install(fixture).await;
        env.sim
            .wait_ready_endpoints(&env.ns, PROXY_SERVICE, replicas, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{fixture}: {e:#}"));
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
        wait_for(
            TIMEOUT,
            &format!("{fixture}: Deployment kong-kong available"),
            async || {
                let status = deployments
                    .get("kong-kong")
                    .await?
                    .status
                    .unwrap_or_default();
                Ok((status.available_replicas == i32::try_from(replicas).ok()).then_some(()))
            },
        )
        .await
        .expect("the Deployment becomes available");
        env
    });
    let envs = futures::future::join_all(installs).await;

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(envs[1].client.clone(), &envs[1].ns);
    wait_for(
        TIMEOUT,
        "the disruption controller to count the healthy pods",
        async || {
            let status = pdbs.get("kong-kong").await?.status.unwrap_or_default();
            Ok((status.current_healthy == 3 && status.disruptions_allowed == 1).then_some(()))
        },
    )
    .await
    .expect("the PodDisruptionBudget allows one disruption");
    let secrets: Api<Secret> = Api::namespaced(envs[2].client.clone(), &envs[2].ns);
    let token = secrets
        .get("kong-admin-token")
        .await
        .expect("the token Secret exists");
    let value = token
        .data
        .and_then(|d| d.get("token").cloned())
        .expect("the Secret holds the token");
    assert_eq!(value.0, b"s3cr3t-admin-token-value");
}

#[tokio::test]
async fn kubectl_talks_to_the_control_plane() {
    let cp = ControlPlane::shared().await;
    let out = cp
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.34.4");
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
}
