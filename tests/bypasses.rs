//! Ways around the limits, tried as an attacker would, against real frameworks behind the
//! gateway (Flask and Express from `tests/frameworks/`): each test counts the runs of the
//! framework's own views, so it shows what the upstream did with a request the rules judged.
//! The request the upstream sees must be the request the rules judged (`src/request/`).

mod common;

use std::time::Duration;

use common::frameworks::Framework;
use common::http::{curl_tls, get, post, Conn, Response};
use common::procs::Gateway;
use common::topologies::Certs;
use common::{free_port, wait_for};

fn behind(fw: &Framework, proxy_extra: &str, body: &str) -> Gateway {
    Gateway::start(
        &format!("upstreams = [\"{}\"]\n{proxy_extra}", fw.addr),
        body,
    )
}

fn key(k: &str) -> [(&str, &str); 1] {
    [("X-Api-Key", k)]
}

/// The API by key, limit 3, and the health check unlimited: `conf/rules.toml`'s shape.
const API_AND_HEALTH: &str = r#"
[limits]
default_limit = 1000

[[rules]]
name = "health"
methods = ["GET"]
path = "/healthz"
unlimited = true

[[rules]]
name = "api"
path_prefix = "/api/"
key = "header:X-Api-Key"
limit = 3
skip_default = true
"#;

/// Sends raw bytes on a fresh connection and reads one response.
fn raw(addr: &str, bytes: &[u8]) -> Response {
    let mut c = Conn::open(addr).unwrap();
    c.send_raw(bytes).unwrap();
    c.read(false).unwrap()
}

fn exhaust(gw: &Gateway, k: &str, limit: usize) {
    for i in 0..limit {
        let r = get(&gw.proxy, &format!("/api/items/{i}"), &key(k)).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = get(&gw.proxy, "/api/items/x", &key(k)).unwrap();
    assert_eq!(r.status, 429, "{r:?}");
}

#[test]
fn an_encoded_slash_cannot_take_a_request_past_its_rule() {
    let flask = Framework::flask();
    let gw = behind(&flask, "", API_AND_HEALTH);
    exhaust(&gw, "k1", 3);
    assert_eq!(flask.ran("items"), 3);

    // Flask routes `/api/items/..%2F..%2Fhealthz` to its items view; the rules must not see
    // `/healthz` (unlimited) in it. Refused by default, whatever the spelling.
    for path in [
        "/api/items/..%2F..%2Fhealthz",
        "/api/items/..%2f..%2fhealthz",
        "/api/items/..%5C..%5Chealthz",
        "/api/items/..\\..\\healthz",
        "/api/items/%2e%2e%2F%2e%2e%2Fhealthz",
    ] {
        for _ in 0..10 {
            let r = get(&gw.proxy, path, &key("k1")).unwrap();
            assert_eq!(r.status, 400, "{path}: {r:?}");
            assert!(r.body.contains("escaped slash"), "{}", r.body);
        }
    }
    assert_eq!(flask.ran("items"), 3, "the items view ran past its limit");

    // Dots that are escapes but no slash: the normal path is `/healthz`, and that is what
    // Flask is sent and runs (unlimited), not its items view.
    let r = get(&gw.proxy, "/api/items/%2e%2e/%2E%2e/healthz", &key("k1")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""view":"health""#), "{}", r.body);
    assert_eq!(flask.ran("items"), 3);

    // /api/explain takes the path as the proxy does.
    let explain = post(
        &gw.admin,
        "/api/explain",
        &[],
        r#"{"path":"/api/items/..%2F..%2Fhealthz","ip":"127.0.0.1","headers":{"X-Api-Key":"k1"}}"#,
    )
    .unwrap();
    assert_eq!(explain.status, 200, "{explain:?}");
    assert!(
        explain.body.contains(
            r#""decision":"refused","status":400,"reason":"the path holds an escaped slash"#
        ),
        "{}",
        explain.body
    );
    assert!(explain.body.contains(r#""checks":[]"#), "{}", explain.body);
    let explain = post(
        &gw.admin,
        "/api/explain",
        &[],
        r#"{"path":"/api/x/../items/%31","ip":"127.0.0.1","headers":{"X-Api-Key":"k1"}}"#,
    )
    .unwrap();
    assert!(
        explain
            .body
            .contains(r#""decision":"blocked","path":"/api/items/1","route":null,"rule":"api""#),
        "{}",
        explain.body
    );
}

#[test]
fn escaped_slashes_decoded_or_kept_agree_with_the_upstream() {
    // Decoded: the slash is a slash, and the upstream is sent the path that results.
    let flask = Framework::flask();
    let gw = behind(&flask, "escaped_slashes = \"decode\"", API_AND_HEALTH);
    exhaust(&gw, "k1", 3);
    let r = get(&gw.proxy, "/api/items/..%2F..%2Fhealthz", &key("k1")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(r#""path":"/healthz""#) && r.body.contains(r#""view":"health""#),
        "{}",
        r.body
    );
    assert_eq!(flask.ran("items"), 3);

    // Kept: Express routes the path as sent, one segment; so do the rules.
    let express = Framework::express();
    let gw = behind(&express, "escaped_slashes = \"keep\"", API_AND_HEALTH);
    exhaust(&gw, "k1", 3);
    for _ in 0..5 {
        let r = get(&gw.proxy, "/api/items/..%2F..%2Fhealthz", &key("k1")).unwrap();
        assert_eq!(r.status, 429, "{r:?}");
    }
    assert_eq!(express.ran("items"), 3);
    assert_eq!(express.ran("health"), 0);
    let r = get(&gw.proxy, "/api/items/..%2F..%2Fhealthz", &key("k2")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body
            .contains(r#""view":"items","method":"GET","path":"/api/items/..%2F..%2Fhealthz""#),
        "{}",
        r.body
    );
    let counters = get(&gw.admin, "/api/counters?key=api/x-api-key:k2", &[])
        .unwrap()
        .body;
    assert!(
        counters.contains(r#"{"key":"api/x-api-key:k2","count":1"#),
        "{counters}"
    );
}

/// Tomcat, Jetty and Spring cut a segment at `;` before routing: `/api/..;/healthz` is
/// `/healthz` to them and a path under `/api/` to everyone else. Such a dot segment is always
/// refused; `path_parameters = "reject"` refuses any `;`, for such upstreams, where
/// `/healthz;x` would be `/healthz` too.
#[test]
fn dot_segments_with_parameters_are_refused_and_parameters_when_asked() {
    let flask = Framework::flask();
    let gw = behind(&flask, "", API_AND_HEALTH);
    for path in [
        "/api/items/..;/..;/healthz",
        "/api/items/%2e%2e;x=1/..;/healthz",
        "/api/.;/items/1",
    ] {
        let r = get(&gw.proxy, path, &key("k1")).unwrap();
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.body.contains("dot segment with parameters"), "{}", r.body);
    }
    // Parameters elsewhere are part of their segment, matched and forwarded as sent.
    let r = get(&gw.proxy, "/api/items/1;v=2", &key("k1")).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(r#""path":"/api/items/1;v=2""#),
        "{}",
        r.body
    );
    assert_eq!(flask.ran("items") + flask.ran("health"), 1);

    let gw = behind(&flask, "path_parameters = \"reject\"", API_AND_HEALTH);
    for path in ["/api/items/1;v=2", "/healthz;jsessionid=1", "/;"] {
        let r = get(&gw.proxy, path, &key("k2")).unwrap();
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.body.contains("path parameters"), "{}", r.body);
    }
    assert_eq!(
        get(&gw.proxy, "/api/items/%3B", &key("k2")).unwrap().status,
        200
    );
    assert_eq!(flask.ran("items") + flask.ran("health"), 2);
}

#[test]
fn a_method_that_is_not_upper_case_is_refused() {
    let flask = Framework::flask();
    let gw = behind(
        &flask,
        "",
        "[[rules]]\nname = \"login\"\nmethods = [\"POST\"]\npath_prefix = \"/login\"\nlimit = 3\n",
    );
    // Flask upper-cases the method and runs its login view: a `post` no rule matched would
    // be a login attempt for free.
    for method in ["post", "Post", "pOST"] {
        for _ in 0..3 {
            let r = Conn::open(&gw.proxy)
                .unwrap()
                .send(method, "/login", &[], "x=1")
                .unwrap();
            assert_eq!(r.status, 400, "{method}: {r:?}");
        }
    }
    assert_eq!(flask.ran("login"), 0);
    let statuses: Vec<u16> = (0..5)
        .map(|_| post(&gw.proxy, "/login", &[], "x=1").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(flask.ran("login"), 3, "never more logins than the limit");
}

#[test]
fn head_is_counted_by_a_rule_for_get() {
    let flask = Framework::flask();
    let gw = behind(
        &flask,
        "",
        "[[rules]]\nname = \"reads\"\nmethods = [\"GET\"]\npath = \"/api/orders\"\nlimit = 2\n",
    );
    // Flask runs its GET view for a HEAD, as every framework does.
    let mut c = Conn::open(&gw.proxy).unwrap();
    let statuses: Vec<u16> = (0..4)
        .map(|_| c.send("HEAD", "/api/orders", &[], "").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(flask.ran("orders"), 2);
    assert_eq!(get(&gw.proxy, "/api/orders", &[]).unwrap().status, 429);
    let limits = get(&gw.admin, "/api/limits", &[]).unwrap().body;
    assert!(
        limits.contains(r#""match":{"methods":["GET","HEAD"],"path":"/api/orders"}"#),
        "{limits}"
    );
}

#[test]
fn path_ignore_case_counts_what_a_case_insensitive_router_runs() {
    // Express routes without regard to case by default: `POST /LOGIN` runs its login view.
    let express = Framework::express();
    let gw = behind(
        &express,
        "",
        "[[rules]]\nname = \"login\"\nmethods = [\"POST\"]\npath = \"/login\"\npath_ignore_case = true\nlimit = 3\n",
    );
    let statuses: Vec<u16> = ["/LOGIN", "/Login", "/login", "/lOgIn", "/LOGIN"]
        .iter()
        .map(|p| post(&gw.proxy, p, &[], "").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(express.ran("login"), 3);
}

/// A gateway listening on `[::]`, which IPv4 clients reach as `::ffff:a.b.c.d`.
fn dual_stack(fw: &Framework, body: &str) -> (Gateway, String) {
    let port = free_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let text = common::procs::config_text(
        &format!("[::]:{port}"),
        &admin,
        &format!("upstreams = [\"{}\"]", fw.addr),
        body,
    );
    let gw = Gateway::start_text(&format!("[::]:{port}"), &admin, &text);
    (gw, format!("127.0.0.1:{port}"))
}

#[test]
fn ipv4_clients_of_an_ipv6_listener_are_keyed_trusted_and_overridden_as_ipv4() {
    let flask = Framework::flask();
    // Behind a load balancer at 127.0.0.1: each client is its own key, not the balancer's.
    let (gw, addr) = dual_stack(
        &flask,
        "[limits]\ndefault_limit = 3\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let from = |client: &str| get(&addr, "/api/orders", &[("X-Forwarded-For", client)]);
    for _ in 0..3 {
        assert_eq!(from("198.51.100.1").unwrap().status, 200);
    }
    assert_eq!(from("198.51.100.1").unwrap().status, 429);
    let b = from("198.51.100.2").unwrap();
    assert_eq!(
        b.status, 200,
        "another client is not limited by the first: {b:?}"
    );
    let counters = get(&gw.admin, "/api/counters", &[]).unwrap().body;
    assert!(
        counters.contains(r#""key":"ip:198.51.100.1","count":3"#),
        "{counters}"
    );
    assert!(!counters.contains("ffff"), "{counters}");
    drop(gw);

    // An IP override written in IPv4 applies to that client.
    let (_gw, addr) = dual_stack(
        &flask,
        "[[rules]]\nname = \"orders\"\npath = \"/api/orders\"\nlimit = 1\noverrides = { \"127.0.0.1\" = 4 }\n",
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| get(&addr, "/api/orders", &[]).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
}

#[test]
fn a_key_header_sent_twice_is_refused() {
    let flask = Framework::flask();
    let gw = behind(&flask, "", API_AND_HEALTH);
    exhaust(&gw, "k1", 3);
    // Keyed by the first, the upstream reading the last: a fresh key for every request.
    for fresh in 0..5 {
        let r = Conn::open(&gw.proxy)
            .unwrap()
            .get(
                "/api/items/1",
                &[
                    ("X-Api-Key", "k1"),
                    ("X-Api-Key", &format!("fresh-{fresh}")),
                ],
            )
            .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.body.contains("more than one x-api-key header"),
            "{}",
            r.body
        );
    }
    assert_eq!(flask.ran("items"), 3);
}

#[test]
fn ambiguous_framing_and_targets_are_refused_and_old_versions_understood() {
    let flask = Framework::flask();
    let gw = behind(&flask, "", "");
    for (what, bytes) in [
        (
            "a Content-Length list",
            &b"POST /api/orders HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx"[..],
        ),
        (
            "two Content-Length lines",
            b"POST /api/orders HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ),
        ("a space in the target", b"GET /api/or ders HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("a control byte", b"GET /api/or\x01ders HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("authority-form", b"GET 127.0.0.1:80 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("asterisk-form", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("a malformed escape", b"GET /api/orders%zz HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("an escaped NUL", b"GET /api/orders%00.json HTTP/1.1\r\nHost: a\r\n\r\n"),
    ] {
        let r = raw(&gw.proxy, bytes);
        assert_eq!(r.status, 400, "{what}: {r:?}");
    }
    assert!(flask.runs().is_empty(), "{:?}", flask.runs());

    // HTTP/1.2 is HTTP/1.1 (RFC 9110 §2.5).
    let r = raw(&gw.proxy, b"GET /api/orders HTTP/1.2\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    // HTTP/1.0 without Host goes on as HTTP/1.1 with the upstream's name as Host.
    let r = raw(&gw.proxy, b"GET /api/orders HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(&format!(r#""host":"{}""#, flask.addr)),
        "{}",
        r.body
    );
    // Absolute-form goes on as origin-form, in its normal form.
    let r = raw(
        &gw.proxy,
        b"GET http://a/api/x/../orders HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""raw_uri":"/api/orders""#), "{}", r.body);
    // The host judged is the target's (RFC 9112 §3.2.2): a Host naming another is refused,
    // and an HTTP/1.0 request without one is forwarded with the target's, not the upstream's.
    let r = raw(
        &gw.proxy,
        b"GET http://b.example/api/orders HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = raw(
        &gw.proxy,
        b"GET http://b.example/api/orders HTTP/1.0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""host":"b.example""#), "{}", r.body);
    assert_eq!(flask.ran("orders"), 4);
}

#[test]
fn a_host_the_gateway_does_not_serve_is_refused_when_allowed_hosts_is_set() {
    let flask = Framework::flask();
    let gw = behind(
        &flask,
        "allowed_hosts = [\"api.example.com\", \"*.example.net\"]",
        "",
    );
    let with = |host: &str| get(&gw.proxy, "/api/orders", &[("Host", host)]).unwrap();
    assert_eq!(with("api.example.com").status, 200);
    assert_eq!(with("API.example.com:8080").status, 200);
    assert_eq!(with("eu.example.net").status, 200);
    let other = with("origin.internal");
    assert_eq!(other.status, 421, "{other:?}");
    assert_eq!(flask.ran("orders"), 3);
}

#[test]
fn the_same_rules_hold_over_http2() {
    let certs = Certs::generate();
    let flask = Framework::flask();
    let tls_port = free_port();
    let gw = behind(
        &flask,
        &format!(
            "tls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            certs.file("server.pem"),
            certs.file("server.key")
        ),
        &format!(
            "{API_AND_HEALTH}\n[[rules]]\nname = \"login\"\nmethods = [\"POST\"]\npath = \"/login\"\nlimit = 2\n"
        ),
    );
    wait_for("the TLS listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).ok()
    });
    let ca = certs.file("ca.pem");
    let h2 = |args: &[&str], path: &str| {
        let mut all = vec!["--http2", "--path-as-is"];
        all.extend_from_slice(args);
        curl_tls(tls_port, &ca, &all, path).unwrap_or_else(|e| panic!("{args:?} {path}: {e}"))
    };
    let k1 = ["-H", "X-Api-Key: k1"];
    for _ in 0..3 {
        assert_eq!(h2(&k1, "/api/items/1").status, 200);
    }
    let over = h2(&k1, "/api/items/1");
    assert_eq!((over.version.as_str(), over.status), ("HTTP/2", 429));
    let slash = h2(&k1, "/api/items/..%2F..%2Fhealthz");
    assert_eq!(slash.status, 400, "{slash:?}");
    let dots = h2(&k1, "/api/items/../../healthz");
    assert!(dots.body.contains(r#""view":"health""#), "{dots:?}");
    let twice = h2(
        &["-H", "X-Api-Key: k1", "-H", "X-Api-Key: k9"],
        "/api/items/1",
    );
    assert_eq!(twice.status, 400, "{twice:?}");
    for _ in 0..3 {
        let lower = h2(&["-X", "post", "-d", "x=1"], "/login");
        assert_eq!(lower.status, 400, "{lower:?}");
    }
    let logins: Vec<u16> = (0..3)
        .map(|_| h2(&["-X", "POST", "-d", "x=1"], "/login").status)
        .collect();
    assert_eq!(logins, [200, 200, 429]);
    assert_eq!(flask.ran("items"), 3);
    assert_eq!(flask.ran("login"), 2);
    drop(gw);
}
