//! The admin API under random input: schemathesis (PyPI) generates requests from
//! `GET /openapi.json` and checks every answer against the document — no 5xx, no response
//! that breaks the schema, invalid input rejected.

mod common;

use std::process::Command;

use common::procs::{Gateway, RedisServer};

/// Rules of every kind, so `/api/limits` and `/api/explain` have something to say.
const RULES: &str = r#"
[headers]
style = "both"
[[rules]]
name = "login"
methods = ["POST"]
path_prefix = "/login"
limit = 2
overrides = { "10.0.0.7" = 20 }
[[rules]]
name = "search"
path_regex = "^/search"
host = "*.example.com"
key = "global"
limit = 3
shadow = true
[[rules]]
name = "health"
path = "/healthz"
unlimited = true
"#;

fn schemathesis(admin: &str) {
    let out = Command::new("st")
        .args(["run", &format!("http://{admin}/openapi.json")])
        .args(["--checks", "all", "--max-examples", "40", "--seed", "1"])
        .env("SCHEMATHESIS_HOOKS", "")
        // schemathesis keeps a cache in its working directory; keep it out of the tree.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("schemathesis (`st`, from PyPI) must be installed; scripts/test.sh does it");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admin_api_survives_schemathesis_with_the_embedded_store() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!("[limits]\ndefault_limit = 5\n{RULES}"),
    );
    schemathesis(&gw.admin);
    assert_eq!(
        common::http::get(&gw.admin, "/health", &[]).unwrap().status,
        200
    );
}

#[test]
fn admin_api_survives_schemathesis_with_redis() {
    let redis = RedisServer::start();
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\n[limits]\ndefault_limit = 5\n{RULES}",
            redis.url()
        ),
    );
    schemathesis(&gw.admin);
    assert_eq!(
        common::http::get(&gw.admin, "/health", &[]).unwrap().status,
        200
    );
}
