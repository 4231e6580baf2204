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
