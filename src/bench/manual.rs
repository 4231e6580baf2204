//! Kong's documented manual migration ("Migrating to Gateway Discovery" on
//! KIC's sidecar topology page), replayed step by step on the same
//! installation the operator migrates, so the two can be set side by side:
//!
//! 1. `helm upgrade` the release with `ingressController.enabled: false` and
//!    a headless admin Service (`admin.enabled`, `clusterIP: None`). The new
//!    proxy pod "won't come online": it has no configuration.
//! 2. `helm install controller` with `gatewayDiscovery.enabled` and
//!    `deployment.kong.enabled: false`, pointing at that admin Service. Its
//!    pod does not come online either: the admin Service lists the old pod,
//!    whose Admin API listens on localhost only.
//! 3. Find the pod with two containers (2/2 Running) and `kubectl delete` it.
//!
//! Step 3 is repeated for as long as a Ready 2/2 pod shows up: the rolling
//! update still wants the old ReplicaSet (maxUnavailable 0 of 1 replica), so
//! it replaces the deleted pod, and the controller starts only if it restarts
//! (after its 60 s of retries and a CrashLoopBackOff) at a moment when no
//! sidecar pod is listed: between a delete and the replacement's IP. The
//! replay acts as soon as its watches see the state a step waits for, faster
//! than anyone reading `kubectl get pods`, which favours the manual
//! procedure. Whether it ever lands in that gap is luck, so step 3 gives up
//! after a deadline and the run counts as not done.
//!
//! Only what the chart renders differently matters here, so the objects are
//! derived from the live install: the gateway rendering differs from the
//! sidecar one as `plan::migrate_template` has it (less the operator's
//! discovery label and its move of a `/status` probe to `/status/ready`), and the controller release runs the sidecar's container
//! with `CONTROLLER_KONG_ADMIN_SVC` instead of `CONTROLLER_KONG_ADMIN_URL`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use serde_json::json;

use super::observe::Observer;
use crate::api::{DISCOVERY_LABEL, SidecarMigrationSpec};
use crate::kong;

const PROXY: &str = "kong-kong";
const ADMIN_SERVICE: &str = "kong-kong-admin";
const CONTROLLER: &str = "controller-kong";
const HELM: &str = "helm";
/// Steps 1 and 2 wait for pods to be created, which takes seconds.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Replay {
    /// `kubectl delete pod` commands step 3 took.
    pub deletes: usize,
    /// Whether the procedure finished before `give_up`.
    pub done: bool,
}

/// Runs the three steps in `ns`, where the fixture is installed and rolled
/// out, and returns once no sidecar pod is left, the proxy Deployment has
/// rolled out and the controller is Available, or once step 3 has gone on
/// for `give_up`.
pub async fn replay(client: &Client, ns: &str, give_up: Duration) -> anyhow::Result<Replay> {
    let mut seen = Observer::new(client, ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let spec: SidecarMigrationSpec = serde_json::from_value(json!({ "proxyDeployment": PROXY }))?;

    // 1. helm upgrade kong kong/kong -f values.yaml
    let live = deployments.get(PROXY).await?;
    let mut gateway = crate::plan::migrate_template(&live, &spec);
    if let Some(labels) = gateway
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.labels.as_mut())
    {
        labels.remove(DISCOVERY_LABEL);
    }
    // The chart renders the probe it always did; only the operator moves a
    // `/status` probe to `/status/ready`.
    keep_readiness_probe(&live, &mut gateway);
    deployments
        .replace(PROXY, &PostParams::default(), &gateway)
        .await?;
    let selector = crate::plan::selector_labels(&live);
    let admin: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": ADMIN_SERVICE, "labels": selector },
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{
                "name": kong::ADMIN_SERVICE_PORT_NAME,
                "port": kong::ADMIN_PORT,
                "targetPort": kong::ADMIN_PORT,
                "protocol": "TCP",
            }],
        },
    }))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(
            ADMIN_SERVICE,
            &PatchParams::apply(HELM),
            &Patch::Apply(&admin),
        )
        .await?;
    // "The new Proxy Pod won't come online."
    until(&mut seen, "a new proxy pod has an IP", |s| {
        s.gateway_pods().iter().any(|p| has_ip(p))
    })
    .await?;

    // 2. helm install controller kong/kong -f values-controller.yaml
    let controller = controller_release(&live, ns)?;
    deployments
        .patch(
            CONTROLLER,
            &PatchParams::apply(HELM),
            &Patch::Apply(&controller),
        )
        .await?;
    // "The new Pods do not come online as the controller can't access the
    // Admin API for the original Proxy Pod."
    until(&mut seen, "the controller pod has an IP", |s| {
        s.pods.state().iter().any(|p| {
            p.labels()
                .get("app.kubernetes.io/instance")
                .map(String::as_str)
                == Some("controller")
                && has_ip(p)
        })
    })
    .await?;

    // 3. kubectl delete pod <the 2/2 pod>, as often as one shows up.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut deleted = HashSet::new();
    let deadline = Instant::now() + give_up;
    loop {
        let legacy = seen.legacy_pods();
        let done = legacy.is_empty()
            && seen
                .deployment(PROXY)
                .is_some_and(|d| crate::plan::rollout_complete(&d))
            && seen
                .deployment(CONTROLLER)
                .is_some_and(|d| crate::plan::deployment_available(&d));
        if done || Instant::now() >= deadline {
            return Ok(Replay {
                deletes: deleted.len(),
                done,
            });
        }
        for pod in legacy {
            let running = pod.metadata.deletion_timestamp.is_none() && crate::plan::pod_ready(&pod);
            if running && deleted.insert(pod.uid().unwrap_or_default()) {
                match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // Nothing changing until the deadline is one way of not finishing.
        if let Err(e) = seen.changed(left).await
            && Instant::now() < deadline
        {
            return Err(e.context(format!("{ns}: step 3 of the manual procedure")));
        }
    }
}

/// The Deployment of the chart's `controller` release: the sidecar's
/// container alone, discovering gateways through the admin Service.
fn controller_release(proxy: &Deployment, ns: &str) -> anyhow::Result<Deployment> {
    let mut pod = proxy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .context("the proxy Deployment has no pod template")?;
    pod.init_containers = None;
    pod.containers.retain(|c| c.name == "ingress-controller");
    let container = pod
        .containers
        .first_mut()
        .context("the proxy Deployment has no ingress-controller container")?;
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != kong::ENV_CONTROLLER_ADMIN_URL);
    env.push(serde_json::from_value(json!({
        "name": kong::ENV_CONTROLLER_ADMIN_SVC,
        "value": format!("{ns}/{ADMIN_SERVICE}"),
    }))?);
    let labels = json!({
        "app.kubernetes.io/name": "kong",
        "app.kubernetes.io/instance": "controller",
        "app.kubernetes.io/component": "app",
    });
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": CONTROLLER, "labels": labels },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": labels },
            "template": { "metadata": { "labels": labels }, "spec": pod },
        },
    }))?)
}

fn keep_readiness_probe(live: &Deployment, gateway: &mut Deployment) {
    let probe = crate::plan::template_container(live, "proxy").map(|c| c.readiness_probe.clone());
    let proxy = gateway
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.iter_mut().find(|c| c.name == "proxy"));
    if let (Some(probe), Some(proxy)) = (probe, proxy) {
        proxy.readiness_probe = probe;
    }
}

fn has_ip(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
}

async fn until(
    seen: &mut Observer,
    what: &str,
    done: impl Fn(&Observer) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.changed(left)
            .await
            .with_context(|| format!("waiting until {what}"))?;
    }
    Ok(())
}
