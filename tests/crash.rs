//! Crash anywhere: the operator binary, run as its own process, is killed
//! with SIGKILL at many points of a migration (after its k-th status write,
//! at once or a few milliseconds later, so mid-action too), restarted, and
//! the migration must still end once, whole, without a duplicate or an
//! orphan, and, in ZeroDowntime, without the proxy ever losing its last
//! Ready endpoint.

mod support;

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, watcher};
use serde_json::{Value, json};
use sidecar_migrator::api::{MANAGED_BY, MANAGED_BY_LABEL, Phase};
use support::*;
use tokio::process::{Child, Command};

/// The operator as a process of its own, watching the test's namespace.
fn spawn_operator(case: &Case) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sidecar-migrator"))
        .args(["run", "--namespace", &case.ns, "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", case.cp.kubeconfig_path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the operator binary starts")
}

/// The migration's phase as it is now (None: no status yet).
async fn phase(case: &Case) -> Option<Phase> {
    let m = case.migrations().get("kong").await.expect("the migration");
    m.status.map(|s| s.phase)
}

/// What the user answers when the migration awaits approval.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Approve,
    RollBack,
}

impl Answer {
    fn patch(self) -> Value {
        match self {
            Answer::Approve => json!({ "approved": true }),
            Answer::RollBack => json!({ "rollback": true }),
        }
    }

    fn end(self) -> Phase {
        match self {
            Answer::Approve => Phase::Succeeded,
            Answer::RollBack => Phase::RolledBack,
        }
    }
}

/// Runs one migration, killing the operator after its `kill_after`-th status
/// write (0: right after the SidecarMigration is applied), plus `delay`,
/// and restarting it. Returns the phase the killed operator left the
/// migration in: the one it died in.
async fn migrate_with_a_crash(
    fixture: &str,
    spec: Value,
    answer: Answer,
    kill_after: usize,
    delay: Duration,
) -> (Case, Option<Phase>) {
    let case = Case::without_operator(fixture).await;
    // A watch, not a poll: it delivers every status write, so the k-th write
    // is the same point of the migration in every run, however short the
    // step it starts.
    let migrations = watcher(
        case.migrations(),
        watcher::Config::default().fields("metadata.name=kong"),
    );
    let mut migrations = std::pin::pin!(migrations);
    while !matches!(migrations.next().await, Some(Ok(watcher::Event::InitDone))) {}
    let mut operator = spawn_operator(&case);
    case.start("kong", spec).await;
    let mut writes = 0;
    let mut last = None;
    let mut answered = false;
    let kill_point = async {
        while writes < kill_after {
            let Some(event) = migrations.next().await else {
                panic!("the watch ended")
            };
            let Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) = event else {
                continue;
            };
            let Some(status) = m.status else { continue };
            let value = serde_json::to_value(&status).expect("status");
            // Metadata-only changes (the finalizer) repeat the last status.
            if last.as_ref() != Some(&value) {
                last = Some(value);
                writes += 1;
            }
            if status.phase == answer.end() {
                return;
            }
            // The user answers when asked, so kill points reach past approval;
            // at the kill point itself the kill comes first (the answer
            // follows the restart), or the phase that asked would race the
            // operator's reaction to the answer.
            if status.phase == Phase::AwaitingApproval && !answered && writes < kill_after {
                case.set("kong", answer.patch()).await;
                answered = true;
            }
        }
    };
    tokio::time::timeout(DEADLINE, kill_point)
        .await
        .expect("kill point reached");
    // Not a wait: it moves the kill point into the action that follows the
    // status write.
    tokio::time::sleep(delay).await;
    operator.start_kill().expect("SIGKILL");
    let _ = operator.wait().await;
    let killed_in = phase(&case).await;
    // A new process, as a Deployment would start after the crash.
    let mut operator = spawn_operator(&case);
    if !answered {
        let m = case
            .wait_until("kong", "approval or the end", |m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::AwaitingApproval || s.phase == answer.end())
            })
            .await;
        if m.status.as_ref().map(|s| s.phase) == Some(Phase::AwaitingApproval) {
            case.set("kong", answer.patch()).await;
        }
    }
    case.wait_phase("kong", answer.end()).await;
    operator.start_kill().expect("stop");
    let _ = operator.wait().await;
    (case, killed_in)
}

/// After a rollback: the sidecar rendering serves, and nothing the
/// migration made is left.
async fn assert_nothing_left(case: &Case, replicas: usize) {
    assert_rolled_back(case, replicas).await;
    let ours = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let deployments = case.deployments().list(&ours).await.expect("list");
    assert!(
        deployments.items.is_empty(),
        "no controller Deployment left"
    );
    let roles = Api::<Role>::namespaced(case.client.clone(), &case.ns)
        .list(&ours)
        .await
        .expect("list");
    assert!(roles.items.is_empty(), "no Role left");
    let bindings = Api::<RoleBinding>::namespaced(case.client.clone(), &case.ns)
        .list(&ours)
        .await
        .expect("list");
    assert!(bindings.items.is_empty(), "no RoleBinding left");
}

/// Exactly one of each object the migration makes, nothing left behind.
async fn assert_whole(case: &Case, replicas: usize) {
    assert_migrated(case, replicas).await;
    let ours = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let deployments = case.deployments().list(&ours).await.expect("list");
    assert_eq!(deployments.items.len(), 1, "one controller Deployment");
    let services = Api::<Service>::namespaced(case.client.clone(), &case.ns)
        .list(&ours)
        .await
        .expect("list");
    assert_eq!(services.items.len(), 1, "one admin Service");
    let roles = Api::<Role>::namespaced(case.client.clone(), &case.ns)
        .list(&ours)
        .await
        .expect("list");
    assert_eq!(roles.items.len(), 1, "one Role");
    let bindings = Api::<RoleBinding>::namespaced(case.client.clone(), &case.ns)
        .list(&ours)
        .await
        .expect("list");
    assert_eq!(bindings.items.len(), 1, "one RoleBinding");
    let m = case.migrations().get("kong").await.expect("migration");
    assert_eq!(
        m.metadata.finalizers.unwrap_or_default().len(),
        1,
        "one finalizer"
    );
}

/// Kill points: right after the apply, then after the 1st to `writes`-th
/// status write, each at once and 20 ms later. A kill point that lands once
/// the migration has ended tests nothing: at least `landing` must land
/// before (the last step writes more or fewer statuses from run to run, so
/// the last few may not), and the phases they die in must include each of
/// `steps` (None: before the operator's first status write).
async fn crash_at_every_point(
    fixture: &str,
    spec: Value,
    answer: Answer,
    writes: usize,
    replicas: usize,
    landing: usize,
    steps: &[Option<Phase>],
) {
    let zero_downtime = spec.get("cutover").is_none();
    let mut phases = Vec::new();
    for k in 0..=writes {
        for delay in [Duration::ZERO, Duration::from_millis(20)] {
            let (case, phase) = migrate_with_a_crash(fixture, spec.clone(), answer, k, delay).await;
            match answer {
                Answer::Approve => assert_whole(&case, replicas).await,
                Answer::RollBack => assert_nothing_left(&case, replicas).await,
            }
            if zero_downtime {
                assert_eq!(
                    case.downtime_ms(),
                    0,
                    "killed after write {k} (+{delay:?}) in {phase:?}"
                );
            }
            phases.push(phase);
        }
    }
    eprintln!("killed in: {phases:?}");
    // None: killed before the operator wrote any status, a kill point too.
    let landed: Vec<Option<Phase>> = phases
        .iter()
        .filter(|p| **p != Some(answer.end()))
        .copied()
        .collect();
    assert!(
        landed.len() >= landing,
        "{} of {} kill points landed before {:?}: {phases:?}",
        landed.len(),
        phases.len(),
        answer.end()
    );
    let missed: Vec<&Option<Phase>> = steps.iter().filter(|s| !landed.contains(s)).collect();
    assert!(
        missed.is_empty(),
        "no kill point landed in {missed:?}: {phases:?}"
    );
}

/// The phases a migration's status shows, in order, up to the legacy pods'
/// removal. None: before the operator's first status write. Validating is
/// not among them: it acts on nothing, and the reconcile that passes it
/// writes its findings with DisablingSidecar as the first status, so the
/// kill points after that write are the ones right after validation.
const STEPS: &[Option<Phase>] = &[
    None,
    Some(Phase::DisablingSidecar),
    Some(Phase::DeployingController),
    Some(Phase::WaitingForAdminService),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_survives_sigkill_anywhere() {
    crash_at_every_point(
        "sidecar-3-replicas-pdb.yaml",
        json!({ "proxyDeployment": PROXY }),
        Answer::Approve,
        8,
        3,
        16,
        &[STEPS, &[Some(Phase::DeletingLegacyPods)]].concat(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_approval_survives_sigkill_anywhere() {
    crash_at_every_point(
        "sidecar-1-replica.yaml",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
        Answer::Approve,
        8,
        1,
        14,
        &[
            STEPS,
            &[
                Some(Phase::AwaitingApproval),
                Some(Phase::DeletingLegacyPods),
            ],
        ]
        .concat(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_documented_order_survives_sigkill_anywhere() {
    crash_at_every_point(
        "sidecar-1-replica.yaml",
        json!({ "proxyDeployment": PROXY, "cutover": "DeleteLegacyPods" }),
        Answer::Approve,
        7,
        1,
        12,
        // Kong's order needs no wait for the admin Service: the reconcile
        // that finds it listing a new pod goes on to the legacy pods'
        // removal, which its status write shows.
        &[&STEPS[..3], &[Some(Phase::DeletingLegacyPods)]].concat(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_survives_sigkill_anywhere() {
    crash_at_every_point(
        "sidecar-1-replica.yaml",
        json!({ "proxyDeployment": PROXY, "approval": "Manual" }),
        Answer::RollBack,
        8,
        1,
        16,
        &[
            STEPS,
            &[Some(Phase::AwaitingApproval), Some(Phase::RollingBack)],
        ]
        .concat(),
    )
    .await;
}
