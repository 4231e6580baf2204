//! No secret in status, events or logs: a literal `KONG_PG_PASSWORD` in both
//! containers' env goes through a migration, a rollback and a migration to
//! the end, and no byte of it shows in the SidecarMigration, its events or
//! the operator's logs, while the controller and the rolled-back Deployment
//! still get the value.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use kube::api::{Patch, PatchParams};
use serde_json::json;
use sidecar_migrator::api::Phase;
use support::*;

const PASSWORD: &str = "pg-Pa55w0rd-7f3a9c";

/// Everything the process logs, at debug level, kept for inspection.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

fn env_value(d: &k8s_openapi::api::apps::v1::Deployment, container: &str) -> Option<String> {
    env(d, container, "KONG_PG_PASSWORD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_password_never_leaves_the_deployments() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("sidecar_migrator=debug,kube=debug")
        .init();
    let mut case = Case::without_operator("sidecar-1-replica.yaml").await;
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    let mut patch = Vec::new();
    for (i, _) in proxy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.clone())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        patch.push(
            json!({ "op": "add", "path": format!("/spec/template/spec/containers/{i}/env/-"),
            "value": { "name": "KONG_PG_PASSWORD", "value": PASSWORD } }),
        );
    }
    case.deployments()
        .patch(
            PROXY,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(json!(patch)).expect("patch")),
        )
        .await
        .expect("add the password");
    case.wait_rollout(PROXY).await;
    case.start_operator();

    // Up to the approval, then back.
    case.start(
        "first",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("first", Phase::AwaitingApproval).await;
    let controller = case
        .deployments()
        .get(CONTROLLER)
        .await
        .expect("controller");
    assert_eq!(env_value(&controller, SIDECAR).as_deref(), Some(PASSWORD));
    let first = case
        .kubectl(&["get", "scm", "first", "-n", &case.ns, "-o", "yaml"])
        .await;
    case.set("first", json!({ "rollback": true })).await;
    case.wait_phase("first", Phase::RolledBack).await;
    let restored = case.wait_rollout(PROXY).await;
    assert_eq!(env_value(&restored, SIDECAR).as_deref(), Some(PASSWORD));
    assert_eq!(env_value(&restored, "proxy").as_deref(), Some(PASSWORD));
    assert!(
        !restored
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(sidecar_migrator::api::ORIGINAL_ENV_ANNOTATION),
        "rollback takes its annotation away"
    );
    let first_after = case
        .kubectl(&["get", "scm", "first", "-n", &case.ns, "-o", "yaml"])
        .await;
    case.delete_and_wait_gone("first").await;

    // And a whole migration.
    case.start("second", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("second", Phase::Succeeded).await;
    let migrated = case.wait_rollout(PROXY).await;
    assert_eq!(env_value(&migrated, "proxy").as_deref(), Some(PASSWORD));
    let second = case
        .kubectl(&["get", "scm", "second", "-n", &case.ns, "-o", "yaml"])
        .await;
    let events = case
        .kubectl(&["get", "events", "-n", &case.ns, "-o", "yaml"])
        .await;

    let logged = logs.text();
    assert!(
        logged.contains("MigrationSucceeded"),
        "the logs were captured"
    );
    // Any 6 consecutive bytes of the password would be a leak.
    for (what, text) in [
        ("SidecarMigration first", &first),
        ("SidecarMigration first, rolled back", &first_after),
        ("SidecarMigration second", &second),
        ("events", &events),
        ("operator logs", &logged),
    ] {
        for window in PASSWORD.as_bytes().windows(6) {
            let piece = String::from_utf8_lossy(window);
            assert!(!text.contains(piece.as_ref()), "{what} holds {piece:?}");
        }
    }
}
