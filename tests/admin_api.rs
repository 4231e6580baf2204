//! The Admin API stays as closed as it can: only its TLS listen is opened to
//! the pod network for the controller; a plain-HTTP listen stays on loopback.

mod support;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use sidecar_migrator::api::Phase;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_admin_listen_stays_on_loopback() {
    let mut case = Case::without_operator("sidecar-1-replica.yaml").await;
    let listen = "127.0.0.1:8001, 127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl";
    let patch = json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "proxy", "env": [ { "name": "KONG_ADMIN_LISTEN", "value": listen } ] }
    ] } } } });
    case.deployments()
        .patch(PROXY, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("an HTTP admin listen beside the TLS one");
    case.wait_rollout(PROXY).await;
    case.start_operator();
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(
        env(&proxy, "proxy", "KONG_ADMIN_LISTEN").as_deref(),
        Some("127.0.0.1:8001, 0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl")
    );
    assert_eq!(case.downtime_ms(), 0);
    case.assert_nothing_refused("kong").await;
}
