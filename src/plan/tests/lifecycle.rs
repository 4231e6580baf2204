//! Pause, step deadlines, the concurrency slot and the conditions kept over time.

use super::*;

#[test]
fn step_timeouts_roll_back_or_hold() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
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
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
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
        proxy: Some(sidecar_deployment("kong/kubernetes-ingress-controller:3.4")),
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

#[test]
fn deleting_legacy_pods_deadline_restarts_when_a_pod_leaves() {
    let d = sidecar_deployment("kic:3.4");
    let mut m = in_phase(
        json!({ "stepTimeoutSeconds": 60 }),
        Phase::DeletingLegacyPods,
        &d,
    );
    let mut proxy = migrated(&d, &m, false);
    proxy.status = Some(DeploymentStatus {
        replicas: Some(4),
        ..settled(1)
    });
    let fleet = |legacy: &[&str]| {
        let mut pods: Vec<Pod> = legacy
            .iter()
            .map(|n| pod(n, true, true, "10.0.0.1"))
            .collect();
        pods.push(pod("new", false, true, "10.0.0.2"));
        Observed {
            proxy: Some(proxy.clone()),
            pods,
            ..Default::default()
        }
    };
    // (seconds since the step started, legacy pods then, still in the step)
    let cases: [(i64, &[&str], bool); 4] = [
        (10, &["a", "b", "c"], true),
        (50, &["b", "c"], true),
        (100, &["c"], true),
        (161, &["c"], false),
    ];
    for (at, legacy, running) in cases {
        let p = plan(&m, &fleet(legacy), later(at));
        assert_eq!(
            p.status.phase == Phase::DeletingLegacyPods,
            running,
            "at {at}s with {legacy:?}: {:?}",
            p.status.message
        );
        m.status = Some(p.status);
    }
}
