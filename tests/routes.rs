//! Routes (contract §18), on the wire: requests go to the pool of the first route whose
//! conditions they meet (by path, by host), the rest to `[proxy] upstreams`; each route has
//! its own timeouts; routes are added and removed by a reload under load without a failed
//! request; `/api/limits` lists them.

mod common;

use std::time::Duration;

use common::http::{get, Conn};
use common::load::KeepAliveLoad;
use common::procs::Gateway;
use common::upstream::Upstream;
use common::wait_for;

fn routes(api: &Upstream, admin: &Upstream, extra: &str) -> String {
    format!(
        "[limits]\ndefault_limit = 1000000\n\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstreams = [\"{}\"]\nread_timeout_ms = 300\n\n\
         [[routes]]\nname = \"admin-site\"\nhost = \"admin.example.com\"\nupstreams = [\"{}\"]\n\n{extra}",
        api.addr, admin.addr
    )
}

fn upstream_of(gw: &Gateway, path: &str, host: &str) -> (u16, String) {
    let r = get(&gw.proxy, path, &[("Host", host)]).unwrap();
    (r.status, r.header("X-Upstream").unwrap_or("").to_string())
}

#[test]
fn requests_go_to_the_pool_of_the_first_route_they_meet_and_the_rest_to_the_default() {
    let (default, api, admin) = (Upstream::start(), Upstream::start(), Upstream::start());
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", default.addr),
        &routes(&api, &admin, ""),
    );
    assert_eq!(
        upstream_of(&gw, "/api/orders", "shop.example.com"),
        (200, api.addr.clone())
    );
    assert_eq!(
        upstream_of(&gw, "/", "admin.example.com"),
        (200, admin.addr.clone())
    );
    // Both routes match: the first in the file takes it.
    assert_eq!(
        upstream_of(&gw, "/api/x", "admin.example.com"),
        (200, api.addr.clone())
    );
    assert_eq!(
        upstream_of(&gw, "/other", "shop.example.com"),
        (200, default.addr.clone())
    );
    let limits: serde_json::Value =
        serde_json::from_str(&get(&gw.admin, "/api/limits", &[]).unwrap().body).unwrap();
    assert_eq!(limits["routes"][0]["name"], "api");
    assert_eq!(limits["routes"][0]["match"]["path_prefix"], "/api/");
    assert_eq!(limits["routes"][0]["read_timeout_ms"], 300);
    assert_eq!(limits["routes"][1]["match"]["host"], "admin.example.com");
    assert_eq!(limits["routes"][1]["read_timeout_ms"], 60_000, "[proxy]'s");
    // The upstream metrics carry the route (counted once each response has been sent).
    let api_series = format!(
        "ratelimiter_upstream_requests_total{{route=\"api\",upstream=\"{}\",code=\"2xx\"}}",
        api.addr
    );
    wait_for(
        "the route's responses counted",
        Duration::from_secs(5),
        || (common::metric(&gw, &api_series) == 2.0).then_some(()),
    );
    let default_series = format!(
        "ratelimiter_upstream_requests_total{{route=\"\",upstream=\"{}\",code=\"2xx\"}}",
        default.addr
    );
    wait_for(
        "the default pool's response counted",
        Duration::from_secs(5),
        || (common::metric(&gw, &default_series) == 1.0).then_some(()),
    );
}

#[test]
fn each_route_has_its_own_read_timeout() {
    let upstream = Upstream::start();
    // The same upstream, slow to answer: past the route's 300 ms, within [proxy]'s 60 s.
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\n[[routes]]\nname = \"impatient\"\npath_prefix = \"/sleep/1\"\nupstreams = [\"{}\"]\nread_timeout_ms = 300\n",
            upstream.addr
        ),
    );
    let started = std::time::Instant::now();
    assert_eq!(
        upstream_of(&gw, "/sleep/1000", "h").0,
        504,
        "the route's 300 ms"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(
        upstream_of(&gw, "/sleep/800", "h"),
        (200, upstream.addr.clone())
    );
}

#[test]
fn a_reload_adds_and_removes_routes_under_load_with_no_failed_request() {
    let (default, api, admin) = (Upstream::start(), Upstream::start(), Upstream::start());
    let proxy = format!("upstreams = [\"{}\"]", default.addr);
    let gw = Gateway::start(&proxy, "[limits]\ndefault_limit = 1000000\n");
    let load = KeepAliveLoad::start(&gw.proxy, 8, "/api/orders");
    std::thread::sleep(Duration::from_millis(300));
    // Added: /api/ goes to its own pool.
    gw.reload_with(&proxy, &routes(&api, &admin, ""));
    wait_for("the route in force", Duration::from_secs(5), || {
        (upstream_of(&gw, "/api/orders", "h").1 == api.addr).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let served = api.served();
    assert!(served > 0);
    // Removed again.
    gw.reload_with(&proxy, "[limits]\ndefault_limit = 1000000\n");
    wait_for("the route gone", Duration::from_secs(5), || {
        (upstream_of(&gw, "/api/orders", "h").1 == default.addr).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.finish();
    println!(
        "two reloads under 8 keep-alive clients: {:?}",
        tally.answered
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(tally.answered.keys().copied().collect::<Vec<_>>(), [200]);
    assert!(api.served() >= served && default.served() > 0);
    let mut c = Conn::open(&gw.proxy).unwrap();
    assert_eq!(
        c.get("/api/x", &[]).unwrap().header("X-Upstream"),
        Some(default.addr.as_str())
    );
}

/// Time to the first byte of the body of `GET path` on a fresh connection, and the body.
fn first_byte(addr: &str, path: &str) -> (Duration, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let asked = std::time::Instant::now();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (mut seen, mut first) = (Vec::new(), None);
    let mut buf = [0; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&seen);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if first.is_none() && body.contains('0') {
            first = Some(asked.elapsed());
        }
        // The last byte: done (the upstream itself keeps the connection open).
        if body.contains('9') {
            break;
        }
    }
    (
        first.expect("a body"),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

#[test]
fn an_unbuffered_route_delivers_a_trickling_response_as_it_arrives() {
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\n[[routes]]\nname = \"live\"\npath_prefix = \"/drip/1\"\nupstreams = [\"{}\"]\nbuffering = false\n",
            upstream.addr
        ),
    );
    // 1 s for ten bytes with a Content-Length: through the unbuffered route, and through the
    // default (buffered) one, and directly.
    let (unbuffered, body) = first_byte(&gw.proxy, "/drip/1000");
    let (buffered, _) = first_byte(&gw.proxy, "/drip/999");
    let (direct, _) = first_byte(&upstream.addr, "/drip/1000");
    println!(
        "time to the first body byte: unbuffered route {unbuffered:?}, default {buffered:?}, direct {direct:?}"
    );
    assert!(unbuffered < Duration::from_millis(400), "{unbuffered:?}");
    assert!(
        buffered > Duration::from_millis(800),
        "the default batches: {buffered:?}"
    );
    // Sent chunked, every byte there, in order.
    let (head, chunks) = body.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let data: String = chunks
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|pair| pair.get(1).copied())
        .collect();
    assert!(data.starts_with("0123456789"), "{chunks:?}");
}

#[test]
fn explain_names_the_route_a_request_would_take() {
    let (default, api, admin) = (Upstream::start(), Upstream::start(), Upstream::start());
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", default.addr),
        &routes(&api, &admin, ""),
    );
    for (body, route) in [
        (
            r#"{"path":"/api/x","ip":"10.0.0.1"}"#,
            serde_json::json!("api"),
        ),
        (
            r#"{"path":"/","host":"admin.example.com","ip":"10.0.0.1"}"#,
            serde_json::json!("admin-site"),
        ),
        (
            r#"{"path":"/other","ip":"10.0.0.1"}"#,
            serde_json::Value::Null,
        ),
    ] {
        let r = common::http::post(&gw.admin, "/api/explain", &[], body).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["route"], route, "{body}: {}", r.body);
    }
}
