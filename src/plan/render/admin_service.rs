//! The headless Admin API Service the new controller discovers gateways through.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::*;
use crate::kong;
use crate::plan::selector_labels;

use super::release_meta;

/// The headless Admin API Service the new controller discovers gateways
/// through. With `discovery_only`, only pods rendered for Gateway Discovery
/// are selected, so a sidecar pod (Admin API on localhost) is never listed.
pub fn admin_service(scm: &SidecarMigration, proxy: &Deployment, discovery_only: bool) -> Service {
    let mut selector = selector_labels(proxy);
    if discovery_only {
        selector.insert(DISCOVERY_LABEL.into(), "true".into());
    }
    let adopted = scm
        .status
        .as_ref()
        .and_then(|s| s.original.as_ref())
        .and_then(|o| o.adopted_admin_service.as_ref());
    Service {
        // The gateway release renders this Service (admin.enabled) and adopts it.
        metadata: release_meta(scm, proxy, scm.spec.admin_service_name(), None),
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            // clusterIP cannot change on an adopted Service; KIC reads the
            // EndpointSlices either way.
            cluster_ip: adopted.is_none().then(|| "None".into()),
            // As the chart renders it, so a later apply by Helm changes nothing.
            type_: adopted.is_none().then(|| "ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(kong::ADMIN_SERVICE_PORT_NAME.into()),
                port: kong::ADMIN_PORT,
                protocol: Some("TCP".into()),
                // A number, as the chart renders it: a sidecar pod selected by
                // this Service is listed, exactly the trap Kong's order falls in.
                target_port: Some(IntOrString::Int(kong::ADMIN_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn adopted_service_restored(
    scm: &SidecarMigration,
    _proxy: &Deployment,
    adopted: &AdoptedService,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(scm.spec.admin_service_name()),
            namespace: scm.namespace(),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            selector: Some(adopted.selector.clone()),
            ports: serde_json::from_value(adopted.ports.clone()).ok(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether the live Service already has what `want` asks of it.
pub(crate) fn service_matches(live: Option<&Service>, want: &Service) -> bool {
    let Some(live) = live else { return false };
    let (Some(l), Some(w)) = (&live.spec, &want.spec) else {
        return false;
    };
    let ports_match = match (&l.ports, &w.ports) {
        (Some(lp), Some(wp)) => {
            lp.len() == wp.len()
                && lp.iter().zip(wp).all(|(a, b)| {
                    a.name == b.name && a.port == b.port && a.target_port == b.target_port
                })
        }
        (l, w) => l == w,
    };
    let labels_match = want
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| live.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    l.selector == w.selector && ports_match && labels_match
}
