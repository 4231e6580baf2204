//! The benchmark's own view of one namespace: caches of its Pods,
//! Deployments and SidecarMigrations, and a stream that ticks on every change.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;

use crate::api::SidecarMigration;

/// The chart's sidecar container; the bench's fixtures keep its name.
const SIDECAR: &str = "ingress-controller";

pub struct Observer {
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub migrations: Store<SidecarMigration>,
    changes: BoxStream<'static, ()>,
}

impl Observer {
    pub fn new(client: &Client, ns: &str) -> Observer {
        let (pods, pod_changes) = cache::<Pod>(client, ns);
        let (deployments, deployment_changes) = cache::<Deployment>(client, ns);
        let (migrations, migration_changes) = cache::<SidecarMigration>(client, ns);
        Observer {
            pods,
            deployments,
            migrations,
            changes: futures::stream::select_all([
                pod_changes,
                deployment_changes,
                migration_changes,
            ])
            .boxed(),
        }
    }

    /// Waits for the next change to any of the caches; errors when the
    /// watches end or nothing changes within `timeout`.
    pub async fn changed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(timeout, self.changes.next()).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => anyhow::bail!("the bench's watches ended"),
            Err(_) => anyhow::bail!("nothing changed in {timeout:?}"),
        }
    }

    /// Waits until every cache holds its initial list.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self
                .pods
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
                && self
                    .deployments
                    .wait_until_ready()
                    .now_or_never()
                    .is_some_and(|r| r.is_ok())
                && self
                    .migrations
                    .wait_until_ready()
                    .now_or_never()
                    .is_some_and(|r| r.is_ok());
            if ready {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.changed(left).await?;
        }
    }

    pub fn migration(&self) -> Option<Arc<SidecarMigration>> {
        self.migrations.state().into_iter().next()
    }

    pub fn deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .state()
            .into_iter()
            .find(|d| d.name_any() == name)
    }

    /// Pods of the proxy Deployment's release that still carry the sidecar.
    pub fn legacy_pods(&self) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| proxy_pod(p) && crate::plan::has_container(p, SIDECAR))
            .collect()
    }

    /// Pods of the proxy Deployment's release without the sidecar.
    pub fn gateway_pods(&self) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| proxy_pod(p) && !crate::plan::has_container(p, SIDECAR))
            .collect()
    }
}

/// A pod of the fixtures' release `kong` (not of the manual procedure's
/// release `controller`).
fn proxy_pod(p: &Pod) -> bool {
    let label = |k: &str| p.labels().get(k).map(String::as_str);
    label("app.kubernetes.io/instance") == Some("kong")
        && label("app.kubernetes.io/component") == Some("app")
}

fn cache<K>(client: &Client, ns: &str) -> (Store<K>, BoxStream<'static, ()>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::namespaced(client.clone(), ns), Default::default()).default_backoff(),
    )
    // Every event ticks, the end of the initial list too, so that
    // `wait_ready` returns in a namespace that has none of a kind.
    .map(|_| ())
    .boxed();
    (store, stream)
}
