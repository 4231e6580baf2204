//! The admission webhook moves without a gap. The kong chart's webhook
//! Service selects the gateway pods on the port `webhook`, which only the
//! sidecar declares; the controller Deployment serves the same webhook (the
//! sidecar's port, certificate Secret and mount carry over). Before the last
//! sidecar pod goes, the operator points that Service at the controller's
//! pods and waits until it lists a Ready one, so the
//! ValidatingWebhookConfiguration, which it never touches, always reaches a
//! Ready endpoint. Rollback points the Service back, exactly as recorded,
//! before the controller goes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::*;

use super::validate::selects_exactly;
use super::{
    Action, Event, Outcome, Planner, deployment_available, has_container, selector_labels,
};

/// The chart's admission webhook Service: `<fullname>-validation-webhook`,
/// where the chart's fullname is the proxy Deployment's name.
pub fn webhook_service_name(spec: &SidecarMigrationSpec) -> String {
    format!("{}-validation-webhook", spec.proxy_deployment)
}

/// Whether `svc` demonstrably is this install's webhook Service: named as the
/// chart names it, selecting exactly the proxy Deployment's pods, on a named
/// port that the sidecar declares.
pub(super) fn is_install_webhook(
    spec: &SidecarMigrationSpec,
    proxy: &Deployment,
    sidecar: &Container,
    svc: &Service,
) -> bool {
    let Some(s) = &svc.spec else { return false };
    let sidecar_ports: Vec<&str> = sidecar
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.as_deref())
        .collect();
    svc.name_any() == webhook_service_name(spec)
        && selects_exactly(&s.selector.clone().unwrap_or_default(), proxy)
        && s.ports.iter().flatten().any(|p| {
            matches!(&p.target_port, Some(IntOrString::String(n)) if sidecar_ports.contains(&n.as_str()))
        })
}

/// The Service with `selector`; with `marked`, the operator's hand-over
/// label, which its EndpointSlices inherit and the operator's watches
/// select, so that a change of its endpoints wakes the migration.
fn with_selector(svc: &Service, selector: BTreeMap<String, String>, marked: bool) -> Service {
    let mut s = svc.clone();
    if let Some(spec) = s.spec.as_mut() {
        spec.selector = Some(selector);
    }
    let labels = s.metadata.labels.get_or_insert_with(Default::default);
    if marked {
        labels.insert(HANDOFF_LABEL.into(), "true".into());
    } else {
        labels.remove(HANDOFF_LABEL);
    }
    if labels.is_empty() {
        s.metadata.labels = None;
    }
    s
}

/// Whether the EndpointSlices list a Ready, serving endpoint (with the
/// Service's port) of a pod that `is_pod` accepts.
fn ready_endpoint(slices: &[EndpointSlice], is_pod: impl Fn(&str) -> bool) -> bool {
    slices
        .iter()
        .filter(|s| s.ports.as_ref().is_some_and(|p| !p.is_empty()))
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready) == Some(true) && c.and_then(|c| c.terminating) != Some(true)
        })
        .filter_map(|e| e.target_ref.as_ref()?.name.as_deref())
        .any(is_pod)
}

impl Planner<'_> {
    /// Validating: where the webhook is served, when the install has the
    /// chart's webhook Service. None leaves it alone (and validation warns).
    pub(super) fn find_webhook(
        &self,
        proxy: &Deployment,
        sidecar: &Container,
    ) -> Option<WebhookStatus> {
        let svc = self.obs.webhook_service.as_ref()?;
        is_install_webhook(self.spec, proxy, sidecar, svc).then(|| WebhookStatus {
            service: svc.name_any(),
            served_by: self.spec.proxy_deployment.clone(),
        })
    }

    /// ZeroDowntime holds new gateway pods unavailable (so the rolling
    /// update retires no sidecar pod) until the webhook has moved.
    pub(super) fn webhook_hold(&self) -> bool {
        self.spec.cutover == Cutover::ZeroDowntime && self.webhook_to_move()
    }

    fn webhook_to_move(&self) -> bool {
        self.status
            .webhook
            .as_ref()
            .is_some_and(|w| w.served_by != self.spec.controller_name())
    }

    /// DeletingLegacyPods: points the webhook Service at the controller's
    /// pods and waits until it lists a Ready one. None once it has (or there
    /// is no webhook to move).
    pub(super) fn move_webhook(&mut self, proxy: &Deployment) -> Option<Outcome> {
        if !self.webhook_to_move() {
            return None;
        }
        let controller_name = self.spec.controller_name();
        let Some(svc) = self.obs.webhook_service.clone() else {
            // Deleted meanwhile: nothing serves it, nothing to keep serving.
            self.status.webhook = None;
            return None;
        };
        let name = svc.name_any();
        let Some(controller) = &self.obs.controller else {
            return Some(Outcome::Wait(format!(
                "Deployment {controller_name} is gone"
            )));
        };
        let want = selector_labels(controller);
        let live = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if live != want {
            let recorded = self.original().webhook_selector.as_ref();
            if !selects_exactly(&live, proxy) && recorded != Some(&live) {
                return Some(Outcome::Wait(format!(
                    "Service {name} no longer selects the pods of Deployment {}: the operator does not point it at the controller; revert that change or set spec.rollback: true",
                    self.spec.proxy_deployment
                )));
            }
            if self.spec.cutover == Cutover::ZeroDowntime && !deployment_available(controller) {
                return Some(Outcome::Wait(format!(
                    "waiting for Deployment {controller_name} to be Available before Service {name} selects its pods"
                )));
            }
            // Written with this status, before the change it makes undoable.
            if let Some(original) = self.status.original.as_mut() {
                original.webhook_selector.get_or_insert(live);
            }
            return Some(Outcome::Act(
                vec![Action::RepointWebhook(Box::new(with_selector(
                    &svc, want, true,
                )))],
                format!(
                    "pointing the admission webhook Service {name} at the pods of Deployment {controller_name}"
                ),
            ));
        }
        let prefix = format!("{controller_name}-");
        let gateway: Vec<String> = self.obs.pods.iter().map(|p| p.name_any()).collect();
        if !ready_endpoint(&self.obs.webhook_slices, |pod| {
            pod.starts_with(&prefix) && !gateway.iter().any(|g| g == pod)
        }) {
            return Some(Outcome::Wait(format!(
                "waiting for the admission webhook Service {name} to list a Ready pod of Deployment {controller_name}"
            )));
        }
        self.status.webhook = Some(WebhookStatus {
            service: name.clone(),
            served_by: controller_name.clone(),
        });
        self.events.push(Event {
            warning: false,
            reason: "WebhookMoved".into(),
            note: format!(
                "the admission webhook Service {name} lists a Ready pod of Deployment {controller_name}"
            ),
        });
        None
    }

    /// RollingBack, once the sidecar pods are back: the webhook Service's
    /// recorded selector, and a Ready sidecar pod behind it before the
    /// controller goes. None once so (or nothing was changed).
    pub(super) fn restore_webhook(&mut self) -> Option<Outcome> {
        let recorded = self.original().webhook_selector.clone()?;
        let svc = self.obs.webhook_service.clone()?;
        let name = svc.name_any();
        let restored = with_selector(&svc, recorded, false);
        if restored.spec != svc.spec || restored.metadata.labels != svc.metadata.labels {
            return Some(Outcome::Act(
                vec![Action::RepointWebhook(Box::new(restored))],
                format!(
                    "pointing the admission webhook Service {name} back at the sidecar pods of Deployment {}",
                    self.spec.proxy_deployment
                ),
            ));
        }
        let sidecars: Vec<String> = self
            .obs
            .pods
            .iter()
            .filter(|p| has_container(p, self.spec.controller_container()))
            .map(|p| p.name_any())
            .collect();
        if !ready_endpoint(&self.obs.webhook_slices, |pod| {
            sidecars.iter().any(|s| s == pod)
        }) {
            return Some(Outcome::Wait(format!(
                "waiting for the admission webhook Service {name} to list a Ready sidecar pod before the controller goes"
            )));
        }
        let back = WebhookStatus {
            service: name.clone(),
            served_by: self.spec.proxy_deployment.clone(),
        };
        if self.status.webhook.as_ref() != Some(&back) {
            self.status.webhook = Some(back);
            self.events.push(Event {
                warning: false,
                reason: "WebhookRestored".into(),
                note: format!(
                    "the admission webhook Service {name} selects the sidecar pods of Deployment {} again",
                    self.spec.proxy_deployment
                ),
            });
        }
        None
    }
}
