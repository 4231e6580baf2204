//! The migration's decision logic, pure: from a SidecarMigration and the
//! objects observed in its namespace to the status to write, the actions to
//! take next and the events that tell a person what happened. No I/O here; the
//! current time is an input, so every transition is a table-driven unit test.

mod client_tls;
mod deadline;
mod drift;
mod facts;
mod handoff;
mod handoff_check;
mod release;
mod render;
mod rollback;
mod status;
mod steps;
mod validate;
mod webhook;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::*;

use facts::legacy_pod_names;
pub use facts::{
    container_started, deployment_available, gitops_owner, has_container, helm_can_adopt,
    helm_release, is_ours, listed_pods, owned_by, pod_ready, rollout_complete, selector_labels,
    sidecar_only_services, template_container,
};
pub use handoff::handoff;
pub use handoff_check::{
    AccessCheck, HANDOFF_RECHECK, HandoffAccess, access_check, handoff_pending,
};
pub use release::{controller_release, default_controller_release, with_controller_release};
pub use render::{
    Rollout, admin_network_policy, admin_service, client_ca_config_map_name, controller_objects,
    generated_secret, generated_secret_prefix, migrate_template, others_select, restore_template,
    user_secrets, with_rollout,
};
pub use status::{PROGRESS_INTERVAL, REPORT_SETTLE, progress_only, status_wait};
use steps::step_done_event;
pub use steps::step_list;
pub use webhook::webhook_service_name;

/// Everything the decision needs, read fresh for each reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub proxy: Option<Deployment>,
    /// Pods selected by the proxy Deployment's labels; `plan` keeps those
    /// the Deployment made.
    pub pods: Vec<Pod>,
    /// ReplicaSets the proxy Deployment owns.
    pub replica_sets: Vec<ReplicaSet>,
    pub admin_service: Option<Service>,
    /// The admin Service's EndpointSlices.
    pub admin_slices: Vec<EndpointSlice>,
    /// Whatever Deployment carries the controller name, ours or not.
    pub controller: Option<Deployment>,
    /// Whatever Role and RoleBinding carry the controller's RBAC name, ours or not.
    pub controller_role: Option<Role>,
    /// Services of the namespace that select the proxy's pods only for a
    /// port the sidecar alone declares (see `sidecar_only_services`).
    pub sidecar_only_services: Vec<(String, String)>,
    pub controller_role_binding: Option<RoleBinding>,
    /// Every NetworkPolicy in the namespace: ours, and those that already
    /// restrict the gateway pods.
    pub network_policies: Vec<NetworkPolicy>,
    /// `clientTLS: Generate`: the CA ConfigMap, ours or not.
    pub client_ca: Option<ConfigMap>,
    /// `clientTLS: Secret`: the Secrets it names that do not exist (probed
    /// while validating, without reading them).
    pub missing_client_secrets: Vec<String>,
    /// The chart's admission webhook Service (`webhook_service_name`), if
    /// any, and its EndpointSlices.
    pub webhook_service: Option<Service>,
    pub webhook_slices: Vec<EndpointSlice>,
    /// The three reads above were skipped ([`reads_rbac_and_policies`]).
    pub skipped_rbac_reads: bool,
    /// The authorizer's answers for a hand-off in progress ([`access_check`]).
    pub handoff_access: Option<HandoffAccess>,
    /// The other SidecarMigrations in the namespace.
    pub others: Vec<SidecarMigration>,
    /// Whether this migration may start changing things now.
    pub slot: Slot,
    pub policy: Policy,
}

/// What the operator was started with that limits what a migration may ask.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// `--allowed-controller-images`: patterns (`*`, `?`) an image in
    /// spec.controller.image may match when it is not the sidecar's own
    /// repository. Empty: only the sidecar's repository.
    pub allowed_controller_images: Vec<String>,
}

/// `--max-concurrent-migrations`: how many may be in flight at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Slot {
    #[default]
    Free,
    Taken {
        limit: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Replace the proxy Deployment; the object carries the resourceVersion
    /// it was computed from, so a concurrent edit fails with a conflict.
    ReplaceProxy(Box<Deployment>),
    ApplyAdminService(Box<Service>),
    ApplyNetworkPolicy(Box<NetworkPolicy>),
    /// `clientTLS: Generate`: create this CA ConfigMap (or take the
    /// unfinished one of ours), a Secret with a new self-signed client
    /// certificate owned by it, then write the certificate and the Secret's
    /// name into it (see `plan/client_tls.rs`).
    GenerateClientCertificate(Box<ConfigMap>),
    /// Delete the CA ConfigMap with this uid (the garbage collector deletes
    /// the generated Secrets it owns).
    DeleteClientCa(String),
    /// Delete the Admin API NetworkPolicy with this uid.
    DeleteNetworkPolicy(String),
    ApplyController(Box<ControllerObjects>),
    /// Delete the controller Deployment, its Role and its RoleBinding: only
    /// those whose uid is given, which were seen to be ours (a same-named
    /// object someone else made meanwhile has another uid and stays).
    DeleteController {
        deployment: Option<String>,
        role: Option<String>,
        role_binding: Option<String>,
    },
    DeleteAdminService,
    /// Replace the admission webhook Service (its selector moved to the
    /// controller's pods, or back); carries the resourceVersion it was
    /// computed from.
    RepointWebhook(Box<Service>),
    /// Delete a ReplicaSet but leave its pods, so that evicted legacy pods are
    /// not replaced (Kong's documented order only).
    OrphanReplicaSet(String),
    EvictPod(String),
    RemoveFinalizer,
}

impl Action {
    /// What the action does, for events and logs.
    pub fn describe(&self) -> String {
        match self {
            Action::ReplaceProxy(d) => format!("the update of Deployment {}", d.name_any()),
            Action::ApplyAdminService(s) => format!("the apply of Service {}", s.name_any()),
            Action::ApplyNetworkPolicy(n) => {
                format!("the apply of NetworkPolicy {}", n.name_any())
            }
            Action::DeleteNetworkPolicy(_) => "the deletion of the Admin API NetworkPolicy".into(),
            Action::GenerateClientCertificate(c) => format!(
                "the generation of the Admin API client certificate published in ConfigMap {}",
                c.name_any()
            ),
            Action::DeleteClientCa(_) => "the deletion of the Admin API client CA ConfigMap".into(),
            Action::ApplyController(o) => format!(
                "the apply of Deployment {} and its Role and RoleBinding",
                o.deployment.name_any()
            ),
            Action::DeleteController { .. } => {
                "the deletion of the controller Deployment and its RBAC".into()
            }
            Action::DeleteAdminService => "the deletion of the admin Service".into(),
            Action::RepointWebhook(s) => format!("the update of Service {}", s.name_any()),
            Action::OrphanReplicaSet(rs) => format!("the deletion of ReplicaSet {rs}"),
            Action::EvictPod(pod) => format!("the eviction of pod {pod}"),
            Action::RemoveFinalizer => "the removal of the finalizer".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ControllerObjects {
    pub deployment: Deployment,
    pub role: Role,
    pub role_binding: RoleBinding,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Written before any action runs.
    pub status: SidecarMigrationStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Wake up then even if no watched object changes (step deadlines, retries).
    pub requeue_after: Option<Duration>,
}

/// How long minReadySeconds is held while a Manual migration waits for
/// approval: new gateway pods turn Ready and serve beside the legacy ones, but
/// never count as available, so the rolling update retires no legacy pod.
pub const APPROVAL_HOLD_MIN_READY_SECONDS: i32 = 365 * 24 * 3600;

/// A held migration looks again this often (a slot frees without an event).
const HOLD_RECHECK: Duration = Duration::from_secs(10);
const IDLE_RECHECK: Duration = Duration::from_secs(300);

enum Outcome {
    Done,
    Act(Vec<Action>, String),
    Wait(String),
    /// Not started, and waiting for something other than the cluster (dry
    /// run, a free slot): reported as Pending with this reason.
    Hold(&'static str, String),
    /// Validation failed: nothing was changed.
    Fail(&'static str, String),
    /// Stop here without failing (the Deployment is already migrated).
    AlreadyDone(String),
}

/// The health the three kstatus conditions report.
struct Health {
    ready: bool,
    reconciling: bool,
    stalled: bool,
    reason: String,
    message: String,
}

/// Whether `plan` may look at the controller's Role and RoleBinding and the
/// namespace's NetworkPolicies now: only the steps that create, check or
/// delete them do. The long waits after them skip three reads a reconcile,
/// which keeps a reconcile likely to finish when requests fail.
pub fn reads_rbac_and_policies(scm: &SidecarMigration) -> bool {
    let phase = scm.status.as_ref().map(|s| s.phase).unwrap_or_default();
    scm.spec.rollback
        || scm.metadata.deletion_timestamp.is_some()
        || !matches!(
            phase,
            Phase::WaitingForAdminService
                | Phase::AwaitingApproval
                | Phase::DeletingLegacyPods
                | Phase::Succeeded
                | Phase::RolledBack
        )
}

/// Whether `plan` may look at the proxy's ReplicaSets now: only Kong's
/// order orphans the legacy ones, in DeletingLegacyPods, which a plan may
/// reach from any earlier phase (each step that is done hands over to the
/// next in the same plan), and rolling back restores them.
pub fn reads_replica_sets(scm: &SidecarMigration) -> bool {
    let phase = scm.status.as_ref().map(|s| s.phase);
    scm.spec.cutover == Cutover::DeleteLegacyPods
        && !matches!(phase, Some(Phase::Succeeded | Phase::RolledBack))
}

pub fn plan(scm: &SidecarMigration, obs: &Observed, now: Timestamp) -> Plan {
    let scm = with_controller_release(scm, obs.proxy.as_ref());
    let scm = scm.as_ref();
    // The label selector also finds pods of any other Deployment that shares
    // the chart's labels: only the proxy Deployment's own are legacy or new.
    let own = Observed {
        pods: obs
            .pods
            .iter()
            .filter(|p| facts::owned_by(p, &scm.spec.proxy_deployment))
            .cloned()
            .collect(),
        ..obs.clone()
    };
    let mut p = Planner::new(scm, &own, now);
    let health = p.run();
    p.finish(health)
}

struct Planner<'a> {
    scm: &'a SidecarMigration,
    spec: &'a SidecarMigrationSpec,
    obs: &'a Observed,
    now: Timestamp,
    status: SidecarMigrationStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue_after: Option<Duration>,
}

impl<'a> Planner<'a> {
    fn new(scm: &'a SidecarMigration, obs: &'a Observed, now: Timestamp) -> Self {
        let mut status = scm.status_or_default();
        status.steps = step_list(&scm.spec, &status.steps);
        Planner {
            scm,
            spec: &scm.spec,
            obs,
            now,
            status,
            actions: Vec::new(),
            events: Vec::new(),
            requeue_after: None,
        }
    }

    fn run(&mut self) -> Health {
        let deleting = self.scm.metadata.deletion_timestamp.is_some();
        let phase = self.status.phase;
        if deleting
            && (self.status.original.is_none()
                || matches!(phase, Phase::Succeeded | Phase::RolledBack))
        {
            self.actions.push(Action::RemoveFinalizer);
            return self.health_for_phase();
        }
        if !deleting && phase == Phase::Succeeded && self.spec.rollback {
            return match self.rollback_refusal() {
                None => self.roll_back("spec.rollback is true on a Succeeded migration"),
                Some(why) => self.refuse_rollback(why),
            };
        }
        if !deleting && matches!(phase, Phase::Succeeded | Phase::RolledBack) {
            self.status.legacy_pods = legacy_pod_names(self.spec, self.obs);
            self.check_handoff();
            return self.health_for_phase();
        }
        if deleting || self.spec.rollback || phase == Phase::RollingBack {
            let why = if deleting {
                "the SidecarMigration is being deleted before it finished"
            } else if self.spec.rollback {
                "spec.rollback is true"
            } else {
                "a step failed"
            };
            return self.roll_back(why);
        }
        if self.spec.paused {
            if phase != Phase::Paused {
                self.transition(
                    Phase::Paused,
                    false,
                    "Paused",
                    "spec.paused is true: no further changes until it is false".into(),
                );
            }
            self.status.message = Some("paused: set spec.paused to false to resume".into());
            return Health {
                ready: false,
                reconciling: false,
                stalled: false,
                reason: "Paused".into(),
                message: "spec.paused is true".into(),
            };
        }
        if phase == Phase::Paused {
            self.resume();
        }
        self.forward()
    }

    fn resume(&mut self) {
        let now = self.now;
        if let Some(step) = self
            .status
            .steps
            .iter_mut()
            .find(|s| s.state == StepState::Running)
        {
            step.started_at = Some(Time(now));
            step.attempts += 1;
        }
        self.events.push(Event {
            warning: false,
            reason: "Resumed".into(),
            note: "spec.paused is false: the migration goes on".into(),
        });
    }

    fn forward(&mut self) -> Health {
        for i in 0..self.status.steps.len() {
            if self.status.steps[i].state == StepState::Succeeded {
                continue;
            }
            let name = self.status.steps[i].name;
            if self.status.steps[i].state != StepState::Running {
                let step = &mut self.status.steps[i];
                step.state = StepState::Running;
                step.started_at = Some(Time(self.now));
                step.attempts += 1;
                step.message = None;
            }
            if self.status.phase != name {
                self.status.phase = name;
            }
            if let Some(health) = self.check_drift(name) {
                return health;
            }
            self.restart_deadline_on_progress(i);
            if let Some(health) = self.check_timeout(i) {
                return health;
            }
            let outcome = self.step(name);
            match outcome {
                Outcome::Done => {
                    let step = &mut self.status.steps[i];
                    step.state = StepState::Succeeded;
                    step.finished_at = Some(Time(self.now));
                    step.message = None;
                    let (reason, note) = step_done_event(name, self.spec);
                    self.events.push(Event {
                        warning: false,
                        reason: reason.into(),
                        note,
                    });
                }
                Outcome::Act(actions, message) => {
                    self.actions.extend(actions);
                    self.status.steps[i].message = Some(message.clone());
                    self.status.message = Some(message.clone());
                    self.requeue_after = Some(self.time_left(i).min(IDLE_RECHECK));
                    return self.progressing(name, message);
                }
                Outcome::Wait(message) => {
                    self.status.steps[i].message = Some(message.clone());
                    self.status.message = Some(message.clone());
                    self.requeue_after = Some(self.time_left(i).min(IDLE_RECHECK));
                    if name == Phase::AwaitingApproval {
                        return Health {
                            ready: false,
                            reconciling: false,
                            stalled: false,
                            reason: "AwaitingApproval".into(),
                            message,
                        };
                    }
                    return self.progressing(name, message);
                }
                Outcome::Hold(reason, message) => {
                    self.status.steps[i].message = Some(message.clone());
                    self.status.message = Some(message.clone());
                    self.status.phase = Phase::Pending;
                    self.requeue_after = Some(HOLD_RECHECK);
                    return Health {
                        ready: false,
                        reconciling: false,
                        stalled: false,
                        reason: reason.into(),
                        message,
                    };
                }
                Outcome::Fail(reason, message) => {
                    // A failed validation changed nothing and stays Running:
                    // it is tried again when a watched object changes, so
                    // fixing the cause is enough to go on.
                    self.status.steps[i].message = Some(message.clone());
                    self.requeue_after = Some(IDLE_RECHECK);
                    self.transition(Phase::Failed, true, reason, message.clone());
                    self.status.message = Some(message.clone());
                    return Health {
                        ready: false,
                        reconciling: false,
                        stalled: true,
                        reason: reason.into(),
                        message,
                    };
                }
                Outcome::AlreadyDone(message) => {
                    for step in &mut self.status.steps {
                        step.state = StepState::Succeeded;
                        step.finished_at.get_or_insert(Time(self.now));
                    }
                    self.status.message = Some(message.clone());
                    self.transition(Phase::Succeeded, false, "AlreadyMigrated", message);
                    return self.health_for_phase();
                }
            }
        }
        let message = format!(
            "migrated: Deployment {} runs without the sidecar and Deployment {} discovers it through Service {}",
            self.spec.proxy_deployment,
            self.spec.controller_name(),
            self.spec.admin_service_name()
        );
        self.status.message = Some(message.clone());
        if let (Some(proxy), Some(original)) = (&self.obs.proxy, &self.status.original) {
            // The controller runs the sidecar's container, values included;
            // before it exists the proxy Deployment still holds them.
            let sidecar = self
                .obs
                .controller
                .as_ref()
                .and_then(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers.first())
                .cloned()
                .or_else(|| render::original_sidecar(original, proxy, self.spec).ok());
            let client_secret = render::client_secret(self.scm, self.obs.client_ca.as_ref());
            self.status.handoff =
                handoff(self.scm, proxy, sidecar.as_ref(), client_secret.as_deref());
            if self.status.handoff.is_some() {
                self.requeue_after = Some(HANDOFF_RECHECK);
            }
        }
        self.transition(Phase::Succeeded, false, "MigrationSucceeded", message);
        self.health_for_phase()
    }

    fn progressing(&mut self, name: Phase, message: String) -> Health {
        Health {
            ready: false,
            reconciling: true,
            stalled: false,
            reason: name.as_str().into(),
            message,
        }
    }

    fn step(&mut self, name: Phase) -> Outcome {
        match name {
            Phase::Validating => self.validate(),
            Phase::DisablingSidecar => self.disable_sidecar(),
            Phase::DeployingController => self.deploy_controller(),
            Phase::WaitingForAdminService => self.wait_for_admin_service(),
            Phase::AwaitingApproval => self.await_approval(),
            Phase::DeletingLegacyPods => self.delete_legacy_pods(),
            _ => Outcome::Done,
        }
    }

    // ---- bookkeeping -------------------------------------------------------

    /// Moves to `to`, with an event unless the stored status was there already.
    fn transition(&mut self, to: Phase, warning: bool, reason: &str, note: String) {
        self.status.phase = to;
        if self.scm.status.as_ref().map(|s| s.phase) != Some(to) {
            self.events.push(Event {
                warning,
                reason: reason.into(),
                note,
            });
        }
    }
}

#[cfg(test)]
mod tests;
