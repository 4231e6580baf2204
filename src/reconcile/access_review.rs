//! The hand-off's permission check: SubjectAccessReviews that ask the API
//! server's authorizer whether a ServiceAccount may do what KIC does. Asking
//! grants nothing; the answer counts every binding, whoever made it.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::kic_rbac::{Permission, Scope};
use crate::plan::{AccessCheck, HandoffAccess};

use super::read;

pub(super) async fn run(
    client: &Client,
    check: &AccessCheck,
) -> Result<HandoffAccess, kube::Error> {
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let ns = &check.namespace;
    let controller_missing = first(
        &reviews,
        ns,
        &check.controller_account,
        &check.permissions,
        false,
    )
    .await?;
    let gateway_holds_any = match &check.gateway_account {
        Some(gateway) => first(&reviews, ns, gateway, &check.permissions, true)
            .await?
            .is_some(),
        None => false,
    };
    Ok(HandoffAccess {
        controller_account: check.controller_account.clone(),
        controller_missing,
        gateway_account: check.gateway_account.clone(),
        gateway_holds_any,
    })
}

/// The first permission whose answer for `account` is `allowed`: stops
/// there, so a check costs one question per permission at most.
async fn first(
    reviews: &Api<SubjectAccessReview>,
    ns: &str,
    account: &str,
    permissions: &[Permission],
    allowed: bool,
) -> Result<Option<Permission>, kube::Error> {
    let pp = PostParams::default();
    for p in permissions {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!("system:serviceaccount:{ns}:{account}")),
                // The groups the API server's ServiceAccount token
                // authenticator gives it: bindings to them count too.
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(p.group.into()),
                    resource: Some(p.resource.into()),
                    subresource: p.subresource.map(Into::into),
                    verb: Some(p.verb.into()),
                    namespace: match p.scope {
                        Scope::Cluster => None,
                        Scope::Namespace => Some(ns.into()),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        // A review stores nothing: asked again on a transient failure, as a read.
        let answer = read(|| reviews.create(&pp, &review)).await?;
        if answer.status.is_some_and(|s| s.allowed) == allowed {
            return Ok(Some(p.clone()));
        }
    }
    Ok(None)
}
