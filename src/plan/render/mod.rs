//! The objects the operator writes. Everything a security review audits is
//! here: the proxy Deployment's new template, the admin Service, the
//! controller Deployment and its RBAC.

mod admin_service;
mod client_tls;
mod controller;
mod network_policy;
mod proxy;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::*;

pub use admin_service::admin_service;
pub(super) use admin_service::{adopted_service_restored, service_matches};
pub use client_tls::{
    already_configured as client_tls_already_configured, client_ca_config_map,
    client_ca_config_map_name, client_secret, generated_secret, generated_secret_prefix,
    handoff_values as client_tls_handoff_values, present_client_certificate, user_secrets,
};
pub use controller::{controller_objects, discovery_election_id};
pub use network_policy::{admin_network_policy, others_select};
pub use proxy::{Rollout, migrate_template, restore_template, with_rollout};
pub(super) use proxy::{
    original_sidecar, original_unreadable, record_original, with_original_env, without_original_env,
};

pub(super) fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
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

pub(super) fn migration_meta(scm: &SidecarMigration, name: String) -> ObjectMeta {
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

/// The metadata of an object a target Helm release will own: where the
/// proxy Deployment is Helm's, the chart's labels (the Deployment's, less its
/// component) and Helm's ownership annotations for `release`, so `helm
/// upgrade` adopts the object rather than refusing it; otherwise the
/// migration's own. The migration's annotation stays the proof it is ours.
pub(super) fn release_meta(
    scm: &SidecarMigration,
    proxy: &k8s_openapi::api::apps::v1::Deployment,
    name: String,
    release: Option<&str>,
) -> ObjectMeta {
    let Some((source_release, namespace)) = crate::plan::helm_release(&proxy.metadata) else {
        return migration_meta(scm, name);
    };
    let release = release.unwrap_or(&source_release).to_string();
    let mut labels = proxy.metadata.labels.clone().unwrap_or_default();
    labels.remove("app.kubernetes.io/component");
    labels.insert(MANAGED_BY_LABEL.into(), HELM_MANAGED_BY.into());
    labels.insert(HANDOFF_LABEL.into(), "true".into());
    if labels.contains_key("app.kubernetes.io/instance") {
        labels.insert("app.kubernetes.io/instance".into(), release.clone());
    }
    ObjectMeta {
        name: Some(name),
        namespace: scm.namespace(),
        labels: Some(labels),
        annotations: Some(BTreeMap::from([
            (MIGRATION_ANNOTATION.to_string(), scm.name_any()),
            (HELM_RELEASE_NAME.to_string(), release),
            (HELM_RELEASE_NAMESPACE.to_string(), namespace),
        ])),
        ..Default::default()
    }
}
