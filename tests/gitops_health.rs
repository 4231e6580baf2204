//! The GitOps health checks run by the engines' own code: `deploy/argocd/health.lua`
//! as Argo CD's resource health override (argo-cd's `util/lua` through
//! gitops-engine's `health.GetResourceHealth`) and `deploy/flux/`'s
//! `healthCheckExprs` through Flux's CEL status reader (`fluxcd/pkg/runtime`
//! `cel`, the version kustomize-controller pins), both built from the Go
//! module proxy by `hack/gitops-health/build.sh` on first use. Both must say
//! the same of every state the operator writes (the table in the README's
//! "GitOps" section).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use kube::CustomResourceExt as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sidecar_migrator::api::SidecarMigration;
use sidecar_migrator::testenv::tools;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Debug, Deserialize)]
struct Verdict {
    status: String,
    message: String,
    #[serde(default)]
    error: String,
}

/// Runs `tool` (in the gitops-health folder) with `arg` on `objects`.
fn verdicts(dir: &Path, tool: &str, arg: &str, objects: &[Json]) -> Vec<Verdict> {
    let mut child = Command::new(dir.join(tool))
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let input = serde_json::to_vec(objects).expect("objects as JSON");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write objects");
    let out = child.wait_with_output().expect("tool output");
    assert!(
        out.status.success(),
        "{tool} {arg} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Verdict> = serde_json::from_slice(&out.stdout).expect("verdicts JSON");
    assert_eq!(verdicts.len(), objects.len(), "{tool}: one verdict each");
    verdicts
}

fn migration(generation: i64, rollback: bool, status: Option<Json>) -> Json {
    let mut obj = json!({
        "apiVersion": "sidecar-migrator.dev/v1alpha1",
        "kind": "SidecarMigration",
        "metadata": { "name": "kong", "namespace": "kong", "generation": generation },
        "spec": { "proxyDeployment": "kong-kong", "rollback": rollback },
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

/// The status the operator writes (`src/plan/status.rs`): the phase and the
/// three kstatus conditions, all at `generation`.
fn written(
    generation: i64,
    phase: &str,
    ready: bool,
    reconciling: bool,
    stalled: bool,
    reason: &str,
) -> Json {
    let cond = |type_: &str, on: bool| {
        json!({
            "type": type_,
            "status": if on { "True" } else { "False" },
            "reason": reason,
            "message": format!("{phase}: {reason}"),
            "observedGeneration": generation,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    };
    json!({
        "observedGeneration": generation,
        "phase": phase,
        "message": format!("{phase}: {reason}"),
        "conditions": [
            cond("Ready", ready),
            cond("Reconciling", reconciling),
            cond("Stalled", stalled),
        ],
    })
}

/// A status without conditions: written by hand, or by a tool that drops them.
fn bare(generation: i64, phase: &str) -> Json {
    json!({ "observedGeneration": generation, "phase": phase })
}

struct Case {
    name: &'static str,
    obj: Json,
    argocd: &'static str,
    flux: &'static str,
}

fn case(name: &'static str, obj: Json, argocd: &'static str, flux: &'static str) -> Case {
    Case {
        name,
        obj,
        argocd,
        flux,
    }
}

/// What the operator writes in each phase, and the states around it. The
/// statuses follow `src/plan/` (`health_for_phase`, `forward`, `run`,
/// `check_drift`, `check_timeout`, `refuse_rollback`).
fn cases() -> Vec<Case> {
    const T: bool = true;
    const F: bool = false;
    let at = |phase, ready, reconciling, stalled, reason| {
        migration(
            1,
            F,
            Some(written(1, phase, ready, reconciling, stalled, reason)),
        )
    };
    let asked = |phase, ready, reconciling, stalled, reason| {
        migration(
            2,
            T,
            Some(written(2, phase, ready, reconciling, stalled, reason)),
        )
    };
    vec![
        // Every phase, as the operator writes it.
        case(
            "waiting for a slot",
            at("Pending", F, F, F, "WaitingForSlot"),
            "Progressing",
            "InProgress",
        ),
        case(
            "dry run",
            at("Pending", F, F, F, "DryRun"),
            "Suspended",
            "InProgress",
        ),
        case(
            "validating",
            at("Validating", F, T, F, "Validating"),
            "Progressing",
            "InProgress",
        ),
        case(
            "disabling the sidecar",
            at("DisablingSidecar", F, T, F, "DisablingSidecar"),
            "Progressing",
            "InProgress",
        ),
        case(
            "deploying the controller",
            at("DeployingController", F, T, F, "DeployingController"),
            "Progressing",
            "InProgress",
        ),
        case(
            "waiting for the admin Service",
            at("WaitingForAdminService", F, T, F, "WaitingForAdminService"),
            "Progressing",
            "InProgress",
        ),
        case(
            "awaiting approval",
            at("AwaitingApproval", F, F, F, "AwaitingApproval"),
            "Suspended",
            "InProgress",
        ),
        case(
            "deleting legacy pods",
            at("DeletingLegacyPods", F, T, F, "DeletingLegacyPods"),
            "Progressing",
            "InProgress",
        ),
        case(
            "succeeded",
            at("Succeeded", T, F, F, "Succeeded"),
            "Healthy",
            "Current",
        ),
        case(
            "paused",
            at("Paused", F, F, F, "Paused"),
            "Suspended",
            "InProgress",
        ),
        case(
            "rolling back after a failed step",
            at("RollingBack", F, T, F, "RollingBack"),
            "Progressing",
            "InProgress",
        ),
        case(
            "rolled back after a step timed out",
            at("RolledBack", F, F, T, "RolledBack"),
            "Degraded",
            "Failed",
        ),
        case(
            "failed validation",
            at("Failed", F, F, T, "ProxyDeploymentNotFound"),
            "Degraded",
            "Failed",
        ),
        // Stalled in a step's phase.
        case(
            "drift",
            at("WaitingForAdminService", F, F, T, "DriftDetected"),
            "Degraded",
            "Failed",
        ),
        case(
            "a step timed out, on hold",
            at("DeployingController", F, F, T, "StepTimedOut"),
            "Degraded",
            "Failed",
        ),
        // spec.rollback: true from Git.
        case(
            "rollback asked, not yet seen",
            migration(2, T, Some(written(1, "Succeeded", T, F, F, "Succeeded"))),
            "Progressing",
            "InProgress",
        ),
        case(
            "rollback asked, rolling back",
            asked("RollingBack", F, T, F, "RollingBack"),
            "Progressing",
            "InProgress",
        ),
        case(
            "rollback asked, rolled back",
            asked("RolledBack", T, F, F, "RolledBack"),
            "Healthy",
            "Current",
        ),
        case(
            "rollback asked, refused",
            asked("Succeeded", T, F, T, "RollbackRefused"),
            "Degraded",
            "Failed",
        ),
        // Before the operator acts on the spec.
        case("no status", migration(1, F, None), "Progressing", "Unknown"),
        case(
            "null status",
            migration(1, F, Some(Json::Null)),
            "Progressing",
            "InProgress",
        ),
        case(
            "empty status",
            migration(1, F, Some(json!({}))),
            "Progressing",
            "InProgress",
        ),
        case(
            "stale generation",
            migration(3, F, Some(written(2, "Succeeded", T, F, F, "Succeeded"))),
            "Progressing",
            "InProgress",
        ),
        case(
            "no observedGeneration",
            migration(1, F, Some(json!({ "phase": "Succeeded" }))),
            "Progressing",
            "InProgress",
        ),
        case(
            "only an observedGeneration",
            migration(1, F, Some(json!({ "observedGeneration": 1 }))),
            "Progressing",
            "InProgress",
        ),
        // No conditions: the phase decides, by the operator's rules.
        case(
            "succeeded, no conditions",
            migration(1, F, Some(bare(1, "Succeeded"))),
            "Healthy",
            "Current",
        ),
        case(
            "succeeded, empty conditions",
            migration(
                1,
                F,
                Some(json!({ "observedGeneration": 1, "phase": "Succeeded", "conditions": [] })),
            ),
            "Healthy",
            "Current",
        ),
        case(
            "failed, no conditions",
            migration(1, F, Some(bare(1, "Failed"))),
            "Degraded",
            "Failed",
        ),
        case(
            "rolled back on request, no conditions",
            migration(1, T, Some(bare(1, "RolledBack"))),
            "Healthy",
            "Current",
        ),
        case(
            "rolled back unasked, no conditions",
            migration(1, F, Some(bare(1, "RolledBack"))),
            "Degraded",
            "Failed",
        ),
        case(
            "awaiting approval, no conditions",
            migration(1, F, Some(bare(1, "AwaitingApproval"))),
            "Suspended",
            "InProgress",
        ),
        case(
            "paused, no conditions",
            migration(1, F, Some(bare(1, "Paused"))),
            "Suspended",
            "InProgress",
        ),
        case(
            "in a step, no conditions",
            migration(1, F, Some(bare(1, "DeployingController"))),
            "Progressing",
            "InProgress",
        ),
    ]
}

#[tokio::test]
async fn argocd_and_flux_say_the_same_of_every_state() {
    let dir = tools::gitops_health()
        .await
        .expect("the GitOps health checks build");
    let cases = cases();
    let objects: Vec<Json> = cases.iter().map(|c| c.obj.clone()).collect();
    let argocd = verdicts(
        &dir,
        "argocd-health",
        &format!("{ROOT}/deploy/argocd/health.lua"),
        &objects,
    );
    let flux = verdicts(
        &dir,
        "flux-health",
        &format!("{ROOT}/deploy/flux/kustomization.yaml"),
        &objects,
    );
    let mut wrong = Vec::new();
    for ((c, a), f) in cases.iter().zip(&argocd).zip(&flux) {
        if a.status != c.argocd || !a.error.is_empty() {
            wrong.push(format!(
                "{}: Argo CD says {} ({}{}), want {}",
                c.name, a.status, a.message, a.error, c.argocd
            ));
        }
        // Flux's one error: a top-level field CEL cannot test for (see
        // deploy/flux/kustomization.yaml).
        let flux_error_ok = if c.obj.get("status").is_none() {
            f.error.contains("no such attribute(s): status")
        } else {
            f.error.is_empty()
        };
        if f.status != c.flux || !flux_error_ok {
            wrong.push(format!(
                "{}: Flux says {} ({}{}), want {}",
                c.name, f.status, f.message, f.error, c.flux
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "GitOps health checks:\n{}",
        wrong.join("\n")
    );
}

/// The table is only complete if it holds every phase the CRD allows, as
/// the operator writes it (with conditions).
#[test]
fn the_table_covers_every_phase() {
    let crd = serde_json::to_value(SidecarMigration::crd()).expect("CRD as JSON");
    let phases = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/phase/enum")
        .and_then(Json::as_array)
        .expect("status.phase enum");
    let cases = cases();
    let covered: Vec<&str> = cases
        .iter()
        .filter(|c| c.obj.pointer("/status/conditions/0").is_some())
        .filter_map(|c| c.obj.pointer("/status/phase").and_then(Json::as_str))
        .collect();
    let missing: Vec<&Json> = phases
        .iter()
        .filter(|p| !covered.contains(&p.as_str().unwrap_or_default()))
        .collect();
    assert!(missing.is_empty(), "phases without a case: {missing:?}");
}

/// The Argo CD tool runs a script as an override, not as a built-in check:
/// without the string and math libraries, which Argo CD opens only for its
/// own scripts.
#[tokio::test]
async fn argocd_runs_the_override_without_the_string_library() {
    let dir = tools::gitops_health()
        .await
        .expect("the GitOps health checks build");
    let scripts = tempfile::tempdir().expect("tempdir");
    let objects = [migration(1, false, None)];
    for (script, want) in [
        ("return { status = 'Healthy' }", ""),
        (
            "return { status = string.format('%s', 'Healthy') }",
            "key 'format'",
        ),
        ("return { status = tostring(math.floor(1)) }", "key 'floor'"),
    ] {
        let path = scripts.path().join("health.lua");
        std::fs::write(&path, script).expect("write script");
        let got = verdicts(&dir, "argocd-health", &path.to_string_lossy(), &objects);
        if want.is_empty() {
            assert_eq!(
                (got[0].status.as_str(), got[0].error.as_str()),
                ("Healthy", ""),
                "{script}"
            );
        } else {
            assert!(got[0].error.contains(want), "{script}: {got:?}");
        }
    }
}
