//! Admin API mTLS (`spec.adminApi.clientTLS`) through the steps.

use super::*;
use k8s_openapi::api::core::v1::ConfigMap;

const GENERATE: &str = "Generate";

fn tls_spec(tls: Value) -> Value {
    json!({ "adminApi": { "networkPolicy": false, "clientTLS": tls } })
}

fn generate() -> Value {
    tls_spec(json!({ "source": GENERATE }))
}

fn user_secret() -> Value {
    tls_spec(json!({ "source": "Secret", "secretName": "admin-client" }))
}

/// The CA ConfigMap as the executor leaves it: `complete` once the
/// certificate and the Secret's name are written.
fn ca(m: &SidecarMigration, d: &Deployment, complete: bool) -> ConfigMap {
    let mut cm = render::client_ca_config_map(m, d);
    cm.metadata.uid = Some("uid-ca".into());
    if complete {
        cm.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                CLIENT_SECRET_ANNOTATION.into(),
                "kong-kong-controller-admin-api-keypair-0a1b2c3d4e".into(),
            );
        cm.data = Some([("tls.crt".to_string(), "CERT".to_string())].into());
    }
    cm
}

fn foreign_ca() -> ConfigMap {
    serde_json::from_value(
        json!({ "metadata": { "name": "kong-kong-admin-client-ca", "namespace": NS, "uid": "uid-ca" },
        "data": { "tls.crt": "someone else's" } }),
    )
    .expect("configmap")
}

fn pod_spec(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
}

fn volume(d: &Deployment, name: &str) -> Option<Value> {
    pod_spec(d)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .map(|v| serde_json::to_value(v).expect("json"))
}

/// The chart's sidecar rendering with its `clear-stale-pid` init container,
/// which carries the gateway env too.
fn with_init_container(mut d: Deployment) -> Deployment {
    let pod = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("pod");
    pod.init_containers = Some(vec![
        serde_json::from_value(json!({ "name": "clear-stale-pid", "image": "kong:3.9",
            "env": [ { "name": "KONG_ADMIN_LISTEN", "value": "127.0.0.1:8444 http2 ssl" },
                     { "name": "KONG_KIC", "value": "on" } ],
            "volumeMounts": [ { "name": "prefix", "mountPath": "/kong_prefix/" } ] }))
        .expect("init container"),
    ]);
    d
}

#[test]
fn the_gateway_demands_a_client_certificate_and_rollback_restores_the_template_exactly() {
    let d = with_init_container(sidecar_deployment("kong/kubernetes-ingress-controller:3.4"));
    let cases = [
        (
            generate(),
            json!({ "name": "admin-client-ca", "configMap": { "name": "kong-kong-admin-client-ca" } }),
        ),
        (
            user_secret(),
            json!({ "name": "admin-client-ca", "secret": { "secretName": "admin-client",
                "items": [ { "key": "tls.crt", "path": "tls.crt" } ] } }),
        ),
        (
            tls_spec(
                json!({ "source": "Secret", "secretName": "admin-client", "caSecretName": "admin-ca" }),
            ),
            json!({ "name": "admin-client-ca", "secret": { "secretName": "admin-ca",
                "items": [ { "key": "tls.crt", "path": "tls.crt" } ] } }),
        ),
    ];
    for (spec, ca_volume) in cases {
        let m = scm(spec.clone());
        let original = record_original(&m.spec, &d, None, &m).expect("record");
        let migrated = render::with_original_env(
            with_rollout(
                migrate_template(&d, &m.spec),
                Rollout::Held {
                    approval_hold: false,
                },
                &original,
            ),
            &d,
            &m.spec,
        );
        assert_eq!(
            volume(&migrated, "admin-client-ca"),
            Some(ca_volume),
            "{spec}"
        );
        let pod = pod_spec(&migrated);
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            assert_eq!(
                env_value(c, "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT").as_deref(),
                Some("on"),
                "{spec}: {}",
                c.name
            );
            assert_eq!(
                env_value(c, "KONG_NGINX_ADMIN_SSL_CLIENT_CERTIFICATE").as_deref(),
                Some("/etc/admin-client-ca/tls.crt"),
                "{spec}: {}",
                c.name
            );
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|v| v.name == "admin-client-ca"
                        && v.mount_path == "/etc/admin-client-ca/"
                        && v.read_only == Some(true)),
                "{spec}: {}",
                c.name
            );
        }
        // The chart's env is sorted: the two land in their alphabetical place.
        let names: Vec<&str> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "KONG_ADMIN_LISTEN",
                "KONG_DATABASE",
                "KONG_NGINX_ADMIN_SSL_CLIENT_CERTIFICATE",
                "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT"
            ],
            "{spec}"
        );
        assert_eq!(
            migrate_template(&migrated, &m.spec),
            migrated,
            "{spec}: migrating twice changes nothing"
        );
        let back = render::without_original_env(with_rollout(
            restore_template(&migrated, &m.spec, &original),
            Rollout::Original,
            &original,
        ));
        assert_eq!(
            back, d,
            "{spec}: rollback restores the sidecar rendering exactly"
        );
    }
}

#[test]
fn the_certificate_is_generated_before_the_gateways_demand_one() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = in_phase(generate(), Phase::DisablingSidecar, &d);
    let cases: Vec<(&str, Option<ConfigMap>, Option<&str>)> = vec![
        ("no ConfigMap yet", None, Some("generate")),
        (
            "an unfinished one of ours (a crash before its last write)",
            Some(ca(&m, &d, false)),
            Some("generate"),
        ),
        ("complete", Some(ca(&m, &d, true)), None),
        (
            "someone else's",
            Some(foreign_ca()),
            Some("ClientCaNameTaken"),
        ),
    ];
    for (name, client_ca, want) in cases {
        let obs = Observed {
            proxy: Some(d.clone()),
            client_ca,
            ..Default::default()
        };
        let p = plan(&m, &obs, later(1));
        let generates = matches!(
            p.actions.first(),
            Some(Action::GenerateClientCertificate(c))
                if c.metadata.name.as_deref() == Some("kong-kong-admin-client-ca")
        );
        match want {
            Some("generate") => {
                assert!(generates, "{name}: {:?}", p.actions);
                assert!(
                    matches!(p.actions.get(1), Some(Action::ReplaceProxy(_))),
                    "{name}: the gateways change only after it: {:?}",
                    p.actions
                );
            }
            None => {
                assert!(!generates, "{name}");
                assert!(
                    matches!(p.actions.first(), Some(Action::ReplaceProxy(_))),
                    "{name}"
                );
            }
            Some(reason) => {
                assert_eq!(p.status.phase, Phase::Failed, "{name}");
                assert_eq!(cond(&p, "Stalled").reason, reason, "{name}");
                assert!(p.actions.is_empty(), "{name}: nothing changed");
            }
        }
    }
}

#[test]
fn validating_refuses_what_mtls_cannot_be_added_to() {
    let kic = "kong/kubernetes-ingress-controller:3.4";
    let d = sidecar_deployment(kic);
    let env = |container: usize, name: &str, value: &str| {
        let mut d = sidecar_deployment(kic);
        d.spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("pod")
            .containers[container]
            .env
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(json!({ "name": name, "value": value })).expect("env"));
        d
    };
    let verifying = env(1, "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT", "on");
    let presenting = env(
        0,
        "CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE",
        "/etc/secrets/admin-api-cert/tls.crt",
    );
    let cases: Vec<(&str, Value, Observed, Option<&str>)> = vec![
        (
            "a missing user Secret",
            user_secret(),
            Observed {
                proxy: Some(d.clone()),
                missing_client_secrets: vec!["admin-client".into()],
                ..Default::default()
            },
            Some("ClientCertificateSecretNotFound"),
        ),
        (
            "a gateway that demands client certificates already",
            generate(),
            Observed {
                proxy: Some(verifying),
                ..Default::default()
            },
            Some("AdminApiTlsAlreadyConfigured"),
        ),
        (
            "a sidecar that presents one already",
            user_secret(),
            Observed {
                proxy: Some(presenting),
                ..Default::default()
            },
            Some("AdminApiTlsAlreadyConfigured"),
        ),
        (
            "someone else's CA ConfigMap",
            generate(),
            Observed {
                proxy: Some(d.clone()),
                client_ca: Some(foreign_ca()),
                ..Default::default()
            },
            Some("ClientCaNameTaken"),
        ),
        (
            "a user Secret that exists",
            user_secret(),
            Observed {
                proxy: Some(d.clone()),
                ..Default::default()
            },
            None,
        ),
        (
            "Generate",
            generate(),
            Observed {
                proxy: Some(d.clone()),
                ..Default::default()
            },
            None,
        ),
    ];
    for (name, spec, obs, want) in cases {
        let p = plan(&scm(spec), &obs, now());
        match want {
            Some(reason) => {
                assert_eq!(p.status.phase, Phase::Failed, "{name}");
                assert_eq!(cond(&p, "Stalled").reason, reason, "{name}");
                assert!(p.status.original.is_none(), "{name}: nothing recorded");
                assert!(p.actions.is_empty(), "{name}: nothing changed");
            }
            None => assert_eq!(p.status.phase, Phase::DisablingSidecar, "{name}"),
        }
    }
}

#[test]
fn the_controller_presents_the_certificate_once_it_is_there() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let cases: Vec<(&str, Value, bool, Option<&str>)> = vec![
        (
            "generated, recorded",
            generate(),
            true,
            Some("kong-kong-controller-admin-api-keypair-0a1b2c3d4e"),
        ),
        ("generated, not recorded yet", generate(), false, None),
        (
            "a user's Secret",
            user_secret(),
            false,
            Some("admin-client"),
        ),
    ];
    for (name, spec, complete, secret) in cases {
        let m = in_phase(spec, Phase::DeployingController, &d);
        let done = migrated(&d, &m, false);
        let obs = Observed {
            proxy: Some(done),
            admin_service: Some(admin_service(&m, &d, true)),
            pods: vec![started(pod("new", false, false, "10.0.0.2"))],
            admin_slices: vec![slice_listing(&["new"])],
            client_ca: Some(ca(&m, &d, complete)),
            ..Default::default()
        };
        let p = plan(&m, &obs, later(1));
        let Some(secret) = secret else {
            assert!(p.actions.is_empty(), "{name}: waits: {:?}", p.actions);
            assert!(
                p.status
                    .message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("client certificate"),
                "{name}"
            );
            continue;
        };
        let Some(Action::ApplyController(objs)) = p.actions.first() else {
            panic!("{name}: {:?}", p.actions)
        };
        let c = &pod_spec(&objs.deployment).containers[0];
        assert_eq!(
            env_value(c, "CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE").as_deref(),
            Some("/etc/secrets/admin-api-cert/tls.crt"),
            "{name}"
        );
        assert_eq!(
            env_value(c, "CONTROLLER_KONG_ADMIN_TLS_CLIENT_KEY_FILE").as_deref(),
            Some("/etc/secrets/admin-api-cert/tls.key"),
            "{name}"
        );
        assert!(
            c.volume_mounts.iter().flatten().any(
                |v| v.name == "admin-api-cert" && v.mount_path == "/etc/secrets/admin-api-cert"
            ),
            "{name}"
        );
        assert_eq!(
            volume(&objs.deployment, "admin-api-cert"),
            Some(json!({ "name": "admin-api-cert", "secret": { "secretName": secret } })),
            "{name}"
        );
    }
}

#[test]
fn rollback_deletes_only_our_ca_config_map() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    for (name, ours, deletes) in [("ours", true, true), ("someone else's", false, false)] {
        let m = in_phase(
            json!({ "rollback": true, "adminApi": { "networkPolicy": false, "clientTLS": { "source": GENERATE } } }),
            Phase::DeletingLegacyPods,
            &d,
        );
        let mut restored = with_rollout(
            restore_template(&migrated(&d, &m, false), &m.spec, &recorded(&m)),
            Rollout::Held {
                approval_hold: false,
            },
            &recorded(&m),
        );
        restored.status = Some(settled(1));
        let client_ca = if ours { ca(&m, &d, true) } else { foreign_ca() };
        let obs = Observed {
            proxy: Some(restored),
            pods: vec![pod("old", true, true, "10.0.0.1")],
            client_ca: Some(client_ca),
            ..Default::default()
        };
        let p = plan(&m, &obs, later(1));
        let deleted = p
            .actions
            .iter()
            .any(|a| matches!(a, Action::DeleteClientCa(uid) if uid == "uid-ca"));
        assert_eq!(deleted, deletes, "{name}: {:?}", p.actions);
    }
}

#[test]
fn the_handoff_carries_the_charts_mtls_values() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let cases = [
        (
            generate(),
            "kong-kong-controller-admin-api-keypair-0a1b2c3d4e",
            "kong-kong-controller-admin-api-keypair-0a1b2c3d4e",
            0,
        ),
        (
            tls_spec(
                json!({ "source": "Secret", "secretName": "admin-client", "caSecretName": "admin-ca" }),
            ),
            "admin-client",
            "admin-ca",
            1,
        ),
    ];
    for (spec, secret, ca_secret, notes) in cases {
        let m = in_phase(
            {
                let mut s = spec.clone();
                s["controller"] = json!({ "release": "kong-controller" });
                s
            },
            Phase::DeletingLegacyPods,
            &d,
        );
        let h = handoff(&m, &d, None, Some(secret)).expect("a Helm release");
        let values =
            |i: usize| -> Value { serde_saphyr::from_str(&h.releases[i].values).expect("yaml") };
        assert_eq!(
            values(0)["ingressController"]["adminApi"]["tls"]["client"],
            json!({ "enabled": true, "certProvided": true, "secretName": secret }),
            "{spec}"
        );
        assert_eq!(
            values(1)["admin"]["tls"]["client"],
            json!({ "secretName": ca_secret }),
            "{spec}"
        );
        let rolls = h
            .notes
            .iter()
            .filter(|n| n.contains("rolls the gateway pods once"))
            .count();
        assert_eq!(rolls, notes, "{spec}: {:?}", h.notes);
    }
}

#[test]
fn the_dry_run_plan_lists_what_mtls_adds() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let cases = [
        (
            generate(),
            vec![
                (
                    Phase::DisablingSidecar,
                    "ConfigMap/kong-kong-admin-client-ca",
                ),
                (
                    Phase::DisablingSidecar,
                    "Secret/kong-controller-kong-admin-api-keypair-<random>",
                ),
                (Phase::DisablingSidecar, "Deployment/kong-kong"),
                (
                    Phase::DeployingController,
                    "Deployment/kong-controller-kong",
                ),
            ],
        ),
        (
            user_secret(),
            vec![
                (Phase::DisablingSidecar, "Deployment/kong-kong"),
                (
                    Phase::DeployingController,
                    "Deployment/kong-controller-kong",
                ),
            ],
        ),
    ];
    for (mut spec, want) in cases {
        spec["dryRun"] = json!(true);
        let p = plan(
            &scm(spec.clone()),
            &Observed {
                proxy: Some(d.clone()),
                ..Default::default()
            },
            now(),
        );
        let mtls: Vec<(Phase, &str)> = p
            .status
            .plan
            .iter()
            .filter(|c| c.change.contains("certificate"))
            .map(|c| (c.step, c.object.as_str()))
            .collect();
        assert_eq!(mtls, want, "{spec}");
        assert!(p.actions.is_empty(), "{spec}: a dry run changes nothing");
    }
}

#[test]
fn an_admin_api_that_stops_demanding_a_client_certificate_is_drift() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = in_phase(generate(), Phase::WaitingForAdminService, &d);
    let demanding = migrated(&d, &m, false);
    let mut open = demanding.clone();
    open.spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("pod")
        .containers[0]
        .env
        .get_or_insert_with(Vec::new)
        .retain(|e| e.name != "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT");
    for (name, proxy, drift) in [("demanding", demanding, false), ("open", open, true)] {
        let p = plan(
            &m,
            &Observed {
                proxy: Some(proxy),
                client_ca: Some(ca(&m, &d, true)),
                ..Default::default()
            },
            later(1),
        );
        assert_eq!(
            has_event(&p, "DriftDetected"),
            drift,
            "{name}: {:?}",
            p.status.message
        );
        if drift {
            assert!(p.actions.is_empty(), "{name}: not overwritten");
            assert!(
                p.status
                    .message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("client certificate"),
                "{name}"
            );
        }
    }
}
