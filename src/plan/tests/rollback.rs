//! Rolling back from every phase, and deletion of an unfinished migration.

use super::*;

#[test]
fn rollback_from_every_phase_restores_the_sidecar() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
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
        let mut ctrl = ctrl;
        ctrl.deployment.metadata.uid = Some("uid-deploy".into());
        ctrl.role.metadata.uid = Some("uid-role".into());
        ctrl.role_binding.metadata.uid = Some("uid-binding".into());
        let obs = Observed {
            proxy: Some(rolled.clone()),
            pods: vec![pod("restored", true, true, "10.0.0.5")],
            controller: Some(ctrl.deployment.clone()),
            controller_role: Some(ctrl.role.clone()),
            controller_role_binding: Some(ctrl.role_binding.clone()),
            admin_service: Some(admin_service(&m, &d, true)),
            ..Default::default()
        };
        let p = plan(&m, &obs, later(2));
        assert!(
            p.actions.contains(&Action::DeleteController {
                deployment: Some("uid-deploy".into()),
                role: Some("uid-role".into()),
                role_binding: Some("uid-binding".into()),
            }),
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
            proxy: Some(sidecar_deployment("kong/kubernetes-ingress-controller:3.4")),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::RolledBack);
    assert!(p.actions.is_empty());
}

#[test]
fn deletion_rolls_back_an_unfinished_migration_only() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
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
fn rollback_of_a_succeeded_migration_restores_or_is_refused() {
    let d = sidecar_deployment("kic:3.4");
    let succeeded = |m: &mut SidecarMigration| {
        let status = m.status.as_mut().expect("status");
        status.phase = Phase::Succeeded;
        for step in &mut status.steps {
            step.state = StepState::Succeeded;
        }
    };
    let mut m = in_phase(json!({ "rollback": true }), Phase::DeletingLegacyPods, &d);
    succeeded(&mut m);
    let obs = Observed {
        proxy: Some(migrated(&d, &m, false)),
        pods: vec![pod("new", false, true, "10.0.0.2")],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    assert_eq!(p.status.phase, Phase::RollingBack);
    assert!(matches!(p.actions.first(), Some(Action::ReplaceProxy(_))));

    // (why, the migration, what it observes)
    let mut already = m.clone();
    if let Some(s) = already.status.as_mut() {
        s.original = None;
    }
    let gone = Observed {
        proxy: None,
        ..obs.clone()
    };
    for (why, m, obs) in [
        ("already migrated", &already, &obs),
        ("Deployment gone", &m, &gone),
    ] {
        let p = plan(m, obs, later(1));
        assert_eq!(p.status.phase, Phase::Succeeded, "{why}");
        assert!(p.actions.is_empty(), "{why}: {:?}", p.actions);
        assert!(has_event(&p, "RollbackRefused"), "{why}");
        assert_eq!(cond(&p, "Stalled").reason, "RollbackRefused", "{why}");
        assert!(
            p.status
                .message
                .as_deref()
                .is_some_and(|t| t.contains("set spec.rollback to false")),
            "{why}"
        );
    }
}

#[test]
fn a_rollback_does_not_end_before_it_has_read_what_to_delete() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let mut m = in_phase(json!({}), Phase::RollingBack, &d);
    m.spec.rollback = true;
    let mut role: Role = serde_json::from_value(json!({ "metadata": {
        "name": "kong-kong-controller-endpointslices", "uid": "role-uid",
        "labels": { (MANAGED_BY_LABEL): MANAGED_BY },
        "annotations": { (MIGRATION_ANNOTATION): "migrate" } } }))
    .expect("role");
    role.rules = None;
    // The proxy Deployment is gone: nothing to restore, only to delete.
    let skipped = Observed {
        skipped_rbac_reads: true,
        ..Default::default()
    };
    let p = plan(&m, &skipped, now());
    assert_eq!(p.status.phase, Phase::RollingBack, "{:?}", p.status.message);
    let read = Observed {
        controller_role: Some(role),
        ..Default::default()
    };
    let p = plan(&m, &read, now());
    assert!(
        p.actions.contains(&Action::DeleteController {
            deployment: None,
            role: Some("role-uid".into()),
            role_binding: None,
        }),
        "{:?}",
        p.actions
    );
}
