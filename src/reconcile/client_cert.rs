//! `clientTLS: Generate`, carried out: the CA ConfigMap, the Secret with a
//! new self-signed client certificate, then both halves of the record in one
//! update of the ConfigMap. Why in this order, and why it needs `create` on
//! Secrets and nothing else: `plan/client_tls.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use crate::api::*;
use crate::plan;

/// A self-signed client certificate and its key, PEM, and a random suffix
/// for the Secret's name.
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
    pub suffix: String,
}

/// A new key pair and a certificate for it that is its own CA: the
/// gateways trust exactly this certificate (there is no CA key left to sign
/// another one with), and the controller presents it.
pub fn generate(common_name: &str) -> Result<Generated, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // Ten years, as the chart's generated certificates.
    let now = chrono::Utc::now().date_naive();
    let day = |years: i32| {
        use chrono::Datelike;
        rcgen::date_time_ymd(
            now.year() + years,
            now.month() as u8,
            now.day().min(28) as u8,
        )
    };
    params.not_before = day(0);
    params.not_after = day(10);
    let cert = params.self_signed(&key)?;
    let suffix = key
        .public_key_raw()
        .iter()
        .rev()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        suffix,
    })
}

/// Runs `GenerateClientCertificate`. A 409 from any write comes back as
/// such: the executor reads again and the plan decides anew.
pub async fn run(
    client: &Client,
    ns: &str,
    scm: &SidecarMigration,
    wanted: &ConfigMap,
) -> Result<(), kube::Error> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    // The plan saw none, or an unfinished one of ours: create, or take it.
    let config_map = match config_maps.create(&pp, wanted).await {
        Ok(cm) => cm,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let live = config_maps.get(&wanted.name_any()).await?;
            if !plan::is_ours(&live.metadata, scm) {
                return Err(kube::Error::Api(e));
            }
            if plan::generated_secret(scm, Some(&live)).is_some() {
                return Ok(());
            }
            live
        }
        Err(e) => return Err(e),
    };
    let common_name = format!("{}.{ns}", scm.spec.controller_name());
    let generated = generate(&common_name).map_err(|e| {
        kube::Error::Service(format!("generating the client certificate: {e}").into())
    })?;
    let name = format!(
        "{}{}",
        plan::generated_secret_prefix(&scm.spec),
        generated.suffix
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                MIGRATION_ANNOTATION.to_string(),
                scm.name_any(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: config_map.name_any(),
                uid: config_map.uid().unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), generated.cert_pem.clone()),
            ("tls.key".to_string(), generated.key_pem),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&pp, &secret)
        .await?;
    // Both halves of the record at once, and only onto the ConfigMap this
    // Secret's ownerReference names (the resourceVersion makes it fail
    // rather than complete a ConfigMap someone replaced meanwhile).
    let patch = json!({
        "metadata": {
            "resourceVersion": config_map.resource_version(),
            "annotations": { CLIENT_SECRET_ANNOTATION: name },
        },
        "data": { "tls.crt": generated.cert_pem },
    });
    config_maps
        .patch(
            &config_map.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_certificate_is_new_and_names_its_own_secret() {
        let a = generate("kong-kong-controller.kong").expect("generates");
        let b = generate("kong-kong-controller.kong").expect("generates");
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.key_pem.contains("PRIVATE KEY"));
        assert_ne!(a.key_pem, b.key_pem);
        assert_ne!(a.suffix, b.suffix, "a new name for each attempt");
        assert_eq!(a.suffix.len(), 10);
        assert!(a.suffix.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
