//! The `SidecarMigration` custom resource: what a user asks for (spec) and
//! what the operator reports (status).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const GROUP: &str = "sidecar-migrator.dev";
/// The one field manager for every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "sidecar-migrator";
pub const FINALIZER: &str = "sidecar-migrator.dev/rollback";
/// Marks objects the operator created, so it never claims one it did not make.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "sidecar-migrator";
/// Helm's ownership metadata: an object carrying it for a release is one
/// `helm upgrade` of that release adopts instead of refusing.
pub const HELM_MANAGED_BY: &str = "Helm";
pub const HELM_RELEASE_NAME: &str = "meta.helm.sh/release-name";
pub const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";
/// On every object the operator renders for a Helm release (whose
/// `managed-by` is then Helm's), and on the chart's admission webhook
/// Service while it selects the controller's pods: the operator's watches
/// find them, and their EndpointSlices, by it.
pub const HANDOFF_LABEL: &str = "sidecar-migrator.dev/handed-over";
/// Names the SidecarMigration that owns an object (no ownerReference: a
/// Succeeded migration's objects must outlive the CR).
pub const MIGRATION_ANNOTATION: &str = "sidecar-migrator.dev/migration";
/// Carried by gateway pods rendered for Gateway Discovery; the admin Service
/// selects on it so the new controller never sees a sidecar pod.
pub const DISCOVERY_LABEL: &str = "sidecar-migrator.dev/gateway-discovery";
/// On the proxy Deployment during a migration: the literal env values of the
/// sidecar and proxy containers as they were (JSON), which status.original
/// leaves out. Whoever may read this annotation may read the Deployment's
/// spec, which held those values already; a SidecarMigration's readers may not.
pub const ORIGINAL_ENV_ANNOTATION: &str = "sidecar-migrator.dev/original-env";
/// On the generated client CA ConfigMap: the Secret holding the certificate
/// and key whose certificate the ConfigMap publishes. Written in the same
/// update as the certificate, only after that Secret's create succeeded.
pub const CLIENT_SECRET_ANNOTATION: &str = "sidecar-migrator.dev/client-certificate-secret";
pub const CONTROLLER_SELECTOR_LABEL: &str = "sidecar-migrator.dev/controller";

pub const DEFAULT_STEP_TIMEOUT_SECONDS: u32 = 600;

const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const DNS_1035_LABEL: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// Migrates one Kong Ingress Controller sidecar installation to Gateway Discovery.
///
/// Every name refers to an object in the SidecarMigration's own namespace: the
/// schema admits no namespace, so a user who may create one here can never make
/// the operator touch another namespace.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sidecar-migrator.dev",
    version = "v1alpha1",
    kind = "SidecarMigration",
    plural = "sidecarmigrations",
    shortname = "scm",
    namespaced,
    status = "SidecarMigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#
)]
#[x_kube(
    // The names derived from proxyDeployment, checked before anything is
    // changed: a 253-character Deployment name is valid, its `-admin`
    // Service is not.
    validation = Rule::new("(has(self.adminService) && has(self.adminService.name)) || (size(self.proxyDeployment) <= 57 && self.proxyDeployment.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))")
        .message("the default admin Service name <proxyDeployment>-admin would not be a valid Service name (a DNS-1035 label of at most 63 characters): set spec.adminService.name"),
    validation = Rule::new("(has(self.controller) && has(self.controller.name)) || (size(self.proxyDeployment) <= 52 && self.proxyDeployment.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("the default controller name <proxyDeployment>-controller would not be a DNS label of at most 63 characters: set spec.controller.name"),
    validation = Rule::new("!(has(self.approved) && self.approved) || (has(self.approval) && self.approval == 'Manual')")
        .message("approved: true needs approval: Manual"),
    validation = Rule::new("self.proxyDeployment == oldSelf.proxyDeployment")
        .message("proxyDeployment cannot change once set: create a new SidecarMigration"),
    validation = Rule::new("(has(self.controller) && has(self.controller.name) ? self.controller.name : '') == (has(oldSelf.controller) && has(oldSelf.controller.name) ? oldSelf.controller.name : '')")
        .message("controller.name cannot change once set: create a new SidecarMigration"),
    validation = Rule::new("(has(self.controller) && has(self.controller.release) ? self.controller.release : '') == (has(oldSelf.controller) && has(oldSelf.controller.release) ? oldSelf.controller.release : '')")
        .message("controller.release cannot change once set: create a new SidecarMigration"),
    validation = Rule::new("(has(self.adminService) && has(self.adminService.name) ? self.adminService.name : '') == (has(oldSelf.adminService) && has(oldSelf.adminService.name) ? oldSelf.adminService.name : '')")
        .message("adminService.name cannot change once set: create a new SidecarMigration"),
    validation = Rule::new("(has(self.adminApi) && has(self.adminApi.clientTLS) ? self.adminApi.clientTLS.source + '/' + (has(self.adminApi.clientTLS.secretName) ? self.adminApi.clientTLS.secretName : '') + '/' + (has(self.adminApi.clientTLS.caSecretName) ? self.adminApi.clientTLS.caSecretName : '') : '') == (has(oldSelf.adminApi) && has(oldSelf.adminApi.clientTLS) ? oldSelf.adminApi.clientTLS.source + '/' + (has(oldSelf.adminApi.clientTLS.secretName) ? oldSelf.adminApi.clientTLS.secretName : '') + '/' + (has(oldSelf.adminApi.clientTLS.caSecretName) ? oldSelf.adminApi.clientTLS.caSecretName : '') : '')")
        .message("adminApi.clientTLS cannot change once set: create a new SidecarMigration"),
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarMigrationSpec {
    /// The Deployment that runs the `proxy` and `ingress-controller` containers.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub proxy_deployment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Containers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_service: Option<AdminService>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_api: Option<AdminApi>,
    /// ZeroDowntime keeps a Ready, configured proxy at every instant;
    /// DeleteLegacyPods follows Kong's documented order and admits downtime.
    #[serde(default)]
    pub cutover: Cutover,
    /// With Manual, the migration stops before the first legacy pod is removed
    /// until `approved: true` is set.
    #[serde(default)]
    pub approval: Approval,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Fill in status.plan and change nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Restore the sidecar installation recorded in status.original.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// How long one step may run before onTimeout applies (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub step_timeout_seconds: Option<u32>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Containers {
    /// Kong Gateway's container (default `proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub proxy: Option<String>,
    /// The sidecar controller's container (default `ingress-controller`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub controller: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminService {
    /// The headless Admin API Service the new controller discovers gateways
    /// through (default `<proxyDeployment>-admin`, which the kong chart also renders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_1035_LABEL))]
    pub name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminApi {
    /// A NetworkPolicy that admits the Admin API port (8444) on the gateway
    /// pods only from the new controller's pods (default true), written
    /// before the Admin API leaves loopback and removed on rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<bool>,
    /// Admin API mTLS, as the kong chart offers it: the gateways demand a
    /// client certificate (`admin.tls.client.*`) and the controller presents
    /// one (`ingressController.adminApi.tls.client.*`). Unset: no client
    /// certificate is demanded (or, where the sidecar install already has
    /// mTLS, it carries over as it is).
    #[serde(default, rename = "clientTLS", skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.source == 'Secret' ? has(self.secretName) : !has(self.secretName) && !has(self.caSecretName)")
        .message("source: Secret needs secretName; source: Generate takes neither secretName nor caSecretName"),
)]
pub struct ClientTls {
    /// `Generate`: the operator creates a self-signed client certificate in
    /// a Secret of its own (it needs `create` on Secrets, never `get`).
    /// `Secret`: the controller presents the certificate of `secretName`.
    pub source: ClientTlsSource,
    /// A `kubernetes.io/tls` Secret in this namespace whose `tls.crt` and
    /// `tls.key` the controller presents (the chart's
    /// `ingressController.adminApi.tls.client.secretName`). The operator
    /// never reads it: it only mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub secret_name: Option<String>,
    /// A Secret whose `tls.crt` is the CA the gateways verify client
    /// certificates against (the chart's `admin.tls.client.secretName`).
    /// Default: `secretName`, for a self-signed client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub ca_secret_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum ClientTlsSource {
    Generate,
    Secret,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSpec {
    /// The new controller Deployment (default `<proxyDeployment>-controller`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: Option<String>,
    /// The Helm release that will own the controller after the hand-off
    /// (Kong's controller release, e.g. `kong-controller`). Default, when
    /// neither this nor `name` is set and the proxy Deployment is a Helm
    /// release's: `<release>-controller`, pinned in status.controllerRelease
    /// while validating. Where the proxy
    /// Deployment is a Helm release's, the controller is then named and
    /// shaped as the kong chart renders that release (Deployment
    /// `<release>-kong`, the chart's selector and labels, Helm's ownership
    /// metadata), so `helm install` of the release adopts it instead of
    /// running a second controller beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 53), regex(pattern = DNS_LABEL))]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
    /// Default: the sidecar's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Default: the sidecar's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum Cutover {
    #[default]
    ZeroDowntime,
    DeleteLegacyPods,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum Approval {
    #[default]
    Automatic,
    Manual,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum OnTimeout {
    #[default]
    RollBack,
    Pause,
}

impl SidecarMigrationSpec {
    pub fn proxy_container(&self) -> &str {
        self.containers
            .as_ref()
            .and_then(|c| c.proxy.as_deref())
            .unwrap_or("proxy")
    }
    pub fn controller_container(&self) -> &str {
        self.containers
            .as_ref()
            .and_then(|c| c.controller.as_deref())
            .unwrap_or("ingress-controller")
    }
    pub fn admin_service_name(&self) -> String {
        self.admin_service
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| format!("{}-admin", self.proxy_deployment))
    }
    /// `controller.name`; else, with `controller.release`, the name the kong
    /// chart gives that release's Deployment (`<release>-kong`, its
    /// fullname without a nameOverride); else `<proxyDeployment>-controller`.
    pub fn controller_name(&self) -> String {
        let c = self.controller.as_ref();
        c.and_then(|c| c.name.clone())
            .or_else(|| {
                c.and_then(|c| c.release.as_ref())
                    .map(|r| format!("{r}-kong"))
            })
            .unwrap_or_else(|| format!("{}-controller", self.proxy_deployment))
    }
    pub fn controller_release(&self) -> Option<&str> {
        self.controller.as_ref().and_then(|c| c.release.as_deref())
    }
    pub fn network_policy(&self) -> bool {
        self.admin_api
            .as_ref()
            .and_then(|a| a.network_policy)
            .unwrap_or(true)
    }
    pub fn client_tls(&self) -> Option<&ClientTls> {
        self.admin_api.as_ref()?.client_tls.as_ref()
    }
    /// The Admin API NetworkPolicy's name.
    pub fn network_policy_name(&self) -> String {
        format!("{}-admin-api", self.controller_name())
    }
    pub fn step_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(
            self.step_timeout_seconds
                .unwrap_or(DEFAULT_STEP_TIMEOUT_SECONDS),
        ))
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Pending,
    Validating,
    DisablingSidecar,
    DeployingController,
    WaitingForAdminService,
    AwaitingApproval,
    DeletingLegacyPods,
    Succeeded,
    Paused,
    RollingBack,
    RolledBack,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Validating => "Validating",
            Phase::DisablingSidecar => "DisablingSidecar",
            Phase::DeployingController => "DeployingController",
            Phase::WaitingForAdminService => "WaitingForAdminService",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::DeletingLegacyPods => "DeletingLegacyPods",
            Phase::Succeeded => "Succeeded",
            Phase::Paused => "Paused",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }

    /// Where someone watching a migration can stop: nothing moves from here
    /// by itself. Failed is not final for the operator (it resumes once the
    /// input is fixed), but it waits on a person.
    pub fn is_at_rest(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum StepState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The phase this step runs in.
    pub name: Phase,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// When the step last made progress (DeletingLegacyPods: a legacy pod
    /// left); its deadline runs from here once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressed_at: Option<Time>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What rollback restores, written before the first change. No secret: a
/// secretKeyRef stays a reference, and literal env values are left out (with
/// `envValuesOnDeployment`): they travel in the proxy Deployment's
/// `sidecar-migrator.dev/original-env` annotation, set by the same write that
/// removes the sidecar, so whoever reads this status learns no value.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Original {
    /// The sidecar container exactly as it was (a core/v1 Container).
    #[schemars(schema_with = "preserve_unknown")]
    pub sidecar: JsonText,
    /// Its index among the pod's containers, so rollback restores the order.
    pub sidecar_index: u32,
    /// The proxy container's env and ports as they were (core/v1 EnvVar and
    /// ContainerPort lists): the migration rewrites KONG_ADMIN_LISTEN, drops
    /// KONG_KIC and adds the Admin API port.
    #[schemars(schema_with = "preserve_unknown_list")]
    pub proxy_env: JsonText,
    #[schemars(schema_with = "preserve_unknown_list")]
    pub proxy_ports: JsonText,
    /// The proxy container's readinessProbe (a core/v1 Probe), when the
    /// migration rewrites it to wait for configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub proxy_readiness_probe: Option<JsonText>,
    /// The Deployment's rollout settings (apps/v1 DeploymentStrategy),
    /// minReadySeconds and progressDeadlineSeconds, held during the migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub strategy: Option<JsonText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    /// The pod's volumes as they were (core/v1 Volume list): the controller
    /// Deployment mounts the sidecar's, and rollback puts back, in their
    /// place, those the migration drops from the gateway's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub volumes: Option<JsonText>,
    /// The env of each init container the migration rewrites (the chart
    /// renders the proxy's KONG_* env into `clear-stale-pid` too), by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(schema_with = "preserve_unknown")]
    pub init_container_env: std::collections::BTreeMap<String, JsonText>,
    /// The env lists above carry names only; their literal values are in the
    /// proxy Deployment's annotation (false: recorded by an older operator,
    /// values inline).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_values_on_deployment: bool,
    /// Set when an existing admin Service was adopted: its selector and ports
    /// as they were (rollback restores them instead of deleting the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_admin_service: Option<AdoptedService>,
    /// The admission webhook Service's selector as it was, recorded with the
    /// status write before the operator points the Service at the
    /// controller's pods; rollback puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_selector: Option<std::collections::BTreeMap<String, String>>,
}

/// Where the install's admission webhook is served.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// The kong chart's admission webhook Service
    /// (`<proxyDeployment>-validation-webhook`), which the install's
    /// ValidatingWebhookConfiguration calls. The operator keeps its name, so
    /// that configuration never changes.
    pub service: String,
    /// The Deployment whose Ready pods the Service lists: the proxy
    /// Deployment (its sidecars) until a controller pod is Ready on it, then
    /// the controller Deployment; the proxy Deployment again after rollback.
    pub served_by: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdoptedService {
    #[serde(default)]
    pub selector: std::collections::BTreeMap<String, String>,
    #[schemars(schema_with = "preserve_unknown_list")]
    pub ports: Value,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    /// In order: the controller release first (it brings the controller's own
    /// ServiceAccount and RBAC), then the gateway release's upgrade (which
    /// removes the bindings the sidecar's ServiceAccount had).
    pub releases: Vec<HandoffRelease>,
    /// What the values cannot say: steps or settings to check by hand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRelease {
    pub name: String,
    pub namespace: String,
    /// The kong chart's version the source was rendered from, if labelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
    /// The release's values, as a YAML document to commit or pass with `-f`.
    pub values: String,
    /// Commands to run first, in order: handing the IngressClass to the
    /// controller release, so that its install adopts it and the gateway
    /// release's upgrade leaves it (`helm.sh/resource-policy: keep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<String>,
    pub command: String,
    /// Commands to run once `command` has, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// What the operator last saw of this step: `Done` only once it could
    /// prove it (see `HandoffState`).
    #[serde(default)]
    pub state: HandoffState,
    /// Why the step is in that state, and what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A hand-off step as the operator sees it. The controller release is
/// `Done` once the controller Deployment is that release's, runs (rollout
/// complete) as a ServiceAccount other than the gateway's, and that
/// ServiceAccount holds every permission KIC needs (SubjectAccessReview,
/// rule by rule of the chart's controller ClusterRole and Role). The
/// gateway release is `Waiting` until then (its upgrade removes the
/// gateway ServiceAccount's bindings, which the controller may still run
/// on), and `Done` once the gateway's ServiceAccount holds none of KIC's
/// permissions any more.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum HandoffState {
    /// Not to be run yet: an earlier step is not done.
    #[default]
    Waiting,
    /// To be run now.
    Ready,
    Done,
}

/// One change a step makes, listed in status.plan (also in dry run).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    pub step: Phase,
    /// `Kind/name` of the object changed.
    pub object: String,
    pub change: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarMigrationStatus {
    #[serde(default)]
    pub phase: Phase,
    /// How Helm takes the migrated installation over: each release's values
    /// and command, in the order to run them (filled at Succeeded when the
    /// proxy Deployment is a Helm release's). `sidecar-migrator handoff
    /// <namespace>/<name>` writes the values files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// The controller release the migration uses (`spec.controller.release`,
    /// or by default `<release>-controller` for a proxy Deployment that Helm
    /// installed as `<release>`), pinned while validating: relabelling the
    /// proxy Deployment later renames nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_release: Option<String>,
    /// Where the admission webhook is served, when the install has the
    /// chart's webhook Service (set while validating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,
    /// `current/total` steps, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Original>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedChange>,
    /// Pods that still run the sidecar.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_pods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_deployment: Option<String>,
    /// The KIC version read from the sidecar image, when the tag tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_version: Option<String>,
    /// Kong's KONG_DATABASE: `off` (DB-less) or the database in use (unset
    /// means Kong's default, `postgres`); absent when the value is read from
    /// a ConfigMap or Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl SidecarMigration {
    pub fn status_or_default(&self) -> SidecarMigrationStatus {
        self.status.clone().unwrap_or_default()
    }
}

/// A recorded JSON value (a container, an env list) kept in memory as its
/// compact text, and decoded into its Kubernetes type where it is used. The
/// operator caches every SidecarMigration, finished ones too; as
/// `serde_json::Value` trees (a map node for every env var) these records
/// were the largest part of the cache at 40 migrations at once (a heap
/// profile, docs/benchmarks.md).
///
/// The text is canonical (`Value`'s: keys sorted, no spaces), so two records
/// of the same value are equal as strings, as status comparisons need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonText(Box<str>);

impl JsonText {
    pub fn of(value: &impl Serialize) -> JsonText {
        JsonText::from(serde_json::to_value(value).unwrap_or_default())
    }

    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }
}

impl Default for JsonText {
    fn default() -> JsonText {
        JsonText::from(Value::Null)
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> JsonText {
        JsonText(value.to_string().into_boxed_str())
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.decode::<Value>()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<JsonText, D::Error> {
        Value::deserialize(deserializer).map(JsonText::from)
    }
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

fn preserve_unknown_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// metav1.Condition's schema as Kubernetes publishes it, with the list keyed
/// by type so server-side apply merges conditions one by one.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": { "type": "string", "format": "date-time" },
                "message": { "type": "string", "maxLength": 32768 },
                "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0 },
                "reason": { "type": "string", "maxLength": 1024, "minLength": 1 },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"] },
                "type": { "type": "string", "maxLength": 316 }
            }
        }
    })
}

/// The CRD as `crds/sidecarmigrations.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&SidecarMigration::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_file_is_current() {
        let committed = include_str!("../crds/sidecarmigrations.yaml");
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            committed == generated,
            "crds/sidecarmigrations.yaml is stale: run `cargo run -- crd > crds/sidecarmigrations.yaml`"
        );
    }

    /// The status comparison that decides whether to write status sees a
    /// record built by the plan and the same record read back from the API
    /// server (its keys in another order) as equal, and the record travels
    /// as the JSON value itself, not as a string.
    #[test]
    fn a_recorded_value_reads_back_equal_whatever_its_key_order() {
        use k8s_openapi::api::core::v1::{Container, EnvVar};
        let container = Container {
            name: "ingress-controller".into(),
            image: Some("kong/kubernetes-ingress-controller:3.4".into()),
            env: Some(vec![EnvVar {
                name: "CONTROLLER_KONG_ADMIN_URL".into(),
                value: Some("https://localhost:8444".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let built = Original {
            sidecar: JsonText::of(&container),
            ..Default::default()
        };
        let from_api = r#"{"sidecarIndex":0,"proxyEnv":null,"proxyPorts":null,"sidecar":
            {"name":"ingress-controller","env":[{"value":"https://localhost:8444",
            "name":"CONTROLLER_KONG_ADMIN_URL"}],"image":"kong/kubernetes-ingress-controller:3.4"}}"#;
        let read: Original = serde_json::from_str(from_api).expect("a recorded Original");
        assert_eq!(read, built);
        assert_eq!(
            read.sidecar.decode::<Container>().expect("a container"),
            container
        );
        let written = serde_json::to_value(&built).expect("serializes");
        assert_eq!(
            written["sidecar"]["env"][0]["name"],
            "CONTROLLER_KONG_ADMIN_URL"
        );
        assert_eq!(
            serde_json::to_value(&read).expect("serializes"),
            written,
            "written back as it was read"
        );
    }

    #[test]
    fn defaults_name_the_chart_objects() {
        let spec: SidecarMigrationSpec =
            serde_json::from_value(serde_json::json!({ "proxyDeployment": "kong-kong" }))
                .expect("minimal spec");
        assert_eq!(spec.proxy_container(), "proxy");
        assert_eq!(spec.controller_container(), "ingress-controller");
        assert_eq!(spec.admin_service_name(), "kong-kong-admin");
        assert_eq!(spec.controller_name(), "kong-kong-controller");
        assert_eq!(spec.cutover, Cutover::ZeroDowntime);
        assert_eq!(spec.approval, Approval::Automatic);
        assert_eq!(spec.on_timeout, OnTimeout::RollBack);
        assert_eq!(spec.step_timeout().as_secs(), 600);
    }
}
