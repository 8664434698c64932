//! The status page at `GET /` on the admin port (contract §16), in a real browser: Debian's
//! headless Chromium, driven through chromedriver by `tests/status/drive.py` (selenium), opens
//! the page of one of two nodes sharing a Redis while clients hammer a rule. It must show the
//! nodes, the key being refused and the rule refusing it, without a console error or a request
//! to another host; a limit set and a key banned from the page (which asks for the token) must
//! hold on the other node. Screenshots are kept in `target/test-artifacts/`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::http::{get, Conn};
use common::procs::{Gateway, RedisServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/python");
const TOKEN: &str = "page-admin-secret";
/// A key value that would run script if the page put it into HTML.
const HOSTILE: &str = "<img/src=x/onerror=alert(1)>";

fn config(store: &str, node: &str, read: &str) -> String {
    format!(
        "token = \"{TOKEN}\"\nread = \"{read}\"\n{store}\n[node]\nid = \"{node}\"\n\
         [proxy.direct_response]\nbody = \"ok\"\n\
         [limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"api\"\npath_prefix = \"/v1/\"\nkey = \"header:X-Api-Key\"\nlimit = 3\nwindow_ms = 10000\n"
    )
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tests/status/drive.py` on `gw`'s page with `expect`; what it saw. Every wait it
/// made must have been met, and it must have run to its end.
fn drive(gw: &Gateway, out: &std::path::Path, expect: &Value) -> Value {
    let run = Command::new(PYTHON)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/status/drive.py"
        ))
        .arg(format!("http://{}", gw.admin))
        .arg(TOKEN)
        .arg(out)
        .arg(expect.to_string())
        .output()
        .expect("the test tools' python with selenium (scripts/deps.sh installs it)");
    assert!(
        run.status.success(),
        "drive.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&run.stdout)));
    assert!(
        seen["error"].is_null(),
        "the drive stopped: {}",
        seen["error"]
    );
    for (what, took) in seen["waits"].as_object().unwrap() {
        assert!(
            took.is_number(),
            "the page never showed: {what}; saw {seen}"
        );
    }
    seen
}

fn admin_call(gw: &Gateway, method: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let r = Conn::open(&gw.admin)
        .unwrap()
        .send(method, path, &[("Authorization", auth.as_str())], "")
        .unwrap();
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn the_status_page_shows_an_incident_live_and_changes_made_from_it_hold_on_every_node() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && std::path::Path::new("/usr/bin/chromedriver").exists(),
        "Debian's chromium and chromium-driver are needed (scripts/deps.sh installs them)"
    );
    let redis = RedisServer::start();
    let store = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let a = Gateway::start("", &config(&store, "edge-a", "open"));
    let b = Gateway::start("", &config(&store, "edge-b", "open"));

    // Clients hammer node A with two keys (one of them hostile) until the page has been read.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, proxy, other) = (stop.clone(), a.proxy.clone(), b.proxy.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for key in ["tenant-7", HOSTILE] {
                    let _ = get(&proxy, "/v1/chat", &[("X-Api-Key", key)]);
                }
                // Traffic no rule refuses, beside the incident.
                for _ in 0..3 {
                    let _ = get(&proxy, "/", &[]);
                }
                let _ = get(&other, "/v1/chat", &[("X-Api-Key", "quiet-1")]);
                sent += 6;
                // About 100 requests a second: a steady incident, not a load test.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            sent
        })
    };

    // How /metrics shows tenant-7's key: digested, as the page must map back to the clear value.
    let digest: String = Sha256::digest(b"tenant-7")
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let shown = format!("api/x-api-key:sha256:{digest}");
    let expect = json!({
        "nodes": ["edge-a", "edge-b"],
        "key": shown,
        "rule": "api",
        "override": {"rule": "api", "value": "premium-1", "limit": 50},
        "ban": {"rule": "api", "value": "tenant-7", "shown": shown},
        "hostile": HOSTILE,
        "reset": "api/x-api-key:quiet-1",
        "other": {"proxy": format!("http://{}", b.proxy), "admin": format!("http://{}", b.admin)},
    });
    let out = artifacts();
    let seen = drive(&a, &out, &expect);
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    println!(
        "{sent} requests sent; page loaded in {} s; waits: {}",
        seen["loaded_s"], seen["waits"]
    );
    println!("tiles: {}", seen["tiles"]);

    // No console message at all: no error, no CSP violation, no warning.
    assert_eq!(seen["console"], json!([]), "console: {}", seen["console"]);
    assert_eq!(seen["other_hosts"], json!([]), "requests to other hosts");
    let requests = seen["requests"].as_array().unwrap();
    assert!(
        requests
            .iter()
            .any(|u| u.as_str().unwrap().ends_with("/api/counters?limit=25")),
        "the page reads the API: {requests:?}"
    );
    assert_eq!(seen["alerts"], 0, "a key value ran as script");

    // What an operator needs in the incident.
    let sections = &seen["sections"];
    assert!(sections["nodes"].as_str().unwrap().contains("edge-b"));
    assert_eq!(seen["tiles"]["t-nodes"], "2");
    let refused: f64 = seen["tiles"]["t-refused"]
        .as_str()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap_or(0.0);
    assert!(
        refused > 1.0,
        "refusals per second shown: {}",
        seen["tiles"]
    );
    assert!(sections["blocks"].as_str().unwrap().contains(&shown));

    // The changes: the token asked once, the ban prefilled with the key's clear value.
    assert!(seen["token_why"].as_str().unwrap().contains("admin token"));
    assert_eq!(seen["token_asked_again"], false);
    assert_eq!(
        seen["ban_prefilled"],
        json!({"rule": "api", "value": "tenant-7"})
    );
    // Both held on node B while they were in force: the override listed, the key refused
    // there as banned (asked by drive.py, between the changes and their undoing).
    let on_b = &seen["on_other_node"];
    assert_eq!(on_b["banned"][0], 429, "{on_b}");
    assert!(on_b["banned"][1]
        .as_str()
        .unwrap()
        .contains("\"banned\":true"));
    assert_eq!(on_b["overrides"][0], 200);
    let listed: Value = serde_json::from_str(on_b["overrides"][1].as_str().unwrap()).unwrap();
    assert_eq!(
        listed["overrides"],
        json!([{"rule": "api", "value": "premium-1", "limit": 50}])
    );
    // Every change made from the page, in B's audit log, newest first, by the token's name;
    // the ban and the override are gone again.
    let (_, audit) = admin_call(&b, "GET", "/api/audit?limit=10");
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("override.delete", "admin"),
            ("ban.delete", "admin"),
            ("counter.reset", "admin"),
            ("ban.put", "admin"),
            ("override.put", "admin"),
        ]
    );
    assert_eq!(admin_call(&b, "GET", "/api/bans").1["bans"], json!([]));
    assert_eq!(
        admin_call(&b, "GET", "/api/overrides").1["overrides"],
        json!([])
    );

    // The token is in this tab's session storage, nowhere else.
    assert_eq!(
        seen["storage"],
        json!({"session": 1, "local": 0, "token": TOKEN})
    );
    // Paused from the menu: no read for 3 s; then reads resumed (the "resumed" wait).
    assert_eq!(seen["reads_while_paused"], 0);

    // A phone's width: nothing wider than the screen.
    let phone = &seen["phone"];
    assert!(
        phone["scroll"].as_u64().unwrap() <= phone["inner"].as_u64().unwrap(),
        "{phone}"
    );
    for shot in [
        "status-page.png",
        "status-page-after-changes.png",
        "status-page-dark.png",
        "status-page-phone.png",
    ] {
        let png = std::fs::read(out.join(shot)).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "{shot}: {} bytes",
            png.len()
        );
    }
}

/// A node that wants its token for every read and its own for `/metrics`: the page shows
/// that it needs the token and no rates, and sends nothing the node would refuse (a refused
/// fetch would be a console error).
#[test]
fn on_a_locked_node_the_page_asks_for_the_token_and_sends_nothing_refused() {
    // Still in [admin]: the config's lines up to [node] are that table's.
    let body = config("", "locked", "token").replacen(
        "[node]",
        "metrics_token = \"scraper-only\"\n[node]",
        1,
    );
    let a = Gateway::start("", &body);
    let seen = drive(&a, &artifacts(), &json!({"locked": true}));
    assert_eq!(seen["api_reads"], 0, "reads the node would refuse");
    assert_eq!(seen["console"], json!([]));
}

#[test]
fn the_page_is_served_without_a_token_and_allows_only_its_own_script_and_style() {
    let a = Gateway::start("", &config("", "solo", "token"));
    let r = get(&a.admin, "/", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    // The page says what the node asks a token for; reads of the API need one here.
    assert!(r
        .body
        .contains(r#"<meta name="ratelimiter-auth" content="changes reads">"#));
    assert!(!r.body.contains(TOKEN));
    assert_eq!(get(&a.admin, "/api/limits", &[]).unwrap().status, 401);
    let csp = r.header("Content-Security-Policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));

    let mut conn = Conn::open(&a.admin).unwrap();
    let head = conn.send("HEAD", "/", &[], "").unwrap();
    assert_eq!(head.status, 200);
    let post = conn.send("POST", "/", &[], "").unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
}

/// The page's reading of counter keys (its own SHA-256, the display form of `/metrics`, the
/// value an override or ban names) run in node, against the gateway's Rust code on the same
/// keys: hostile, composite, tagged, long and clear ones.
#[test]
fn the_pages_key_grammar_agrees_with_the_gateways() {
    use ratelimiter::key::counter::{display, override_key, split_rule, OverrideKey};
    let page = include_str!("../src/admin/status.html");
    let start = page.find("// key-grammar: begin").unwrap();
    let end = page.find("// key-grammar: end").unwrap();
    let long = format!("x-api-key:sha256:{}", "ab".repeat(32));
    let keys = [
        "ip:10.0.0.1",
        "login/ip:10.0.0.1",
        "x-api-key:premium-1",
        "api/x-api-key:tenant-7",
        "api/x-api-key:<img/src=x/onerror=alert(1)>",
        "query(api_key):k-1",
        "cookie(session):abc",
        "jwt(sub):alice",
        "jwt(https://example.com/org):acme",
        "header(ip):1.2.3.4",
        "api/[ip:10.0.0.1|x-api-key:a%7Cb%25c]",
        "[jwt(org):acme|x-api-key:p1]",
        "tier/[ip:2001:db8::/48|query(k):v]",
        &long,
        "global",
    ];
    let script = format!(
        "{}\nconst keys = JSON.parse(process.argv[1]);\n\
         console.log(JSON.stringify(keys.map((k) => [display(k), valueOf(k), digested(k), digested(display(k))])));\n",
        &page[start..end]
    );
    let out = Command::new("node")
        .arg("-e")
        .arg(&script)
        .arg(serde_json::to_string(&keys).unwrap())
        .output()
        .expect("node (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<(String, String, bool, bool)> = serde_json::from_slice(&out.stdout).unwrap();
    for (key, (shown, value, clear_digested, shown_digested)) in keys.iter().zip(got) {
        assert_eq!(shown, display(key), "display of {key}");
        let want = match override_key(split_rule(key).1) {
            Some(OverrideKey::Ip(v)) => v.to_string(),
            Some(OverrideKey::Value(v)) => v.into_owned(),
            None => split_rule(key).1.to_string(),
        };
        assert_eq!(value, want, "value of {key}");
        assert!(!clear_digested, "{key} is clear");
        assert_eq!(shown_digested, shown != *key, "{key} shown as {shown}");
    }
}
