//! Step deadlines: a step that runs too long rolls back or holds.

use std::time::Duration;

use crate::api::*;

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
        let Some(started) = &step.started_at else {
            return IDLE_RECHECK;
        };
        let deadline = started.0.as_millisecond() + self.spec.step_timeout().as_millis() as i64;
        let left = deadline - self.now.as_millisecond();
        Duration::from_millis(left.max(0) as u64 + 100)
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
