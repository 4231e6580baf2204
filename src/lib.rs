//! sidecar-migrator: moves a Kong Ingress Controller installation from the
//! sidecar topology to Gateway Discovery, driven by one `SidecarMigration`.

pub mod api;
#[cfg(feature = "testenv")]
pub mod bench;
#[cfg(feature = "testenv")]
pub mod demo;
pub mod kic_rbac;
pub mod kong;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod reconcile;
#[cfg(feature = "testenv")]
pub mod testenv;
