//! The Admin API stays as closed as it can: only its TLS listen is opened to
//! the pod network for the controller; a plain-HTTP listen stays on loopback.

mod support;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use sidecar_migrator::api::Phase;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_admin_listen_stays_on_loopback() {
    let mut case = Case::without_operator("sidecar-1-replica.yaml").await;
    let listen = "127.0.0.1:8001, 127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl";
    let patch = json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "proxy", "env": [ { "name": "KONG_ADMIN_LISTEN", "value": listen } ] }
    ] } } } });
    case.deployments()
        .patch(PROXY, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("an HTTP admin listen beside the TLS one");
    case.wait_rollout(PROXY).await;
    case.start_operator();
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(
        env(&proxy, "proxy", "KONG_ADMIN_LISTEN").as_deref(),
        Some("127.0.0.1:8001, 0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl")
    );
    assert_eq!(case.downtime_ms(), 0);
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_is_kept_for_the_controller_and_the_policy_leaves_on_rollback() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let case = Case::new("sidecar-1-replica.yaml").await;
    let policies: kube::Api<NetworkPolicy> = kube::Api::namespaced(case.client.clone(), &case.ns);
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    let policy = policies
        .get("kong-kong-controller-admin-api")
        .await
        .expect("the Admin API NetworkPolicy");
    let spec = policy.spec.expect("spec");
    let rules = spec.ingress.unwrap_or_default();
    let admin_rule = rules
        .iter()
        .find(|r| {
            r.ports.iter().flatten().any(|p| {
                p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8444))
            })
        })
        .expect("a rule for 8444");
    let from = serde_json::to_string(&admin_rule.from).expect("json");
    assert!(
        from.contains(r#""sidecar-migrator.dev/controller":"kong-kong-controller""#),
        "{from}"
    );
    // The controller's pods carry the label the policy admits.
    let controller = case
        .deployments()
        .get(CONTROLLER)
        .await
        .expect("controller");
    let labels = controller
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        labels
            .get("sidecar-migrator.dev/controller")
            .map(String::as_str),
        Some(CONTROLLER)
    );
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await;
    assert_rolled_back(&case, 1).await;
    assert!(
        policies
            .get_opt("kong-kong-controller-admin-api")
            .await
            .expect("get")
            .is_none(),
        "rollback removes the policy"
    );
    assert_eq!(case.downtime_ms(), 0);
    case.assert_nothing_refused("kong").await;
}
