//! The hand-off to Helm: the values of Kong's two Gateway Discovery releases
//! for the installation as migrated, and the order to apply them in.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

use crate::api::*;

use super::facts::env_value;
use super::helm_release;

/// Helm skips deleting an object so annotated when an upgrade no longer
/// renders it (it reads the live object's annotation).
const RESOURCE_POLICY: &str = "helm.sh/resource-policy";

/// The releases' values and commands, when the proxy Deployment is a Helm
/// release's; None otherwise (nothing to hand over to).
/// `sidecar` is the sidecar container with its env values (status.original
/// keeps none of them).
pub fn handoff(
    scm: &SidecarMigration,
    proxy: &Deployment,
    sidecar: Option<&Container>,
    client_secret: Option<&str>,
) -> Option<Handoff> {
    let (release, namespace) = helm_release(&proxy.metadata)?;
    let spec = &scm.spec;
    let mut notes = Vec::new();
    let controller_release = match spec.controller_release() {
        Some(r) => r.to_string(),
        None => {
            let r = format!("{release}-controller");
            notes.push(format!(
                "spec.controller.release was not set, so Deployment {} is not the one release {r} renders: helm install would run a second controller beside it; delete Deployment {} once the release's controller is Ready",
                spec.controller_name(),
                spec.controller_name()
            ));
            r
        }
    };
    let chart_version = proxy
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("helm.sh/chart"))
        .and_then(|c| c.strip_prefix("kong-"))
        .map(str::to_string);
    let version_flag = chart_version
        .as_ref()
        .map(|v| format!(" --version {v}"))
        .unwrap_or_default();

    let mut controller = json!({
        "deployment": { "kong": { "enabled": false } },
        "ingressController": {
            "enabled": true,
            "gatewayDiscovery": {
                "enabled": true,
                "adminApiService": { "name": spec.admin_service_name() },
            },
        },
    });
    // The existing proxy Service as the publish Service, as Kong's ingress
    // chart does; without it the release publishes <release>-kong-proxy,
    // which does not exist.
    match sidecar
        .and_then(|c| env_value(c, "CONTROLLER_PUBLISH_SERVICE"))
        .and_then(|s| s.split_once('/').map(|(_, name)| name.to_string()))
    {
        Some(publish) => controller["proxy"] = json!({ "nameOverride": publish }),
        None => notes.push(
            "the sidecar set no CONTROLLER_PUBLISH_SERVICE: set proxy.nameOverride in the controller release to the proxy Service's name".into(),
        ),
    }
    // The sidecar's image, so adoption does not change the KIC version.
    let image = spec
        .controller
        .as_ref()
        .and_then(|c| c.image.clone())
        .or_else(|| sidecar.and_then(|c| c.image.clone()));
    if let Some((repository, tag)) = image
        .as_deref()
        .filter(|i| !i.contains('@'))
        .and_then(|i| i.rsplit_once(':'))
        .filter(|(_, tag)| !tag.contains('/'))
    {
        controller["ingressController"]["image"] = json!({ "repository": repository, "tag": tag });
    }
    // KIC's default class, which the chart renders (IngressClass `kong`)
    // with the sidecar; the gateway release no longer renders it, and the
    // controller release renders it only once it is annotated as its own.
    let class = sidecar
        .and_then(|c| env_value(c, "CONTROLLER_INGRESS_CLASS"))
        .unwrap_or_else(|| "kong".into());
    if class != "kong" {
        controller["ingressController"]["ingressClass"] = json!(class);
    }
    let adopt_class = format!(
        "kubectl annotate ingressclass {class} --overwrite {HELM_RELEASE_NAME}={controller_release} {HELM_RELEASE_NAMESPACE}={namespace} {RESOURCE_POLICY}=keep"
    );
    let release_class = format!("kubectl annotate ingressclass {class} {RESOURCE_POLICY}-");
    let mut gateway = json!({
        "ingressController": { "enabled": false },
        "admin": { "enabled": true, "type": "ClusterIP", "clusterIP": "None" },
    });
    // Admin API mTLS: the chart's own values for what the operator rendered.
    if let Some(secret) = client_secret {
        let (on_controller, on_gateway, note) =
            super::render::client_tls_handoff_values(spec, secret);
        controller["ingressController"]["adminApi"] = json!({ "tls": { "client": on_controller } });
        gateway["admin"]["tls"] = json!({ "client": on_gateway });
        notes.extend(note);
    }
    let yaml = |v: &serde_json::Value| serde_saphyr::to_string(v).unwrap_or_default();
    Some(Handoff {
        releases: vec![
            HandoffRelease {
                command: format!(
                    "helm install {controller_release} kong/kong -n {namespace}{version_flag} -f {controller_release}-values.yaml"
                ),
                name: controller_release,
                namespace: namespace.clone(),
                chart_version: chart_version.clone(),
                values: yaml(&controller),
                before: vec![adopt_class],
                after: Vec::new(),
                state: HandoffState::Ready,
                message: None,
            },
            HandoffRelease {
                command: format!(
                    "helm upgrade {release} kong/kong -n {namespace}{version_flag} --reuse-values -f {release}-values.yaml"
                ),
                name: release,
                namespace,
                chart_version,
                values: yaml(&gateway),
                before: Vec::new(),
                after: vec![release_class],
                state: HandoffState::Waiting,
                message: None,
            },
        ],
        notes,
    })
}
