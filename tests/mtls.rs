//! Admin API mTLS (`spec.adminApi.clientTLS`): the gateways demand a client
//! certificate and the controller presents one, as the kong chart renders
//! them, from a generated certificate or a user's Secret; rollback removes
//! all of it; and the node simulator's rule that makes this matter holds.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use sidecar_migrator::api::{CLIENT_SECRET_ANNOTATION, Phase};
use sidecar_migrator::testenv::wait_for;
use support::*;

const CA_CONFIG_MAP: &str = "kong-kong-admin-client-ca";

fn template(d: &k8s_openapi::api::apps::v1::Deployment) -> PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod template")
}

/// The whole pod template, to compare before and after.
fn template_json(d: &k8s_openapi::api::apps::v1::Deployment) -> Value {
    serde_json::to_value(template(d)).expect("json")
}

/// The volume `name` of a pod spec, as JSON.
fn volume(pod: &PodSpec, name: &str) -> Value {
    let v = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"));
    serde_json::to_value(v).expect("json")
}

fn mount(pod: &PodSpec, container: &str, volume: &str) -> Option<(String, Option<bool>)> {
    pod.containers
        .iter()
        .find(|c| c.name == container)?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .map(|m| (m.mount_path.clone(), m.read_only))
}

/// The gateway demands a client certificate as the chart renders
/// `admin.tls.client.*`, in the Deployment and in every pod it runs now.
async fn assert_gateway_demands_a_client_certificate(case: &Case, ca_volume: Value) {
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(
        env(&proxy, "proxy", "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT").as_deref(),
        Some("on")
    );
    assert_eq!(
        env(&proxy, "proxy", "KONG_NGINX_ADMIN_SSL_CLIENT_CERTIFICATE").as_deref(),
        Some("/etc/admin-client-ca/tls.crt")
    );
    let pod = template(&proxy);
    assert_eq!(volume(&pod, "admin-client-ca"), ca_volume);
    assert_eq!(
        mount(&pod, "proxy", "admin-client-ca"),
        Some(("/etc/admin-client-ca/".into(), Some(true)))
    );
    let pods = case.pods().await;
    assert!(!pods.is_empty());
    for p in &pods {
        let spec = p.spec.as_ref().expect("pod spec");
        let proxy_c = spec
            .containers
            .iter()
            .find(|c| c.name == "proxy")
            .expect("proxy container");
        let verify = proxy_c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT");
        assert_eq!(
            verify.and_then(|e| e.value.as_deref()),
            Some("on"),
            "pod {}",
            p.name_any()
        );
    }
}

/// The controller presents the certificate of `secret` as the chart renders
/// `ingressController.adminApi.tls.client.*`.
async fn assert_controller_presents(case: &Case, secret: &str) {
    let controller = case.wait_rollout(CONTROLLER).await;
    assert_eq!(
        env(
            &controller,
            SIDECAR,
            "CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE"
        )
        .as_deref(),
        Some("/etc/secrets/admin-api-cert/tls.crt")
    );
    assert_eq!(
        env(
            &controller,
            SIDECAR,
            "CONTROLLER_KONG_ADMIN_TLS_CLIENT_KEY_FILE"
        )
        .as_deref(),
        Some("/etc/secrets/admin-api-cert/tls.key")
    );
    let pod = template(&controller);
    assert_eq!(
        volume(&pod, "admin-api-cert"),
        json!({ "name": "admin-api-cert", "secret": { "secretName": secret, "defaultMode": 420 } })
    );
    assert_eq!(
        mount(&pod, SIDECAR, "admin-api-cert"),
        Some(("/etc/secrets/admin-api-cert".into(), Some(true)))
    );
}

/// A self-signed client certificate in a kubernetes.io/tls Secret, as a
/// user would bring one.
async fn create_user_secret(case: &Case, name: &str) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).expect("certificate");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), cert.pem()),
            ("tls.key".to_string(), key.serialize_pem()),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(case.client.clone(), &case.ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the user's Secret");
}

/// Rolls back, then checks the sidecar install is the one before the
/// migration, to the byte of its pod template.
async fn roll_back_and_compare(case: &Case, before: &Value) {
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await;
    assert_rolled_back(case, 1).await;
    let proxy = case.wait_rollout(PROXY).await;
    assert_eq!(
        &template_json(&proxy),
        before,
        "rollback restores the sidecar install's pod template exactly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_certificate_migrates_without_downtime_and_leaves_on_rollback() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = template_json(&case.wait_rollout(PROXY).await);
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "adminApi": { "clientTLS": { "source": "Generate" } } }),
    )
    .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 1).await;
    assert_gateway_demands_a_client_certificate(
        &case,
        json!({ "name": "admin-client-ca", "configMap": { "name": CA_CONFIG_MAP, "defaultMode": 420 } }),
    )
    .await;

    // The ConfigMap publishes the certificate of the Secret it names, which
    // it owns; the controller presents that Secret.
    let config_maps: Api<ConfigMap> = Api::namespaced(case.client.clone(), &case.ns);
    let ca = config_maps
        .get(CA_CONFIG_MAP)
        .await
        .expect("the CA ConfigMap");
    let secret_name = ca
        .annotations()
        .get(CLIENT_SECRET_ANNOTATION)
        .cloned()
        .expect("the ConfigMap names its Secret");
    assert!(
        secret_name.starts_with("kong-kong-controller-admin-api-keypair-"),
        "{secret_name}"
    );
    let secrets: Api<Secret> = Api::namespaced(case.client.clone(), &case.ns);
    let secret = secrets
        .get(&secret_name)
        .await
        .expect("the generated Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.clone().unwrap_or_default();
    let published = ca.data.clone().unwrap_or_default();
    assert_eq!(
        data.get("tls.crt").map(|b| b.0.clone()),
        published.get("tls.crt").map(|s| s.as_bytes().to_vec()),
        "the gateways trust exactly the certificate the controller presents"
    );
    assert!(data.contains_key("tls.key"));
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.clone()),
        ("ConfigMap", ca.uid().unwrap_or_default())
    );
    assert_controller_presents(&case, &secret_name).await;
    // No key or certificate in the SidecarMigration.
    let status = serde_json::to_string(
        &case
            .migrations()
            .get("kong")
            .await
            .expect("migration")
            .status,
    )
    .expect("json");
    assert!(!status.contains("PRIVATE KEY") && !status.contains("BEGIN CERTIFICATE"));
    assert_eq!(case.downtime_ms(), 0);

    roll_back_and_compare(&case, &before).await;
    assert!(
        config_maps
            .get_opt(CA_CONFIG_MAP)
            .await
            .expect("get")
            .is_none(),
        "rollback deletes the CA ConfigMap"
    );
    // The garbage collector follows the ownerReference.
    wait_for(DEADLINE, "the generated Secret to be gone", async || {
        Ok(secrets.get_opt(&secret_name).await?.is_none().then_some(()))
    })
    .await
    .expect("the generated Secret is deleted with its ConfigMap");
    assert_eq!(case.downtime_ms(), 0);
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_secret_migrates_without_downtime_and_stays_after_rollback() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    create_user_secret(&case, "admin-client").await;
    let before = template_json(&case.wait_rollout(PROXY).await);
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "adminApi": { "clientTLS": {
            "source": "Secret", "secretName": "admin-client",
        } } }),
    )
    .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_migrated(&case, 1).await;
    assert_gateway_demands_a_client_certificate(
        &case,
        json!({ "name": "admin-client-ca", "secret": {
            "secretName": "admin-client",
            "items": [ { "key": "tls.crt", "path": "tls.crt" } ],
            "defaultMode": 420,
        } }),
    )
    .await;
    assert_controller_presents(&case, "admin-client").await;
    assert_eq!(case.downtime_ms(), 0);

    roll_back_and_compare(&case, &before).await;
    let secrets: Api<Secret> = Api::namespaced(case.client.clone(), &case.ns);
    assert!(
        secrets
            .get_opt("admin-client")
            .await
            .expect("get")
            .is_some(),
        "the user's Secret is the user's: rollback leaves it"
    );
    assert_eq!(case.downtime_ms(), 0);
    case.assert_nothing_refused("kong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_user_secret_is_refused_before_anything_changes() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = case.snapshot().await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "adminApi": { "clientTLS": {
            "source": "Secret", "secretName": "admin-client",
        } } }),
    )
    .await;
    let failed = case.wait_phase("kong", Phase::Failed).await;
    assert_eq!(
        condition(&failed, "Stalled"),
        ("True", "ClientCertificateSecretNotFound")
    );
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("Secret admin-client not found"),
        "{message}"
    );
    assert_eq!(case.snapshot().await, before, "nothing changed");
    // The probe is a dry run: it created nothing either.
    let secrets: Api<Secret> = Api::namespaced(case.client.clone(), &case.ns);
    assert!(
        secrets
            .get_opt("admin-client")
            .await
            .expect("get")
            .is_none()
    );
    // Bringing the Secret lets the migration go on; the operator cannot
    // watch Secrets, so a change to the migration makes it look at once.
    create_user_secret(&case, "admin-client").await;
    case.migrations()
        .patch(
            "kong",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({ "metadata": { "annotations": { "secret-created": "yes" } } }),
            ),
        )
        .await
        .expect("a change to the migration");
    case.wait_phase("kong", Phase::Succeeded).await;
    assert_eq!(case.downtime_ms(), 0);
}

/// The simulator's rule, on the real control plane: once the gateways
/// demand a client certificate, a controller that presents none never turns
/// Ready (it exits after its start-up retries and backs off), while the one
/// that presents it stays Ready and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_without_a_client_certificate_never_gets_ready() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual",
                "adminApi": { "clientTLS": { "source": "Generate" } } }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    // The same controller without the client certificate's env: its
    // Deployment rolls a new pod beside the Ready one.
    let mut controller = case
        .deployments()
        .get(CONTROLLER)
        .await
        .expect("controller");
    let pod = controller
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("template");
    for c in &mut pod.containers {
        if let Some(env) = c.env.as_mut() {
            env.retain(|e| !e.name.starts_with("CONTROLLER_KONG_ADMIN_TLS_CLIENT_"));
        }
    }
    controller.metadata.managed_fields = None;
    case.deployments()
        .replace(CONTROLLER, &PostParams::default(), &controller)
        .await
        .expect("the controller without a client certificate");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(case.client.clone(), &case.ns);
    let lp = kube::api::ListParams::default()
        .labels(&format!("sidecar-migrator.dev/controller={CONTROLLER}"));
    let presents = |p: &k8s_openapi::api::core::v1::Pod| {
        p.spec.iter().flat_map(|s| &s.containers).any(|c| {
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE")
        })
    };
    let restarted = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .any(|c| c.restart_count >= 1)
    };
    // It exits after its start-up retries (60 × 1 s, scaled): it found
    // every listed gateway unreachable, without ever being Ready.
    let without = wait_for(
        DEADLINE,
        "the controller without a certificate to exit",
        async || {
            Ok(pods
                .list(&lp)
                .await?
                .items
                .into_iter()
                .find(|p| !presents(p) && restarted(p)))
        },
    )
    .await
    .expect("a controller that presents no certificate exits");
    assert!(!is_ready(&without), "never Ready");
    let with: Vec<_> = pods
        .list(&lp)
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(presents)
        .collect();
    assert!(
        with.len() == 1 && is_ready(&with[0]) && !restarted(&with[0]),
        "the controller that presents it stays Ready"
    );
    assert_eq!(case.downtime_ms(), 0);
}

/// The schema and CEL rules of `clientTLS`: what each source takes, and no
/// change once set (the operator would otherwise be asked to swap the
/// certificate of a migration under way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_is_checked_at_admission_and_cannot_change() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    let with = |tls: Value| json!({ "proxyDeployment": PROXY, "dryRun": true, "adminApi": { "clientTLS": tls } });
    let refused = [
        json!({ "source": "Secret" }),
        json!({ "source": "Secret", "caSecretName": "admin-ca" }),
        json!({ "source": "Generate", "secretName": "admin-client" }),
        json!({ "source": "Generate", "caSecretName": "admin-ca" }),
        json!({ "source": "Other" }),
        json!({ "source": "Secret", "secretName": "Bad_Name" }),
        json!({ "secretName": "admin-client" }),
    ];
    for (i, tls) in refused.into_iter().enumerate() {
        let result = case.apply(&format!("refused-{i}"), with(tls.clone())).await;
        assert!(
            matches!(&result, Err(kube::Error::Api(e)) if e.code == 422),
            "{tls}: {result:?}"
        );
    }
    case.start("generate", with(json!({ "source": "Generate" })))
        .await;
    case.start("plain", json!({ "proxyDeployment": PROXY, "dryRun": true }))
        .await;
    let changes = [
        (
            "generate",
            json!({ "clientTLS": { "source": "Secret", "secretName": "admin-client" } }),
        ),
        ("generate", json!({ "clientTLS": null })),
        ("plain", json!({ "clientTLS": { "source": "Generate" } })),
    ];
    for (name, admin_api) in changes {
        let patch = json!({ "spec": { "adminApi": admin_api } });
        let result = case
            .migrations()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await;
        match result {
            Err(kube::Error::Api(e)) if e.code == 422 => assert!(
                e.message
                    .contains("adminApi.clientTLS cannot change once set"),
                "{name} {admin_api}: {}",
                e.message
            ),
            other => panic!("{name} {admin_api}: {other:?}"),
        }
    }
    // Not a rule that refuses every update.
    let patch = json!({ "spec": { "adminApi": { "clientTLS": { "source": "Generate" } }, "paused": true } });
    case.migrations()
        .patch(
            "generate",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("the same clientTLS, paused set");
}

/// A crash in the middle of generating, replayed: the CA ConfigMap was
/// created and a Secret with it as owner too, but the write that records
/// which Secret goes with which certificate never happened. The operator
/// cannot read that Secret, so it never uses it: it generates anew under a
/// new name, and the orphan goes with the ConfigMap on rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_generation_is_done_again_and_its_leftover_never_used() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(case.client.clone(), &case.ns);
    let unfinished: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": CA_CONFIG_MAP,
            "labels": { "app.kubernetes.io/managed-by": "sidecar-migrator" },
            "annotations": { "sidecar-migrator.dev/migration": "kong" } },
    }))
    .expect("configmap");
    let unfinished = config_maps
        .create(&PostParams::default(), &unfinished)
        .await
        .expect("the ConfigMap a crash left");
    let leftover = "kong-kong-controller-admin-api-keypair-0000000000";
    let secrets: Api<Secret> = Api::namespaced(case.client.clone(), &case.ns);
    let orphan: Secret = serde_json::from_value(json!({
        "metadata": { "name": leftover, "ownerReferences": [ { "apiVersion": "v1",
            "kind": "ConfigMap", "name": CA_CONFIG_MAP, "uid": unfinished.uid() } ] },
        "type": "kubernetes.io/tls",
        "stringData": { "tls.crt": "lost", "tls.key": "lost" },
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &orphan)
        .await
        .expect("the Secret a crash left");
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "adminApi": { "clientTLS": { "source": "Generate" } } }),
    )
    .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    let ca = config_maps
        .get(CA_CONFIG_MAP)
        .await
        .expect("the CA ConfigMap");
    assert_eq!(
        ca.uid(),
        unfinished.uid(),
        "the unfinished ConfigMap is completed"
    );
    let secret_name = ca
        .annotations()
        .get(CLIENT_SECRET_ANNOTATION)
        .cloned()
        .expect("completed");
    assert_ne!(secret_name, leftover, "the leftover is never used");
    assert_controller_presents(&case, &secret_name).await;
    assert_eq!(case.downtime_ms(), 0);
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await;
    for name in [leftover, secret_name.as_str()] {
        wait_for(DEADLINE, &format!("Secret {name} to be gone"), async || {
            Ok(secrets.get_opt(name).await?.is_none().then_some(()))
        })
        .await
        .expect("rollback's deletion of the ConfigMap takes every Secret it owns");
    }
    case.assert_nothing_refused("kong").await;
}
