//! Admin API mTLS in the steps: what Validating refuses, the generated
//! certificate DisablingSidecar asks for before the gateways demand one, the
//! certificate DeployingController makes the controller present, and what
//! rollback removes.
//!
//! `Generate` and the operator's rights: it may `create` Secrets, never
//! read (`get`, `list`, `watch`) or `delete` them — a delete answers with
//! the object deleted, data included. So it can neither read a generated
//! Secret back after a crash nor delete one. Hence:
//! - The record that a certificate exists is the CA ConfigMap (public data,
//!   readable): its `tls.crt` and the annotation naming the Secret are
//!   written in one update, only after that Secret's create returned 201.
//!   A ConfigMap without both is a crash's leftover: a new key pair is
//!   generated, under a new name.
//! - Every attempt uses a fresh random name, never written anywhere before
//!   its create: an `AlreadyExists` can only be someone else's Secret (or a
//!   collision of 40 random bits), never taken for ours. A Secret whose
//!   create succeeded but whose ConfigMap update was lost stays unused.
//! - Each generated Secret carries an ownerReference to the ConfigMap, so
//!   the garbage collector deletes it, and any unused one from a crashed
//!   attempt, when rollback deletes the ConfigMap: no `delete` on Secrets.
//!   It has no ownerReference to the SidecarMigration: after Succeeded it
//!   outlives the CR, as the controller that mounts it does.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use kube::ResourceExt;

use crate::api::*;
use crate::kong;

use super::render::{
    client_ca_config_map, client_ca_config_map_name, client_secret, client_tls_already_configured,
    generated_secret, generated_secret_prefix,
};
use super::{Outcome, Planner, is_ours};

impl Planner<'_> {
    /// Validating: clientTLS on an install that has mTLS already, a CA
    /// ConfigMap name someone else holds, a user Secret that does not exist.
    pub(super) fn client_tls_problem(&self, pod: &PodSpec, sidecar: &Container) -> Option<Outcome> {
        let tls = self.spec.client_tls()?;
        if let Some(problem) = client_tls_already_configured(self.spec, pod, sidecar) {
            return Some(Outcome::Fail("AdminApiTlsAlreadyConfigured", problem));
        }
        if let Some(problem) = self.foreign_client_ca() {
            return Some(problem);
        }
        if tls.source == ClientTlsSource::Secret && !self.obs.missing_client_secrets.is_empty() {
            return Some(Outcome::Fail(
                "ClientCertificateSecretNotFound",
                format!(
                    "Secret {} not found in namespace {}: spec.adminApi.clientTLS names it (secretName: a kubernetes.io/tls Secret with the controller's tls.crt and tls.key; caSecretName, default secretName: tls.crt is the CA the gateways trust); create it (the operator may not watch Secrets: it looks again within 5 minutes, or at once when this SidecarMigration changes), or use source: Generate",
                    self.obs.missing_client_secrets.join(", "),
                    self.scm.namespace().unwrap_or_default()
                ),
            ));
        }
        None
    }

    fn foreign_client_ca(&self) -> Option<Outcome> {
        let tls = self.spec.client_tls()?;
        let cm = self.obs.client_ca.as_ref()?;
        (tls.source == ClientTlsSource::Generate && !is_ours(&cm.metadata, self.scm)).then(|| {
            Outcome::Fail(
                "ClientCaNameTaken",
                format!(
                    "ConfigMap {} exists and was not made by this SidecarMigration; the operator neither overwrites nor deletes it: delete it if it is a leftover, or use spec.adminApi.clientTLS source: Secret",
                    cm.name_any()
                ),
            )
        })
    }

    /// DisablingSidecar, `Generate`: the CA ConfigMap to create or complete
    /// (with a new certificate) before the gateways demand a client
    /// certificate; None once it is complete or in another mode.
    pub(super) fn client_ca_to_generate(
        &self,
        proxy: &Deployment,
    ) -> Result<Option<ConfigMap>, Outcome> {
        let Some(tls) = self.spec.client_tls() else {
            return Ok(None);
        };
        if tls.source != ClientTlsSource::Generate
            || generated_secret(self.scm, self.obs.client_ca.as_ref()).is_some()
        {
            return Ok(None);
        }
        if let Some(taken) = self.foreign_client_ca() {
            return Err(taken);
        }
        Ok(Some(client_ca_config_map(self.scm, proxy)))
    }

    /// DeployingController: the Secret the controller presents; Err while a
    /// generated one is not there yet.
    pub(super) fn controller_client_secret(&self) -> Result<Option<String>, Outcome> {
        if self.spec.client_tls().is_none() {
            return Ok(None);
        }
        match client_secret(self.scm, self.obs.client_ca.as_ref()) {
            Some(secret) => Ok(Some(secret)),
            None => Err(Outcome::Wait(format!(
                "waiting for ConfigMap {} to name the generated client certificate",
                client_ca_config_map_name(self.spec)
            ))),
        }
    }

    /// Rollback: the uid of our CA ConfigMap, whose deletion takes the
    /// generated Secrets with it (their ownerReference).
    pub(super) fn client_ca_to_delete(&self) -> Option<String> {
        let cm = self.obs.client_ca.as_ref()?;
        is_ours(&cm.metadata, self.scm)
            .then(|| cm.metadata.uid.clone())
            .flatten()
    }
}

/// The changes mTLS adds to status.plan, for the step they happen in.
pub(super) fn planned_changes(spec: &SidecarMigrationSpec, step: Phase) -> Vec<PlannedChange> {
    let Some(tls) = spec.client_tls() else {
        return Vec::new();
    };
    let change = |object: String, change: String| PlannedChange {
        step,
        object,
        change,
    };
    let generated = format!("{}<random>", generated_secret_prefix(spec));
    let client = match tls.source {
        ClientTlsSource::Generate => generated.clone(),
        ClientTlsSource::Secret => tls.secret_name.clone().unwrap_or_default(),
    };
    match step {
        Phase::DisablingSidecar => {
            let mut out = Vec::new();
            let ca = match tls.source {
                ClientTlsSource::Generate => {
                    let cm = client_ca_config_map_name(spec);
                    out.push(change(
                        format!("ConfigMap/{cm}"),
                        "create with tls.crt: a new self-signed client certificate".into(),
                    ));
                    out.push(change(
                        format!("Secret/{generated}"),
                        format!(
                            "create with that certificate and its key (kubernetes.io/tls, owned by ConfigMap {cm})"
                        ),
                    ));
                    format!("ConfigMap {cm}")
                }
                ClientTlsSource::Secret => format!(
                    "Secret {}",
                    tls.ca_secret_name.clone().unwrap_or_else(|| client.clone())
                ),
            };
            out.push(change(
                format!("Deployment/{}", spec.proxy_deployment),
                format!(
                    "demand a client certificate: {}=on, {}={}tls.crt from volume {} ({ca})",
                    kong::ENV_ADMIN_SSL_VERIFY_CLIENT,
                    kong::ENV_ADMIN_SSL_CLIENT_CERTIFICATE,
                    kong::ADMIN_CLIENT_CA_DIR,
                    kong::ADMIN_CLIENT_CA_VOLUME
                ),
            ));
            out
        }
        Phase::DeployingController => vec![change(
            format!("Deployment/{}", spec.controller_name()),
            format!(
                "present the client certificate of Secret {client}: {} and {} from volume {}",
                kong::ENV_CONTROLLER_TLS_CLIENT_CERT_FILE,
                kong::ENV_CONTROLLER_TLS_CLIENT_KEY_FILE,
                kong::ADMIN_API_CERT_VOLUME
            ),
        )],
        _ => Vec::new(),
    }
}
