//! Changes made by others during the migration are reported, not overwritten.

use super::*;

#[test]
fn drift_is_reported_not_overwritten() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = in_phase(json!({}), Phase::WaitingForAdminService, &d);
    let mut reverted = d.clone();
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    // kube-controller-manager writes after helm, but only the revision
    // annotation and the status: it is not the one to blame.
    reverted.metadata.managed_fields = Some(vec![
        ManagedFieldsEntry {
            manager: Some("helm".into()),
            time: Some(Time(now())),
            fields_v1: Some(FieldsV1(json!({ "f:spec": { "f:template": {} } }))),
            ..Default::default()
        },
        ManagedFieldsEntry {
            manager: Some("kube-controller-manager".into()),
            time: Some(Time(later(1))),
            fields_v1: Some(FieldsV1(json!({ "f:metadata": { "f:annotations": {} } }))),
            ..Default::default()
        },
        ManagedFieldsEntry {
            manager: Some("kube-controller-manager".into()),
            time: Some(Time(later(1))),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(json!({ "f:status": {} }))),
            ..Default::default()
        },
    ]);
    let p = plan(
        &m,
        &Observed {
            proxy: Some(reverted),
            ..Default::default()
        },
        later(1),
    );
    assert!(p.actions.is_empty());
    assert_eq!(cond(&p, "Stalled").reason, "DriftDetected");
    let message = p.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("\"helm\"")
            && message.contains("sidecar is back")
            && message.contains("rollback"),
        "{message}"
    );
    assert!(has_event(&p, "DriftDetected"));
}

#[test]
fn a_widened_admin_service_is_drift_while_legacy_pods_run() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = in_phase(json!({ "approval": "Manual" }), Phase::AwaitingApproval, &d);
    let proxy = migrated(&d, &m, true);
    let written_by = |manager: &str| {
        // The chart's own admin Service: every kong pod, sidecar ones too.
        let mut svc = admin_service(&m, &proxy, false);
        svc.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(manager.into()),
            time: Some(Time(now())),
            fields_v1: Some(FieldsV1(json!({ "f:spec": { "f:selector": {} } }))),
            ..Default::default()
        }]);
        svc
    };
    let legacy = vec![pod("kong-old", true, true, "10.0.0.1")];
    let cases = [
        (
            "widened by helm, legacy pods run",
            "helm",
            legacy.clone(),
            true,
        ),
        (
            "widened by this operator (its own last step)",
            FIELD_MANAGER,
            legacy,
            false,
        ),
        ("widened by helm, no legacy pod left", "helm", vec![], false),
    ];
    for (name, manager, pods, drift) in cases {
        let p = plan(
            &m,
            &Observed {
                proxy: Some(proxy.clone()),
                admin_service: Some(written_by(manager)),
                pods,
                ..Default::default()
            },
            later(1),
        );
        let stalled = cond(&p, "Stalled");
        assert_eq!(
            stalled.reason == "DriftDetected",
            drift,
            "{name}: {stalled:?}"
        );
        if drift {
            assert!(p.actions.is_empty(), "{name}: {:?}", p.actions);
            let message = p.status.message.clone().unwrap_or_default();
            assert!(
                message.contains("\"helm\"") && message.contains("Service kong-kong-admin"),
                "{message}"
            );
            assert!(has_event(&p, "DriftDetected"), "{name}");
        }
    }
}
