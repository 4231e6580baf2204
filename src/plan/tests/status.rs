//! Which status changes are progress within a step, and may wait.

use super::*;

fn status(phase: Phase, message: &str, legacy: &[&str]) -> SidecarMigrationStatus {
    SidecarMigrationStatus {
        phase,
        message: Some(message.into()),
        legacy_pods: legacy.iter().map(|p| p.to_string()).collect(),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: phase.as_str().into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: Time(now()),
        }],
        steps: vec![StepStatus {
            name: phase,
            state: StepState::Running,
            message: Some(message.into()),
            progressed_at: Some(Time(now())),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn only_a_new_message_or_progress_time_within_a_step_is_progress() {
    let old = status(Phase::DeletingLegacyPods, "1/3 available", &["a"]);
    let mut later_progress = status(Phase::DeletingLegacyPods, "2/3 available", &["a"]);
    later_progress.steps[0].progressed_at = Some(Time(later(3)));
    let cases = [
        ("the same status", old.clone(), false),
        (
            "a new message",
            status(Phase::DeletingLegacyPods, "2/3 available", &["a"]),
            true,
        ),
        ("a new message and progress time", later_progress, true),
        (
            "a legacy pod gone",
            status(Phase::DeletingLegacyPods, "2/3 available", &[]),
            false,
        ),
        (
            "a new phase",
            status(Phase::Succeeded, "1/3 available", &["a"]),
            false,
        ),
    ];
    for (name, new, progress) in cases {
        assert_eq!(progress_only(&old, &new), progress, "{name}");
    }
}

#[test]
fn a_report_with_nothing_to_do_settles_before_it_is_written() {
    let ms = Duration::from_millis;
    let old = status(Phase::DeletingLegacyPods, "1 legacy pod(s) left", &["a"]);
    let report = status(Phase::DeletingLegacyPods, "0 legacy pod(s) left", &[]);
    let progress = status(Phase::DeletingLegacyPods, "2/3 available", &["a"]);
    let mut recorded = report.clone();
    recorded.original = Some(Default::default());
    let plan = |status: &SidecarMigrationStatus| Plan {
        status: status.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue_after: None,
    };
    let acting = Plan {
        actions: vec![Action::EvictPod("a".into())],
        ..plan(&report)
    };
    let telling = Plan {
        events: vec![Event {
            warning: false,
            reason: "LegacyPodsDeleted".into(),
            note: "no pod runs the sidecar any more".into(),
        }],
        ..plan(&report)
    };
    let soon = Plan {
        requeue_after: Some(ms(50)),
        ..plan(&report)
    };
    // (case, plan, put off for, last written ago, may wait)
    let cases = [
        (
            "a legacy pod gone, just met",
            plan(&report),
            ms(0),
            Some(ms(5000)),
            Some(REPORT_SETTLE),
        ),
        (
            "a legacy pod gone, met earlier",
            plan(&report),
            ms(150),
            None,
            Some(ms(50)),
        ),
        (
            "a legacy pod gone, settled",
            plan(&report),
            REPORT_SETTLE,
            None,
            None,
        ),
        ("the plan wakes sooner", soon, ms(0), None, Some(ms(50))),
        ("with an action", acting, ms(0), None, None),
        ("with an Event", telling, ms(0), None, None),
        (
            "a new phase",
            plan(&status(Phase::Succeeded, "done", &[])),
            ms(0),
            None,
            None,
        ),
        ("a new record", plan(&recorded), ms(0), None, None),
        (
            "progress, written long ago",
            plan(&progress),
            ms(0),
            Some(ms(5000)),
            Some(REPORT_SETTLE),
        ),
        (
            "progress, written just now",
            plan(&progress),
            ms(300),
            Some(ms(100)),
            Some(ms(900)),
        ),
        (
            "progress, settled and due",
            plan(&progress),
            ms(300),
            Some(PROGRESS_INTERVAL),
            None,
        ),
        ("no change", plan(&old), ms(0), None, None),
    ];
    for (name, plan, put_off, since_write, wait) in cases {
        assert_eq!(
            status_wait(&old, &plan, put_off, since_write),
            wait,
            "{name}"
        );
    }
}
