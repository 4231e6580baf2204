//! The forward steps, each acting and then handing over to the next.

use super::*;

#[test]
fn disabling_the_sidecar_records_the_original_first() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let p = plan(
        &scm(json!({})),
        &Observed {
            proxy: Some(d.clone()),
            ..Default::default()
        },
        now(),
    );
    assert_eq!(p.status.phase, Phase::DisablingSidecar);
    let original = p
        .status
        .original
        .as_ref()
        .expect("original recorded with the status write");
    let sidecar: serde_json::Value = original.sidecar.decode().expect("a recorded container");
    assert_eq!(sidecar["name"], "ingress-controller");
    assert_eq!(original.sidecar_index, 0);
    // A secret reference is carried as a reference, never resolved.
    let token = sidecar["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "CONTROLLER_KONG_ADMIN_TOKEN")
        .expect("the token's env entry");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        "kong-admin-token"
    );
    let Some(Action::ReplaceProxy(new)) = p.actions.first() else {
        panic!("replaces the proxy first: {:?}", p.actions)
    };
    let pod = new
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    assert_eq!(container_names(&pod.containers), "proxy");
    let proxy = &pod.containers[0];
    assert_eq!(
        env_value(proxy, "KONG_ADMIN_LISTEN").as_deref(),
        Some("0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl")
    );
    assert_eq!(env_value(proxy, "KONG_KIC"), None);
    assert!(
        proxy
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("admin-tls") && p.container_port == 8444)
    );
    let strategy = new
        .spec
        .as_ref()
        .and_then(|s| s.strategy.clone())
        .and_then(|s| s.rolling_update)
        .expect("rolling update");
    assert_eq!(strategy.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(
        new.metadata.resource_version.as_deref(),
        Some("10"),
        "replace is conditional on what was read"
    );
    let Some(Action::ApplyAdminService(svc)) = p.actions.get(1) else {
        panic!("applies the admin Service: {:?}", p.actions)
    };
    let svc_spec = svc.spec.as_ref().expect("spec");
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(
        svc_spec
            .selector
            .as_ref()
            .and_then(|s| s.get(DISCOVERY_LABEL))
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn kong_order_does_not_select_on_the_discovery_label() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let p = plan(
        &scm(json!({ "cutover": "DeleteLegacyPods" })),
        &Observed {
            proxy: Some(d),
            ..Default::default()
        },
        now(),
    );
    let svc = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyAdminService(s) => Some(s.clone()),
            _ => None,
        })
        .expect("admin Service applied");
    assert!(
        !svc.spec
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .contains_key(DISCOVERY_LABEL)
    );
}

#[test]
fn the_template_round_trips() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = scm(json!({}));
    let original = record_original(&m.spec, &d, None, &m).expect("record");
    let migrated = render::with_original_env(
        with_rollout(
            migrate_template(&d, &m.spec),
            Rollout::Held {
                approval_hold: true,
            },
            &original,
        ),
        &d,
        &m.spec,
    );
    assert_eq!(
        migrate_template(&migrated, &m.spec),
        migrated,
        "migrating twice changes nothing"
    );
    let back = render::without_original_env(with_rollout(
        restore_template(&migrated, &m.spec, &original),
        Rollout::Original,
        &original,
    ));
    assert_eq!(back, d, "rollback restores the sidecar rendering exactly");
    // Before the first write (a crash right after status was written), the
    // live Deployment itself supplies the values.
    assert_eq!(
        with_rollout(
            restore_template(&d, &m.spec, &original),
            Rollout::Original,
            &original
        ),
        d
    );
}

#[test]
fn no_literal_env_value_is_recorded_in_status() {
    let mut d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let secret = "s3cr3t-Pg-pw";
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        for c in &mut pod.containers {
            c.env
                .get_or_insert_with(Vec::new)
                .push(k8s_openapi::api::core::v1::EnvVar {
                    name: "KONG_PG_PASSWORD".into(),
                    value: Some(secret.into()),
                    ..Default::default()
                });
        }
    }
    let m = in_phase(json!({}), Phase::DisablingSidecar, &d);
    let p = plan(
        &m,
        &Observed {
            proxy: Some(d.clone()),
            ..Default::default()
        },
        now(),
    );
    let status = serde_json::to_string(&p.status).expect("status");
    for leaked in [secret, "https://localhost:8444", "kong/kong-kong-proxy"] {
        assert!(!status.contains(leaked), "{leaked} in {status}");
    }
    // The value travels on the Deployment, in the write that removes the sidecar.
    let Some(Action::ReplaceProxy(written)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    let annotation = written
        .annotations()
        .get(ORIGINAL_ENV_ANNOTATION)
        .expect("annotation");
    assert!(annotation.contains(secret));
    // The controller gets the sidecar's values from it; rollback too.
    let original = p.status.original.clone().expect("original");
    let ctrl = controller_objects(&m, written, &original).expect("controller");
    let env = &ctrl
        .deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0]
        .env;
    assert!(
        env.iter()
            .flatten()
            .any(|e| e.value.as_deref() == Some(secret))
    );
    let back = restore_template(written, &m.spec, &original);
    let sidecar = &back
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    assert!(
        sidecar
            .env
            .iter()
            .flatten()
            .any(|e| e.value.as_deref() == Some(secret))
    );
    // Without the annotation and with the sidecar gone, nothing is guessed.
    let stripped = render::without_original_env((**written).clone());
    assert!(
        render::original_unreadable(&original, &stripped, &m.spec)
            .is_some_and(|why| why.contains("KONG_PG_PASSWORD") || why.contains("CONTROLLER_"))
    );
}

#[test]
fn each_forward_step_acts_then_hands_over() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let spec = json!({});
    // DisablingSidecar finished: the next reconcile deploys the controller.
    let m = in_phase(spec.clone(), Phase::DisablingSidecar, &d);
    let done = migrated(&d, &m, false);
    let svc = admin_service(&m, &d, true);
    // The controller waits for a listed new gateway that listens: KIC
    // 3.4.0-3.4.3 exit at once on one that does not answer yet.
    let listed_starting = Observed {
        proxy: Some(done.clone()),
        admin_service: Some(svc.clone()),
        pods: vec![pod("new", false, false, "10.0.0.2")],
        admin_slices: vec![slice_listing(&["new"])],
        ..Default::default()
    };
    let p = plan(&m, &listed_starting, later(1));
    assert!(has_event(&p, "SidecarDisabled"));
    assert_eq!(p.status.phase, Phase::DeployingController);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let mut obs = listed_starting.clone();
    obs.pods = vec![started(pod("new", false, false, "10.0.0.2"))];
    let p = plan(&m, &obs, later(1));
    let Some(Action::ApplyController(objs)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    let c = &objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
        .containers[0];
    assert_eq!(
        env_value(c, "CONTROLLER_KONG_ADMIN_SVC").as_deref(),
        Some("kong/kong-kong-admin")
    );
    assert_eq!(env_value(c, "CONTROLLER_KONG_ADMIN_URL"), None);
    // KIC 2.11/2.12's default also keeps HTTP port names it can never reach.
    assert_eq!(
        env_value(c, "CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES").as_deref(),
        Some("kong-admin-tls")
    );
    // Its own Lease: the sidecars (DB mode) hold the chart's.
    assert_eq!(
        env_value(c, "CONTROLLER_ELECTION_ID").as_deref(),
        Some("kong-ingress-controller-leader-kong-discovery")
    );
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "CONTROLLER_KONG_ADMIN_TOKEN" && e.value_from.is_some())
    );
    let vols = objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.clone());
    assert_eq!(
        vols.map(|v| v.len()),
        Some(1),
        "only the volumes the sidecar mounts"
    );
    assert_eq!(
        objs.role_binding
            .subjects
            .as_ref()
            .map(|s| s[0].name.as_str()),
        Some("kong-kong")
    );

    // WaitingForAdminService needs listed new pods, an Available controller and a Ready new gateway.
    let m = in_phase(spec.clone(), Phase::WaitingForAdminService, &d);
    let mut controller = objs.deployment.clone();
    let base = Observed {
        proxy: Some(migrated(&d, &m, false)),
        admin_service: Some(svc.clone()),
        controller: Some(controller.clone()),
        pods: vec![
            pod("old", true, true, "10.0.0.1"),
            pod("new", false, false, "10.0.0.2"),
        ],
        ..Default::default()
    };
    let p = plan(&m, &base, later(1));
    assert_eq!(p.status.phase, Phase::WaitingForAdminService);
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|s| s.contains("to list a new gateway pod"))
    );
    let listed = Observed {
        admin_slices: vec![slice_listing(&["new"])],
        ..base.clone()
    };
    let p = plan(&m, &listed, later(1));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|s| s.contains("Available")),
        "{:?}",
        p.status.message
    );
    controller.status = Some(settled(1));
    let available = Observed {
        controller: Some(controller.clone()),
        ..listed.clone()
    };
    let p = plan(&m, &available, later(1));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|s| s.contains("turn Ready")),
        "{:?}",
        p.status.message
    );
    let ready = Observed {
        pods: vec![
            pod("old", true, true, "10.0.0.1"),
            pod("new", false, true, "10.0.0.2"),
        ],
        ..available
    };
    let p = plan(&m, &ready, later(1));
    assert!(has_event(&p, "AdminServiceReady"));
    assert_eq!(p.status.phase, Phase::DeletingLegacyPods);
    assert_eq!(p.status.legacy_pods, vec!["old".to_string()]);
    assert!(
        p.actions.is_empty(),
        "ZeroDowntime: the rolling update retires the legacy pod"
    );
    assert_eq!(cond(&p, "Reconciling").status, "True");
}

#[test]
fn the_end_restores_the_rollout_and_succeeds() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = in_phase(json!({}), Phase::DeletingLegacyPods, &d);
    let svc = admin_service(&m, &d, true);
    let obs = Observed {
        proxy: Some(migrated(&d, &m, false)),
        admin_service: Some(svc),
        pods: vec![pod("new", false, true, "10.0.0.2")],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    let Some(Action::ReplaceProxy(restored)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        restored.spec.as_ref().and_then(|s| s.strategy.clone()),
        d.spec.as_ref().and_then(|s| s.strategy.clone())
    );
    let Some(Action::ApplyAdminService(svc)) = p.actions.get(1) else {
        panic!("{:?}", p.actions)
    };
    assert!(
        !svc.spec
            .clone()
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .contains_key(DISCOVERY_LABEL)
    );
    let done = Observed {
        proxy: Some(*restored.clone()),
        admin_service: Some(*svc.clone()),
        ..obs
    };
    let p = plan(&m, &done, later(2));
    assert_eq!(p.status.phase, Phase::Succeeded);
    assert_eq!(cond(&p, "Ready").status, "True");
    assert_eq!(cond(&p, "Reconciling").status, "False");
    assert_eq!(p.status.step.as_deref(), Some("5/5"));
    assert!(has_event(&p, "MigrationSucceeded"));
}

#[test]
fn manual_approval_holds_every_legacy_pod() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let spec = json!({ "approval": "Manual" });
    let p = plan(
        &scm(spec.clone()),
        &Observed {
            proxy: Some(d.clone()),
            ..Default::default()
        },
        now(),
    );
    let Some(Action::ReplaceProxy(held)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        held.spec.as_ref().and_then(|s| s.min_ready_seconds),
        Some(APPROVAL_HOLD_MIN_READY_SECONDS)
    );

    let m = in_phase(spec.clone(), Phase::AwaitingApproval, &d);
    let obs = Observed {
        proxy: Some(migrated(&d, &m, true)),
        pods: vec![
            pod("old", true, true, "10.0.0.1"),
            pod("new", false, true, "10.0.0.2"),
        ],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(10_000));
    assert_eq!(p.status.phase, Phase::AwaitingApproval);
    assert!(
        p.actions.is_empty(),
        "no legacy pod is touched before approval"
    );
    assert_eq!(cond(&p, "Ready").reason, "AwaitingApproval");
    assert_eq!(
        cond(&p, "Stalled").status,
        "False",
        "waiting for a person is not a failure, and has no deadline"
    );

    let mut approved = m.clone();
    approved.spec.approved = true;
    let p = plan(&approved, &obs, later(10_000));
    assert!(has_event(&p, "Approved"));
    assert_eq!(p.status.phase, Phase::DeletingLegacyPods);
    let Some(Action::ReplaceProxy(released)) = p.actions.first() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        released.spec.as_ref().and_then(|s| s.min_ready_seconds),
        None,
        "the hold is released"
    );
}

#[test]
fn kong_order_orphans_legacy_replica_sets_and_evicts_one_pod_at_a_time() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let m = in_phase(
        json!({ "cutover": "DeleteLegacyPods" }),
        Phase::DeletingLegacyPods,
        &d,
    );
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": { "name": "kong-kong-old" },
        "spec": { "selector": {}, "template": d.spec.as_ref().map(|s| s.template.clone()) }
    }))
    .expect("rs");
    let obs = Observed {
        proxy: Some(migrated(&d, &m, false)),
        replica_sets: vec![rs],
        pods: vec![
            pod("old-a", true, true, "10.0.0.1"),
            pod("old-b", true, true, "10.0.0.3"),
            pod("new", false, false, "10.0.0.2"),
        ],
        ..Default::default()
    };
    let p = plan(&m, &obs, later(1));
    assert_eq!(
        p.actions,
        vec![
            Action::OrphanReplicaSet("kong-kong-old".into()),
            Action::EvictPod("old-a".into())
        ]
    );
    let mut terminating = obs.clone();
    terminating.replica_sets.clear();
    terminating.pods[0].metadata.deletion_timestamp = Some(Time(now()));
    let p = plan(&m, &terminating, later(2));
    assert!(
        p.actions.is_empty(),
        "the next eviction waits for the last pod to go: {:?}",
        p.actions
    );
}

#[test]
fn legacy_pods_are_the_proxy_deployments_own() {
    let d = sidecar_deployment("kic:3.4");
    // Another Deployment's pod with the same labels, and one of ours orphaned
    // by Kong's order (its ReplicaSet deleted, its generateName left).
    let mut other = pod("kong-other-xyz-1", true, true, "10.0.0.9");
    other.metadata.labels = Some([("pod-template-hash".into(), "xyz".into())].into());
    if let Some(o) = other.metadata.owner_references.as_mut() {
        o[0].name = "kong-other-xyz".into();
    }
    let mut orphan = pod("kong-kong-abc-1", true, true, "10.0.0.1");
    orphan.metadata.owner_references = None;
    orphan.metadata.generate_name = Some("kong-kong-abc-".into());
    let mut bare = pod("kong-kong-abc-2", true, true, "10.0.0.3");
    bare.metadata.owner_references = None;
    let cases = [
        ("ZeroDowntime", vec![other.clone()], vec![]),
        ("DeleteLegacyPods", vec![other.clone()], vec![]),
        (
            "DeleteLegacyPods",
            vec![other.clone(), orphan.clone(), bare.clone()],
            vec!["kong-kong-abc-1"],
        ),
    ];
    for (cutover, extra, want_legacy) in cases {
        let m = in_phase(json!({ "cutover": cutover }), Phase::DeletingLegacyPods, &d);
        let mut pods = vec![pod("new", false, true, "10.0.0.2")];
        pods.extend(extra);
        let obs = Observed {
            proxy: Some(migrated(&d, &m, false)),
            pods,
            ..Default::default()
        };
        let p = plan(&m, &obs, later(1));
        assert_eq!(p.status.legacy_pods, want_legacy, "{cutover}");
        let evicted: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::EvictPod(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(evicted, want_legacy, "{cutover}");
    }
}

#[test]
fn zero_downtime_evicts_only_while_a_new_gateway_serves() {
    let d = sidecar_deployment("kic:3.4");
    let m = in_phase(json!({}), Phase::DeletingLegacyPods, &d);
    let mut orphan = pod("kong-kong-abc-1", true, true, "10.0.0.1");
    orphan.metadata.owner_references = None;
    orphan.metadata.generate_name = Some("kong-kong-abc-".into());
    // (the new gateway Ready, evicted)
    for (new_ready, evicts) in [(false, false), (true, true)] {
        let obs = Observed {
            proxy: Some(migrated(&d, &m, false)),
            pods: vec![orphan.clone(), pod("new", false, new_ready, "10.0.0.2")],
            ..Default::default()
        };
        let p = plan(&m, &obs, later(1));
        assert_eq!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::EvictPod(n) if n == "kong-kong-abc-1")),
            evicts,
            "new gateway Ready: {new_ready}: {:?}",
            p.actions
        );
    }
}

#[test]
fn the_admin_api_network_policy_comes_first_and_widens_nothing() {
    let d = sidecar_deployment("kong/kubernetes-ingress-controller:3.4");
    let spec = json!({ "adminApi": { "networkPolicy": true } });
    let m = in_phase(spec.clone(), Phase::DisablingSidecar, &d);
    let applied = |obs: &Observed| {
        let p = plan(&m, obs, now());
        match p.actions.first() {
            Some(Action::ApplyNetworkPolicy(n)) => Some((**n).clone()),
            _ => None,
        }
    };
    let alone = Observed {
        proxy: Some(d.clone()),
        ..Default::default()
    };
    let policy = applied(&alone).expect("the policy before the proxy changes");
    let np = policy.spec.clone().expect("spec");
    let rules = np.ingress.clone().unwrap_or_default();
    assert_eq!(
        np.pod_selector.and_then(|s| s.match_labels),
        Some(selector_labels(&d))
    );
    let from = rules[0].from.clone().unwrap_or_default();
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone()),
        Some(
            [(
                CONTROLLER_SELECTOR_LABEL.to_string(),
                "kong-kong-controller".to_string()
            )]
            .into()
        )
    );
    assert_eq!(rules.len(), 2, "every other port stays open to all");
    assert!(
        rules[1]
            .ports
            .iter()
            .flatten()
            .all(|p| p.protocol.as_deref() != Some("TCP")
                || p.end_port < Some(8444)
                || matches!(p.port, Some(IntOrString::Int(n)) if n > 8444)),
        "8444 only from the controller"
    );
    // With a default-deny policy in the namespace, only the controller's
    // access is added: opening the other ports would undo that policy.
    let deny: NetworkPolicy = serde_json::from_value(
        json!({ "metadata": { "name": "default-deny" }, "spec": { "podSelector": {}, "policyTypes": ["Ingress"] } }),
    )
    .expect("policy");
    let restricted = Observed {
        proxy: Some(d.clone()),
        network_policies: vec![deny],
        ..Default::default()
    };
    let policy = applied(&restricted).expect("policy");
    assert_eq!(
        policy.spec.and_then(|s| s.ingress).map(|r| r.len()),
        Some(1)
    );
    // Applied once: the same policy in place is not applied again.
    let mut live = applied(&alone).expect("policy");
    live.metadata.uid = Some("np-uid".into());
    let in_place = Observed {
        proxy: Some(d.clone()),
        network_policies: vec![live.clone()],
        ..Default::default()
    };
    assert!(applied(&in_place).is_none());
    // Rollback deletes it, by uid; a same-named policy of someone else stays.
    let mut back = in_phase(spec, Phase::RollingBack, &d);
    back.spec.rollback = true;
    let p = plan(&back, &in_place, now());
    assert!(
        p.actions
            .contains(&Action::DeleteNetworkPolicy("np-uid".into())),
        "{:?}",
        p.actions
    );
    let mut foreign = live;
    foreign.metadata.labels = None;
    let p = plan(
        &back,
        &Observed {
            proxy: Some(d.clone()),
            network_policies: vec![foreign.clone()],
            ..Default::default()
        },
        now(),
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::DeleteNetworkPolicy(_)))
    );
    // And a foreign one by that name stops the migration before it starts
    // (the name the default controller release of Helm's `kong` derives).
    foreign.metadata.name = Some("kong-controller-kong-admin-api".into());
    let p = plan(
        &scm(json!({ "adminApi": { "networkPolicy": true } })),
        &Observed {
            proxy: Some(d),
            network_policies: vec![foreign],
            ..Default::default()
        },
        now(),
    );
    assert_eq!(cond(&p, "Stalled").reason, "NetworkPolicyNameTaken");
}
