//! Drift: once the sidecar is gone, someone else (Helm, Argo CD, Flux, a
//! person) changing the migrated objects is reported, never overwritten.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::ResourceExt;

use crate::api::*;
use crate::kong;

use super::facts::env_value;
use super::render::service_matches;
use super::{Event, Health, IDLE_RECHECK, Planner, admin_service, has_container};

impl Planner<'_> {
    /// After the sidecar is gone, someone else putting it back (Helm, Argo CD,
    /// Flux, a person) is reported, never silently overwritten.
    pub(super) fn check_drift(&mut self, name: Phase) -> Option<Health> {
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
    // With clientTLS, an Admin API on the pod network that no longer
    // demands a client certificate is more open than asked for.
    if spec.client_tls().is_some()
        && env_value(proxy_c, kong::ENV_ADMIN_SSL_VERIFY_CLIENT).as_deref() != Some("on")
    {
        return Some(format!(
            "{} is no longer on: the Admin API no longer demands a client certificate",
            kong::ENV_ADMIN_SSL_VERIFY_CLIENT
        ));
    }
    None
}
