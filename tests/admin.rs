//! The admin port on the wire (contract §4–§6): exact JSON shapes, the node registry across
//! real gateway processes sharing one real Redis, counters, blocks, reset, /check, /metrics,
//! and bad requests.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, post, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::wait_for;
use serde_json::{json, Value};

fn body(r: &common::http::Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body))
}

fn redis_node(redis: &RedisServer, up: &Upstream, id: &str, limits: &str) -> Gateway {
    Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[privacy]\nclear_keys = true\n[node]\nid = \"{id}\"\nttl_seconds = 3\nheartbeat_seconds = 1\n[redis]\nurl = \"{}\"\ntimeout_ms = 500\n[limits]\n{limits}\n",
            redis.url()
        ),
    )
}

/// The keys a listing of `/api/counters` holds, in its order.
fn counter_keys(listed: &Value) -> Vec<&str> {
    listed["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect()
}

fn node_ids(admin: &str) -> Vec<String> {
    let r = get(admin, "/api/nodes", &[]).unwrap();
    assert_eq!(r.status, 200);
    body(&r)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn is_iso8601_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .iter()
            .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit))
}

#[test]
fn every_endpoint_has_the_contract_shape_embedded_store() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        "[node]\nid = \"solo\"\n[limits]\ndefault_limit = 2\ndefault_window_ms = 60000\n",
    );
    let a = &gw.admin;

    let r = get(a, "/health", &[]).unwrap();
    assert_eq!(
        (r.status, body(&r)),
        (200, json!({"status":"healthy","node_id":"solo"}))
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));

    let r = get(a, "/api/nodes", &[]).unwrap();
    let nodes = body(&r);
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1);
    let n = &nodes["nodes"][0];
    assert_eq!(n["id"], "solo");
    assert_eq!(n["address"], gw.proxy.as_str());
    assert_eq!(n["state"], "Up");
    assert!(is_iso8601_utc(n["registered_at"].as_str().unwrap()), "{n}");
    assert_eq!(n.as_object().unwrap().len(), 4);

    let r = get(a, "/api/limits", &[]).unwrap();
    let limits = body(&r);
    assert_eq!(limits["default_limit"], 2);
    assert_eq!(limits["default_window_ms"], 60000);

    assert_eq!(
        body(&get(a, "/api/counters", &[]).unwrap()),
        json!({"counters": []})
    );
    assert_eq!(
        body(&get(a, "/api/blocks", &[]).unwrap()),
        json!({"blocked": []})
    );

    // Real proxied traffic: 3 requests, limit 2.
    for _ in 0..3 {
        get(&gw.proxy, "/", &[]).unwrap();
    }
    assert_eq!(
        body(&get(a, "/api/counters", &[]).unwrap()),
        json!({"counters": [{"key":"ip:127.0.0.1","count":2,"limit":2,"remaining":0,"rule":"default"}]})
    );
    assert_eq!(
        body(&get(a, "/api/blocks", &[]).unwrap()),
        json!({"blocked": [{"key":"ip:127.0.0.1","current_count":2,"limit":2,"rule":"default"}]})
    );

    let r = post(a, "/api/counters/ip%3A127.0.0.1/reset", &[], "").unwrap();
    assert_eq!(
        (r.status, body(&r)),
        (200, json!({"key":"ip:127.0.0.1","reset":true}))
    );
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);

    let check = |b: &str| post(a, "/check", &[("Content-Type", "application/json")], b).unwrap();
    let r = check(r#"{"key":"user:1","limit":2,"window_ms":1000}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        body(&r),
        json!({"allowed":true,"current_count":1,"remaining":1,"retry_after_seconds":0})
    );
    assert_eq!(r.header("X-RateLimit-Limit"), Some("2"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("1"));
    check(r#"{"key":"user:1","limit":2,"window_ms":1000}"#);
    let r = check(r#"{"key":"user:1","limit":2,"window_ms":1000}"#);
    assert_eq!(r.status, 429);
    assert_eq!(
        body(&r),
        json!({"allowed":false,"current_count":2,"remaining":0,"retry_after_seconds":1})
    );
    assert_eq!(r.header("Retry-After"), Some("1"));
    // Defaults from [limits] when limit and window_ms are left out.
    let r = check(r#"{"key":"user:2"}"#);
    assert_eq!(r.header("X-RateLimit-Limit"), Some("2"));
}

#[test]
fn bad_requests_get_json_errors_and_do_not_hurt_the_node() {
    let gw = Gateway::start("", "[limits]\ndefault_limit = 5\n");
    let a = &gw.admin;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/check", "{nope", 422, "invalid body"),
        ("POST", "/check", "", 422, "invalid body"),
        ("POST", "/check", r#"{"key":5}"#, 422, "invalid type"),
        (
            "POST",
            "/check",
            r#"{"limit":5}"#,
            422,
            "missing field `key`",
        ),
        (
            "POST",
            "/check",
            r#"{"key":"a","limt":5}"#,
            422,
            "unknown field `limt`",
        ),
        ("POST", "/check", r#"{"key":"a","limit":0}"#, 422, "limit"),
        (
            "POST",
            "/check",
            r#"{"key":"a","limit":-1}"#,
            422,
            "limit: expected an integer 1..=4294967295",
        ),
        ("POST", "/check", r#"{"key":"a","limit":2.5}"#, 422, "limit"),
        (
            "POST",
            "/check",
            r#"{"key":"a","window_ms":31536000001}"#,
            422,
            "a year at most",
        ),
        (
            "POST",
            "/api/explain",
            r#"{"path":"/"}"#,
            422,
            "missing field `ip`",
        ),
        ("GET", "/api/explain", "", 405, "not allowed"),
        (
            "POST",
            "/check",
            r#"{"key":"a","window_ms":0}"#,
            422,
            "window_ms",
        ),
        ("POST", "/check", r#"{"key":""}"#, 422, "key"),
        ("POST", "/check", r#"{"key":"has space"}"#, 422, "key"),
        ("POST", "/check", "[1,2,3]", 422, "invalid body"),
        ("GET", "/check", "", 405, "not allowed"),
        ("DELETE", "/api/nodes", "", 405, "not allowed"),
        ("GET", "/api/counters/k/reset", "", 405, "not allowed"),
        ("POST", "/api/counters//reset", "", 422, "empty"),
        (
            "GET",
            "/api/counters?key=ip:1.2.3.4&bogus=1",
            "",
            422,
            "unknown parameter \"bogus\"",
        ),
        ("GET", "/api/counters?limit=0", "", 422, "limit: expected"),
        ("GET", "/nope", "", 404, "no such endpoint"),
        ("GET", "/api", "", 404, "no such endpoint"),
    ];
    for (method, path, payload, status, says) in cases {
        let r = Conn::open(a)
            .unwrap()
            .send(method, path, &[], payload)
            .unwrap();
        assert_eq!(r.status, *status, "{method} {path} {payload}: {r:?}");
        let e = body(&r);
        let msg = e["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {e}"));
        assert!(msg.contains(says), "{method} {path} {payload}: {msg}");
    }
    let r = Conn::open(a)
        .unwrap()
        .send("PUT", "/health", &[], "")
        .unwrap();
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));

    // HEAD wherever GET: the headers without the body, and the connection still in step.
    let mut conn = Conn::open(a).unwrap();
    for path in ["/health", "/metrics", "/api/counters", "/openapi.json"] {
        let head = conn.send("HEAD", path, &[], "").unwrap();
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}");
        let got = conn.get(path, &[]).unwrap();
        assert_eq!(got.status, 200, "GET {path} after HEAD");
        assert_eq!(
            head.header("Content-Type"),
            got.header("Content-Type"),
            "{path}"
        );
    }

    // Over-large body: 413, and nothing stored.
    let big = format!(r#"{{"key":"{}"}}"#, "a".repeat(100_000));
    let r = Conn::open(a)
        .unwrap()
        .send("POST", "/check", &[], &big)
        .unwrap();
    assert_eq!(r.status, 413);

    // The same connection survives a 4xx.
    let mut conn = Conn::open(a).unwrap();
    assert_eq!(
        conn.send("POST", "/check", &[], "{nope").unwrap().status,
        422
    );
    assert_eq!(conn.get("/health", &[]).unwrap().status, 200);
    assert_eq!(
        get(&gw.proxy, "/", &[]).unwrap().status,
        502,
        "no upstream listens: 502"
    );
}

#[test]
fn registry_lists_refreshes_and_forgets_nodes() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let mut a = redis_node(&redis, &up, "node-a", "default_limit = 10");
    let mut b = redis_node(&redis, &up, "node-b", "default_limit = 10");
    let c = redis_node(&redis, &up, "node-c", "default_limit = 10");
    let all = ["node-a", "node-b", "node-c"];
    for gw in [&a, &b, &c] {
        wait_for("every node listed", Duration::from_secs(5), || {
            (node_ids(&gw.admin) == all).then_some(())
        });
    }
    let r = get(&c.admin, "/api/nodes", &[]).unwrap();
    let listed = body(&r);
    let node_a = &listed["nodes"][0];
    assert_eq!(node_a["address"], a.proxy.as_str());
    assert_eq!(node_a["state"], "Up");

    // Refreshing: the TTL (3 s) is renewed every heartbeat (1 s); the entry outlives it.
    let mut conn = redis.conn();
    let started = Instant::now();
    let pttl = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("PTTL")
            .arg("ratelimiter:nodes:node-a")
            .query(conn)
            .unwrap()
    };
    let first = pttl(&mut conn);
    assert!(first > 0 && first <= 3000, "pttl {first}");
    wait_for("the TTL to be renewed", Duration::from_secs(5), || {
        (pttl(&mut conn) > first).then_some(())
    });
    wait_for("4 s to pass", Duration::from_secs(6), || {
        (started.elapsed() > Duration::from_secs(4)).then_some(())
    });
    assert_eq!(
        node_ids(&c.admin),
        all,
        "still listed after more than one TTL"
    );

    // SIGTERM: gone from the registry at once, exits 0 after its grace period (1 s).
    a.signal("TERM");
    wait_for("node-a to leave", Duration::from_secs(2), || {
        (node_ids(&c.admin) == ["node-b", "node-c"]).then_some(())
    });
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(0));

    // SIGKILL: no goodbye, so listed until the TTL runs out, then gone.
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    wait_for("node-b to expire", Duration::from_secs(6), || {
        (node_ids(&c.admin) == ["node-c"]).then_some(())
    });
    assert!(
        killed.elapsed() <= Duration::from_secs(4),
        "expired after {:?}",
        killed.elapsed()
    );
}

#[test]
fn sigint_also_unregisters() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let mut a = redis_node(&redis, &up, "quick", "default_limit = 10");
    let b = redis_node(&redis, &up, "watcher", "default_limit = 10");
    wait_for("both listed", Duration::from_secs(5), || {
        (node_ids(&b.admin).len() == 2).then_some(())
    });
    a.signal("INT");
    a.wait_exit(Duration::from_secs(5));
    assert_eq!(node_ids(&b.admin), ["watcher"]);
}

#[test]
fn counters_blocks_and_reset_across_nodes() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let limits = "default_limit = 3\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"";
    let nodes: Vec<Gateway> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| redis_node(&redis, &up, id, limits))
        .collect();
    // Traffic through different nodes on two keys.
    for (i, key) in ["alice", "alice", "alice", "alice", "bob"]
        .iter()
        .enumerate()
    {
        get(&nodes[i % 3].proxy, "/", &[("X-Api-Key", key)]).unwrap();
    }
    for n in &nodes {
        assert_eq!(
            body(&get(&n.admin, "/api/counters", &[]).unwrap()),
            json!({"counters": [
                {"key":"x-api-key:alice","count":3,"limit":3,"remaining":0,"rule":"default"},
                {"key":"x-api-key:bob","count":1,"limit":3,"remaining":2,"rule":"default"},
            ]})
        );
        assert_eq!(
            body(&get(&n.admin, "/api/blocks", &[]).unwrap()),
            json!({"blocked": [{"key":"x-api-key:alice","current_count":3,"limit":3,"rule":"default"}]})
        );
    }
    // Blocked everywhere; a reset through n2 frees it on n1 and n3.
    assert_eq!(
        get(&nodes[0].proxy, "/", &[("X-Api-Key", "alice")])
            .unwrap()
            .status,
        429
    );
    let r = post(
        &nodes[1].admin,
        "/api/counters/x-api-key:alice/reset",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(body(&r), json!({"key":"x-api-key:alice","reset":true}));
    // n1 remembered alice as full: it forgets her once the reset's message reaches it.
    let alice = [("X-Api-Key", "alice")];
    common::until_allowed(&nodes[2].proxy, "/", &alice, Duration::from_secs(1));
    common::until_allowed(&nodes[0].proxy, "/", &alice, Duration::from_secs(1));
}

/// `/api/counters` lists the fullest first (count over limit, then count), so `?limit=N` is
/// the N keys nearest their limits, in both stores.
#[test]
fn counters_are_listed_fullest_first() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let rules =
        "default_limit = 100\n[[rules]]\nname = \"api\"\nkey = \"header:X-Api-Key\"\nlimit = 4\n";
    let embedded = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!("[privacy]\nclear_keys = true\n[limits]\n{rules}"),
    );
    let shared = redis_node(&redis, &up, "x", rules);
    for gw in [&embedded, &shared] {
        // ip:127.0.0.1 counts every request (9 of 100); the api keys 3, 1 and 5 (4 kept) of 4.
        for (key, n) in [("three", 3), ("one", 1), ("full", 5)] {
            for _ in 0..n {
                get(&gw.proxy, "/", &[("X-Api-Key", key)]).unwrap();
            }
        }
        let listed = body(&get(&gw.admin, "/api/counters?limit=3", &[]).unwrap());
        let keys = counter_keys(&listed);
        assert_eq!(
            keys,
            [
                "api/x-api-key:full",
                "api/x-api-key:three",
                "api/x-api-key:one"
            ]
        );
    }
}

#[test]
fn counters_exclude_expired_entries() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = redis_node(&redis, &up, "x", "default_limit = 5");
    // Two entries 1.5 s apart in a 2 s window: after the first expires, count is 1.
    let check = |k: &str| {
        post(
            &gw.admin,
            "/check",
            &[],
            &format!(r#"{{"key":"{k}","window_ms":2000}}"#),
        )
        .unwrap()
    };
    // Taken before the call, so the entry (stamped by Redis during it) is no older.
    let first = Instant::now();
    check("k");
    wait_for("1.5 s", Duration::from_secs(3), || {
        (first.elapsed() > Duration::from_millis(1500)).then_some(())
    });
    check("k");
    wait_for("the first entry to expire", Duration::from_secs(3), || {
        let c = body(&get(&gw.admin, "/api/counters", &[]).unwrap());
        (c["counters"][0]["count"] == 1).then_some(())
    });
    assert!(
        first.elapsed() >= Duration::from_secs(2),
        "counted as expired too early"
    );
}

#[test]
fn keys_of_other_services_under_the_prefix_are_skipped_by_listings() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = redis_node(
        &redis,
        &up,
        "x",
        "default_limit = 1\nkey = \"header:X-Api-Key\"",
    );
    let mut conn = redis.conn();
    // Another service's keys under `ratelimit:`, of every other type.
    redis::cmd("SET")
        .arg("ratelimit:orders:seq")
        .arg(41)
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("HSET")
        .arg("ratelimit:orders:meta")
        .arg("owner")
        .arg("billing")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("RPUSH")
        .arg("ratelimit:orders:queue")
        .arg("job")
        .query::<()>(&mut conn)
        .unwrap();
    let k = [("X-Api-Key", "alice")];
    assert_eq!(get(&gw.proxy, "/", &k).unwrap().status, 200);
    assert_eq!(get(&gw.proxy, "/", &k).unwrap().status, 429);

    let counters = get(&gw.admin, "/api/counters", &[]).unwrap();
    assert_eq!(counters.status, 200, "{}", counters.body);
    let listed = body(&counters);
    let keys = counter_keys(&listed);
    assert_eq!(keys, ["x-api-key:alice"], "{}", counters.body);
    let blocks = get(&gw.admin, "/api/blocks", &[]).unwrap();
    assert_eq!(blocks.status, 200, "{}", blocks.body);
    assert!(blocks.body.contains("x-api-key:alice"), "{}", blocks.body);
    assert!(!blocks.body.contains("orders"), "{}", blocks.body);
    // And they are left as they were.
    let seq: i64 = redis::cmd("GET")
        .arg("ratelimit:orders:seq")
        .query(&mut conn)
        .unwrap();
    assert_eq!(seq, 41);
}

#[test]
fn health_reports_the_store() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let gw = redis_node(&redis, &up, "h", "default_limit = 5");
    assert_eq!(get(&gw.admin, "/health", &[]).unwrap().status, 200);
    redis.stop();
    let r = get(&gw.admin, "/health", &[]).unwrap();
    assert_eq!(
        (r.status, body(&r)),
        (503, json!({"status":"unhealthy","node_id":"h"}))
    );
    redis.restart();
    wait_for("healthy again", Duration::from_secs(10), || {
        (get(&gw.admin, "/health", &[]).ok()?.status == 200).then_some(())
    });
    // The registry heals too: the node re-registers on a fresh Redis.
    wait_for("re-registered", Duration::from_secs(5), || {
        (node_ids(&gw.admin) == ["h"]).then_some(())
    });
}

#[test]
fn health_live_and_ready_follow_the_store_under_each_on_error() {
    const TIMEOUT_MS: u64 = 500;
    for on_error in ["allow", "deny"] {
        let redis = RedisServer::start();
        let up = Upstream::start();
        let gw = Gateway::start(
            &format!("upstreams = [\"{}\"]", up.addr),
            &format!(
                "[node]\nid = \"lb\"\n[redis]\nurl = \"{}\"\ntimeout_ms = {TIMEOUT_MS}\non_error = \"{on_error}\"\n",
                redis.url()
            ),
        );
        let a = &gw.admin;
        let answer = |path: &str| {
            let r = get(a, path, &[]).unwrap();
            (r.status, body(&r))
        };
        let up_and_ready = || {
            assert_eq!(
                answer("/health"),
                (200, json!({"status":"healthy","node_id":"lb"}))
            );
            assert_eq!(
                answer("/health/live"),
                (200, json!({"status":"live","node_id":"lb"}))
            );
            assert_eq!(
                answer("/health/ready"),
                (
                    200,
                    json!({"status":"ready","node_id":"lb","draining":false,"store":"up"})
                ),
                "{on_error}"
            );
        };
        up_and_ready();

        redis.pause();
        wait_for(
            "/health to see the store gone",
            Duration::from_secs(10),
            || (get(a, "/health", &[]).ok()?.status == 503).then_some(()),
        );
        assert_eq!(
            answer("/health"),
            (503, json!({"status":"unhealthy","node_id":"lb"})),
            "{on_error}: /health keeps its meaning for the monitor"
        );
        // Liveness asks nothing of the store: it answers before a store call could time out.
        let started = Instant::now();
        assert_eq!(
            answer("/health/live"),
            (200, json!({"status":"live","node_id":"lb"}))
        );
        let took = started.elapsed();
        assert!(took < Duration::from_millis(TIMEOUT_MS), "{took:?}");
        let (status, ready) = answer("/health/ready");
        let proxied = get(&gw.proxy, "/", &[]).unwrap().status;
        match on_error {
            "allow" => {
                assert_eq!(status, 200, "{ready}");
                assert_eq!(proxied, 200, "it does serve, unlimited");
                assert_eq!(ready["status"], "ready");
            }
            _ => {
                assert_eq!(status, 503, "{ready}");
                assert_eq!(proxied, 503, "it does refuse");
                assert_eq!(ready["status"], "unready");
            }
        }
        assert_eq!(ready["store"], "down", "{ready}");
        assert_eq!(ready["on_error"], on_error, "{ready}");
        assert_eq!(ready["draining"], false, "{ready}");
        assert!(
            ready["detail"].as_str().unwrap().contains("unreachable"),
            "{ready}"
        );
        // HEAD and a wrong method, as on every other endpoint.
        let mut conn = Conn::open(a).unwrap();
        let head = conn.send("HEAD", "/health/live", &[], "").unwrap();
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        let post = conn.send("POST", "/health/ready", &[], "").unwrap();
        assert_eq!(
            (post.status, post.header("Allow")),
            (405, Some("GET, HEAD"))
        );

        redis.resume();
        wait_for(
            "/health/ready to see the store back",
            Duration::from_secs(10),
            || {
                (get(a, "/health/ready", &[]).ok()?.status == 200
                    && get(a, "/health", &[]).ok()?.status == 200)
                    .then_some(())
            },
        );
        up_and_ready();
    }
}

#[test]
fn reads_need_the_token_with_read_token_and_metrics_the_metrics_token() {
    let up = Upstream::start();
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    // The body goes into the harness's [admin] table first.
    let secured = "token = \"adm\"\nread = \"token\"\nmetrics_token = \"scrape\"\n";
    let gw = Gateway::start(&upstreams, secured);
    let a = &gw.admin;
    let admin = [("Authorization", "Bearer adm")];
    let scraper = [("Authorization", "Bearer scrape")];
    let reads: [(&str, &str, &str); 5] = [
        ("GET", "/api/nodes", ""),
        ("GET", "/api/counters", ""),
        ("GET", "/api/limits", ""),
        ("GET", "/api/blocks", ""),
        ("POST", "/api/explain", r#"{"ip":"10.0.0.1"}"#),
    ];
    let mut conn = Conn::open(a).unwrap();
    for (method, path, payload) in reads {
        for headers in [&[][..], &scraper[..], &[("Authorization", "Bearer ad")][..]] {
            let r = conn.send(method, path, headers, payload).unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {headers:?}");
            assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
            assert!(
                body(&r)["error"]
                    .as_str()
                    .unwrap()
                    .contains("Bearer <admin.token>"),
                "{}",
                r.body
            );
        }
        let r = conn.send(method, path, &admin, payload).unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    }
    assert_eq!(
        conn.send("HEAD", "/api/limits", &[], "").unwrap().status,
        401
    );
    // /metrics takes its own token only.
    for headers in [&[][..], &admin[..]] {
        let r = conn.get("/metrics", headers).unwrap();
        assert_eq!(r.status, 401, "{headers:?}");
        assert!(
            r.body.contains("Bearer <admin.metrics_token>"),
            "{}",
            r.body
        );
    }
    let r = conn.get("/metrics", &scraper).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("ratelimiter_node_up"), "{}", r.body);
    // Health and the API's description stay open.
    for path in ["/health", "/health/live", "/health/ready", "/openapi.json"] {
        assert_eq!(conn.get(path, &[]).unwrap().status, 200, "{path}");
    }

    // A reload opens the reads again; /metrics keeps its token while it is set.
    gw.reload_with(
        &upstreams,
        "token = \"adm\"\nread = \"open\"\nmetrics_token = \"scrape\"\n",
    );
    wait_for("reads open again", Duration::from_secs(10), || {
        (get(a, "/api/limits", &[]).ok()?.status == 200).then_some(())
    });
    for (method, path, payload) in reads {
        let r = Conn::open(a)
            .unwrap()
            .send(method, path, &[], payload)
            .unwrap();
        assert_eq!(r.status, 200, "{method} {path}");
    }
    assert_eq!(get(a, "/metrics", &[]).unwrap().status, 401);
    assert_eq!(get(a, "/metrics", &scraper).unwrap().status, 200);
}

#[test]
fn check_records_so_it_needs_the_token_too() {
    let secured = Gateway::start_with_admin_token("s3cret");
    let a = &secured.admin;
    let r = post(a, "/check", &[], r#"{"key":"k"}"#).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    let wrong = [("Authorization", "Bearer s3cre")];
    assert_eq!(
        post(a, "/check", &wrong, r#"{"key":"k"}"#).unwrap().status,
        401
    );
    let right = [("Authorization", "Bearer s3cret")];
    let r = post(a, "/check", &right, r#"{"key":"k"}"#).unwrap();
    assert_eq!(
        (r.status, body(&r)["current_count"].clone()),
        (200, json!(1))
    );
    // The scheme is case-insensitive, the token is not.
    let lower = [("Authorization", "bearer s3cret")];
    assert_eq!(
        post(a, "/check", &lower, r#"{"key":"k"}"#).unwrap().status,
        200
    );
    let wrong_case = [("Authorization", "Bearer S3CRET")];
    assert_eq!(
        post(a, "/check", &wrong_case, r#"{"key":"k"}"#)
            .unwrap()
            .status,
        401
    );
    // Explaining records nothing, so it stays open like the other reads.
    let r = post(a, "/api/explain", &[], r#"{"ip":"10.0.0.1"}"#).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn reset_needs_the_token_when_one_is_set() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        "[limits]\ndefault_limit = 5\n",
    );
    // No token configured: open.
    assert_eq!(
        post(&gw.admin, "/api/counters/k/reset", &[], "")
            .unwrap()
            .status,
        200
    );
    let secured = Gateway::start_with_admin_token("s3cret");
    let a = &secured.admin;
    let r = post(a, "/api/counters/k/reset", &[], "").unwrap();
    assert_eq!(r.status, 401);
    assert!(body(&r)["error"].as_str().unwrap().contains("Bearer"));
    let r = post(
        a,
        "/api/counters/k/reset",
        &[("Authorization", "Bearer wrong")],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = post(
        a,
        "/api/counters/k/reset",
        &[("Authorization", "Bearer s3cret")],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    // Reads stay open.
    assert_eq!(get(a, "/api/counters", &[]).unwrap().status, 200);
}

#[test]
fn listing_100k_counters_answers_while_the_proxy_serves() {
    const N: usize = 100_000;
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = redis_node(&redis, &up, "big", "default_limit = 5");
    // 100,000 live counters, written the way the check script writes them.
    let mut conn = redis.conn();
    let _: () = redis::cmd("EVAL")
        .arg(
            "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
             for i = 1, tonumber(ARGV[1]) do
               local k = 'ratelimit:x-api-key:bulk-' .. i
               redis.call('ZADD', k, now, 'm' .. i); redis.call('PEXPIRE', k, 60000)
             end",
        )
        .arg(0)
        .arg(N)
        .query(&mut conn)
        .unwrap();

    let admin = gw.admin.clone();
    let listing = std::thread::spawn(move || {
        let started = Instant::now();
        let r = get(&admin, "/api/counters", &[]).unwrap();
        (r, started.elapsed())
    });
    // Meanwhile the proxy path answers.
    let mut served = 0;
    while !listing.is_finished() {
        let status = get(&gw.proxy, "/", &[("X-Api-Key", "live")])
            .unwrap()
            .status;
        assert!(status == 200 || status == 429, "proxy answered {status}");
        served += 1;
    }
    let (r, took) = listing.join().unwrap();
    assert_eq!(r.status, 200);
    let counters = body(&r);
    let list = counters["counters"].as_array().unwrap();
    assert!(list.len() >= N, "{} counters", list.len());
    assert!(list.iter().all(|c| c["count"].as_u64() >= Some(1)));
    eprintln!("GET /api/counters with {N} counters: {took:?}; {served} proxied requests meanwhile");
}

#[test]
fn warns_when_the_admin_port_is_open_beyond_loopback_without_a_token() {
    let port = common::free_port();
    let open = Gateway::start_with_admin_listen(&format!("0.0.0.0:{port}"));
    let log = open.log();
    assert!(
        log.contains("listens beyond loopback without [admin] token"),
        "{log}"
    );
    let loopback = Gateway::start("", "");
    assert!(!loopback.log().contains("beyond loopback"));
}
