//! Tenants at runtime (contract §15), on the wire: overrides set through the admin API of
//! one node, in force on another within a second (measured) and after both restart, never
//! resetting a counter; the embedded store's overrides; what the API refuses; and the audit
//! log of every change and reload, with the name of the token that made it.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, post, Conn, Response};
use common::procs::{Gateway, RedisServer};
use serde_json::Value;

const OPS: &str = "ops-secret-1";
const ADMIN: &str = "admin-secret-1";

fn body(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// `[admin]` tokens (the harness writes `[admin] listen` just before), a store, and one
/// rule: 3 requests a minute per API key.
fn config(store: &str) -> String {
    format!(
        "token = \"{ADMIN}\"\ntokens = {{ ops = \"{OPS}\" }}\n{store}\n[proxy.direct_response]\nbody = \"ok\"\n\
         [limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"api\"\nkey = \"header:X-Api-Key\"\nlimit = 3\nwindow_ms = 60000\n"
    )
}

fn call(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    Conn::open(&gw.admin)
        .unwrap()
        .send(method, path, &headers, body)
        .unwrap()
}

fn request(gw: &Gateway, key: &str) -> Response {
    get(&gw.proxy, "/", &[("X-Api-Key", key)]).unwrap()
}

/// Restarts a gateway on its own config file and ports.
fn restart(gw: Gateway) -> Gateway {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let (proxy, admin) = (gw.proxy.clone(), gw.admin.clone());
    drop(gw);
    Gateway::start_text(&proxy, &admin, &text)
}

#[test]
fn an_override_made_on_one_node_holds_on_another_within_a_second_and_after_restarts() {
    let redis = RedisServer::start();
    let store = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let a = Gateway::start("", &config(&store));
    let b = Gateway::start("", &config(&store));
    // Three of the key's requests on B: it is full.
    for _ in 0..3 {
        assert_eq!(request(&b, "cust-1").status, 200);
    }
    assert_eq!(request(&b, "cust-1").status, 429);

    // Raised through A, with the ops token.
    let set = Instant::now();
    let r = call(
        &a,
        "PUT",
        "/api/overrides/api/cust-1",
        Some(OPS),
        r#"{"limit": 10}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["limit"], 10);
    assert!(body(&r)["before"].is_null());
    // In force on B within a second, the counter kept: 3 used of 10.
    let took = loop {
        let r = request(&b, "cust-1");
        if r.status == 200 {
            assert_eq!(r.header("X-RateLimit-Limit"), Some("10"));
            assert_eq!(r.header("X-RateLimit-Remaining"), Some("6"), "counter kept");
            break set.elapsed();
        }
        assert!(set.elapsed() < Duration::from_secs(2), "not in force on B");
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("an override made through node A was in force on node B {took:?} later");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // In clear to a caller with a token (the key values are private).
    let listed = body(&call(&b, "GET", "/api/overrides", Some(OPS), ""));
    assert_eq!(
        listed["overrides"],
        serde_json::json!([{"rule": "api", "value": "cust-1", "limit": 10}])
    );

    // After both restart: still in force, the counter still kept.
    let (a, b) = (restart(a), restart(b));
    for gw in [&a, &b] {
        let r = request(gw, "cust-1");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-RateLimit-Limit"), Some("10"));
    }
    assert_eq!(
        request(&a, "cust-1").header("X-RateLimit-Remaining"),
        Some("3")
    );

    // Removed through B: the file's limit again, within a second on A.
    let r = call(&b, "DELETE", "/api/overrides/api/cust-1", Some(ADMIN), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let removed = Instant::now();
    while request(&a, "cust-1").status != 429 {
        assert!(
            removed.elapsed() < Duration::from_secs(1),
            "still raised on A"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The audit log, shared: the override set by ops and removed by admin, a reset, a reload.
    let r = post(
        &a.admin,
        "/api/counters/api%2Fx-api-key:cust-1/reset",
        &[("Authorization", &format!("Bearer {OPS}"))],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    b.signal("HUP");
    common::wait_for(
        "the reload in the audit log",
        Duration::from_secs(5),
        || {
            let log = body(&call(&a, "GET", "/api/audit?limit=10", Some(OPS), ""));
            let actions: Vec<String> = log["entries"]
                .as_array()?
                .iter()
                .map(|e| e["action"].as_str().unwrap_or("").to_string())
                .collect();
            (actions.first().map(String::as_str) == Some("config.reload")).then_some(())
        },
    );
    let log = body(&call(&a, "GET", "/api/audit?limit=4", Some(OPS), ""));
    let entries = log["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen[..3],
        [
            ("config.reload", "signal", b.config_path.to_str().unwrap()),
            ("counter.reset", "ops", "api/x-api-key:cust-1"),
            ("override.delete", "admin", "api/cust-1"),
        ]
    );
    assert_eq!(seen[3], ("override.put", "ops", "api/cust-1"));
    assert_eq!(entries[3]["after"], serde_json::json!({"limit": 10}));
    assert_eq!(entries[2]["before"], serde_json::json!({"limit": 10}));
    for e in entries {
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert!(e["node"].is_string());
    }
    // Counted by the node that made the change (A, since its restart: the reset).
    assert_eq!(
        common::metric(
            &a,
            "ratelimiter_admin_changes_total{action=\"counter.reset\"}"
        ),
        1.0
    );
}

#[test]
fn the_embedded_store_keeps_overrides_in_memory_and_the_api_refuses_what_is_wrong() {
    let gw = Gateway::start(
        "",
        &format!(
            "{}[[rules]]\nname = \"open\"\nunlimited = true\npath = \"/health\"\n\
             [[rules]]\nname = \"everyone\"\npath_prefix = \"/everyone\"\nkey = \"global\"\nlimit = 5\n\
             [[rules]]\nname = \"gpu\"\npath_prefix = \"/gpu\"\nkey = \"header:X-Api-Key\"\nconcurrency = 1\n",
            config("")
        ),
    );
    assert_eq!(request(&gw, "k").header("X-RateLimit-Limit"), Some("3"));
    let r = call(
        &gw,
        "PUT",
        "/api/overrides/api/k",
        Some(ADMIN),
        r#"{"limit": 7}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(request(&gw, "k").header("X-RateLimit-Limit"), Some("7"));
    // A concurrency rule takes a concurrency.
    let r = call(
        &gw,
        "PUT",
        "/api/overrides/gpu/k",
        Some(ADMIN),
        r#"{"concurrency": 4}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = body(&call(&gw, "GET", "/api/overrides", Some(ADMIN), ""));
    assert_eq!(
        listed["overrides"],
        serde_json::json!([
            {"rule": "api", "value": "k", "limit": 7},
            {"rule": "gpu", "value": "k", "concurrency": 4},
        ])
    );
    // (method, path, with the token, body, status)
    let refused: &[(&str, &str, bool, &str, u16)] = &[
        ("PUT", "/api/overrides/api/k", false, r#"{"limit": 7}"#, 401),
        ("PUT", "/api/overrides/nope/k", true, r#"{"limit": 7}"#, 404),
        ("PUT", "/api/overrides/open/k", true, r#"{"limit": 7}"#, 404),
        (
            "PUT",
            "/api/overrides/everyone/k",
            true,
            r#"{"limit": 7}"#,
            404,
        ),
        (
            "PUT",
            "/api/overrides/default/x",
            true,
            r#"{"limit": 7}"#,
            404,
        ),
        (
            "PUT",
            "/api/overrides/api/%20",
            true,
            r#"{"limit": 7}"#,
            404,
        ),
        ("PUT", "/api/overrides/api/k", true, r#"{"limit": 0}"#, 422),
        (
            "PUT",
            "/api/overrides/api/k",
            true,
            r#"{"limit": "7"}"#,
            422,
        ),
        (
            "PUT",
            "/api/overrides/api/k",
            true,
            r#"{"limit": 7.5}"#,
            422,
        ),
        (
            "PUT",
            "/api/overrides/api/k",
            true,
            r#"{"concurrency": 7}"#,
            409,
        ),
        ("PUT", "/api/overrides/gpu/k", true, r#"{"limit": 7}"#, 409),
        (
            "PUT",
            "/api/overrides/api/k",
            true,
            r#"{"limit": 7, "x": 1}"#,
            422,
        ),
        ("PUT", "/api/overrides/api/k", true, "not json", 422),
        ("PUT", "/api/overrides/api", true, r#"{"limit": 7}"#, 422),
        ("DELETE", "/api/overrides/api/unknown", true, "", 404),
        ("POST", "/api/overrides/api/k", true, "", 405),
        ("GET", "/api/audit?limit=0", false, "", 422),
        ("GET", "/api/audit?limit=x", false, "", 422),
        ("GET", "/api/audit?other=1", false, "", 422),
    ];
    for &(method, path, token, b, status) in refused {
        let r = call(&gw, method, path, token.then_some(ADMIN), b);
        assert_eq!(r.status, status, "{method} {path} {b}: {}", r.body);
        assert!(body(&r)["error"].is_string(), "{}", r.body);
    }
    // Nothing refused changed anything.
    assert_eq!(request(&gw, "k").header("X-RateLimit-Limit"), Some("7"));
    let log = body(&call(&gw, "GET", "/api/audit", None, ""));
    assert_eq!(log["entries"].as_array().unwrap().len(), 2, "{log}");
}

/// A rule that bans a key refused 3 times within 5 s, for 2 s.
const LOGIN: &str = "[[rules]]\nname = \"login\"\npath_prefix = \"/login\"\nkey = \"header:X-Api-Key\"\nlimit = 2\nwindow_ms = 1000\nban = { after = 3, within_ms = 5000, for_ms = 2000 }\n";

fn login(gw: &Gateway, key: &str) -> Response {
    get(&gw.proxy, "/login", &[("X-Api-Key", key)]).unwrap()
}

#[test]
fn a_ban_after_repeated_refusals_holds_on_every_node_from_memory_and_ends_on_time() {
    let redis = RedisServer::start();
    let upstream = common::upstream::Upstream::start();
    let store = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let text =
        format!("{store}\n[privacy]\nclear_keys = true\n[limits]\ndefault_limit = 100000\n{LOGIN}");
    let proxy = format!("upstreams = [\"{}\"]", upstream.addr);
    let a = Gateway::start(&proxy, &text);
    let b = Gateway::start(&proxy, &text);
    // Two allowed, then three refusals on A: the third bans the key.
    let statuses: Vec<u16> = (0..5).map(|_| login(&a, "mallory").status).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let banned_at = Instant::now();
    // Banned on B too, within a second, without B having refused anything.
    let took = loop {
        let r = login(&b, "mallory");
        if body(&r)["banned"] == true {
            break banned_at.elapsed();
        }
        assert!(
            banned_at.elapsed() < Duration::from_secs(1),
            "not banned on B"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("a ban made on node A held on node B {took:?} later");
    let r = login(&b, "mallory");
    assert_eq!(r.status, 429);
    assert!(r
        .header("Retry-After")
        .is_some_and(|s| s == "1" || s == "2"));
    assert_eq!(body(&r)["rule"], "login");
    // Answered from memory: no upstream, no script call, on either node.
    let mut conn = redis.conn();
    let (served, calls) = (
        upstream.served(),
        common::command_calls(&mut conn, &["evalsha"]),
    );
    for gw in [&a, &b] {
        for _ in 0..20 {
            assert_eq!(login(gw, "mallory").status, 429);
        }
    }
    assert_eq!(upstream.served(), served, "the upstream saw none");
    assert_eq!(
        common::command_calls(&mut conn, &["evalsha"]),
        calls,
        "no check reached Redis"
    );
    // Another key is not banned.
    assert_eq!(login(&b, "alice").status, 200);
    let bans = body(&get(&b.admin, "/api/bans", &[]).unwrap());
    assert_eq!(bans["bans"][0]["rule"], "login");
    assert_eq!(bans["bans"][0]["value"], "mallory");
    assert_eq!(bans["bans"][0]["reason"], "auto");
    assert_eq!(
        common::metric(&a, "ratelimiter_bans_total{rule=\"login\",reason=\"auto\"}"),
        1.0
    );
    // It ends on time (2 s), on both nodes.
    let ended = loop {
        if login(&b, "mallory").status == 200 {
            break banned_at.elapsed();
        }
        assert!(banned_at.elapsed() < Duration::from_secs(4), "still banned");
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("the 2 s ban ended {ended:?} after it began");
    assert!(
        ended >= Duration::from_millis(1900) && ended < Duration::from_millis(2500),
        "{ended:?}"
    );
    assert_eq!(login(&a, "mallory").status, 200);
}

#[test]
fn a_manual_ban_and_its_removal() {
    let gw = Gateway::start("", &format!("{}{LOGIN}", config("")));
    assert_eq!(login(&gw, "bob").status, 200);
    let r = call(
        &gw,
        "PUT",
        "/api/bans/login/bob",
        Some(OPS),
        r#"{"for_ms": 60000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["reason"], "manual");
    let r = login(&gw, "bob");
    assert_eq!((r.status, r.header("Retry-After")), (429, Some("60")));
    assert_eq!(body(&r)["banned"], true);
    let bans = body(&call(&gw, "GET", "/api/bans", None, ""));
    assert_eq!(bans["bans"].as_array().unwrap().len(), 1);
    for (method, path, b, status) in [
        ("PUT", "/api/bans/login/bob", r#"{"for_ms": 0}"#, 422),
        ("PUT", "/api/bans/login/bob", r#"{"until": 5}"#, 422),
        ("PUT", "/api/bans/nope/bob", r#"{"for_ms": 5}"#, 404),
        ("DELETE", "/api/bans/login/carol", "", 404),
    ] {
        let r = call(&gw, method, path, Some(OPS), b);
        assert_eq!(r.status, status, "{method} {path} {b}: {}", r.body);
    }
    let r = call(&gw, "DELETE", "/api/bans/login/bob", Some(ADMIN), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(login(&gw, "bob").status, 200);
    let log = body(&call(&gw, "GET", "/api/audit", None, ""));
    let seen: Vec<(&str, &str)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("ban.delete", "admin"), ("ban.put", "ops")]);
}

#[test]
fn private_key_values_are_digested_without_a_token() {
    let gw = Gateway::start("", &config(""));
    let r = call(
        &gw,
        "PUT",
        "/api/overrides/api/secret-key-1",
        Some(OPS),
        r#"{"limit": 9}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for path in ["/api/overrides", "/api/audit"] {
        let open = call(&gw, "GET", path, None, "").body;
        assert!(!open.contains("secret-key-1"), "{path}: {open}");
        assert!(open.contains("sha256:"), "{path}: {open}");
        let with_token = call(&gw, "GET", path, Some(OPS), "").body;
        assert!(with_token.contains("secret-key-1"), "{path}: {with_token}");
    }
}
