//! The forward steps after validation, one method each: what each changes,
//! and what it waits for before the next one starts.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::*;
use crate::kong;

use super::facts::{
    container_started, controller_owner, legacy_pod_names, rollout_summary, rs_template_has,
};
use super::render::{original_unreadable, record_original, service_matches, with_original_env};
use super::{
    Action, Outcome, Planner, Rollout, admin_service, controller_objects, deployment_available,
    has_container, listed_pods, migrate_template, pod_ready, rollout_complete, with_rollout,
};

/// The steps this spec runs, keeping what status already says of each.
pub fn step_list(spec: &SidecarMigrationSpec, existing: &[StepStatus]) -> Vec<StepStatus> {
    let mut names = vec![
        Phase::Validating,
        Phase::DisablingSidecar,
        Phase::DeployingController,
        Phase::WaitingForAdminService,
    ];
    if spec.approval == Approval::Manual {
        names.push(Phase::AwaitingApproval);
    }
    names.push(Phase::DeletingLegacyPods);
    names
        .into_iter()
        .map(|name| {
            existing
                .iter()
                .find(|s| s.name == name)
                .cloned()
                .unwrap_or(StepStatus {
                    name,
                    ..Default::default()
                })
        })
        .collect()
}

pub(super) fn step_done_event(step: Phase, spec: &SidecarMigrationSpec) -> (&'static str, String) {
    match step {
        Phase::Validating => (
            "Validated",
            format!("Deployment {} can be migrated", spec.proxy_deployment),
        ),
        Phase::DisablingSidecar => (
            "SidecarDisabled",
            format!(
                "Deployment {} runs without the {} sidecar; Service {} selects its new pods",
                spec.proxy_deployment,
                spec.controller_container(),
                spec.admin_service_name()
            ),
        ),
        Phase::DeployingController => (
            "ControllerDeployed",
            format!("Deployment {} created", spec.controller_name()),
        ),
        Phase::WaitingForAdminService => (
            "AdminServiceReady",
            format!(
                "Service {} lists the new gateway pods and the controller serves them",
                spec.admin_service_name()
            ),
        ),
        Phase::AwaitingApproval => (
            "Approved",
            "spec.approved is true: removing legacy pods".into(),
        ),
        Phase::DeletingLegacyPods => (
            "LegacyPodsDeleted",
            "no pod runs the sidecar any more".into(),
        ),
        _ => ("StepSucceeded", format!("{step} finished")),
    }
}

impl Planner<'_> {
    pub(super) fn disable_sidecar(&mut self) -> Outcome {
        let Some(proxy) = self.obs.proxy.clone() else {
            return Outcome::Wait(format!("Deployment {} is gone", self.spec.proxy_deployment));
        };
        if self.status.original.is_none() {
            let Some(original) =
                record_original(self.spec, &proxy, self.obs.admin_service.as_ref(), self.scm)
            else {
                return Outcome::Wait(format!(
                    "Deployment {} changed under us; reading it again",
                    self.spec.proxy_deployment
                ));
            };
            // The record goes out with this status write, before the change it
            // makes undoable.
            self.status.original = Some(original);
        }
        let mut actions = Vec::new();
        // Before the gateways demand a client certificate.
        match self.client_ca_to_generate(&proxy) {
            Ok(Some(ca)) => actions.push(Action::GenerateClientCertificate(Box::new(ca))),
            Ok(None) => {}
            Err(taken) => return taken,
        }
        // Before the Admin API leaves loopback.
        if let Some(policy) = self.network_policy_to_apply(&proxy) {
            actions.push(Action::ApplyNetworkPolicy(Box::new(policy)));
        }
        let desired = with_original_env(
            with_rollout(
                migrate_template(&proxy, self.spec),
                Rollout::Held {
                    approval_hold: self.approval_hold() || self.webhook_hold(),
                },
                self.original(),
            ),
            &proxy,
            self.spec,
        );
        actions.extend(self.converge_proxy_and_admin_service(
            &proxy,
            desired,
            self.spec.cutover == Cutover::ZeroDowntime,
        ));
        if actions.is_empty() {
            return Outcome::Done;
        }
        Outcome::Act(
            actions,
            format!(
                "removing the {} sidecar from Deployment {} and pointing Service {} at its new pods",
                self.spec.controller_container(),
                self.spec.proxy_deployment,
                self.spec.admin_service_name()
            ),
        )
    }

    /// The Admin API NetworkPolicy, when the spec asks for it and the live
    /// one (if any) differs.
    fn network_policy_to_apply(
        &self,
        proxy: &k8s_openapi::api::apps::v1::Deployment,
    ) -> Option<k8s_openapi::api::networking::v1::NetworkPolicy> {
        if !self.spec.network_policy() {
            return None;
        }
        let name = self.spec.network_policy_name();
        let want = super::admin_network_policy(
            self.scm,
            proxy,
            super::others_select(&self.obs.network_policies, proxy, &name),
        );
        let live = self
            .obs
            .network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        (live.map(|l| &l.spec) != Some(&want.spec)).then_some(want)
    }

    pub(super) fn approval_hold(&self) -> bool {
        self.spec.cutover == Cutover::ZeroDowntime
            && self.spec.approval == Approval::Manual
            && !self.step_done(Phase::AwaitingApproval)
            && !self.spec.approved
    }

    pub(super) fn step_done(&self, name: Phase) -> bool {
        self.status
            .steps
            .iter()
            .any(|s| s.name == name && s.state == StepState::Succeeded)
    }

    pub(super) fn original(&self) -> &Original {
        static EMPTY: std::sync::OnceLock<Original> = std::sync::OnceLock::new();
        self.status
            .original
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Original::default))
    }

    // ---- DeployingController ---------------------------------------------

    pub(super) fn deploy_controller(&mut self) -> Outcome {
        let Some(proxy) = &self.obs.proxy else {
            return Outcome::Wait(format!("Deployment {} is gone", self.spec.proxy_deployment));
        };
        // Checked again here, not only in Validating: a same-named object
        // someone made since would otherwise be force-applied over.
        if let Some(taken) = self.foreign_controller_object() {
            return taken;
        }
        let ours = |m: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>| {
            m.is_some_and(|m| super::is_ours(m, self.scm))
        };
        if ours(self.obs.controller.as_ref().map(|d| &d.metadata))
            && ours(self.obs.controller_role.as_ref().map(|r| &r.metadata))
            && ours(
                self.obs
                    .controller_role_binding
                    .as_ref()
                    .map(|b| &b.metadata),
            )
        {
            self.status.controller_deployment = Some(self.spec.controller_name());
            return Outcome::Done;
        }
        if let Some(why) = original_unreadable(self.original(), proxy, self.spec) {
            return Outcome::Fail("OriginalUnreadable", why);
        }
        // KIC 3.4.0-3.4.3 exit at once on a listed Admin API that does not
        // answer yet, then back off for 10 s and more; and KIC >= 3.4.4 give
        // up on an admin Service that lists nothing. Started once a new
        // gateway listens, no version exits.
        if self.obs.controller.is_none()
            && self.spec.cutover == Cutover::ZeroDowntime
            && !self.a_new_gateway_listens()
        {
            return Outcome::Wait(format!(
                "waiting for Service {} to list a new gateway pod whose proxy container runs, so the controller starts against an Admin API that answers",
                self.spec.admin_service_name()
            ));
        }
        let client_secret = match self.controller_client_secret() {
            Ok(secret) => secret,
            Err(wait) => return wait,
        };
        let Some(mut objects) = controller_objects(self.scm, proxy, self.original()) else {
            return Outcome::Fail(
                "OriginalUnreadable",
                "status.original.sidecar is not a container; set spec.rollback: true".into(),
            );
        };
        if let Some(secret) = client_secret {
            super::render::present_client_certificate(&mut objects.deployment, &secret);
        }
        Outcome::Act(
            vec![Action::ApplyController(Box::new(objects))],
            format!(
                "creating Deployment {} with {}",
                self.spec.controller_name(),
                kong::ENV_CONTROLLER_ADMIN_SVC
            ),
        )
    }

    fn a_new_gateway_listens(&self) -> bool {
        let listed = listed_pods(&self.obs.admin_slices);
        self.obs.pods.iter().any(|p| {
            !has_container(p, self.spec.controller_container())
                && p.metadata.deletion_timestamp.is_none()
                && listed.contains(&p.name_any())
                && container_started(p, self.spec.proxy_container())
        })
    }

    // ---- WaitingForAdminService ------------------------------------------

    pub(super) fn wait_for_admin_service(&mut self) -> Outcome {
        let listed = listed_pods(&self.obs.admin_slices);
        let new_pods: Vec<&Pod> = self
            .obs
            .pods
            .iter()
            .filter(|p| !has_container(p, self.spec.controller_container()))
            .collect();
        let listed_new = new_pods
            .iter()
            .filter(|p| listed.contains(&p.name_any()))
            .count();
        let svc = self.spec.admin_service_name();
        if listed_new == 0 {
            return Outcome::Wait(format!(
                "waiting for Service {svc} to list a new gateway pod"
            ));
        }
        let Some(controller) = &self.obs.controller else {
            return Outcome::Wait(format!(
                "Deployment {} is gone",
                self.spec.controller_name()
            ));
        };
        if self.spec.cutover == Cutover::DeleteLegacyPods {
            // Kong's order: the controller cannot start while legacy pods are
            // listed, so their removal comes first.
            return Outcome::Done;
        }
        if !deployment_available(controller) {
            return Outcome::Wait(format!(
                "Service {svc} lists {listed_new} new gateway pod(s); waiting for Deployment {} to be Available",
                controller.name_any()
            ));
        }
        let ready_new = new_pods.iter().filter(|p| pod_ready(p)).count();
        if ready_new == 0 {
            return Outcome::Wait("the controller is Available; waiting for a configured new gateway pod to turn Ready".into());
        }
        Outcome::Done
    }

    // ---- AwaitingApproval -------------------------------------------------

    pub(super) fn await_approval(&mut self) -> Outcome {
        self.status.legacy_pods = legacy_pod_names(self.spec, self.obs);
        if self.spec.approved {
            return Outcome::Done;
        }
        Outcome::Wait(format!(
            "waiting for approval: the new controller and gateway pods are Ready; {} legacy pod(s) still serve. Set spec.approved: true to remove them",
            self.status.legacy_pods.len()
        ))
    }

    // ---- DeletingLegacyPods -----------------------------------------------

    pub(super) fn delete_legacy_pods(&mut self) -> Outcome {
        let Some(proxy) = self.obs.proxy.clone() else {
            return Outcome::Wait(format!("Deployment {} is gone", self.spec.proxy_deployment));
        };
        self.status.legacy_pods = legacy_pod_names(self.spec, self.obs);
        // ZeroDowntime moves the webhook while the sidecars still serve it;
        // Kong's order cannot (its controller is Ready only once no sidecar
        // pod is left), so it moves it as soon as none is.
        if self.spec.cutover == Cutover::ZeroDowntime
            && let Some(waiting) = self.move_webhook(&proxy)
        {
            return waiting;
        }
        let migrated = migrate_template(&proxy, self.spec);
        let held = with_rollout(
            migrated.clone(),
            Rollout::Held {
                approval_hold: false,
            },
            self.original(),
        );
        let legacy: Vec<&Pod> = self
            .obs
            .pods
            .iter()
            .filter(|p| has_container(p, self.spec.controller_container()))
            .collect();
        if !legacy.is_empty() || !rollout_complete(&proxy) {
            if held != proxy && !legacy.is_empty() {
                return Outcome::Act(
                    vec![Action::ReplaceProxy(Box::new(held))],
                    "releasing the approval hold".into(),
                );
            }
            let mut actions = Vec::new();
            if self.spec.cutover == Cutover::DeleteLegacyPods {
                for rs in &self.obs.replica_sets {
                    if rs_template_has(rs, self.spec.controller_container()) {
                        actions.push(Action::OrphanReplicaSet(rs.name_any()));
                    }
                }
            }
            let terminating = legacy
                .iter()
                .any(|p| p.metadata.deletion_timestamp.is_some());
            // ZeroDowntime evicts (an orphaned legacy pod) only while a new
            // gateway serves: Ready, which the rewritten probe makes mean
            // configured. Kong's order cannot wait for that: its controller
            // starts only once no legacy pod is listed.
            let serving = self.obs.pods.iter().any(|p| {
                !has_container(p, self.spec.controller_container())
                    && p.metadata.deletion_timestamp.is_none()
                    && pod_ready(p)
            });
            let may_evict = serving || self.spec.cutover == Cutover::DeleteLegacyPods;
            // One at a time: the next eviction waits until the last one is gone.
            if !terminating
                && may_evict
                && let Some(pod) = legacy.iter().find(|p| {
                    self.spec.cutover == Cutover::DeleteLegacyPods || controller_owner(p).is_none()
                })
            {
                actions.push(Action::EvictPod(pod.name_any()));
            }
            let message = format!(
                "{} legacy pod(s) left ({}); Deployment {}: {}",
                legacy.len(),
                self.status.legacy_pods.join(", "),
                self.spec.proxy_deployment,
                rollout_summary(&proxy)
            );
            return if actions.is_empty() {
                Outcome::Wait(message)
            } else {
                Outcome::Act(actions, message)
            };
        }
        if let Some(waiting) = self.move_webhook(&proxy) {
            return waiting;
        }
        // No legacy pod left: the label no longer needs to tell pods apart and
        // the user's rollout settings come back.
        // The original env values stay in their annotation: `rollback: true`
        // on a Succeeded migration restores the sidecar install from them.
        let finished = with_rollout(migrated, Rollout::Original, self.original());
        let actions = self.converge_proxy_and_admin_service(&proxy, finished, false);
        if actions.is_empty() {
            return Outcome::Done;
        }
        Outcome::Act(
            actions,
            "no legacy pod left: restoring the rollout strategy".into(),
        )
    }

    /// The proxy Deployment replaced by `desired` and the admin Service
    /// applied as rendered (`by_label`: selecting only the labelled new
    /// pods), each only where the cluster differs.
    fn converge_proxy_and_admin_service(
        &self,
        proxy: &Deployment,
        desired: Deployment,
        by_label: bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if desired != *proxy {
            actions.push(Action::ReplaceProxy(Box::new(desired)));
        }
        let svc = admin_service(self.scm, proxy, by_label);
        if !service_matches(self.obs.admin_service.as_ref(), &svc) {
            actions.push(Action::ApplyAdminService(Box::new(svc)));
        }
        actions
    }
}
