//! The proxy path on the wire (contract §3): a real upstream, the real gateway binary.

mod common;

use common::http::{get, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;

fn upstreams(u: &[&Upstream]) -> String {
    let list: Vec<String> = u.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!("upstreams = [{}]", list.join(", "))
}

#[test]
fn allows_then_blocks_with_headers_body_and_keep_alive() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up]),
        "[limits]\ndefault_limit = 3\ndefault_window_ms = 60000\n",
    );
    let mut conn = Conn::open(&gw.proxy).unwrap();
    for remaining in ["2", "1", "0"] {
        let r = conn.get("/hello", &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("upstream {} /hello", up.addr));
        assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some(remaining));
    }
    let r = conn.get("/hello", &[]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("0"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.header("X-RateLimit-Reset"),
        Some(retry.to_string().as_str())
    );
    assert_eq!(
        r.body,
        format!(
            r#"{{"allowed":false,"current_count":3,"remaining":0,"retry_after_seconds":{retry},"rule":"default"}}"#
        )
    );
    // The 429 left the connection usable.
    let again = conn.get("/hello", &[]).unwrap();
    assert_eq!(again.status, 429);
    assert_eq!(up.served(), 3, "blocked requests never reach the upstream");
}

#[test]
fn window_slides_and_blocked_requests_are_not_recorded() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up]),
        "[limits]\ndefault_limit = 2\ndefault_window_ms = 1000\n",
    );
    let mut conn = Conn::open(&gw.proxy).unwrap();
    assert_eq!(conn.get("/", &[]).unwrap().status, 200);
    assert_eq!(conn.get("/", &[]).unwrap().status, 200);
    // Hammering while blocked does not extend the block: the slots free one window after the
    // allowed requests, whatever happened in between.
    let blocked_until = std::time::Instant::now();
    common::wait_for("a slot to free", std::time::Duration::from_secs(3), || {
        (conn.get("/", &[]).unwrap().status == 200).then_some(())
    });
    let waited = blocked_until.elapsed();
    assert!(
        waited < std::time::Duration::from_millis(1500),
        "blocked for {waited:?}"
    );
}

#[test]
fn round_robins_over_upstreams_and_forwards_the_client() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let gw = Gateway::start(&upstreams(&[&a, &b]), "[limits]\ndefault_limit = 100\n");
    let mut conn = Conn::open(&gw.proxy).unwrap();
    for _ in 0..10 {
        let r = conn.get("/", &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Seen-Forwarded-For"), Some("127.0.0.1"));
    }
    assert_eq!((a.served(), b.served()), (5, 5));
}

#[test]
fn header_key_falls_back_to_the_client_ip() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up]),
        "[limits]\ndefault_limit = 1\nkey = \"header:X-Api-Key\"\n",
    );
    let p = &gw.proxy;
    assert_eq!(get(p, "/", &[("X-Api-Key", "alice")]).unwrap().status, 200);
    assert_eq!(get(p, "/", &[("X-Api-Key", "alice")]).unwrap().status, 429);
    assert_eq!(get(p, "/", &[("x-api-key", "bob")]).unwrap().status, 200);
    // Leaving the header out is keyed by the IP: limited too, not a way around the limit.
    assert_eq!(get(p, "/", &[]).unwrap().status, 200);
    assert_eq!(get(p, "/", &[]).unwrap().status, 429);
    assert_eq!(get(p, "/", &[("X-Api-Key", "")]).unwrap().status, 429);
}

#[test]
fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let up = Upstream::start();
    let trusted = Gateway::start(
        &upstreams(&[&up]),
        "[limits]\ndefault_limit = 1\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let p = &trusted.proxy;
    let xff = |ip| [("X-Forwarded-For", ip)];
    assert_eq!(get(p, "/", &xff("203.0.113.1")).unwrap().status, 200);
    assert_eq!(get(p, "/", &xff("203.0.113.1")).unwrap().status, 429);
    assert_eq!(get(p, "/", &xff("203.0.113.2")).unwrap().status, 200);
    // A spoofed left-most entry does not matter: the right-most untrusted hop is the client.
    assert_eq!(
        get(p, "/", &xff("198.51.100.9, 203.0.113.2"))
            .unwrap()
            .status,
        429
    );

    let untrusted = Gateway::start(
        &upstreams(&[&up]),
        "[limits]\ndefault_limit = 1\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    let p = &untrusted.proxy;
    assert_eq!(get(p, "/", &xff("203.0.113.1")).unwrap().status, 200);
    // The peer (127.0.0.1) is not trusted, so its X-Forwarded-For is ignored: same key.
    assert_eq!(get(p, "/", &xff("203.0.113.2")).unwrap().status, 429);
}

#[test]
fn long_header_values_are_keyed_by_digest_in_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up]),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\n[limits]\ndefault_limit = 2\ndefault_window_ms = 30000\nkey = \"header:X-Api-Key\"\n",
            redis.url()
        ),
    );
    let long = "k".repeat(5000);
    assert_eq!(
        get(&gw.proxy, "/", &[("X-Api-Key", &long)]).unwrap().status,
        200
    );
    let short = "k".repeat(256);
    assert_eq!(
        get(&gw.proxy, "/", &[("X-Api-Key", &short)])
            .unwrap()
            .status,
        200
    );

    let mut conn = redis.conn();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("ratelimit:*")
        .query(&mut conn)
        .unwrap();
    keys.sort();
    let digest_key = keys
        .iter()
        .find(|k| k.contains("sha256:"))
        .expect("digest key");
    let hex = digest_key
        .strip_prefix("ratelimit:x-api-key:sha256:")
        .unwrap();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(keys.contains(&format!("ratelimit:x-api-key:{short}")));
    assert!(keys
        .iter()
        .all(|k| k.len() <= "ratelimit:x-api-key:".len() + 256));

    // The digest key limits like any other.
    assert_eq!(
        get(&gw.proxy, "/", &[("X-Api-Key", &long)]).unwrap().status,
        200
    );
    assert_eq!(
        get(&gw.proxy, "/", &[("X-Api-Key", &long)]).unwrap().status,
        429
    );
}

#[test]
fn redis_state_matches_the_contract() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up]),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\n[limits]\ndefault_limit = 3\ndefault_window_ms = 20000\n",
            redis.url()
        ),
    );
    for _ in 0..5 {
        get(&gw.proxy, "/", &[]).unwrap();
    }
    let mut conn = redis.conn();
    let key = "ratelimit:ip:127.0.0.1";
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .unwrap();
    assert_eq!(members.len(), 3, "blocked requests are not recorded");
    let distinct: std::collections::HashSet<_> = members.iter().map(|(m, _)| m).collect();
    assert_eq!(distinct.len(), 3, "members are unique");
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let now_ms = (secs * 1000 + micros / 1000) as f64;
    for (_, score) in &members {
        assert!(
            (now_ms - score).abs() < 10_000.0,
            "score {score} is the server's ms clock"
        );
    }
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
    assert!(
        ttl > 0 && ttl <= 20_000,
        "expires after the window: pttl {ttl}"
    );
}

#[test]
fn limiting_off_is_a_plain_proxy() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstreams(&[&up]),
        "[limits]\nenabled = false\ndefault_limit = 1\n",
    );
    for _ in 0..5 {
        let r = get(&gw.proxy, "/", &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-RateLimit-Limit"), None);
    }
}

#[test]
fn direct_response_answers_allowed_requests_itself() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nstatus = 200\nbody = \"hi\\n\"\n",
        "[limits]\ndefault_limit = 2\n",
    );
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let r = conn.get("/", &[]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hi\n"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("1"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(conn.get("/", &[]).unwrap().status, 200);
    assert_eq!(conn.get("/", &[]).unwrap().status, 429);
}

#[test]
fn the_readme_demo_config_works() {
    // conf/example.toml, with its ports moved to free ones: the quick start's experience.
    let example = std::fs::read_to_string("conf/example.toml").unwrap();
    let body: String = example
        .lines()
        .skip_while(|l| !l.starts_with("[proxy.direct_response]"))
        .take_while(|l| !l.starts_with("[admin]"))
        .chain(example.lines().skip_while(|l| !l.starts_with("[node]")))
        .collect::<Vec<_>>()
        .join("\n");
    let gw = Gateway::start("", &body);
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get(&gw.proxy, "/", &[]).unwrap().status);
    }
    assert_eq!(seen, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn the_upstream_sees_the_forwarded_chain_with_the_client_appended() {
    let up = Upstream::start();
    let gw = Gateway::start(&upstreams(&[&up]), "[limits]\ndefault_limit = 100\n");
    let r = get(
        &gw.proxy,
        "/",
        &[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.5"),
        ],
    )
    .unwrap();
    assert_eq!(
        r.header("X-Seen-Forwarded-For"),
        Some("198.51.100.1, 203.0.113.5, 127.0.0.1")
    );
}

#[test]
fn keep_alive_survives_a_429_to_a_request_with_a_body() {
    let up = Upstream::start();
    let gw = Gateway::start(&upstreams(&[&up]), "[limits]\ndefault_limit = 1\n");
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let body = "x".repeat(1000);
    assert_eq!(conn.send("POST", "/", &[], &body).unwrap().status, 200);
    // The gateway reads and drops the body of a request it answers itself, so the next
    // request on the connection parses cleanly.
    assert_eq!(conn.send("POST", "/", &[], &body).unwrap().status, 429);
    assert_eq!(conn.send("POST", "/", &[], &body).unwrap().status, 429);
    assert_eq!(conn.get("/", &[]).unwrap().status, 429);
}
