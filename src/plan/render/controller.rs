//! The Gateway Discovery controller Deployment and its endpointslices RBAC.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use crate::api::*;
use crate::kong;
use crate::plan::ControllerObjects;

use super::migration_meta;

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
    let mut c: Container = super::original_sidecar(original, proxy, spec).ok()?;
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
