//! The hand-off, exactly as the README's "Handing over to Helm" tells it:
//! after Succeeded, the installation is the one the kong chart renders for
//! Kong's Gateway Discovery setup, so Helm takes it over with nothing to
//! repair. The source is installed as `helm install` would; status.handoff
//! is then replayed as written, each release applied as Helm 4 does
//! (server-side, field manager `helm`, then deleting what it no longer
//! renders), each kubectl line run. No gateway pod rolls, the controller
//! never lacks a permission, IngressClass `kong` is never absent, and one
//! controller is left.

mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::IngressClass;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;
use sidecar_migrator::api::{HandoffRelease, HandoffState, Phase};
use sidecar_migrator::plan::helm_can_adopt;
use sidecar_migrator::testenv::{apply_fixture_as_helm, load_fixture, wait_for};
use support::*;

/// The ReplicaSets of Helm release `release`, by name.
async fn replica_sets_of(case: &Case, release: &str) -> BTreeSet<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    Api::<ReplicaSet>::namespaced(case.client.clone(), &case.ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("replica sets")
        .items
        .iter()
        .map(|rs| rs.name_any())
        .collect()
}

const CHART_CONTROLLER: &str = "kong-controller-kong";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_charts_sidecar_template_exactly() {
    let case = Case::installed_by_helm("chart-2.52.0-sidecar.yaml").await;
    let template = |d: k8s_openapi::api::apps::v1::Deployment| {
        serde_json::to_value(d.spec.map(|s| s.template)).expect("json")
    };
    let before = template(case.deployments().get(PROXY).await.expect("proxy"));
    case.start(
        "kong",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
    )
    .await;
    case.wait_phase("kong", Phase::AwaitingApproval).await;
    case.set("kong", json!({ "rollback": true })).await;
    case.wait_phase("kong", Phase::RolledBack).await;
    let after = template(case.wait_rollout(PROXY).await);
    assert_eq!(
        after, before,
        "volumes and init container env are back as the chart rendered them"
    );
    assert_eq!(case.downtime_ms(), 0);
}

/// Every permission of the controller release's ClusterRole and Role, as
/// SubjectAccessReviews for `user`: the ones refused.
async fn refused(case: &Case, version: &str, user: &str) -> Vec<String> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use k8s_openapi::api::rbac::v1::PolicyRule;
    let objects = load_fixture(
        &format!("chart-{version}-controller-release.yaml"),
        &case.ns,
    )
    .expect("fixture");
    let reviews: Api<SubjectAccessReview> = Api::all(case.client.clone());
    let mut refused = Vec::new();
    for object in objects {
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let namespace = match kind.as_str() {
            "ClusterRole" => None,
            "Role" => Some(case.ns.clone()),
            _ => continue,
        };
        let rules: Vec<PolicyRule> =
            serde_json::from_value(object.data["rules"].clone()).expect("rules");
        for rule in rules {
            let names = rule.resource_names.clone().unwrap_or_default();
            let names: Vec<Option<String>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(Some).collect()
            };
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (resource.clone(), None),
                    };
                    for verb in &rule.verbs {
                        for name in &names {
                            let review = SubjectAccessReview {
                                spec: SubjectAccessReviewSpec {
                                    user: Some(user.to_string()),
                                    resource_attributes: Some(ResourceAttributes {
                                        group: Some(group.clone()),
                                        resource: Some(resource.clone()),
                                        subresource: subresource.clone(),
                                        verb: Some(verb.clone()),
                                        name: name.clone(),
                                        namespace: namespace.clone(),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                },
                                ..Default::default()
                            };
                            let answer = reviews
                                .create(&Default::default(), &review)
                                .await
                                .expect("SubjectAccessReview");
                            if !answer.status.is_some_and(|s| s.allowed) {
                                refused.push(format!("{verb} {group}/{resource} {name:?}"));
                            }
                        }
                    }
                }
            }
        }
    }
    refused
}

/// The ServiceAccounts the controller runs as: its template's and every
/// controller pod's.
async fn controller_identities(case: &Case) -> BTreeSet<String> {
    let d = case
        .deployments()
        .get(CHART_CONTROLLER)
        .await
        .expect("controller");
    let mut accounts: BTreeSet<String> = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.service_account_name)
        .into_iter()
        .collect();
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(case.client.clone(), &case.ns)
        .list(&ListParams::default().labels("app.kubernetes.io/instance=kong-controller"))
        .await
        .expect("pods");
    accounts.extend(
        pods.items
            .into_iter()
            .filter_map(|p| p.spec?.service_account_name),
    );
    accounts
        .into_iter()
        .map(|sa| format!("system:serviceaccount:{}:{sa}", case.ns))
        .collect()
}

async fn assert_controller_keeps_every_permission(case: &Case, version: &str, moment: &str) {
    for user in controller_identities(case).await {
        let refused = refused(case, version, &user).await;
        assert!(
            refused.is_empty(),
            "chart {version}, {moment}: {user} lacks {} of the controller release's permissions, e.g. {:?}",
            refused.len(),
            &refused[..refused.len().min(5)]
        );
    }
}

/// `helm upgrade` deletes what the previous release rendered and the new
/// one does not, except an object whose live annotations say
/// `helm.sh/resource-policy: keep` (Helm reads it before deleting).
async fn delete_dropped(case: &Case, before: &str, after: &str) {
    use kube::api::{DeleteParams, DynamicObject, GroupVersionKind};
    use kube::discovery::{Scope, pinned_kind};
    let key = |o: &DynamicObject| {
        (
            o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default(),
            o.name_any(),
        )
    };
    let kept: BTreeSet<_> = load_fixture(after, &case.ns)
        .expect("fixture")
        .iter()
        .map(key)
        .collect();
    for object in load_fixture(before, &case.ns).expect("fixture") {
        if kept.contains(&key(&object)) {
            continue;
        }
        let types = object.types.as_ref().expect("types");
        let gvk = GroupVersionKind::try_from(types).expect("gvk");
        let (resource, caps) = pinned_kind(&case.client, &gvk).await.expect("kind");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(case.client.clone(), &case.ns, &resource),
            Scope::Cluster => Api::all_with(case.client.clone(), &resource),
        };
        let live = api.get(&object.name_any()).await.expect("live object");
        if live
            .annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str)
            == Some("keep")
        {
            continue;
        }
        api.delete(&object.name_any(), &DeleteParams::default())
            .await
            .expect("helm deletes what it no longer renders");
    }
}

/// The install's IngressClass (`kong`, which testenv names per namespace),
/// which must exist at every step of the hand-off: Ingresses name it.
async fn assert_ingress_class(case: &Case, version: &str, moment: &str) -> IngressClass {
    let name = format!("kong-{}", case.ns);
    let class = Api::<IngressClass>::all(case.client.clone())
        .get_opt(&name)
        .await
        .expect("get");
    class.unwrap_or_else(|| panic!("chart {version}, {moment}: IngressClass {name} is absent"))
}

/// Runs a `kubectl ...` line of status.handoff as written.
async fn run(case: &Case, command: &str) {
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("kubectl"), "{command}");
    case.kubectl(&words.collect::<Vec<_>>()).await;
}

/// Every ValidatingWebhookConfiguration of the install calls a Service that
/// has a Ready endpoint (once the step has settled).
async fn assert_webhooks_served(case: &Case, version: &str, moment: &str) {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let all = Api::<ValidatingWebhookConfiguration>::all(case.client.clone())
        .list(&ListParams::default())
        .await
        .expect("webhook configurations");
    let services: BTreeSet<String> = all
        .items
        .iter()
        .filter(|c| c.name_any().contains(&case.ns))
        .flat_map(|c| c.webhooks.iter().flatten())
        .filter_map(|w| w.client_config.service.as_ref().map(|s| s.name.clone()))
        .collect();
    assert!(!services.is_empty(), "chart {version}, {moment}");
    for service in services {
        wait_for(
            DEADLINE,
            &format!("chart {version}, {moment}: Service {service} has a Ready endpoint"),
            async || Ok((case.sim.ready_endpoints(&case.ns, &service) > 0).then_some(())),
        )
        .await
        .expect("the webhook is served");
    }
}

/// Waits until status.handoff reports `want` for the two releases, the
/// controller release's message holding `says`; returns the releases.
async fn wait_handoff(
    case: &Case,
    version: &str,
    moment: &str,
    want: [HandoffState; 2],
    says: &str,
) -> Vec<HandoffRelease> {
    let releases = |m: &sidecar_migrator::api::SidecarMigration| {
        m.status
            .as_ref()
            .and_then(|s| s.handoff.as_ref())
            .map(|h| h.releases.clone())
            .unwrap_or_default()
    };
    let m = case
        .wait_until(
            "kong",
            &format!("chart {version}, {moment}: hand-off {want:?}, saying {says:?}"),
            |m| {
                let r = releases(m);
                r.iter().map(|r| r.state).eq(want)
                    && r[0].message.as_deref().is_some_and(|m| m.contains(says))
            },
        )
        .await;
    releases(&m)
}

async fn hand_off(version: &str) {
    let case = Case::installed_by_helm(&format!("chart-{version}-sidecar.yaml")).await;
    // The migration, with no controller release named: Helm's release
    // `kong` gives the default, kong-controller.
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    let m = case.wait_phase("kong", Phase::Succeeded).await;
    let status = m.status.unwrap_or_default();
    assert_eq!(
        status.controller_release.as_deref(),
        Some("kong-controller"),
        "chart {version}: pinned while validating"
    );
    // The webhook moved to the controller (tests/webhook.rs): no warning
    // for it, and status says where it is served.
    assert!(
        !status
            .warnings
            .iter()
            .any(|w| w.starts_with("Service kong-kong-validation-webhook")),
        "chart {version}: {:?}",
        status.warnings
    );
    assert_eq!(
        status.webhook.map(|w| w.served_by).as_deref(),
        Some(CHART_CONTROLLER),
        "chart {version}"
    );
    let handoff = status.handoff.expect("status.handoff at Succeeded");
    let order: Vec<&str> = handoff.releases.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(order, ["kong-controller", "kong"], "chart {version}");

    // `sidecar-migrator handoff <ns>/<name>` writes what status.handoff says
    // and prints its commands in order.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-migrator"))
        .args(["handoff", &format!("{}/kong", case.ns), "--dir"])
        .arg(dir.path())
        .env("KUBECONFIG", case.cp.kubeconfig_path())
        .output()
        .await
        .expect("the handoff subcommand runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands: Vec<&String> = handoff
        .releases
        .iter()
        .flat_map(|r| r.before.iter().chain([&r.command]).chain(&r.after))
        .collect();
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        commands.iter().map(|c| c.as_str()).collect::<Vec<_>>()
    );
    for release in &handoff.releases {
        let written =
            std::fs::read_to_string(dir.path().join(format!("{}-values.yaml", release.name)))
                .expect("values file written");
        assert_eq!(written, release.values);
    }

    // Before `helm install` of the controller release, the controller runs
    // as the gateway's ServiceAccount: not done, and the gateway release
    // must wait.
    wait_handoff(
        &case,
        version,
        "at Succeeded",
        [HandoffState::Ready, HandoffState::Waiting],
        "still runs as the gateway's ServiceAccount kong-kong",
    )
    .await;
    let gateway_sets = replica_sets_of(&case, "kong").await;
    let controller_sets = replica_sets_of(&case, "kong-controller").await;
    assert_controller_keeps_every_permission(&case, version, "at Succeeded").await;
    assert_ingress_class(&case, version, "at Succeeded").await;
    assert_webhooks_served(&case, version, "at Succeeded").await;
    let sidecar = format!("chart-{version}-sidecar.yaml");
    for release in &handoff.releases {
        for command in &release.before {
            run(&case, command).await;
            assert_ingress_class(&case, version, command).await;
        }
        if release.name == "kong-controller" {
            // `helm install kong-controller`: Helm's ownership check on what
            // exists, then the apply.
            let class = assert_ingress_class(&case, version, "before helm install").await;
            assert_eq!(
                helm_can_adopt(&class.metadata, "kong-controller", &case.ns),
                Ok(()),
                "chart {version}: helm install adopts the IngressClass"
            );
            let controller = case
                .deployments()
                .get(CHART_CONTROLLER)
                .await
                .expect("the operator named the controller as the chart does");
            assert_eq!(
                helm_can_adopt(&controller.metadata, "kong-controller", &case.ns),
                Ok(()),
                "chart {version}: helm install adopts the controller Deployment"
            );
            apply_fixture_as_helm(
                &case.client,
                &case.ns,
                &format!("chart-{version}-controller-release.yaml"),
                "kong-controller",
            )
            .await
            .expect("the controller release applies (its selector is the operator's)");
            assert_controller_keeps_every_permission(&case, version, "while the controller rolls")
                .await;
            let controller = case.wait_rollout(CHART_CONTROLLER).await;
            // Done once the release's own ServiceAccount holds KIC's
            // permissions; the gateway release is next.
            let releases = wait_handoff(
                &case,
                version,
                "controller release installed",
                [HandoffState::Done, HandoffState::Ready],
                "runs as ServiceAccount kong-controller-kong, which holds every permission KIC needs",
            )
            .await;
            assert!(
                releases[1]
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains(&releases[1].command)),
                "chart {version}: {:?}",
                releases[1].message
            );
            assert_controller_keeps_every_permission(
                &case,
                version,
                "controller release installed",
            )
            .await;
            let rolled = replica_sets_of(&case, "kong-controller")
                .await
                .difference(&controller_sets)
                .count();
            assert!(
                rolled <= 1,
                "chart {version}: the controller rolled {rolled} times"
            );
            let publish =
                env(&controller, SIDECAR, "CONTROLLER_PUBLISH_SERVICE").expect("publish env");
            let (_, publish) = publish.split_once('/').expect("namespace/name");
            Api::<Service>::namespaced(case.client.clone(), &case.ns)
                .get(publish)
                .await
                .expect("the publish Service exists");
        } else {
            // `helm upgrade kong`: Helm's ownership check, the apply, then
            // the deletion of what it no longer renders (the sidecar's
            // RBAC, the webhook, the class but for its keep annotation).
            let admin = Api::<Service>::namespaced(case.client.clone(), &case.ns)
                .get("kong-kong-admin")
                .await
                .expect("admin Service");
            assert_eq!(
                helm_can_adopt(&admin.metadata, "kong", &case.ns),
                Ok(()),
                "chart {version}: helm upgrade adopts the admin Service"
            );
            let gateway = format!("chart-{version}-gateway-release.yaml");
            apply_fixture_as_helm(&case.client, &case.ns, &gateway, "kong")
                .await
                .expect("the gateway release applies");
            delete_dropped(&case, &sidecar, &gateway).await;
            assert_ingress_class(&case, version, "gateway release upgraded").await;
            case.wait_rollout(PROXY).await;
            assert_controller_keeps_every_permission(&case, version, "gateway release upgraded")
                .await;
            // The sidecar era's bindings are gone: the hand-off is done.
            wait_handoff(
                &case,
                version,
                "gateway release upgraded",
                [HandoffState::Done, HandoffState::Done],
                "holds every permission KIC needs",
            )
            .await;
        }
        assert_ingress_class(&case, version, &release.command).await;
        assert_webhooks_served(&case, version, &release.command).await;
        assert_eq!(
            replica_sets_of(&case, "kong").await,
            gateway_sets,
            "chart {version}: {} rolled the gateway pods",
            release.command
        );
        for command in &release.after {
            run(&case, command).await;
            assert_ingress_class(&case, version, command).await;
        }
    }
    // The controller release owns the class alone and runs the one controller.
    let class = assert_ingress_class(&case, version, "at the end").await;
    assert_eq!(
        helm_can_adopt(&class.metadata, "kong-controller", &case.ns),
        Ok(())
    );
    assert!(
        !class.annotations().contains_key("helm.sh/resource-policy"),
        "chart {version}: {:?}",
        class.annotations()
    );
    let deployments: Vec<String> = case
        .deployments()
        .list(&ListParams::default())
        .await
        .expect("deployments")
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    assert_eq!(
        deployments,
        [CHART_CONTROLLER, PROXY],
        "chart {version}: one gateway and one controller Deployment"
    );
    // The fixtures' ValidatingWebhookConfigurations match no namespace: the
    // API server never called them (it would have dialled out of loopback).
    let metrics = kube::core::Request::new("")
        .get("metrics", &Default::default())
        .expect("request");
    let metrics = case.client.request_text(metrics).await.expect("/metrics");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("apiserver_admission_webhook") && l.contains("konghq.com")),
        "kube-apiserver called a fixture's webhook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_2_52_hands_off_to_helm() {
    hand_off("2.52.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_2_30_hands_off_to_helm() {
    hand_off("2.30.0").await;
}

/// The gateway release upgraded before the controller release is installed:
/// its upgrade removes the bindings the controller still runs on. The
/// operator says so, naming a missing permission and the fix; once the fix
/// is applied, the hand-off is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_release_upgraded_first_is_reported_with_the_fix() {
    let version = "2.52.0";
    let case = Case::installed_by_helm(&format!("chart-{version}-sidecar.yaml")).await;
    case.start("kong", json!({ "proxyDeployment": PROXY }))
        .await;
    case.wait_phase("kong", Phase::Succeeded).await;
    wait_handoff(
        &case,
        version,
        "at Succeeded",
        [HandoffState::Ready, HandoffState::Waiting],
        "still runs as the gateway's ServiceAccount kong-kong",
    )
    .await;
    let gateway = format!("chart-{version}-gateway-release.yaml");
    apply_fixture_as_helm(&case.client, &case.ns, &gateway, "kong")
        .await
        .expect("the gateway release applies");
    delete_dropped(&case, &format!("chart-{version}-sidecar.yaml"), &gateway).await;
    let event = case.wait_event("kong", "HandoffPermissionMissing").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let releases = wait_handoff(
        &case,
        version,
        "gateway release first",
        [HandoffState::Ready, HandoffState::Waiting],
        "which lacks ",
    )
    .await;
    // The event and the release's message say the same; the permission
    // named may differ while the authorizer's cache drops the deleted
    // bindings one by one.
    let message = releases[0].message.clone().unwrap_or_default();
    for text in [event.note.unwrap_or_default(), message] {
        for words in [
            "runs as the gateway's ServiceAccount kong-kong, which lacks ",
            "that KIC needs: its bindings are gone, as when the gateway release kong is upgraded before the controller release kong-controller is installed",
            "Run `helm install kong-controller kong/kong",
        ] {
            assert!(text.contains(words), "{words:?} in {text}");
        }
    }
    // The fix: the controller release brings the controller's own
    // ServiceAccount and RBAC, and the hand-off is done.
    apply_fixture_as_helm(
        &case.client,
        &case.ns,
        &format!("chart-{version}-controller-release.yaml"),
        "kong-controller",
    )
    .await
    .expect("the controller release applies");
    case.wait_rollout(CHART_CONTROLLER).await;
    wait_handoff(
        &case,
        version,
        "controller release installed after",
        [HandoffState::Done, HandoffState::Done],
        "holds every permission KIC needs",
    )
    .await;
}
