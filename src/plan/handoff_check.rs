//! The hand-off's order, enforced where the operator can see it: after
//! Succeeded, each release of `status.handoff` is reported `Done` only once
//! the operator can prove it happened, and a controller left without one of
//! KIC's permissions is reported at once, with the fix.
//!
//! Why these proofs. The controller release's install is what gives KIC an
//! identity of its own; until then the controller runs as the gateway's
//! ServiceAccount, whose bindings the gateway release's upgrade removes. So
//! the controller step is done when the controller Deployment is that
//! release's (Helm's ownership metadata), has rolled out onto a
//! ServiceAccount other than the gateway's, and that ServiceAccount holds
//! every permission of the chart's controller ClusterRole and Role, asked of
//! the API server's own authorizer (SubjectAccessReview: whatever binds it,
//! a release's RBAC or a platform team's). Only then is the gateway upgrade
//! safe to run, and it is done once the gateway's ServiceAccount holds none
//! of KIC's permissions any more: the sidecar era's bindings are gone, and
//! nothing else on the proxy Deployment tells the upgrade happened (the
//! gateway release renders the template the migration left). The
//! authorizer's answers are the executor's to fetch (`reconcile/
//! access_review.rs`); what they mean is decided here.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;

use crate::api::*;
use crate::kic_rbac::{self, Permission};

use super::facts::rollout_complete;
use super::{Event, Planner, helm_release};

/// How often a Succeeded migration whose hand-off is unfinished looks again.
/// The controller release's install changes the controller Deployment, whose
/// watch wakes the migration at once; what no watch of the operator sees is
/// RBAC (a ClusterRoleBinding deleted by the gateway release's upgrade run
/// first, a binding granted by hand), which this bounds. Each look is a
/// reconcile's reads and SubjectAccessReviews, which the authorizer answers
/// from memory (no storage read), stopping at the first refusal: at most the
/// 176 questions of chart 2.52's controller RBAC per half minute, and only
/// until the hand-off is done. Then nothing wakes the migration again.
pub const HANDOFF_RECHECK: Duration = Duration::from_secs(30);

/// What to ask the authorizer for a hand-off in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessCheck {
    pub namespace: String,
    /// The ServiceAccount the controller's pod template runs as.
    pub controller_account: String,
    /// The gateway's, when the controller no longer runs as it.
    pub gateway_account: Option<String>,
    pub permissions: Vec<Permission>,
}

/// The authorizer's answers to an [`AccessCheck`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HandoffAccess {
    pub controller_account: String,
    /// The first of KIC's permissions refused to the controller's account.
    pub controller_missing: Option<Permission>,
    /// The gateway's account, if asked about.
    pub gateway_account: Option<String>,
    /// Whether it still holds any of KIC's permissions.
    pub gateway_holds_any: bool,
}

/// Whether a migration waits on its hand-off: Succeeded, with a release of
/// `status.handoff` not yet done. Only such a finished migration is woken
/// by its Deployments and looks again every [`HANDOFF_RECHECK`].
pub fn handoff_pending(scm: &SidecarMigration) -> bool {
    scm.status.as_ref().is_some_and(|s| {
        s.phase == Phase::Succeeded
            && s.handoff
                .as_ref()
                .is_some_and(|h| h.releases.iter().any(|r| r.state != HandoffState::Done))
    }) && !scm.spec.rollback
        && scm.metadata.deletion_timestamp.is_none()
}

fn account(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The questions for the authorizer, when the hand-off is pending and the
/// controller Deployment exists.
pub fn access_check(scm: &SidecarMigration, obs: &super::Observed) -> Option<AccessCheck> {
    if !handoff_pending(scm) {
        return None;
    }
    let handoff = scm.status.as_ref()?.handoff.as_ref()?;
    let controller = obs.controller.as_ref()?;
    let controller_account = account(controller);
    let gateway_account = obs
        .proxy
        .as_ref()
        .map(account)
        .filter(|g| *g != controller_account);
    let first = handoff.releases.first()?;
    Some(AccessCheck {
        namespace: first.namespace.clone(),
        controller_account,
        gateway_account,
        permissions: kic_rbac::needed(first.chart_version.as_deref()),
    })
}

impl Planner<'_> {
    /// Sets each release's state from what is observed, with an Event for a
    /// step done and for a missing permission, and looks again while any
    /// step is not done.
    pub(super) fn check_handoff(&mut self) {
        if !handoff_pending(self.scm) {
            return;
        }
        let Some(mut handoff) = self.status.handoff.clone() else {
            return;
        };
        if handoff.releases.len() != 2 {
            return;
        }
        let before = handoff.clone();
        let controller_release = handoff.releases[0].name.clone();
        let controller_command = handoff.releases[0].command.clone();
        let gateway_release = handoff.releases[1].name.clone();
        let namespace = handoff.releases[0].namespace.clone();
        let name = self.spec.controller_name();
        let gateway_account = self.obs.proxy.as_ref().map(account);
        let (state, message, problem) = match &self.obs.controller {
            None => (
                HandoffState::Ready,
                format!("Deployment {name} is gone: run `{controller_command}`"),
                None,
            ),
            Some(d) => {
                let account = account(d);
                let access = self
                    .obs
                    .handoff_access
                    .as_ref()
                    .filter(|a| a.controller_account == account);
                let owned =
                    helm_release(&d.metadata) == Some((controller_release.clone(), namespace));
                let on_gateways = gateway_account.as_deref() == Some(account.as_str());
                let problem = access.and_then(|a| a.controller_missing.as_ref()).map(|p| {
                    if on_gateways {
                        format!(
                            "Deployment {name} runs as the gateway's ServiceAccount {account}, which lacks {p} that KIC needs: its bindings are gone, as when the gateway release {gateway_release} is upgraded before the controller release {controller_release} is installed (that upgrade removes them). Run `{controller_command}` now: it brings the controller's own ServiceAccount and RBAC"
                        )
                    } else {
                        format!(
                            "Deployment {name} runs as ServiceAccount {account}, which lacks {p} that KIC needs: release {controller_release}'s ClusterRole and Role grant it; install the release with its RBAC (rbac.create) or grant it"
                        )
                    }
                });
                if let Some(problem) = problem {
                    (HandoffState::Ready, problem.clone(), Some(problem))
                } else if !owned {
                    let m = format!(
                        "Deployment {name} is not release {controller_release}'s (Helm's ownership metadata): run `{controller_command}`"
                    );
                    (HandoffState::Ready, m, None)
                } else if on_gateways {
                    let m = format!(
                        "Deployment {name} still runs as the gateway's ServiceAccount {account}: run `{controller_command}`, which brings the controller's own"
                    );
                    (HandoffState::Ready, m, None)
                } else if access.is_none() {
                    let m = format!(
                        "Deployment {name} runs as ServiceAccount {account}: its permissions are being checked"
                    );
                    (HandoffState::Ready, m, None)
                } else if !rollout_complete(d) {
                    let m = format!(
                        "Deployment {name} rolls onto ServiceAccount {account}, which holds every permission KIC needs: waiting for the rollout"
                    );
                    (HandoffState::Ready, m, None)
                } else {
                    let m = format!(
                        "Deployment {name} is release {controller_release}'s and runs as ServiceAccount {account}, which holds every permission KIC needs (SubjectAccessReview)"
                    );
                    (HandoffState::Done, m, None)
                }
            }
        };
        handoff.releases[0].state = state;
        handoff.releases[0].message = Some(message);
        let gateway_command = handoff.releases[1].command.clone();
        let (state, message) = if handoff.releases[0].state != HandoffState::Done {
            (
                HandoffState::Waiting,
                format!(
                    "run after release {controller_release} is Done: this upgrade removes the bindings of the gateway's ServiceAccount, which the controller may still run as"
                ),
            )
        } else {
            match self.obs.handoff_access.as_ref() {
                Some(HandoffAccess {
                    gateway_account: Some(g),
                    gateway_holds_any: false,
                    ..
                }) => (
                    HandoffState::Done,
                    format!(
                        "the gateway's ServiceAccount {g} holds none of KIC's permissions any more"
                    ),
                ),
                _ => (
                    HandoffState::Ready,
                    format!(
                        "run `{gateway_command}` now: the controller holds every permission KIC needs on its own ServiceAccount"
                    ),
                ),
            }
        };
        handoff.releases[1].state = state;
        handoff.releases[1].message = Some(message);

        let stored = self.scm.status.as_ref().and_then(|s| s.handoff.as_ref());
        let stored = stored.unwrap_or(&before);
        for (now, was) in handoff.releases.iter().zip(&stored.releases) {
            if now.state == HandoffState::Done && was.state != HandoffState::Done {
                self.events.push(Event {
                    warning: false,
                    reason: "HandoffStepDone".into(),
                    note: format!(
                        "release {}: {}",
                        now.name,
                        now.message.clone().unwrap_or_default()
                    ),
                });
            }
        }
        // Once per problem: the release's message keeps it until it changes.
        if let Some(problem) = problem
            && stored.releases[0].message.as_deref() != Some(problem.as_str())
        {
            self.events.push(Event {
                warning: true,
                reason: "HandoffPermissionMissing".into(),
                note: problem,
            });
        }
        if handoff
            .releases
            .iter()
            .any(|r| r.state != HandoffState::Done)
        {
            self.requeue_after = Some(HANDOFF_RECHECK);
        }
        self.status.handoff = Some(handoff);
    }
}
