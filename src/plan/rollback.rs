//! RollingBack: undo in the reverse order of the migration.

use crate::api::*;

use super::facts::rollout_summary;
use super::render::{
    adopted_service_restored, original_unreadable, service_matches, without_original_env,
};
use super::{
    Action, Health, IDLE_RECHECK, Outcome, Planner, Rollout, has_container, is_ours,
    restore_template, rollout_complete, with_rollout,
};

impl Planner<'_> {
    /// Why a Succeeded migration cannot be rolled back, if it cannot: the
    /// README promises rollback from any step, so one that cannot is said so.
    pub(super) fn rollback_refusal(&self) -> Option<String> {
        let name = &self.spec.proxy_deployment;
        if self.status.original.is_none() {
            return Some(format!(
                "Deployment {name} already ran without the sidecar when this SidecarMigration started, so there is no sidecar installation to restore"
            ));
        }
        if self.obs.proxy.is_none() {
            // Removing the controller then would leave no gateway configured.
            return Some(format!(
                "Deployment {name} no longer exists, so the sidecar cannot be put back into it"
            ));
        }
        None
    }

    pub(super) fn refuse_rollback(&mut self, why: String) -> Health {
        let message = format!(
            "spec.rollback is true but refused, nothing changed: {why}; set spec.rollback to false"
        );
        if self.scm.status.as_ref().and_then(|s| s.message.as_ref()) != Some(&message) {
            self.events.push(super::Event {
                warning: true,
                reason: "RollbackRefused".into(),
                note: message.clone(),
            });
        }
        self.status.message = Some(message.clone());
        self.requeue_after = Some(IDLE_RECHECK);
        Health {
            ready: true,
            reconciling: false,
            stalled: true,
            reason: "RollbackRefused".into(),
            message,
        }
    }

    pub(super) fn roll_back_because(&mut self, why: String) -> Health {
        self.status.message = Some(why.clone());
        self.roll_back(&why)
    }

    pub(super) fn roll_back(&mut self, why: &str) -> Health {
        if self.status.phase != Phase::RollingBack {
            self.transition(
                Phase::RollingBack,
                true,
                "RollingBack",
                format!("rolling back: {why}"),
            );
        }
        let Some(original) = self.status.original.clone() else {
            let message = "rolled back: nothing had been changed".to_string();
            self.status.message = Some(message.clone());
            self.transition(Phase::RolledBack, false, "RolledBack", message);
            if self.scm.metadata.deletion_timestamp.is_some() {
                self.actions.push(Action::RemoveFinalizer);
            }
            return self.health_for_phase();
        };
        let outcome = self.restore(&original);
        match outcome {
            Outcome::Done => {
                let message = "rolled back: the sidecar installation is restored and the migration's objects are removed".to_string();
                self.status.message = Some(message.clone());
                self.status.legacy_pods.clear();
                self.status.controller_deployment = None;
                self.transition(Phase::RolledBack, false, "RolledBack", message);
                if self.scm.metadata.deletion_timestamp.is_some() {
                    self.actions.push(Action::RemoveFinalizer);
                }
                self.health_for_phase()
            }
            Outcome::Act(actions, message) => {
                self.actions.extend(actions);
                self.status.message = Some(message.clone());
                self.requeue_after = Some(IDLE_RECHECK);
                self.progressing(Phase::RollingBack, message)
            }
            Outcome::Wait(message)
            | Outcome::Hold(_, message)
            | Outcome::Fail(_, message)
            | Outcome::AlreadyDone(message) => {
                self.status.message = Some(message.clone());
                self.requeue_after = Some(IDLE_RECHECK);
                self.progressing(Phase::RollingBack, message)
            }
        }
    }

    /// Undo in the reverse order of the migration, so traffic keeps a Ready
    /// proxy: sidecar pods first (they turn Ready by themselves), then the
    /// controller and the admin Service, then the rollout settings.
    pub(super) fn restore(&mut self, original: &Original) -> Outcome {
        let spec = self.spec;
        let mut restored = None;
        if let Some(proxy) = &self.obs.proxy {
            if let Some(why) = original_unreadable(original, proxy, spec) {
                return Outcome::Wait(why);
            }
            let template = restore_template(proxy, spec, original);
            if template != *proxy {
                let held = with_rollout(
                    template,
                    Rollout::Held {
                        approval_hold: false,
                    },
                    original,
                );
                return Outcome::Act(
                    vec![Action::ReplaceProxy(Box::new(held))],
                    format!(
                        "restoring the {} sidecar in Deployment {}",
                        spec.controller_container(),
                        spec.proxy_deployment
                    ),
                );
            }
            let new_pods_left = self
                .obs
                .pods
                .iter()
                .any(|p| !has_container(p, spec.controller_container()));
            if new_pods_left || !rollout_complete(proxy) {
                return Outcome::Wait(format!(
                    "waiting for the sidecar pods to roll out: Deployment {}: {}",
                    spec.proxy_deployment,
                    rollout_summary(proxy)
                ));
            }
            // Before the controller goes, so the webhook is served throughout.
            if let Some(waiting) = self.restore_webhook() {
                return waiting;
            }
            restored = Some(without_original_env(with_rollout(
                template,
                Rollout::Original,
                original,
            )));
        }
        // A rollback that began in a step which skips these reads (a step
        // deadline) must not end before it has seen what it has to delete.
        if self.obs.skipped_rbac_reads {
            return Outcome::Wait("reading the controller's RBAC and NetworkPolicy".into());
        }
        let mut actions = Vec::new();
        let ours_uid = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            is_ours(meta, self.scm).then(|| meta.uid.clone()).flatten()
        };
        let delete = Action::DeleteController {
            deployment: self
                .obs
                .controller
                .as_ref()
                .and_then(|d| ours_uid(&d.metadata)),
            role: self
                .obs
                .controller_role
                .as_ref()
                .and_then(|r| ours_uid(&r.metadata)),
            role_binding: self
                .obs
                .controller_role_binding
                .as_ref()
                .and_then(|b| ours_uid(&b.metadata)),
        };
        if let Action::DeleteController {
            deployment,
            role,
            role_binding,
        } = &delete
            && (deployment.is_some() || role.is_some() || role_binding.is_some())
        {
            actions.push(delete);
        }
        let policy = self.spec.network_policy_name();
        if let Some(uid) = self
            .obs
            .network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(policy.as_str()))
            .and_then(|p| ours_uid(&p.metadata))
        {
            actions.push(Action::DeleteNetworkPolicy(uid));
        }
        if let Some(uid) = self.client_ca_to_delete() {
            actions.push(Action::DeleteClientCa(uid));
        }
        if let Some(svc) = &self.obs.admin_service {
            match &original.adopted_admin_service {
                Some(adopted) => {
                    if let Some(proxy) = &self.obs.proxy {
                        let want = adopted_service_restored(self.scm, proxy, adopted);
                        if !service_matches(Some(svc), &want) {
                            actions.push(Action::ApplyAdminService(Box::new(want)));
                        }
                    }
                }
                None if is_ours(&svc.metadata, self.scm) => {
                    actions.push(Action::DeleteAdminService)
                }
                None => {}
            }
        }
        if let (Some(restored), Some(proxy)) = (restored, &self.obs.proxy)
            && restored != *proxy
        {
            actions.push(Action::ReplaceProxy(Box::new(restored)));
        }
        if actions.is_empty() {
            return Outcome::Done;
        }
        Outcome::Act(
            actions,
            "removing the controller Deployment and the admin Service".into(),
        )
    }
}
