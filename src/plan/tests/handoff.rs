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
            got_spec.template.metadata.and_then(|m| m.labels),
            want_spec.template.metadata.and_then(|m| m.labels),
            "chart {version}: pod labels"
        );
        let labels = got.metadata.labels.clone().unwrap_or_default();
        for (k, v) in want.metadata.labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "chart {version}: label {k}");
        }
        assert_eq!(helm_can_adopt(&got.metadata, "kong-controller", NS), Ok(()));
        assert!(is_ours(&got.metadata, &m));
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
