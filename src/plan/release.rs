//! The controller release: the Helm release that will own the controller
//! after the hand-off, which names and shapes the controller Deployment.
//! Defaulted from the source install's Helm release, and pinned in status
//! while validating, so that relabelling the proxy Deployment mid-migration
//! never renames what the migration made.

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::Deployment;

use crate::api::*;

use super::helm_release;

/// The default controller release for a proxy Deployment that Helm
/// installed (Helm's ownership metadata, as `helm install` writes it):
/// `<release>-controller`, the name Kong's documentation gives it.
pub fn default_controller_release(proxy: &Deployment) -> Option<String> {
    helm_release(&proxy.metadata).map(|(release, _)| format!("{release}-controller"))
}

/// The controller release this migration uses: `spec.controller.release`;
/// else the one pinned in status while validating; else, before the first
/// change and with neither controller name nor release set, the default
/// for the proxy Deployment as it is now. A migration that started without
/// a pin (an older operator) keeps running without a release.
pub fn controller_release(scm: &SidecarMigration, proxy: Option<&Deployment>) -> Option<String> {
    let spec = &scm.spec;
    if let Some(release) = spec.controller_release() {
        return Some(release.to_string());
    }
    if spec.controller.as_ref().is_some_and(|c| c.name.is_some()) {
        return None;
    }
    let status = scm.status.as_ref();
    if let Some(pinned) = status.and_then(|s| s.controller_release.clone()) {
        return Some(pinned);
    }
    if status.is_some_and(|s| s.original.is_some()) {
        return None;
    }
    proxy.and_then(default_controller_release)
}

/// The migration as the planner and the executor see it: with the
/// controller release it uses in `spec.controller.release`, so every name
/// derived from it (`controller_name`, the RBAC and NetworkPolicy names)
/// follows. The object stored in the cluster is left as the user wrote it.
pub fn with_controller_release<'a>(
    scm: &'a SidecarMigration,
    proxy: Option<&Deployment>,
) -> Cow<'a, SidecarMigration> {
    match controller_release(scm, proxy) {
        Some(release) if scm.spec.controller_release() != Some(release.as_str()) => {
            let mut m = scm.clone();
            m.spec
                .controller
                .get_or_insert_with(Default::default)
                .release = Some(release);
            Cow::Owned(m)
        }
        _ => Cow::Borrowed(scm),
    }
}
