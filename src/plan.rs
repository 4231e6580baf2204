//! The migration's decision logic, pure: from a SidecarMigration and the
//! objects observed in its namespace to the status to write, the actions to
//! take next and the events that tell a person what happened. No I/O here; the
//! current time is an input, so every transition is a table-driven unit test.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, ManagedFieldsEntry, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::*;
use crate::kong;

/// Everything the decision needs, read fresh for each reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub proxy: Option<Deployment>,
    /// Pods selected by the proxy Deployment.
    pub pods: Vec<Pod>,
    /// ReplicaSets the proxy Deployment owns.
    pub replica_sets: Vec<ReplicaSet>,
    pub admin_service: Option<Service>,
    /// The admin Service's EndpointSlices.
    pub admin_slices: Vec<EndpointSlice>,
    /// Whatever Deployment carries the controller name, ours or not.
    pub controller: Option<Deployment>,
    pub controller_role: Option<Role>,
    /// The other SidecarMigrations in the namespace.
    pub others: Vec<SidecarMigration>,
    /// Whether this migration may start changing things now.
    pub slot: Slot,
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
    ApplyController(Box<ControllerObjects>),
    /// Delete the controller Deployment and its Role and RoleBinding.
    DeleteController,
    DeleteAdminService,
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
            Action::ApplyController(o) => format!(
                "the apply of Deployment {} and its Role and RoleBinding",
                o.deployment.name_any()
            ),
            Action::DeleteController => "the deletion of the controller Deployment".into(),
            Action::DeleteAdminService => "the deletion of the admin Service".into(),
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

pub fn plan(scm: &SidecarMigration, obs: &Observed, now: Timestamp) -> Plan {
    let mut p = Planner::new(scm, obs, now);
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
        if !deleting && matches!(phase, Phase::Succeeded | Phase::RolledBack) {
            self.status.legacy_pods = legacy_pod_names(self.spec, self.obs);
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

    // ---- Validating -------------------------------------------------------

    fn validate(&mut self) -> Outcome {
        let spec = self.spec;
        let name = &spec.proxy_deployment;
        let Some(proxy) = &self.obs.proxy else {
            return Outcome::Fail(
                "ProxyDeploymentNotFound",
                format!(
                    "Deployment {name} not found in namespace {}: set spec.proxyDeployment to the Deployment that runs the {} and {} containers",
                    self.scm.namespace().unwrap_or_default(),
                    spec.proxy_container(),
                    spec.controller_container()
                ),
            );
        };
        // Before anything about the template: another migration in flight
        // has already changed it.
        if let Some(other) = self.rival() {
            return Outcome::Fail(
                "DuplicateMigration",
                format!(
                    "SidecarMigration {other} already migrates Deployment {name}: delete this one, or that one if it is the mistake"
                ),
            );
        }
        let Some(pod) = proxy.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            return Outcome::Fail(
                "ProxyDeploymentInvalid",
                format!("Deployment {name} has no pod template"),
            );
        };
        let Some(proxy_c) = pod
            .containers
            .iter()
            .find(|c| c.name == spec.proxy_container())
        else {
            return Outcome::Fail(
                "ProxyContainerNotFound",
                format!(
                    "Deployment {name} has no container named {:?} (it has {}): set spec.containers.proxy",
                    spec.proxy_container(),
                    container_names(&pod.containers)
                ),
            );
        };
        let Some(sidecar) = pod
            .containers
            .iter()
            .find(|c| c.name == spec.controller_container())
        else {
            let listen = env_value(proxy_c, kong::ENV_ADMIN_LISTEN).unwrap_or_default();
            return if kong::admin_listen_is_local_only(&listen) {
                Outcome::Fail(
                    "SidecarNotFound",
                    format!(
                        "Deployment {name} has no container named {:?} and its Admin API listens only on localhost: set spec.containers.controller to the sidecar's name",
                        spec.controller_container()
                    ),
                )
            } else {
                Outcome::AlreadyDone(format!(
                    "Deployment {name} has no {:?} sidecar: it already runs in Gateway Discovery mode, nothing to do",
                    spec.controller_container()
                ))
            };
        };
        if let Some(c) = &self.obs.controller
            && !is_ours(&c.metadata, self.scm)
        {
            return Outcome::Fail(
                "ControllerNameTaken",
                format!(
                    "Deployment {} exists and was not made by this SidecarMigration: set spec.controller.name to a free name",
                    c.name_any()
                ),
            );
        }
        if selector_labels(proxy).is_empty() {
            return Outcome::Fail(
                "UnsupportedSelector",
                format!(
                    "Deployment {name} selects its pods without matchLabels; the admin Service needs labels to select them"
                ),
            );
        }
        if proxy_c
            .env
            .iter()
            .flatten()
            .any(|e| e.name == kong::ENV_ADMIN_LISTEN && e.value_from.is_some())
        {
            return Outcome::Fail(
                "AdminListenNotLiteral",
                format!(
                    "the {} container sets {} through valueFrom; set it as a literal value so it can be rewritten",
                    spec.proxy_container(),
                    kong::ENV_ADMIN_LISTEN
                ),
            );
        }
        let mut warnings = Vec::new();
        let image = spec
            .controller
            .as_ref()
            .and_then(|c| c.image.clone())
            .or_else(|| sidecar.image.clone())
            .unwrap_or_default();
        match kong::image_version(&image) {
            Some(v) if v < kong::MIN_KIC_VERSION => {
                return Outcome::Fail(
                    "UnsupportedControllerVersion",
                    format!(
                        "the controller image {image} is KIC {v}; Gateway Discovery with separate gateway pods needs KIC {} or newer: upgrade the chart first, or set spec.controller.image",
                        kong::MIN_KIC_VERSION
                    ),
                );
            }
            Some(v) => self.status.controller_version = Some(v.to_string()),
            None => warnings.push(format!(
                "the controller image {image:?} names no version; make sure it is KIC {} or newer",
                kong::MIN_KIC_VERSION
            )),
        }
        self.status.database = Some(kong::database_mode(
            env_value(proxy_c, kong::ENV_DATABASE).as_deref(),
        ));
        if let Some(owner) = gitops_owner(&proxy.metadata) {
            warnings.push(format!(
                "Deployment {name} is managed by {owner}: commit the migrated values (kong chart: ingressController.enabled: false, admin.enabled: true, admin.type: ClusterIP, admin.clusterIP: None; and a controller release of the chart with deployment.kong.enabled: false, ingressController.enabled: true, ingressController.gatewayDiscovery.enabled: true, ingressController.gatewayDiscovery.adminApiService.name: {}) or {owner} will put the sidecar back",
                spec.admin_service_name()
            ));
        }
        if self.status.warnings != warnings {
            for w in &warnings {
                self.events.push(Event {
                    warning: true,
                    reason: "ValidationWarning".into(),
                    note: w.clone(),
                });
            }
            self.status.warnings = warnings;
        }
        self.status.plan = planned_changes(spec, self.scm, proxy, sidecar, proxy_c, self.obs);
        if spec.dry_run {
            return Outcome::Hold(
                "DryRun",
                format!(
                    "dry run: {} changes planned in status.plan; set spec.dryRun to false to apply them",
                    self.status.plan.len()
                ),
            );
        }
        if let Slot::Taken { limit } = self.obs.slot {
            return Outcome::Hold(
                "WaitingForSlot",
                format!(
                    "{limit} migration(s) already in flight (--max-concurrent-migrations={limit}); this one starts when one of them ends"
                ),
            );
        }
        Outcome::Done
    }

    /// The oldest other unfinished SidecarMigration of the same Deployment.
    fn rival(&self) -> Option<String> {
        let me = (self.scm.creation_timestamp(), self.scm.name_any());
        self.obs
            .others
            .iter()
            .filter(|o| {
                o.spec.proxy_deployment == self.spec.proxy_deployment && o.name_any() != me.1
            })
            .filter(|o| {
                let phase = o.status.as_ref().map(|s| s.phase).unwrap_or_default();
                !matches!(phase, Phase::RolledBack | Phase::Succeeded | Phase::Failed)
                    || o.status
                        .as_ref()
                        .is_some_and(|s| s.original.is_some() && phase == Phase::Failed)
            })
            .find(|o| {
                let started = o.status.as_ref().is_some_and(|s| s.original.is_some());
                started || (o.creation_timestamp(), o.name_any()) < me
            })
            .map(|o| o.name_any())
    }

    // ---- DisablingSidecar ------------------------------------------------

    fn disable_sidecar(&mut self) -> Outcome {
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
        let desired = with_rollout(
            migrate_template(&proxy, self.spec),
            Rollout::Held {
                approval_hold: self.approval_hold(),
            },
            self.original(),
        );
        if desired != proxy {
            actions.push(Action::ReplaceProxy(Box::new(desired)));
        }
        let svc = admin_service(self.scm, &proxy, self.spec.cutover == Cutover::ZeroDowntime);
        if !service_matches(self.obs.admin_service.as_ref(), &svc) {
            actions.push(Action::ApplyAdminService(Box::new(svc)));
        }
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

    fn approval_hold(&self) -> bool {
        self.spec.cutover == Cutover::ZeroDowntime
            && self.spec.approval == Approval::Manual
            && !self.step_done(Phase::AwaitingApproval)
            && !self.spec.approved
    }

    fn step_done(&self, name: Phase) -> bool {
        self.status
            .steps
            .iter()
            .any(|s| s.name == name && s.state == StepState::Succeeded)
    }

    fn original(&self) -> &Original {
        static EMPTY: std::sync::OnceLock<Original> = std::sync::OnceLock::new();
        self.status
            .original
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Original::default))
    }

    // ---- DeployingController ---------------------------------------------

    fn deploy_controller(&mut self) -> Outcome {
        let Some(proxy) = &self.obs.proxy else {
            return Outcome::Wait(format!("Deployment {} is gone", self.spec.proxy_deployment));
        };
        if self.obs.controller.is_some() && self.obs.controller_role.is_some() {
            self.status.controller_deployment = Some(self.spec.controller_name());
            return Outcome::Done;
        }
        let Some(objects) = controller_objects(self.scm, proxy, self.original()) else {
            return Outcome::Fail(
                "OriginalUnreadable",
                "status.original.sidecar is not a container; set spec.rollback: true".into(),
            );
        };
        Outcome::Act(
            vec![Action::ApplyController(Box::new(objects))],
            format!(
                "creating Deployment {} with {}",
                self.spec.controller_name(),
                kong::ENV_CONTROLLER_ADMIN_SVC
            ),
        )
    }

    // ---- WaitingForAdminService ------------------------------------------

    fn wait_for_admin_service(&mut self) -> Outcome {
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

    fn await_approval(&mut self) -> Outcome {
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

    fn delete_legacy_pods(&mut self) -> Outcome {
        let Some(proxy) = self.obs.proxy.clone() else {
            return Outcome::Wait(format!("Deployment {} is gone", self.spec.proxy_deployment));
        };
        self.status.legacy_pods = legacy_pod_names(self.spec, self.obs);
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
            // One at a time: the next eviction waits until the last one is gone.
            if !terminating
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
        // No legacy pod left: the label no longer needs to tell pods apart and
        // the user's rollout settings come back.
        let finished = with_rollout(migrated, Rollout::Original, self.original());
        let mut actions = Vec::new();
        if finished != proxy {
            actions.push(Action::ReplaceProxy(Box::new(finished)));
        }
        let svc = admin_service(self.scm, &proxy, false);
        if !service_matches(self.obs.admin_service.as_ref(), &svc) {
            actions.push(Action::ApplyAdminService(Box::new(svc)));
        }
        if actions.is_empty() {
            return Outcome::Done;
        }
        Outcome::Act(
            actions,
            "no legacy pod left: restoring the rollout strategy".into(),
        )
    }

    // ---- drift and deadlines ----------------------------------------------

    /// After the sidecar is gone, someone else putting it back (Helm, Argo CD,
    /// Flux, a person) is reported, never silently overwritten.
    fn check_drift(&mut self, name: Phase) -> Option<Health> {
        if !self.step_done(Phase::DisablingSidecar) || name == Phase::DisablingSidecar {
            return None;
        }
        let message = match &self.obs.proxy {
            None => format!(
                "Deployment {} was deleted during the migration: re-create it or set spec.rollback: true",
                self.spec.proxy_deployment
            ),
            Some(proxy) => match template_drift(proxy, self.spec) {
                Some(drift) => format!(
                    "Deployment {} was changed{} during the migration ({drift}); the operator does not overwrite it: revert that change or set spec.rollback: true",
                    self.spec.proxy_deployment,
                    changed_by(&proxy.metadata)
                ),
                None => self.admin_service_drift(proxy)?,
            },
        };
        if self.status.message.as_deref() != Some(&message) {
            self.events.push(Event {
                warning: true,
                reason: "DriftDetected".into(),
                note: message.clone(),
            });
        }
        self.status.message = Some(message.clone());
        self.requeue_after = Some(IDLE_RECHECK);
        Some(Health {
            ready: false,
            reconciling: false,
            stalled: true,
            reason: "DriftDetected".into(),
            message,
        })
    }

    /// While legacy pods run, the admin Service must select only the new
    /// ones: someone else widening it (a chart's own admin Service applied
    /// again, say) would make the controller crash-loop.
    fn admin_service_drift(&self, proxy: &Deployment) -> Option<String> {
        let live = self.obs.admin_service.as_ref()?;
        let legacy_left = self
            .obs
            .pods
            .iter()
            .any(|p| has_container(p, self.spec.controller_container()));
        if self.spec.cutover != Cutover::ZeroDowntime || !legacy_left {
            return None;
        }
        if last_spec_writer(&live.metadata).as_deref() == Some(FIELD_MANAGER) {
            return None;
        }
        let want = admin_service(self.scm, proxy, true);
        if service_matches(Some(live), &want) {
            return None;
        }
        Some(format!(
            "Service {} was changed{} during the migration (its selector or ports no longer pick only the new gateway pods); the operator does not overwrite it: revert that change or set spec.rollback: true",
            live.name_any(),
            changed_by(&live.metadata)
        ))
    }

    fn time_left(&self, i: usize) -> Duration {
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

    fn check_timeout(&mut self, i: usize) -> Option<Health> {
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

    // ---- RollingBack -------------------------------------------------------

    fn roll_back_because(&mut self, why: String) -> Health {
        self.status.message = Some(why.clone());
        self.roll_back(&why)
    }

    fn roll_back(&mut self, why: &str) -> Health {
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
    fn restore(&mut self, original: &Original) -> Outcome {
        let spec = self.spec;
        let mut restored = None;
        if let Some(proxy) = &self.obs.proxy {
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
            restored = Some(with_rollout(template, Rollout::Original, original));
        }
        let mut actions = Vec::new();
        let controller_ours = self
            .obs
            .controller
            .as_ref()
            .is_some_and(|c| is_ours(&c.metadata, self.scm));
        if controller_ours || self.obs.controller_role.is_some() {
            actions.push(Action::DeleteController);
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

    fn health_for_phase(&self) -> Health {
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

    fn finish(mut self, health: Health) -> Plan {
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

fn has_deadline(step: Phase) -> bool {
    matches!(
        step,
        Phase::DisablingSidecar
            | Phase::DeployingController
            | Phase::WaitingForAdminService
            | Phase::DeletingLegacyPods
    )
}

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

fn step_done_event(step: Phase, spec: &SidecarMigrationSpec) -> (&'static str, String) {
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

fn condition(
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

// ---- object facts ---------------------------------------------------------

pub fn is_ours(meta: &ObjectMeta, scm: &SidecarMigration) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(MANAGED_BY)
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIGRATION_ANNOTATION))
            == Some(&scm.name_any())
}

fn container_names(containers: &[Container]) -> String {
    containers
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

pub fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == name))
}

fn rs_template_has(rs: &ReplicaSet, container: &str) -> bool {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .is_some_and(|s| s.containers.iter().any(|c| c.name == container))
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn controller_owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.name.as_str())
}

fn legacy_pod_names(spec: &SidecarMigrationSpec, obs: &Observed) -> Vec<String> {
    let mut names: Vec<String> = obs
        .pods
        .iter()
        .filter(|p| has_container(p, spec.controller_container()))
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Pod names an EndpointSlice list names, as KIC sees them: terminating
/// endpoints and non-Pod targets are skipped, readiness is ignored.
pub fn listed_pods(slices: &[EndpointSlice]) -> Vec<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.terminating) != Some(true))
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .filter_map(|r| r.name.clone())
        .collect()
}

pub fn selector_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
}

pub fn deployment_available(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &d.status else { return false };
    st.observed_generation >= d.metadata.generation
        && st.available_replicas.unwrap_or(0) >= want
        && want > 0
}

pub fn rollout_complete(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &d.status else { return false };
    st.observed_generation >= d.metadata.generation
        && st.updated_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
}

fn rollout_summary(d: &Deployment) -> String {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    format!(
        "{}/{want} updated, {}/{want} available, {} pods in all",
        st.updated_replicas.unwrap_or(0),
        st.available_replicas.unwrap_or(0),
        st.replicas.unwrap_or(0)
    )
}

/// The tool that manages an object, if a GitOps or release tool does.
pub fn gitops_owner(meta: &ObjectMeta) -> Option<String> {
    let labels = meta.labels.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();
    if labels.contains_key("kustomize.toolkit.fluxcd.io/name")
        || labels.contains_key("helm.toolkit.fluxcd.io/name")
    {
        return Some("Flux".into());
    }
    if labels.contains_key("argocd.argoproj.io/instance")
        || annotations.contains_key("argocd.argoproj.io/tracking-id")
    {
        return Some("Argo CD".into());
    }
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some("Helm")
        || annotations.contains_key("meta.helm.sh/release-name")
    {
        let release = annotations
            .get("meta.helm.sh/release-name")
            .map(|r| format!(" release {r}"))
            .unwrap_or_default();
        return Some(format!("Helm{release}"));
    }
    None
}

/// Who wrote an object's spec, and when. Status and annotation writers
/// (kube-controller-manager stamps the revision) did not change the spec.
fn spec_writers(meta: &ObjectMeta) -> impl Iterator<Item = &ManagedFieldsEntry> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some())
        })
}

/// ` by "<manager>"`: the most recent writer of an object's spec other than
/// this operator, for drift messages; empty when there is none.
fn changed_by(meta: &ObjectMeta) -> String {
    spec_writers(meta)
        .filter(|m| m.manager.as_deref() != Some(FIELD_MANAGER))
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.as_ref())
        .map(|m| format!(" by {m:?}"))
        .unwrap_or_default()
}

/// The most recent writer of an object's spec, this operator included.
fn last_spec_writer(meta: &ObjectMeta) -> Option<String> {
    spec_writers(meta)
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

/// What about the template says someone undid the migration, if anything.
fn template_drift(proxy: &Deployment, spec: &SidecarMigrationSpec) -> Option<String> {
    let pod = proxy.spec.as_ref()?.template.spec.as_ref()?;
    if pod
        .containers
        .iter()
        .any(|c| c.name == spec.controller_container())
    {
        return Some(format!(
            "the {} sidecar is back",
            spec.controller_container()
        ));
    }
    let labels = proxy
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if labels.get(DISCOVERY_LABEL).map(String::as_str) != Some("true") {
        return Some(format!("the pod label {DISCOVERY_LABEL} is gone"));
    }
    let proxy_c = pod
        .containers
        .iter()
        .find(|c| c.name == spec.proxy_container())?;
    let listen = env_value(proxy_c, kong::ENV_ADMIN_LISTEN).unwrap_or_default();
    if kong::admin_listen_is_local_only(&listen) {
        return Some(format!(
            "{} is back to localhost only",
            kong::ENV_ADMIN_LISTEN
        ));
    }
    None
}

// ---- transforms -------------------------------------------------------------

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn record_original(
    spec: &SidecarMigrationSpec,
    proxy: &Deployment,
    admin_service: Option<&Service>,
    scm: &SidecarMigration,
) -> Option<Original> {
    let dspec = proxy.spec.as_ref()?;
    let containers = &dspec.template.spec.as_ref()?.containers;
    let index = containers
        .iter()
        .position(|c| c.name == spec.controller_container())?;
    let proxy_c = containers
        .iter()
        .find(|c| c.name == spec.proxy_container())?;
    let adopted_admin_service = admin_service
        .filter(|s| !is_ours(&s.metadata, scm))
        .map(|s| AdoptedService {
            selector: s
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default(),
            ports: to_value(
                &s.spec
                    .as_ref()
                    .and_then(|s| s.ports.clone())
                    .unwrap_or_default(),
            ),
        });
    Some(Original {
        sidecar: to_value(&containers[index]),
        sidecar_index: index as u32,
        proxy_env: to_value(&proxy_c.env.clone().unwrap_or_default()),
        proxy_ports: to_value(&proxy_c.ports.clone().unwrap_or_default()),
        strategy: dspec.strategy.as_ref().map(to_value),
        min_ready_seconds: dspec.min_ready_seconds,
        progress_deadline_seconds: dspec.progress_deadline_seconds,
        adopted_admin_service,
    })
}

/// The proxy Deployment rendered for Gateway Discovery: no sidecar, the Admin
/// API on all interfaces under the port name KIC looks for, no KONG_KIC, and
/// the label the admin Service selects on. Applying it twice changes nothing.
pub fn migrate_template(proxy: &Deployment, spec: &SidecarMigrationSpec) -> Deployment {
    let mut d = proxy.clone();
    let Some(tmpl) = d.spec.as_mut().map(|s| &mut s.template) else {
        return d;
    };
    tmpl.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(DISCOVERY_LABEL.into(), "true".into());
    let Some(pod) = tmpl.spec.as_mut() else {
        return d;
    };
    pod.containers
        .retain(|c| c.name != spec.controller_container());
    if let Some(c) = pod
        .containers
        .iter_mut()
        .find(|c| c.name == spec.proxy_container())
    {
        let env = c.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != kong::ENV_KONG_KIC);
        match env.iter_mut().find(|e| e.name == kong::ENV_ADMIN_LISTEN) {
            Some(e) => {
                e.value = Some(kong::admin_listen_all_interfaces(
                    e.value.as_deref().unwrap_or_default(),
                ))
            }
            None => env.push(EnvVar {
                name: kong::ENV_ADMIN_LISTEN.into(),
                value: Some(kong::admin_listen_all_interfaces(
                    kong::SIDECAR_ADMIN_LISTEN,
                )),
                ..Default::default()
            }),
        }
        let ports = c.ports.get_or_insert_with(Vec::new);
        if let Some(p) = ports
            .iter_mut()
            .find(|p| p.container_port == kong::ADMIN_PORT)
        {
            p.name = Some(kong::ADMIN_CONTAINER_PORT_NAME.into());
        } else {
            ports.push(ContainerPort {
                name: Some(kong::ADMIN_CONTAINER_PORT_NAME.into()),
                container_port: kong::ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            });
        }
    }
    d
}

/// The proxy Deployment's template as the sidecar rendering had it.
pub fn restore_template(
    proxy: &Deployment,
    spec: &SidecarMigrationSpec,
    original: &Original,
) -> Deployment {
    let mut d = proxy.clone();
    let Some(tmpl) = d.spec.as_mut().map(|s| &mut s.template) else {
        return d;
    };
    if let Some(labels) = tmpl.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(DISCOVERY_LABEL);
    }
    let Some(pod) = tmpl.spec.as_mut() else {
        return d;
    };
    if let Some(c) = pod
        .containers
        .iter_mut()
        .find(|c| c.name == spec.proxy_container())
    {
        let env: Vec<EnvVar> =
            serde_json::from_value(original.proxy_env.clone()).unwrap_or_default();
        let ports: Vec<ContainerPort> =
            serde_json::from_value(original.proxy_ports.clone()).unwrap_or_default();
        c.env = (!env.is_empty()).then_some(env);
        c.ports = (!ports.is_empty()).then_some(ports);
    }
    if !pod
        .containers
        .iter()
        .any(|c| c.name == spec.controller_container())
        && let Ok(sidecar) = serde_json::from_value::<Container>(original.sidecar.clone())
    {
        let at = (original.sidecar_index as usize).min(pod.containers.len());
        pod.containers.insert(at, sidecar);
    }
    d
}

pub enum Rollout {
    /// maxUnavailable 0 so a legacy pod leaves only once a new pod is
    /// available; with `approval_hold`, new pods never count as available.
    Held { approval_hold: bool },
    /// The user's own settings, as recorded.
    Original,
}

pub fn with_rollout(mut d: Deployment, rollout: Rollout, original: &Original) -> Deployment {
    let Some(spec) = d.spec.as_mut() else {
        return d;
    };
    let recorded: Option<DeploymentStrategy> = original
        .strategy
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    match rollout {
        Rollout::Original => {
            spec.strategy = recorded;
            spec.min_ready_seconds = original.min_ready_seconds;
            spec.progress_deadline_seconds = original.progress_deadline_seconds;
        }
        Rollout::Held { approval_hold } => {
            let surge = recorded
                .as_ref()
                .filter(|s| s.type_.as_deref() != Some("Recreate"))
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_surge.clone())
                .filter(|s| {
                    !matches!(s, IntOrString::Int(0))
                        && !matches!(s, IntOrString::String(p) if p == "0%")
                })
                .unwrap_or(IntOrString::Int(1));
            spec.strategy = Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            });
            // The API server requires progressDeadlineSeconds above
            // minReadySeconds, and a held rollout must not be reported as
            // failed while it waits for approval.
            (spec.min_ready_seconds, spec.progress_deadline_seconds) = if approval_hold {
                (
                    Some(APPROVAL_HOLD_MIN_READY_SECONDS),
                    Some(APPROVAL_HOLD_MIN_READY_SECONDS + 1),
                )
            } else {
                (
                    original.min_ready_seconds,
                    original.progress_deadline_seconds,
                )
            };
        }
    }
    d
}

fn migration_labels(scm: &SidecarMigration) -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])
        .into_iter()
        .chain(std::iter::once((
            "app.kubernetes.io/part-of".to_string(),
            scm.spec.proxy_deployment.clone(),
        )))
        .collect()
}

fn migration_meta(scm: &SidecarMigration, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: scm.namespace(),
        labels: Some(migration_labels(scm)),
        annotations: Some(BTreeMap::from([(
            MIGRATION_ANNOTATION.to_string(),
            scm.name_any(),
        )])),
        ..Default::default()
    }
}

/// The headless Admin API Service the new controller discovers gateways
/// through. With `discovery_only`, only pods rendered for Gateway Discovery
/// are selected, so a sidecar pod (Admin API on localhost) is never listed.
pub fn admin_service(scm: &SidecarMigration, proxy: &Deployment, discovery_only: bool) -> Service {
    let mut selector = selector_labels(proxy);
    if discovery_only {
        selector.insert(DISCOVERY_LABEL.into(), "true".into());
    }
    let adopted = scm
        .status
        .as_ref()
        .and_then(|s| s.original.as_ref())
        .and_then(|o| o.adopted_admin_service.as_ref());
    Service {
        metadata: migration_meta(scm, scm.spec.admin_service_name()),
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            // clusterIP cannot change on an adopted Service; KIC reads the
            // EndpointSlices either way.
            cluster_ip: adopted.is_none().then(|| "None".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(kong::ADMIN_SERVICE_PORT_NAME.into()),
                port: kong::ADMIN_PORT,
                protocol: Some("TCP".into()),
                // A number, as the chart renders it: a sidecar pod selected by
                // this Service is listed, exactly the trap Kong's order falls in.
                target_port: Some(IntOrString::Int(kong::ADMIN_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn adopted_service_restored(
    scm: &SidecarMigration,
    _proxy: &Deployment,
    adopted: &AdoptedService,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(scm.spec.admin_service_name()),
            namespace: scm.namespace(),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            selector: Some(adopted.selector.clone()),
            ports: serde_json::from_value(adopted.ports.clone()).ok(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether the live Service already has what `want` asks of it.
fn service_matches(live: Option<&Service>, want: &Service) -> bool {
    let Some(live) = live else { return false };
    let (Some(l), Some(w)) = (&live.spec, &want.spec) else {
        return false;
    };
    let ports_match = match (&l.ports, &w.ports) {
        (Some(lp), Some(wp)) => {
            lp.len() == wp.len()
                && lp.iter().zip(wp).all(|(a, b)| {
                    a.name == b.name && a.port == b.port && a.target_port == b.target_port
                })
        }
        (l, w) => l == w,
    };
    let labels_match = want
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| live.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    l.selector == w.selector && ports_match && labels_match
}

/// The Gateway Discovery controller, built from the sidecar container: same
/// image, env (secret references stay references), args, probes, security
/// context, ServiceAccount and the volumes it mounts; the Admin API is found
/// through the admin Service instead of localhost.
pub fn controller_objects(
    scm: &SidecarMigration,
    proxy: &Deployment,
    original: &Original,
) -> Option<ControllerObjects> {
    let spec = &scm.spec;
    let ns = scm.namespace().unwrap_or_default();
    let name = spec.controller_name();
    let mut c: Container = serde_json::from_value(original.sidecar.clone()).ok()?;
    let pod = proxy.spec.as_ref()?.template.spec.clone()?;
    let env = c.env.get_or_insert_with(Vec::new);
    env.retain(|e| {
        e.name != kong::ENV_CONTROLLER_ADMIN_URL && e.name != kong::ENV_CONTROLLER_ADMIN_SVC
    });
    env.push(EnvVar {
        name: kong::ENV_CONTROLLER_ADMIN_SVC.into(),
        value: Some(format!("{ns}/{}", spec.admin_service_name())),
        ..Default::default()
    });
    if let Some(overrides) = &spec.controller {
        if let Some(image) = &overrides.image {
            c.image = Some(image.clone());
        }
        if let Some(resources) = &overrides.resources {
            c.resources = Some(resources.clone());
        }
    }
    let mounted: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    let volumes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| mounted.contains(&v.name.as_str()))
        .cloned()
        .collect();
    let pod_labels = BTreeMap::from([
        (CONTROLLER_SELECTOR_LABEL.to_string(), name.clone()),
        ("app.kubernetes.io/name".to_string(), name.clone()),
        (
            "app.kubernetes.io/component".to_string(),
            "controller".to_string(),
        ),
    ]);
    let service_account = pod
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_spec = k8s_openapi::api::core::v1::PodSpec {
        containers: vec![c],
        volumes: (!volumes.is_empty()).then_some(volumes),
        service_account_name: Some(service_account.clone()),
        automount_service_account_token: pod.automount_service_account_token,
        security_context: pod.security_context.clone(),
        image_pull_secrets: pod.image_pull_secrets.clone(),
        node_selector: pod.node_selector.clone(),
        tolerations: pod.tolerations.clone(),
        priority_class_name: pod.priority_class_name.clone(),
        termination_grace_period_seconds: pod.termination_grace_period_seconds,
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: migration_meta(scm, name.clone()),
        spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: Some(
                spec.controller
                    .as_ref()
                    .and_then(|c| c.replicas)
                    .unwrap_or(1),
            ),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    CONTROLLER_SELECTOR_LABEL.to_string(),
                    name.clone(),
                )])),
                ..Default::default()
            },
            template: k8s_openapi::api::core::v1::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let rbac_name = format!("{name}-endpointslices");
    let role = Role {
        metadata: migration_meta(scm, rbac_name.clone()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: migration_meta(scm, rbac_name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: rbac_name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account,
            namespace: Some(ns),
            ..Default::default()
        }]),
    };
    Some(ControllerObjects {
        deployment,
        role,
        role_binding,
    })
}

/// Every change the migration will make, for status.plan (dry run too).
fn planned_changes(
    spec: &SidecarMigrationSpec,
    scm: &SidecarMigration,
    proxy: &Deployment,
    sidecar: &Container,
    proxy_c: &Container,
    obs: &Observed,
) -> Vec<PlannedChange> {
    let deploy = format!("Deployment/{}", spec.proxy_deployment);
    let svc = format!("Service/{}", spec.admin_service_name());
    let ctrl = format!("Deployment/{}", spec.controller_name());
    let listen = env_value(proxy_c, kong::ENV_ADMIN_LISTEN)
        .unwrap_or_else(|| kong::SIDECAR_ADMIN_LISTEN.into());
    let change = |step, object: &str, change: String| PlannedChange {
        step,
        object: object.into(),
        change,
    };
    let mut out = vec![
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!("remove container {}", sidecar.name),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!(
                "{}: {listen:?} -> {:?}",
                kong::ENV_ADMIN_LISTEN,
                kong::admin_listen_all_interfaces(&listen)
            ),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!(
                "add container port {} {}",
                kong::ADMIN_CONTAINER_PORT_NAME,
                kong::ADMIN_PORT
            ),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!("add pod label {DISCOVERY_LABEL}=true"),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            "hold rollingUpdate maxUnavailable 0 until the migration ends".into(),
        ),
    ];
    if env_value(proxy_c, kong::ENV_KONG_KIC).is_some() {
        out.insert(
            2,
            change(
                Phase::DisablingSidecar,
                &deploy,
                format!("remove env {}", kong::ENV_KONG_KIC),
            ),
        );
    }
    let service_verb = match &obs.admin_service {
        Some(s) if !is_ours(&s.metadata, scm) => "adopt",
        _ => "create headless",
    };
    out.push(change(
        Phase::DisablingSidecar,
        &svc,
        format!(
            "{service_verb} Service selecting {}{} on port {} {}",
            selector_labels(proxy)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            if spec.cutover == Cutover::ZeroDowntime {
                format!(",{DISCOVERY_LABEL}=true")
            } else {
                String::new()
            },
            kong::ADMIN_SERVICE_PORT_NAME,
            kong::ADMIN_PORT
        ),
    ));
    let image = spec
        .controller
        .as_ref()
        .and_then(|c| c.image.clone())
        .or_else(|| sidecar.image.clone())
        .unwrap_or_default();
    out.push(change(
        Phase::DeployingController,
        &ctrl,
        format!(
            "create with image {image}, {}={}/{} instead of {}",
            kong::ENV_CONTROLLER_ADMIN_SVC,
            scm.namespace().unwrap_or_default(),
            spec.admin_service_name(),
            kong::ENV_CONTROLLER_ADMIN_URL
        ),
    ));
    out.push(change(
        Phase::DeployingController,
        &format!("Role/{}-endpointslices", spec.controller_name()),
        "create with RoleBinding: get, list, watch discovery.k8s.io endpointslices".into(),
    ));
    let legacy = legacy_pod_names(spec, obs);
    let how = match spec.cutover {
        Cutover::ZeroDowntime => "retired by the rolling update once new pods are Ready",
        Cutover::DeleteLegacyPods => "evicted, one at a time",
    };
    for pod in legacy {
        out.push(change(
            Phase::DeletingLegacyPods,
            &format!("Pod/{pod}"),
            how.into(),
        ));
    }
    out.push(change(
        Phase::DeletingLegacyPods,
        &deploy,
        "restore the rollout strategy".into(),
    ));
    out
}

#[cfg(test)]
mod tests;
