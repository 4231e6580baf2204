//! The Go tools the tests and the demo run, each built and cached by its
//! `hack/<tool>/build.sh` from the Go module proxy (helm and promtool for the
//! chart's tests; Argo CD's and Flux's health checks for the GitOps files'
//! tests; the control plane's binaries, through `controlplane.rs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};

/// Runs `hack/<tool>/build.sh` with `args` and returns the folder it prints.
pub async fn build(tool: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run_script(&root.join("hack").join(tool).join("build.sh"), args).await
}

/// Runs a build script and returns the last line of its stdout. Its stderr
/// is the user's: a first build takes minutes and reports its progress there,
/// live. (Tokio's `Command::output` would pipe it whatever was set.)
pub async fn run_script(script: &Path, args: &[&str]) -> anyhow::Result<PathBuf> {
    let child = tokio::process::Command::new("bash")
        .arg(script)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let out = child
        .wait_with_output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); its output is above",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .with_context(|| format!("{} printed no folder", script.display()))?;
    Ok(PathBuf::from(dir.trim()))
}

/// The path of helm, built on first use.
pub async fn helm() -> anyhow::Result<PathBuf> {
    Ok(build("helm", &[]).await?.join("helm"))
}

/// The path of promtool, built on first use.
pub async fn promtool() -> anyhow::Result<PathBuf> {
    Ok(build("promtool", &[]).await?.join("promtool"))
}

/// The folder holding `argocd-health` and `flux-health`, Argo CD's and Flux's
/// own health-check code (`hack/gitops-health/`), built on first use.
pub async fn gitops_health() -> anyhow::Result<PathBuf> {
    build("gitops-health", &[]).await
}
