//! gRPC through the gateway (contract §18), with the grpcio library's client and server
//! (from the test tools): a real gRPC service behind an `h2://` route answers unary and
//! server-streaming calls over cleartext HTTP/2 on the plain listener (`proxy.h2c`) and over
//! the HTTPS listener (h2 by ALPN); a call refused by a rule is RESOURCE_EXHAUSTED naming the
//! rule, and a call whose upstream cannot be reached is UNAVAILABLE.

mod common;

use std::process::Command;
use std::time::Duration;

use common::free_port;
use common::procs::Gateway;
use common::topologies::Certs;
use common::wait_for;
use serde_json::Value;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/python");

/// The calls' results, one per call, from `tests/grpc/call.py`.
fn calls(target: &str, n: u32, tls: Option<(&str, &str)>) -> Vec<Value> {
    calls_of(target, "/test.Echo/Say", n, tls, &[])
}

fn calls_of(
    target: &str,
    method: &str,
    n: u32,
    tls: Option<(&str, &str)>,
    extra: &[&str],
) -> Vec<Value> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/call.py"))
        .args([target, method, &n.to_string()])
        .args(extra);
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
    // The upstream is a gRPC one (h2://) on a port nothing listens on: the allowed call
    // cannot be sent.
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"h2://127.0.0.1:{}\"]\nh2c = true\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
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

/// The test service (`tests/grpc/server.py`), on a port of its own; killed when dropped.
struct Service {
    child: std::process::Child,
    port: u16,
}

impl Service {
    fn start() -> Service {
        use std::io::BufRead;
        let mut child = Command::new(PYTHON)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/server.py"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Service {
            child,
            port: line.trim().parse().expect("the service's port"),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_grpc_service_behind_an_h2_route_answers_unary_and_streaming_calls() {
    let service = Service::start();
    let certs = Certs::generate();
    // [proxy]'s HTTP health check is inherited by the h2:// route as a TCP one: a gRPC service
    // refuses a plain GET, and would be taken out.
    let tls_port = free_port();
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"127.0.0.1:{}\"]\nh2c = true\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[proxy.health_check]\npath = \"/healthz\"\ninterval_ms = 200",
            free_port(),
            certs.file("server.pem"),
            certs.file("server.key")
        ),
        &format!(
            "[limits]\ndefault_limit = 1000\n[[rules]]\nname = \"grpc-calls\"\npath_prefix = \"/test.\"\nkey = \"header:X-Api-Key\"\nlimit = 4\nwindow_ms = 60000\n\
             [[routes]]\nname = \"grpc\"\npath_prefix = \"/test.\"\nupstreams = [\"h2://127.0.0.1:{}\"]\n",
            service.port
        ),
    );
    let addr = format!("127.0.0.1:{tls_port}");
    wait_for("the TLS listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let tls = (certs.file("ca.pem"), "localhost".to_string());
    for through in [None, Some((tls.0.as_str(), tls.1.as_str()))] {
        let target = if through.is_some() {
            addr.as_str()
        } else {
            gw.proxy.as_str()
        };
        let unary = calls(target, 1, through);
        assert_eq!(unary[0]["code"], "OK", "{unary:?}");
        assert_eq!(unary[0]["reply"], "echo:hello");
        let stream = calls_of(
            target,
            "/test.Echo/Count",
            1,
            through,
            &["--stream", "--request", "5"],
        );
        assert_eq!(stream[0]["code"], "OK", "{stream:?}");
        assert_eq!(stream[0]["reply"], "1,2,3,4,5", "every message, in order");
    }
    // Four calls allowed (two per listener): the fifth is refused, the gRPC way.
    let refused = calls(&gw.proxy, 1, None);
    assert_eq!(codes(&refused), ["RESOURCE_EXHAUSTED"]);
}
