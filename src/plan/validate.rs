//! Validating: whether the Deployment can be migrated, and the plan that
//! status.plan shows (a dry run stops here).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use kube::ResourceExt;

use crate::api::*;
use crate::kong;

use super::facts::{container_names, env_value, env_var, legacy_pod_names};
use super::{Event, Observed, Outcome, Planner, Slot, gitops_owner, is_ours, selector_labels};

impl Planner<'_> {
    pub(super) fn validate(&mut self) -> Outcome {
        let spec = self.spec;
        let name = &spec.proxy_deployment;
        // Before any read: a name that cannot exist would fail a write after
        // the proxy Deployment had already been changed.
        if let Some(problem) = derived_name_problem(spec) {
            return Outcome::Fail("NameTooLong", problem);
        }
        let Some(proxy) = &self.obs.proxy else {
            return Outcome::Fail(
                "ProxyDeploymentNotFound",
                format!(
                    "Deployment {name} not found in namespace {}: set spec.proxyDeployment to the Deployment that runs the {} and {} containers",
                    self.scm.namespace().unwrap_or_default(),
                    spec.proxy_container(),
                    spec.controller_container()
                ),
            );
        };
        // Before anything about the template: another migration in flight
        // has already changed it.
        if let Some(other) = self.rival() {
            return Outcome::Fail(
                "DuplicateMigration",
                format!(
                    "SidecarMigration {other} already migrates Deployment {name}: delete this one, or that one if it is the mistake"
                ),
            );
        }
        let Some(pod) = proxy.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            return Outcome::Fail(
                "ProxyDeploymentInvalid",
                format!("Deployment {name} has no pod template"),
            );
        };
        let Some(proxy_c) = pod
            .containers
            .iter()
            .find(|c| c.name == spec.proxy_container())
        else {
            return Outcome::Fail(
                "ProxyContainerNotFound",
                format!(
                    "Deployment {name} has no container named {:?} (it has {}): set spec.containers.proxy",
                    spec.proxy_container(),
                    container_names(&pod.containers)
                ),
            );
        };
        if let Some(problem) = not_a_kong_gateway(spec, name, proxy_c) {
            return Outcome::Fail("NotAKongInstall", problem);
        }
        let Some(sidecar) = pod
            .containers
            .iter()
            .find(|c| c.name == spec.controller_container())
        else {
            let listen = env_value(proxy_c, kong::ENV_ADMIN_LISTEN).unwrap_or_default();
            return if kong::admin_listen_is_local_only(&listen) {
                Outcome::Fail(
                    "SidecarNotFound",
                    format!(
                        "Deployment {name} has no container named {:?} and its Admin API listens only on localhost: set spec.containers.controller to the sidecar's name",
                        spec.controller_container()
                    ),
                )
            } else {
                Outcome::AlreadyDone(format!(
                    "Deployment {name} has no {:?} sidecar: it already runs in Gateway Discovery mode, nothing to do",
                    spec.controller_container()
                ))
            };
        };
        if let Some(problem) = not_a_kic_sidecar(spec, name, sidecar) {
            return Outcome::Fail("NotAKongInstall", problem);
        }
        if let Some(problem) = controller_image_problem(spec, sidecar, &self.obs.policy) {
            return Outcome::Fail("ControllerImageNotAllowed", problem);
        }
        if let Some(taken) = self.foreign_controller_object() {
            return taken;
        }
        if let Some(problem) = self.foreign_admin_service(proxy) {
            return Outcome::Fail("AdminServiceNotKong", problem);
        }
        if let Some(problem) = self.client_tls_problem(pod, sidecar) {
            return problem;
        }
        if selector_labels(proxy).is_empty() {
            return Outcome::Fail(
                "UnsupportedSelector",
                format!(
                    "Deployment {name} selects its pods without matchLabels; the admin Service needs labels to select them"
                ),
            );
        }
        if proxy_c
            .env
            .iter()
            .flatten()
            .any(|e| e.name == kong::ENV_ADMIN_LISTEN && e.value_from.is_some())
        {
            return Outcome::Fail(
                "AdminListenNotLiteral",
                format!(
                    "the {} container sets {} through valueFrom; set it as a literal value so it can be rewritten",
                    spec.proxy_container(),
                    kong::ENV_ADMIN_LISTEN
                ),
            );
        }
        if let Some(path) = kong::premature_readiness_path(proxy_c) {
            let kong_image = proxy_c.image.clone().unwrap_or_default();
            if let Some(v) = kong::image_version(&kong_image)
                && v < kong::MIN_KONG_STATUS_READY
            {
                return Outcome::Fail(
                    "ReadinessProbeTooEarly",
                    format!(
                        "the {} container's readinessProbe asks {path}, which Kong answers before it has any configuration: without the sidecar a new gateway pod would take traffic and answer 404 until the controller's first push, and Kong {v} ({kong_image}) has no {} to wait on (Kong 3.3 added it). Upgrade Kong to 3.3 or newer first (kong chart 2.26.0 or newer then renders the {} probe), then this migration goes on",
                        spec.proxy_container(),
                        kong::STATUS_READY_PATH,
                        kong::STATUS_READY_PATH
                    ),
                );
            }
        }
        let listen = env_value(proxy_c, kong::ENV_ADMIN_LISTEN)
            .unwrap_or_else(|| kong::SIDECAR_ADMIN_LISTEN.into());
        if kong::admin_listen_is_local_only(&kong::admin_listen_all_interfaces(&listen)) {
            return Outcome::Fail(
                "AdminListenNotTls",
                format!(
                    "the {} container's {} {listen:?} has no TLS (ssl) entry: only a TLS Admin API is opened to the controller (KIC dials https, and a plain-HTTP Admin API has no protection); add an entry such as 127.0.0.1:8444 http2 ssl",
                    spec.proxy_container(),
                    kong::ENV_ADMIN_LISTEN
                ),
            );
        }
        let mut warnings = Vec::new();
        let image = spec
            .controller
            .as_ref()
            .and_then(|c| c.image.clone())
            .or_else(|| sidecar.image.clone())
            .unwrap_or_default();
        match kong::image_version(&image) {
            Some(v) if v < kong::MIN_KIC_VERSION => {
                return Outcome::Fail(
                    "UnsupportedControllerVersion",
                    format!(
                        "the controller image {image} is KIC {v}; Gateway Discovery with separate gateway pods needs KIC {} or newer: upgrade the chart first, or set spec.controller.image",
                        kong::MIN_KIC_VERSION
                    ),
                );
            }
            Some(v) => self.status.controller_version = Some(v.to_string()),
            None => warnings.push(format!(
                "the controller image {image:?} names no version; make sure it is KIC {} or newer",
                kong::MIN_KIC_VERSION
            )),
        }
        if let Some(problem) = admin_certificate_problem(
            spec,
            sidecar,
            proxy_c,
            kong::image_version(&image),
            &mut warnings,
        ) {
            return Outcome::Fail("AdminCertificateVerified", problem);
        }
        // Only a literal value (or none at all) tells; one read from a
        // ConfigMap or Secret is left unsaid rather than guessed.
        let db_env = env_var(proxy_c, kong::ENV_DATABASE);
        let from_elsewhere = proxy_c.env_from.as_ref().is_some_and(|f| !f.is_empty());
        self.status.database = match db_env {
            Some(e) if e.value_from.is_some() => None,
            None if from_elsewhere => None,
            e => Some(kong::database_mode(e.and_then(|e| e.value.as_deref()))),
        };
        if let Some(owner) = gitops_owner(&proxy.metadata) {
            let election = env_value(sidecar, kong::ENV_CONTROLLER_ELECTION_ID)
                .unwrap_or_else(|| kong::DEFAULT_ELECTION_ID.into());
            warnings.push(format!(
                "Deployment {name} is managed by {owner}: commit the migrated values (kong chart: ingressController.enabled: false, admin.enabled: true, admin.type: ClusterIP, admin.clusterIP: None; and a controller release of the chart with deployment.kong.enabled: false, ingressController.enabled: true, ingressController.gatewayDiscovery.enabled: true, ingressController.gatewayDiscovery.adminApiService.name: {}, ingressController.env.election_id: {}, ingressController.env.kong_admin_svc_port_names: {}) or {owner} will put the sidecar back",
                spec.admin_service_name(),
                super::render::discovery_election_id(&election),
                kong::ADMIN_SERVICE_PORT_NAME
            ));
        }
        // The chart's webhook Service moves to the controller: no warning.
        let webhook = self.find_webhook(proxy, sidecar);
        for (svc, port) in &self.obs.sidecar_only_services {
            if webhook.as_ref().is_some_and(|w| &w.service == svc) {
                continue;
            }
            // Only a webhook Service the operator cannot prove is the
            // install's is left behind; say what that costs.
            let cost = if port == "webhook" {
                " (the chart's admission webhook then stops validating with failurePolicy Ignore, or refuses matching writes with Fail)"
            } else {
                ""
            };
            warnings.push(format!(
                "Service {svc} selects the gateway pods on port {port}, which only the {} container declares: once the last sidecar pod is gone it has no endpoint{cost} until the controller release serves its own",
                spec.controller_container()
            ));
        }
        if self.status.warnings != warnings {
            for w in &warnings {
                self.events.push(Event {
                    warning: true,
                    reason: "ValidationWarning".into(),
                    note: w.clone(),
                });
            }
            self.status.warnings = warnings;
        }
        // Pinned: names derived from it never change mid-migration.
        self.status.controller_release = spec.controller_release().map(str::to_string);
        self.status.plan = planned_changes(spec, self.scm, proxy, sidecar, proxy_c, self.obs);
        if let Some(w) = &webhook {
            let at = self
                .status
                .plan
                .iter()
                .position(|c| c.step == Phase::DeletingLegacyPods)
                .unwrap_or(self.status.plan.len());
            self.status.plan.insert(
                at,
                PlannedChange {
                    step: Phase::DeletingLegacyPods,
                    object: format!("Service/{}", w.service),
                    change: format!(
                        "select the pods of Deployment {} once one is Ready, before the last sidecar pod goes (the selector is recorded for rollback)",
                        spec.controller_name()
                    ),
                },
            );
        }
        self.status.webhook = webhook;
        if spec.dry_run {
            return Outcome::Hold(
                "DryRun",
                format!(
                    "dry run: {} changes planned in status.plan; set spec.dryRun to false to apply them",
                    self.status.plan.len()
                ),
            );
        }
        if let Slot::Taken { limit } = self.obs.slot {
            return Outcome::Hold(
                "WaitingForSlot",
                format!(
                    "{limit} migration(s) already in flight (--max-concurrent-migrations={limit}); this one starts when one of them ends"
                ),
            );
        }
        Outcome::Done
    }

    /// A controller Deployment, Role or RoleBinding by the names the
    /// migration would write that it did not make: writing it would take
    /// over someone else's object, deleting it on rollback would destroy it.
    pub(super) fn foreign_controller_object(&self) -> Option<Outcome> {
        let taken = |kind: &str, name: String| {
            format!(
                "{kind} {name} exists and was not made by this SidecarMigration; the operator neither overwrites nor deletes it: set spec.controller.name to a free name, or delete {kind} {name} if it is a leftover"
            )
        };
        if let Some(c) = &self.obs.controller
            && !is_ours(&c.metadata, self.scm)
        {
            return Some(Outcome::Fail(
                "ControllerNameTaken",
                taken("Deployment", c.name_any()),
            ));
        }
        if let Some(r) = &self.obs.controller_role
            && !is_ours(&r.metadata, self.scm)
        {
            return Some(Outcome::Fail("RoleNameTaken", taken("Role", r.name_any())));
        }
        let policy = self.spec.network_policy_name();
        if let Some(n) = self
            .obs
            .network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(policy.as_str()))
            .filter(|p| self.spec.network_policy() && !is_ours(&p.metadata, self.scm))
        {
            return Some(Outcome::Fail(
                "NetworkPolicyNameTaken",
                taken("NetworkPolicy", n.name_any()),
            ));
        }
        if let Some(b) = &self.obs.controller_role_binding
            && !is_ours(&b.metadata, self.scm)
        {
            return Some(Outcome::Fail(
                "RoleBindingNameTaken",
                taken("RoleBinding", b.name_any()),
            ));
        }
        None
    }

    /// An existing Service by the admin Service's name is adopted only when
    /// it demonstrably fronts this Kong install: its selector picks exactly
    /// the proxy Deployment's pods. Anything else is another app's Service,
    /// and pointing it at Kong's Admin API would hand that app's clients the
    /// gateway.
    fn foreign_admin_service(&self, proxy: &Deployment) -> Option<String> {
        let svc = self.obs.admin_service.as_ref()?;
        if is_ours(&svc.metadata, self.scm) {
            return None;
        }
        let name = svc.name_any();
        let fix = "set spec.adminService.name to a free name (the operator then creates it)";
        if let Some(other) = svc
            .annotations()
            .get(MIGRATION_ANNOTATION)
            .filter(|o| **o != self.scm.name_any())
        {
            return Some(format!(
                "Service {name} belongs to SidecarMigration {other}: {fix}"
            ));
        }
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if selects_exactly(&selector, proxy) {
            return None;
        }
        Some(format!(
            "Service {name} exists and does not select exactly the pods of Deployment {} (its selector: {}); the operator adopts only the install's own admin Service: {fix}",
            self.spec.proxy_deployment,
            if selector.is_empty() {
                "none".to_string()
            } else {
                selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        ))
    }

    /// The oldest other unfinished SidecarMigration of the same Deployment.
    pub(super) fn rival(&self) -> Option<String> {
        let me = (self.scm.creation_timestamp(), self.scm.name_any());
        self.obs
            .others
            .iter()
            .filter(|o| {
                o.spec.proxy_deployment == self.spec.proxy_deployment && o.name_any() != me.1
            })
            .filter(|o| {
                let phase = o.status.as_ref().map(|s| s.phase).unwrap_or_default();
                !matches!(phase, Phase::RolledBack | Phase::Succeeded | Phase::Failed)
                    || o.status
                        .as_ref()
                        .is_some_and(|s| s.original.is_some() && phase == Phase::Failed)
            })
            .find(|o| {
                let started = o.status.as_ref().is_some_and(|s| s.original.is_some());
                started || (o.creation_timestamp(), o.name_any()) < me
            })
            .map(|o| o.name_any())
    }
}

/// A selector that every pod of the Deployment carries (a subset of its
/// template labels) and that only its pods carry (it includes the
/// Deployment's own selector).
pub(super) fn selects_exactly(
    selector: &std::collections::BTreeMap<String, String>,
    proxy: &Deployment,
) -> bool {
    let template = proxy
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let own = selector_labels(proxy);
    !selector.is_empty()
        && !own.is_empty()
        && selector.iter().all(|(k, v)| template.get(k) == Some(v))
        && own.iter().all(|(k, v)| selector.get(k) == Some(v))
}

/// The names the migration derives from proxyDeployment must be valid for
/// the objects they name; explicit names are checked by the schema. The CRD
/// rejects these at admission too; this catches objects admitted before.
pub(super) fn derived_name_problem(spec: &SidecarMigrationSpec) -> Option<String> {
    let proxy = &spec.proxy_deployment;
    let dns_label = |n: &str, first_letter: bool| {
        n.len() <= 63
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || (!first_letter && c.is_ascii_digit()))
            && !n.ends_with('-')
    };
    let admin = spec.admin_service_name();
    if !dns_label(&admin, true) {
        return Some(format!(
            "the admin Service name {admin:?} derived from proxyDeployment is not a valid Service name (a DNS-1035 label of at most 63 characters): set spec.adminService.name"
        ));
    }
    let controller = spec.controller_name();
    if !dns_label(&controller, false) {
        return Some(format!(
            "the controller name {controller:?} derived from proxyDeployment {proxy} is not a DNS label of at most 63 characters (it is also a label value): set spec.controller.name"
        ));
    }
    None
}

/// The Deployment's gateway container must be Kong Gateway by image and by
/// env, not just by name: the operator rewrites it.
/// KIC verifies the Admin API's certificate unless told to skip it (the
/// chart always tells it to). Beside its gateway it dials localhost; without
/// the sidecar it dials each gateway by pod IP (KIC < 3.5), which no
/// certificate names, or with the name `pod.<admin Service>.<namespace>.svc`
/// (3.5), which only a certificate of the user's own can carry: Kong's
/// self-signed default verifies against no CA. Refused here, before anything
/// changes, rather than found as a crash-looping controller at a deadline.
fn admin_certificate_problem(
    spec: &SidecarMigrationSpec,
    sidecar: &Container,
    proxy: &Container,
    kic: Option<kong::Version>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let skip = kong::ENV_CONTROLLER_ADMIN_TLS_SKIP_VERIFY;
    let svc = spec.admin_service_name();
    match env_var(sidecar, skip) {
        Some(e) if e.value_from.is_some() => {
            warnings.push(format!(
                "the {} container sets {skip} through valueFrom: unless it is true, the new controller verifies each gateway's Admin API certificate, which must then name pod.{svc}.<namespace>.svc (KIC 3.5 or newer)",
                spec.controller_container()
            ));
            return None;
        }
        Some(e) if e.value.as_deref().is_some_and(kong::parses_true) => return None,
        _ => {}
    }
    let own_certificate = env_var(proxy, kong::ENV_ADMIN_SSL_CERT).is_some();
    let names_pods = kic.is_none_or(|v| v >= kong::MIN_KIC_ADMIN_SNI);
    if names_pods && own_certificate {
        warnings.push(format!(
            "the new controller verifies each gateway's Admin API certificate ({skip} is not true): {} must name pod.{svc}.<namespace>.svc (a wildcard *.{svc}.<namespace>.svc will do), signed by the CA the controller trusts",
            kong::ENV_ADMIN_SSL_CERT
        ));
        return None;
    }
    let dialled = if names_pods {
        format!(
            "as pod.{svc}.<namespace>.svc, and the {} container serves Kong's self-signed certificate ({} is unset), which verifies against no CA",
            spec.proxy_container(),
            kong::ENV_ADMIN_SSL_CERT
        )
    } else {
        "at https://<pod IP>:8444, a name no certificate carries".to_string()
    };
    let kic = kic.map_or_else(|| "KIC".to_string(), |v| format!("KIC {v}"));
    Some(format!(
        "the {} container verifies the Admin API's certificate ({skip} is not true). Without the sidecar, {kic} dials each gateway {dialled}, so it would never reach one. Set {skip}=true on the {} container (kong chart: ingressController.env.kong_admin_tls_skip_verify: true, the chart's default), or, with KIC {} or newer, give the Admin API a certificate for *.{svc}.<namespace>.svc; then this migration goes on",
        spec.controller_container(),
        spec.controller_container(),
        kong::MIN_KIC_ADMIN_SNI
    ))
}

fn not_a_kong_gateway(spec: &SidecarMigrationSpec, name: &str, c: &Container) -> Option<String> {
    let image = c.image.clone().unwrap_or_default();
    let kong_env = c.env.iter().flatten().any(|e| e.name.starts_with("KONG_"));
    if kong::is_gateway_image(&image) && kong_env {
        return None;
    }
    Some(format!(
        "container {:?} of Deployment {name} is not Kong Gateway (image {image:?}{}): the operator migrates only a Kong Ingress Controller sidecar install; set spec.proxyDeployment to the kong chart's Deployment, or spec.containers.proxy to its Kong container",
        spec.proxy_container(),
        if kong_env { "" } else { ", no KONG_ env" }
    ))
}

/// The sidecar must be KIC talking to the Admin API on localhost, by image
/// and by env.
fn not_a_kic_sidecar(
    spec: &SidecarMigrationSpec,
    name: &str,
    sidecar: &Container,
) -> Option<String> {
    let image = sidecar.image.clone().unwrap_or_default();
    let envs: Vec<_> = sidecar.env.iter().flatten().collect();
    let controller_env = envs.iter().any(|e| e.name.starts_with("CONTROLLER_"));
    // KIC's default admin URL is http://localhost:8001.
    let admin_url_local = envs
        .iter()
        .find(|e| e.name == kong::ENV_CONTROLLER_ADMIN_URL)
        .is_none_or(|e| e.value.as_deref().is_some_and(kong::url_is_loopback));
    // The gateway's own Admin API listen says nothing either way: the chart
    // renders it on all interfaces in a sidecar install too, when its admin
    // Service is enabled (tests/fixtures/kic-2.12-admin-http.yaml).
    let why = if !kong::is_controller_image(&image) {
        format!("its image {image:?} is not kong/kubernetes-ingress-controller")
    } else if !controller_env {
        "it sets no CONTROLLER_ env".to_string()
    } else if !admin_url_local {
        format!(
            "its {} is not a literal localhost URL",
            kong::ENV_CONTROLLER_ADMIN_URL
        )
    } else {
        return None;
    };
    Some(format!(
        "container {:?} of Deployment {name} is not a Kong Ingress Controller sidecar ({why}): the operator migrates only a KIC sidecar install; set spec.proxyDeployment to the kong chart's Deployment, or spec.containers.controller to its controller container",
        spec.controller_container()
    ))
}

/// The new controller runs with the sidecar's ServiceAccount, env and Secret
/// volumes: any other image would get the chart's cluster-wide read of
/// Secrets. So it stays the sidecar's repository (another tag is fine)
/// unless the operator's own `--allowed-controller-images` admits it.
fn controller_image_problem(
    spec: &SidecarMigrationSpec,
    sidecar: &Container,
    policy: &super::Policy,
) -> Option<String> {
    let wanted = spec.controller.as_ref().and_then(|c| c.image.as_deref())?;
    let current = sidecar.image.as_deref().unwrap_or_default();
    if kong::image_repository(wanted) == kong::image_repository(current)
        || policy
            .allowed_controller_images
            .iter()
            .any(|p| wildmatch::WildMatch::new(p).matches(wanted))
    {
        return None;
    }
    Some(format!(
        "spec.controller.image {wanted:?} is not from the sidecar's repository {} and matches no --allowed-controller-images pattern of the operator: the new controller runs with the sidecar's ServiceAccount and Secrets, so its image stays the sidecar's; use a tag of {}, or ask the operator's administrator to allow the image",
        kong::image_repository(current),
        kong::image_repository(current)
    ))
}

/// Every change the migration will make, for status.plan (dry run too).
fn planned_changes(
    spec: &SidecarMigrationSpec,
    scm: &SidecarMigration,
    proxy: &Deployment,
    sidecar: &Container,
    proxy_c: &Container,
    obs: &Observed,
) -> Vec<PlannedChange> {
    let deploy = format!("Deployment/{}", spec.proxy_deployment);
    let svc = format!("Service/{}", spec.admin_service_name());
    let ctrl = format!("Deployment/{}", spec.controller_name());
    let listen = env_value(proxy_c, kong::ENV_ADMIN_LISTEN)
        .unwrap_or_else(|| kong::SIDECAR_ADMIN_LISTEN.into());
    let change = |step, object: &str, change: String| PlannedChange {
        step,
        object: object.into(),
        change,
    };
    let mut out = vec![
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!("remove container {}", sidecar.name),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!(
                "{}: {listen:?} -> {:?}",
                kong::ENV_ADMIN_LISTEN,
                kong::admin_listen_all_interfaces(&listen)
            ),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!(
                "add container port {} {}",
                kong::ADMIN_CONTAINER_PORT_NAME,
                kong::ADMIN_PORT
            ),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            format!("add pod label {DISCOVERY_LABEL}=true"),
        ),
        change(
            Phase::DisablingSidecar,
            &deploy,
            "hold rollingUpdate maxUnavailable 0 until the migration ends".into(),
        ),
    ];
    if let Some(path) = kong::premature_readiness_path(proxy_c) {
        out.insert(
            2,
            change(
                Phase::DisablingSidecar,
                &deploy,
                format!(
                    "readinessProbe GET {path} -> GET {} (Ready only once configured)",
                    kong::STATUS_READY_PATH
                ),
            ),
        );
    }
    if env_value(proxy_c, kong::ENV_KONG_KIC).is_some() {
        out.insert(
            2,
            change(
                Phase::DisablingSidecar,
                &deploy,
                format!("remove env {}", kong::ENV_KONG_KIC),
            ),
        );
    }
    out.extend(super::client_tls::planned_changes(
        spec,
        Phase::DisablingSidecar,
    ));
    let service_verb = match &obs.admin_service {
        Some(s) if !is_ours(&s.metadata, scm) => "adopt",
        _ => "create headless",
    };
    out.push(change(
        Phase::DisablingSidecar,
        &svc,
        format!(
            "{service_verb} Service selecting {}{} on port {} {}",
            selector_labels(proxy)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            if spec.cutover == Cutover::ZeroDowntime {
                format!(",{DISCOVERY_LABEL}=true")
            } else {
                String::new()
            },
            kong::ADMIN_SERVICE_PORT_NAME,
            kong::ADMIN_PORT
        ),
    ));
    let image = spec
        .controller
        .as_ref()
        .and_then(|c| c.image.clone())
        .or_else(|| sidecar.image.clone())
        .unwrap_or_default();
    out.push(change(
        Phase::DeployingController,
        &ctrl,
        format!(
            "create with image {image}, {}={}/{} instead of {}",
            kong::ENV_CONTROLLER_ADMIN_SVC,
            scm.namespace().unwrap_or_default(),
            spec.admin_service_name(),
            kong::ENV_CONTROLLER_ADMIN_URL
        ),
    ));
    out.push(change(
        Phase::DeployingController,
        &format!("Role/{}-endpointslices", spec.controller_name()),
        "create with RoleBinding: get, list, watch discovery.k8s.io endpointslices".into(),
    ));
    out.extend(super::client_tls::planned_changes(
        spec,
        Phase::DeployingController,
    ));
    let legacy = legacy_pod_names(spec, obs);
    let how = match spec.cutover {
        Cutover::ZeroDowntime => "retired by the rolling update once new pods are Ready",
        Cutover::DeleteLegacyPods => "evicted, one at a time",
    };
    for pod in legacy {
        out.push(change(
            Phase::DeletingLegacyPods,
            &format!("Pod/{pod}"),
            how.into(),
        ));
    }
    out.push(change(
        Phase::DeletingLegacyPods,
        &deploy,
        "restore the rollout strategy".into(),
    ));
    out
}
