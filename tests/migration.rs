//! The whole migration on a real control plane with the node simulator:
//! each test asserts the SidecarMigration's status and events and the
//! objects that result.

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher};
use kube::{ResourceExt, api::ObjectMeta};
use serde_json::json;
use sidecar_migrator::api::{DISCOVERY_LABEL, Phase};
use sidecar_migrator::reconcile;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_migration_of_one_replica() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = rollout_settings(&case.deployments().get(PROXY).await.expect("proxy"));
    assert_eq!(
        before["minReadySeconds"],
        serde_json::Value::Null,
        "the chart leaves it unset"
    );
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    assert_rollout_restored(&case, &before).await;
    assert_eq!(condition(&m, "Ready"), ("True", "Succeeded"));
    assert_eq!(condition(&m, "Stalled").0, "False");
    let status = m.status.clone().expect("status");
    assert_eq!(status.observed_generation, m.metadata.generation);
    assert_eq!(status.step.as_deref(), Some("5/5"));
    assert_eq!(status.controller_version.as_deref(), Some("3.4.0"));
    assert!(status.original.is_some());
    assert_migrated(&case, 1).await;
    assert_eq!(
        case.downtime_ms(),
        0,
        "ZeroDowntime never leaves the proxy without a Ready endpoint"
    );
    // One Event per transition: a repeat would be folded into a series.
    let events = case.events("kong").await;
    for want in [
        "Validated",
        "SidecarDisabled",
        "ControllerDeployed",
        "AdminServiceReady",
        "LegacyPodsDeleted",
        "MigrationSucceeded",
    ] {
        let count: i32 = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(want))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum();
        assert_eq!(
            count,
            1,
            "{want} events in {:?}",
            case.event_reasons("kong").await
        );
    }
    // The label told old pods from new ones; once they are gone the admin
    // Service selects the chart's labels alone, so the chart can take it over.
    let svc = Api::<Service>::namespaced(case.client.clone(), &case.ns)
        .get("kong-kong-admin")
        .await
        .expect("admin Service");
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    assert!(!selector.contains_key(DISCOVERY_LABEL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_migration_of_three_replicas_under_a_pdb() {
    let case = Case::new("sidecar-3-replicas-pdb.yaml").await;
    let before = case.set_user_rollout().await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 3).await;
    assert_eq!(case.downtime_ms(), 0);
    assert_rollout_restored(&case, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_stays_a_secret_reference() {
    let case = Case::new("sidecar-token-secret.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    let controller = case
        .deployments()
        .get(CONTROLLER)
        .await
        .expect("controller");
    let token = controller
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers[0].env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "CONTROLLER_KONG_ADMIN_TOKEN"))
        .cloned()
        .expect("token env carried over");
    assert_eq!(token.value, None);
    let key = token
        .value_from
        .and_then(|v| v.secret_key_ref)
        .expect("secretKeyRef");
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("kong-admin-token", "token")
    );
    let status = serde_json::to_string(&m.status).expect("status json");
    let events = serde_json::to_string(&case.events("kong").await).expect("events json");
    for text in [&status, &events] {
        assert!(
            !text.contains("s3cr3t-admin-token-value"),
            "a secret value leaked"
        );
    }
    assert!(
        status.contains("kong-admin-token"),
        "the reference is recorded for rollback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_mode_migrates_and_is_noted() {
    let case = Case::new("sidecar-db-postgres.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    assert_eq!(
        m.status.and_then(|s| s.database).as_deref(),
        Some("postgres")
    );
    assert_migrated(&case, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_documented_order_evicts_and_reports_its_downtime() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let legacy: BTreeSet<String> = case
        .pods()
        .await
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    let evicted = evictions(&case).await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "cutover": "DeleteLegacyPods" }),
    )
    .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 1).await;
    // The API server marks a pod it evicts before deleting it; a pod deleted
    // directly, past any PodDisruptionBudget, has no such mark.
    let evicted = evicted.lock().expect("lock").clone();
    assert!(
        legacy.is_subset(&evicted),
        "legacy pods {legacy:?}, evicted through the Eviction API {evicted:?}"
    );
    let notes: Vec<String> = case
        .events("kong")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("LegacyPodEvicted"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), legacy.len(), "{notes:?}");
    let metrics = case.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "sidecar_migrator_legacy_pods_evicted_total {}\n",
            legacy.len()
        )),
        "{metrics}"
    );
    // Reported, not asserted: whether this run had a gap depends on how the
    // eviction and the new pod's readiness interleave (the benchmark saw
    // downtime in 99 runs of 100).
    eprintln!("DeleteLegacyPods downtime: {} ms", case.downtime_ms());
}

/// The uids of the pods the API server marked `DisruptionTarget` /
/// `EvictionByEvictionAPI`, from a watch that has listed before this returns.
async fn evictions(case: &Case) -> Arc<Mutex<BTreeSet<String>>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let pods: Api<Pod> = Api::namespaced(case.client.clone(), &case.ns);
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let record = {
        let seen = seen.clone();
        move |pod: &Pod| {
            let evicted = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "DisruptionTarget"
                            && c.reason.as_deref() == Some("EvictionByEvictionAPI")
                    })
                });
            if evicted && let Some(uid) = pod.uid() {
                seen.lock().expect("lock").insert(uid);
            }
        }
    };
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(watcher::Event::InitApply(pod))) => record(&pod),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("pod watch: {e}"),
            None => panic!("pod watch ended"),
        }
    }
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) = event {
                record(&pod);
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_approval_touches_no_legacy_pod_until_approved() {
    let case = Case::new("sidecar-3-replicas-pdb.yaml").await;
    let legacy: Vec<_> = case.pods().await.iter().map(|p| p.uid()).collect();
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    let m = case.wait_phase("kong", Phase::AwaitingApproval).await;
    assert_eq!(condition(&m, "Ready"), ("False", "AwaitingApproval"));
    assert_eq!(m.status.as_ref().map(|s| s.legacy_pods.len()), Some(3));
    let pods = case.pods().await;
    for uid in &legacy {
        let pod = pods
            .iter()
            .find(|p| p.uid() == *uid)
            .expect("legacy pod still there");
        assert!(is_ready(pod) && pod.metadata.deletion_timestamp.is_none());
    }
    assert!(
        pods.iter().any(|p| !has_sidecar(p) && is_ready(p)),
        "the new gateway pods are Ready beside the legacy ones"
    );
    assert_eq!(case.downtime_ms(), 0);
    case.set("kong", json!({ "approved": true })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert!(
        case.event_reasons("kong")
            .await
            .iter()
            .any(|r| r == "Approved")
    );
    assert_migrated(&case, 3).await;
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_and_resume_finishes() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = case.deployments().get(PROXY).await.expect("proxy");
    case.start("kong", json!({ "proxyDeployment": PROXY, "paused": true }))
        .await;
    let m = case.wait_phase("kong", Phase::Paused).await;
    assert_eq!(condition(&m, "Ready"), ("False", "Paused"));
    let after = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "nothing changed"
    );
    case.set("kong", json!({ "paused": false })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert!(
        case.event_reasons("kong")
            .await
            .iter()
            .any(|r| r == "Resumed")
    );
    assert_migrated(&case, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_plans_every_change_and_makes_none() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = case.deployments().get(PROXY).await.expect("proxy");
    case.start("kong", json!({ "proxyDeployment": PROXY, "dryRun": true }))
        .await;
    let m = case
        .wait_until("kong", "a dry-run plan", |m| {
            m.status.as_ref().is_some_and(|s| !s.plan.is_empty())
        })
        .await;
    assert_eq!(m.status.as_ref().map(|s| s.phase), Some(Phase::Pending));
    assert_eq!(condition(&m, "Ready"), ("False", "DryRun"));
    let plan = m.status.map(|s| s.plan).unwrap_or_default();
    assert!(
        plan.iter()
            .any(|c| c.object == "Deployment/kong-kong-controller")
    );
    assert!(
        plan.iter()
            .any(|c| c.change == "remove container ingress-controller")
    );
    let after = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(after.resource_version(), before.resource_version());
    assert!(!case.controller_exists().await, "no controller Deployment");
    // Leaving dry run carries it out.
    case.set("kong", json!({ "dryRun": false })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
}

/// Asks for a rollback as a user would and waits for it to finish.
async fn roll_back(case: &Case) -> sidecar_migrator::api::SidecarMigration {
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_request_while_awaiting_approval() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    // The approval hold changes all three fields the most.
    let before = case.set_user_rollout().await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    let m = roll_back(&case).await;
    assert_eq!(condition(&m, "Ready"), ("True", "RolledBack"));
    assert_rolled_back(&case, 1).await;
    assert_rollout_restored(&case, &before).await;
    assert_eq!(
        case.downtime_ms(),
        0,
        "rollback brings sidecar pods up before the rest goes"
    );
    let reasons = case.event_reasons("kong").await;
    assert!(
        reasons.iter().any(|r| r == "RollingBack") && reasons.iter().any(|r| r == "RolledBack")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_a_succeeded_migration_restores_the_sidecar() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    let m = roll_back(&case).await;
    assert_eq!(condition(&m, "Ready"), ("True", "RolledBack"));
    assert_rolled_back(&case, 1).await;
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_an_already_migrated_deployment_is_refused() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    // A second migration of the migrated Deployment records no sidecar.
    case.delete_and_wait_gone("kong").await;
    case.start("again", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("again", Phase::Succeeded).await;
    case.set("again", json!({ "rollback": true })).await;
    case.wait_event("again", "RollbackRefused").await;
    let m = case
        .wait_until("again", "Stalled RollbackRefused", |m| {
            condition(m, "Stalled") == ("True", "RollbackRefused")
        })
        .await;
    assert_eq!(m.status.map(|s| s.phase), Some(Phase::Succeeded));
    assert_migrated(&case, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_request_while_waiting_for_the_admin_service() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = rollout_settings(&case.deployments().get(PROXY).await.expect("proxy"));
    case.start("kong",
        json!({ "proxyDeployment": PROXY, "controller": { "image": "kong/kubernetes-ingress-controller:3.4-invalid" } })).await;
    case.wait_phase("kong", Phase::WaitingForAdminService).await;
    roll_back(&case).await;
    assert_rolled_back(&case, 1).await;
    assert_rollout_restored(&case, &before).await;
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_request_while_evictions_are_blocked() {
    // Kong's order with a PodDisruptionBudget cannot proceed without breaking
    // the budget: the eviction is refused, and the user rolls back.
    let case = Case::new("sidecar-3-replicas-pdb.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "cutover": "DeleteLegacyPods" }),
    )
    .await;
    case.wait_phase("kong", Phase::DeletingLegacyPods).await;
    case.wait_event("kong", "EvictionBlocked").await;
    roll_back(&case).await;
    assert_rolled_back(&case, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_rolls_back_by_itself() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({
            "proxyDeployment": PROXY,
            "stepTimeoutSeconds": 10,
            "controller": { "image": "kong/kubernetes-ingress-controller:invalid-3.4" },
        }),
    )
    .await;
    let m = case.wait_phase("kong", Phase::RolledBack).await;
    assert_eq!(condition(&m, "Ready").0, "False");
    assert_eq!(condition(&m, "Stalled"), ("True", "RolledBack"));
    case.wait_event("kong", "StepTimedOut").await;
    assert_rolled_back(&case, 1).await;
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_unfinished_migration_rolls_it_back() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    case.delete_and_wait_gone("kong").await;
    assert_rolled_back(&case, 1).await;
    assert_gauge_forgot_it(&case);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_succeeded_migration_leaves_the_installation_alone() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    case.delete_and_wait_gone("kong").await;
    assert_migrated(&case, 1).await;
    assert_gauge_forgot_it(&case);
}

/// The finalizer's removal is the operator's last word on a migration: by
/// then its phase has left the per-phase gauge.
fn assert_gauge_forgot_it(case: &Case) {
    let metrics = case.metrics.encode();
    assert!(
        !metrics.contains("sidecar_migrator_migrations{"),
        "a deleted migration is still counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_mid_migration_finishes_it_once() {
    let mut case = Case::new("sidecar-3-replicas-pdb.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_step_started("kong", Phase::DeployingController)
        .await;
    case.kill_operator().await;
    case.start_operator();
    case.wait_step_started("kong", Phase::WaitingForAdminService)
        .await;
    case.kill_operator().await;
    case.start_operator();
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 3).await;
    let controllers = case
        .deployments()
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|d| d.name_any() != PROXY)
        .count();
    assert_eq!(controllers, 1, "exactly one controller Deployment");
    assert_eq!(case.downtime_ms(), 0);
}

/// A report with nothing to do and nothing to tell waits a moment before it
/// is written (the answer to what the cluster does next need not queue
/// behind it), and is written then even when nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_put_off_is_written_while_the_cluster_stays_quiet() {
    let mut case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    let m = case.wait_phase("kong", Phase::AwaitingApproval).await;
    let legacy = m.status.map(|s| s.legacy_pods).unwrap_or_default();
    assert_eq!(legacy.len(), 1);
    // A report the cluster no longer matches, with the operator down: when
    // it is back, nothing in the cluster moves while it waits for approval.
    case.kill_operator().await;
    case.migrations()
        .patch_status(
            "kong",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "legacyPods": ["gone"] } })),
        )
        .await
        .expect("status");
    case.start_operator();
    let m = case
        .wait_until("kong", "the legacy pod reported again", |m| {
            m.status.as_ref().is_some_and(|s| s.legacy_pods == legacy)
        })
        .await;
    assert_eq!(m.status.map(|s| s.phase), Some(Phase::AwaitingApproval));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_edited_mid_migration_is_reported_not_overwritten() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    let m = case.wait_phase("kong", Phase::AwaitingApproval).await;
    // Helm (say) puts the sidecar back, with the volumes it mounts.
    let original = m.status.and_then(|s| s.original).expect("original");
    let sidecar = original.sidecar;
    let volumes: Vec<k8s_openapi::api::core::v1::Volume> = original
        .volumes
        .expect("recorded volumes")
        .decode()
        .expect("volumes");
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    let mut edited = proxy.clone();
    let pod = edited
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("pod");
    pod.containers
        .insert(0, sidecar.decode().expect("container"));
    pod.volumes = Some(volumes);
    case.deployments()
        .replace(
            PROXY,
            &kube::api::PostParams {
                field_manager: Some("helm".into()),
                ..Default::default()
            },
            &edited,
        )
        .await
        .expect("edit");
    let m = case
        .wait_until("kong", "DriftDetected", |m| {
            condition(m, "Stalled") == ("True", "DriftDetected")
        })
        .await;
    let message = m.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("\"helm\"") && message.contains("sidecar is back"),
        "{message}"
    );
    case.wait_event("kong", "DriftDetected").await;
    let now = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(
        containers(&now)[0],
        SIDECAR,
        "the operator did not overwrite the edit"
    );
    // Rolling back from drift restores the rest.
    roll_back(&case).await;
    assert_rolled_back(&case, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_service_widened_mid_migration_is_reported_not_overwritten() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    // The chart's admin Service again: every kong pod, the sidecar one too.
    let services: Api<Service> = Api::namespaced(case.client.clone(), &case.ns);
    let widened = json!({ "spec": { "selector": { DISCOVERY_LABEL: null } } });
    services
        .patch(
            "kong-kong-admin",
            &PatchParams {
                field_manager: Some("helm".into()),
                ..Default::default()
            },
            &Patch::Merge(&widened),
        )
        .await
        .expect("edit");
    let m = case
        .wait_until("kong", "DriftDetected", |m| {
            condition(m, "Stalled") == ("True", "DriftDetected")
        })
        .await;
    let message = m.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("\"helm\"") && message.contains("Service kong-kong-admin"),
        "{message}"
    );
    case.wait_event("kong", "DriftDetected").await;
    let svc = services.get("kong-kong-admin").await.expect("service");
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    assert!(
        !selector.contains_key(DISCOVERY_LABEL),
        "the operator did not overwrite the edit"
    );
    roll_back(&case).await;
    assert_rolled_back(&case, 1).await;
    assert_eq!(case.downtime_ms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_condition_and_an_event_and_changes_nothing() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = case.deployments().get(PROXY).await.expect("proxy");

    // A Deployment that does not exist.
    case.start("missing", json!({ "proxyDeployment": "nope" }))
        .await;
    let m = case.wait_phase("missing", Phase::Failed).await;
    assert_eq!(
        condition(&m, "Stalled"),
        ("True", "ProxyDeploymentNotFound")
    );
    case.wait_event("missing", "ProxyDeploymentNotFound").await;

    // A Deployment by the controller name that is not ours.
    let mut squatter = before.clone();
    squatter.metadata = ObjectMeta {
        name: Some("taken".into()),
        ..Default::default()
    };
    squatter.status = None;
    let pod = squatter.spec.as_mut().expect("spec");
    pod.replicas = Some(0);
    pod.selector.match_labels = Some([("squatter".to_string(), "yes".to_string())].into());
    pod.template.metadata = Some(ObjectMeta {
        labels: Some([("squatter".to_string(), "yes".to_string())].into()),
        ..Default::default()
    });
    case.deployments()
        .create(&Default::default(), &squatter)
        .await
        .expect("squatter");
    case.start(
        "taken",
        json!({ "proxyDeployment": PROXY, "controller": { "name": "taken" }, "dryRun": true }),
    )
    .await;
    let m = case.wait_phase("taken", Phase::Failed).await;
    assert_eq!(condition(&m, "Stalled").1, "ControllerNameTaken");
    case.wait_event("taken", "ControllerNameTaken").await;
    case.migrations()
        .delete("taken", &DeleteParams::default())
        .await
        .expect("delete");

    // A second migration of the same Deployment (the first waits for approval).
    case.start(
        "first",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("first", Phase::AwaitingApproval).await;
    case.start("second", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("second", Phase::Failed).await;
    assert_eq!(condition(&m, "Stalled").1, "DuplicateMigration");
    let message = m.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("first"), "{message}");
    case.wait_event("second", "DuplicateMigration").await;
    assert!(m.metadata.finalizers.iter().flatten().count() == 1);
    let second = case.migrations().get("second").await.expect("second");
    assert!(
        second.status.and_then(|s| s.original).is_none(),
        "it changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_older_than_2_11_is_refused() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    // KIC older than 2.11.
    case.start("old",
        json!({ "proxyDeployment": PROXY, "controller": { "image": "kong/kubernetes-ingress-controller:2.10.4" } })).await;
    let m = case.wait_phase("old", Phase::Failed).await;
    assert_eq!(condition(&m, "Stalled").1, "UnsupportedControllerVersion");
    assert!(
        m.status
            .and_then(|s| s.message)
            .unwrap_or_default()
            .contains("2.11")
    );
    case.wait_event("old", "UnsupportedControllerVersion").await;
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(
        containers(&proxy),
        vec![SIDECAR, "proxy"],
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_without_the_sidecar_is_already_migrated() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    case.start("again", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("again", Phase::Succeeded).await;
    assert!(
        m.status
            .and_then(|s| s.message)
            .unwrap_or_default()
            .contains("already")
    );
    case.wait_event("again", "AlreadyMigrated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_rejects_what_cannot_be_right() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    let cases = [
        (
            "another namespace",
            json!({ "proxyDeployment": "other-ns/kong-kong" }),
        ),
        (
            "approved without Manual",
            json!({ "proxyDeployment": PROXY, "approved": true }),
        ),
        (
            "unknown cutover",
            json!({ "proxyDeployment": PROXY, "cutover": "YOLO" }),
        ),
        (
            "tiny timeout",
            json!({ "proxyDeployment": PROXY, "stepTimeoutSeconds": 1 }),
        ),
        ("empty name", json!({ "proxyDeployment": "" })),
    ];
    for (what, spec) in cases {
        let err = case.apply("bad", spec).await.expect_err(what);
        let kube::Error::Api(e) = err else {
            panic!("{what}: {err}")
        };
        assert_eq!(e.code, 422, "{what}: {}", e.message);
    }
    case.apply("good", json!({ "proxyDeployment": PROXY, "dryRun": true }))
        .await
        .expect("valid");
    let change = case
        .migrations()
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "proxyDeployment": "other" } })),
        )
        .await
        .expect_err("proxyDeployment is immutable");
    let kube::Error::Api(e) = change else {
        panic!("{change}")
    };
    assert!(
        e.message.contains("cannot change once set"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_and_wait_work_as_documented() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/");
    let applied = case
        .kubectl(&["apply", "-n", &case.ns, "-f", examples])
        .await;
    assert!(
        applied.contains("sidecarmigration.sidecar-migrator.dev/kong created"),
        "{applied}"
    );
    case.kubectl(&[
        "wait",
        "-n",
        &case.ns,
        "scm/kong",
        "--for=condition=Ready",
        "--timeout=120s",
    ])
    .await;
    let table = case
        .kubectl(&["get", "sidecarmigrations", "-n", &case.ns])
        .await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "PHASE", "STEP", "READY", "AGE"], "{table}");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["kong", "Succeeded", "5/5", "True"], "{table}");
    let wide = case
        .kubectl(&["get", "scm", "-n", &case.ns, "-o", "wide"])
        .await;
    assert!(
        wide.lines().next().unwrap_or_default().ends_with("MESSAGE"),
        "{wide}"
    );
    assert!(wide.contains("migrated: Deployment kong-kong"), "{wide}");
    assert_migrated(&case, 1).await;
}

/// kube's Recorder keeps every Event it wrote for six minutes; a finished
/// migration's recorder is let go, so memory follows the migrations in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_migration_lets_its_event_recorder_go() {
    let mut case = Case::without_operator("sidecar-1-replica.yaml").await;
    let ctx = case.context();
    case.start_operator_with(ctx.clone());
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let done = case.wait_phase("kong", Phase::Succeeded).await;
    case.wait_event("kong", "MigrationSucceeded").await;
    case.kill_operator().await;
    reconcile::reconcile(Arc::new(done), ctx.clone())
        .await
        .expect("the reconcile succeeds");
    assert_eq!(ctx.event_recorders(), 0, "the finished migration's is gone");
}

/// A reconcile triggered with a copy of the migration older than the
/// operator's last write of it (its watch event not in yet, as a cache can
/// lag) plans nothing from it: it repeats no transition, no Event, no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_of_the_migration_repeats_no_transition() {
    let mut case = Case::without_operator("sidecar-1-replica.yaml").await;
    let ctx = case.context();
    case.start_operator_with(ctx.clone());
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let early = case
        .wait_until("kong", "a first status", |m| m.status.is_some())
        .await;
    let done = case.wait_phase("kong", Phase::Succeeded).await;
    case.wait_event("kong", "MigrationSucceeded").await;
    // Each Event, with how often it was published: the recorder publishes a
    // repeat as a new count of the same Event.
    let published = async || -> Vec<(String, i32)> {
        case.events("kong")
            .await
            .into_iter()
            .map(|e| {
                let count = e.series.as_ref().map_or(1, |s| s.count);
                (e.reason.unwrap_or_default(), count)
            })
            .collect()
    };
    let events_before = published().await;

    // The same operator, handed a copy as it was before its last writes:
    // an earlier version, in a phase whose step is done by now (planned
    // from, it would move on and say so).
    let mut stale = done.clone();
    stale.metadata.resource_version = early.resource_version();
    if let Some(status) = stale.status.as_mut() {
        status.phase = Phase::WaitingForAdminService;
    }
    reconcile::reconcile(Arc::new(stale), ctx)
        .await
        .expect("the reconcile succeeds");

    let now = case.migrations().get("kong").await.expect("the migration");
    assert_eq!(
        now.resource_version(),
        done.resource_version(),
        "the migration was written: {:?}",
        now.status.map(|s| s.phase)
    );
    assert_eq!(
        published().await,
        events_before,
        "an Event was published again"
    );
    case.kill_operator().await;
}
