//! The NetworkPolicy that keeps the Admin API port for the controller.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};

use crate::api::*;
use crate::kong;
use crate::plan::selector_labels;

use super::migration_meta;

/// Whether any of `policies` (ours left out) already selects the gateway pods.
pub fn others_select(policies: &[NetworkPolicy], proxy: &Deployment, ours: &str) -> bool {
    let mut labels = proxy
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(DISCOVERY_LABEL.into(), "true".into());
    policies
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some(ours))
        .filter_map(|p| p.spec.as_ref())
        .filter(|s| {
            s.policy_types
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == "Ingress"))
        })
        .any(|s| {
            Selector::try_from(s.pod_selector.clone().unwrap_or_default())
                .is_ok_and(|sel| sel.matches(&labels))
        })
}

/// Port 8444 of the gateway pods admitted from the controller's pods only.
///
/// Policies only ever add allowances, so selecting the gateway pods closes
/// every port this policy does not list. Where no other policy selects them
/// (all traffic admitted today), every other port stays open to all, so
/// nothing but the Admin API narrows. Where others do, this policy adds only
/// the controller's access to 8444: listing the other ports here would undo
/// what those policies close.
pub fn admin_network_policy(
    scm: &SidecarMigration,
    proxy: &Deployment,
    others_select_gateway: bool,
) -> NetworkPolicy {
    let spec = &scm.spec;
    let port = |protocol: &str, from: i32, to: Option<i32>| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(from)),
        end_port: to,
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        CONTROLLER_SELECTOR_LABEL.to_string(),
                        spec.controller_name(),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![port("TCP", kong::ADMIN_PORT, None)]),
    }];
    if !others_select_gateway {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![
                port("TCP", 1, Some(kong::ADMIN_PORT - 1)),
                port("TCP", kong::ADMIN_PORT + 1, Some(65535)),
                port("UDP", 1, Some(65535)),
                port("SCTP", 1, Some(65535)),
            ]),
        });
    }
    NetworkPolicy {
        metadata: migration_meta(scm, spec.network_policy_name()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(proxy)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}
