//! The proxy Deployment as the migration renders it, and as rollback
//! restores it from the record kept before the first change.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, PodSpec, Service, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kube::ResourceExt;

use crate::api::*;
use crate::kong;
use crate::plan::{APPROVAL_HOLD_MIN_READY_SECONDS, is_ours, template_container};

use super::to_value;

pub(crate) fn record_original(
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
    let pod = dspec.template.spec.as_ref()?;
    let init_container_env = pod
        .init_containers
        .iter()
        .flatten()
        .filter(|c| carries_sidecar_env(c))
        .map(|c| {
            (
                c.name.clone(),
                JsonText::of(&without_values(c.clone()).env.unwrap_or_default()),
            )
        })
        .collect();
    Some(Original {
        volumes: pod.volumes.as_ref().map(JsonText::of),
        init_container_env,
        sidecar: JsonText::of(&without_values(containers[index].clone())),
        sidecar_index: index as u32,
        proxy_env: JsonText::of(&without_values(proxy_c.clone()).env.unwrap_or_default()),
        env_values_on_deployment: true,
        proxy_ports: JsonText::of(&proxy_c.ports.clone().unwrap_or_default()),
        proxy_readiness_probe: kong::premature_readiness_path(proxy_c)
            .and(proxy_c.readiness_probe.as_ref())
            .map(JsonText::of),
        strategy: dspec.strategy.as_ref().map(JsonText::of),
        min_ready_seconds: dspec.min_ready_seconds,
        progress_deadline_seconds: dspec.progress_deadline_seconds,
        adopted_admin_service,
        // Recorded later, just before the webhook Service moves.
        webhook_selector: None,
    })
}

/// The literal env values the record leaves out, by container.
#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
struct EnvValues {
    sidecar: BTreeMap<String, String>,
    proxy: BTreeMap<String, String>,
    /// The init containers the migration rewrites, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    init: BTreeMap<String, BTreeMap<String, String>>,
}

/// Whose env a recorded list is.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Sidecar(&'a str),
    Proxy(&'a str),
    Init(&'a str),
}

fn without_values(mut c: Container) -> Container {
    for e in c.env.iter_mut().flatten() {
        e.value = None;
    }
    c
}

fn literal_values(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter(|e| e.value_from.is_none())
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn init_containers(d: &Deployment) -> impl Iterator<Item = &Container> {
    d.spec
        .iter()
        .filter_map(|s| s.template.spec.as_ref())
        .flat_map(|p| p.init_containers.iter().flatten())
}

/// `desired` with the original-env annotation: kept as the live Deployment
/// has it, or taken from the live Deployment while it still runs the
/// sidecar (the annotation goes out in the very write that removes it).
pub(crate) fn with_original_env(
    mut desired: Deployment,
    live: &Deployment,
    spec: &SidecarMigrationSpec,
) -> Deployment {
    let value = live
        .annotations()
        .get(ORIGINAL_ENV_ANNOTATION)
        .cloned()
        .or_else(|| {
            let sidecar = template_container(live, spec.controller_container())?;
            let proxy = template_container(live, spec.proxy_container())?;
            serde_json::to_string(&EnvValues {
                sidecar: literal_values(sidecar),
                proxy: literal_values(proxy),
                init: init_containers(live)
                    .filter(|c| carries_sidecar_env(c))
                    .map(|c| (c.name.clone(), literal_values(c)))
                    .collect(),
            })
            .ok()
        });
    if let Some(value) = value {
        desired
            .annotations_mut()
            .insert(ORIGINAL_ENV_ANNOTATION.into(), value);
    }
    desired
}

pub(crate) fn without_original_env(mut d: Deployment) -> Deployment {
    if let Some(a) = d.metadata.annotations.as_mut() {
        a.remove(ORIGINAL_ENV_ANNOTATION);
        if a.is_empty() {
            d.metadata.annotations = None;
        }
    }
    d
}

/// The recorded env with its literal values put back: from the annotation,
/// or from the live container of that name while it is unchanged (the
/// Deployment before the first write). Err names a value found nowhere.
fn filled(
    recorded: Vec<EnvVar>,
    original: &Original,
    live: &Deployment,
    owner: Owner,
) -> Result<Vec<EnvVar>, String> {
    if !original.env_values_on_deployment {
        return Ok(recorded);
    }
    let annotated: Option<EnvValues> = live
        .annotations()
        .get(ORIGINAL_ENV_ANNOTATION)
        .and_then(|v| serde_json::from_str(v).ok());
    let values = match (annotated, owner) {
        (Some(v), Owner::Sidecar(_)) => v.sidecar,
        (Some(v), Owner::Proxy(_)) => v.proxy,
        (Some(mut v), Owner::Init(name)) => v.init.remove(name).unwrap_or_default(),
        (None, Owner::Sidecar(name) | Owner::Proxy(name)) => template_container(live, name)
            .map(literal_values)
            .unwrap_or_default(),
        (None, Owner::Init(name)) => init_containers(live)
            .find(|c| c.name == name)
            .map(literal_values)
            .unwrap_or_default(),
    };
    recorded
        .into_iter()
        .map(|mut e| {
            if e.value_from.is_none() {
                let v = values.get(&e.name).ok_or_else(|| e.name.clone())?;
                e.value = (!v.is_empty()).then(|| v.clone());
            }
            Ok(e)
        })
        .collect()
}

/// The sidecar container as it was, values included.
pub(crate) fn original_sidecar(
    original: &Original,
    live: &Deployment,
    spec: &SidecarMigrationSpec,
) -> Result<Container, String> {
    let mut c: Container = original
        .sidecar
        .decode()
        .map_err(|_| "status.original.sidecar is not a container".to_string())?;
    let env = filled(
        c.env.take().unwrap_or_default(),
        original,
        live,
        Owner::Sidecar(spec.controller_container()),
    )
    .map_err(|name| missing(name, spec.controller_container()))?;
    c.env = (!env.is_empty()).then_some(env);
    Ok(c)
}

fn original_proxy_env(
    original: &Original,
    live: &Deployment,
    spec: &SidecarMigrationSpec,
) -> Result<Vec<EnvVar>, String> {
    let recorded: Vec<EnvVar> = original.proxy_env.decode().unwrap_or_default();
    filled(
        recorded,
        original,
        live,
        Owner::Proxy(spec.proxy_container()),
    )
    .map_err(|name| missing(name, spec.proxy_container()))
}

fn missing(name: String, container: &str) -> String {
    format!(
        "the original value of env {name} of container {container} is gone: the annotation {ORIGINAL_ENV_ANNOTATION} was removed from the proxy Deployment; put it back from your records (or the Deployment's previous ReplicaSet) to go on"
    )
}

/// Why the original install cannot be rebuilt from the record and the live
/// Deployment, if it cannot.
pub(crate) fn original_unreadable(
    original: &Original,
    live: &Deployment,
    spec: &SidecarMigrationSpec,
) -> Option<String> {
    original_sidecar(original, live, spec)
        .and(original_proxy_env(original, live, spec))
        .err()
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
    drop_sidecar_only_volumes(pod);
    // The chart renders the proxy's KONG_* env into its init container too;
    // leaving the sidecar values there is a template the gateway-only
    // rendering does not have, so Helm's next sync would roll every pod.
    for c in pod.init_containers.iter_mut().flatten() {
        if carries_sidecar_env(c) {
            rewrite_gateway_env(c.env.get_or_insert_with(Vec::new), false);
        }
    }
    if let Some(c) = pod
        .containers
        .iter_mut()
        .find(|c| c.name == spec.proxy_container())
    {
        rewrite_gateway_env(c.env.get_or_insert_with(Vec::new), true);
        // Without its sidecar the gateway must not count as Ready before the
        // controller's first push (validation refused Kong < 3.3).
        if kong::premature_readiness_path(c).is_some()
            && let Some(get) = c.readiness_probe.as_mut().and_then(|p| p.http_get.as_mut())
        {
            get.path = Some(kong::STATUS_READY_PATH.into());
        }
        let ports = c.ports.get_or_insert_with(Vec::new);
        if let Some(p) = ports
            .iter_mut()
            .find(|p| p.container_port == kong::ADMIN_PORT)
        {
            p.name = Some(kong::ADMIN_CONTAINER_PORT_NAME.into());
        } else {
            // Where the chart renders it: first, after the plain-HTTP admin
            // port if there is one. A list in another order is another pod
            // template.
            let at = ports
                .iter()
                .position(|p| p.name.as_deref() == Some(kong::ADMIN_HTTP_CONTAINER_PORT_NAME))
                .map_or(0, |i| i + 1);
            ports.insert(
                at,
                ContainerPort {
                    name: Some(kong::ADMIN_CONTAINER_PORT_NAME.into()),
                    container_port: kong::ADMIN_PORT,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            );
        }
    }
    super::client_tls::demand_client_certificate(pod, spec);
    d
}

/// The Admin API on all interfaces and no KONG_KIC, as the chart's gateway
/// rendering has them. `add_listen` adds KONG_ADMIN_LISTEN where it is missing
/// (the proxy container must listen; an init container need not).
fn rewrite_gateway_env(env: &mut Vec<EnvVar>, add_listen: bool) {
    env.retain(|e| e.name != kong::ENV_KONG_KIC);
    match env.iter_mut().find(|e| e.name == kong::ENV_ADMIN_LISTEN) {
        Some(e) => {
            e.value = Some(kong::admin_listen_all_interfaces(
                e.value.as_deref().unwrap_or_default(),
            ))
        }
        None if add_listen => env.push(EnvVar {
            name: kong::ENV_ADMIN_LISTEN.into(),
            value: Some(kong::admin_listen_all_interfaces(
                kong::SIDECAR_ADMIN_LISTEN,
            )),
            ..Default::default()
        }),
        None => {}
    }
}

/// An init container rendered with the sidecar's gateway env (KONG_KIC).
fn carries_sidecar_env(c: &Container) -> bool {
    c.env.iter().flatten().any(|e| e.name == kong::ENV_KONG_KIC)
}

/// Drops the chart's controller-only volumes once no container mounts them.
/// Only those: a volume of the user's own stays, even if only the sidecar
/// mounted it, since nothing says the gateway release drops it.
fn drop_sidecar_only_volumes(pod: &mut PodSpec) {
    let mounted: Vec<String> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.clone())
        .collect();
    if let Some(volumes) = pod.volumes.as_mut() {
        volumes.retain(|v| {
            !kong::CHART_SIDECAR_ONLY_VOLUMES.contains(&v.name.as_str())
                || mounted.contains(&v.name)
        });
    }
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
        let env = original_proxy_env(original, proxy, spec).unwrap_or_default();
        let ports: Vec<ContainerPort> = original.proxy_ports.decode().unwrap_or_default();
        c.env = (!env.is_empty()).then_some(env);
        c.ports = (!ports.is_empty()).then_some(ports);
        if let Some(probe) = original
            .proxy_readiness_probe
            .as_ref()
            .and_then(|v| v.decode().ok())
        {
            c.readiness_probe = Some(probe);
        }
    }
    for c in pod.init_containers.iter_mut().flatten() {
        if let Some(env) = original.init_container_env.get(&c.name) {
            let recorded: Vec<EnvVar> = env.decode().unwrap_or_default();
            let env = filled(recorded, original, proxy, Owner::Init(&c.name)).unwrap_or_default();
            c.env = (!env.is_empty()).then_some(env);
        }
    }
    if !pod
        .containers
        .iter()
        .any(|c| c.name == spec.controller_container())
        && let Ok(sidecar) = original_sidecar(original, proxy, spec)
    {
        let at = (original.sidecar_index as usize).min(pod.containers.len());
        pod.containers.insert(at, sidecar);
    }
    restore_sidecar_volumes(pod, original);
    super::client_tls::stop_demanding(pod, spec, original);
    d
}

/// Puts back the volumes the migration dropped, each in its recorded place;
/// volumes added since stay, after them. A record without volumes restores
/// none.
fn restore_sidecar_volumes(pod: &mut PodSpec, original: &Original) {
    let Some(recorded) = original
        .volumes
        .as_ref()
        .and_then(|v| v.decode::<Vec<Volume>>().ok())
    else {
        return;
    };
    let mut current = pod.volumes.take().unwrap_or_default();
    let mut volumes: Vec<Volume> = recorded
        .into_iter()
        .map(
            |was| match current.iter().position(|v| v.name == was.name) {
                Some(i) => current.remove(i),
                None => was,
            },
        )
        .collect();
    volumes.append(&mut current);
    pod.volumes = (!volumes.is_empty()).then_some(volumes);
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
    let recorded: Option<DeploymentStrategy> =
        original.strategy.as_ref().and_then(|v| v.decode().ok());
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
