//! The Helm chart `charts/sidecar-migrator/` against `deploy/`: the same
//! objects for default values, the same CRD, and alert rules that fire on the
//! series they describe (promtool). helm, kubectl and promtool are built by
//! `hack/*/build.sh` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sidecar_migrator::testenv::tools;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/sidecar-migrator");
/// deploy/'s names come out of the chart for this release name.
const RELEASE: &str = "sidecar-migrator";

/// Labels Helm's conventions add that a kustomization does not have.
const HELM_LABELS: [&str; 4] = [
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
];

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// helm with its state kept in a folder of its own, not the user's home.
fn helm(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
        cmd.env(var, home);
    }
    cmd
}

async fn template(extra: &[&str]) -> Vec<Value> {
    let bin = tools::helm().await.expect("helm builds");
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = helm(&bin, home.path());
    cmd.args([
        "template",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE,
        "--include-crds",
    ])
    .args(extra);
    documents(&run(cmd))
}

fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("YAML documents");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn key(o: &Value) -> (String, String, String) {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

fn strip_helm_labels(o: &mut Value) {
    for path in [
        "/metadata/labels",
        "/spec/selector/matchLabels",
        "/spec/template/metadata/labels",
    ] {
        if let Some(Value::Object(labels)) = o.pointer_mut(path) {
            for label in HELM_LABELS {
                labels.remove(label);
            }
        }
    }
}

/// kustomize writes the CRD's `minimum: 1.0` back as `1`: the same number
/// to the API server, a different `Value`.
fn numbers_as_f64(v: &mut Value) {
    match v {
        Value::Number(n) => *v = json!(n.as_f64()),
        Value::Array(items) => items.iter_mut().for_each(numbers_as_f64),
        Value::Object(fields) => fields.values_mut().for_each(numbers_as_f64),
        _ => {}
    }
}

fn by_key(mut objects: Vec<Value>) -> Vec<Value> {
    objects.iter_mut().for_each(numbers_as_f64);
    objects.sort_by_key(key);
    objects
}

#[test]
fn the_chart_holds_the_repository_crd() {
    let chart =
        std::fs::read(Path::new(CHART).join("crds/sidecarmigrations.yaml")).expect("chart CRD");
    let repo = std::fs::read(Path::new(ROOT).join("crds/sidecarmigrations.yaml")).expect("CRD");
    assert!(
        chart == repo,
        "charts/sidecar-migrator/crds/ differs from crds/: cp crds/sidecarmigrations.yaml charts/sidecar-migrator/crds/"
    );
}

/// Default values install what `kubectl apply -k deploy/` does, less the
/// Namespace (`helm install --create-namespace`, labelled by hand).
#[tokio::test]
async fn default_values_render_what_deploy_installs() {
    let kubectl = tools::build("controlplane", &["kubectl"])
        .await
        .expect("kubectl builds")
        .join("kubectl");
    let mut cmd = Command::new(kubectl);
    cmd.args(["kustomize", &format!("{ROOT}/deploy")]);
    let deploy: Vec<Value> = documents(&run(cmd))
        .into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .collect();
    let mut chart = template(&[]).await;
    chart.iter_mut().for_each(strip_helm_labels);
    let (deploy, chart) = (by_key(deploy), by_key(chart));
    let keys = |v: &[Value]| v.iter().map(key).collect::<Vec<_>>();
    assert_eq!(keys(&chart), keys(&deploy), "the chart's objects");
    for (c, d) in chart.iter().zip(&deploy) {
        assert_eq!(c, d, "{:?}", key(d));
    }
}

#[tokio::test]
async fn watched_namespaces_get_a_rolebinding_each_and_no_clusterrolebinding() {
    let chart = template(&["--set", "watchNamespaces={kong,edge}"]).await;
    let kinds = |kind: &str| {
        chart
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(key)
            .collect::<Vec<_>>()
    };
    // Only the hand-off's SubjectAccessReviews are bound cluster-wide: they
    // grant nothing, and a RoleBinding cannot grant a cluster-scoped object.
    assert_eq!(
        kinds("ClusterRoleBinding"),
        [(
            "ClusterRoleBinding".to_string(),
            String::new(),
            "sidecar-migrator-access-review".to_string()
        )]
    );
    let bound: Vec<(String, String)> = chart
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["kind"] == "ClusterRole")
        .map(|o| (key(o).1, o["subjects"][0]["namespace"].to_string()))
        .collect();
    assert_eq!(
        bound,
        [
            ("kong".to_string(), "\"sidecar-migrator\"".to_string()),
            ("edge".to_string(), "\"sidecar-migrator\"".to_string())
        ]
    );
    let deployment = chart
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(
        args,
        &json!([
            "run",
            "--log-json",
            "--leader-election-lease=$(POD_NAMESPACE)/sidecar-migrator",
            "--namespace=kong",
            "--namespace=edge"
        ])
    );
}

/// The operator's one widening of the tenant boundary is a chart value too,
/// and reaches it as the flag `run` parses (comma-separated patterns).
#[tokio::test]
async fn allowed_controller_images_reach_the_operator() {
    let args_of = |chart: &[Value]| {
        let deployment = chart
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("Deployment");
        deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .clone()
    };
    let flag = |args: &[Value]| {
        args.iter()
            .filter_map(Value::as_str)
            .filter(|a| a.starts_with("--allowed-controller-images"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(flag(&args_of(&template(&[]).await)).is_empty());
    let chart = template(&[
        "--set",
        "allowedControllerImages={registry.example.com/kic:*,kong/kubernetes-ingress-controller:3.?.*}",
    ])
    .await;
    assert_eq!(
        flag(&args_of(&chart)),
        [
            "--allowed-controller-images=registry.example.com/kic:*,kong/kubernetes-ingress-controller:3.?.*"
        ]
    );
}

/// The PrometheusRule's groups, as a rules file, through `promtool test
/// rules` with the synthetic series of tests/alerts/rules_test.yaml.
#[tokio::test]
async fn alert_rules_fire_on_failed_stalled_and_failing_reconciles() {
    let chart = template(&["--set", "prometheusRule.enabled=true"]).await;
    let rule = chart
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = serde_saphyr::to_string(&rule["spec"]).expect("rules YAML");
    std::fs::write(dir.path().join("rules.yaml"), rules).expect("write rules");
    let tests: PathBuf = Path::new(ROOT).join("tests/alerts/rules_test.yaml");
    std::fs::copy(&tests, dir.path().join("rules_test.yaml")).expect("copy tests");
    let promtool = tools::promtool().await.expect("promtool builds");
    let mut cmd = Command::new(promtool);
    cmd.current_dir(dir.path())
        .args(["test", "rules", "rules_test.yaml"]);
    run(cmd);
}

#[tokio::test]
async fn a_service_monitor_scrapes_the_metrics_port() {
    let chart = template(&["--set", "serviceMonitor.enabled=true"]).await;
    let service = chart
        .iter()
        .find(|o| o["kind"] == "Service")
        .expect("metrics Service");
    let monitor = chart
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    let deployment = chart
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "label {k}");
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"],
        "http"
    );
}
