//! What a finished migration costs while the cluster around it changes: the
//! reconciles and requests that pods created and deleted in its namespace
//! cause, for this build and, to compare, another one.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::api::SidecarMigration;
use crate::testenv::{self, ControlPlane};

use super::{Build, apiserver, unrelated_pod};

pub(super) struct Wakeups {
    pub build: String,
    pub pods: usize,
    pub reconciles: f64,
    pub requests: f64,
}

/// A Succeeded SidecarMigration in a namespace of its own; `pods` pods are
/// created there, run, and are deleted, with the operator process (`build`)
/// watching. Counted from when the operator has settled until it settles
/// again.
pub(super) async fn measure(
    cp: &ControlPlane,
    client: &Client,
    build: &Build,
    label: &str,
    pods: usize,
) -> anyhow::Result<Wakeups> {
    let ns = format!("wakeups-{label}");
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    finished_migration(client, &ns).await?;

    let operator = build.start(cp, client).await?;
    let reconciles = operator.counter("sidecar_migrator_reconciles_total").await;
    let requests = apiserver::operator_requests(client).await?;
    churn(client, &ns, pods).await?;
    operator.settled(client).await?;
    let wakeups = Wakeups {
        build: label.into(),
        pods,
        reconciles: operator.counter("sidecar_migrator_reconciles_total").await - reconciles,
        requests: apiserver::operator_requests(client).await? - requests,
    };
    operator.stop().await;
    Ok(wakeups)
}

async fn finished_migration(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<SidecarMigration> = Api::namespaced(client.clone(), ns);
    let scm: SidecarMigration = serde_json::from_value(serde_json::json!({
        "apiVersion": "sidecar-migrator.dev/v1alpha1",
        "kind": "SidecarMigration",
        "metadata": { "name": "done" },
        "spec": { "proxyDeployment": "kong-kong" },
    }))?;
    let created = api.create(&PostParams::default(), &scm).await?;
    // As the operator leaves a migration it finished: its status answers
    // its spec's generation.
    let status = serde_json::json!({ "status": {
        "phase": "Succeeded",
        "observedGeneration": created.metadata.generation,
    } });
    api.patch_status("done", &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Creates `n` pods in `ns`, waits until the simulator runs them all, then
/// deletes them and waits until they are gone.
async fn churn(client: &Client, ns: &str, n: usize) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for i in 0..n {
        let pod: Pod = serde_json::from_value(unrelated_pod(i))?;
        api.create(&PostParams::default(), &pod).await?;
    }
    let lp = ListParams::default().labels("bench=unrelated");
    testenv::wait_for(
        Duration::from_secs(300),
        "the churn pods to run",
        async || {
            let pods = api.list(&lp).await?.items;
            Ok((pods.iter().filter(|p| crate::plan::pod_ready(p)).count() >= n).then_some(()))
        },
    )
    .await?;
    api.delete_collection(&DeleteParams::default(), &lp).await?;
    testenv::wait_for(
        Duration::from_secs(300),
        "the churn pods to go",
        async || Ok(api.list(&lp).await?.items.is_empty().then_some(())),
    )
    .await
}
