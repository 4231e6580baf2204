//! Test support: a local control plane built from Kubernetes' own sources, a
//! node simulator that plays kubelet (and Kong) for the pods on it, and the
//! Kong chart renderings under `tests/fixtures/`.

mod controlplane;
mod fixtures;
mod simulator;
pub mod tools;

use std::time::Duration;

pub use controlplane::ControlPlane;
pub use fixtures::{
    apply_fixture, apply_fixture_as_helm, apply_objects, install_fixture, load_fixture,
    wait_rollout,
};
pub use simulator::NodeSimulator;

/// How often [`wait_for`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Ok(Some(value))`, and returns that value.
/// `Ok(None)` means "not yet"; an error ends the wait at once, so a check that
/// expects transient API errors should turn them into `Ok(None)`.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
