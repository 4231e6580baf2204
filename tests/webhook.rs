//! The admission webhook moves without a gap: the chart's webhook Service
//! has a Ready endpoint at every moment of a ZeroDowntime migration and of
//! its rollback (the simulator's timeline of that Service, as for the proxy's
//! downtime), and the ValidatingWebhookConfiguration, which the operator
//! never touches, keeps calling that Service.

mod support;

use std::time::Instant;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde_json::json;
use sidecar_migrator::api::{HANDOFF_LABEL, Phase, WebhookStatus};
use support::*;

const WEBHOOK: &str = "kong-kong-validation-webhook";
const CHART_CONTROLLER: &str = "kong-controller-kong";

/// The Services the install's ValidatingWebhookConfiguration calls.
async fn webhook_targets(case: &Case) -> Vec<(String, String)> {
    let vwc = Api::<ValidatingWebhookConfiguration>::all(case.client.clone())
        .get(&format!("kong-kong-{}-validations", case.ns))
        .await
        .expect("the chart's ValidatingWebhookConfiguration");
    vwc.webhooks
        .iter()
        .flatten()
        .filter_map(|w| w.client_config.service.as_ref())
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect()
}

async fn webhook_service(case: &Case) -> Service {
    Api::<Service>::namespaced(case.client.clone(), &case.ns)
        .get(WEBHOOK)
        .await
        .expect("the webhook Service")
}

/// The pods the webhook Service lists as Ready.
async fn serving_pods(case: &Case) -> Vec<String> {
    let slices = Api::<EndpointSlice>::namespaced(case.client.clone(), &case.ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={WEBHOOK}")))
        .await
        .expect("slices");
    slices
        .items
        .iter()
        .filter(|s| s.ports.as_ref().is_some_and(|p| !p.is_empty()))
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.target_ref.as_ref()?.name.clone())
        .collect()
}

/// Whether the webhook Service ever had no Ready endpoint since `from`
/// (after it first had one).
fn gaps_since(case: &Case, from: Instant) -> Vec<(Instant, usize)> {
    let timeline = case.sim.timeline(&case.ns, WEBHOOK);
    timeline
        .into_iter()
        .skip_while(|&(_, n)| n == 0)
        .filter(|&(at, n)| n == 0 && at >= from)
        .collect()
}

async fn the_webhook_keeps_a_ready_endpoint(cutover: &str) {
    let case = Case::installed_by_helm("chart-2.52.0-sidecar.yaml").await;
    case.sim
        .wait_ready_endpoints(&case.ns, WEBHOOK, 1, DEADLINE)
        .await
        .expect("the sidecar serves the webhook");
    let targets = webhook_targets(&case).await;
    assert!(!targets.is_empty());
    assert!(
        targets
            .iter()
            .all(|t| *t == (case.ns.clone(), WEBHOOK.to_string())),
        "{targets:?}"
    );
    let before = webhook_service(&case).await;
    let start = Instant::now();
    case.start(
        "kong",
        json!({
            "proxyDeployment": PROXY,
            "controller": { "release": "kong-controller" },
            "cutover": cutover,
        }),
    )
    .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    assert_eq!(
        m.status.and_then(|s| s.webhook),
        Some(WebhookStatus {
            service: WEBHOOK.into(),
            served_by: CHART_CONTROLLER.into(),
        }),
        "{cutover}: status says the controller serves it"
    );
    let migration_gaps = gaps_since(&case, start);
    if cutover == "ZeroDowntime" {
        assert!(
            migration_gaps.is_empty(),
            "the webhook Service had no Ready endpoint during the migration: {migration_gaps:?}"
        );
    } else {
        // Kong's order: its controller turns Ready only once no sidecar pod
        // is left, so the webhook has no Ready pod in between.
        eprintln!(
            "{cutover}: webhook without a Ready endpoint for {} ms",
            case.sim.unready_time(&case.ns, WEBHOOK).as_millis()
        );
    }

    let pods = serving_pods(&case).await;
    assert!(
        !pods.is_empty() && pods.iter().all(|p| p.starts_with(CHART_CONTROLLER)),
        "{cutover}: the controller's pods serve the webhook: {pods:?}"
    );
    assert_eq!(webhook_targets(&case).await, targets, "{cutover}");

    let succeeded = Instant::now();
    case.set("kong", json!({ "rollback": true })).await;
    let m = case.wait_phase("kong", Phase::RolledBack).await;
    assert_eq!(
        m.status.and_then(|s| s.webhook).map(|w| w.served_by),
        Some(PROXY.to_string()),
        "{cutover}"
    );
    let after = webhook_service(&case).await;
    assert_eq!(
        after.spec.as_ref().and_then(|s| s.selector.clone()),
        before.spec.as_ref().and_then(|s| s.selector.clone()),
        "{cutover}: the selector is back exactly"
    );
    assert_eq!(after.metadata.labels, before.metadata.labels, "{cutover}");
    assert!(
        !after
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(HANDOFF_LABEL)
    );
    let pods = serving_pods(&case).await;
    assert!(
        !pods.is_empty() && pods.iter().all(|p| p.starts_with(&format!("{PROXY}-"))),
        "{cutover}: the sidecar pods serve it again: {pods:?}"
    );
    assert_eq!(webhook_targets(&case).await, targets, "{cutover}");
    let rollback_gaps = gaps_since(&case, succeeded);
    assert!(
        rollback_gaps.is_empty(),
        "{cutover}: the webhook Service had no Ready endpoint during the rollback: {rollback_gaps:?}"
    );
    assert!(case.sim.ready_endpoints(&case.ns, WEBHOOK) > 0);
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_moves_the_webhook_and_back_without_a_gap() {
    the_webhook_keeps_a_ready_endpoint("ZeroDowntime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_order_moves_the_webhook_and_rollback_keeps_it_served() {
    the_webhook_keeps_a_ready_endpoint("DeleteLegacyPods").await;
}
