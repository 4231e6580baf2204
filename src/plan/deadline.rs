//! Step deadlines: a step that runs too long rolls back or holds.

use std::time::Duration;

use crate::api::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::facts::legacy_pod_names;
use super::{Event, Health, IDLE_RECHECK, Planner};

fn has_deadline(step: Phase) -> bool {
    matches!(
        step,
        Phase::DisablingSidecar
            | Phase::DeployingController
            | Phase::WaitingForAdminService
            | Phase::DeletingLegacyPods
    )
}

impl Planner<'_> {
    pub(super) fn time_left(&self, i: usize) -> Duration {
        let step = &self.status.steps[i];
        if !has_deadline(step.name) {
            return IDLE_RECHECK;
        }
        // A resume restarts the step too, so the later of the two counts.
        let Some(from) = [&step.started_at, &step.progressed_at]
            .into_iter()
            .flatten()
            .map(|t| t.0)
            .max()
        else {
            return IDLE_RECHECK;
        };
        let deadline = from.as_millisecond() + self.spec.step_timeout().as_millis() as i64;
        let left = deadline - self.now.as_millisecond();
        Duration::from_millis(left.max(0) as u64 + 100)
    }

    /// DeletingLegacyPods's deadline is per legacy pod, not for the fleet:
    /// each pod that left since the last reconcile starts it again, so a large
    /// fleet retired at the pace of its PodDisruptionBudget never times out
    /// while one pod that never leaves still does.
    pub(super) fn restart_deadline_on_progress(&mut self, i: usize) {
        if self.status.steps[i].name != Phase::DeletingLegacyPods {
            return;
        }
        let before = &self.status.legacy_pods;
        let now = legacy_pod_names(self.spec, self.obs);
        if before.iter().any(|p| !now.contains(p)) {
            self.status.steps[i].progressed_at = Some(Time(self.now));
        }
    }

    pub(super) fn check_timeout(&mut self, i: usize) -> Option<Health> {
        let step = &self.status.steps[i];
        if !has_deadline(step.name) || self.time_left(i) > Duration::from_millis(100) {
            return None;
        }
        let message = format!(
            "step {} did not finish within {}s{}",
            step.name,
            self.spec.step_timeout().as_secs(),
            step.message
                .as_ref()
                .map(|m| format!(" (last: {m})"))
                .unwrap_or_default()
        );
        match self.spec.on_timeout {
            OnTimeout::RollBack => {
                self.status.steps[i].state = StepState::Failed;
                self.events.push(Event {
                    warning: true,
                    reason: "StepTimedOut".into(),
                    note: message.clone(),
                });
                Some(self.roll_back_because(message))
            }
            OnTimeout::Pause => {
                let note = format!(
                    "{message}; holding here: raise spec.stepTimeoutSeconds, or set spec.paused true then false to retry the step, or spec.rollback: true"
                );
                if self.status.message.as_deref() != Some(&note) {
                    self.events.push(Event {
                        warning: true,
                        reason: "StepTimedOut".into(),
                        note: note.clone(),
                    });
                }
                self.status.message = Some(note.clone());
                Some(Health {
                    ready: false,
                    reconciling: false,
                    stalled: true,
                    reason: "StepTimedOut".into(),
                    message: note,
                })
            }
        }
    }
}
