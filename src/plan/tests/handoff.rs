//! Where a migration ends: the chart's own gateway-only rendering. Helm,
//! Argo CD or Flux applying it afterwards must find nothing to change in the
//! pod template, or every gateway pod rolls a second time.

use super::*;

/// The `kind` object named `name` in `tests/fixtures/<file>`, for namespace
/// `kong`, with the annotations `helm install` adds to what it renders.
pub(super) fn chart_object<T: serde::de::DeserializeOwned>(
    file: &str,
    kind: &str,
    name: &str,
) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .expect("fixture readable")
        .replace("${NAMESPACE}", NS);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("fixture parses");
    let mut doc = docs
        .into_iter()
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} in {file}"));
    let release = doc["metadata"]["labels"]["app.kubernetes.io/instance"].clone();
    doc["metadata"]["annotations"]["meta.helm.sh/release-name"] = release;
    doc["metadata"]["annotations"]["meta.helm.sh/release-namespace"] = NS.into();
    serde_json::from_value(doc).expect("the object parses")
}

fn chart_deployment(file: &str) -> Deployment {
    chart_object(file, "Deployment", "kong-kong")
}

/// The migrated template once no legacy pod is left, as the last step
/// leaves it.
fn finished(source: &Deployment) -> Deployment {
    let m = in_phase(json!({}), Phase::DeletingLegacyPods, source);
    let original = recorded(&m);
    render::with_original_env(
        with_rollout(
            migrate_template(source, &m.spec),
            Rollout::Original,
            &original,
        ),
        source,
        &m.spec,
    )
}

fn template_of(d: &Deployment) -> serde_json::Value {
    let mut t = serde_json::to_value(&d.spec.as_ref().expect("spec").template).expect("json");
    // The one label the migration adds that the chart does not render: it is
    // the operator's own (field manager sidecar-migrator), so neither Helm's
    // three-way merge nor a server-side apply by another manager removes it,
    // and dropping it would cost the roll this test guards against.
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(|l| l.as_object_mut())
    {
        labels.remove(crate::api::DISCOVERY_LABEL);
    }
    t
}

#[test]
fn the_migrated_gateway_template_is_the_charts_gateway_only_rendering() {
    for version in ["2.52.0", "2.30.0"] {
        let source = chart_deployment(&format!("chart-{version}-sidecar.yaml"));
        let target = chart_deployment(&format!("chart-{version}-gateway-release.yaml"));
        let got = template_of(&finished(&source));
        let want = template_of(&target);
        assert_eq!(
            serde_saphyr::to_string(&got).expect("yaml"),
            serde_saphyr::to_string(&want).expect("yaml"),
            "chart {version}: the migrated pod template differs from the gateway release's"
        );
    }
}

#[test]
fn rollback_restores_the_charts_sidecar_rendering_exactly() {
    for version in ["2.52.0", "2.30.0"] {
        let source = chart_deployment(&format!("chart-{version}-sidecar.yaml"));
        let m = in_phase(json!({}), Phase::DeletingLegacyPods, &source);
        let original = recorded(&m);
        let back = with_rollout(
            restore_template(&finished(&source), &m.spec, &original),
            Rollout::Original,
            &original,
        );
        assert_eq!(
            serde_saphyr::to_string(&back.spec).expect("yaml"),
            serde_saphyr::to_string(&source.spec).expect("yaml"),
            "chart {version}: rollback differs from the sidecar rendering"
        );
    }
}

#[test]
fn the_admin_service_is_the_gateway_releases_and_helm_adopts_it() {
    for version in ["2.52.0", "2.30.0"] {
        let source = chart_deployment(&format!("chart-{version}-sidecar.yaml"));
        let want: Service = chart_object(
            &format!("chart-{version}-gateway-release.yaml"),
            "Service",
            "kong-kong-admin",
        );
        let m = in_phase(json!({}), Phase::DeletingLegacyPods, &source);
        let got = admin_service(&m, &source, false);
        assert_eq!(got.spec, want.spec, "chart {version}: admin Service spec");
        let mut chart_labels = want.metadata.labels.clone().unwrap_or_default();
        // The one label beyond the chart's: how the operator's watches find
        // an object whose managed-by is Helm's.
        chart_labels.insert(crate::api::HANDOFF_LABEL.into(), "true".into());
        assert_eq!(
            got.metadata.labels.clone().unwrap_or_default(),
            chart_labels,
            "chart {version}: admin Service labels"
        );
        assert_eq!(helm_can_adopt(&got.metadata, "kong", NS), Ok(()));
        assert!(is_ours(&got.metadata, &m), "still provably the migration's");
    }
}

#[test]
fn without_helm_the_admin_service_is_the_operators() {
    let d = sidecar_deployment("kic:3.4");
    let mut plain = d.clone();
    plain.metadata.labels = None;
    plain.metadata.annotations = None;
    let m = in_phase(json!({}), Phase::DisablingSidecar, &plain);
    let svc = admin_service(&m, &plain, true);
    assert!(helm_can_adopt(&svc.metadata, "kong", NS).is_err());
    assert!(is_ours(&svc.metadata, &m));
}

#[test]
fn the_controller_is_named_and_selected_as_the_controller_release_renders_it() {
    for version in ["2.52.0", "2.30.0"] {
        let source = chart_deployment(&format!("chart-{version}-sidecar.yaml"));
        let want: Deployment = chart_object(
            &format!("chart-{version}-controller-release.yaml"),
            "Deployment",
            "kong-controller-kong",
        );
        let m = in_phase(
            json!({ "controller": { "release": "kong-controller" } }),
            Phase::DeployingController,
            &source,
        );
        let original = recorded(&m);
        let migrated =
            render::with_original_env(migrate_template(&source, &m.spec), &source, &m.spec);
        let got = controller_objects(&m, &migrated, &original)
            .expect("rendered")
            .deployment;
        assert_eq!(got.metadata.name, want.metadata.name, "chart {version}");
        let (got_spec, want_spec) = (got.spec.expect("spec"), want.spec.expect("spec"));
        // Immutable: Helm could not adopt a Deployment with another selector.
        assert_eq!(got_spec.selector, want_spec.selector, "chart {version}");
        assert_eq!(
            got_spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone()),
            want_spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone()),
            "chart {version}: pod labels"
        );
        let labels = got.metadata.labels.clone().unwrap_or_default();
        for (k, v) in want.metadata.labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "chart {version}: label {k}");
        }
        assert_eq!(helm_can_adopt(&got.metadata, "kong-controller", NS), Ok(()));
        assert!(is_ours(&got.metadata, &m));
        // The chart's mesh annotations, but for the token volume, which
        // follows the ServiceAccount: the gateway's until the release's own.
        let mut want_annotations = want_spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        want_annotations.insert(
            "kuma.io/service-account-token-volume".into(),
            "kong-kong-token".into(),
        );
        assert_eq!(
            got_spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
            want_annotations,
            "chart {version}: pod annotations"
        );
        // The webhook certificate the sidecar mounted is still mounted, though
        // the gateway's template no longer carries the volume.
        let pod = got_spec.template.spec.expect("pod");
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "webhook-cert")
        );
    }
}

#[test]
fn services_only_the_sidecar_serves_are_named_before_anything_changes() {
    let source = chart_deployment("chart-2.52.0-sidecar.yaml");
    let file = "chart-2.52.0-sidecar.yaml";
    let services: Vec<Service> = [
        "kong-kong-validation-webhook",
        "kong-kong-metrics",
        "kong-kong-proxy",
        "kong-kong-manager",
    ]
    .iter()
    .map(|name| chart_object(file, "Service", name))
    .collect();
    let m = scm(json!({}));
    let found = sidecar_only_services(&m.spec, &source, &services);
    let pair = |s: &str, p: &str| (s.to_string(), p.to_string());
    assert_eq!(
        found,
        [
            pair("kong-kong-validation-webhook", "webhook"),
            pair("kong-kong-metrics", "cmetrics"),
            pair("kong-kong-metrics", "cstatus"),
        ]
    );
    let obs = Observed {
        proxy: Some(source),
        sidecar_only_services: found,
        ..Default::default()
    };
    let p = plan(&m, &obs, now());
    assert!(
        p.status
            .warnings
            .iter()
            .any(|w| w.contains("Service kong-kong-validation-webhook") && w.contains("webhook")),
        "{:?}",
        p.status.warnings
    );
}

#[test]
fn status_handoff_holds_the_values_the_target_fixtures_were_rendered_from() {
    let source = chart_deployment("chart-2.52.0-sidecar.yaml");
    let m = in_phase(
        json!({ "controller": { "release": "kong-controller" } }),
        Phase::DeletingLegacyPods,
        &source,
    );
    let original = recorded(&m);
    let sidecar = render::original_sidecar(&original, &source, &m.spec).expect("sidecar");
    let h = handoff(&m, &source, Some(&sidecar), None).expect("a Helm release");
    assert!(h.notes.is_empty(), "{:?}", h.notes);
    let names: Vec<&str> = h.releases.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["kong-controller", "kong"],
        "controller release first"
    );
    let values =
        |i: usize| -> Value { serde_saphyr::from_str(&h.releases[i].values).expect("yaml") };
    // The --set flags in the headers of chart-2.52.0-*-release.yaml, plus
    // the sidecar's image so adoption keeps the KIC version.
    assert_eq!(
        values(0),
        json!({
            "deployment": { "kong": { "enabled": false } },
            "ingressController": {
                "enabled": true,
                "gatewayDiscovery": { "enabled": true, "adminApiService": { "name": "kong-kong-admin" } },
                "image": { "repository": "kong/kubernetes-ingress-controller", "tag": "3.5" },
            },
            "proxy": { "nameOverride": "kong-kong-proxy" },
        })
    );
    assert_eq!(
        values(1),
        json!({
            "ingressController": { "enabled": false },
            "admin": { "enabled": true, "type": "ClusterIP", "clusterIP": "None" },
        })
    );
    assert_eq!(
        h.releases[0].command,
        "helm install kong-controller kong/kong -n kong --version 2.52.0 -f kong-controller-values.yaml"
    );
    assert_eq!(
        h.releases[1].command,
        "helm upgrade kong kong/kong -n kong --version 2.52.0 --reuse-values -f kong-values.yaml"
    );
    // IngressClass kong: the controller release's install adopts it (the
    // chart renders it for the release its annotation names), and the
    // gateway release's upgrade, which no longer renders it, leaves it.
    assert_eq!(
        h.releases[0].before,
        [
            "kubectl annotate ingressclass kong --overwrite meta.helm.sh/release-name=kong-controller meta.helm.sh/release-namespace=kong helm.sh/resource-policy=keep"
        ]
    );
    assert!(h.releases[0].after.is_empty() && h.releases[1].before.is_empty());
    assert_eq!(
        h.releases[1].after,
        ["kubectl annotate ingressclass kong helm.sh/resource-policy-"]
    );
    // Another class: the controller release is told, and the commands name it.
    let mut custom = sidecar.clone();
    for e in custom.env.iter_mut().flatten() {
        if e.name == "CONTROLLER_INGRESS_CLASS" {
            e.value = Some("edge".into());
        }
    }
    let h = handoff(&m, &source, Some(&custom), None).expect("a Helm release");
    let values: Value = serde_saphyr::from_str(&h.releases[0].values).expect("yaml");
    assert_eq!(values["ingressController"]["ingressClass"], "edge");
    assert!(h.releases[0].before[0].starts_with("kubectl annotate ingressclass edge "));
    assert!(h.releases[1].after[0].starts_with("kubectl annotate ingressclass edge "));
    // Without a controller release, the duplicate controller is called out.
    let m = in_phase(
        json!({ "controller": { "name": "ctl" } }),
        Phase::DeletingLegacyPods,
        &source,
    );
    let sidecar = render::original_sidecar(&original, &source, &m.spec).expect("sidecar");
    let h = handoff(&m, &source, Some(&sidecar), None).expect("a Helm release");
    assert!(h.notes.iter().any(|n| n.contains("second controller")));
}

// ---- the hand-off's order, reported (plan/handoff_check.rs) ---------------

/// A Succeeded migration of the chart 2.52.0 install, with status.handoff
/// as the migration wrote it (`states`: the releases' as stored).
fn handed_off(states: [HandoffState; 2]) -> (SidecarMigration, Deployment) {
    let source = chart_deployment("chart-2.52.0-sidecar.yaml");
    let mut m = in_phase(
        json!({ "controller": { "release": "kong-controller" } }),
        Phase::DeletingLegacyPods,
        &source,
    );
    let original = recorded(&m);
    let sidecar = render::original_sidecar(&original, &source, &m.spec).expect("sidecar");
    let mut h = handoff(&m, &source, Some(&sidecar), None).expect("a Helm release");
    for (r, s) in h.releases.iter_mut().zip(states) {
        r.state = s;
    }
    let status = m.status.as_mut().expect("status");
    status.phase = Phase::Succeeded;
    for step in &mut status.steps {
        step.state = StepState::Succeeded;
    }
    status.handoff = Some(h);
    let mut proxy = finished(&source);
    proxy.status = Some(settled(1));
    (m, proxy)
}

/// The controller Deployment as observed: whose release, which account,
/// rolled out or not.
fn controller(release: &str, account: &str, rolled: bool) -> Deployment {
    let mut d: Deployment = serde_json::from_value(json!({
        "metadata": {
            "name": "kong-controller-kong", "namespace": NS, "generation": 2,
            "labels": { "app.kubernetes.io/managed-by": "Helm" },
            "annotations": {
                "meta.helm.sh/release-name": release,
                "meta.helm.sh/release-namespace": NS,
            },
        },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "c" } },
            "template": { "spec": { "serviceAccountName": account, "containers": [] } },
        },
    }))
    .expect("deployment");
    let mut status = settled(1);
    status.observed_generation = Some(if rolled { 2 } else { 1 });
    d.status = Some(status);
    d
}

fn secrets_list() -> crate::kic_rbac::Permission {
    crate::kic_rbac::needed(Some("2.52.0"))
        .into_iter()
        .find(|p| p.resource == "secrets" && p.verb == "list")
        .expect("KIC lists Secrets")
}

fn access(account: &str, missing: bool, gateway: Option<(&str, bool)>) -> Option<HandoffAccess> {
    Some(HandoffAccess {
        controller_account: account.into(),
        controller_missing: missing.then(secrets_list),
        gateway_account: gateway.map(|(g, _)| g.to_string()),
        gateway_holds_any: gateway.is_some_and(|(_, holds)| holds),
    })
}

#[test]
fn each_hand_off_step_is_done_only_once_the_operator_can_prove_it() {
    use HandoffState::*;
    const GATEWAY: &str = "kong-kong";
    const OWN: &str = "kong-controller-kong";
    struct Case {
        what: &'static str,
        stored: [HandoffState; 2],
        controller: Option<Deployment>,
        access: Option<HandoffAccess>,
        want: [HandoffState; 2],
        /// Words the controller release's message holds.
        says: &'static str,
        events: &'static [&'static str],
        looks_again: bool,
    }
    let cases = [
        Case {
            what: "at Succeeded: the controller runs as the gateway's account, which holds all",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", GATEWAY, true)),
            access: access(GATEWAY, false, None),
            want: [Ready, Waiting],
            says: "still runs as the gateway's ServiceAccount kong-kong: run `helm install kong-controller",
            events: &[],
            looks_again: true,
        },
        Case {
            what: "the gateway release upgraded first: the gateway's account lost KIC's permissions",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", GATEWAY, true)),
            access: access(GATEWAY, true, None),
            want: [Ready, Waiting],
            says: "lacks list secrets (cluster-wide) that KIC needs: its bindings are gone, as when the gateway release kong is upgraded before the controller release kong-controller is installed",
            events: &["HandoffPermissionMissing"],
            looks_again: true,
        },
        Case {
            what: "its own account, but not the release's Deployment",
            stored: [Ready, Waiting],
            controller: Some(controller("someone-else", OWN, true)),
            access: access(OWN, false, Some((GATEWAY, true))),
            want: [Ready, Waiting],
            says: "is not release kong-controller's",
            events: &[],
            looks_again: true,
        },
        Case {
            what: "the release's, rolling onto its own account",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", OWN, false)),
            access: access(OWN, false, Some((GATEWAY, true))),
            want: [Ready, Waiting],
            says: "waiting for the rollout",
            events: &[],
            looks_again: true,
        },
        Case {
            what: "the release's own account, not asked about yet",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", OWN, true)),
            access: None,
            want: [Ready, Waiting],
            says: "being checked",
            events: &[],
            looks_again: true,
        },
        Case {
            what: "answers about another account (stale) prove nothing",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", OWN, true)),
            access: access(GATEWAY, false, None),
            want: [Ready, Waiting],
            says: "being checked",
            events: &[],
            looks_again: true,
        },
        Case {
            what: "the release's own account lacks a permission (RBAC not installed)",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", OWN, true)),
            access: access(OWN, true, Some((GATEWAY, true))),
            want: [Ready, Waiting],
            says: "ServiceAccount kong-controller-kong, which lacks list secrets (cluster-wide) that KIC needs: release kong-controller's ClusterRole and Role grant it",
            events: &["HandoffPermissionMissing"],
            looks_again: true,
        },
        Case {
            what: "controller release installed: the gateway upgrade is next",
            stored: [Ready, Waiting],
            controller: Some(controller("kong-controller", OWN, true)),
            access: access(OWN, false, Some((GATEWAY, true))),
            want: [Done, Ready],
            says: "holds every permission KIC needs",
            events: &["HandoffStepDone"],
            looks_again: true,
        },
        Case {
            what: "gateway release upgraded: its account holds none of KIC's permissions",
            stored: [Done, Ready],
            controller: Some(controller("kong-controller", OWN, true)),
            access: access(OWN, false, Some((GATEWAY, false))),
            want: [Done, Done],
            says: "holds every permission KIC needs",
            events: &["HandoffStepDone"],
            looks_again: false,
        },
        Case {
            what: "a step done is undone when its proof goes",
            stored: [Done, Ready],
            controller: Some(controller("kong-controller", GATEWAY, true)),
            access: access(GATEWAY, false, None),
            want: [Ready, Waiting],
            says: "still runs as the gateway's ServiceAccount",
            events: &[],
            looks_again: true,
        },
        Case {
            what: "the controller Deployment deleted",
            stored: [Ready, Waiting],
            controller: None,
            access: None,
            want: [Ready, Waiting],
            says: "is gone",
            events: &[],
            looks_again: true,
        },
    ];
    for c in cases {
        let (m, proxy) = handed_off(c.stored);
        let obs = Observed {
            proxy: Some(proxy),
            controller: c.controller,
            handoff_access: c.access,
            ..Default::default()
        };
        let p = plan(&m, &obs, now());
        assert_eq!(p.status.phase, Phase::Succeeded, "{}", c.what);
        assert!(p.actions.is_empty(), "{}: {:?}", c.what, p.actions);
        let h = p.status.handoff.as_ref().expect("handoff");
        let got: Vec<HandoffState> = h.releases.iter().map(|r| r.state).collect();
        assert_eq!(got, c.want, "{}", c.what);
        let message = h.releases[0].message.clone().unwrap_or_default();
        assert!(message.contains(c.says), "{}: {message}", c.what);
        let reasons: Vec<&str> = p.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, c.events, "{}", c.what);
        assert_eq!(
            p.requeue_after,
            c.looks_again.then_some(HANDOFF_RECHECK),
            "{}",
            c.what
        );
        assert_eq!(cond(&p, "Ready").status, "True", "{}", c.what);
    }
}

#[test]
fn a_missing_permission_is_reported_once_until_it_changes() {
    let (m, proxy) = handed_off([HandoffState::Ready, HandoffState::Waiting]);
    let obs = Observed {
        proxy: Some(proxy),
        controller: Some(controller("kong-controller", "kong-kong", true)),
        handoff_access: access("kong-kong", true, None),
        ..Default::default()
    };
    let first = plan(&m, &obs, now());
    assert!(has_event(&first, "HandoffPermissionMissing"));
    let note = &first.events[0].note;
    assert!(note.contains("Run `helm install kong-controller"), "{note}");
    let mut again = m.clone();
    again.status = Some(first.status.clone());
    let second = plan(&again, &obs, later(30));
    assert!(second.events.is_empty(), "{:?}", second.events);
    assert_eq!(second.status.handoff, first.status.handoff);
}

#[test]
fn the_authorizer_is_asked_only_while_the_hand_off_is_unfinished() {
    use HandoffState::*;
    let obs = |account: &str| Observed {
        proxy: Some(handed_off([Ready, Waiting]).1),
        controller: Some(controller("kong-controller", account, true)),
        ..Default::default()
    };
    // At Succeeded: the controller runs as the gateway's account, asked once.
    let (m, _) = handed_off([Ready, Waiting]);
    assert!(handoff_pending(&m));
    let check = access_check(&m, &obs("kong-kong")).expect("asked");
    assert_eq!(check.controller_account, "kong-kong");
    assert_eq!(check.gateway_account, None);
    assert_eq!(check.namespace, NS);
    assert_eq!(check.permissions, crate::kic_rbac::needed(Some("2.52.0")));
    // On its own account: the gateway's is asked about too.
    let check = access_check(&m, &obs("kong-controller-kong")).expect("asked");
    assert_eq!(check.gateway_account.as_deref(), Some("kong-kong"));
    // Done, rolled back, being deleted, without a hand-off: nothing asked,
    // nothing to wake it.
    let (done, _) = handed_off([Done, Done]);
    let mut rollback = m.clone();
    rollback.spec.rollback = true;
    let mut deleting = m.clone();
    deleting.metadata.deletion_timestamp = Some(Time(now()));
    let mut none = m.clone();
    if let Some(s) = none.status.as_mut() {
        s.handoff = None;
    }
    for (what, m) in [
        ("done", done),
        ("rollback", rollback),
        ("deleting", deleting),
        ("no hand-off", none),
    ] {
        assert!(!handoff_pending(&m), "{what}");
        assert_eq!(access_check(&m, &obs("kong-kong")), None, "{what}");
    }
}
