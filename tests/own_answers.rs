//! The answers the gateway makes itself (contract §17), on the wire: the `[response] headers`
//! on a 429, a refusal and pingora's own 431 (and again after a reload), so a browser's page
//! can read a refusal.

mod common;

use std::time::Duration;

use common::http::{get, Conn};
use common::procs::Gateway;
use common::upstream::Upstream;
use common::wait_for;

fn upstreams(u: &[&str]) -> String {
    let list: Vec<String> = u.iter().map(|u| format!("\"{u}\"")).collect();
    format!("upstreams = [{}]", list.join(", "))
}

/// A request whose header section is over 1024 bytes: pingora answers it 431 itself.
fn too_large_header(addr: &str) -> common::http::Response {
    let mut conn = Conn::open(addr).unwrap();
    let filler = "a".repeat(2048);
    conn.send_raw(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n").as_bytes())
        .unwrap();
    conn.read(false).unwrap()
}

#[test]
fn gateway_answers_carry_the_response_headers_so_a_page_can_read_a_429() {
    let up = Upstream::start();
    let body = |origin: &str| {
        format!(
            "[limits]\ndefault_limit = 1\ndefault_window_ms = 60000\n\n[response]\nheaders = {{ \"Access-Control-Allow-Origin\" = \"{origin}\", \"X-Served-By\" = \"edge-1\" }}\n"
        )
    };
    let proxy_extra = format!("{}\nmax_header_bytes = 1024", upstreams(&[&up.addr]));
    let gw = Gateway::start(&proxy_extra, &body("*"));

    // The upstream's own answer is the upstream's: nothing is added to it.
    let ok = get(&gw.proxy, "/", &[("Origin", "https://app.example")]).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("Access-Control-Allow-Origin"), None, "{ok:?}");
    assert_eq!(ok.header("X-Served-By"), None);

    let blocked = get(&gw.proxy, "/", &[("Origin", "https://app.example")]).unwrap();
    assert_eq!(blocked.status, 429, "{blocked:?}");
    assert_eq!(blocked.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(blocked.header("X-Served-By"), Some("edge-1"));
    assert!(blocked.header("Retry-After").is_some());
    // None of these fields is CORS-safelisted: a page reads them only when they are exposed.
    assert_eq!(
        blocked.header("Access-Control-Expose-Headers"),
        Some("Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-Request-Id"),
        "{blocked:?}"
    );

    // A refusal of src/request (a lower-case method).
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let refused = conn.send("get", "/", &[], "").unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(refused.header("X-Served-By"), Some("edge-1"));

    // pingora's own answer to a request header over max_header_bytes, before any phase ran.
    let huge = too_large_header(&gw.proxy);
    assert_eq!(huge.status, 431, "{huge:?}");
    assert_eq!(
        huge.header("Access-Control-Allow-Origin"),
        Some("*"),
        "{huge:?}"
    );
    assert_eq!(huge.header("X-Served-By"), Some("edge-1"));
    assert_eq!(huge.header("Access-Control-Expose-Headers"), None);
    // Counted like the others though no phase of the proxy saw it: the 429, the 400, the 431.
    wait_for("three 4xx counted", Duration::from_secs(10), || {
        let m = get(&gw.admin, "/metrics", &[]).ok()?.body;
        m.lines()
            .any(|l| l.starts_with("ratelimiter_responses_total{code=\"4xx\"") && l.ends_with(" 3"))
            .then_some(())
    });

    // A reload changes them on every kind of answer, pingora's included.
    gw.reload_with(&proxy_extra, &body("https://app.example"));
    wait_for("the reloaded headers", Duration::from_secs(10), || {
        let r = get(&gw.proxy, "/", &[]).ok()?;
        (r.header("Access-Control-Allow-Origin") == Some("https://app.example")).then_some(())
    });
    let huge = too_large_header(&gw.proxy);
    assert_eq!(
        huge.header("Access-Control-Allow-Origin"),
        Some("https://app.example"),
        "{huge:?}"
    );
    assert_eq!(up.served(), 1);
}

/// A CORS preflight: what a browser sends before a cross-origin `PUT`, without the page's
/// credentials.
fn preflight(addr: &str) -> common::http::Response {
    let mut conn = Conn::open(addr).unwrap();
    conn.send(
        "OPTIONS",
        "/api/items/1",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "PUT"),
        ],
        "",
    )
    .unwrap()
}

#[test]
fn exempt_preflights_count_against_no_rule_and_reach_the_upstream() {
    let up = Upstream::start();
    let limits = |preflight: &str| {
        format!(
            "[limits]\ndefault_limit = 2\ndefault_window_ms = 60000\npreflight = \"{preflight}\"\n"
        )
    };
    let gw = Gateway::start(&upstreams(&[&up.addr]), &limits("exempt"));
    for i in 0..20 {
        let r = preflight(&gw.proxy);
        assert_eq!(r.status, 200, "preflight {i}: {r:?}");
        assert_eq!(r.header("X-RateLimit-Limit"), None, "{r:?}");
    }
    assert_eq!(up.served(), 20, "the upstream answers preflights itself");
    // The page's own requests still have their whole limit.
    for _ in 0..2 {
        assert_eq!(get(&gw.proxy, "/api/items/1", &[]).unwrap().status, 200);
    }
    assert_eq!(get(&gw.proxy, "/api/items/1", &[]).unwrap().status, 429);
    // An OPTIONS that is not a preflight (no Access-Control-Request-Method) is counted.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let plain = conn
        .send("OPTIONS", "/", &[("Origin", "https://app.example")], "")
        .unwrap();
    assert_eq!(plain.status, 429, "{plain:?}");
    // Nor is one that carries a body: no browser's preflight does.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let with_body = conn
        .send(
            "OPTIONS",
            "/",
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "PUT"),
            ],
            "payload",
        )
        .unwrap();
    assert_eq!(with_body.status, 429, "{with_body:?}");

    // By default a preflight counts like any request.
    let counted = Gateway::start(&upstreams(&[&up.addr]), &limits("count"));
    let statuses: Vec<u16> = (0..3).map(|_| preflight(&counted.proxy).status).collect();
    assert_eq!(statuses, [200, 200, 429]);
}

#[test]
fn a_body_over_max_body_bytes_gets_413_and_never_all_reaches_the_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("{}\nmax_body_bytes = 1000", upstreams(&[&up.addr])),
        "[response]\nheaders = { \"Access-Control-Allow-Origin\" = \"*\" }\n",
    );
    // Declared: refused before the upstream is asked.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let big = conn
        .send("POST", "/upload", &[], &"x".repeat(1001))
        .unwrap();
    assert_eq!(big.status, 413, "{big:?}");
    assert!(big.body.contains("max_body_bytes"), "{}", big.body);
    assert_eq!(big.header("Access-Control-Allow-Origin"), Some("*"));
    assert!(big.header("X-Request-Id").is_some(), "{big:?}");
    assert_eq!(up.served(), 0);
    // A client waiting for 100 Continue gets the 413 at once instead.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    conn.send_raw(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(conn.read(false).unwrap().status, 413);
    assert_eq!(up.served(), 0);

    let ok = common::http::post(&gw.proxy, "/upload", &[], &"x".repeat(1000)).unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(up.served(), 1);

    // Chunked, no length declared: cut when the count passes the bound. The upstream is
    // slow to answer, so the gateway is still streaming the body when it does.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let chunk = "y".repeat(600);
    conn.send_raw(
        format!(
            "POST /sleep/3000 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
            chunk.len()
        )
        .as_bytes(),
    )
    .unwrap();
    conn.send_raw(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes())
        .unwrap();
    let cut = conn.read(false).unwrap();
    assert_eq!(cut.status, 413, "{cut:?}");
    assert!(conn.closed_within(Duration::from_secs(5)));

    // The same after the upstream's `100 Continue` was passed on (curl's chunked uploads):
    // the interim answer is no response, and the 413 still follows it.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    conn.send_raw(
        b"POST /sleep/3000 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let interim = conn.read(false).unwrap();
    assert_eq!(interim.status, 100, "{interim:?}");
    conn.send_raw(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
        .unwrap();
    conn.send_raw(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes())
        .unwrap();
    let cut = conn.read(false).unwrap();
    assert_eq!(cut.status, 413, "{cut:?}");

    // A WebSocket's bytes are no request body: the tunnel carries more than the bound.
    let mut conn = Conn::open(&gw.proxy).unwrap();
    conn.send_raw(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    assert_eq!(conn.read(true).unwrap().status, 101);
    for _ in 0..3 {
        let frame = "z".repeat(800);
        conn.send_raw(frame.as_bytes()).unwrap();
        assert_eq!(conn.read_exactly(800).unwrap(), frame.as_bytes());
    }
}

#[test]
fn the_interim_100_continue_carries_no_limit_fields() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up.addr]),
        "[limits]\ndefault_limit = 5\ndefault_window_ms = 60000\n",
    );
    let mut conn = Conn::open(&gw.proxy).unwrap();
    conn.send_raw(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let interim = conn.read(false).unwrap();
    assert_eq!(interim.status, 100, "{interim:?}");
    for field in ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-Request-Id"] {
        assert_eq!(interim.header(field), None, "{field}: {interim:?}");
    }
    conn.send_raw(b"hello").unwrap();
    let last = conn.read(false).unwrap();
    assert_eq!(last.status, 200, "{last:?}");
    assert_eq!(last.header("X-RateLimit-Limit"), Some("5"));
    assert_eq!(last.header("X-RateLimit-Remaining"), Some("4"));
    assert!(last.header("X-Request-Id").is_some());
}

/// `[headers] body = "problem+json"` (contract §16): a 429 is an RFC 9457 problem naming the
/// rules that refused it, as draft-ietf-httpapi-ratelimit-headers describes.
#[test]
fn a_refusal_as_problem_json() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[headers]\nbody = \"problem+json\"\n[limits]\ndefault_limit = 100\n\
         [[rules]]\nname = \"login\"\npath = \"/login\"\nlimit = 1\nwindow_ms = 60000\n",
    );
    let mut c = common::http::Conn::open(&gw.proxy).unwrap();
    assert_eq!(c.get("/login", &[]).unwrap().status, 200);
    let r = c.get("/login", &[]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Content-Type"), Some("application/problem+json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(v["status"], 429);
    assert!(v["detail"].as_str().unwrap().contains("login"), "{v}");
    assert_eq!(v["violated-policies"], serde_json::json!(["login"]));
    assert_eq!(
        r.header("Retry-After").map(str::to_string),
        Some(v["retry_after_seconds"].to_string())
    );

    // A banned key's 429 likewise.
    let ban = Conn::open(&gw.admin)
        .unwrap()
        .send(
            "PUT",
            "/api/bans/default/127.0.0.1",
            &[],
            r#"{"for_ms": 60000}"#,
        )
        .unwrap();
    assert_eq!(ban.status, 200, "{}", ban.body);
    let r = c.get("/", &[]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Content-Type"), Some("application/problem+json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(v["status"], 429);
    assert_eq!(v["violated-policies"], serde_json::json!(["default"]));
    assert_eq!(
        v["detail"], "banned by rule default; retry after 60 s",
        "{v}"
    );
    assert_eq!(r.header("Retry-After"), Some("60"));
    assert_eq!(v["retry_after_seconds"], 60);
}
