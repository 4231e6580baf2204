//! The Gateway Discovery controller Deployment and its endpointslices RBAC.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, Volume};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use crate::api::*;
use crate::kong;
use crate::plan::ControllerObjects;

use super::{migration_meta, release_meta};

/// The discovery controller's own Lease name, derived from the sidecars'.
pub fn discovery_election_id(sidecar_election: &str) -> String {
    if sidecar_election.ends_with(kong::DISCOVERY_ELECTION_SUFFIX) {
        return sidecar_election.to_string();
    }
    format!("{sidecar_election}{}", kong::DISCOVERY_ELECTION_SUFFIX)
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
    let mut c: Container = super::original_sidecar(original, proxy, spec).ok()?;
    let pod = proxy.spec.as_ref()?.template.spec.clone()?;
    let env = c.env.get_or_insert_with(Vec::new);
    let sidecar_election = env
        .iter()
        .find(|e| e.name == kong::ENV_CONTROLLER_ELECTION_ID)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| kong::DEFAULT_ELECTION_ID.into());
    env.retain(|e| {
        ![
            kong::ENV_CONTROLLER_ADMIN_URL,
            kong::ENV_CONTROLLER_ADMIN_SVC,
            kong::ENV_CONTROLLER_ADMIN_SVC_PORT_NAMES,
            kong::ENV_CONTROLLER_ELECTION_ID,
        ]
        .contains(&e.name.as_str())
    });
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    env.push(value(
        kong::ENV_CONTROLLER_ADMIN_SVC,
        format!("{ns}/{}", spec.admin_service_name()),
    ));
    // Only the TLS name the admin Service carries: KIC always dials HTTPS.
    env.push(value(
        kong::ENV_CONTROLLER_ADMIN_SVC_PORT_NAMES,
        kong::ADMIN_SERVICE_PORT_NAME.into(),
    ));
    env.push(value(
        kong::ENV_CONTROLLER_ELECTION_ID,
        discovery_election_id(&sidecar_election),
    ));
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
    // The recorded volumes: by now the gateway's template may no longer
    // carry the sidecar-only ones (webhook certificate).
    let recorded: Option<Vec<Volume>> = original.volumes.as_ref().and_then(|v| v.decode().ok());
    let volumes: Vec<_> = recorded
        .unwrap_or_else(|| pod.volumes.clone().unwrap_or_default())
        .into_iter()
        .filter(|v| mounted.contains(&v.name.as_str()))
        .collect();
    let chart = chart_shape(scm, proxy, &name);
    let (metadata, selector, pod_labels) = match chart {
        Some(shape) => shape,
        None => (
            migration_meta(scm, name.clone()),
            BTreeMap::from([(CONTROLLER_SELECTOR_LABEL.to_string(), name.clone())]),
            BTreeMap::from([
                (CONTROLLER_SELECTOR_LABEL.to_string(), name.clone()),
                ("app.kubernetes.io/name".to_string(), name.clone()),
                (
                    "app.kubernetes.io/component".to_string(),
                    "controller".to_string(),
                ),
            ]),
        ),
    };
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
        metadata,
        spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: Some(
                spec.controller
                    .as_ref()
                    .and_then(|c| c.replicas)
                    .unwrap_or(1),
            ),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: k8s_openapi::api::core::v1::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: pod_annotations(proxy),
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

type Labels = BTreeMap<String, String>;

/// The gateway pod's annotations, which the chart renders on the controller
/// release's pods too (`podAnnotations`, and its mesh annotations: Kuma's
/// gateway mode and service-account token volume, Istio's inbound ports):
/// a meshed controller needs them from its first pod, and Helm's adoption
/// then changes nothing but what follows the new ServiceAccount. The token
/// volume's name follows the ServiceAccount the pod runs as, which is still
/// the gateway's. Not the operator's own annotations.
fn pod_annotations(proxy: &Deployment) -> Option<BTreeMap<String, String>> {
    let annotations = proxy
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .clone()?;
    let carried: BTreeMap<String, String> = annotations
        .into_iter()
        .filter(|(k, _)| !k.starts_with(&format!("{GROUP}/")))
        .collect();
    (!carried.is_empty()).then_some(carried)
}

/// The controller as the kong chart renders `controller.release` — metadata
/// with Helm's ownership for that release, the chart's selector (immutable,
/// so it must be right from the start) and pod labels — when the proxy
/// Deployment is a Helm release's and a controller release is named.
fn chart_shape(
    scm: &SidecarMigration,
    proxy: &Deployment,
    name: &str,
) -> Option<(ObjectMeta, Labels, Labels)> {
    let release = scm.spec.controller_release()?;
    crate::plan::helm_release(&proxy.metadata)?;
    let chart_name = proxy
        .metadata
        .labels
        .as_ref()?
        .get("app.kubernetes.io/name")?
        .clone();
    let mut metadata = release_meta(scm, proxy, name.to_string(), Some(release));
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("app.kubernetes.io/component".into(), "app".into());
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), chart_name),
        ("app.kubernetes.io/component".to_string(), "app".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            release.to_string(),
        ),
    ]);
    // The gateway's pod labels with this release's instance and app: the
    // chart renders both from the same helpers.
    let mut pod_labels = proxy
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .clone()
        .unwrap_or_default();
    pod_labels.remove(DISCOVERY_LABEL);
    pod_labels.extend(selector.clone());
    if pod_labels.contains_key("app") {
        pod_labels.insert("app".into(), name.to_string());
    }
    Some((metadata, selector, pod_labels))
}
