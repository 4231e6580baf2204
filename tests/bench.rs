//! `sidecar-migrator bench` end to end at its smallest: one run of each
//! procedure, two migrations at once, the idle operator beside 20 pods, a
//! finished migration beside 5 pods created and deleted. It
//! checks what the tables say, not how fast: the numbers belong in
//! docs/benchmarks.md, from a release build on a quiet machine.

use std::collections::HashMap;

/// The rows of every Markdown table the bench printed, by their first cell.
fn rows(stdout: &str) -> HashMap<String, Vec<String>> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("|---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

#[tokio::test]
async fn the_bench_runs_every_procedure_and_reports_them() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-migrator"))
        .args([
            "bench",
            "--runs",
            "1",
            "--scale",
            "2",
            "--idle-pods",
            "20",
            "--wakeup-pods",
            "5",
            // Kong's order finishes only when KIC happens to restart in a
            // gap between sidecar pods: a bounded try is enough here.
            "--manual-give-up-s",
            "30",
        ])
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("the bench starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&stdout);
    let row = |name: &str| {
        rows.get(name)
            .unwrap_or_else(|| panic!("no row {name:?} in\n{stdout}"))
    };

    // procedure | runs | runs with downtime | downtime ms | time | all | operator | deletes | given up
    let zero = row("operator, ZeroDowntime");
    assert_eq!(zero[2], "0", "ZeroDowntime dropped traffic:\n{stdout}");
    assert_ne!(zero[6], "-", "no operator-only request count:\n{stdout}");
    // reaction | cutover | median | p99 | max | n: three for ZeroDowntime.
    let reactions = stdout
        .lines()
        .filter(|l| l.contains(" → ") && l.contains("| ZeroDowntime |"))
        .count();
    assert_eq!(reactions, 3, "three reactions measured:\n{stdout}");
    // Whether Kong's order drops traffic in one run is a race (see
    // docs/benchmarks.md); that it finishes and is reported is not.
    assert_eq!(row("operator, DeleteLegacyPods")[1], "1");
    let manual = row("manual (Kong's docs)");
    assert_eq!(manual[1], "1");
    assert_ne!(manual[7], "-", "the replay counts its deletes:\n{stdout}");
    assert!(
        manual[8] == "0" || manual[4] == "-",
        "a run that gave up has no time to done:\n{stdout}"
    );

    // migrations at once | time | peak RSS | CPU | requests | reconciles | watches
    let scale = row("2");
    // SidecarMigrations, and seven kinds of what migrations read while one
    // is unfinished.
    assert_eq!(scale[6], "8", "the operator holds eight watches:\n{stdout}");
    // unrelated pods | RSS | peak | CPU | requests while idle
    assert_eq!(
        row("20")[4],
        "0",
        "an idle operator makes no request:\n{stdout}"
    );
    // build | pods | reconciles | requests: churn beside a finished
    // migration wakes nothing.
    let this = row("this");
    assert_eq!(
        (this[2].as_str(), this[3].as_str()),
        ("0", "0"),
        "a finished migration was woken:\n{stdout}"
    );
}
