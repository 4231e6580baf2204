//! The status fields every reconcile rewrites: the step counter and the
//! three kstatus conditions (Ready, Reconciling, Stalled).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::*;

use super::{Health, Plan, Planner};

impl Planner<'_> {
    pub(super) fn health_for_phase(&self) -> Health {
        let message = self.status.message.clone().unwrap_or_default();
        match self.status.phase {
            Phase::Succeeded => Health {
                ready: true,
                reconciling: false,
                stalled: false,
                reason: "Succeeded".into(),
                message,
            },
            Phase::RolledBack if self.spec.rollback => Health {
                ready: true,
                reconciling: false,
                stalled: false,
                reason: "RolledBack".into(),
                message,
            },
            Phase::RolledBack => Health {
                ready: false,
                reconciling: false,
                stalled: true,
                reason: "RolledBack".into(),
                message,
            },
            phase => Health {
                ready: false,
                reconciling: true,
                stalled: false,
                reason: phase.as_str().into(),
                message,
            },
        }
    }

    pub(super) fn finish(mut self, health: Health) -> Plan {
        let generation = self.scm.metadata.generation;
        self.status.observed_generation = generation;
        let total = self.status.steps.len();
        let current = self
            .status
            .steps
            .iter()
            .position(|s| s.state != StepState::Succeeded)
            .map(|i| i + 1)
            .unwrap_or(total);
        self.status.step = Some(format!("{current}/{total}"));
        let old = self
            .scm
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let cond = |type_: &str, on: bool| {
            condition(
                old,
                type_,
                on,
                &health.reason,
                &health.message,
                generation,
                self.now,
            )
        };
        self.status.conditions = vec![
            cond("Ready", health.ready),
            cond("Reconciling", health.reconciling),
            cond("Stalled", health.stalled),
        ];
        Plan {
            status: self.status,
            actions: self.actions,
            events: self.events,
            requeue_after: self.requeue_after,
        }
    }
}

pub(super) fn condition(
    old: &[Condition],
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Whether `new` differs from `old` only in what reports progress within a
/// step (the message, and when the step last progressed): no phase, step,
/// condition or record changes. Such a write can wait: see
/// [`PROGRESS_INTERVAL`].
pub fn progress_only(old: &SidecarMigrationStatus, new: &SidecarMigrationStatus) -> bool {
    fn quiet(s: &SidecarMigrationStatus) -> SidecarMigrationStatus {
        let mut s = s.clone();
        s.message = None;
        for c in &mut s.conditions {
            c.message.clear();
        }
        for step in &mut s.steps {
            step.message = None;
            step.progressed_at = None;
        }
        s
    }
    old != new && quiet(old) == quiet(new)
}

/// Whether `new` differs from `old` only in what it reports of the cluster
/// within a step (the pods left, counts, messages, conditions): the phase,
/// the step and every record a rollback or a hand-off reads are the same.
pub fn report_only(old: &SidecarMigrationStatus, new: &SidecarMigrationStatus) -> bool {
    old != new
        && old.phase == new.phase
        && old.step == new.step
        && old.original == new.original
        && old.observed_generation == new.observed_generation
        && old.controller_release == new.controller_release
        && old.handoff == new.handoff
}

/// How often a migration's progress within a step is written at most.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a report with nothing to do and nothing to tell waits before it
/// is written, from when it was first put off. The cluster often moves on
/// within that: the last legacy pod goes, and its Deployment reports the
/// rollout complete tens of milliseconds later. Written at once, the report
/// would hold the reconcile that answers the second change for as long as
/// its write takes (tens of milliseconds under a rollout's load); put off,
/// it is folded into that answer.
pub const REPORT_SETTLE: Duration = Duration::from_millis(200);

/// How long `plan`'s status write may still wait (None: write it now), a
/// report having been put off for `put_off` and the migration last written
/// `since_write` ago.
pub fn status_wait(
    old: &SidecarMigrationStatus,
    plan: &Plan,
    put_off: Duration,
    since_write: Option<Duration>,
) -> Option<Duration> {
    if !plan.actions.is_empty() || !plan.events.is_empty() || !report_only(old, &plan.status) {
        return None;
    }
    let left = |of: Duration, gone: Duration| of.checked_sub(gone).filter(|d| !d.is_zero());
    let settle = left(REPORT_SETTLE, put_off);
    let progress = since_write
        .filter(|_| progress_only(old, &plan.status))
        .and_then(|since| left(PROGRESS_INTERVAL, since));
    let wait = settle.max(progress)?;
    Some(plan.requeue_after.map_or(wait, |r| r.min(wait)))
}
