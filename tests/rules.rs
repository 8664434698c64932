//! Rules on the wire (contract §7): each match condition, several rules on one request (one
//! Redis round trip; blocked by one, recorded in none), exactness across three nodes under
//! concurrency, skip_default, unlimited, overrides, shadow, the IETF fields as a Structured
//! Fields parser reads them, and `/api/explain`, which records nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::http::{get, post, Conn, Response};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use serde_json::{json, Value};
use sfv::{BareItem, ListEntry, Parser};

fn upstream_of(up: &Upstream) -> String {
    format!("upstreams = [\"{}\"]", up.addr)
}

fn body(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body))
}

/// A Structured Fields list of items, as (name, parameters) with integer parameters.
fn sf_items(r: &Response, field: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let Some(text) = r.header(field) else {
        return Vec::new();
    };
    let list = Parser::parse_list(text.as_bytes())
        .unwrap_or_else(|e| panic!("{field}: {text:?} is not a Structured Fields list: {e}"));
    list.into_iter()
        .map(|entry| match entry {
            ListEntry::Item(item) => {
                let name = match item.bare_item {
                    BareItem::String(s) => s,
                    other => panic!("{field}: item {other:?} is not a String"),
                };
                let params = item
                    .params
                    .into_iter()
                    .map(|(k, v)| (k, v.as_int().expect("integer parameter")))
                    .collect();
                (name, params)
            }
            ListEntry::InnerList(l) => panic!("{field}: unexpected inner list {l:?}"),
        })
        .collect()
}

/// The rules applied to a request, from its `RateLimit-Policy`.
fn applied(r: &Response) -> Vec<String> {
    sf_items(r, "RateLimit-Policy")
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

fn zcard(redis: &RedisServer, key: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(format!("ratelimit:{key}"))
        .query(&mut redis.conn())
        .unwrap()
}

fn evalsha_calls(redis: &RedisServer) -> u64 {
    common::command_calls(&mut redis.conn(), &["evalsha"])
}

/// (method, path, headers, the rules that must apply).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn each_match_condition_selects_its_rule() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        r#"
[limits]
default_limit = 1000
[headers]
style = "ietf"
[[rules]]
name = "posts"
methods = ["POST"]
limit = 100
[[rules]]
name = "exact"
path = "/exact"
limit = 100
[[rules]]
name = "prefix"
path_prefix = "/pre/"
limit = 100
[[rules]]
name = "regex"
path_regex = "^/users/[0-9]+$"
limit = 100
[[rules]]
name = "host"
host = "api.example.com"
limit = 100
[[rules]]
name = "wild"
host = "*.example.org"
limit = 100
[[rules]]
name = "tight"
path = "/tight"
limit = 1
"#,
    );
    let mut c = Conn::open(&gw.proxy).unwrap();
    let cases: &[Case] = &[
        ("GET", "/exact", &[], &["default", "exact"]),
        ("GET", "/exact?q=1", &[], &["default", "exact"]),
        ("GET", "/exact/", &[], &["default"]),
        ("POST", "/x", &[], &["default", "posts"]),
        ("GET", "/pre/a", &[], &["default", "prefix"]),
        ("GET", "/pre", &[], &["default"]),
        // Paths are compared normalized, as nginx does: no way around a rule by spelling.
        ("GET", "//pre/./a", &[], &["default", "prefix"]),
        ("GET", "/x/../pre/a", &[], &["default", "prefix"]),
        ("GET", "/%75sers/42", &[], &["default", "regex"]),
        ("GET", "/users/42/x", &[], &["default"]),
        (
            "GET",
            "/",
            &[("Host", "API.Example.com:8080")],
            &["default", "host"],
        ),
        (
            "GET",
            "/",
            &[("Host", "a.example.org")],
            &["default", "wild"],
        ),
        ("GET", "/", &[("Host", "example.org")], &["default"]),
        (
            "POST",
            "/exact",
            &[("Host", "api.example.com")],
            &["default", "posts", "exact", "host"],
        ),
    ];
    for (method, path, headers, want) in cases {
        let r = c.send(method, path, headers, "").unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        assert_eq!(applied(&r), *want, "{method} {path} {headers:?}");
    }
    // A rule limits on its own counter.
    assert_eq!(c.get("/tight", &[]).unwrap().status, 200);
    let r = c.get("/tight", &[]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(body(&r)["rule"], "tight");
    assert_eq!(c.get("/other", &[]).unwrap().status, 200);
}

#[test]
fn several_rules_are_one_round_trip_and_a_blocked_request_is_recorded_in_none() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstream_of(&up),
        &format!(
            r#"
[redis]
url = "{}"
timeout_ms = 1000
[limits]
default_limit = 10
default_window_ms = 60000
[[rules]]
name = "login"
path_prefix = "/login"
limit = 2
[[rules]]
name = "burst"
path_prefix = "/login"
key = "global"
limit = 50
"#,
            redis.url()
        ),
    );
    let mut c = Conn::open(&gw.proxy).unwrap();
    // Loaded ahead, so the count below has no NOSCRIPT round trip in it.
    redis::Script::new(&ratelimiter::limiter::backend::redis::SCRIPT)
        .load(&mut redis.conn())
        .unwrap();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut redis.conn())
        .unwrap();
    for _ in 0..2 {
        assert_eq!(c.get("/login", &[]).unwrap().status, 200);
    }
    let r = c.get("/login", &[]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(body(&r)["rule"], "login");
    // Three rules per request, one script call each: nothing more.
    assert_eq!(evalsha_calls(&redis), 3);
    // The refused request is in none of the three counters.
    assert_eq!(zcard(&redis, "login/ip:127.0.0.1"), 2);
    assert_eq!(zcard(&redis, "burst/global"), 2);
    assert_eq!(zcard(&redis, "ip:127.0.0.1"), 2);
    // Blocked again: answered from memory, no script call.
    assert_eq!(c.get("/login", &[]).unwrap().status, 429);
    assert_eq!(evalsha_calls(&redis), 3);
    // Another path meets only the default rule, which still has room.
    assert_eq!(c.get("/other", &[]).unwrap().status, 200);
    assert_eq!(zcard(&redis, "ip:127.0.0.1"), 3);
    assert_eq!(up.served(), 3);
}

#[test]
fn three_nodes_with_two_rules_stay_exact_under_concurrency() {
    const PER_KEY: usize = 10; // the default rule, per API key
    const GLOBAL: usize = 25; // the rule on /api, for every key together
    const KEYS: usize = 3;
    const CLIENTS_PER_KEY: usize = 10;
    const REQUESTS: usize = 10; // per client: 300 requests in all

    let redis = RedisServer::start();
    let up = Upstream::start();
    let config = format!(
        r#"
[redis]
url = "{}"
timeout_ms = 2000
[limits]
default_limit = {PER_KEY}
default_window_ms = 60000
key = "header:X-Api-Key"
[[rules]]
name = "api"
path_prefix = "/api"
key = "global"
limit = {GLOBAL}
"#,
        redis.url()
    );
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&upstream_of(&up), &config))
        .collect();
    let allowed = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(KEYS * CLIENTS_PER_KEY));
    let threads: Vec<_> = (0..KEYS * CLIENTS_PER_KEY)
        .map(|i| {
            let addr = nodes[i % nodes.len()].proxy.clone();
            let key = format!("k{}", i % KEYS);
            let (allowed, barrier) = (allowed.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                barrier.wait();
                for _ in 0..REQUESTS {
                    let r = conn.get("/api/x", &[("X-Api-Key", &key)]).unwrap();
                    match r.status {
                        200 => {
                            allowed.fetch_add(1, Ordering::SeqCst);
                        }
                        429 => {}
                        other => panic!("unexpected status {other}: {r:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Each key could take 10 (30 in all), so the global rule is what binds: exactly 25.
    assert_eq!(allowed.load(Ordering::SeqCst), GLOBAL);
    assert_eq!(up.served(), GLOBAL);
    assert_eq!(zcard(&redis, "api/global"), GLOBAL as u64);
    let per_key: Vec<u64> = (0..KEYS)
        .map(|k| zcard(&redis, &format!("x-api-key:k{k}")))
        .collect();
    assert!(per_key.iter().all(|&n| n <= PER_KEY as u64), "{per_key:?}");
    assert_eq!(per_key.iter().sum::<u64>(), GLOBAL as u64, "{per_key:?}");
}

#[test]
fn skip_default_unlimited_overrides_and_shadow() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstream_of(&up),
        r#"
[privacy]
clear_keys = true
[node]
id = "r1"
[limits]
default_limit = 2
[[rules]]
name = "health"
path = "/healthz"
unlimited = true
[[rules]]
name = "api"
path_prefix = "/api/"
key = "header:X-Api-Key"
limit = 3
skip_default = true
overrides = { "premium" = 6, "127.0.0.1" = 4 }
[[rules]]
name = "trial"
path_prefix = "/trial"
limit = 1
shadow = true
"#,
    );
    let p = &gw.proxy;
    let count = |path: &str, headers: &[(&str, &str)], n: usize| -> Vec<u16> {
        let mut c = Conn::open(p).unwrap();
        (0..n)
            .map(|_| c.get(path, headers).unwrap().status)
            .collect()
    };
    // Unlimited: never limited, no headers, and no counter charged.
    let mut c = Conn::open(p).unwrap();
    for _ in 0..10 {
        let r = c.get("/healthz", &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-RateLimit-Limit"), None);
    }
    // skip_default: the API rule alone applies (3), not the default (2).
    let basic = [("X-Api-Key", "basic")];
    assert_eq!(count("/api/a", &basic, 4), [200, 200, 200, 429]);
    // Overrides: a premium key gets 6; without the header the IP's override (4) applies.
    let premium = [("X-Api-Key", "premium")];
    assert_eq!(
        count("/api/a", &premium, 7),
        [200, 200, 200, 200, 200, 200, 429]
    );
    assert_eq!(count("/api/a", &[], 5), [200, 200, 200, 200, 429]);
    let r = get(p, "/api/a", &premium).unwrap();
    assert_eq!(r.header("X-RateLimit-Limit"), Some("6"));
    // Sending the IP as the key does not claim the IP's override (it is 4, the rule 3).
    let r = get(p, "/api/a", &[("X-Api-Key", "127.0.0.1")]).unwrap();
    assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
    // Shadow: the trial rule (1) never blocks; the default (2) does. The default was not
    // charged by the unlimited or the skipping requests, so it has both its slots.
    assert_eq!(count("/trial", &[], 3), [200, 200, 429]);
    assert_eq!(up.served(), 10 + 3 + 6 + 4 + 1 + 2);

    // Counters carry their rule and the limit that applies to them.
    let counters = body(&get(&gw.admin, "/api/counters", &[]).unwrap());
    let find = |key: &str| {
        counters["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no counter {key}: {counters}"))
    };
    assert_eq!(
        find("api/x-api-key:premium"),
        json!({"key":"api/x-api-key:premium","count":6,"limit":6,"remaining":0,"rule":"api"})
    );
    assert_eq!(find("api/ip:127.0.0.1")["limit"], 4);
    assert_eq!(find("trial/ip:127.0.0.1")["count"], 1);
    assert_eq!(find("ip:127.0.0.1")["count"], 2);
    let blocks = body(&get(&gw.admin, "/api/blocks", &[]).unwrap());
    let blocked: Vec<&str> = blocks["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        blocked,
        [
            "api/ip:127.0.0.1",
            "api/x-api-key:basic",
            "api/x-api-key:premium",
            "ip:127.0.0.1",
            "trial/ip:127.0.0.1"
        ]
    );

    // The shadow rule's would-be blocks are counted, never enforced.
    let metrics = get(&gw.admin, "/metrics", &[]).unwrap().body;
    let line = |m: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("ratelimiter_requests_checked_total{") && l.contains(m))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(
        line(r#"key="trial/ip:127.0.0.1",result="shadow_blocked",rule="trial""#).as_deref(),
        Some("2"),
        "{metrics}"
    );
    assert_eq!(
        line(r#"key="trial/ip:127.0.0.1",result="blocked",rule="trial""#).as_deref(),
        Some("0"),
        "{metrics}"
    );
    assert_eq!(
        line(r#"key="api/x-api-key:basic",result="blocked",rule="api""#).as_deref(),
        Some("1")
    );
}

#[test]
fn ietf_fields_are_structured_field_lists_one_item_per_rule() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        r#"
[limits]
default_limit = 100
default_window_ms = 60000
[headers]
style = "both"
[[rules]]
name = "login"
path = "/login"
limit = 2
window_ms = 30000
[[rules]]
name = "dry"
path = "/login"
limit = 1
shadow = true
"#,
    );
    let mut c = Conn::open(&gw.proxy).unwrap();
    let r = c.get("/login", &[]).unwrap();
    assert_eq!(r.status, 200);
    let policy = sf_items(&r, "RateLimit-Policy");
    let param = |items: &[(String, Vec<(String, i64)>)], name: &str, p: &str| {
        items
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, ps)| ps.iter().find(|(k, _)| k == p))
            .map(|(_, v)| *v)
    };
    // Shadow rules are invisible to clients.
    assert_eq!(
        policy.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["default", "login"]
    );
    assert_eq!(param(&policy, "default", "q"), Some(100));
    assert_eq!(param(&policy, "default", "w"), Some(60));
    assert_eq!(param(&policy, "login", "q"), Some(2));
    assert_eq!(param(&policy, "login", "w"), Some(30));
    let state = sf_items(&r, "RateLimit");
    assert_eq!(param(&state, "default", "r"), Some(99));
    assert_eq!(param(&state, "login", "r"), Some(1));
    let t = param(&state, "login", "t").unwrap();
    assert!((29..=30).contains(&t), "t = {t}");
    // Both styles: the X- fields describe the rule with the fewest remaining.
    assert_eq!(r.header("X-RateLimit-Limit"), Some("2"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("1"));

    c.get("/login", &[]).unwrap();
    let r = c.get("/login", &[]).unwrap();
    assert_eq!(r.status, 429);
    let retry: i64 = r.header("Retry-After").unwrap().parse().unwrap();
    let state = sf_items(&r, "RateLimit");
    assert_eq!(param(&state, "login", "r"), Some(0));
    for (name, _) in &state {
        let t = param(&state, name, "t").unwrap();
        assert!(t >= retry, "{name}: t = {t} < Retry-After {retry}");
    }
    assert!((28..=30).contains(&retry), "Retry-After {retry}");
}

#[test]
fn explain_answers_what_would_happen_and_records_nothing() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstream_of(&up),
        &format!(
            r#"
[redis]
url = "{}"
timeout_ms = 1000
[limits]
default_limit = 10
key = "header:X-Api-Key"
[[rules]]
name = "login"
methods = ["POST"]
path = "/login"
host = "api.example.com"
key = "ip"
limit = 2
[[rules]]
name = "health"
path = "/healthz"
unlimited = true
"#,
            redis.url()
        ),
    );
    let ask = r#"{"method":"POST","path":"/login","host":"api.example.com","ip":"10.0.0.1","headers":{"X-Api-Key":"k"}}"#;
    let explain = || {
        let r = post(&gw.admin, "/api/explain", &[], ask).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        body(&r)
    };
    let first = explain();
    assert_eq!(first["decision"], "allowed");
    assert_eq!(first["matched"], json!(["login"]));
    assert_eq!(first["default_applies"], true);
    let checks = first["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(
        checks[1],
        json!({"rule":"login","key":"login/ip:10.0.0.1",
               "parts":[{"source":"ip","value":"10.0.0.1"}],"limit":2,"window_ms":60000,
               "algorithm":"sliding_log","shadow":false,"cost":1,"allowed":true,"count":0,
               "remaining":2,"retry_after_seconds":0})
    );
    assert_eq!(checks[0]["key"], "x-api-key:k");
    assert_eq!(
        checks[0]["parts"],
        json!([{"source":"header:x-api-key","value":"k"}])
    );
    for _ in 0..5 {
        explain();
    }
    // Nothing was recorded, in Redis or in the counter listing.
    assert_eq!(zcard(&redis, "login/ip:10.0.0.1"), 0);
    assert_eq!(zcard(&redis, "x-api-key:k"), 0);
    assert_eq!(
        body(&get(&gw.admin, "/api/counters", &[]).unwrap()),
        json!({"counters": []})
    );
    // Fill the login counter for that client through the admin's /check, then ask again.
    for _ in 0..2 {
        post(
            &gw.admin,
            "/check",
            &[],
            r#"{"key":"login/ip:10.0.0.1","limit":2}"#,
        )
        .unwrap();
    }
    let after = explain();
    assert_eq!(after["decision"], "blocked");
    assert_eq!(after["rule"], "login");
    assert_eq!(after["checks"][1]["count"], 2);
    assert_eq!(after["checks"][1]["allowed"], false);
    assert!(after["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert_eq!(zcard(&redis, "login/ip:10.0.0.1"), 2);

    let health = post(
        &gw.admin,
        "/api/explain",
        &[],
        r#"{"path":"/healthz","ip":"10.0.0.1"}"#,
    )
    .unwrap();
    assert_eq!(
        body(&health),
        json!({"decision":"unlimited","path":"/healthz","route":null,"rule":"health","retry_after_seconds":0,
               "matched":["health"],"default_applies":false,"checks":[]})
    );
    let bad = post(
        &gw.admin,
        "/api/explain",
        &[],
        r#"{"path":"login","ip":"10.0.0.1"}"#,
    )
    .unwrap();
    assert_eq!(bad.status, 422);
    assert!(body(&bad)["error"].as_str().unwrap().contains("path"));
}

#[test]
fn limits_lists_every_rule() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        r#"
[limits]
default_limit = 7
default_window_ms = 1000
[[rules]]
name = "login"
methods = ["POST"]
path_prefix = "/login"
host = "api.example.com"
limit = 5
overrides = { "10.0.0.7" = 50 }
[[rules]]
name = "health"
path = "/healthz"
unlimited = true
[[rules]]
name = "feed"
path_regex = "^/feed/[0-9]+$"
limit = 1000
sync = "lease"
"#,
    );
    let limits = body(&get(&gw.admin, "/api/limits", &[]).unwrap());
    assert_eq!(limits["default_limit"], 7);
    assert_eq!(
        limits["rules"],
        json!([
            {"name":"default","concurrency":null,"slot_ttl_ms":null,"queue":null,"delay":null,"period":null,"timezone":null,"anchor_day":null,"limit":7,"cost":1,"max_cost":7,"settle":null,"count_status":null,"window_ms":1000,"key":"ip","missing":"ip","algorithm":"sliding_log",
             "sync":"exact","lease_size":null,"lease_ms":null,
             "shadow":false,"skip_default":false,"unlimited":false,"match":{},"overrides":{}},
            {"name":"login","concurrency":null,"slot_ttl_ms":null,"queue":null,"delay":null,"period":null,"timezone":null,"anchor_day":null,"limit":5,"cost":1,"max_cost":5,"settle":null,"count_status":null,"window_ms":1000,"key":"ip","missing":"ip","algorithm":"sliding_log",
             "sync":"exact","lease_size":null,"lease_ms":null,
             "shadow":false,"skip_default":false,"unlimited":false,
             "match":{"methods":["POST"],"path_prefix":"/login","host":"api.example.com"},
             "overrides":{"10.0.0.7":50}},
            {"name":"health","concurrency":null,"slot_ttl_ms":null,"queue":null,"delay":null,"period":null,"timezone":null,"anchor_day":null,"limit":null,"cost":1,"max_cost":null,"settle":null,"count_status":null,"window_ms":null,"key":"ip","missing":"ip","algorithm":null,
             "sync":"exact","lease_size":null,"lease_ms":null,
             "shadow":false,"skip_default":false,"unlimited":true,
             "match":{"path":"/healthz"},"overrides":{}},
            {"name":"feed","concurrency":null,"slot_ttl_ms":null,"queue":null,"delay":null,"period":null,"timezone":null,"anchor_day":null,"limit":1000,"cost":1,"max_cost":1000,"settle":null,"count_status":null,"window_ms":1000,"key":"ip","missing":"ip","algorithm":"sliding_log",
             "sync":"lease","lease_size":0,"lease_ms":100,
             "shadow":false,"skip_default":false,"unlimited":false,
             "match":{"path_regex":"^/feed/[0-9]+$"},"overrides":{}},
        ])
    );
    assert!(limits["config_loaded_at"].as_str().unwrap().ends_with('Z'));
}

/// The README's walk through `conf/rules.toml`, as a newcomer would run it.
#[test]
fn the_shipped_rules_example_does_what_the_readme_says() {
    let gw = Gateway::start_shipped("conf/rules.toml");
    let p = &gw.proxy;
    let mut c = Conn::open(p).unwrap();
    // health: never limited, no limit fields.
    for _ in 0..10 {
        let r = c.get("/healthz", &[]).unwrap();
        assert_eq!((r.status, r.header("RateLimit")), (200, None));
    }
    // login: the sixth POST in a minute is refused by the login rule.
    let statuses: Vec<u16> = (0..6)
        .map(|_| c.send("POST", "/login", &[], "").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let r = c.send("POST", "/login", &[], "").unwrap();
    assert_eq!(body(&r)["rule"], "login");
    assert_eq!(
        applied(&r),
        ["default", "login"],
        "both fields name the rules applied"
    );
    // search: one budget for every client.
    let mut other = Conn::open(p).unwrap();
    let mut allowed = 0;
    for i in 0..25 {
        let conn = if i % 2 == 0 { &mut c } else { &mut other };
        if conn.get("/search?q=x", &[]).unwrap().status == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 20);
    // api: per key, premium keys get more, and the per-IP default does not apply.
    let r = c
        .get("/api/orders", &[("X-Api-Key", "premium-key-1")])
        .unwrap();
    assert_eq!(r.header("X-RateLimit-Limit"), Some("10000"));
    assert_eq!(applied(&r), ["api"]);
    // upload-trial: counted, never enforced.
    for _ in 0..12 {
        assert_eq!(c.send("POST", "/upload", &[], "").unwrap().status, 200);
    }
    // The three lines the README shows after its twelve uploads.
    let metrics = get(&gw.admin, "/metrics", &[]).unwrap().body;
    for (result, n) in [("allowed", 10), ("blocked", 0), ("shadow_blocked", 2)] {
        let line = format!(
            r#"ratelimiter_requests_checked_total{{key="upload-trial/ip:127.0.0.1",result="{result}",rule="upload-trial",node_id="#
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with(&format!("}} {n}"))),
            "{line} ... {n} in {metrics}"
        );
    }
}
