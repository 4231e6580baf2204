//! A build script's progress reaches the user: `testenv::tools` passes its
//! stderr through instead of capturing it.

use std::process::{Command, Stdio};

use sidecar_migrator::testenv::tools;

const CHILD: &str = "SIDECAR_MIGRATOR_TOOLS_CHILD";
const PROGRESS: &str = "[1/1] fake: 3 packages compiled";

/// The script runs in a child test process whose stderr this test reads, as
/// a terminal would: what the script writes there must arrive, and its stdout
/// must not (that is the folder, for the caller).
#[test]
fn a_build_scripts_stderr_reaches_the_user() {
    if std::env::var_os(CHILD).is_some() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("build.sh");
        std::fs::write(
            &script,
            format!("echo '{PROGRESS}' >&2\necho /the/folder\n"),
        )
        .expect("script");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let folder = runtime
            .block_on(tools::run_script(&script, &[]))
            .expect("script runs");
        assert_eq!(folder, std::path::Path::new("/the/folder"));
        return;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "a_build_scripts_stderr_reaches_the_user"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("child test runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child test failed: {stderr}");
    assert!(stderr.contains(PROGRESS), "stderr: {stderr}");
    assert!(!stderr.contains("/the/folder"), "stderr: {stderr}");
}
