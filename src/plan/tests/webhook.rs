//! The admission webhook: found while validating, moved to the controller
//! before any sidecar pod goes, moved back before the controller goes.

use super::handoff::chart_object;
use super::*;
use k8s_openapi::api::core::v1::Container;
use std::collections::BTreeMap;

const WEBHOOK: &str = "kong-kong-validation-webhook";

/// The chart's sidecar Deployment, its sidecar declaring the webhook port.
fn with_webhook_port() -> Deployment {
    let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let pod = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("pod");
    pod.containers[0].ports = Some(vec![
        serde_json::from_value(
            json!({ "name": "webhook", "containerPort": 8080, "protocol": "TCP" }),
        )
        .expect("port"),
    ]);
    d
}

fn chart_selector() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kong".to_string()),
        ("app.kubernetes.io/instance".to_string(), "kong".to_string()),
        ("app.kubernetes.io/component".to_string(), "app".to_string()),
    ])
}

fn webhook_service(name: &str, selector: BTreeMap<String, String>, target: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NS, "resourceVersion": "7",
            "labels": { "app.kubernetes.io/managed-by": "Helm" } },
        "spec": { "selector": selector,
            "ports": [ { "name": "webhook", "port": 443, "targetPort": target } ] }
    }))
    .expect("service")
}

fn chart_webhook() -> Service {
    webhook_service(WEBHOOK, chart_selector(), json!("webhook"))
}

fn selector_of(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// An EndpointSlice of the webhook Service listing `pods`, Ready or not.
fn webhook_slice(pods: &[(&str, bool)]) -> EndpointSlice {
    let mut s = slice_listing(&[]);
    s.ports = Some(vec![EndpointPort {
        name: Some("webhook".into()),
        port: Some(8080),
        ..Default::default()
    }]);
    s.endpoints = pods
        .iter()
        .map(|(name, ready)| Endpoint {
            addresses: vec!["10.0.0.9".into()],
            conditions: Some(EndpointConditions {
                ready: Some(*ready),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some((*name).into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    s
}

#[test]
fn validating_takes_only_the_installs_own_webhook_service() {
    let d = with_webhook_port();
    let other_pods = BTreeMap::from([("app".to_string(), "other".to_string())]);
    let cases = [
        ("the chart's Service", Some(chart_webhook()), true),
        (
            "another name",
            Some(webhook_service(
                "webhook",
                chart_selector(),
                json!("webhook"),
            )),
            false,
        ),
        (
            "selects other pods",
            Some(webhook_service(WEBHOOK, other_pods, json!("webhook"))),
            false,
        ),
        (
            "a port the sidecar does not declare",
            Some(webhook_service(WEBHOOK, chart_selector(), json!("http"))),
            false,
        ),
        (
            "a numeric target port",
            Some(webhook_service(WEBHOOK, chart_selector(), json!(8080))),
            false,
        ),
        ("no webhook Service", None, false),
    ];
    for (case, svc, found) in cases {
        let obs = Observed {
            proxy: Some(d.clone()),
            webhook_service: svc,
            sidecar_only_services: vec![(WEBHOOK.into(), "webhook".into())],
            ..Default::default()
        };
        let p = plan(&scm(json!({})), &obs, now());
        let want = found.then(|| WebhookStatus {
            service: WEBHOOK.into(),
            served_by: "kong-kong".into(),
        });
        assert_eq!(p.status.webhook, want, "{case}");
        let warned = p.status.warnings.iter().any(|w| w.contains(WEBHOOK));
        assert_eq!(warned, !found, "{case}: warned only when it stays behind");
        let planned = p
            .status
            .plan
            .iter()
            .any(|c| c.object == format!("Service/{WEBHOOK}"));
        assert_eq!(planned, found, "{case}: status.plan says it moves");
    }
}

/// A migration in `phase` whose validation found the chart's webhook.
fn with_webhook(spec: Value, phase: Phase, d: &Deployment) -> SidecarMigration {
    let mut m = in_phase(spec, phase, d);
    if let Some(s) = m.status.as_mut() {
        s.webhook = Some(WebhookStatus {
            service: WEBHOOK.into(),
            served_by: "kong-kong".into(),
        });
    }
    m
}

fn min_ready(p: &Plan) -> Option<i32> {
    p.actions.iter().find_map(|a| match a {
        Action::ReplaceProxy(d) => d.spec.as_ref()?.min_ready_seconds,
        _ => None,
    })
}

#[test]
fn zero_downtime_holds_new_pods_unavailable_until_the_webhook_moved() {
    let d = with_webhook_port();
    let cases = [
        (json!({}), true, Some(APPROVAL_HOLD_MIN_READY_SECONDS)),
        (json!({ "cutover": "DeleteLegacyPods" }), true, None),
        (json!({}), false, None),
    ];
    for (spec, webhook, want) in cases {
        let m = if webhook {
            with_webhook(spec.clone(), Phase::DisablingSidecar, &d)
        } else {
            in_phase(spec.clone(), Phase::DisablingSidecar, &d)
        };
        let obs = Observed {
            proxy: Some(d.clone()),
            ..Default::default()
        };
        let p = plan(&m, &obs, now());
        assert_eq!(min_ready(&p), want, "{spec}, webhook {webhook}");
    }
}

/// The operator's controller Deployment, Available.
fn controller(m: &SidecarMigration, d: &Deployment) -> Deployment {
    let mut c = controller_objects(m, d, &recorded(m))
        .expect("controller")
        .deployment;
    c.metadata.generation = Some(1);
    c.status = Some(settled(1));
    c
}

#[test]
fn zero_downtime_moves_the_webhook_before_any_sidecar_pod_goes() {
    let d = with_webhook_port();
    let m = with_webhook(json!({}), Phase::DeletingLegacyPods, &d);
    let ctrl = controller(&m, &d);
    let to_controller = selector_labels(&ctrl);
    let pods = vec![
        pod("legacy", true, true, "10.0.0.1"),
        pod("new", false, true, "10.0.0.2"),
    ];
    let base = Observed {
        proxy: Some(migrated(&d, &m, true)),
        pods: pods.clone(),
        controller: Some(ctrl.clone()),
        webhook_service: Some(chart_webhook()),
        webhook_slices: vec![webhook_slice(&[("legacy", true)])],
        ..Default::default()
    };

    // The controller is not Available yet: nothing moves, nothing goes.
    let mut unavailable = ctrl.clone();
    unavailable.status = Some(DeploymentStatus::default());
    let p = plan(
        &m,
        &Observed {
            controller: Some(unavailable),
            ..base.clone()
        },
        later(1),
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);

    // Available: the Service is pointed at its pods, the selector recorded
    // with the same status write; no sidecar pod is touched yet.
    let p = plan(&m, &base, later(1));
    let [Action::RepointWebhook(svc)] = p.actions.as_slice() else {
        panic!("only the webhook moves first: {:?}", p.actions)
    };
    assert_eq!(selector_of(svc), to_controller);
    assert_eq!(
        svc.metadata.resource_version.as_deref(),
        Some("7"),
        "replace is conditional on what was read"
    );
    assert_eq!(
        svc.labels().get(HANDOFF_LABEL).map(String::as_str),
        Some("true"),
        "its EndpointSlices then wake the migration"
    );
    assert_eq!(
        p.status
            .original
            .as_ref()
            .and_then(|o| o.webhook_selector.clone()),
        Some(chart_selector())
    );
    let mut m = m.clone();
    m.status = Some(p.status.clone());

    // Pointed, but no Ready controller pod listed yet: still nothing goes.
    let moved = Observed {
        webhook_service: Some(*svc.clone()),
        ..base.clone()
    };
    for slices in [
        vec![],
        vec![webhook_slice(&[("legacy", true)])],
        vec![webhook_slice(&[("kong-kong-controller-abc-x1", false)])],
    ] {
        let p = plan(
            &m,
            &Observed {
                webhook_slices: slices.clone(),
                ..moved.clone()
            },
            later(2),
        );
        assert!(p.actions.is_empty(), "{slices:?}: {:?}", p.actions);
        assert_eq!(
            p.status.webhook.as_ref().map(|w| w.served_by.as_str()),
            Some("kong-kong")
        );
    }

    // Listed and Ready: reported, and the hold on the rollout is released.
    let p = plan(
        &m,
        &Observed {
            webhook_slices: vec![webhook_slice(&[("kong-kong-controller-abc-x1", true)])],
            ..moved.clone()
        },
        later(3),
    );
    assert_eq!(
        p.status.webhook,
        Some(WebhookStatus {
            service: WEBHOOK.into(),
            served_by: "kong-kong-controller".into(),
        })
    );
    assert!(has_event(&p, "WebhookMoved"));
    assert_eq!(min_ready(&p), None, "{:?}", p.actions);
    assert!(matches!(p.actions.as_slice(), [Action::ReplaceProxy(_)]));

    // Someone else pointed the Service elsewhere: the operator leaves it.
    let elsewhere = webhook_service(
        WEBHOOK,
        BTreeMap::from([("app".to_string(), "other".to_string())]),
        json!("webhook"),
    );
    let p = plan(
        &m,
        &Observed {
            webhook_service: Some(elsewhere),
            ..base.clone()
        },
        later(2),
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|msg| msg.contains("does not point it at the controller")),
        "{:?}",
        p.status.message
    );
}

#[test]
fn kong_order_moves_the_webhook_once_no_sidecar_pod_is_left() {
    let d = with_webhook_port();
    let spec = json!({ "cutover": "DeleteLegacyPods" });
    let m = with_webhook(spec, Phase::DeletingLegacyPods, &d);
    // Its controller cannot be Ready while a sidecar pod is listed.
    let mut ctrl = controller(&m, &d);
    ctrl.status = Some(DeploymentStatus::default());
    let base = Observed {
        proxy: Some(migrated(&d, &m, false)),
        controller: Some(ctrl),
        webhook_service: Some(chart_webhook()),
        ..Default::default()
    };
    let p = plan(
        &m,
        &Observed {
            pods: vec![pod("legacy", true, true, "10.0.0.1")],
            ..base.clone()
        },
        later(1),
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::RepointWebhook(_))),
        "the sidecars serve it while they run: {:?}",
        p.actions
    );
    let mut proxy = migrated(&d, &m, false);
    proxy.status = Some(settled(1));
    let p = plan(
        &m,
        &Observed {
            proxy: Some(proxy),
            pods: vec![pod("new", false, true, "10.0.0.2")],
            ..base
        },
        later(2),
    );
    assert!(
        matches!(p.actions.as_slice(), [Action::RepointWebhook(_)]),
        "{:?}",
        p.actions
    );
    assert_ne!(p.status.phase, Phase::Succeeded);
}

#[test]
fn rollback_and_deletion_point_the_webhook_back_before_the_controller_goes() {
    let d = with_webhook_port();
    for how in ["rollback", "deletion"] {
        let mut m = with_webhook(json!({}), Phase::DeletingLegacyPods, &d);
        if how == "rollback" {
            m.spec.rollback = true;
        } else {
            m.metadata.deletion_timestamp = Some(Time(now()));
        }
        let ctrl = controller(&m, &d);
        let mut ctrl_uid = ctrl.clone();
        ctrl_uid.metadata.uid = Some("uid-deploy".into());
        if let Some(s) = m.status.as_mut() {
            if let Some(o) = s.original.as_mut() {
                o.webhook_selector = Some(chart_selector());
            }
            s.webhook = Some(WebhookStatus {
                service: WEBHOOK.into(),
                served_by: "kong-kong-controller".into(),
            });
        }
        let mut pointed = chart_webhook();
        if let Some(s) = pointed.spec.as_mut() {
            s.selector = Some(selector_labels(&ctrl));
        }
        pointed
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(HANDOFF_LABEL.into(), "true".into());
        // The sidecar comes back first, the webhook Service left as it is.
        let start = Observed {
            proxy: Some(migrated(&d, &m, false)),
            pods: vec![pod("new", false, true, "10.0.0.2")],
            controller: Some(ctrl_uid.clone()),
            webhook_service: Some(pointed.clone()),
            ..Default::default()
        };
        let p = plan(&m, &start, now());
        let [Action::ReplaceProxy(restored)] = p.actions.as_slice() else {
            panic!("{how}: the sidecar first: {:?}", p.actions)
        };
        m.status = Some(p.status.clone());
        // Its pods are back.
        let mut restored = *restored.clone();
        restored.status = Some(settled(1));
        let base = Observed {
            proxy: Some(restored),
            pods: vec![pod("sidecar", true, true, "10.0.0.5")],
            controller: Some(ctrl_uid),
            webhook_service: Some(pointed),
            webhook_slices: vec![webhook_slice(&[("kong-kong-controller-abc-x1", true)])],
            ..Default::default()
        };
        let p = plan(&m, &base, later(1));
        let [Action::RepointWebhook(back)] = p.actions.as_slice() else {
            panic!("{how}: the webhook goes back first: {:?}", p.actions)
        };
        assert_eq!(selector_of(back), chart_selector(), "{how}");
        assert_eq!(
            back.metadata.labels,
            chart_webhook().metadata.labels,
            "{how}: exactly as it was"
        );
        m.status = Some(p.status.clone());
        let back = Observed {
            webhook_service: Some(*back.clone()),
            ..base.clone()
        };
        let p = plan(&m, &back, later(2));
        assert!(
            !p.actions
                .iter()
                .any(|a| matches!(a, Action::DeleteController { .. })),
            "{how}: the controller stays until a sidecar pod serves the webhook: {:?}",
            p.actions
        );
        let p = plan(
            &m,
            &Observed {
                webhook_slices: vec![webhook_slice(&[("sidecar", true)])],
                ..back.clone()
            },
            later(3),
        );
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::DeleteController { .. })),
            "{how}: {:?}",
            p.actions
        );
        assert_eq!(
            p.status.webhook.as_ref().map(|w| w.served_by.as_str()),
            Some("kong-kong"),
            "{how}"
        );
        assert!(has_event(&p, "WebhookRestored"), "{how}");
    }
}

fn webhook_parts(c: &Container) -> (Value, Value) {
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("webhook"))
        .map(|p| json!([p.container_port, p.protocol]));
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "webhook-cert")
        .map(|m| json!([m.mount_path, m.read_only]));
    (json!(port), json!(mount))
}

#[test]
fn the_controller_serves_the_webhook_as_the_charts_controller_release_does() {
    for version in ["2.52.0", "2.30.0"] {
        let source: Deployment = chart_object(
            &format!("chart-{version}-sidecar.yaml"),
            "Deployment",
            "kong-kong",
        );
        let m = in_phase(
            json!({ "controller": { "release": "kong-controller" } }),
            Phase::DeployingController,
            &source,
        );
        let ours = controller_objects(&m, &migrated(&source, &m, false), &recorded(&m))
            .expect("controller")
            .deployment;
        let chart: Deployment = chart_object(
            &format!("chart-{version}-controller-release.yaml"),
            "Deployment",
            "kong-controller-kong",
        );
        let container = |d: &Deployment| {
            template_container(d, "ingress-controller")
                .cloned()
                .expect("controller container")
        };
        let (port, mount) = webhook_parts(&container(&ours));
        assert_ne!(port, Value::Null, "chart {version}: the webhook port");
        assert_eq!(
            (port, mount),
            webhook_parts(&container(&chart)),
            "chart {version}: port and mount as the chart renders them"
        );
        assert_eq!(
            env_value(&container(&ours), "CONTROLLER_ADMISSION_WEBHOOK_LISTEN"),
            env_value(&container(&chart), "CONTROLLER_ADMISSION_WEBHOOK_LISTEN"),
            "chart {version}"
        );
        // The Secret is the install's own, whose certificate the
        // ValidatingWebhookConfiguration's caBundle trusts.
        let secret = ours
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == "webhook-cert"))
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone());
        assert_eq!(
            secret.as_deref(),
            Some("kong-kong-validation-webhook-keypair"),
            "chart {version}"
        );
    }
}
