//! The controller release: defaulted from the source's Helm release, pinned
//! while validating.

use super::*;

/// The sidecar Deployment as Helm release `release` installed it; None: as
/// something other than Helm did.
fn installed_by(release: Option<&str>) -> Deployment {
    let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    match release {
        Some(r) => {
            d.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(HELM_RELEASE_NAME.into(), r.into());
        }
        None => {
            d.metadata.labels = None;
            d.metadata.annotations = None;
        }
    }
    d
}

#[test]
fn the_controller_release_defaults_to_the_sources_and_stays_pinned() {
    let pinned = |release: &str| SidecarMigrationStatus {
        phase: Phase::DisablingSidecar,
        controller_release: Some(release.into()),
        ..Default::default()
    };
    let started_unpinned = SidecarMigrationStatus {
        phase: Phase::DeployingController,
        original: Some(Original::default()),
        ..Default::default()
    };
    let mut helm_label_only = installed_by(Some("kong"));
    helm_label_only.metadata.annotations = None;
    let cases = [
        (
            "a Helm release",
            json!({}),
            None,
            installed_by(Some("kong")),
            Some("kong-controller"),
            "kong-controller-kong",
        ),
        (
            "not Helm's",
            json!({}),
            None,
            installed_by(None),
            None,
            "kong-kong-controller",
        ),
        (
            "Helm's label without its annotation",
            json!({}),
            None,
            helm_label_only,
            None,
            "kong-kong-controller",
        ),
        (
            "set in spec",
            json!({ "controller": { "release": "mine" } }),
            None,
            installed_by(Some("kong")),
            Some("mine"),
            "mine-kong",
        ),
        (
            "a controller name set",
            json!({ "controller": { "name": "ctl" } }),
            None,
            installed_by(Some("kong")),
            None,
            "ctl",
        ),
        (
            "pinned, then relabelled",
            json!({}),
            Some(pinned("kong-controller")),
            installed_by(Some("renamed")),
            Some("kong-controller"),
            "kong-controller-kong",
        ),
        (
            "started by an operator that pinned none",
            json!({}),
            Some(started_unpinned),
            installed_by(Some("kong")),
            None,
            "kong-kong-controller",
        ),
    ];
    for (case, spec, status, proxy, release, name) in cases {
        let mut m = scm(spec);
        m.status = status;
        assert_eq!(
            controller_release(&m, Some(&proxy)).as_deref(),
            release,
            "{case}"
        );
        let effective = with_controller_release(&m, Some(&proxy));
        assert_eq!(effective.spec.controller_name(), name, "{case}");
        assert_eq!(effective.spec.controller_release(), release, "{case}");
    }
}

#[test]
fn validating_pins_the_release_the_names_come_from() {
    let proxy = installed_by(Some("kong"));
    let p = plan(
        &scm(json!({})),
        &Observed {
            proxy: Some(proxy.clone()),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::DisablingSidecar);
    assert_eq!(
        p.status.controller_release.as_deref(),
        Some("kong-controller")
    );
    assert!(
        p.status
            .plan
            .iter()
            .any(|c| c.object == "Deployment/kong-controller-kong"),
        "{:?}",
        p.status.plan
    );
    // Relabelled mid-migration: the controller keeps its name.
    let mut m = scm(json!({}));
    m.status = Some(p.status.clone());
    let relabelled = installed_by(Some("renamed"));
    let p = plan(
        &m,
        &Observed {
            proxy: Some(relabelled.clone()),
            ..Default::default()
        },
        later(1),
    );
    assert_eq!(
        p.status.controller_release.as_deref(),
        Some("kong-controller")
    );
    assert_eq!(
        with_controller_release(&m, Some(&relabelled))
            .spec
            .controller_name(),
        "kong-controller-kong"
    );
    // The stored spec is left as the user wrote it.
    assert_eq!(m.spec.controller_release(), None);
}
