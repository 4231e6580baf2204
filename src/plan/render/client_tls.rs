//! Admin API mTLS (`spec.adminApi.clientTLS`), rendered as the kong chart
//! renders it (`_helpers.tpl`@kong-2.52.0), so that the hand-off's releases
//! find the same env, volumes and mount paths: the gateway demands a client
//! certificate (`admin.tls.client.*`), the controller presents one
//! (`ingressController.adminApi.tls.client.*`).
//!
//! Where the gateway's CA comes from:
//! - `Generate`: the ConfigMap `<proxyDeployment>-admin-client-ca`, the
//!   chart's own name and shape (`tls.crt`), which the operator writes with
//!   the certificate it generated. The certificate is public; its key lives
//!   only in the Secret the ConfigMap's annotation names.
//! - `Secret`: the user's Secret (`caSecretName`, default `secretName`),
//!   mounted directly, `tls.crt` only. The chart copies it into that
//!   ConfigMap by reading the Secret (Helm's `lookup`); the operator reads no
//!   Secret, so it mounts it instead.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, KeyToPath, PodSpec, SecretVolumeSource,
    Volume, VolumeMount,
};

use crate::api::*;
use crate::kong;
use crate::plan::is_ours;

use super::release_meta;

/// The chart's `<fullname>-admin-client-ca`; the gateway's fullname is the
/// proxy Deployment's name.
pub fn client_ca_config_map_name(spec: &SidecarMigrationSpec) -> String {
    format!(
        "{}{}",
        spec.proxy_deployment,
        kong::ADMIN_CLIENT_CA_CONFIG_MAP_SUFFIX
    )
}

/// The prefix of the generated Secret's name (the chart's
/// `<fullname>-admin-api-keypair` for the controller release), completed by
/// the executor with a random suffix for each attempt.
pub fn generated_secret_prefix(spec: &SidecarMigrationSpec) -> String {
    format!(
        "{}{}-",
        spec.controller_name(),
        kong::ADMIN_API_KEYPAIR_SUFFIX
    )
}

/// The generated CA ConfigMap as the plan asks for it: metadata only (the
/// gateway release's, where the proxy is Helm's, so `helm upgrade` adopts
/// it). The executor creates it, then fills in `tls.crt` and
/// [`CLIENT_SECRET_ANNOTATION`] in one write once the Secret exists.
pub fn client_ca_config_map(scm: &SidecarMigration, proxy: &Deployment) -> ConfigMap {
    ConfigMap {
        metadata: release_meta(scm, proxy, client_ca_config_map_name(&scm.spec), None),
        ..Default::default()
    }
}

/// The Secret an ours, completed CA ConfigMap vouches for: its annotation
/// and its certificate were written together, after that Secret's create
/// succeeded (201), so the Secret is the operator's and holds the key of
/// that certificate. None for a ConfigMap someone else made, or one a crash
/// left half-written (the executor then generates again).
pub fn generated_secret(scm: &SidecarMigration, config_map: Option<&ConfigMap>) -> Option<String> {
    let cm = config_map.filter(|cm| is_ours(&cm.metadata, scm))?;
    cm.data.as_ref()?.get("tls.crt")?;
    cm.metadata
        .annotations
        .as_ref()?
        .get(CLIENT_SECRET_ANNOTATION)
        .cloned()
}

/// The Secret the controller presents: the user's, or the generated one
/// once its ConfigMap is complete.
pub fn client_secret(scm: &SidecarMigration, config_map: Option<&ConfigMap>) -> Option<String> {
    let tls = scm.spec.client_tls()?;
    match tls.source {
        ClientTlsSource::Secret => tls.secret_name.clone(),
        ClientTlsSource::Generate => generated_secret(scm, config_map),
    }
}

/// The Secrets a `Secret`-mode migration mounts, which must exist.
pub fn user_secrets(spec: &SidecarMigrationSpec) -> Vec<String> {
    let Some(tls) = spec.client_tls() else {
        return Vec::new();
    };
    let mut names: Vec<String> = [&tls.secret_name, &tls.ca_secret_name]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    names.dedup();
    names
}

fn ca_volume(spec: &SidecarMigrationSpec, tls: &ClientTls) -> Volume {
    let only_the_certificate = Some(vec![KeyToPath {
        key: "tls.crt".into(),
        path: "tls.crt".into(),
        mode: None,
    }]);
    match tls.source {
        ClientTlsSource::Generate => Volume {
            name: kong::ADMIN_CLIENT_CA_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: client_ca_config_map_name(spec),
                ..Default::default()
            }),
            ..Default::default()
        },
        ClientTlsSource::Secret => Volume {
            name: kong::ADMIN_CLIENT_CA_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: tls.ca_secret_name.clone().or(tls.secret_name.clone()),
                // Not the key, where the CA Secret is the client's own.
                items: only_the_certificate,
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// Sets `name` in an env list, at its alphabetical place as the chart
/// renders its sorted env (in a sorted list, exactly where the chart has it).
fn set_env(env: &mut Vec<EnvVar>, name: &str, value: &str) {
    let var = EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    match env.iter_mut().find(|e| e.name == name) {
        Some(e) => *e = var,
        None => {
            let at = env
                .iter()
                .position(|e| e.name.as_str() > name)
                .unwrap_or(env.len());
            env.insert(at, var);
        }
    }
}

fn set_mount(c: &mut Container, name: &str, path: &str) {
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts.iter().any(|m| m.name == name) {
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
}

/// Adds the volume unless the pod has one of that name: the live one
/// carries the API server's defaults (`defaultMode`), and Validating refused
/// an install that had its own.
fn set_volume(pod: &mut PodSpec, volume: Volume) {
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == volume.name) {
        volumes.push(volume);
    }
}

/// The gateway pod demanding a client certificate: the chart's env on the
/// proxy container and on the init containers it renders the gateway env
/// into (those carrying `KONG_ADMIN_LISTEN`), the CA volume and its mount.
/// Applying it twice changes nothing.
pub(crate) fn demand_client_certificate(pod: &mut PodSpec, spec: &SidecarMigrationSpec) {
    let Some(tls) = spec.client_tls() else {
        return;
    };
    let ca_file = format!("{}tls.crt", kong::ADMIN_CLIENT_CA_DIR);
    let gateway_env = |c: &Container| {
        c.name == spec.proxy_container()
            || c.env
                .iter()
                .flatten()
                .any(|e| e.name == kong::ENV_ADMIN_LISTEN)
    };
    for c in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
        .filter(|c| gateway_env(c))
    {
        let env = c.env.get_or_insert_with(Vec::new);
        set_env(env, kong::ENV_ADMIN_SSL_VERIFY_CLIENT, "on");
        set_env(env, kong::ENV_ADMIN_SSL_CLIENT_CERTIFICATE, &ca_file);
        set_mount(c, kong::ADMIN_CLIENT_CA_VOLUME, kong::ADMIN_CLIENT_CA_DIR);
    }
    set_volume(pod, ca_volume(spec, tls));
}

/// Takes out what [`demand_client_certificate`] added (its env goes with
/// the recorded env rollback restores): the CA volume, unless the sidecar
/// install had one of that name, and every mount of it.
pub(crate) fn stop_demanding(pod: &mut PodSpec, spec: &SidecarMigrationSpec, original: &Original) {
    if spec.client_tls().is_none() {
        return;
    }
    let recorded = original
        .volumes
        .as_ref()
        .and_then(|v| v.decode::<Vec<Volume>>().ok())
        .is_some_and(|vs| vs.iter().any(|v| v.name == kong::ADMIN_CLIENT_CA_VOLUME));
    if recorded {
        return;
    }
    if let Some(volumes) = pod.volumes.as_mut() {
        volumes.retain(|v| v.name != kong::ADMIN_CLIENT_CA_VOLUME);
        if volumes.is_empty() {
            pod.volumes = None;
        }
    }
    for c in pod.init_containers.iter_mut().flatten() {
        // Those rollback restores the env of lose it with the rest.
        if !original.init_container_env.contains_key(&c.name)
            && let Some(env) = c.env.as_mut()
        {
            env.retain(|e| {
                e.name != kong::ENV_ADMIN_SSL_VERIFY_CLIENT
                    && e.name != kong::ENV_ADMIN_SSL_CLIENT_CERTIFICATE
            });
        }
    }
    for c in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
    {
        if let Some(mounts) = c.volume_mounts.as_mut() {
            mounts.retain(|m| m.name != kong::ADMIN_CLIENT_CA_VOLUME);
            if mounts.is_empty() {
                c.volume_mounts = None;
            }
        }
    }
}

/// The controller presenting the client certificate of `secret`: the
/// chart's `admin-api-cert` volume, mount and the two env vars.
pub fn present_client_certificate(d: &mut Deployment, secret: &str) {
    let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    for c in &mut pod.containers {
        let env = c.env.get_or_insert_with(Vec::new);
        let file = |f: &str| format!("{}/{f}", kong::ADMIN_API_CERT_DIR);
        set_env(
            env,
            kong::ENV_CONTROLLER_TLS_CLIENT_CERT_FILE,
            &file("tls.crt"),
        );
        set_env(
            env,
            kong::ENV_CONTROLLER_TLS_CLIENT_KEY_FILE,
            &file("tls.key"),
        );
        set_mount(c, kong::ADMIN_API_CERT_VOLUME, kong::ADMIN_API_CERT_DIR);
    }
    set_volume(
        pod,
        Volume {
            name: kong::ADMIN_API_CERT_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
}

/// Why `clientTLS` cannot be applied to this install, if it cannot: it
/// already has Admin API mTLS (or the names the chart's mTLS uses), which
/// migrates as it is with clientTLS unset.
pub fn already_configured(
    spec: &SidecarMigrationSpec,
    pod: &PodSpec,
    sidecar: &Container,
) -> Option<String> {
    spec.client_tls()?;
    let env_set = |c: &Container, name: &str| c.env.iter().flatten().any(|e| e.name == name);
    let found = if pod
        .containers
        .iter()
        .any(|c| env_set(c, kong::ENV_ADMIN_SSL_VERIFY_CLIENT))
    {
        kong::ENV_ADMIN_SSL_VERIFY_CLIENT
    } else if env_set(sidecar, kong::ENV_CONTROLLER_TLS_CLIENT_CERT_FILE) {
        kong::ENV_CONTROLLER_TLS_CLIENT_CERT_FILE
    } else if let Some(v) =
        pod.volumes.iter().flatten().find(|v| {
            v.name == kong::ADMIN_CLIENT_CA_VOLUME || v.name == kong::ADMIN_API_CERT_VOLUME
        })
    {
        return Some(format!(
            "Deployment {} already has a volume named {}, which Admin API mTLS adds: rename it, or leave spec.adminApi.clientTLS unset",
            spec.proxy_deployment, v.name
        ));
    } else {
        return None;
    };
    Some(format!(
        "Deployment {} already sets {found}: its Admin API mTLS carries over to the new controller as it is; leave spec.adminApi.clientTLS unset",
        spec.proxy_deployment
    ))
}

/// The values of the two releases that keep mTLS after the hand-off, as
/// (controller release, gateway release) JSON fragments, and a note.
pub fn handoff_values(
    spec: &SidecarMigrationSpec,
    secret: &str,
) -> (serde_json::Value, serde_json::Value, Option<String>) {
    let ca_secret = spec
        .client_tls()
        .and_then(|t| t.ca_secret_name.clone())
        .unwrap_or_else(|| secret.to_string());
    let controller = serde_json::json!({
        "enabled": true, "certProvided": true, "secretName": secret,
    });
    let gateway = serde_json::json!({ "secretName": ca_secret });
    let note = match spec.client_tls().map(|t| t.source) {
        Some(ClientTlsSource::Secret) => Some(format!(
            "the gateway release renders the client CA into ConfigMap {} by reading Secret {ca_secret} (Helm's lookup); the migrated pods mount that Secret directly, since the operator reads no Secret, so this upgrade rolls the gateway pods once",
            client_ca_config_map_name(spec)
        )),
        _ => None,
    };
    (controller, gateway, note)
}
