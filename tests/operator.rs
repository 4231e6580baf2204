//! The operator process as `deploy/` and the Helm chart run it, on the real
//! control plane: its own RBAC (by impersonating its ServiceAccount), leader
//! election between two replicas, and the probes and metrics over HTTP.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use serde_json::json;
use sidecar_migrator::api::Phase;
use sidecar_migrator::operator::{self, Options};
use sidecar_migrator::reconcile;
use sidecar_migrator::testenv::{tools, wait_for};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// Where deploy/ puts the operator, and who it runs as.
const OPERATOR_NS: &str = "sidecar-migrator";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:sidecar-migrator:sidecar-migrator";
/// The chart's release, beside deploy/: its name (which contains the chart's)
/// names its namespace and every object it makes.
const RELEASE: &str = "sidecar-migrator-helm";

/// `kubectl apply -k deploy/`, once for the whole binary, as a user would.
async fn install_deploy(case: &Case) {
    static APPLIED: OnceCell<()> = OnceCell::const_new();
    APPLIED
        .get_or_init(|| async {
            let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/");
            case.kubectl(&["apply", "--server-side", "-k", deploy])
                .await;
        })
        .await;
}

/// `helm install` of charts/sidecar-migrator, once for the whole binary, as
/// a user would (the CRD is there already, as after `kubectl apply -k`).
async fn install_chart(case: &Case) {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let helm = tools::helm().await.expect("helm builds");
            let home = tempfile::tempdir().expect("tempdir");
            let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/sidecar-migrator");
            let mut cmd = tokio::process::Command::new(helm);
            for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
                cmd.env(var, home.path());
            }
            let out = cmd
                .args(["install", RELEASE, chart, "--namespace", RELEASE])
                .arg("--create-namespace")
                .arg("--kubeconfig")
                .arg(case.cp.kubeconfig_path())
                .output()
                .await
                .expect("helm runs");
            assert!(
                out.status.success(),
                "helm install: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
}

async fn as_user(case: &Case, user: &str) -> Client {
    let mut config = case.cp.config().await.expect("config");
    config.auth_info.impersonate = Some(user.into());
    reconcile::client(config).expect("client")
}

struct Replica {
    identity: String,
    addr: std::net::SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// One operator process as deploy/operator.yaml starts it, scoped to the
    /// test's namespace so parallel tests do not meet.
    async fn start(case: &Case, identity: &str, lease: &str) -> Replica {
        Replica::start_as(case, identity, SERVICE_ACCOUNT, (OPERATOR_NS, lease)).await
    }

    /// The same, as `user`, holding `lease` (namespace, name).
    async fn start_as(
        case: &Case,
        identity: &str,
        user: &str,
        (lease_ns, lease): (&str, &str),
    ) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opts = Options {
            namespaces: vec![case.ns.clone()],
            lease: Some((lease_ns.into(), lease.into())),
            identity: identity.into(),
            http: addr,
            max_concurrent_migrations: None,
            allowed_controller_images: Vec::new(),
        };
        let client = as_user(case, user).await;
        let task = tokio::spawn(operator::serve_and_run(client, opts, listener));
        Replica {
            identity: identity.into(),
            addr,
            task,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1.0 GET: status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn lease_holder(case: &Case, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(case.client.clone(), OPERATOR_NS)
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn wait_holder(case: &Case, lease: &str, among: &[&str]) -> String {
    wait_for(
        DEADLINE,
        &format!("a holder of Lease {lease}"),
        async || {
            Ok(lease_holder(case, lease)
                .await
                .filter(|h| among.contains(&h.as_str())))
        },
    )
    .await
    .expect("lease held")
}

/// Which replicas reported events about the migration.
async fn reporters(case: &Case, name: &str) -> Vec<String> {
    let mut who: Vec<String> = case
        .events(name)
        .await
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect();
    who.sort();
    who.dedup();
    who
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_migration_needs_no_more_than_the_deploy_rbac() {
    let case = Case::without_operator("sidecar-token-secret.yaml").await;
    install_deploy(&case).await;
    let lease = format!("rbac-{}", case.ns);
    let replica = Replica::start(&case, "rbac", &lease).await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    case.set("kong", json!({ "approved": true })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
    case.assert_nothing_refused("kong").await;
    assert!(!replica.task.is_finished(), "the operator is still running");
    assert_eq!(reporters(&case, "kong").await, ["rbac"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_needs_no_more_than_the_helm_chart_rbac() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    install_chart(&case).await;
    let user = format!("system:serviceaccount:{RELEASE}:{RELEASE}");
    let lease = format!("helm-{}", case.ns);
    let replica = Replica::start_as(&case, "helm", &user, (RELEASE, &lease)).await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    case.assert_nothing_refused("kong").await;
    assert!(!replica.task.is_finished(), "the operator is still running");
    assert_eq!(reporters(&case, "kong").await, ["helm"]);
}

/// After Succeeded, a Helm release's migration asks the authorizer about the
/// controller's ServiceAccount (SubjectAccessReviews) for `status.handoff`:
/// the message is written only once every answer came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handoff_check_needs_no_more_than_the_deploy_rbac() {
    let case = Case::installed_by_helm_without_operator("chart-2.52.0-sidecar.yaml").await;
    install_deploy(&case).await;
    let lease = format!("rbac-handoff-{}", case.ns);
    let _replica = Replica::start(&case, "rbac", &lease).await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    case.wait_until("kong", "the hand-off checked", |m| {
        m.status
            .as_ref()
            .and_then(|s| s.handoff.as_ref())
            .and_then(|h| h.releases.first()?.message.as_deref())
            .is_some_and(|m| m.contains("still runs as the gateway's ServiceAccount"))
    })
    .await;
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_needs_no_more_than_the_deploy_rbac() {
    let case = Case::without_operator("sidecar-3-replicas-pdb.yaml").await;
    install_deploy(&case).await;
    let lease = format!("rbac-rollback-{}", case.ns);
    let _replica = Replica::start(&case, "rbac", &lease).await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "cutover": "DeleteLegacyPods" }),
    )
    .await;
    // Kong's order under a PodDisruptionBudget: orphaning ReplicaSets and
    // evicting pods, then the rollback deletes what the migration made.
    case.wait_event("kong", "LegacyPodEvicted").await;
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await;
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_actor_and_a_hand_over() {
    let case = Case::without_operator("sidecar-3-replicas-pdb.yaml").await;
    install_deploy(&case).await;
    let lease = format!("ha-{}", case.ns);
    let mut replicas = vec![
        Replica::start(&case, "replica-a", &lease).await,
        Replica::start(&case, "replica-b", &lease).await,
    ];
    let leader = wait_holder(&case, &lease, &["replica-a", "replica-b"]).await;

    // Both are alive and ready: the standby waits for the Lease.
    for r in &replicas {
        let ready = wait_for(DEADLINE, "/readyz", async || {
            Ok(Some(r.get("/readyz").await).filter(|(code, _)| *code == 200))
        })
        .await;
        assert!(ready.is_ok(), "{} never turned ready", r.identity);
        assert_eq!(r.get("/healthz").await.0, 200);
    }

    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    assert_eq!(
        reporters(&case, "kong").await,
        std::slice::from_ref(&leader),
        "only the leader acts"
    );

    // The leader dies without a word (no Lease release): the standby takes
    // over once the Lease expires, and finishes the migration.
    let index = replicas
        .iter()
        .position(|r| r.identity == leader)
        .expect("leader is ours");
    let mut dead = replicas.remove(index);
    dead.task.abort();
    let _ = (&mut dead.task).await;
    let survivor = &replicas[0];
    wait_holder(&case, &lease, &[survivor.identity.as_str()]).await;
    case.set("kong", json!({ "approved": true })).await;
    case.wait_phase("kong", Phase::Succeeded).await;
    let approved_by: Vec<String> = case
        .events("kong")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Approved"))
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert_eq!(approved_by, std::slice::from_ref(&survivor.identity));

    // The survivor's metrics tell the story. ZeroDowntime leaves retiring
    // the legacy pods to the Deployment's rollout: nothing evicted.
    let (code, metrics) = survivor.get("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "sidecar_migrator_migrations{phase=\"Succeeded\"} 1",
        "sidecar_migrator_legacy_pods_evicted_total 0",
        "sidecar_migrator_step_duration_seconds_count{step=\"DeletingLegacyPods\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(metrics.contains("sidecar_migrator_reconciles_total "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_watches_to_sync() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    // Without election the replica acts at once; /readyz turns 200 only
    // after the watches have listed, which needs the API server: stop it
    // from answering by pointing the replica at a closed port.
    let mut config = case.cp.config().await.expect("config");
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    config.cluster_url = format!("https://127.0.0.1:{port}").parse().expect("url");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let opts = Options {
        namespaces: vec![case.ns.clone()],
        lease: None,
        identity: "unready".into(),
        http: addr,
        max_concurrent_migrations: None,
        allowed_controller_images: Vec::new(),
    };
    let task = tokio::spawn(operator::serve_and_run(
        reconcile::client(config).expect("client"),
        opts,
        listener,
    ));
    let health = wait_for(DEADLINE, "/healthz", async || {
        Ok(Some(http_get(addr, "/healthz").await).filter(|(c, _)| *c == 200))
    })
    .await;
    assert!(health.is_ok(), "alive even without an API server");
    assert_eq!(http_get(addr, "/readyz").await.0, 503);
    task.abort();

    // Against the real API server it turns ready.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let opts = Options {
        namespaces: vec![case.ns.clone()],
        lease: None,
        identity: "ready".into(),
        http: addr,
        max_concurrent_migrations: None,
        allowed_controller_images: Vec::new(),
    };
    let client = reconcile::client(case.cp.config().await.expect("config")).expect("client");
    let task = tokio::spawn(operator::serve_and_run(client, opts, listener));
    let ready = wait_for(DEADLINE, "/readyz", async || {
        Ok(Some(http_get(addr, "/readyz").await).filter(|(c, _)| *c == 200))
    })
    .await;
    task.abort();
    assert!(ready.is_ok(), "ready once synced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_scoped_operator_needs_only_a_rolebinding_there() {
    // deploy/components/namespaced: the ClusterRole bound by a RoleBinding in
    // the watched namespace, no ClusterRoleBinding. Here for a user of its
    // own, so the cluster-wide binding of deploy/ cannot help.
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    install_deploy(&case).await;
    let user = format!("system:serviceaccount:{}:scoped-migrator", case.ns);
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "sidecar-migrator", "namespace": case.ns },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "sidecar-migrator",
        },
        "subjects": [{ "kind": "ServiceAccount", "name": "scoped-migrator", "namespace": case.ns }],
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(case.client.clone(), &case.ns)
        .create(&Default::default(), &binding)
        .await
        .expect("rolebinding");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let opts = Options {
        namespaces: vec![case.ns.clone()],
        lease: None,
        identity: "scoped".into(),
        http: listener.local_addr().expect("addr"),
        max_concurrent_migrations: None,
        allowed_controller_images: Vec::new(),
    };
    let task = tokio::spawn(operator::serve_and_run(
        as_user(&case, &user).await,
        opts,
        listener,
    ));
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    task.abort();
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_concurrent_migrations_the_rest_wait_in_pending() {
    let first = Case::without_operator("sidecar-1-replica.yaml").await;
    let second = Case::without_operator("sidecar-1-replica.yaml").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let opts = Options {
        namespaces: vec![first.ns.clone(), second.ns.clone()],
        lease: None,
        identity: "limited".into(),
        http: listener.local_addr().expect("addr"),
        max_concurrent_migrations: Some(1),
        allowed_controller_images: Vec::new(),
    };
    let client = reconcile::client(first.cp.config().await.expect("config")).expect("client");
    let task = tokio::spawn(operator::serve_and_run(client, opts, listener));
    first
        .start(
            "kong",
            json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
        )
        .await;
    first.wait_phase("kong", Phase::AwaitingApproval).await;
    second
        .start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let waiting = second
        .wait_until("kong", "WaitingForSlot", |m| {
            condition(m, "Ready") == ("False", "WaitingForSlot")
        })
        .await;
    assert_eq!(waiting.status.map(|s| s.phase), Some(Phase::Pending));
    let untouched = second.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(containers(&untouched), [SIDECAR, "proxy"], "not started");
    // The slot frees when the first one finishes.
    first.set("kong", json!({ "approved": true })).await;
    first.wait_phase("kong", Phase::Succeeded).await;
    second.wait_phase("kong", Phase::Succeeded).await;
    task.abort();
}

/// The identity `name` in the test's namespace, holding `rules` there and
/// nothing else.
async fn user_with(case: &Case, name: &str, rules: serde_json::Value) -> Client {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": case.ns },
        "rules": rules,
    }))
    .expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": case.ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
        "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": case.ns }],
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(case.client.clone(), &case.ns)
        .create(&Default::default(), &role)
        .await
        .expect("role");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(case.client.clone(), &case.ns)
        .create(&Default::default(), &binding)
        .await
        .expect("rolebinding");
    as_user(case, &format!("system:serviceaccount:{}:{name}", case.ns)).await
}

/// Reconciles as `client` until a reconcile fails, at most `attempts` times.
async fn reconcile_until_refused(case: &Case, client: Client, attempts: usize) -> reconcile::Error {
    let ctx = std::sync::Arc::new(reconcile::Context::new(
        client,
        Some("refused".into()),
        case.metrics.clone(),
        reconcile::Slots::new(None),
    ));
    for _ in 0..attempts {
        let scm = case.migrations().get("kong").await.expect("migration");
        if let Err(e) = reconcile::reconcile(std::sync::Arc::new(scm), ctx.clone()).await {
            return e;
        }
    }
    panic!("no reconcile of {attempts} was refused");
}

/// The notes of the migration's `ApiRefused` events, each after the phase
/// it names as its action.
async fn refusals(case: &Case) -> Vec<String> {
    case.events("kong")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ApiRefused"))
        .map(|e| {
            format!(
                "{}: {}",
                e.action.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// A refusal met by a request other than an action (here the finalizer
/// patch, at the start of every reconcile) is reported like an action's:
/// an `ApiRefused` event, so `assert_nothing_refused` sees every refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_outside_the_actions_is_reported_too() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    // A user who may publish events about the migration and nothing else.
    let user = user_with(
        &case,
        "events-only",
        json!([{ "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] }]),
    )
    .await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let error = reconcile_until_refused(&case, user, 1).await;
    assert_eq!(error.reason(), "Forbidden", "{error}");
    // Published before reconcile returned: no wait needed.
    let refused = refusals(&case).await;
    assert!(
        refused.iter().any(|n| n.contains("forbidden")),
        "{refused:?}; events: {:?}",
        case.event_reasons("kong").await
    );
}

/// An action's refusal names the action, so a person knows what to grant or
/// fix: here the proxy Deployment's update, by a user who may do everything
/// in the namespace but update Deployments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_action_is_named_in_its_event() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    let user = user_with(
        &case,
        "no-deployment-update",
        json!([
            { "apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch", "create", "patch", "delete"] },
            { "apiGroups": ["sidecar-migrator.dev"], "resources": ["*"], "verbs": ["update"] },
        ]),
    )
    .await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let error = reconcile_until_refused(&case, user, 3).await;
    assert_eq!(error.reason(), "Forbidden", "{error}");
    let refused = refusals(&case).await;
    assert!(
        refused.iter().any(|n| n.starts_with(&format!(
            "DisablingSidecar: the API server refused the update of Deployment {PROXY}:"
        ))),
        "{refused:?}"
    );
}

/// Admin API mTLS as deploy/'s identity: a user's Secret probed (missing,
/// then refused without a refused request), then a generated certificate
/// through a whole migration and its rollback. Of Secrets the operator may
/// only create: it can never read one back, nor delete one (a delete answers
/// with the object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_mtls_needs_create_on_secrets_and_nothing_else_of_them() {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    install_deploy(&case).await;
    let reviews: Api<SubjectAccessReview> = Api::all(case.client.clone());
    for verb in [
        "create",
        "get",
        "list",
        "watch",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(SERVICE_ACCOUNT.into()),
                resource_attributes: Some(ResourceAttributes {
                    resource: Some("secrets".into()),
                    verb: Some(verb.into()),
                    namespace: Some(case.ns.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = reviews
            .create(&Default::default(), &review)
            .await
            .expect("SubjectAccessReview")
            .status
            .is_some_and(|s| s.allowed);
        assert_eq!(allowed, verb == "create", "{verb} on Secrets");
    }
    let lease = format!("rbac-mtls-{}", case.ns);
    let _replica = Replica::start(&case, "rbac", &lease).await;
    case.start(
        "missing",
        json!({ "proxyDeployment": PROXY, "adminApi": { "clientTLS": {
            "source": "Secret", "secretName": "admin-client" } } }),
    )
    .await;
    let failed = case.wait_phase("missing", Phase::Failed).await;
    assert_eq!(
        condition(&failed, "Stalled"),
        ("True", "ClientCertificateSecretNotFound")
    );
    case.assert_nothing_refused("missing").await;
    case.delete_and_wait_gone("missing").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "adminApi": { "clientTLS": { "source": "Generate" } } }),
    )
    .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await;
    case.assert_nothing_refused("kong").await;
}
