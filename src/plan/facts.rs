//! Facts read from observed objects: readiness, rollouts, ownership, which
//! pods an admin Service lists. Shared by the planner, the executor, the
//! bench and the node simulator.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::*;

use super::Observed;

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

pub(super) fn container_names(containers: &[Container]) -> String {
    containers
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn env_value(c: &Container, name: &str) -> Option<String> {
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
