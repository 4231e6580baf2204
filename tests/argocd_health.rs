//! `deploy/argocd/health.lua` run the way Argo CD runs a health check from a
//! resource override (argo-cd `util/lua`): Lua 5.1 (gopher-lua), only the
//! base, package and table libraries open, the object as the global `obj`,
//! and the returned table's `status` one of Argo CD's health codes.

use mlua::{Lua, LuaOptions, StdLib, Table, Value};
use serde_json::{Value as Json, json};

const SCRIPT: &str = include_str!("../deploy/argocd/health.lua");

/// Argo CD's `isValidHealthStatusCode`: anything else becomes Unknown.
const HEALTH_CODES: [&str; 6] = [
    "Unknown",
    "Progressing",
    "Suspended",
    "Healthy",
    "Degraded",
    "Missing",
];

/// Runs `script` on `obj` and returns (status, message), or the error Argo CD
/// would report for the resource.
fn health(script: &str, obj: &Json) -> Result<(String, String), String> {
    // gopher-lua with SkipOpenLibs, then package, base and table: no string,
    // math, io or debug library. Argo CD also opens a reduced `os` (time and
    // date only); health.lua must not need it, so it is left closed here.
    let lua = Lua::new_with(StdLib::PACKAGE | StdLib::TABLE, LuaOptions::default())
        .map_err(|e| e.to_string())?;
    let obj = to_lua(&lua, obj).map_err(|e| e.to_string())?;
    lua.globals().set("obj", obj).map_err(|e| e.to_string())?;
    let returned: Value = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .map_err(|e| e.to_string())?;
    let Value::Table(hs) = returned else {
        return Err(format!(
            "expect table output from Lua script, not {}",
            returned.type_name()
        ));
    };
    let field = |t: &Table, k: &str| t.get::<Option<String>>(k).map_err(|e| e.to_string());
    let status = field(&hs, "status")?.unwrap_or_default();
    let message = field(&hs, "message")?.unwrap_or_default();
    if !HEALTH_CODES.contains(&status.as_str()) {
        return Err(format!("invalid health status {status:?} ({message})"));
    }
    Ok((status, message))
}

/// Argo CD's `decodeValue`: JSON null becomes nil (so `x == nil` holds for a
/// null field as for a missing one), arrays become 1-based tables without a
/// metatable, numbers become Lua numbers.
fn to_lua(lua: &Lua, value: &Json) -> mlua::Result<Value> {
    Ok(match value {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for item in items {
                table.raw_push(to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Json::Object(fields) => {
            let table = lua.create_table_with_capacity(0, fields.len())?;
            for (key, item) in fields {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

fn migration(generation: i64, status: Option<Json>) -> Json {
    let mut obj = json!({
        "apiVersion": "sidecar-migrator.dev/v1alpha1",
        "kind": "SidecarMigration",
        "metadata": { "name": "kong", "namespace": "kong", "generation": generation },
        "spec": { "proxyDeployment": "kong-kong" },
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

/// The kstatus conditions the operator writes, as `plan.rs` sets them.
fn status(observed: i64, phase: &str, ready: &str, reason: &str, stalled: &str) -> Json {
    json!({
        "observedGeneration": observed,
        "phase": phase,
        "conditions": [
            { "type": "Ready", "status": ready, "reason": reason },
            { "type": "Reconciling", "status": "False", "reason": reason },
            { "type": "Stalled", "status": stalled, "reason": reason },
        ],
    })
}

#[test]
fn argocd_health_check_maps_every_state() {
    let cases = [
        ("no status yet", migration(1, None), "Progressing"),
        (
            "succeeded",
            migration(
                2,
                Some(status(2, "Succeeded", "True", "Succeeded", "False")),
            ),
            "Healthy",
        ),
        (
            "stale observedGeneration",
            migration(
                3,
                Some(status(2, "Succeeded", "True", "Succeeded", "False")),
            ),
            "Progressing",
        ),
        (
            "awaiting approval",
            migration(
                1,
                Some(status(
                    1,
                    "AwaitingApproval",
                    "False",
                    "AwaitingApproval",
                    "False",
                )),
            ),
            "Suspended",
        ),
        (
            "paused",
            migration(1, Some(status(1, "Paused", "False", "Paused", "False"))),
            "Suspended",
        ),
        (
            "dry run",
            migration(1, Some(status(1, "Pending", "False", "DryRun", "False"))),
            "Suspended",
        ),
        (
            "failed validation",
            migration(
                1,
                Some(status(
                    1,
                    "Failed",
                    "False",
                    "ProxyDeploymentNotFound",
                    "True",
                )),
            ),
            "Degraded",
        ),
        (
            "drift",
            migration(
                1,
                Some(status(
                    1,
                    "WaitingForAdminService",
                    "False",
                    "DriftDetected",
                    "True",
                )),
            ),
            "Degraded",
        ),
        (
            "rolled back after a timeout",
            migration(
                1,
                Some(status(1, "RolledBack", "False", "RolledBack", "True")),
            ),
            "Degraded",
        ),
        (
            "rolled back on request",
            migration(
                2,
                Some(status(2, "RolledBack", "True", "RolledBack", "False")),
            ),
            "Healthy",
        ),
        (
            "in progress",
            migration(
                1,
                Some(status(
                    1,
                    "DeployingController",
                    "False",
                    "DeployingController",
                    "False",
                )),
            ),
            "Progressing",
        ),
        (
            "succeeded, without conditions",
            migration(
                1,
                Some(json!({ "observedGeneration": 1, "phase": "Succeeded" })),
            ),
            "Healthy",
        ),
        (
            "failed, without conditions",
            migration(
                1,
                Some(json!({ "observedGeneration": 1, "phase": "Failed" })),
            ),
            "Degraded",
        ),
        ("null status", migration(1, Some(Json::Null)), "Progressing"),
    ];
    let mut wrong = Vec::new();
    for (name, obj, want) in &cases {
        match health(SCRIPT, obj) {
            Ok((got, _)) if got == *want => {}
            Ok((got, message)) => wrong.push(format!("{name}: got {got} ({message}), want {want}")),
            Err(e) => wrong.push(format!("{name}: {e}")),
        }
    }
    assert!(wrong.is_empty(), "health.lua:\n{}", wrong.join("\n"));
}

/// The harness is only worth something if it refuses what Argo CD refuses:
/// Lua 5.2+ syntax, and the libraries a resource override does not get.
#[test]
fn the_harness_rejects_what_argocd_rejects() {
    let obj = migration(1, None);
    for script in [
        // Lua 5.3 integer division.
        "local x = 3 // 2 return { status = 'Healthy' }",
        // goto arrived in Lua 5.2.
        "goto done ::done:: return { status = 'Healthy' }",
        "return { status = string.format('%s', 'Healthy') }",
        "return { status = ('Healthy'):lower() }",
        "return { status = tostring(math.floor(1)) }",
        "io.write('x') return { status = 'Healthy' }",
        "return { status = 'Fine' }",
        "return 'Healthy'",
    ] {
        assert!(
            health(script, &obj).is_err(),
            "accepted a script Argo CD rejects: {script}"
        );
    }
    assert_eq!(
        health(
            "local t = {} table.insert(t, 'Healthy') return { status = t[1] }",
            &obj
        ),
        Ok(("Healthy".to_string(), String::new()))
    );
}
