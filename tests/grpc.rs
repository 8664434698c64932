//! gRPC through the gateway (contract §18), with the grpcio library's client and server
//! (from the test tools): a real gRPC service behind an `h2://` route answers unary and
//! server-streaming calls over cleartext HTTP/2 on the plain listener (`proxy.h2c`) and over
//! the HTTPS listener (h2 by ALPN), and behind an `https://` upstream that speaks only HTTP/2
//! (chosen by ALPN). The gateway's own answers are gRPC statuses: a refusal or a ban
//! RESOURCE_EXHAUSTED naming the rule with the limit fields in the initial headers, an
//! upstream that cannot be reached or a store failing closed UNAVAILABLE, the read timeout
//! DEADLINE_EXCEEDED, a bad cost header or a body too large INVALID_ARGUMENT, any other
//! (a host not served) INTERNAL; an HTTP/1 or gRPC-web client gets the HTTP answer. Beside
//! `h2c`, an HTTP/1 request shorter than the HTTP/2 preface waits for the header timeout;
//! `h2c` is restart-only.

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
        Service::start_with(&[])
    }

    /// Over TLS with this certificate and key (HTTP/2 only, chosen by ALPN).
    fn start_tls(certs: &Certs) -> Service {
        Service::start_with(&[
            "--tls",
            &certs.file("server.pem"),
            &certs.file("server.key"),
        ])
    }

    fn start_with(args: &[&str]) -> Service {
        use std::io::BufRead;
        let mut child = Command::new(PYTHON)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/server.py"))
            .args(args)
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

/// A gRPC client's status for each of the gateway's own answers, and the HTTP answer for
/// clients that cannot read trailers.
#[test]
fn each_of_the_gateways_own_answers_has_its_grpc_status() {
    let service = Service::start();
    let up = format!("h2://127.0.0.1:{}", service.port);
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"127.0.0.1:{}\"]\nh2c = true\nmax_body_bytes = 1024",
            free_port()
        ),
        &format!(
            "[limits]\ndefault_limit = 1000\n\
             [[rules]]\nname = \"grpc-calls\"\npath = \"/test.Echo/Say\"\nkey = \"header:X-Api-Key\"\nlimit = 1\nwindow_ms = 60000\n\
             [[rules]]\nname = \"weighed\"\npath = \"/test.Echo/Weighed\"\nkey = \"header:X-Api-Key\"\nlimit = 100\nwindow_ms = 60000\ncost = \"header:X-Cost\"\nmax_cost = 10\n\
             [[routes]]\nname = \"slow\"\npath = \"/test.Echo/Sleep\"\nupstreams = [\"{up}\"]\nread_timeout_ms = 300\n\
             [[routes]]\nname = \"grpc\"\npath_prefix = \"/test.\"\nupstreams = [\"{up}\"]\n"
        ),
    );
    let call = |method: &str, extra: &[&str]| calls_of(&gw.proxy, method, 1, None, extra).remove(0);

    // A refusal: RESOURCE_EXHAUSTED naming the rule, the limit fields in the initial headers.
    assert_eq!(call("/test.Echo/Say", &[])["code"], "OK");
    let refused = call("/test.Echo/Say", &[]);
    assert_eq!(refused["code"], "RESOURCE_EXHAUSTED", "{refused}");
    assert_eq!(
        refused["details"],
        "rate limited by rule grpc-calls; retry after 60 s"
    );
    assert_eq!(refused["initial"]["x-ratelimit-limit"], "1", "{refused}");
    assert_eq!(
        refused["initial"]["x-ratelimit-remaining"], "0",
        "{refused}"
    );

    // A banned key: RESOURCE_EXHAUSTED, "banned by rule".
    let r = common::http::Conn::open(&gw.admin)
        .unwrap()
        .send(
            "PUT",
            "/api/bans/grpc-calls/client-2",
            &[],
            r#"{"for_ms": 60000}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let banned = call("/test.Echo/Say", &["--metadata", "x-api-key", "client-2"]);
    assert_eq!(banned["code"], "RESOURCE_EXHAUSTED", "{banned}");
    let details = banned["details"].as_str().unwrap();
    assert!(
        details.starts_with("banned by rule grpc-calls; retry after "),
        "{details}"
    );

    // A cost header the rule cannot read, and a body past max_body_bytes: INVALID_ARGUMENT.
    let bad_cost = call("/test.Echo/Weighed", &["--metadata", "x-cost", "lots"]);
    assert_eq!(bad_cost["code"], "INVALID_ARGUMENT", "{bad_cost}");
    assert!(
        bad_cost["details"]
            .as_str()
            .unwrap()
            .starts_with("rule weighed: "),
        "{bad_cost}"
    );
    let big = "x".repeat(4096);
    let too_big = call(
        "/test.Echo/Say",
        &["--metadata", "x-api-key", "client-3", "--request", &big],
    );
    assert_eq!(too_big["code"], "INVALID_ARGUMENT", "{too_big}");
    assert!(
        too_big["details"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes"),
        "{too_big}"
    );

    // An upstream silent past the route's read timeout: DEADLINE_EXCEEDED.
    let awake = call("/test.Echo/Sleep", &["--request", "0"]);
    assert_eq!(awake["reply"], "awake", "{awake}");
    let late = call("/test.Echo/Sleep", &["--request", "3000"]);
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");
    assert!(
        late["details"]
            .as_str()
            .unwrap()
            .starts_with("gateway timeout"),
        "{late}"
    );

    // Clients that cannot read trailers get the HTTP answer: HTTP/1.1 with a gRPC content
    // type, and gRPC-web over HTTP/2.
    let http1 = common::http::get(
        &gw.proxy,
        "/test.Echo/Say",
        &[
            ("Content-Type", "application/grpc"),
            ("X-Api-Key", "client-1"),
        ],
    )
    .unwrap();
    assert_eq!(http1.status, 429, "{http1:?}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args([
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "--data-binary",
            "x",
        ])
        .args(["-H", "Content-Type: application/grpc-web+proto"])
        .args(["-H", "X-Api-Key: client-1"])
        .arg(format!("http://{}/test.Echo/Say", gw.proxy))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 429");
}

#[test]
fn a_host_not_served_is_internal_and_a_store_failing_closed_unavailable() {
    let service = Service::start();
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"h2://127.0.0.1:{}\"]\nh2c = true\nallowed_hosts = [\"api.example.com\"]",
            service.port
        ),
        &format!(
            "[redis]\nurl = \"redis://127.0.0.1:{}\"\non_error = \"deny\"\n[limits]\ndefault_limit = 1000\n",
            free_port()
        ),
    );
    // A host this gateway does not serve (421): INTERNAL.
    let other = calls_of(&gw.proxy, "/test.Echo/Say", 1, None, &[]);
    assert_eq!(codes(&other), ["INTERNAL"], "{other:?}");
    // The store cannot be reached and the gateway fails closed (503): UNAVAILABLE.
    let closed = calls_of(
        &gw.proxy,
        "/test.Echo/Say",
        1,
        None,
        &["--authority", "api.example.com"],
    );
    assert_eq!(codes(&closed), ["UNAVAILABLE"], "{closed:?}");
    assert_eq!(closed[0]["details"], "rate limit store unavailable");
}

#[test]
fn an_https_upstream_is_spoken_to_in_http2_when_it_chooses_h2_by_alpn() {
    // The service speaks only HTTP/2 over TLS: a call answers only if the gateway offered h2
    // and took it.
    let certs = Certs::generate();
    let service = Service::start_tls(&certs);
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"https://localhost:{}\"]\nupstream_tls_ca_file = \"{}\"\nh2c = true",
            service.port,
            certs.file("ca.pem")
        ),
        "[limits]\ndefault_limit = 1000\n",
    );
    let unary = calls(&gw.proxy, 1, None);
    assert_eq!(unary[0]["code"], "OK", "{unary:?}\n{}", gw.log());
    assert_eq!(unary[0]["reply"], "echo:hello");
    let stream = calls_of(
        &gw.proxy,
        "/test.Echo/Count",
        1,
        None,
        &["--stream", "--request", "3"],
    );
    assert_eq!(stream[0]["reply"], "1,2,3", "{stream:?}");
}

/// Sends `request` on a fresh connection and reads until the gateway closes it: what came
/// back, and when the close came.
fn answer_and_close(addr: &str, request: &[u8]) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = std::time::Instant::now();
    s.write_all(request).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no close within 10 s: {e}"),
        }
    }
    (String::from_utf8_lossy(&seen).into_owned(), sent.elapsed())
}

#[test]
fn beside_h2c_a_request_shorter_than_the_preface_waits_for_the_header_timeout() {
    let proxy = |h2c: bool| format!("h2c = {h2c}\nheader_timeout_ms = 1000");
    // The HTTP version a request with prior knowledge of HTTP/2 is answered in, and its
    // status.
    let h2_prior = |addr: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg("--http2-prior-knowledge")
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let body = "[limits]\ndefault_limit = 1000\n[proxy.direct_response]\nbody = \"ok\"\n";
    let short = b"GET / HTTP/1.0\r\n\r\n";
    assert!(short.len() < 24, "shorter than HTTP/2's connection preface");
    let long = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    // Without h2c, answered at once.
    let plain = Gateway::start(&proxy(false), body);
    let (answer, _) = answer_and_close(&plain.proxy, short);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // With h2c: no answer, dropped at the header timeout; a longer request is answered.
    let gw = Gateway::start(&proxy(true), body);
    let (answer, after) = answer_and_close(&gw.proxy, short);
    println!("a short HTTP/1.0 request beside h2c: dropped after {after:?}");
    assert_eq!(answer, "");
    assert!(after >= Duration::from_millis(900), "{after:?}");
    let (answer, _) = answer_and_close(&gw.proxy, long);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(h2_prior(&gw.proxy), "2 200");
    // `h2c` is restart-only: a reload turning it off is named and changes nothing.
    gw.reload_with(
        &proxy(false),
        &format!("{body}\n[headers]\nstyle = \"ietf\"\n"),
    );
    wait_for("the reload", Duration::from_secs(10), || {
        gw.log()
            .contains("`proxy.h2c` changed, but takes effect only after a restart")
            .then_some(())
    });
    let (answer, _) = answer_and_close(&gw.proxy, short);
    assert_eq!(answer, "", "h2c still on");
    assert_eq!(h2_prior(&gw.proxy), "2 200");
}
