//! gRPC-native answers (contract §18) to a real gRPC client (the grpcio library, from the
//! test tools): over cleartext HTTP/2 on the plain listener (`proxy.h2c`) and over the HTTPS
//! listener (h2 by ALPN), a call refused by a rule is RESOURCE_EXHAUSTED naming the rule,
//! and a call whose upstream cannot be reached is UNAVAILABLE.

mod common;

use std::process::Command;
use std::time::Duration;

use common::free_port;
use common::procs::Gateway;
use common::topologies::Certs;
use common::wait_for;
use serde_json::Value;

/// The calls' results, one per call, from `tests/grpc/call.py`.
fn calls(target: &str, n: u32, tls: Option<(&str, &str)>) -> Vec<Value> {
    let mut cmd = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/tools/bin/python"
    ));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/call.py"))
        .args([target, "/test.Echo/Say", &n.to_string()]);
    if let Some((ca, name)) = tls {
        cmd.args(["--tls", ca, name]);
    }
    let out = cmd
        .output()
        .expect("the test tools' python with grpcio (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn codes(results: &[Value]) -> Vec<&str> {
    results
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect()
}

const RULE: &str = "[limits]\ndefault_limit = 1000\n[[rules]]\nname = \"grpc-calls\"\npath_prefix = \"/test.\"\nkey = \"header:X-Api-Key\"\nlimit = 1\nwindow_ms = 60000\n";

#[test]
fn refusals_and_gateway_errors_reach_a_grpc_client_as_grpc_statuses() {
    let certs = Certs::generate();
    let tls_port = free_port();
    // The upstream is a port nothing listens on: the allowed call cannot be sent.
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"127.0.0.1:{}\"]\nh2c = true\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            free_port(),
            certs.file("server.pem"),
            certs.file("server.key")
        ),
        RULE,
    );
    // Cleartext HTTP/2 on the plain listener.
    let plain = calls(&gw.proxy, 3, None);
    assert_eq!(
        codes(&plain),
        ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    );
    let details = plain[1]["details"].as_str().unwrap();
    assert!(details.contains("grpc-calls"), "{details}");
    assert!(details.contains("retry after"), "{details}");
    // The HTTPS listener, h2 by ALPN: the same counter.
    let addr = format!("127.0.0.1:{tls_port}");
    wait_for("the TLS listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let tls = calls(&addr, 1, Some((&certs.file("ca.pem"), "localhost")));
    assert_eq!(codes(&tls), ["RESOURCE_EXHAUSTED"], "{tls:?}");
    // HTTP/1.1 still works on the plain listener beside h2c.
    let r = common::http::get(&gw.proxy, "/test.Echo/Say", &[("X-Api-Key", "client-1")]).unwrap();
    assert_eq!(r.status, 429);
}
