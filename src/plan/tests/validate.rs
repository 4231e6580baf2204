//! Validating: bad input, dry run, warnings, already migrated.

use super::*;

#[test]
fn bad_input_is_reported_and_changes_nothing() {
    let kic = "kong/kubernetes-ingress-controller:3.4.1";
    let no_proxy_container = without_container(sidecar_deployment(kic), "proxy");
    let foreign_controller: Deployment = serde_json::from_value(
        json!({ "metadata": { "name": "kong-kong-controller", "namespace": NS } }),
    )
    .expect("deployment");
    let mut rival = scm(json!({}));
    rival.metadata.name = Some("earlier".into());
    rival.status = Some(SidecarMigrationStatus {
        phase: Phase::DisablingSidecar,
        original: Some(Original::default()),
        ..Default::default()
    });
    let without_sidecar = without_container(sidecar_deployment(kic), "ingress-controller");
    let cases: Vec<(&str, Observed, &str)> = vec![
        (
            "missing deployment",
            Observed::default(),
            "ProxyDeploymentNotFound",
        ),
        (
            "no proxy container",
            Observed {
                proxy: Some(no_proxy_container),
                ..Default::default()
            },
            "ProxyContainerNotFound",
        ),
        (
            "KIC older than 2.11",
            Observed {
                proxy: Some(sidecar_deployment(
                    "kong/kubernetes-ingress-controller:2.10.4",
                )),
                ..Default::default()
            },
            "UnsupportedControllerVersion",
        ),
        (
            "controller name taken",
            Observed {
                proxy: Some(sidecar_deployment(kic)),
                controller: Some(foreign_controller),
                ..Default::default()
            },
            "ControllerNameTaken",
        ),
        (
            "second migration of the same Deployment",
            Observed {
                proxy: Some(sidecar_deployment(kic)),
                others: vec![rival.clone()],
                ..Default::default()
            },
            "DuplicateMigration",
        ),
        (
            "second migration after the first removed the sidecar",
            Observed {
                proxy: Some(without_sidecar),
                others: vec![rival],
                ..Default::default()
            },
            "DuplicateMigration",
        ),
    ];
    for (name, obs, reason) in cases {
        let p = plan(&scm(json!({})), &obs, now());
        assert_eq!(p.status.phase, Phase::Failed, "{name}");
        assert!(
            p.actions.is_empty(),
            "{name}: nothing may change, got {:?}",
            p.actions
        );
        assert_eq!(cond(&p, "Stalled").status, "True", "{name}");
        assert_eq!(cond(&p, "Stalled").reason, reason, "{name}");
        assert_eq!(cond(&p, "Ready").status, "False", "{name}");
        assert!(has_event(&p, reason), "{name}: event {reason}");
        assert!(p.status.original.is_none(), "{name}");
        assert!(
            p.status.message.as_deref().is_some_and(|m| m.len() > 20),
            "{name}: says how to fix it"
        );
    }
}

#[test]
fn already_migrated_deployment_succeeds_with_a_message() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = scm(json!({}));
    let gateway = migrate_template(&d, &m.spec);
    let p = plan(
        &m,
        &Observed {
            proxy: Some(gateway),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::Succeeded);
    assert!(p.actions.is_empty());
    assert!(has_event(&p, "AlreadyMigrated"));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("already"))
    );
}

#[test]
fn failed_validation_goes_on_once_the_cause_is_fixed() {
    let mut m = scm(json!({}));
    m.status = Some(plan(&m, &Observed::default(), now()).status);
    let p = plan(
        &m,
        &Observed {
            proxy: Some(sidecar_deployment("kong/kubernetes-ingress-controller:3.4")),
            ..Default::default()
        },
        later(5),
    );
    assert_eq!(p.status.phase, Phase::DisablingSidecar);
    assert!(p.status.original.is_some());
}

#[test]
fn dry_run_fills_the_plan_and_changes_nothing() {
    let obs = Observed {
        proxy: Some(sidecar_deployment("kong/kubernetes-ingress-controller:3.4")),
        pods: vec![pod("kong-kong-1", true, true, "10.0.0.1")],
        ..Default::default()
    };
    let p = plan(&scm(json!({ "dryRun": true })), &obs, now());
    assert!(p.actions.is_empty());
    assert_eq!(p.status.phase, Phase::Pending);
    assert_eq!(cond(&p, "Ready").reason, "DryRun");
    assert!(p.status.original.is_none());
    let changes: Vec<String> = p
        .status
        .plan
        .iter()
        .map(|c| format!("{} {}", c.object, c.change))
        .collect();
    for want in [
        "Deployment/kong-kong remove container ingress-controller",
        "Deployment/kong-kong remove env KONG_KIC",
        // Helm's release kong: the default controller release names it.
        "Deployment/kong-controller-kong create with image kong/kubernetes-ingress-controller:3.4",
        "Service/kong-kong-admin create headless Service",
        "Pod/kong-kong-1 retired by the rolling update",
    ] {
        assert!(
            changes.iter().any(|c| c.starts_with(want)),
            "plan lacks {want:?}: {changes:#?}"
        );
    }
}

#[test]
fn warnings_name_the_values_gitops_must_commit() {
    let values = [
        "ingressController.enabled: false",
        "admin.enabled: true",
        "admin.type: ClusterIP",
        "admin.clusterIP: None",
        "deployment.kong.enabled: false",
        "ingressController.gatewayDiscovery.enabled: true",
        "ingressController.gatewayDiscovery.adminApiService.name: kong-kong-admin",
        "ingressController.env.election_id: kong-ingress-controller-leader-kong-discovery",
        "ingressController.env.kong_admin_svc_port_names: kong-admin-tls",
    ];
    let gitops = |labels: Value, annotations: Value| {
        let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4.1");
        d.metadata.labels = serde_json::from_value(labels).expect("labels");
        d.metadata.annotations = serde_json::from_value(annotations).expect("annotations");
        d
    };
    let cases = [
        (
            "Helm",
            sidecar_deployment("kong/kubernetes-ingress-controller:3.4.1"),
            "Helm release kong",
        ),
        (
            "Argo CD",
            gitops(json!({ "argocd.argoproj.io/instance": "kong" }), json!({})),
            "Argo CD",
        ),
        (
            "Flux",
            gitops(json!({ "helm.toolkit.fluxcd.io/name": "kong" }), json!({})),
            "Flux",
        ),
    ];
    for (name, proxy, owner) in cases {
        let p = plan(
            &scm(json!({})),
            &Observed {
                proxy: Some(proxy),
                ..Default::default()
            },
            now(),
        );
        let warning = p
            .status
            .warnings
            .iter()
            .find(|w| w.contains(&format!("is managed by {owner}")))
            .unwrap_or_else(|| panic!("{name}: no warning in {:?}", p.status.warnings));
        for v in values {
            assert!(warning.contains(v), "{name}: {v:?} missing from {warning}");
        }
        assert!(
            p.events
                .iter()
                .any(|e| e.warning && e.reason == "ValidationWarning" && e.note == *warning),
            "{name}: no event"
        );
    }
    // A tag-less image is a warning of its own.
    let p = plan(
        &scm(json!({})),
        &Observed {
            proxy: Some(sidecar_deployment(
                "kong/kubernetes-ingress-controller:latest",
            )),
            ..Default::default()
        },
        now(),
    );
    assert!(
        p.status
            .warnings
            .iter()
            .any(|w| w.contains("names no version"))
    );
}

/// The sidecar Deployment with Kong `kong` probed for readiness on `path`.
fn probed(kong: &str, path: &str) -> Deployment {
    let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4.1");
    let proxy = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.iter_mut().find(|c| c.name == "proxy"))
        .expect("proxy container");
    proxy.image = Some(kong.into());
    proxy.readiness_probe = Some(
        serde_json::from_value(json!({ "httpGet": { "path": path, "port": "status" } }))
            .expect("probe"),
    );
    d
}

fn probe_path(d: &Deployment) -> Option<String> {
    template_container(d, "proxy")?
        .readiness_probe
        .as_ref()?
        .http_get
        .as_ref()?
        .path
        .clone()
}

#[test]
fn a_probe_that_passes_before_configuration_is_rewritten_or_refused() {
    // (Kong image, probe path, refused, path once migrated)
    let cases = [
        ("kong:3.2", "/status", true, "/status"),
        ("kong:3.2.2", "/healthz", true, "/healthz"),
        ("kong:3.3", "/status", false, "/status/ready"),
        ("kong:3.9", "/status", false, "/status/ready"),
        ("kong:latest", "/status", false, "/status/ready"),
        ("kong:3.9", "/status/ready", false, "/status/ready"),
        ("kong:3.2", "/status/ready", false, "/status/ready"),
    ];
    for (kong, path, refused, migrated_path) in cases {
        let d = probed(kong, path);
        let m = scm(json!({}));
        let p = plan(
            &m,
            &Observed {
                proxy: Some(d.clone()),
                ..Default::default()
            },
            now(),
        );
        let why = format!("{kong} {path}");
        if refused {
            assert_eq!(p.status.phase, Phase::Failed, "{why}");
            assert_eq!(
                cond(&p, "Stalled").reason,
                "ReadinessProbeTooEarly",
                "{why}"
            );
            assert!(p.actions.is_empty(), "{why}");
            let message = p.status.message.clone().unwrap_or_default();
            assert!(message.contains("2.26.0"), "{why}: {message}");
            continue;
        }
        assert_ne!(
            p.status.phase,
            Phase::Failed,
            "{why}: {:?}",
            p.status.message
        );
        let m = in_phase(json!({}), Phase::DisablingSidecar, &d);
        let original = recorded(&m);
        let migrated = migrate_template(&d, &m.spec);
        assert_eq!(
            probe_path(&migrated).as_deref(),
            Some(migrated_path),
            "{why}"
        );
        let back = restore_template(&migrated, &m.spec, &original);
        assert_eq!(probe_path(&back).as_deref(), Some(path), "{why}: rollback");
    }
    // DB mode needs no push: its probe is left alone.
    let mut d = probed("kong:3.9", "/status");
    if let Some(c) = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.iter_mut().find(|c| c.name == "proxy"))
    {
        c.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
            name: "KONG_DATABASE".into(),
            value: Some("postgres".into()),
            ..Default::default()
        }]);
    }
    let m = scm(json!({}));
    assert_eq!(
        probe_path(&migrate_template(&d, &m.spec)).as_deref(),
        Some("/status")
    );
}

/// A Deployment with the sidecar's container and the proxy's, changed by `f`.
fn edited(f: impl Fn(&mut k8s_openapi::api::core::v1::PodSpec)) -> Deployment {
    let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        f(pod);
    }
    d
}

fn service(name: &str, selector: Value, annotations: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NS, "annotations": annotations },
        "spec": { "selector": selector, "ports": [ { "port": 80 } ] }
    }))
    .expect("service")
}

#[test]
fn the_tenant_boundary_is_held_before_anything_changes() {
    let kic = || sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let chart_selector = json!({ "app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong", "app.kubernetes.io/component": "app" });
    let named = |kind: &str| -> Value {
        json!({ "metadata": { "name": "kong-kong-controller-endpointslices", "namespace": NS }, "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": "x" } })
    };
    let role: Role = serde_json::from_value(
        json!({ "metadata": { "name": "kong-kong-controller-endpointslices", "namespace": NS } }),
    )
    .expect("role");
    let binding: RoleBinding = serde_json::from_value(named("Role")).expect("binding");
    let long = "a".repeat(253);
    let cases: Vec<(&str, Value, Observed, &str)> = vec![
        (
            "a 253-character Deployment name",
            json!({ "proxyDeployment": long }),
            Observed::default(),
            "NameTooLong",
        ),
        (
            "a Deployment name with dots",
            json!({ "proxyDeployment": "kong.kong" }),
            Observed::default(),
            "NameTooLong",
        ),
        (
            "a foreign controller image",
            json!({ "controller": { "image": "ghcr.io/evil/kubernetes-ingress-controller:3.4" } }),
            Observed {
                proxy: Some(kic()),
                ..Default::default()
            },
            "ControllerImageNotAllowed",
        ),
        (
            "a gateway that is not Kong",
            json!({}),
            Observed {
                proxy: Some(edited(|p| {
                    p.containers[1].image = Some("nginx:1.27".into())
                })),
                ..Default::default()
            },
            "NotAKongInstall",
        ),
        (
            "a sidecar that is not KIC",
            json!({}),
            Observed {
                proxy: Some(edited(|p| {
                    p.containers[0].image = Some("busybox:1.36".into())
                })),
                ..Default::default()
            },
            "NotAKongInstall",
        ),
        (
            "a sidecar without CONTROLLER_ env",
            json!({}),
            Observed {
                proxy: Some(edited(|p| p.containers[0].env = None)),
                ..Default::default()
            },
            "NotAKongInstall",
        ),
        (
            "a controller that talks to a remote Admin API",
            json!({}),
            Observed {
                proxy: Some(edited(|p| {
                    if let Some(e) = p.containers[0].env.as_mut() {
                        e[0].value = Some("https://kong-admin.elsewhere:8444".into());
                    }
                })),
                ..Default::default()
            },
            "NotAKongInstall",
        ),
        (
            "another app's Service as the admin Service",
            json!({}),
            Observed {
                proxy: Some(kic()),
                admin_service: Some(service(
                    "kong-kong-admin",
                    json!({ "app": "billing" }),
                    json!({}),
                )),
                ..Default::default()
            },
            "AdminServiceNotKong",
        ),
        (
            "a Service selecting more than the proxy pods",
            json!({}),
            Observed {
                proxy: Some(kic()),
                admin_service: Some(service(
                    "kong-kong-admin",
                    json!({ "app.kubernetes.io/name": "kong" }),
                    json!({}),
                )),
                ..Default::default()
            },
            "AdminServiceNotKong",
        ),
        (
            "another migration's Service",
            json!({}),
            Observed {
                proxy: Some(kic()),
                admin_service: Some(service(
                    "kong-kong-admin",
                    chart_selector.clone(),
                    json!({ (MIGRATION_ANNOTATION): "other" }),
                )),
                ..Default::default()
            },
            "AdminServiceNotKong",
        ),
        (
            "a foreign Role by the controller's RBAC name",
            json!({}),
            Observed {
                proxy: Some(kic()),
                controller_role: Some(role),
                ..Default::default()
            },
            "RoleNameTaken",
        ),
        (
            "an Admin API without a TLS listen",
            json!({}),
            Observed {
                proxy: Some(edited(|p| {
                    if let Some(e) = p.containers[1].env.as_mut() {
                        e[0].value = Some("127.0.0.1:8001".into());
                    }
                })),
                ..Default::default()
            },
            "AdminListenNotTls",
        ),
        (
            "a foreign RoleBinding by the controller's RBAC name",
            json!({}),
            Observed {
                proxy: Some(kic()),
                controller_role_binding: Some(binding),
                ..Default::default()
            },
            "RoleBindingNameTaken",
        ),
    ];
    for (name, spec, obs, reason) in cases {
        let p = plan(&scm(spec), &obs, now());
        assert_eq!(
            p.status.phase,
            Phase::Failed,
            "{name}: {:?}",
            p.status.message
        );
        assert!(p.actions.is_empty(), "{name}: {:?}", p.actions);
        assert_eq!(cond(&p, "Stalled").reason, reason, "{name}");
        assert!(has_event(&p, reason), "{name}");
        assert!(p.status.original.is_none(), "{name}");
    }
}

#[test]
fn the_install_s_own_objects_and_allowed_images_pass() {
    let kic = || sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let chart_selector = json!({ "app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong", "app.kubernetes.io/component": "app" });
    let allowed = Policy {
        allowed_controller_images: vec!["registry.local/mirror/*".into()],
    };
    let cases: Vec<(&str, Value, Observed)> = vec![
        (
            "the chart's sidecar install",
            json!({}),
            Observed {
                proxy: Some(kic()),
                ..Default::default()
            },
        ),
        (
            "another tag of the sidecar's image",
            json!({ "controller": { "image": "docker.io/kong/kubernetes-ingress-controller:3.5.1" } }),
            Observed {
                proxy: Some(kic()),
                ..Default::default()
            },
        ),
        (
            "an image the operator allows",
            json!({ "controller": { "image": "registry.local/mirror/kubernetes-ingress-controller:3.4" } }),
            Observed {
                proxy: Some(kic()),
                policy: allowed,
                ..Default::default()
            },
        ),
        (
            "the chart's own admin Service",
            json!({}),
            Observed {
                proxy: Some(kic()),
                admin_service: Some(service("kong-kong-admin", chart_selector, json!({}))),
                ..Default::default()
            },
        ),
        (
            "a 52-character Deployment name",
            json!({ "proxyDeployment": "k".repeat(52) }),
            Observed::default(),
        ),
    ];
    for (name, spec, obs) in cases {
        let p = plan(&scm(spec), &obs, now());
        let reason = cond(&p, "Stalled").reason.clone();
        assert!(
            !matches!(
                reason.as_str(),
                "NameTooLong"
                    | "NotAKongInstall"
                    | "ControllerImageNotAllowed"
                    | "AdminServiceNotKong"
            ),
            "{name}: {:?}",
            p.status.message
        );
    }
}

/// KIC verifies the Admin API's certificate unless told not to; without the
/// sidecar it dials pod IPs (< 3.5) or `pod.<svc>.<ns>.svc` (3.5), so only
/// skip-verify, or 3.5 with a certificate of the user's own, can work.
#[test]
fn an_admin_certificate_kic_cannot_verify_is_refused_before_anything_changes() {
    use k8s_openapi::api::core::v1::EnvVar;
    let install = |kic: &str, skip: Option<Value>, own_certificate: bool| {
        let mut d = sidecar_deployment(kic);
        if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            for c in &mut pod.containers {
                let env = c.env.get_or_insert_with(Vec::new);
                if c.name == "ingress-controller" {
                    env.retain(|e| e.name != "CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY");
                    if let Some(skip) = &skip {
                        let mut var: EnvVar = serde_json::from_value(skip.clone()).expect("env");
                        var.name = "CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY".into();
                        env.push(var);
                    }
                } else if c.name == "proxy" && own_certificate {
                    env.push(EnvVar {
                        name: "KONG_ADMIN_SSL_CERT".into(),
                        value: Some("/etc/admin-tls/tls.crt".into()),
                        value_from: None,
                    });
                }
            }
        }
        d
    };
    let value = |v: &str| Some(json!({ "name": "", "value": v }));
    let from_secret = Some(
        json!({ "name": "", "valueFrom": { "secretKeyRef": { "name": "kic", "key": "skip" } } }),
    );
    // (why, KIC image, skip-verify, own certificate, refused, a warning containing)
    let cases = [
        (
            "the chart's default",
            "kong/kubernetes-ingress-controller:3.4.1",
            value("true"),
            false,
            false,
            None,
        ),
        (
            "Go's other true",
            "kong/kubernetes-ingress-controller:3.4.1",
            value("1"),
            false,
            false,
            None,
        ),
        (
            "unset: KIC verifies, by pod IP",
            "kong/kubernetes-ingress-controller:3.4.1",
            None,
            true,
            true,
            None,
        ),
        (
            "false, by pod IP",
            "kong/kubernetes-ingress-controller:2.12",
            value("false"),
            true,
            true,
            None,
        ),
        (
            "3.5 and Kong's self-signed certificate",
            "kong/kubernetes-ingress-controller:3.5",
            value("false"),
            false,
            true,
            None,
        ),
        (
            "3.5 and a certificate of one's own",
            "kong/kubernetes-ingress-controller:3.5",
            value("false"),
            true,
            false,
            Some("pod.kong-kong-admin."),
        ),
        (
            "from a Secret: cannot tell",
            "kong/kubernetes-ingress-controller:3.4.1",
            from_secret,
            false,
            false,
            Some("valueFrom"),
        ),
    ];
    for (why, kic, skip, own, refused, warning) in cases {
        let p = plan(
            &scm(json!({})),
            &Observed {
                proxy: Some(install(kic, skip, own)),
                ..Default::default()
            },
            now(),
        );
        if refused {
            assert_eq!(p.status.phase, Phase::Failed, "{why}");
            assert_eq!(
                cond(&p, "Stalled").reason,
                "AdminCertificateVerified",
                "{why}"
            );
            assert!(has_event(&p, "AdminCertificateVerified"), "{why}");
            assert!(p.actions.is_empty(), "{why}: nothing may change");
            let message = p.status.message.clone().unwrap_or_default();
            assert!(
                message.contains("CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY=true"),
                "{why}: says how to fix it: {message}"
            );
            continue;
        }
        assert_ne!(
            p.status.phase,
            Phase::Failed,
            "{why}: {:?}",
            p.status.message
        );
        if let Some(w) = warning {
            assert!(
                p.status.warnings.iter().any(|x| x.contains(w)),
                "{why}: no warning with {w:?} in {:?}",
                p.status.warnings
            );
        }
    }
}
