//! The tenant boundary: a user who may only create SidecarMigrations in one
//! namespace (the shipped `sidecar-migrator-admin` role, bound there) cannot
//! make the operator do what they could not do themselves. Each abuse ends
//! refused, with a condition naming the object, and no object in the
//! namespace changed.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_migrator::api::{Phase, SidecarMigration};
use sidecar_migrator::reconcile;
use sidecar_migrator::testenv::wait_for;
use support::*;

const TENANT: &str = "tenant-alice";

/// The shipped user roles, applied as an administrator would.
async fn install_user_roles(case: &Case) {
    let roles = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/user-roles.yaml");
    case.kubectl(&["apply", "--server-side", "-f", roles]).await;
}

/// A client that is TENANT, holding `sidecar-migrator-admin` in the case's
/// namespace and nothing else.
async fn as_tenant(case: &Case) -> Client {
    install_user_roles(case).await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "tenant-migrates" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sidecar-migrator-admin" },
        "subjects": [ { "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT } ]
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(case.client.clone(), &case.ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the tenant");
    let mut config = case.cp.config().await.expect("config");
    config.auth_info.impersonate = Some(TENANT.into());
    reconcile::client(config).expect("client")
}

async fn create<K>(case: &Case, value: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Clone
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object");
    Api::<K>::namespaced(case.client.clone(), &case.ns)
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_tenant_cannot_widen_their_reach_through_the_operator() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let tenant = as_tenant(&case).await;
    // The tenant holds no other right: not even reading the Deployments.
    let denied = Api::<Deployment>::namespaced(tenant.clone(), &case.ns)
        .list(&Default::default())
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.code == 403),
        "{denied:?}"
    );

    // Another app beside Kong: a two-container Deployment whose containers
    // are named like Kong's, its Service, and a Role by the controller's RBAC name.
    create::<Deployment>(&case, json!({
        "metadata": { "name": "billing" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "billing" } },
            "template": {
                "metadata": { "labels": { "app": "billing" } },
                "spec": { "containers": [
                    { "name": "ingress-controller", "image": "busybox:1.36", "env": [ { "name": "CONTROLLER_MODE", "value": "x" } ] },
                    { "name": "proxy", "image": "nginx:1.27", "env": [ { "name": "KONG_ADMIN_LISTEN", "value": "127.0.0.1:8444 ssl" } ] }
                ] }
            }
        }
    })).await;
    create::<Service>(&case, json!({
        "metadata": { "name": "billing" },
        "spec": { "selector": { "app": "billing" }, "ports": [ { "name": "http", "port": 80 } ] }
    }))
    .await;
    create::<Role>(
        &case,
        json!({
            "metadata": { "name": "kong-kong-controller-endpointslices" },
            "rules": [ { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] } ]
        }),
    )
    .await;
    case.wait_rollout("billing").await;
    let before = case.snapshot().await;

    let migrations: Api<SidecarMigration> = Api::namespaced(tenant.clone(), &case.ns);
    let apply = |name: &str, spec: Value| {
        let obj = json!({
            "apiVersion": "sidecar-migrator.dev/v1alpha1",
            "kind": "SidecarMigration",
            "metadata": { "name": name },
            "spec": spec,
        });
        let migrations = migrations.clone();
        let name = name.to_string();
        async move {
            migrations
                .patch(&name, &PatchParams::apply(TENANT), &Patch::Apply(&obj))
                .await
        }
    };

    // A name whose derived objects cannot exist is refused at admission.
    let long = "a".repeat(253);
    let refused = apply("long", json!({ "proxyDeployment": long })).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("spec.adminService.name")),
        "{refused:?}"
    );

    let abuses = [
        (
            "a foreign controller image",
            json!({ "proxyDeployment": PROXY, "controller": { "name": "kong-kong-ctl", "image": "ghcr.io/evil/kubernetes-ingress-controller:3.4" } }),
            "ControllerImageNotAllowed",
            "ghcr.io/evil/kubernetes-ingress-controller:3.4",
        ),
        (
            "a Deployment that is not Kong",
            json!({ "proxyDeployment": "billing" }),
            "NotAKongInstall",
            "billing",
        ),
        (
            "another app's Service as the admin Service",
            json!({ "proxyDeployment": PROXY, "controller": { "name": "kong-kong-ctl" }, "adminService": { "name": "billing" } }),
            "AdminServiceNotKong",
            "Service billing",
        ),
        (
            "a Role the operator did not make",
            json!({ "proxyDeployment": PROXY }),
            "RoleNameTaken",
            "Role kong-kong-controller-endpointslices",
        ),
    ];
    for (i, (what, spec, reason, names)) in abuses.into_iter().enumerate() {
        let name = format!("abuse-{i}");
        apply(&name, spec).await.expect("admitted");
        let m = case.wait_phase(&name, Phase::Failed).await;
        assert_eq!(condition(&m, "Stalled"), ("True", reason), "{what}");
        let message = m.status.and_then(|s| s.message).unwrap_or_default();
        assert!(message.contains(names), "{what}: {message}");
        case.wait_event(&name, reason).await;
        // The tenant can remove what they made; nothing else was touched.
        migrations
            .delete(&name, &DeleteParams::default())
            .await
            .expect("the tenant deletes it");
        wait_for(DEADLINE, &format!("{name} gone"), async || {
            Ok(case
                .migrations()
                .get_opt(&name)
                .await?
                .is_none()
                .then_some(()))
        })
        .await
        .expect("gone");
        assert_eq!(
            case.snapshot().await,
            before,
            "{what}: the namespace changed"
        );
    }
    assert!(case.sim.ready_endpoints(&case.ns, PROXY_SERVICE) >= 1);
    let proxy = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(
        containers(&proxy),
        vec![SIDECAR, "proxy"],
        "{}",
        proxy.name_any()
    );

    // A literal password in the Kong install's env: the tenant's migration
    // goes on, and what the tenant can read shows no byte of it.
    let password = "Xq7pgZr41w9Lm";
    let patch = json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "proxy", "env": [ { "name": "KONG_PG_PASSWORD", "value": password } ] },
        { "name": SIDECAR, "env": [ { "name": "KONG_PG_PASSWORD", "value": password } ] }
    ] } } } });
    case.deployments()
        .patch(PROXY, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("a literal password");
    case.wait_rollout(PROXY).await;
    Api::<Role>::namespaced(case.client.clone(), &case.ns)
        .delete(
            "kong-kong-controller-endpointslices",
            &DeleteParams::default(),
        )
        .await
        .expect("the foreign Role goes");
    apply(
        "legit",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await
    .expect("admitted");
    case.wait_phase("legit", Phase::AwaitingApproval).await;
    let seen = migrations.get("legit").await.expect("the tenant reads it");
    assert!(seen.status.as_ref().is_some_and(|s| s.original.is_some()));
    let seen = serde_json::to_string(&seen).expect("json");
    for window in password.as_bytes().windows(6) {
        let piece = String::from_utf8_lossy(window);
        assert!(!seen.contains(piece.as_ref()), "the tenant reads {piece:?}");
    }
}
