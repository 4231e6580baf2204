//! Prometheus metrics, served as text on /metrics.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{Phase, SidecarMigrationStatus, StepState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ReasonLabel, Counter>,
    migrations: Family<PhaseLabel, Gauge>,
    step_duration: Family<StepLabel, Histogram>,
    evicted: Counter,
    /// Each migration's last phase, so the per-phase gauge counts each once.
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sidecar_migrator");
        let reconciles = Counter::default();
        let errors = Family::<ReasonLabel, Counter>::default();
        let migrations = Family::<PhaseLabel, Gauge>::default();
        let step_duration = Family::<StepLabel, Histogram>::new_with_constructor(|| {
            // 0.5 s to ~17 min: a step waits on rollouts, not on CPU.
            Histogram::new(exponential_buckets(0.5, 2.0, 12))
        });
        let evicted = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        registry.register(
            "migrations",
            "SidecarMigrations by phase",
            migrations.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time from a step's start to its success",
            step_duration.clone(),
        );
        registry.register(
            "legacy_pods_evicted",
            "Legacy sidecar pods evicted",
            evicted.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            migrations,
            step_duration,
            evicted,
            phases: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub fn failed(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn evicted(&self) {
        self.evicted.inc();
    }

    /// Records a status written for migration `key`: its phase, and the
    /// duration of every step that has just succeeded.
    pub fn status_written(
        &self,
        key: &str,
        old: Option<&SidecarMigrationStatus>,
        new: &SidecarMigrationStatus,
    ) {
        for step in &new.steps {
            let was_done = old
                .and_then(|o| o.steps.iter().find(|s| s.name == step.name))
                .is_some_and(|s| s.state == StepState::Succeeded);
            if step.state != StepState::Succeeded || was_done {
                continue;
            }
            if let (Some(start), Some(end)) = (&step.started_at, &step.finished_at) {
                let secs = end.0.duration_since(start.0).as_secs_f64();
                self.step_duration
                    .get_or_create(&StepLabel {
                        step: step.name.as_str().into(),
                    })
                    .observe(secs.max(0.0));
            }
        }
        self.set_phase(key, Some(new.phase));
    }

    /// `None` forgets a migration that was deleted.
    pub fn set_phase(&self, key: &str, phase: Option<Phase>) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        match phase {
            Some(p) => phases.insert(key.to_string(), p),
            None => phases.remove(key),
        };
        self.migrations.clear();
        for p in phases.values() {
            self.migrations
                .get_or_create(&PhaseLabel {
                    phase: p.as_str().into(),
                })
                .inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StepStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn exposition_counts_phases_once_and_times_finished_steps() {
        let m = Metrics::default();
        let t = |s| Some(Time(Timestamp::from_second(s).expect("time")));
        let running = SidecarMigrationStatus {
            phase: Phase::DisablingSidecar,
            steps: vec![StepStatus {
                name: Phase::DisablingSidecar,
                state: StepState::Running,
                started_at: t(100),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut done = running.clone();
        done.phase = Phase::DeployingController;
        done.steps[0].state = StepState::Succeeded;
        done.steps[0].finished_at = t(103);
        m.status_written("ns/a", None, &running);
        m.status_written("ns/a", Some(&running), &done);
        m.status_written("ns/a", Some(&done), &done);
        m.status_written("ns/b", None, &running);
        m.failed("Conflict");
        m.evicted();
        let text = m.encode();
        for want in [
            "sidecar_migrator_migrations{phase=\"DeployingController\"} 1",
            "sidecar_migrator_migrations{phase=\"DisablingSidecar\"} 1",
            "sidecar_migrator_step_duration_seconds_count{step=\"DisablingSidecar\"} 1",
            "sidecar_migrator_step_duration_seconds_sum{step=\"DisablingSidecar\"} 3.0",
            "sidecar_migrator_reconcile_errors_total{reason=\"Conflict\"} 1",
            "sidecar_migrator_legacy_pods_evicted_total 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
