//! The Argo CD health check runs under a real Lua interpreter on status samples.

use std::process::Command;

#[test]
fn argocd_health_check_maps_every_state() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health_test.lua");
    let out = Command::new("lua5.4")
        .arg(script)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lua5.4 ({e}): install it with `apt-get install lua5.4`")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "health.lua gave a wrong answer:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all samples passed"), "{stdout}");
}
