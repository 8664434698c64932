//! Reload on SIGHUP (contract §8), on the real binary: new rules, limits, headers and token
//! take effect at once; a bad file keeps the running config and is counted; keys that need a
//! restart are named and kept; and no request fails while reloads happen under load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{get, post, Conn};
use common::procs::{Gateway, RedisServer};
use common::wait_for;
use serde_json::Value;

const DIRECT: &str = "[proxy.direct_response]\nbody = \"ok\"";

fn limits(gw: &Gateway) -> Value {
    serde_json::from_str(&get(&gw.admin, "/api/limits", &[]).unwrap().body).unwrap()
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    let metrics = get(&gw.admin, "/metrics", &[]).unwrap().body;
    let prefix = format!("ratelimiter_config_reloads_total{{result=\"{result}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
}

fn wait_reloads(gw: &Gateway, result: &str, n: u64) {
    wait_for(
        &format!("{n} reload(s) counted as {result}"),
        Duration::from_secs(10),
        || (reloads(gw, result) >= n).then_some(()),
    );
}

#[test]
fn a_valid_file_takes_effect_at_once() {
    let gw = Gateway::start(DIRECT, "[limits]\ndefault_limit = 2\n");
    let before = limits(&gw)["config_loaded_at"].clone();
    assert_eq!(get(&gw.proxy, "/login", &[]).unwrap().status, 200);

    gw.reload_with(
        DIRECT,
        r#"
token = "s3cret"
[limits]
default_limit = 50
[headers]
style = "ietf"
[[rules]]
name = "login"
path = "/login"
limit = 1
"#,
    );
    wait_reloads(&gw, "success", 1);
    let now = limits(&gw);
    assert_eq!(now["default_limit"], 50);
    assert_eq!(now["rules"][1]["name"], "login");
    assert_ne!(now["config_loaded_at"], Value::Null);
    assert!(now["config_loaded_at"].as_str() >= before.as_str());
    // The new rule, limit and header style apply to the next request.
    let r = get(&gw.proxy, "/login", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("RateLimit-Policy"),
        Some(r#""default";q=50;w=60, "login";q=1;w=60"#)
    );
    assert_eq!(r.header("X-RateLimit-Limit"), None);
    assert_eq!(get(&gw.proxy, "/login", &[]).unwrap().status, 429);
    // And the new admin token.
    assert_eq!(
        post(&gw.admin, "/check", &[], r#"{"key":"a"}"#)
            .unwrap()
            .status,
        401
    );
    let auth = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        post(&gw.admin, "/check", &auth, r#"{"key":"a"}"#)
            .unwrap()
            .status,
        200
    );
    assert!(gw.log().contains("config reloaded from"), "{}", gw.log());
}

#[test]
fn a_bad_file_keeps_the_running_config() {
    let gw = Gateway::start(DIRECT, "[limits]\ndefault_limit = 3\n");
    gw.reload_with(
        DIRECT,
        "[limits]\ndefault_limit = 0\n[[rules]]\nname = \"Bad Name\"\nlimit = 1\n",
    );
    wait_reloads(&gw, "failure", 1);
    assert_eq!(reloads(&gw, "success"), 0);
    assert_eq!(limits(&gw)["default_limit"], 3);
    let mut c = Conn::open(&gw.proxy).unwrap();
    let statuses: Vec<u16> = (0..4).map(|_| c.get("/", &[]).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    // Every error, located, in the log.
    let log = gw.log();
    let path = gw.config_path.display().to_string();
    assert!(log.contains("config reload from"), "{log}");
    assert!(
        log.contains(&format!(
            "{path}:14:17: [limits] default_limit: expected an integer 1..=4294967295, found integer 0"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{path}:16:8: [[rules]] #1 name:")),
        "{log}"
    );
    // A later good file is taken.
    gw.reload_with(DIRECT, "[limits]\ndefault_limit = 4\n");
    wait_reloads(&gw, "success", 1);
    assert_eq!(limits(&gw)["default_limit"], 4);
}

#[test]
fn the_log_level_follows_the_file_and_its_reloads_unless_rust_log_is_set() {
    // The harness sets RUST_LOG; an empty one counts as unset.
    let unset = [("RUST_LOG", "")];
    let gw = Gateway::start_with_env(DIRECT, "[log]\nlevel = \"warn\"\n", &unset);
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);
    let log = gw.log();
    assert!(!log.contains("proxying on"), "no info line at warn: {log}");
    gw.reload_with(DIRECT, "[log]\nlevel = \"info\"\n");
    wait_reloads(&gw, "success", 1);
    let log = gw.log();
    assert!(
        !log.contains("SIGHUP: reloading"),
        "still warn when the signal came: {log}"
    );
    assert!(
        log.contains("config reloaded from"),
        "info once the reload is in force: {log}"
    );

    // debug: the gateway's own debug lines, never the libraries' (they print request headers)
    // while [privacy] clear_keys is off.
    let gw = Gateway::start_with_env(DIRECT, "[log]\nlevel = \"debug\"\n", &unset);
    for _ in 0..3 {
        assert_eq!(
            get(&gw.proxy, "/", &[("X-Api-Key", "k")]).unwrap().status,
            200
        );
    }
    let log = gw.log();
    assert!(log.contains(" DEBUG ratelimiter"), "{log}");
    assert!(!log.contains(" DEBUG pingora"), "{log}");

    // RUST_LOG, when set, wins over the file.
    let gw = Gateway::start_with_env(
        DIRECT,
        "[log]\nlevel = \"error\"\n",
        &[("RUST_LOG", "info")],
    );
    let log = gw.log();
    assert!(log.contains("proxying on"), "RUST_LOG=info: {log}");
}

#[test]
fn keys_that_need_a_restart_are_named_and_kept() {
    let redis = RedisServer::start();
    let gw = Gateway::start(
        DIRECT,
        &format!(
            "[node]\nid = \"n1\"\n[redis]\nurl = \"{}\"\n[limits]\ndefault_limit = 5\n",
            redis.url()
        ),
    );
    let text = std::fs::read_to_string(&gw.config_path)
        .unwrap()
        .replace(&gw.proxy, "127.0.0.1:1")
        .replace("id = \"n1\"", "id = \"n2\"")
        .replace("default_limit = 5", "default_limit = 6");
    gw.reload_with_text(&text);
    wait_reloads(&gw, "success", 1);
    let log = gw.log();
    for key in ["proxy.listen", "node.id"] {
        assert!(
            log.contains(&format!(
                "`{key}` changed, but takes effect only after a restart"
            )),
            "{key}: {log}"
        );
    }
    // The running values stay: same port, same node in the registry; the new limit applies.
    let r = get(&gw.proxy, "/", &[]).unwrap();
    assert_eq!(r.header("X-RateLimit-Limit"), Some("6"));
    let nodes = get(&gw.admin, "/api/nodes", &[]).unwrap().body;
    assert!(nodes.contains("\"id\":\"n1\""), "{nodes}");
    assert!(!nodes.contains("n2"), "{nodes}");
}

#[test]
fn the_registry_entry_follows_a_reload() {
    let redis = RedisServer::start();
    let node = |address: &str, ttl: u32, heartbeat: u32| {
        format!(
            "[node]\nid = \"n1\"\naddress = \"{address}\"\nttl_seconds = {ttl}\nheartbeat_seconds = {heartbeat}\n[redis]\nurl = \"{}\"\n",
            redis.url()
        )
    };
    let gw = Gateway::start(DIRECT, &node("10.0.0.1:8080", 30, 2));
    let entry = |field: &str| -> Option<String> {
        redis::cmd("HGET")
            .arg("ratelimiter:nodes:n1")
            .arg(field)
            .query(&mut redis.conn())
            .unwrap()
    };
    wait_for("the node registered", Duration::from_secs(10), || {
        entry("address").filter(|a| a == "10.0.0.1:8080")
    });
    gw.reload_with(DIRECT, &node("10.0.0.2:9000", 4, 1));
    wait_reloads(&gw, "success", 1);
    // The next heartbeat (at most 2 s away, then every second) publishes the new values.
    wait_for("the new address", Duration::from_secs(15), || {
        entry("address").filter(|a| a == "10.0.0.2:9000")
    });
    let ttl: i64 = redis::cmd("TTL")
        .arg("ratelimiter:nodes:n1")
        .query(&mut redis.conn())
        .unwrap();
    assert!((1..=4).contains(&ttl), "TTL {ttl}");
    assert!(!gw.log().contains("takes effect only after a restart"));
}

#[test]
fn reloads_under_load_fail_no_request() {
    let gw = Gateway::start(DIRECT, "[limits]\ndefault_limit = 1000000\n");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (addr, stop, ok, failed) =
                (gw.proxy.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                let path = if i % 2 == 0 { "/a" } else { "/b" };
                while !stop.load(Ordering::SeqCst) {
                    match conn.get(path, &[]) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        Ok(r) => panic!("status {} during reloads: {r:?}", r.status),
                        Err(e) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            panic!("request failed during reloads: {e}")
                        }
                    };
                }
            })
        })
        .collect();
    wait_for("traffic", Duration::from_secs(5), || {
        (ok.load(Ordering::SeqCst) > 100).then_some(())
    });
    const RELOADS: u64 = 12;
    for n in 1..=RELOADS {
        // Alternate between two rule sets; neither ever blocks this traffic.
        let rule = if n % 2 == 0 { "/a" } else { "/b" };
        gw.reload_with(
            DIRECT,
            &format!(
                "[limits]\ndefault_limit = 1000000\n[[rules]]\nname = \"r{n}\"\npath = \"{rule}\"\nlimit = 1000000\n"
            ),
        );
        wait_reloads(&gw, "success", n);
    }
    let served_during = ok.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("no client saw a failure");
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(served_during > 100, "only {served_during} requests served");
    assert_eq!(
        limits(&gw)["rules"][1]["name"],
        format!("r{RELOADS}"),
        "the last reload is in force"
    );
}
