//! KIC and Kong as they behave version by version (the node simulator's
//! rules, `shared/KIC-FACTS.md`), and a migration that survives each: one
//! test per behaviour, on the real control plane.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sidecar_migrator::api::Phase;
use sidecar_migrator::testenv::wait_for;
use support::*;

fn readiness_path(d: &Deployment) -> Option<String> {
    sidecar_migrator::plan::template_container(d, "proxy")?
        .readiness_probe
        .as_ref()?
        .http_get
        .as_ref()?
        .path
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_probe_is_rewritten_so_no_unconfigured_gateway_takes_traffic() {
    let case = Case::new("kong-3.9-status-probe.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 1).await;
    let unready = case.sim.unready_time(&case.ns, PROXY_SERVICE).as_millis();
    eprintln!(
        "downtime {} ms; without a Ready endpoint {unready} ms",
        case.downtime_ms()
    );
    assert_eq!(
        case.downtime_ms(),
        0,
        "a gateway Ready before its first push answers 404: traffic lost"
    );
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(readiness_path(&proxy).as_deref(), Some("/status/ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_probe_below_kong_3_3_is_refused_with_the_upgrade_to_make() {
    let case = Case::new("kong-3.2-status-probe.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Failed).await;
    assert_eq!(condition(&m, "Stalled"), ("True", "ReadinessProbeTooEarly"));
    let message = m.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("Kong 3.2.0") && message.contains("2.26.0"),
        "{message}"
    );
    case.wait_event("kong", "ReadinessProbeTooEarly").await;
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(
        containers(&proxy),
        vec![SIDECAR, "proxy"],
        "nothing changed"
    );
    assert_eq!(readiness_path(&proxy).as_deref(), Some("/status"));
    assert!(!case.controller_exists().await);
}

/// KIC verifies the Admin API's certificate unless told not to. Without the
/// sidecar, KIC 3.4 dials each gateway at its pod IP, a name no certificate
/// carries, and would crash-loop until the step deadline: refused before
/// anything changes, with the setting to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_certificate_kic_cannot_verify_is_refused_and_nothing_changes() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let verify = json!({ "spec": { "template": { "spec": { "containers": [{
        "name": SIDECAR,
        "env": [{ "name": "CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY", "value": "false" }],
    }] } } } });
    case.deployments()
        .patch(PROXY, &PatchParams::default(), &Patch::Strategic(&verify))
        .await
        .expect("the user turns verification on");
    case.wait_rollout(PROXY).await;
    // Settled: the old pod gone, and no EndpointSlice still naming it.
    let slices: Api<EndpointSlice> = Api::namespaced(case.client.clone(), &case.ns);
    wait_for(
        DEADLINE,
        "the old sidecar pod gone everywhere",
        async || {
            let pods = case.pods().await;
            let [pod] = pods.as_slice() else {
                return Ok(None);
            };
            let name = pod.name_any();
            let stale = slices
                .list(&Default::default())
                .await?
                .items
                .iter()
                .flat_map(|s| &s.endpoints)
                .any(|e| e.target_ref.as_ref().and_then(|t| t.name.as_deref()) != Some(&name));
            Ok((is_ready(pod) && !stale).then_some(()))
        },
    )
    .await
    .expect("the sidecar install settles");
    let before = case.snapshot().await;

    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Failed).await;
    assert_eq!(
        condition(&m, "Stalled"),
        ("True", "AdminCertificateVerified")
    );
    let message = m.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("pod IP")
            && message.contains("CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY=true"),
        "{message}"
    );
    case.wait_event("kong", "AdminCertificateVerified").await;
    assert_eq!(case.snapshot().await, before, "nothing changed");
    assert!(!case.controller_exists().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kic_2_12_discovers_over_tls_only_though_its_admin_service_had_an_http_port() {
    let case = Case::new("kic-2.12-admin-http.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated_listening(&case).await;
    let svc = Api::<Service>::namespaced(case.client.clone(), &case.ns)
        .get("kong-kong-admin")
        .await
        .expect("admin Service");
    let ports: Vec<_> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert_eq!(ports, vec![("kong-admin-tls".to_string(), 8444)]);
    let controller = case.deployments().get(CONTROLLER).await.expect("ctrl");
    assert_eq!(
        env(&controller, SIDECAR, "CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES").as_deref(),
        Some("kong-admin-tls")
    );
    assert_eq!(case.downtime_ms(), 0);
}

/// [`assert_migrated`] for a fixture whose Admin API already listened on all
/// interfaces (HTTP and TLS).
async fn assert_migrated_listening(case: &Case) {
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(containers(&proxy), vec!["proxy"]);
    let pods = case.pods().await;
    assert!(pods.iter().all(|p| !has_sidecar(p) && is_ready(p)));
    case.sim
        .wait_ready_endpoints(&case.ns, PROXY_SERVICE, 1, DEADLINE)
        .await
        .expect("the proxy Service lists the new pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_db_mode_the_new_controller_leads_its_own_lease_beside_the_sidecars() {
    let case = Case::new("sidecar-db-postgres.yaml").await;
    let sidecars = "kong-ingress-controller-leader-kong";
    wait_for(
        DEADLINE,
        "a sidecar holding the chart's Lease",
        async || Ok(case.sim.leader(&case.ns, sidecars)),
    )
    .await
    .expect("the sidecars elect a leader");
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    let controller = case.deployments().get(CONTROLLER).await.expect("ctrl");
    let election =
        env(&controller, SIDECAR, "CONTROLLER_ELECTION_ID").unwrap_or_else(|| sidecars.into());
    let leader = wait_for(
        std::time::Duration::from_secs(10),
        "the new controller to lead while the sidecars still run",
        async || {
            Ok(case
                .sim
                .leader(&case.ns, &election)
                .filter(|pod| pod.starts_with(CONTROLLER)))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: Lease {election} is held by {:?}",
            case.sim.leader(&case.ns, &election)
        )
    });
    assert!(
        case.pods().await.iter().any(has_sidecar),
        "{leader} leads while legacy pods still run"
    );
    case.set("kong", json!({ "approved": true })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_deployment_sharing_the_labels_is_neither_waited_for_nor_touched() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    // A canary of the same chart: the proxy Deployment's selector matches
    // its pods too, but they are not the proxy Deployment's.
    let mut canary = case.deployments().get(PROXY).await.expect("proxy");
    canary.metadata = kube::api::ObjectMeta {
        name: Some("kong-canary".into()),
        ..Default::default()
    };
    if let Some(spec) = canary.spec.as_mut() {
        spec.selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert("track".into(), "canary".into());
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert("track".into(), "canary".into());
    }
    canary.status = None;
    case.deployments()
        .create(&PostParams::default(), &canary)
        .await
        .expect("canary");
    case.wait_rollout("kong-canary").await;
    let canary_pods = || async {
        case.pods()
            .await
            .into_iter()
            .filter(|p| p.labels().get("track").map(String::as_str) == Some("canary"))
            .collect::<Vec<_>>()
    };
    let before: Vec<_> = canary_pods().await.iter().map(|p| p.uid()).collect();
    assert_eq!(before.len(), 1);

    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    assert!(
        m.status
            .map(|s| s.legacy_pods)
            .unwrap_or_default()
            .is_empty()
    );
    let after = canary_pods().await;
    assert_eq!(after.iter().map(|p| p.uid()).collect::<Vec<_>>(), before);
    assert!(after.iter().all(|p| has_sidecar(p) && is_ready(p)));
    let canary = case.deployments().get("kong-canary").await.expect("canary");
    assert_eq!(containers(&canary), vec![SIDECAR, "proxy"], "untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_loses_traffic_until_the_leader_pushes_again() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 1).await;
    assert_eq!(case.downtime_ms(), 0);
    let pod = case.pods().await.remove(0);
    case.sim.restart_gateway(&case.ns, &pod.name_any());
    wait_for(DEADLINE, "the restarted gateway not Ready", async || {
        Ok((case.sim.ready_endpoints(&case.ns, PROXY_SERVICE) == 0).then_some(()))
    })
    .await
    .expect("the emptied gateway fails /status/ready");
    case.sim
        .wait_ready_endpoints(&case.ns, PROXY_SERVICE, 1, DEADLINE)
        .await
        .expect("the leader pushes again");
    assert!(case.downtime_ms() > 0, "an emptied gateway serves nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_controller_replicas_a_killed_leader_hands_over_and_the_migration_finishes() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual", "controller": { "replicas": 2 } }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    let controller = case.deployments().get(CONTROLLER).await.expect("ctrl");
    let election = env(&controller, SIDECAR, "CONTROLLER_ELECTION_ID").expect("election ID");
    let leader = wait_for(DEADLINE, "a controller leading", async || {
        Ok(case.sim.leader(&case.ns, &election))
    })
    .await
    .expect("leader");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(case.client.clone(), &case.ns);
    pods.delete(
        &leader,
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("kill the leader");
    let next = wait_for(DEADLINE, "another controller leading", async || {
        Ok(case
            .sim
            .leader(&case.ns, &election)
            .filter(|l| *l != leader))
    })
    .await
    .expect("the Lease expires and is taken");
    assert_ne!(next, leader);
    case.set("kong", json!({ "approved": true })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kic_3_4_2_starts_only_once_a_new_gateway_listens_and_never_crash_loops() {
    // Kong takes 3 s to listen (the fixture's start-up annotation), KIC none;
    // KIC 3.4.0-3.4.3 exit at once on an Admin API that does not answer,
    // then back off for 10 s, 20 s, ...
    let case = Case::new("kic-3.4.2.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 1).await;
    let controllers =
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(case.client.clone(), &case.ns)
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("sidecar-migrator.dev/controller={CONTROLLER}")),
            )
            .await
            .expect("controller pods")
            .items;
    let restarts: Vec<i32> = controllers
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .collect();
    assert_eq!(restarts, vec![0], "the controller never exited");
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_webhook_service_keeps_a_ready_endpoint() {
    // Its Service targets the port `webhook`, which only the sidecar declares
    // among the gateway pod's containers: the operator points it at the
    // controller (which declares the port too) before the last sidecar pod
    // goes. tests/webhook.rs has the chart's ValidatingWebhookConfiguration
    // and the rollback.
    let case = Case::new("sidecar-1-replica.yaml").await;
    let webhook = "kong-kong-validation-webhook";
    case.sim
        .wait_ready_endpoints(&case.ns, webhook, 1, DEADLINE)
        .await
        .expect("the sidecar serves the webhook");
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    assert_eq!(
        m.status
            .and_then(|s| s.webhook)
            .map(|w| w.served_by)
            .as_deref(),
        Some(CONTROLLER)
    );
    case.sim
        .wait_ready_endpoints(&case.ns, webhook, 1, DEADLINE)
        .await
        .expect("the controller serves the webhook");
    assert_eq!(
        case.sim.unready_time(&case.ns, webhook),
        std::time::Duration::ZERO,
        "{:?}",
        case.sim.timeline(&case.ns, webhook)
    );
}
