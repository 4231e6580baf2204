//! Table-driven tests of the state machine: each case is a SidecarMigration in
//! some phase, what the cluster shows, and what `plan` must decide.

use super::facts::{container_names, env_value};
use super::render::record_original;
use super::*;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

mod client_tls;
mod drift;
mod handoff;
mod lifecycle;
mod release;
mod rollback;
mod status;
mod steps;
mod validate;
mod webhook;

const NS: &str = "kong";

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("valid time")
}

fn later(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid time")
}

fn scm(spec: serde_json::Value) -> SidecarMigration {
    let mut spec = spec;
    spec.as_object_mut()
        .expect("spec object")
        .entry("proxyDeployment")
        .or_insert(json!("kong-kong"));
    // The Admin API NetworkPolicy has tests of its own (steps.rs); the
    // others see the actions they always saw.
    spec.as_object_mut()
        .expect("spec object")
        .entry("adminApi")
        .or_insert(json!({ "networkPolicy": false }));
    let mut m = SidecarMigration::new("migrate", serde_json::from_value(spec).expect("valid spec"));
    m.metadata.namespace = Some(NS.into());
    m.metadata.generation = Some(1);
    m.metadata.uid = Some("uid-1".into());
    m
}

/// The kong chart's sidecar Deployment, trimmed to what the migration reads.
fn sidecar_deployment(image: &str) -> Deployment {
    let mut d: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "kong-kong", "namespace": NS, "generation": 1, "resourceVersion": "10",
            "labels": { "app.kubernetes.io/managed-by": "Helm" },
            "annotations": { "meta.helm.sh/release-name": "kong" } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong", "app.kubernetes.io/component": "app" } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" } },
            "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong", "app.kubernetes.io/component": "app" } },
                "spec": {
                    "serviceAccountName": "kong-kong",
                    "containers": [
                        { "name": "ingress-controller", "image": image,
                          "env": [
                            { "name": "CONTROLLER_KONG_ADMIN_URL", "value": "https://localhost:8444" },
                            { "name": "CONTROLLER_PUBLISH_SERVICE", "value": "kong/kong-kong-proxy" },
                            { "name": "CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY", "value": "true" },
                            { "name": "CONTROLLER_KONG_ADMIN_TOKEN", "valueFrom": { "secretKeyRef": { "name": "kong-admin-token", "key": "token" } } }
                          ],
                          "volumeMounts": [ { "name": "webhook-cert", "mountPath": "/admission-webhook" } ] },
                        { "name": "proxy", "image": "kong:3.9",
                          "env": [
                            { "name": "KONG_ADMIN_LISTEN", "value": "127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl" },
                            { "name": "KONG_DATABASE", "value": "off" },
                            { "name": "KONG_KIC", "value": "on" }
                          ],
                          "ports": [ { "name": "proxy", "containerPort": 8000, "protocol": "TCP" } ],
                          "volumeMounts": [ { "name": "prefix", "mountPath": "/kong_prefix/" } ] }
                    ],
                    "volumes": [ { "name": "webhook-cert", "secret": { "secretName": "kong-kong-validation-webhook-keypair" } },
                                 { "name": "prefix", "emptyDir": {} } ]
                }
            }
        }
    }))
    .expect("valid deployment");
    d.status = Some(settled(1));
    d
}

fn settled(n: i32) -> DeploymentStatus {
    DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(n),
        updated_replicas: Some(n),
        ready_replicas: Some(n),
        available_replicas: Some(n),
        ..Default::default()
    }
}

fn pod(name: &str, sidecar: bool, ready: bool, ip: &str) -> Pod {
    let mut containers = vec![json!({ "name": "proxy", "image": "kong:3.9" })];
    if sidecar {
        containers.insert(
            0,
            json!({ "name": "ingress-controller", "image": "kong/kubernetes-ingress-controller:3.4" }),
        );
    }
    let mut p: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NS, "labels": { "pod-template-hash": "abc" },
            "ownerReferences": [ { "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "kong-kong-abc", "uid": "rs", "controller": true } ] },
        "spec": { "containers": containers }
    }))
    .expect("valid pod");
    p.status = Some(PodStatus {
        pod_ip: Some(ip.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

/// The pod with its proxy container running (Kong listens).
fn started(mut p: Pod) -> Pod {
    let status = p.status.get_or_insert_with(Default::default);
    status.container_statuses = Some(vec![
        serde_json::from_value(json!({
            "name": "proxy", "image": "kong:3.9", "imageID": "", "ready": false,
            "restartCount": 0, "started": true,
            "state": { "running": { "startedAt": "2027-01-15T08:00:00Z" } }
        }))
        .expect("container status"),
    ]);
    p
}

fn slice_listing(pods: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kong-kong-admin-abc".into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: pods
            .iter()
            .map(|p| Endpoint {
                addresses: vec!["10.0.0.1".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(false),
                    ..Default::default()
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some((*p).into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("kong-admin-tls".into()),
            port: Some(8444),
            ..Default::default()
        }]),
    }
}

/// A migration that has run every step before `phase`, with its record.
fn in_phase(spec: serde_json::Value, phase: Phase, proxy: &Deployment) -> SidecarMigration {
    let mut m = scm(spec);
    let mut status = SidecarMigrationStatus {
        phase,
        ..Default::default()
    };
    status.steps = step_list(&m.spec, &[]);
    for step in &mut status.steps {
        if step.name == phase {
            step.state = StepState::Running;
            step.started_at = Some(Time(now()));
            step.attempts = 1;
            break;
        }
        step.state = StepState::Succeeded;
    }
    if phase != Phase::Validating {
        status.original = record_original(&m.spec, proxy, None, &m);
    }
    m.status = Some(status);
    m
}

/// What a migration put in `in_phase` recorded before its first change.
fn recorded(m: &SidecarMigration) -> Original {
    m.status
        .as_ref()
        .and_then(|s| s.original.clone())
        .expect("recorded")
}

fn migrated(proxy: &Deployment, m: &SidecarMigration, hold: bool) -> Deployment {
    let original = m
        .status
        .as_ref()
        .and_then(|s| s.original.clone())
        .unwrap_or_default();
    let mut d = render::with_original_env(
        with_rollout(
            migrate_template(proxy, &m.spec),
            Rollout::Held {
                approval_hold: hold,
            },
            &original,
        ),
        proxy,
        &m.spec,
    );
    d.status = proxy.status.clone();
    d
}

fn cond<'a>(p: &'a Plan, type_: &str) -> &'a Condition {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

fn has_event(p: &Plan, reason: &str) -> bool {
    p.events.iter().any(|e| e.reason == reason)
}

fn without_container(mut d: Deployment, name: &str) -> Deployment {
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.containers.retain(|c| c.name != name);
    }
    d
}
