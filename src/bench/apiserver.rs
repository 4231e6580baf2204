//! What kube-apiserver reports about itself, and the identity the benchmark
//! gives the operator so that its own requests can be told from the rest.
//!
//! `apiserver_request_total` has no label for the client. API Priority and
//! Fairness does: every request is classified by a FlowSchema, matched on the
//! requesting user, and `apiserver_flowcontrol_dispatched_requests_total`
//! counts per FlowSchema. So the benchmark runs the operator as its
//! ServiceAccount (impersonated, with deploy/rbac.yaml) and adds a FlowSchema
//! that matches that ServiceAccount alone.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::config::Kubeconfig;

use crate::testenv::ControlPlane;

const NAMESPACE: &str = "sidecar-migrator";
const SERVICE_ACCOUNT: &str = "sidecar-migrator";
const FLOW_SCHEMA: &str = "bench-sidecar-migrator";
const FIELD_MANAGER: &str = "bench";

fn operator_user() -> String {
    format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}")
}

/// This build's RBAC for the operator.
pub const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml");

/// Installs deploy/'s namespace and RBAC and the operator's FlowSchema, and
/// waits until kube-apiserver classifies requests by it.
pub async fn install_operator_identity(cp: &ControlPlane, client: &Client) -> anyhow::Result<()> {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let status = tokio::process::Command::from(cp.kubectl())
        .args(["apply", "--server-side", "-n", NAMESPACE])
        .args(["-f", &format!("{deploy}/namespace.yaml")])
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "kubectl apply of deploy/namespace.yaml failed"
    );
    grant(cp, std::path::Path::new(RBAC)).await?;

    let schema: FlowSchema = serde_json::from_value(serde_json::json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": { "name": FLOW_SCHEMA },
        "spec": {
            // Before the suggested "service-accounts" schema (9000).
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": { "name": "workload-high" },
            "distinguisherMethod": { "type": "ByUser" },
            "rules": [{
                "subjects": [{
                    "kind": "ServiceAccount",
                    "serviceAccount": { "name": SERVICE_ACCOUNT, "namespace": NAMESPACE },
                }],
                "resourceRules": [{
                    "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "clusterScope": true, "namespaces": ["*"],
                }],
                "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
            }],
        },
    }))?;
    let api: Api<FlowSchema> = Api::all(client.clone());
    api.patch(
        FLOW_SCHEMA,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&schema),
    )
    .await?;
    // kube-apiserver's APF configuration controller sets Dangling=False
    // once the schema is in force (its priority level exists).
    let in_force = |fs: Option<&FlowSchema>| {
        fs.and_then(|fs| fs.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_.as_deref() == Some("Dangling") && c.status.as_deref() == Some("False")
                })
            })
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(api, FLOW_SCHEMA, in_force),
    )
    .await
    .context("FlowSchema bench-sidecar-migrator not in force after 30 s")??;
    Ok(())
}

/// Gives the operator's ServiceAccount the RBAC of a build (each build
/// asks for the verbs it uses; a baseline may need others).
pub async fn grant(cp: &ControlPlane, rbac: &std::path::Path) -> anyhow::Result<()> {
    let status = tokio::process::Command::from(cp.kubectl())
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            NAMESPACE,
        ])
        .arg("-f")
        .arg(rbac)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "kubectl apply of {} failed",
        rbac.display()
    );
    Ok(())
}

/// A kubeconfig file for the operator process: the control plane's, acting
/// as the operator's ServiceAccount.
pub fn write_operator_kubeconfig(cp: &ControlPlane, path: &std::path::Path) -> anyhow::Result<()> {
    let mut kubeconfig = Kubeconfig::read_from(cp.kubeconfig_path())?;
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(operator_user());
        }
    }
    std::fs::write(path, serde_saphyr::to_string(&kubeconfig)?)?;
    Ok(())
}

/// Requests kube-apiserver has dispatched for the operator's ServiceAccount.
pub async fn operator_requests(client: &Client) -> anyhow::Result<f64> {
    let schema = format!("flow_schema=\"{FLOW_SCHEMA}\"");
    Ok(
        metric(client, "apiserver_flowcontrol_dispatched_requests_total{")
            .await?
            .iter()
            .filter(|(labels, _)| labels.contains(&schema))
            .map(|(_, v)| v)
            .sum(),
    )
}

/// The sum of `apiserver_request_total`: every client together.
pub async fn all_requests(client: &Client) -> anyhow::Result<f64> {
    Ok(metric(client, "apiserver_request_total{")
        .await?
        .iter()
        .map(|(_, v)| v)
        .sum())
}

/// Watches kube-apiserver holds open now, every client together.
pub async fn watches(client: &Client) -> anyhow::Result<f64> {
    Ok(metric(client, "apiserver_longrunning_requests{")
        .await?
        .iter()
        .filter(|(labels, _)| labels.contains("verb=\"WATCH\""))
        .map(|(_, v)| v)
        .sum())
}

/// The samples of one kube-apiserver metric: labels and value.
async fn metric(client: &Client, prefix: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse::<f64>().ok()?))
        })
        .collect())
}
