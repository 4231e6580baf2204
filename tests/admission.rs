//! Bad input at admission, fuzz-style: many invalid SidecarMigration specs
//! against the real API server. Each is refused by the schema or its CEL
//! rules; the ones the schema cannot judge (they name objects that do not
//! fit) are reported by a condition; the operator keeps running throughout.

mod support;

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use sidecar_migrator::api::Phase;
use support::*;

/// A valid spec, to be broken one or two fields at a time.
fn base() -> Value {
    json!({
        "proxyDeployment": PROXY,
        "containers": { "proxy": "proxy", "controller": SIDECAR },
        "adminService": { "name": "kong-kong-admin" },
        "controller": { "name": CONTROLLER, "replicas": 1, "image": "kong/kubernetes-ingress-controller:3.4" },
        "cutover": "ZeroDowntime",
        "approval": "Manual",
        "stepTimeoutSeconds": 600,
        "onTimeout": "RollBack",
        "dryRun": true,
    })
}

/// Values no field may take, by field (a JSON pointer into the spec).
fn bad_values() -> Vec<(&'static str, Vec<Value>)> {
    let long = |n: usize| Value::from("a".repeat(n));
    let dns = vec![
        json!(""),
        json!("Upper"),
        json!("under_score"),
        json!("-leading"),
        json!("trailing-"),
        json!("sp ace"),
        json!(5),
        json!(true),
        json!(["a"]),
        json!({ "a": 1 }),
    ];
    let with = |mut v: Vec<Value>, more: Vec<Value>| {
        v.extend(more);
        v
    };
    let enum_bad = vec![json!(""), json!("zeroDowntime"), json!("Other"), json!(1)];
    let bool_bad = vec![json!("yes"), json!(1), json!("true"), json!([true])];
    vec![
        (
            "/proxyDeployment",
            with(dns.clone(), vec![json!("ns/name"), long(254), json!(null)]),
        ),
        ("/containers/proxy", with(dns.clone(), vec![long(64)])),
        ("/containers/controller", with(dns.clone(), vec![long(64)])),
        (
            "/adminService/name",
            with(dns.clone(), vec![json!("1starts-with-digit"), long(64)]),
        ),
        ("/controller/name", with(dns, vec![long(64)])),
        (
            "/controller/replicas",
            vec![json!(0), json!(-1), json!(101), json!("3"), json!(1.5)],
        ),
        ("/controller/image", vec![json!(""), json!(5), json!([])]),
        ("/cutover", enum_bad.clone()),
        ("/approval", enum_bad.clone()),
        ("/onTimeout", enum_bad),
        ("/approved", bool_bad.clone()),
        ("/paused", bool_bad.clone()),
        ("/dryRun", bool_bad.clone()),
        ("/rollback", bool_bad),
        (
            "/stepTimeoutSeconds",
            vec![
                json!(0),
                json!(9),
                json!(86401),
                json!(-5),
                json!("60"),
                json!(1.5),
            ],
        ),
        ("/unknownField", vec![json!("x"), json!(1)]),
        ("/controller/unknown", vec![json!("x")]),
    ]
}

fn set(spec: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = spec.pointer_mut(parent).expect("parent exists in base()");
    parent[key] = value;
}

/// A small deterministic generator, so a failure names a reproducible case.
struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn invalid_specs() -> Vec<(String, Value)> {
    let table = bad_values();
    let mut specs = Vec::new();
    for (pointer, values) in &table {
        for v in values {
            let mut spec = base();
            set(&mut spec, pointer, v.clone());
            specs.push((format!("{pointer} = {v}"), spec));
        }
    }
    // Pairs of bad fields, and a bad field beside the approved-without-
    // Manual rule.
    let mut rng = XorShift(0x5eed_cafe);
    for _ in 0..60 {
        let mut spec = base();
        let mut what = Vec::new();
        for _ in 0..2 {
            let (pointer, values) = &table[rng.below(table.len())];
            let v = values[rng.below(values.len())].clone();
            what.push(format!("{pointer} = {v}"));
            set(&mut spec, pointer, v);
        }
        specs.push((what.join(", "), spec));
    }
    let mut approved = base();
    set(&mut approved, "/approval", json!("Automatic"));
    set(&mut approved, "/approved", json!(true));
    specs.push(("approved without approval: Manual".into(), approved));
    // Names derived from proxyDeployment that no object can carry.
    for (proxy, drop) in [
        ("a".repeat(253), vec!["adminService", "controller"]),
        ("a".repeat(58), vec!["adminService"]),
        ("a".repeat(53), vec!["controller"]),
        ("kong.kong".to_string(), vec!["adminService"]),
        ("1kong".to_string(), vec!["adminService"]),
    ] {
        let mut spec = base();
        set(&mut spec, "/proxyDeployment", json!(proxy));
        for key in &drop {
            spec.as_object_mut().expect("object").remove(*key);
        }
        specs.push((format!("proxyDeployment {proxy:?} without {drop:?}"), spec));
    }
    let mut missing = base();
    missing
        .as_object_mut()
        .expect("object")
        .remove("proxyDeployment");
    specs.push(("no proxyDeployment".into(), missing));
    specs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_spec_is_refused_or_reported() {
    let case = Case::new("sidecar-1-replica.yaml").await;
    let before = case.deployments().get(PROXY).await.expect("proxy");
    let specs = invalid_specs();
    assert!(specs.len() > 150, "{} specs", specs.len());
    // As kubectl sends it: unknown fields are an error, not dropped.
    let strict = PatchParams::apply("fuzz").force().validation_strict();
    for (i, (what, spec)) in specs.iter().enumerate() {
        let name = format!("fuzz-{i}");
        let obj = json!({
            "apiVersion": "sidecar-migrator.dev/v1alpha1",
            "kind": "SidecarMigration",
            "metadata": { "name": name },
            "spec": spec,
        });
        let result = case
            .migrations()
            .patch(&name, &strict, &Patch::Apply(&obj))
            .await;
        match result {
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {}
            // kube-apiserver answers a type mismatch under server-side apply
            // with 500 (it fails building the typed patch): still a refusal.
            Err(kube::Error::Api(e))
                if e.code == 500 && e.message.contains("failed to create typed patch object") => {}
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: accepted {spec}"),
        }
    }

    // Valid by the schema, wrong for this cluster: a condition says so.
    let wrong = [
        (
            "no such Deployment",
            json!({ "proxyDeployment": "nope" }),
            "ProxyDeploymentNotFound",
        ),
        (
            "no such container",
            json!({ "proxyDeployment": PROXY, "containers": { "proxy": "gateway" } }),
            "ProxyContainerNotFound",
        ),
        (
            "the controller named like the proxy",
            json!({ "proxyDeployment": PROXY, "controller": { "name": PROXY }, "dryRun": true }),
            "ControllerNameTaken",
        ),
    ];
    for (i, (what, spec, reason)) in wrong.into_iter().enumerate() {
        let name = format!("wrong-{i}");
        case.start(&name, spec).await;
        let m = case.wait_phase(&name, Phase::Failed).await;
        assert_eq!(condition(&m, "Stalled"), ("True", reason), "{what}");
        case.wait_event(&name, reason).await;
        case.delete_and_wait_gone(&name).await;
    }

    // The operator is alive and nothing was changed.
    case.start("valid", json!({ "proxyDeployment": PROXY, "dryRun": true }))
        .await;
    case.wait_until("valid", "a dry-run plan", |m| {
        m.status.as_ref().is_some_and(|s| !s.plan.is_empty())
    })
    .await;
    let after = case.deployments().get(PROXY).await.expect("proxy");
    assert_eq!(after.metadata.generation, before.metadata.generation);
}

/// The CEL rules that keep `controller.name` and `adminService.name` as they
/// were created: changing, setting or removing either is refused, while
/// re-applying the same names and changing any other field is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_admin_service_names_cannot_change() {
    let case = Case::without_operator("sidecar-1-replica.yaml").await;
    for (object, field) in [
        ("controller", "controller.name"),
        ("adminService", "adminService.name"),
    ] {
        let named = format!("named-{}", object.to_lowercase());
        case.start(&named, base()).await;
        let unnamed = format!("unnamed-{}", object.to_lowercase());
        case.start(
            &unnamed,
            json!({ "proxyDeployment": PROXY, "dryRun": true }),
        )
        .await;
        let refusals = [
            (named.as_str(), "changed", json!("other-name")),
            (named.as_str(), "removed", Value::Null),
            (unnamed.as_str(), "set later", json!("other-name")),
        ];
        for (name, what, value) in refusals {
            let patch = json!({ "spec": { object: { "name": value } } });
            let result = case
                .migrations()
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            match result {
                Err(kube::Error::Api(e)) if e.code == 422 => assert!(
                    e.message
                        .contains(&format!("{field} cannot change once set")),
                    "{field} {what}: {}",
                    e.message
                ),
                Err(e) => panic!("{field} {what}: unexpected error {e}"),
                Ok(_) => panic!("{field} {what}: accepted"),
            }
        }
        // Not a rule that refuses every update.
        let same = base()[object]["name"].clone();
        let patch = json!({ "spec": { object: { "name": same }, "paused": true } });
        case.migrations()
            .patch(&named, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("{field} unchanged, paused set: {e}"));
    }
}
