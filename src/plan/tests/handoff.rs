//! Where a migration ends: the chart's own gateway-only rendering. Helm,
//! Argo CD or Flux applying it afterwards must find nothing to change in the
//! pod template, or every gateway pod rolls a second time.

use super::*;

/// The Deployment in `tests/fixtures/<file>`, for namespace `kong`.
fn chart_deployment(file: &str) -> Deployment {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .expect("fixture readable")
        .replace("${NAMESPACE}", NS);
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .find(|v| v.get("kind").and_then(|k| k.as_str()) == Some("Deployment"))
        .and_then(|v| serde_yaml::from_value(v).ok())
        .expect("a Deployment in the fixture")
}

use serde::Deserialize as _;

/// The migrated template once no legacy pod is left, as the last step
/// leaves it.
fn finished(source: &Deployment) -> Deployment {
    let m = in_phase(json!({}), Phase::DeletingLegacyPods, source);
    let original = m
        .status
        .as_ref()
        .and_then(|s| s.original.clone())
        .expect("recorded");
    with_rollout(
        migrate_template(source, &m.spec),
        Rollout::Original,
        &original,
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
            serde_yaml::to_string(&got).expect("yaml"),
            serde_yaml::to_string(&want).expect("yaml"),
            "chart {version}: the migrated pod template differs from the gateway release's"
        );
    }
}

#[test]
fn rollback_restores_the_charts_sidecar_rendering_exactly() {
    for version in ["2.52.0", "2.30.0"] {
        let source = chart_deployment(&format!("chart-{version}-sidecar.yaml"));
        let m = in_phase(json!({}), Phase::DeletingLegacyPods, &source);
        let original = m
            .status
            .as_ref()
            .and_then(|s| s.original.clone())
            .expect("recorded");
        let back = with_rollout(
            restore_template(&finished(&source), &m.spec, &original),
            Rollout::Original,
            &original,
        );
        assert_eq!(
            serde_yaml::to_string(&back.spec).expect("yaml"),
            serde_yaml::to_string(&source.spec).expect("yaml"),
            "chart {version}: rollback differs from the sidecar rendering"
        );
    }
}
