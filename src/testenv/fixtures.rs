//! The Kong chart renderings under `tests/fixtures/`: namespace-free YAML in
//! which `${NAMESPACE}` stands for the namespace they are installed into.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt as _};

const PLACEHOLDER: &str = "${NAMESPACE}";
const FIELD_MANAGER: &str = "testenv";

/// Reads `tests/fixtures/<file_name>` for `namespace`. Namespaced objects get
/// that namespace; the chart's cluster-scoped objects (RBAC, the
/// ValidatingWebhookConfiguration) get `-<namespace>` appended to their names
/// unless the chart already puts the namespace in them, so installs in
/// different namespaces stay apart. So does an IngressClass, and with it the
/// controller's `CONTROLLER_INGRESS_CLASS` that names it, as if the chart had
/// been rendered with `ingressController.ingressClass: <class>-<namespace>`.
pub fn load_fixture(file_name: &str, namespace: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file_name);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .replace(PLACEHOLDER, namespace);
    let mut objects = Vec::new();
    let documents: Vec<DynamicObject> =
        serde_saphyr::from_multiple(&text).with_context(|| format!("parsing {file_name}"))?;
    let classes: Vec<String> = documents
        .iter()
        .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "IngressClass"))
        .map(|o| o.name_any())
        .collect();
    for mut object in documents {
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or_default();
        let scoped_name = |name: String| {
            if name.contains(namespace) {
                name
            } else {
                format!("{name}-{namespace}")
            }
        };
        match kind {
            "IngressClass" => object.metadata.name = Some(scoped_name(object.name_any())),
            "Deployment" => {
                object.metadata.namespace = Some(namespace.to_string());
                let containers = object
                    .data
                    .pointer_mut("/spec/template/spec/containers")
                    .and_then(|c| c.as_array_mut());
                for env in containers
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get_mut("env").and_then(|e| e.as_array_mut()))
                    .flatten()
                {
                    if env["name"] == "CONTROLLER_INGRESS_CLASS"
                        && let Some(class) = env["value"].as_str()
                        && classes.iter().any(|c| c == class)
                    {
                        env["value"] = scoped_name(class.to_string()).into();
                    }
                }
            }
            "ClusterRole" | "ValidatingWebhookConfiguration" => {
                // Some chart versions render a namespace on these too.
                object.metadata.namespace = None;
                object.metadata.name = Some(scoped_name(object.name_any()))
            }
            "ClusterRoleBinding" => {
                object.metadata.name = Some(scoped_name(object.name_any()));
                let role = object
                    .data
                    .pointer_mut("/roleRef/name")
                    .context("ClusterRoleBinding without roleRef")?;
                *role = format!("{}-{namespace}", role.as_str().unwrap_or_default()).into();
            }
            _ => object.metadata.namespace = Some(namespace.to_string()),
        }
        objects.push(object);
    }
    Ok(objects)
}

/// Server-side-applies every object of [`load_fixture`].
pub async fn apply_fixture(
    client: &Client,
    namespace: &str,
    file_name: &str,
) -> anyhow::Result<()> {
    apply_objects(
        client,
        namespace,
        load_fixture(file_name, namespace)?,
        FIELD_MANAGER,
    )
    .await
}

/// The fixture as `helm install` or `helm upgrade` of `release` (Helm 4,
/// server-side) writes it: field manager `helm`, and Helm's ownership
/// annotations on every object.
pub async fn apply_fixture_as_helm(
    client: &Client,
    namespace: &str,
    file_name: &str,
    release: &str,
) -> anyhow::Result<()> {
    let mut objects = load_fixture(file_name, namespace)?;
    for object in &mut objects {
        let annotations = object
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert("meta.helm.sh/release-name".into(), release.into());
        annotations.insert("meta.helm.sh/release-namespace".into(), namespace.into());
    }
    apply_objects(client, namespace, objects, "helm").await
}

/// Server-side-applies `objects` with `manager`, taking over conflicting
/// fields as `--force-conflicts` does.
pub async fn apply_objects(
    client: &Client,
    namespace: &str,
    objects: Vec<DynamicObject>,
    manager: &str,
) -> anyhow::Result<()> {
    for object in objects {
        let types = object
            .types
            .as_ref()
            .context("a fixture document lacks apiVersion or kind")?;
        let (resource, capabilities) =
            pinned_kind(client, &GroupVersionKind::try_from(types)?).await?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = object.name_any();
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
    }
    Ok(())
}

/// Creates `namespace` if needed, installs the fixture into it and waits
/// until the proxy Deployment `kong-kong` has rolled out.
pub async fn install_fixture(
    client: &Client,
    namespace: &str,
    file_name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": namespace } }))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await?;
    apply_fixture(client, namespace, file_name).await?;
    wait_rollout(client, namespace, "kong-kong", timeout).await
}

/// Waits until Deployment `name` has rolled out completely.
pub async fn wait_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let done = |d: Option<&Deployment>| d.is_some_and(crate::plan::rollout_complete);
    tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, name, done),
    )
    .await
    .with_context(|| format!("Deployment {name} did not roll out"))??;
    Ok(())
}
