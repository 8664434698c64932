//! Routes (contract §18), on the wire: requests go to the pool of the first route whose
//! conditions they meet (by path, by host), the rest to `[proxy] upstreams`; each route has
//! its own timeouts; routes are added and removed by a reload under load without a failed
//! request; `/api/limits` lists them.
//! Each route's own `retries` and `health_check` (`[proxy]`'s inherited when it sets none),
//! a route added by a reload checked before it takes a request, the `route` of the access
//! log, every field of a route in `/api/limits`, and `[proxy] buffering = false` to an
//! HTTP/1.1 and an HTTP/1.0 client.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::http::{get, Conn};
use common::load::KeepAliveLoad;
use common::procs::Gateway;
use common::upstream::Upstream;
use common::{free_port, wait_for};

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
    // The same upstream, slow to answer: past the route's 1 s, within [proxy]'s 60 s.
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\n[[routes]]\nname = \"impatient\"\npath_prefix = \"/sleep/5\"\nupstreams = [\"{}\"]\nread_timeout_ms = 1000\n",
            upstream.addr
        ),
    );
    // The upstream would answer after 5 s: given up well before, at the route's 1 s.
    let started = std::time::Instant::now();
    assert_eq!(
        upstream_of(&gw, "/sleep/5000", "h").0,
        504,
        "the route's 1 s"
    );
    let took = started.elapsed();
    println!("the route's 1 s read timeout answered 504 after {took:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(4000),
        "{took:?}"
    );
    // Another path, through [proxy]'s pool: waited for, well past the route's 1 s.
    assert_eq!(
        upstream_of(&gw, "/sleep/3000", "h"),
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
    // What each pool has served while the route is in force.
    let (api_while_routed, default_while_routed) = (api.served(), default.served());
    assert!(api_while_routed > 0);
    // Removed again.
    gw.reload_with(&proxy, "[limits]\ndefault_limit = 1000000\n");
    wait_for("the route gone", Duration::from_secs(5), || {
        (upstream_of(&gw, "/api/orders", "h").1 == default.addr).then_some(())
    });
    // A request that took the route just before the reload may reach its pool a moment
    // later; after that, the pool gets none.
    let api_after = wait_for(
        "the route's pool left alone",
        Duration::from_secs(5),
        || {
            let n = api.served();
            std::thread::sleep(Duration::from_millis(300));
            (api.served() == n).then_some(n)
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.finish();
    println!(
        "two reloads under 8 keep-alive clients: {:?}",
        tally.answered
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(tally.answered.keys().copied().collect::<Vec<_>>(), [200]);
    // Once removed, the route's pool got nothing more, and the default pool took the load.
    assert_eq!(
        api.served(),
        api_after,
        "the removed route's pool still served"
    );
    assert!(
        default.served() > default_while_routed,
        "the default pool took no request once the route was gone"
    );
    let mut c = Conn::open(&gw.proxy).unwrap();
    assert_eq!(
        c.get("/api/x", &[]).unwrap().header("X-Upstream"),
        Some(default.addr.as_str())
    );
}

#[test]
fn an_unbuffered_route_delivers_a_trickling_response_as_it_arrives() {
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\n[[routes]]\nname = \"live\"\npath_prefix = \"/drip/3\"\nupstreams = [\"{}\"]\nbuffering = false\n",
            upstream.addr
        ),
    );
    // 3 s for ten bytes with a Content-Length, one every 300 ms: through the unbuffered
    // route, and through the default (buffered) one, and directly. The first byte comes
    // 300 ms in; the default passes the body on once it has all of it (3 s).
    let (head, unbuffered, chunks) = first_byte(&gw.proxy, &get_closing("/drip/3000"), false);
    let (_, buffered, _) = first_byte(&gw.proxy, &get_closing("/drip/2999"), false);
    let (_, direct, _) = first_byte(&upstream.addr, &get_closing("/drip/3000"), false);
    println!(
        "time to the first body byte: unbuffered route {unbuffered:?}, default {buffered:?}, direct {direct:?}"
    );
    assert!(unbuffered < Duration::from_millis(1500), "{unbuffered:?}");
    assert!(
        buffered > Duration::from_millis(2400),
        "the default batches: {buffered:?}"
    );
    // Sent chunked, every byte there, in order.
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
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

/// An address where nothing listens.
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn statuses(gw: &Gateway, path: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| get(&gw.proxy, &format!("{path}{i}"), &[]).unwrap().status)
        .collect()
}

#[test]
fn a_routes_retries_and_health_check_are_its_own() {
    let (default, live) = (Upstream::start(), Upstream::start());
    let dead = dead_addr();
    let pool = format!("upstreams = [\"{dead}\", \"{}\"]", live.addr);
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]\nretries = 0", default.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\
             [[routes]]\nname = \"bare\"\npath_prefix = \"/bare/\"\n{pool}\n\
             [[routes]]\nname = \"retried\"\npath_prefix = \"/retried/\"\n{pool}\nretries = 1\nconnect_timeout_ms = 700\n\
             [[routes]]\nname = \"checked\"\npath_prefix = \"/checked/\"\n{pool}\n\
             [routes.health_check]\ninterval_ms = 100\ntimeout_ms = 200\n"
        ),
    );
    // `[proxy]`'s retries (0), no check: round robin sends every second request to the dead one.
    let seen = statuses(&gw, "/bare/", 10);
    assert_eq!(seen.iter().filter(|&&s| s == 502).count(), 5, "{seen:?}");
    // The route's own retries: a failed connect goes to the other upstream.
    assert_eq!(statuses(&gw, "/retried/", 20), vec![200; 20]);
    // The route's own health check takes the dead one out of its pool.
    wait_for(
        "the route's check to see it",
        Duration::from_secs(10),
        || (statuses(&gw, "/checked/", 4) == vec![200; 4]).then_some(()),
    );
    assert_eq!(statuses(&gw, "/checked/", 40), vec![200; 40]);

    let limits: serde_json::Value =
        serde_json::from_str(&get(&gw.admin, "/api/limits", &[]).unwrap().body).unwrap();
    let routes = &limits["routes"];
    assert_eq!(
        routes[0],
        serde_json::json!({
            "name": "bare",
            "match": {"path_prefix": "/bare/"},
            "upstreams": [dead, live.addr],
            "connect_timeout_ms": 2000,
            "read_timeout_ms": 60000,
            "write_timeout_ms": 60000,
            "retries": 0,
            "health_check": false,
        })
    );
    assert_eq!(routes[1]["retries"], 1);
    assert_eq!(routes[1]["connect_timeout_ms"], 700);
    assert_eq!(routes[2]["health_check"], true);
}

#[test]
fn a_route_added_by_a_reload_takes_no_request_before_its_pool_is_checked() {
    let (default, live) = (Upstream::start(), Upstream::start());
    let dead = dead_addr();
    let proxy = format!("upstreams = [\"{}\"]\nretries = 0", default.addr);
    let gw = Gateway::start(&proxy, "[limits]\ndefault_limit = 1000000\n");
    assert_eq!(statuses(&gw, "/new/", 4), vec![200; 4]);
    gw.reload_with(
        &proxy,
        &format!(
            "[limits]\ndefault_limit = 1000000\n\
             [[routes]]\nname = \"new\"\npath_prefix = \"/new/\"\nupstreams = [\"{dead}\", \"{}\"]\n\
             [routes.health_check]\ninterval_ms = 100\ntimeout_ms = 200\n",
            live.addr
        ),
    );
    // Until the reload, the default pool answers; from then on the route's, whose dead
    // upstream was found before the first request: no 502 at any point.
    let mut seen = Vec::new();
    wait_for("the route in force", Duration::from_secs(10), || {
        let r = get(&gw.proxy, "/new/x", &[]).unwrap();
        seen.push(r.status);
        (r.header("X-Upstream") == Some(live.addr.as_str())).then_some(())
    });
    assert!(seen.iter().all(|&s| s == 200), "{seen:?}");
    assert_eq!(statuses(&gw, "/new/", 40), vec![200; 40]);
}

#[test]
fn the_access_log_names_the_route() {
    let (default, api) = (Upstream::start(), Upstream::start());
    let dir = std::env::temp_dir().join(format!("routes-more-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("access.log").display().to_string();
    let json = dir.join("access.json").display().to_string();
    let body = |path: &str, format: &str| {
        format!(
            "[log]\naccess = \"{path}\"\nformat = \"{format}\"\n[limits]\ndefault_limit = 1000000\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstreams = [\"{}\"]\n",
            api.addr
        )
    };
    let proxy = format!("upstreams = [\"{}\"]", default.addr);
    for (path, format) in [(&text, "text"), (&json, "json")] {
        let _ = std::fs::remove_file(path);
        let gw = Gateway::start(&proxy, &body(path, format));
        assert_eq!(get(&gw.proxy, "/api/orders", &[]).unwrap().status, 200);
        assert_eq!(get(&gw.proxy, "/other", &[]).unwrap().status, 200);
        let lines = wait_for("two lines", Duration::from_secs(10), || {
            let t = std::fs::read_to_string(path).ok()?;
            (t.lines().count() >= 2).then_some(t)
        });
        let line_of = |p: &str| {
            lines
                .lines()
                .find(|l| l.contains(p))
                .unwrap_or_else(|| panic!("{p}: {lines}"))
                .to_string()
        };
        if format == "text" {
            assert!(line_of("/api/orders").contains(" route=api "), "{lines}");
            assert!(line_of("/other").contains(" route=- "), "{lines}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&line_of("/api/orders")).unwrap();
            assert_eq!(v["route"], "api", "{lines}");
            let v: serde_json::Value = serde_json::from_str(&line_of("/other")).unwrap();
            assert!(v["route"].is_null(), "{lines}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The head, the time to the first body byte and the body of `request` on a fresh
/// connection: read until the connection closes, or (`until_close` false: an upstream keeps
/// it open) until the last byte of the drip, `9`.
fn first_byte(addr: &str, request: &str, until_close: bool) -> (String, Duration, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let asked = Instant::now();
    s.write_all(request.as_bytes()).unwrap();
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
        if !until_close && body.contains('9') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.to_ascii_lowercase(),
        first.expect("a body"),
        body.to_string(),
    )
}

/// `GET path` with `Connection: close`.
fn get_closing(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

#[test]
fn proxy_buffering_off_sends_a_trickle_as_it_comes_chunked_or_until_the_close() {
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]\nbuffering = false", upstream.addr),
        "[limits]\ndefault_limit = 1000000\n",
    );
    // Ten bytes, one every 300 ms, with a Content-Length.
    let (head, first, body) = first_byte(&gw.proxy, &get_closing("/drip/3000"), true);
    println!("HTTP/1.1, unbuffered: first body byte after {first:?}");
    assert!(first < Duration::from_millis(1500), "{first:?}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let data: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|pair| pair.get(1).copied())
        .collect();
    assert_eq!(data, "0123456789", "{body:?}");
    // HTTP/1.0 has no chunks: the bytes as they come, the end at the close.
    let request = "GET /drip/3000 HTTP/1.0\r\nHost: t\r\n\r\n";
    let (head, first, body) = first_byte(&gw.proxy, request, true);
    println!("HTTP/1.0, unbuffered: first body byte after {first:?}");
    assert!(first < Duration::from_millis(1500), "{first:?}");
    assert!(head.starts_with("http/1."), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body, "0123456789");
}
