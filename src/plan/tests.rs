//! Table-driven tests of the state machine: each case is a SidecarMigration in
//! some phase, what the cluster shows, and what `plan` must decide.

use super::facts::{container_names, env_value};
use super::render::record_original;
use super::*;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

const NS: &str = "kong";

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("valid time")
}

fn later(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid time")
}

fn scm(spec: serde_json::Value) -> SidecarMigration {
    let mut spec = spec;
    spec.as_object_mut()
        .expect("spec object")
        .entry("proxyDeployment")
        .or_insert(json!("kong-kong"));
    let mut m = SidecarMigration::new("migrate", serde_json::from_value(spec).expect("valid spec"));
    m.metadata.namespace = Some(NS.into());
    m.metadata.generation = Some(1);
    m.metadata.uid = Some("uid-1".into());
    m
}

/// The kong chart's sidecar Deployment, trimmed to what the migration reads.
fn sidecar_deployment(image: &str) -> Deployment {
    let mut d: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "kong-kong", "namespace": NS, "generation": 1, "resourceVersion": "10",
            "labels": { "app.kubernetes.io/managed-by": "Helm" },
            "annotations": { "meta.helm.sh/release-name": "kong" } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong", "app.kubernetes.io/component": "app" } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" } },
            "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong", "app.kubernetes.io/component": "app" } },
                "spec": {
                    "serviceAccountName": "kong-kong",
                    "containers": [
                        { "name": "ingress-controller", "image": image,
                          "env": [
                            { "name": "CONTROLLER_KONG_ADMIN_URL", "value": "https://localhost:8444" },
                            { "name": "CONTROLLER_PUBLISH_SERVICE", "value": "kong/kong-kong-proxy" },
                            { "name": "CONTROLLER_KONG_ADMIN_TOKEN", "valueFrom": { "secretKeyRef": { "name": "kong-admin-token", "key": "token" } } }
                          ],
                          "volumeMounts": [ { "name": "webhook-cert", "mountPath": "/admission-webhook" } ] },
                        { "name": "proxy", "image": "kong:3.9",
                          "env": [
                            { "name": "KONG_ADMIN_LISTEN", "value": "127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl" },
                            { "name": "KONG_DATABASE", "value": "off" },
                            { "name": "KONG_KIC", "value": "on" }
                          ],
                          "ports": [ { "name": "proxy", "containerPort": 8000, "protocol": "TCP" } ],
                          "volumeMounts": [ { "name": "prefix", "mountPath": "/kong_prefix/" } ] }
                    ],
                    "volumes": [ { "name": "webhook-cert", "secret": { "secretName": "kong-kong-validation-webhook-keypair" } },
                                 { "name": "prefix", "emptyDir": {} } ]
                }
            }
        }
    }))
    .expect("valid deployment");
    d.status = Some(settled(1));
    d
}

fn settled(n: i32) -> DeploymentStatus {
    DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(n),
        updated_replicas: Some(n),
        ready_replicas: Some(n),
        available_replicas: Some(n),
        ..Default::default()
    }
}

fn pod(name: &str, sidecar: bool, ready: bool, ip: &str) -> Pod {
    let mut containers = vec![json!({ "name": "proxy", "image": "kong:3.9" })];
    if sidecar {
        containers.insert(
            0,
            json!({ "name": "ingress-controller", "image": "kic:3.4" }),
        );
    }
    let mut p: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NS,
            "ownerReferences": [ { "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs", "controller": true } ] },
        "spec": { "containers": containers }
    }))
    .expect("valid pod");
    p.status = Some(PodStatus {
        pod_ip: Some(ip.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

fn slice_listing(pods: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kong-kong-admin-abc".into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: pods
            .iter()
            .map(|p| Endpoint {
                addresses: vec!["10.0.0.1".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(false),
                    ..Default::default()
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some((*p).into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("kong-admin-tls".into()),
            port: Some(8444),
            ..Default::default()
        }]),
    }
}

/// A migration that has run every step before `phase`, with its record.
fn in_phase(spec: serde_json::Value, phase: Phase, proxy: &Deployment) -> SidecarMigration {
    let mut m = scm(spec);
    let mut status = SidecarMigrationStatus {
        phase,
        ..Default::default()
    };
    status.steps = step_list(&m.spec, &[]);
    for step in &mut status.steps {
        if step.name == phase {
            step.state = StepState::Running;
            step.started_at = Some(Time(now()));
            step.attempts = 1;
            break;
        }
        step.state = StepState::Succeeded;
    }
    if phase != Phase::Validating {
        status.original = record_original(&m.spec, proxy, None, &m);
    }
    m.status = Some(status);
    m
}

fn migrated(proxy: &Deployment, m: &SidecarMigration, hold: bool) -> Deployment {
    let original = m
        .status
        .as_ref()
        .and_then(|s| s.original.clone())
        .unwrap_or_default();
    let mut d = with_rollout(
        migrate_template(proxy, &m.spec),
        Rollout::Held {
            approval_hold: hold,
        },
        &original,
    );
    d.status = proxy.status.clone();
    d
}

fn cond<'a>(p: &'a Plan, type_: &str) -> &'a Condition {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

fn has_event(p: &Plan, reason: &str) -> bool {
    p.events.iter().any(|e| e.reason == reason)
}

fn without_container(mut d: Deployment, name: &str) -> Deployment {
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.containers.retain(|c| c.name != name);
    }
    d
}

#[test]
fn bad_input_is_reported_and_changes_nothing() {
    let kic = "kong/kubernetes-ingress-controller:3.4.1";
    let no_proxy_container = without_container(sidecar_deployment(kic), "proxy");
    let foreign_controller: Deployment = serde_json::from_value(
        json!({ "metadata": { "name": "kong-kong-controller", "namespace": NS } }),
    )
    .expect("deployment");
    let mut rival = scm(json!({}));
    rival.metadata.name = Some("earlier".into());
    rival.status = Some(SidecarMigrationStatus {
        phase: Phase::DisablingSidecar,
        original: Some(Original::default()),
        ..Default::default()
    });
    let without_sidecar = without_container(sidecar_deployment(kic), "ingress-controller");
    let cases: Vec<(&str, Observed, &str)> = vec![
        (
            "missing deployment",
            Observed::default(),
            "ProxyDeploymentNotFound",
        ),
        (
            "no proxy container",
            Observed {
                proxy: Some(no_proxy_container),
                ..Default::default()
            },
            "ProxyContainerNotFound",
        ),
        (
            "KIC older than 2.11",
            Observed {
                proxy: Some(sidecar_deployment(
                    "kong/kubernetes-ingress-controller:2.10.4",
                )),
                ..Default::default()
            },
            "UnsupportedControllerVersion",
        ),
        (
            "controller name taken",
            Observed {
                proxy: Some(sidecar_deployment(kic)),
                controller: Some(foreign_controller),
                ..Default::default()
            },
            "ControllerNameTaken",
        ),
        (
            "second migration of the same Deployment",
            Observed {
                proxy: Some(sidecar_deployment(kic)),
                others: vec![rival.clone()],
                ..Default::default()
            },
            "DuplicateMigration",
        ),
        (
            "second migration after the first removed the sidecar",
            Observed {
                proxy: Some(without_sidecar),
                others: vec![rival],
                ..Default::default()
            },
            "DuplicateMigration",
        ),
    ];
    for (name, obs, reason) in cases {
        let p = plan(&scm(json!({})), &obs, now());
        assert_eq!(p.status.phase, Phase::Failed, "{name}");
        assert!(
            p.actions.is_empty(),
            "{name}: nothing may change, got {:?}",
            p.actions
        );
        assert_eq!(cond(&p, "Stalled").status, "True", "{name}");
        assert_eq!(cond(&p, "Stalled").reason, reason, "{name}");
        assert_eq!(cond(&p, "Ready").status, "False", "{name}");
        assert!(has_event(&p, reason), "{name}: event {reason}");
        assert!(p.status.original.is_none(), "{name}");
        assert!(
            p.status.message.as_deref().is_some_and(|m| m.len() > 20),
            "{name}: says how to fix it"
        );
    }
}

#[test]
fn already_migrated_deployment_succeeds_with_a_message() {
    let d = sidecar_deployment("kic:3.4");
    let m = scm(json!({}));
    let gateway = migrate_template(&d, &m.spec);
    let p = plan(
        &m,
        &Observed {
            proxy: Some(gateway),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::Succeeded);
    assert!(p.actions.is_empty());
    assert!(has_event(&p, "AlreadyMigrated"));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("already"))
    );
}

#[test]
fn failed_validation_goes_on_once_the_cause_is_fixed() {
    let mut m = scm(json!({}));
    m.status = Some(plan(&m, &Observed::default(), now()).status);
    let p = plan(
        &m,
        &Observed {
            proxy: Some(sidecar_deployment("kic:3.4")),
            ..Default::default()
        },
        later(5),
    );
    assert_eq!(p.status.phase, Phase::DisablingSidecar);
    assert!(p.status.original.is_some());
}

#[test]
fn dry_run_fills_the_plan_and_changes_nothing() {
    let obs = Observed {
        proxy: Some(sidecar_deployment("kic:3.4")),
        pods: vec![pod("kong-kong-1", true, true, "10.0.0.1")],
        ..Default::default()
    };
    let p = plan(&scm(json!({ "dryRun": true })), &obs, now());
    assert!(p.actions.is_empty());
    assert_eq!(p.status.phase, Phase::Pending);
    assert_eq!(cond(&p, "Ready").reason, "DryRun");
    assert!(p.status.original.is_none());
    let changes: Vec<String> = p
        .status
        .plan
        .iter()
        .map(|c| format!("{} {}", c.object, c.change))
        .collect();
    for want in [
        "Deployment/kong-kong remove container ingress-controller",
        "Deployment/kong-kong remove env KONG_KIC",
        "Deployment/kong-kong-controller create with image kic:3.4",
        "Service/kong-kong-admin create headless Service",
        "Pod/kong-kong-1 retired by the rolling update",
    ] {
        assert!(
            changes.iter().any(|c| c.starts_with(want)),
            "plan lacks {want:?}: {changes:#?}"
        );
    }
}

#[test]
fn warnings_name_the_values_gitops_must_commit() {
    let values = [
        "ingressController.enabled: false",
        "admin.enabled: true",
        "admin.type: ClusterIP",
        "admin.clusterIP: None",
        "deployment.kong.enabled: false",
        "ingressController.gatewayDiscovery.enabled: true",
        "ingressController.gatewayDiscovery.adminApiService.name: kong-kong-admin",
    ];
    let gitops = |labels: Value, annotations: Value| {
        let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4.1");
        d.metadata.labels = serde_json::from_value(labels).expect("labels");
        d.metadata.annotations = serde_json::from_value(annotations).expect("annotations");
        d
    };
    let cases = [
        (
            "Helm",
            sidecar_deployment("kong/kubernetes-ingress-controller:3.4.1"),
            "Helm release kong",
        ),
        (
            "Argo CD",
            gitops(json!({ "argocd.argoproj.io/instance": "kong" }), json!({})),
            "Argo CD",
        ),
        (
            "Flux",
            gitops(json!({ "helm.toolkit.fluxcd.io/name": "kong" }), json!({})),
            "Flux",
        ),
    ];
    for (name, proxy, owner) in cases {
        let p = plan(
            &scm(json!({})),
            &Observed {
                proxy: Some(proxy),
                ..Default::default()
            },
            now(),
        );
        let warning = p
            .status
            .warnings
            .iter()
            .find(|w| w.contains(&format!("is managed by {owner}")))
            .unwrap_or_else(|| panic!("{name}: no warning in {:?}", p.status.warnings));
        for v in values {
            assert!(warning.contains(v), "{name}: {v:?} missing from {warning}");
        }
        assert!(
            p.events
                .iter()
                .any(|e| e.warning && e.reason == "ValidationWarning" && e.note == *warning),
            "{name}: no event"
        );
    }
    // A tag-less image is a warning of its own.
    let p = plan(
        &scm(json!({})),
        &Observed {
            proxy: Some(sidecar_deployment("kic:latest")),
            ..Default::default()
        },
        now(),
    );
    assert!(
        p.status
            .warnings
            .iter()
            .any(|w| w.contains("names no version"))
    );
}

#[test]
fn disabling_the_sidecar_records_the_original_first() {
    let d = sidecar_deployment("kic:3.4");
    let p = plan(
        &scm(json!({})),
        &Observed {
            proxy: Some(d.clone()),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::DisablingSidecar);
    let original = p
        .status
        .original
        .as_ref()
        .expect("original recorded with the status write");
    assert_eq!(original.sidecar["name"], "ingress-controller");
    assert_eq!(original.sidecar_index, 0);
    // A secret reference is carried as a reference, never resolved.
    assert_eq!(
        original.sidecar["env"][2]["valueFrom"]["secretKeyRef"]["name"],
        "kong-admin-token"
    );
    let Some(Action::ReplaceProxy(new)) = p.actions.first() else {
        panic!("replaces the proxy first: {:?}", p.actions)
    };
    let pod = new
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    assert_eq!(container_names(&pod.containers), "proxy");
    let proxy = &pod.containers[0];
    assert_eq!(
        env_value(proxy, "KONG_ADMIN_LISTEN").as_deref(),
        Some("0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl")
    );
    assert_eq!(env_value(proxy, "KONG_KIC"), None);
    assert!(
        proxy
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("admin-tls") && p.container_port == 8444)
    );
    let strategy = new
        .spec
        .as_ref()
        .and_then(|s| s.strategy.clone())
        .and_then(|s| s.rolling_update)
        .expect("rolling update");
    assert_eq!(strategy.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(
        new.metadata.resource_version.as_deref(),
        Some("10"),
        "replace is conditional on what was read"
    );
    let Some(Action::ApplyAdminService(svc)) = p.actions.get(1) else {
        panic!("applies the admin Service: {:?}", p.actions)
    };
    let svc_spec = svc.spec.as_ref().expect("spec");
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(
        svc_spec
            .selector
            .as_ref()
            .and_then(|s| s.get(DISCOVERY_LABEL))
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn kong_order_does_not_select_on_the_discovery_label() {
    let d = sidecar_deployment("kic:3.4");
    let p = plan(
        &scm(json!({ "cutover": "DeleteLegacyPods" })),
        &Observed {
            proxy: Some(d),
            ..Default::default()
        },
        now(),
    );
    let svc = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyAdminService(s) => Some(s.clone()),
            _ => None,
        })
        .expect("admin Service applied");
    assert!(
        !svc.spec
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .contains_key(DISCOVERY_LABEL)
    );
}

#[test]
fn the_template_round_trips() {
    let d = sidecar_deployment("kic:3.4");
    let m = scm(json!({}));
    let original = record_original(&m.spec, &d, None, &m).expect("record");
    let migrated = with_rollout(
        migrate_template(&d, &m.spec),
        Rollout::Held {
            approval_hold: true,
        },
        &original,
    );
    assert_eq!(
        migrate_template(&migrated, &m.spec),
        migrated,
        "migrating twice changes nothing"
    );
    let back = with_rollout(
        restore_template(&migrated, &m.spec, &original),
        Rollout::Original,
        &original,
    );
    assert_eq!(back, d, "rollback restores the sidecar rendering exactly");
}

#[test]
fn each_forward_step_acts_then_hands_over() {
    let d = sidecar_deployment("kic:3.4");
    let spec = json!({});
    // DisablingSidecar finished: the next reconcile deploys the controller.
    let m = in_phase(spec.clone(), Phase::DisablingSidecar, &d);
    let done = migrated(&d, &m, false);
    let svc = admin_service(&m, &d, true);
    let obs = Observed {
        proxy: Some(done.clone()),
        admin_service: Some(svc.clone()),
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    assert!(has_event(&p, "SidecarDisabled"));
    assert_eq!(p.status.phase, Phase::DeployingController);
    let Some(Action::ApplyController(objs)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    let c = &objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
        .containers[0];
    assert_eq!(
        env_value(c, "CONTROLLER_KONG_ADMIN_SVC").as_deref(),
        Some("kong/kong-kong-admin")
    );
    assert_eq!(env_value(c, "CONTROLLER_KONG_ADMIN_URL"), None);
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "CONTROLLER_KONG_ADMIN_TOKEN" && e.value_from.is_some())
    );
    let vols = objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.clone());
    assert_eq!(
        vols.map(|v| v.len()),
        Some(1),
        "only the volumes the sidecar mounts"
    );
    assert_eq!(
        objs.role_binding
            .subjects
            .as_ref()
            .map(|s| s[0].name.as_str()),
        Some("kong-kong")
    );

    // WaitingForAdminService needs listed new pods, an Available controller and a Ready new gateway.
    let m = in_phase(spec.clone(), Phase::WaitingForAdminService, &d);
    let mut controller = objs.deployment.clone();
    let base = Observed {
        proxy: Some(migrated(&d, &m, false)),
        admin_service: Some(svc.clone()),
        controller: Some(controller.clone()),
        pods: vec![
            pod("old", true, true, "10.0.0.1"),
            pod("new", false, false, "10.0.0.2"),
        ],
        ..Default::default()
    };
    let p = plan(&m, &base, later(1));
    assert_eq!(p.status.phase, Phase::WaitingForAdminService);
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|s| s.contains("to list a new gateway pod"))
    );
    let listed = Observed {
        admin_slices: vec![slice_listing(&["new"])],
        ..base.clone()
    };
    let p = plan(&m, &listed, later(1));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|s| s.contains("Available")),
        "{:?}",
        p.status.message
    );
    controller.status = Some(settled(1));
    let available = Observed {
        controller: Some(controller.clone()),
        ..listed.clone()
    };
    let p = plan(&m, &available, later(1));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|s| s.contains("turn Ready")),
        "{:?}",
        p.status.message
    );
    let ready = Observed {
        pods: vec![
            pod("old", true, true, "10.0.0.1"),
            pod("new", false, true, "10.0.0.2"),
        ],
        ..available
    };
    let p = plan(&m, &ready, later(1));
    assert!(has_event(&p, "AdminServiceReady"));
    assert_eq!(p.status.phase, Phase::DeletingLegacyPods);
    assert_eq!(p.status.legacy_pods, vec!["old".to_string()]);
    assert!(
        p.actions.is_empty(),
        "ZeroDowntime: the rolling update retires the legacy pod"
    );
    assert_eq!(cond(&p, "Reconciling").status, "True");
}

#[test]
fn the_end_restores_the_rollout_and_succeeds() {
    let d = sidecar_deployment("kic:3.4");
    let m = in_phase(json!({}), Phase::DeletingLegacyPods, &d);
    let svc = admin_service(&m, &d, true);
    let obs = Observed {
        proxy: Some(migrated(&d, &m, false)),
        admin_service: Some(svc),
        pods: vec![pod("new", false, true, "10.0.0.2")],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    let Some(Action::ReplaceProxy(restored)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        restored.spec.as_ref().and_then(|s| s.strategy.clone()),
        d.spec.as_ref().and_then(|s| s.strategy.clone())
    );
    let Some(Action::ApplyAdminService(svc)) = p.actions.get(1) else {
        panic!("{:?}", p.actions)
    };
    assert!(
        !svc.spec
            .clone()
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .contains_key(DISCOVERY_LABEL)
    );
    let done = Observed {
        proxy: Some(*restored.clone()),
        admin_service: Some(*svc.clone()),
        ..obs
    };
    let p = plan(&m, &done, later(2));
    assert_eq!(p.status.phase, Phase::Succeeded);
    assert_eq!(cond(&p, "Ready").status, "True");
    assert_eq!(cond(&p, "Reconciling").status, "False");
    assert_eq!(p.status.step.as_deref(), Some("5/5"));
    assert!(has_event(&p, "MigrationSucceeded"));
}

#[test]
fn manual_approval_holds_every_legacy_pod() {
    let d = sidecar_deployment("kic:3.4");
    let spec = json!({ "approval": "Manual" });
    let p = plan(
        &scm(spec.clone()),
        &Observed {
            proxy: Some(d.clone()),
            ..Default::default()
        },
        now(),
    );
    let Some(Action::ReplaceProxy(held)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        held.spec.as_ref().and_then(|s| s.min_ready_seconds),
        Some(APPROVAL_HOLD_MIN_READY_SECONDS)
    );

    let m = in_phase(spec.clone(), Phase::AwaitingApproval, &d);
    let obs = Observed {
        proxy: Some(migrated(&d, &m, true)),
        pods: vec![
            pod("old", true, true, "10.0.0.1"),
            pod("new", false, true, "10.0.0.2"),
        ],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(10_000));
    assert_eq!(p.status.phase, Phase::AwaitingApproval);
    assert!(
        p.actions.is_empty(),
        "no legacy pod is touched before approval"
    );
    assert_eq!(cond(&p, "Ready").reason, "AwaitingApproval");
    assert_eq!(
        cond(&p, "Stalled").status,
        "False",
        "waiting for a person is not a failure, and has no deadline"
    );

    let mut approved = m.clone();
    approved.spec.approved = true;
    let p = plan(&approved, &obs, later(10_000));
    assert!(has_event(&p, "Approved"));
    assert_eq!(p.status.phase, Phase::DeletingLegacyPods);
    let Some(Action::ReplaceProxy(released)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        released.spec.as_ref().and_then(|s| s.min_ready_seconds),
        None,
        "the hold is released"
    );
}

#[test]
fn kong_order_orphans_legacy_replica_sets_and_evicts_one_pod_at_a_time() {
    let d = sidecar_deployment("kic:3.4");
    let m = in_phase(
        json!({ "cutover": "DeleteLegacyPods" }),
        Phase::DeletingLegacyPods,
        &d,
    );
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": { "name": "kong-kong-old" },
        "spec": { "selector": {}, "template": d.spec.as_ref().map(|s| s.template.clone()) }
    }))
    .expect("rs");
    let obs = Observed {
        proxy: Some(migrated(&d, &m, false)),
        replica_sets: vec![rs],
        pods: vec![
            pod("old-a", true, true, "10.0.0.1"),
            pod("old-b", true, true, "10.0.0.3"),
            pod("new", false, false, "10.0.0.2"),
        ],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    assert_eq!(
        p.actions,
        vec![
            Action::OrphanReplicaSet("kong-kong-old".into()),
            Action::EvictPod("old-a".into())
        ]
    );
    let mut terminating = obs.clone();
    terminating.replica_sets.clear();
    terminating.pods[0].metadata.deletion_timestamp = Some(Time(now()));
    let p = plan(&m, &terminating, later(2));
    assert!(
        p.actions.is_empty(),
        "the next eviction waits for the last pod to go: {:?}",
        p.actions
    );
}

#[test]
fn rollback_from_every_phase_restores_the_sidecar() {
    let d = sidecar_deployment("kic:3.4");
    for phase in [
        Phase::DisablingSidecar,
        Phase::DeployingController,
        Phase::WaitingForAdminService,
        Phase::AwaitingApproval,
        Phase::DeletingLegacyPods,
    ] {
        let mut m = in_phase(json!({ "approval": "Manual", "rollback": true }), phase, &d);
        let obs = Observed {
            proxy: Some(migrated(&d, &m, true)),
            pods: vec![pod("new", false, true, "10.0.0.2")],
            ..Default::default()
        };
        let p = plan(&m, &obs, later(1));
        assert_eq!(p.status.phase, Phase::RollingBack, "{phase}");
        assert!(has_event(&p, "RollingBack"), "{phase}");
        let Some(Action::ReplaceProxy(back)) = p.actions.first() else {
            panic!("{phase}: {:?}", p.actions)
        };
        let pod_spec = back
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        assert_eq!(
            container_names(&pod_spec.containers),
            "ingress-controller, proxy",
            "{phase}"
        );
        assert_eq!(
            back.spec.as_ref().and_then(|s| s.min_ready_seconds),
            None,
            "{phase}: no approval hold in rollback"
        );

        // Once the sidecar pods have rolled out, the migration's objects go, then the rollout settings return.
        m.status = Some(p.status.clone());
        let mut rolled = *back.clone();
        rolled.status = Some(settled(1));
        let ctrl = controller_objects(
            &m,
            &d,
            m.status
                .as_ref()
                .and_then(|s| s.original.as_ref())
                .expect("original"),
        )
        .expect("controller");
        let obs = Observed {
            proxy: Some(rolled.clone()),
            pods: vec![pod("restored", true, true, "10.0.0.5")],
            controller: Some(ctrl.deployment.clone()),
            controller_role: Some(ctrl.role.clone()),
            admin_service: Some(admin_service(&m, &d, true)),
            ..Default::default()
        };
        let p = plan(&m, &obs, later(2));
        assert!(
            p.actions.contains(&Action::DeleteController),
            "{phase}: {:?}",
            p.actions
        );
        assert!(p.actions.contains(&Action::DeleteAdminService), "{phase}");
        let restored = p.actions.iter().find_map(|a| match a {
            Action::ReplaceProxy(d) => Some(d.clone()),
            _ => None,
        });
        assert_eq!(
            restored.and_then(|r| r.spec.and_then(|s| s.strategy)),
            d.spec.as_ref().and_then(|s| s.strategy.clone())
        );
        let mut original_again = d.clone();
        original_again.status = Some(settled(1));
        let gone = Observed {
            proxy: Some(original_again),
            pods: vec![pod("restored", true, true, "10.0.0.5")],
            ..Default::default()
        };
        let p = plan(&m, &gone, later(3));
        assert_eq!(p.status.phase, Phase::RolledBack, "{phase}");
        assert_eq!(
            cond(&p, "Ready").status,
            "True",
            "{phase}: the rollback asked for is the desired state"
        );
        assert!(has_event(&p, "RolledBack"), "{phase}");
    }
}

#[test]
fn rollback_before_any_change_has_nothing_to_undo() {
    let p = plan(
        &scm(json!({ "rollback": true })),
        &Observed {
            proxy: Some(sidecar_deployment("kic:3.4")),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::RolledBack);
    assert!(p.actions.is_empty());
}

#[test]
fn step_timeouts_roll_back_or_hold() {
    let d = sidecar_deployment("kic:3.4");
    let m = in_phase(
        json!({ "stepTimeoutSeconds": 60 }),
        Phase::WaitingForAdminService,
        &d,
    );
    let obs = Observed {
        proxy: Some(migrated(&d, &m, false)),
        admin_service: Some(admin_service(&m, &d, true)),
        ..Default::default()
    };
    let p = plan(&m, &obs, later(30));
    assert_eq!(p.status.phase, Phase::WaitingForAdminService);
    let requeue = p.requeue_after.expect("wakes up at the deadline");
    assert!(
        requeue <= Duration::from_secs(31) && requeue >= Duration::from_secs(29),
        "{requeue:?}"
    );

    let p = plan(&m, &obs, later(61));
    assert_eq!(p.status.phase, Phase::RollingBack);
    assert!(has_event(&p, "StepTimedOut"));
    assert!(matches!(p.actions.first(), Some(Action::ReplaceProxy(_))));

    let m = in_phase(
        json!({ "stepTimeoutSeconds": 60, "onTimeout": "Pause" }),
        Phase::WaitingForAdminService,
        &d,
    );
    let p = plan(&m, &obs, later(61));
    assert_eq!(p.status.phase, Phase::WaitingForAdminService);
    assert!(p.actions.is_empty());
    assert_eq!(cond(&p, "Stalled").reason, "StepTimedOut");
}

#[test]
fn pause_stops_and_resume_restarts_the_step_clock() {
    let d = sidecar_deployment("kic:3.4");
    let m = in_phase(
        json!({ "paused": true, "stepTimeoutSeconds": 60 }),
        Phase::DisablingSidecar,
        &d,
    );
    let obs = Observed {
        proxy: Some(d.clone()),
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    assert_eq!(p.status.phase, Phase::Paused);
    assert!(p.actions.is_empty());
    assert!(has_event(&p, "Paused"));

    let mut resumed = m.clone();
    resumed.spec.paused = false;
    resumed.status = Some(p.status);
    let p = plan(&resumed, &obs, later(3600));
    assert!(has_event(&p, "Resumed"));
    assert_eq!(
        p.status.phase,
        Phase::DisablingSidecar,
        "an hour of pause is no timeout"
    );
    assert!(matches!(p.actions.first(), Some(Action::ReplaceProxy(_))));
    assert_eq!(p.status.steps[1].attempts, 2);
}

#[test]
fn drift_is_reported_not_overwritten() {
    let d = sidecar_deployment("kic:3.4");
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
    let d = sidecar_deployment("kic:3.4");
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

#[test]
fn deletion_rolls_back_an_unfinished_migration_only() {
    let d = sidecar_deployment("kic:3.4");
    let mut unfinished = in_phase(json!({}), Phase::DeployingController, &d);
    unfinished.metadata.deletion_timestamp = Some(Time(now()));
    let obs = Observed {
        proxy: Some(migrated(&d, &unfinished, false)),
        ..Default::default()
    };
    let p = plan(&unfinished, &obs, later(1));
    assert_eq!(p.status.phase, Phase::RollingBack);
    assert!(!p.actions.contains(&Action::RemoveFinalizer));

    let mut done = unfinished.clone();
    if let Some(s) = done.status.as_mut() {
        s.phase = Phase::Succeeded;
    }
    let p = plan(&done, &obs, later(1));
    assert_eq!(
        p.actions,
        vec![Action::RemoveFinalizer],
        "a Succeeded migration's objects stay"
    );

    let mut never_started = scm(json!({}));
    never_started.metadata.deletion_timestamp = Some(Time(now()));
    let p = plan(&never_started, &Observed::default(), now());
    assert_eq!(p.actions, vec![Action::RemoveFinalizer]);
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let mut m = scm(json!({}));
    let first = plan(&m, &Observed::default(), now());
    m.status = Some(first.status.clone());
    let again = plan(&m, &Observed::default(), later(60));
    assert_eq!(
        cond(&again, "Stalled").last_transition_time,
        cond(&first, "Stalled").last_transition_time
    );
    assert_eq!(
        again.status, first.status,
        "a repeated decision writes nothing new"
    );
    assert!(again.events.is_empty(), "one event per transition");
}

#[test]
fn without_a_free_slot_a_migration_waits_in_pending() {
    let obs = Observed {
        proxy: Some(sidecar_deployment("kic:3.4")),
        slot: Slot::Taken { limit: 2 },
        ..Default::default()
    };
    let p = plan(&scm(json!({})), &obs, now());
    assert_eq!(p.status.phase, Phase::Pending);
    assert!(p.actions.is_empty());
    assert!(
        p.status.original.is_none(),
        "nothing recorded, nothing changed"
    );
    assert_eq!(cond(&p, "Ready").reason, "WaitingForSlot");
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("--max-concurrent-migrations=2"))
    );
    assert!(
        p.requeue_after.is_some(),
        "a slot frees without an event on this object"
    );
}
