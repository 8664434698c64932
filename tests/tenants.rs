//! Tenants at runtime (contract §15), on the wire: overrides set through the admin API of
//! one node, in force on another within a second (measured) and after both restart, never
//! resetting a counter; the embedded store's overrides; what the API refuses; and the audit
//! log of every change and reload, with the name of the token that made it.
//! Also: a runtime override beating the file's `overrides`, the replies of removals, a
//! composite value percent-encoded, a concurrency override enforced, a ban's `until`, the
//! audit log's actor without a token, its default length and its cap in Redis; a banned key
//! in explain and the access log; what a removed rule left, removable.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, post, Conn, Response};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::wait_for;
use serde_json::{json, Value};

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

/// A rule that bans a key refused `after` times within 5 s, for `for_ms`.
fn login_rule(after: u32, for_ms: u64) -> String {
    format!(
        "[[rules]]\nname = \"login\"\npath_prefix = \"/login\"\nkey = \"header:X-Api-Key\"\n\
         limit = 2\nwindow_ms = 1000\nban = {{ after = {after}, within_ms = 5000, for_ms = {for_ms} }}\n"
    )
}

fn login(gw: &Gateway, key: &str) -> Response {
    get(&gw.proxy, "/login", &[("X-Api-Key", key)]).unwrap()
}

/// Whether a reply is the 429 of a ban (any other reply, JSON or not, is not).
fn is_ban(r: &Response) -> bool {
    r.status == 429 && serde_json::from_str::<Value>(&r.body).is_ok_and(|v| v["banned"] == true)
}

#[test]
fn a_ban_after_repeated_refusals_holds_on_every_node_from_memory_and_ends_on_time() {
    // Long enough for the checks below to run inside it on a loaded machine.
    const BAN_MS: u64 = 5000;
    let redis = RedisServer::start();
    let upstream = common::upstream::Upstream::start();
    let store = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let text = |after: u32| {
        format!(
            "{store}\n[privacy]\nclear_keys = true\n[limits]\ndefault_limit = 100000\n{}",
            login_rule(after, BAN_MS)
        )
    };
    let proxy = format!("upstreams = [\"{}\"]", upstream.addr);
    let a = Gateway::start(&proxy, &text(3));
    // B refuses the key too (A used up its shared counter) but counts its own refusals
    // towards a ban it never reaches: any ban on B comes from the store.
    let b = Gateway::start(&proxy, &text(1000));
    // Two allowed, then three refusals on A: the third bans the key, made between `sent`
    // (before the request left) and `answered`.
    let statuses: Vec<u16> = (0..4).map(|_| login(&a, "mallory").status).collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    let sent = Instant::now();
    let r = login(&a, "mallory");
    let answered = Instant::now();
    assert_eq!(r.status, 429, "{}", r.body);
    // Banned on B too, within a second of it.
    let took = loop {
        if is_ban(&login(&b, "mallory")) {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(1), "not banned on B");
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("a ban made on node A held on node B {took:?} later");
    assert_eq!(
        common::metric(&b, "ratelimiter_bans_total{rule=\"login\",reason=\"auto\"}"),
        0.0,
        "B made no ban of its own"
    );
    let r = login(&b, "mallory");
    let since = sent.elapsed().as_millis() as u64;
    assert_eq!(r.status, 429);
    // What is left of the ban, in whole seconds rounded up: at most all of it, at least
    // what remains of it counted from before it was made (less a few ms of clock
    // granularity).
    let retry: u64 = r
        .header("Retry-After")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {:?}", r.header("Retry-After")));
    let least = BAN_MS.saturating_sub(since + 5).div_ceil(1000).max(1);
    assert!(
        (least..=BAN_MS / 1000).contains(&retry),
        "Retry-After {retry}, {since} ms into a {BAN_MS} ms ban"
    );
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
    // It ends on time, on both nodes: not before BAN_MS after `sent` (less a few ms of
    // clock granularity), and soon after BAN_MS after `answered`.
    let ended = loop {
        if login(&b, "mallory").status == 200 {
            break Instant::now();
        }
        assert!(
            answered.elapsed() < Duration::from_millis(BAN_MS + 3000),
            "still banned"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (from_sent, from_answered) = (ended - sent, ended - answered);
    println!(
        "the {BAN_MS} ms ban ended {from_sent:?} after the request that made it was sent \
         ({from_answered:?} after it was answered)"
    );
    assert!(
        from_sent >= Duration::from_millis(BAN_MS - 5),
        "ended early: {from_sent:?}"
    );
    assert!(
        from_answered < Duration::from_millis(BAN_MS + 1500),
        "ended late: {from_answered:?}"
    );
    assert_eq!(login(&a, "mallory").status, 200);
}

#[test]
fn a_manual_ban_and_its_removal() {
    let gw = Gateway::start("", &format!("{}{}", config(""), login_rule(3, 2000)));
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

/// An admin call without a token (the admin port has none).
fn open_call(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    Conn::open(&gw.admin)
        .unwrap()
        .send(method, path, &[], body)
        .unwrap()
}

fn limit_of(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    get(&gw.proxy, path, headers)
        .unwrap()
        .header("X-RateLimit-Limit")
        .map(str::to_string)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a time in ms since the epoch (UTC, proleptic Gregorian).
fn iso_ms(ms: u64) -> String {
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

#[test]
fn a_runtime_override_wins_over_the_files_and_composite_values_are_percent_encoded() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"api\"\npath = \"/api\"\nkey = \"header:X-Api-Key\"\nlimit = 2\nwindow_ms = 60000\noverrides = { \"k\" = 5 }\n\
         [[rules]]\nname = \"team\"\npath = \"/team\"\nkey = [\"header:X-Org\", \"header:X-User\"]\nlimit = 2\nwindow_ms = 60000\n",
    );
    let k = [("X-Api-Key", "k")];
    assert_eq!(
        limit_of(&gw, "/api", &k).as_deref(),
        Some("5"),
        "the file's"
    );
    let r = open_call(&gw, "PUT", "/api/overrides/api/k", r#"{"limit": 9}"#);
    assert_eq!(
        body(&r),
        json!({"rule": "api", "value": "k", "limit": 9, "before": null})
    );
    assert_eq!(limit_of(&gw, "/api", &k).as_deref(), Some("9"), "the API's");
    let r = open_call(&gw, "DELETE", "/api/overrides/api/k", "");
    assert_eq!(
        body(&r),
        json!({"rule": "api", "value": "k", "deleted": true, "before": 9})
    );
    assert_eq!(
        limit_of(&gw, "/api", &k).as_deref(),
        Some("5"),
        "the file's again"
    );
    assert_eq!(
        open_call(&gw, "DELETE", "/api/overrides/api/k", "").status,
        404,
        "none left"
    );

    // A composite key's value: its parts joined by `|`, here percent-encoded (with a `/`).
    let user = [("X-Org", "acme"), ("X-User", "u/1")];
    assert_eq!(limit_of(&gw, "/team", &user).as_deref(), Some("2"));
    let r = open_call(
        &gw,
        "PUT",
        "/api/overrides/team/acme%7Cu%2F1",
        r#"{"limit": 7}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["value"], "acme|u/1");
    assert_eq!(limit_of(&gw, "/team", &user).as_deref(), Some("7"));
    let other = [("X-Org", "acme"), ("X-User", "u2")];
    assert_eq!(limit_of(&gw, "/team", &other).as_deref(), Some("2"));
    // The raw value reaches the same override.
    let r = open_call(&gw, "DELETE", "/api/overrides/team/acme|u%2F1", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(limit_of(&gw, "/team", &user).as_deref(), Some("2"));
}

#[test]
fn a_concurrency_override_is_enforced() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        "[limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"gpu\"\npath_prefix = \"/sleep/\"\nkey = \"header:X-Api-Key\"\nconcurrency = 1\n",
    );
    let r = open_call(&gw, "PUT", "/api/overrides/gpu/k", r#"{"concurrency": 2}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let proxy = gw.proxy.clone();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                get(&proxy, "/sleep/2000", &[("X-Api-Key", "k")])
                    .unwrap()
                    .status
            })
        })
        .collect();
    wait_for("two requests held", Duration::from_secs(10), || {
        (up.sleeping() == 2).then_some(())
    });
    // A third of the key's is over its concurrency of 2; another key's (1) gets in.
    assert_eq!(
        get(&proxy, "/sleep/0", &[("X-Api-Key", "k")])
            .unwrap()
            .status,
        429
    );
    assert_eq!(
        get(&proxy, "/sleep/0", &[("X-Api-Key", "other")])
            .unwrap()
            .status,
        200
    );
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn bans_and_the_audit_log_in_redis() {
    let redis = RedisServer::start();
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!(
            "[privacy]\nclear_keys = true\n[redis]\nurl = \"{}\"\n[limits]\ndefault_limit = 100000\n\
             [[rules]]\nname = \"login\"\npath = \"/login\"\nkey = \"header:X-Api-Key\"\nlimit = 5\n",
            redis.url()
        ),
    );
    // A ban's `until`: ISO 8601 UTC with milliseconds, `for_ms` from when it was made, as the
    // store keeps it.
    let before = common::epoch_ms();
    let r = open_call(&gw, "PUT", "/api/bans/login/bob", r#"{"for_ms": 60000}"#);
    let after = common::epoch_ms();
    assert_eq!(r.status, 200, "{}", r.body);
    let ban = body(&r);
    let until = ban["until"].as_str().unwrap().to_string();
    let stored: String = redis::cmd("HGET")
        .arg("ratelimiter:bans")
        .arg("login/value/bob")
        .query(&mut redis.conn())
        .unwrap();
    let (ms, reason) = stored.split_once(' ').unwrap();
    let ms: u64 = ms.parse().unwrap();
    assert_eq!(reason, "manual");
    assert!(
        (before + 60_000..=after + 60_000).contains(&ms),
        "{before} {ms} {after}"
    );
    assert_eq!(until, iso_ms(ms));
    assert_eq!(
        body(&open_call(&gw, "GET", "/api/bans", ""))["bans"],
        json!([{"rule": "login", "value": "bob", "until": until, "reason": "manual"}])
    );
    let r = open_call(&gw, "DELETE", "/api/bans/login/bob", "");
    assert_eq!(
        body(&r),
        json!({"rule": "login", "value": "bob", "deleted": true})
    );

    // Without an admin token the actor is `anonymous`.
    let log = body(&open_call(&gw, "GET", "/api/audit", ""));
    let actions: Vec<(&str, &str)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("ban.delete", "anonymous"), ("ban.put", "anonymous")]
    );

    // The shared list holds 10,000 entries at most: fill it to the cap, and a change pushes
    // the oldest out.
    let mut c = redis.conn();
    let filler = r#"{"time":"2026-01-01T00:00:00Z","node":"old","actor":"old","action":"override.put","target":"login/old","before":null,"after":{"limit":1}}"#;
    let mut pipe = redis::pipe();
    for _ in 0..10_000 - 2 {
        pipe.cmd("RPUSH")
            .arg("ratelimiter:audit")
            .arg(filler)
            .ignore();
    }
    pipe.query::<()>(&mut c).unwrap();
    let len = |c: &mut redis::Connection| -> u64 {
        redis::cmd("LLEN")
            .arg("ratelimiter:audit")
            .query(c)
            .unwrap()
    };
    assert_eq!(len(&mut c), 10_000);
    let r = open_call(&gw, "PUT", "/api/overrides/login/carol", r#"{"limit": 9}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(len(&mut c), 10_000);
    // Newest first; 100 by default, up to 10,000 asked for.
    let entries = |query: &str| -> Vec<Value> {
        let r = open_call(&gw, "GET", &format!("/api/audit{query}"), "");
        assert_eq!(r.status, 200, "{}", r.body);
        body(&r)["entries"].as_array().unwrap().clone()
    };
    let first = entries("");
    assert_eq!(first.len(), 100);
    assert_eq!(first[0]["action"], "override.put");
    assert_eq!(first[0]["target"], "login/carol");
    assert_eq!(first[1]["action"], "ban.delete");
    let all = entries("?limit=10000");
    assert_eq!(all.len(), 10_000);
    assert_eq!(all[9_999]["node"], "old");
    assert_eq!(
        all.iter().filter(|e| e["node"] == "old").count(),
        10_000 - 3,
        "the oldest filler gone"
    );
    for bad in ["?limit=0", "?limit=10001"] {
        assert_eq!(
            open_call(&gw, "GET", &format!("/api/audit{bad}"), "").status,
            422
        );
    }
}

#[test]
fn a_banned_key_is_explained_and_logged_and_what_a_removed_rule_left_can_be_removed() {
    let dir = std::env::temp_dir().join(format!("tenants-more-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let head = format!(
        "[log]\naccess = \"{}\"\n[limits]\ndefault_limit = 1000\n",
        log.display()
    );
    let api =
        "[[rules]]\nname = \"api\"\nkey = \"header:X-Api-Key\"\nlimit = 100\nwindow_ms = 60000\n";
    let gw = Gateway::start("", &format!("{head}{api}"));

    // A banned key: the proxy answers 429, and explain and the access log say why.
    let r = open_call(&gw, "PUT", "/api/bans/api/cust-1", r#"{"for_ms": 60000}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let k = [("X-Api-Key", "cust-1")];
    assert_eq!(get(&gw.proxy, "/items", &k).unwrap().status, 429);
    let explained = body(&open_call(
        &gw,
        "POST",
        "/api/explain",
        r#"{"ip":"127.0.0.1","path":"/items","headers":{"X-Api-Key":"cust-1"}}"#,
    ));
    assert_eq!(explained["decision"], "banned", "{explained}");
    assert_eq!(explained["rule"], "api", "{explained}");
    let retry = explained["retry_after_seconds"].as_u64().unwrap();
    assert!((59..=60).contains(&retry), "{explained}");
    let line = wait_for("the access log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| l.contains("/items"))
            .map(str::to_string)
    });
    assert!(line.contains(" 429 rule=api decision=banned "), "{line}");

    // The rule goes in a reload; its override and ban stay listed, and can be removed.
    let r = open_call(&gw, "PUT", "/api/overrides/api/cust-2", r#"{"limit": 7}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    gw.reload_with("", &head);
    wait_for("the rule gone", Duration::from_secs(10), || {
        let limits = body(&get(&gw.admin, "/api/limits", &[]).unwrap());
        let rules = limits["rules"].as_array()?.clone();
        rules.iter().all(|r| r["name"] != "api").then_some(())
    });
    let listed = body(&open_call(&gw, "GET", "/api/overrides", ""));
    assert_eq!(listed["overrides"][0]["value"], "cust-2", "{listed}");
    let r = open_call(&gw, "DELETE", "/api/overrides/api/cust-2", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["deleted"], true);
    let r = open_call(&gw, "DELETE", "/api/bans/api/cust-1", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        body(&open_call(&gw, "GET", "/api/overrides", "")),
        json!({"overrides": []})
    );
    assert_eq!(
        body(&open_call(&gw, "GET", "/api/bans", "")),
        json!({"bans": []})
    );
    // Gone now: a second removal finds nothing, and says the rule is gone.
    let r = open_call(&gw, "DELETE", "/api/overrides/api/cust-2", "");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        body(&r)["error"]
            .as_str()
            .unwrap()
            .contains("no rule named"),
        "{}",
        r.body
    );
    let _ = std::fs::remove_dir_all(&dir);
}
