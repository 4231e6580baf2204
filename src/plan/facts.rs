//! Facts read from observed objects: readiness, rollouts, ownership, which
//! pods an admin Service lists. Shared by the planner, the executor, the
//! bench and the node simulator.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::*;

use super::Observed;

/// Whether this migration made the object. An object the operator renders
/// for a Helm release carries Helm's `managed-by` so that Helm adopts it;
/// the migration's annotation is the proof either way.
pub fn is_ours(meta: &ObjectMeta, scm: &SidecarMigration) -> bool {
    matches!(
        meta.labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str),
        Some(MANAGED_BY | HELM_MANAGED_BY)
    ) && meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIGRATION_ANNOTATION))
        == Some(&scm.name_any())
}

pub(super) fn container_names(containers: &[Container]) -> String {
    containers
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The container's env entry `name`, literal or not.
pub(super) fn env_var<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

pub(super) fn env_value(c: &Container, name: &str) -> Option<String> {
    env_var(c, name).and_then(|e| e.value.clone())
}

/// The container `name` of a Deployment's pod template.
pub fn template_container<'a>(d: &'a Deployment, name: &str) -> Option<&'a Container> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)
}

pub fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == name))
}

pub(super) fn rs_template_has(rs: &ReplicaSet, container: &str) -> bool {
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

/// Whether the container's process runs: kubelet says `started` once it runs
/// (and its startupProbe, if any, passed). Kong listens from then on.
pub fn container_started(pod: &Pod, name: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .is_some_and(|c| {
            c.started == Some(true) && c.state.as_ref().is_some_and(|s| s.running.is_some())
        })
}

pub(super) fn controller_owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.name.as_str())
}

/// Whether the proxy Deployment made this pod: its ReplicaSet is named
/// `<deployment>-<pod-template-hash>` (the Deployment controller's rule), or,
/// once that ReplicaSet was deleted with its pods orphaned (Kong's order), its
/// generateName still says so. Another Deployment whose pods share the
/// labels makes pods of another name and is neither waited for nor touched.
pub fn owned_by(pod: &Pod, deployment: &str) -> bool {
    let Some(hash) = pod.labels().get("pod-template-hash") else {
        return false;
    };
    let rs = format!("{deployment}-{hash}");
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(o) => o.kind == "ReplicaSet" && o.name == rs,
        None => pod.metadata.generate_name.as_deref() == Some(&format!("{rs}-")),
    }
}

pub(super) fn legacy_pod_names(spec: &SidecarMigrationSpec, obs: &Observed) -> Vec<String> {
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

pub(super) fn rollout_summary(d: &Deployment) -> String {
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

/// The Helm release (name, namespace) that installed the object, when Helm's
/// own ownership metadata says so.
pub fn helm_release(meta: &ObjectMeta) -> Option<(String, String)> {
    let managed_by = meta.labels.as_ref()?.get(MANAGED_BY_LABEL)?;
    let annotations = meta.annotations.as_ref()?;
    let name = annotations.get(HELM_RELEASE_NAME)?;
    let namespace = annotations
        .get(HELM_RELEASE_NAMESPACE)
        .cloned()
        .or_else(|| meta.namespace.clone())?;
    (managed_by == HELM_MANAGED_BY).then(|| (name.clone(), namespace))
}

/// Helm's check before it adopts an existing object into release `release`
/// of `namespace` (helm's `checkOwnership`): Err with Helm's own complaint.
pub fn helm_can_adopt(meta: &ObjectMeta, release: &str, namespace: &str) -> Result<(), String> {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
    let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
    let mut errors = Vec::new();
    for (what, key, got, want) in [
        (
            "label",
            MANAGED_BY_LABEL,
            label(MANAGED_BY_LABEL),
            HELM_MANAGED_BY,
        ),
        (
            "annotation",
            HELM_RELEASE_NAME,
            annotation(HELM_RELEASE_NAME),
            release,
        ),
        (
            "annotation",
            HELM_RELEASE_NAMESPACE,
            annotation(HELM_RELEASE_NAMESPACE),
            namespace,
        ),
    ] {
        match got {
            None => errors.push(format!("missing key {key:?}: must be set to {want:?}")),
            Some(v) if v != want => errors.push(format!(
                "{what} validation error: key {key:?} must equal {want:?}: current value is {v:?}"
            )),
            Some(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid ownership metadata; {}", errors.join("; ")))
    }
}

/// Services that select the proxy's pods only for a port the sidecar alone
/// declares (the chart's admission webhook on `webhook`, the controller's
/// metrics on `cmetrics`), as `(service, port name)`: once the last sidecar
/// pod is gone they have no endpoint.
pub fn sidecar_only_services(
    spec: &SidecarMigrationSpec,
    proxy: &Deployment,
    services: &[Service],
) -> Vec<(String, String)> {
    let Some(tmpl) = proxy.spec.as_ref().map(|s| &s.template) else {
        return Vec::new();
    };
    let pod_labels = tmpl
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let containers = tmpl
        .spec
        .as_ref()
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    let port_names = |sidecar: bool| -> Vec<&str> {
        containers
            .iter()
            .filter(|c| (c.name == spec.controller_container()) == sidecar)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.as_deref())
            .collect()
    };
    let (sidecar_ports, other_ports) = (port_names(true), port_names(false));
    let mut found = Vec::new();
    for svc in services {
        let Some(s) = &svc.spec else { continue };
        let selector = s.selector.clone().unwrap_or_default();
        if selector.is_empty() || !selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)) {
            continue;
        }
        for port in s.ports.iter().flatten() {
            if let Some(IntOrString::String(name)) = &port.target_port
                && sidecar_ports.contains(&name.as_str())
                && !other_ports.contains(&name.as_str())
            {
                found.push((svc.name_any(), name.clone()));
            }
        }
    }
    found
}
