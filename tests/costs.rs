//! Costs on the wire (contract §13), with the embedded store and with Redis: requests that
//! weigh more than one unit, reserved at admission and settled from the response of a real
//! OpenAI-compatible upstream (a JSON body, an event stream, a header); a charge past the
//! limit; a malformed usage; the failed-login guard (`count_status`); two rules refused
//! together; a `400` for every bad cost header; `/check` with a cost.

mod common;

use std::time::Duration;

use common::http::{post, Conn, Response};
use common::llm::Llm;
use common::procs::{Gateway, RedisServer};
use common::{metric, wait_for};
use serde_json::{json, Value};

fn body(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// Waits until the counter holds `want` (settling runs after the response).
fn settles_to(gw: &Gateway, counter_key: &str, want: u64) {
    let mut seen = 0;
    let settled = (0..250).any(|_| {
        seen = gw.count(counter_key);
        seen == want || {
            std::thread::sleep(Duration::from_millis(20));
            false
        }
    });
    assert!(settled, "{counter_key} holds {seen}, not {want}");
}

/// The two stores: the embedded one, and a real Redis (kept running for the test).
fn stores() -> Vec<(&'static str, String, Option<RedisServer>)> {
    let redis = RedisServer::start();
    let section = format!("[redis]\nurl = \"{}\"\n", redis.url());
    vec![
        ("memory", String::new(), None),
        ("redis", section, Some(redis)),
    ]
}

fn chat(gw: &Gateway, key: &str, words: &str, max_tokens: u64, stream: bool) -> Response {
    chat_with(gw, key, words, max_tokens, stream, &[])
}

fn chat_with(
    gw: &Gateway,
    key: &str,
    words: &str,
    max_tokens: u64,
    stream: bool,
    extra: &[(&str, &str)],
) -> Response {
    let request = json!({
        "model": "test-model",
        "messages": [{"role": "user", "content": words}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    let mut headers = vec![("X-Api-Key", key), ("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    post(
        &gw.proxy,
        "/v1/chat/completions",
        &headers,
        &request.to_string(),
    )
    .unwrap()
}

/// The usage a completion reports: from its JSON body, or from the last event carrying it.
fn used(r: &Response) -> u64 {
    if r.header("content-type") == Some("text/event-stream") {
        return r
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["usage"]["total_tokens"].as_u64())
            .next_back()
            .expect("an event with the usage");
    }
    body(r)["usage"]["total_tokens"].as_u64().unwrap()
}

/// A gateway in front of `llm` on `store` (`""`: the embedded one), with a default limit
/// that is never reached and these `[[rules]]`.
fn gateway(llm: &Llm, store: &str, rules: &str) -> Gateway {
    Gateway::start(
        &format!("upstreams = [\"{}\"]", llm.addr),
        &format!("{store}\n[limits]\ndefault_limit = 100000\n\n{rules}"),
    )
}

fn tokens_rule(llm: &Llm, store: &str, limit: u64, window_ms: u64, settle: &str) -> Gateway {
    gateway(
        llm,
        store,
        &format!(
            r#"
[[rules]]
name = "tokens"
path_prefix = "/v1/chat/completions"
key = "header:X-Api-Key"
limit = {limit}
window_ms = {window_ms}
cost = 50
max_cost = 5000
settle = "{settle}"
"#
        ),
    )
}

#[test]
fn after_each_request_the_counter_holds_the_tokens_actually_used() {
    let llm = Llm::start();
    for (name, store, _redis) in stores() {
        for settle in ["json:usage.total_tokens", "header:X-Usage"] {
            let gw = tokens_rule(&llm, &store, 100_000, 60_000, settle);
            // A key of its own per run: Redis outlives the gateway.
            let team = format!("team-a-{}", &settle[..4]);
            let key = &format!("tokens/x-api-key:{team}");
            let mut total = 0;
            for (words, max_tokens, stream) in [
                ("hello there", 10, false),
                ("one two three four five", 200, false),
                ("stream me a poem", 37, true),
                ("a", 1, false),
                ("and a long one streamed", 400, true),
            ] {
                let r = chat(&gw, &team, words, max_tokens, stream);
                assert_eq!(r.status, 200, "{name} {settle}: {r:?}");
                let n = used(&r);
                assert_eq!(n, words.split_whitespace().count() as u64 + max_tokens);
                total += n;
                settles_to(&gw, key, total);
            }
            // Reserved 50 each; what came back and what was charged make up the difference.
            let reserved = metric(
                &gw,
                r#"ratelimiter_units_total{rule="tokens",kind="reserved"}"#,
            );
            let back = metric(
                &gw,
                r#"ratelimiter_units_total{rule="tokens",kind="given_back"}"#,
            );
            let charged = metric(
                &gw,
                r#"ratelimiter_units_total{rule="tokens",kind="charged"}"#,
            );
            assert_eq!(reserved, 250.0, "{name} {settle}");
            // A rule without a cost reserves one unit per request.
            let plain = metric(
                &gw,
                r#"ratelimiter_units_total{rule="default",kind="reserved"}"#,
            );
            assert_eq!(plain, 5.0, "{name} {settle}");
            assert_eq!(reserved - back + charged, total as f64, "{name} {settle}");
            // The limit fields count units.
            let r = chat(&gw, &team, "x", 5, false);
            total += used(&r);
            let remaining: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
            assert_eq!(
                remaining,
                100_000 - (total - used(&r)) - 50,
                "{name} {settle}"
            );
            settles_to(&gw, key, total);
        }
    }
}

#[test]
fn a_charge_past_the_limit_refuses_later_requests_until_the_window_frees_it() {
    let llm = Llm::start();
    for (name, store, _redis) in stores() {
        let gw = tokens_rule(&llm, &store, 1000, 3000, "json:usage.total_tokens");
        let key = "tokens/x-api-key:team-b";
        // 50 reserved, 1 + 899 used.
        assert_eq!(chat(&gw, "team-b", "go", 899, false).status, 200);
        settles_to(&gw, key, 900);
        // 100 left: the next reservation of 50 fits; the answer uses 401 tokens.
        let r = chat(&gw, "team-b", "go", 400, false);
        assert_eq!(r.status, 200, "{name}");
        settles_to(&gw, key, 1301);
        // Past the limit now: refused before the upstream, told to wait.
        let served = llm.served("/v1/chat/completions");
        let refused = chat(&gw, "team-b", "go", 1, false);
        assert_eq!(refused.status, 429, "{name}: {refused:?}");
        assert!(refused.header("retry-after").is_some());
        assert_eq!(llm.served("/v1/chat/completions"), served);
        // Other keys are not held back.
        assert_eq!(chat(&gw, "team-c", "go", 1, false).status, 200);
        // Once the window has passed, the key has room again.
        let freed = wait_for(
            &format!("{name}: room again"),
            Duration::from_secs(6),
            || {
                let r = chat(&gw, "team-b", "go", 1, false);
                (r.status == 200).then_some(r)
            },
        );
        assert_eq!(used(&freed), 2);
    }
}

#[test]
fn a_malformed_or_missing_usage_keeps_the_reservation_and_is_counted() {
    let llm = Llm::start();
    for (name, store, _redis) in stores() {
        let gw = tokens_rule(&llm, &store, 100_000, 60_000, "json:usage.total_tokens");
        let key = "tokens/x-api-key:team-d";
        let r = chat_with(
            &gw,
            "team-d",
            "hi",
            10,
            false,
            &[("X-Test-Usage", "malformed")],
        );
        assert_eq!(r.status, 200);
        wait_for(
            &format!("{name}: the failure counted"),
            Duration::from_secs(5),
            || {
                let n = metric(
                    &gw,
                    r#"ratelimiter_settle_failures_total{rule="tokens",reason="malformed"}"#,
                );
                (n == 1.0).then_some(())
            },
        );
        assert_eq!(gw.count(key), 50, "{name}: the reservation stays");
        // A stream whose events never carry the usage field stays as reserved too.
        let r = chat_with(
            &gw,
            "team-d",
            "hi",
            3,
            true,
            &[("X-Test-Usage", "malformed")],
        );
        assert_eq!(r.status, 200);
        wait_for(
            &format!("{name}: counted again"),
            Duration::from_secs(5),
            || {
                let n = metric(
                    &gw,
                    r#"ratelimiter_settle_failures_total{rule="tokens",reason="malformed"}"#,
                );
                (n == 2.0).then_some(())
            },
        );
        assert_eq!(gw.count(key), 100, "{name}");
    }
}

#[test]
fn failed_logins_count_and_successful_ones_do_not() {
    let llm = Llm::start();
    for (name, store, _redis) in stores() {
        let gw = gateway(
            &llm,
            &store,
            r#"
[[rules]]
name = "login"
methods = ["POST"]
path = "/login"
limit = 3
window_ms = 60000
count_status = ["401", "403"]
"#,
        );
        let login = |password: &str| {
            let mut conn = Conn::open(&gw.proxy).unwrap();
            conn.send(
                "POST",
                "/login",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                &format!("user=ann&password={password}"),
            )
            .unwrap()
            .status
        };
        let before = llm.served("/login");
        // Each success gives its unit back once its response is sent.
        for _ in 0..10 {
            assert_eq!(login("right"), 200, "{name}");
            settles_to(&gw, "login/ip:127.0.0.1", 0);
        }
        for n in 1..=3 {
            assert_eq!(login("wrong"), 401, "{name}: failure {n}");
            settles_to(&gw, "login/ip:127.0.0.1", n);
        }
        // The fourth failure is refused before the upstream sees it; so is a right password
        // now, until the window frees a failure.
        assert_eq!(login("wrong"), 429, "{name}");
        assert_eq!(login("right"), 429, "{name}");
        assert_eq!(llm.served("/login") - before, 13, "{name}");
    }
}

#[test]
fn two_rules_with_costs_record_in_neither_when_one_lacks_room() {
    let llm = Llm::start();
    for (name, store, _redis) in stores() {
        let gw = gateway(
            &llm,
            &store,
            r#"
[[rules]]
name = "small"
path_prefix = "/v1/"
key = "header:X-Api-Key"
limit = 10
cost = "header:X-Cost"

[[rules]]
name = "large"
path_prefix = "/v1/"
key = "header:X-Api-Key"
limit = 100
cost = "header:X-Cost"
"#,
        );
        let send = |cost: &str| chat_with(&gw, "k", "hi", 1, false, &[("X-Cost", cost)]).status;
        assert_eq!(send("8"), 200, "{name}");
        assert_eq!(send("5"), 429, "{name}: small has 2 left");
        assert_eq!(gw.count("small/x-api-key:k"), 8, "{name}");
        assert_eq!(
            gw.count("large/x-api-key:k"),
            8,
            "{name}: large was not charged"
        );
        assert_eq!(send("2"), 200, "{name}: exactly what is left fits");
        assert_eq!(gw.count("large/x-api-key:k"), 10, "{name}");
    }
}

#[test]
fn every_bad_cost_header_gets_a_400_naming_the_rule() {
    let llm = Llm::start();
    for (name, store, _redis) in stores() {
        let gw = gateway(
            &llm,
            &store,
            r#"
[[rules]]
name = "weighed"
path_prefix = "/v1/"
key = "header:X-Api-Key"
limit = 1000
cost = "header:X-Cost"
max_cost = 100
"#,
        );
        let served = llm.served("/v1/chat/completions");
        let cases: &[&[&str]] = &[
            &[],
            &["0"],
            &["-1"],
            &["abc"],
            &["1.5"],
            &["101"],
            &["99999999999999999999999"],
            &[""],
            &["1", "2"],
        ];
        for values in cases {
            let mut conn = Conn::open(&gw.proxy).unwrap();
            let mut headers = vec![("X-Api-Key", "k"), ("Content-Type", "application/json")];
            for v in values.iter() {
                headers.push(("X-Cost", v));
            }
            let r = conn
                .send("POST", "/v1/chat/completions", &headers, "{}")
                .unwrap();
            assert_eq!(r.status, 400, "{name} {values:?}: {r:?}");
            let why = body(&r)["error"].as_str().unwrap().to_string();
            assert!(why.contains("weighed") && why.contains("x-cost"), "{why}");
        }
        assert_eq!(llm.served("/v1/chat/completions"), served, "{name}");
        assert_eq!(gw.count("weighed/x-api-key:k"), 0, "{name}");
        // A good one goes through and reserves what it says.
        let r = chat_with(&gw, "k", "hi", 1, false, &[("X-Cost", "100")]);
        assert_eq!(r.status, 200);
        assert_eq!(gw.count("weighed/x-api-key:k"), 100);
        // /api/explain says the same as the proxy.
        let explained = post(
            &gw.admin,
            "/api/explain",
            &[("Content-Type", "application/json")],
            r#"{"ip":"127.0.0.1","method":"POST","path":"/v1/x","headers":{"X-Api-Key":"k","X-Cost":"0"}}"#,
        )
        .unwrap();
        let e = body(&explained);
        assert_eq!(
            (e["decision"].as_str(), e["status"].as_u64()),
            (Some("refused"), Some(400))
        );
    }
}

#[test]
fn check_takes_a_cost_in_units() {
    for (name, store, _redis) in stores() {
        let gw = Gateway::start("[proxy.direct_response]\nbody = \"ok\"", &store);
        let check = |cost: u64| {
            let r = post(
                &gw.admin,
                "/check",
                &[("Content-Type", "application/json")],
                &json!({"key": "user:1", "limit": 10, "window_ms": 60000, "cost": cost})
                    .to_string(),
            )
            .unwrap();
            (r.status, body(&r)["remaining"].as_u64().unwrap())
        };
        assert_eq!(check(7), (200, 3), "{name}");
        assert_eq!(check(4), (429, 3), "{name}: 4 do not fit in 3");
        assert_eq!(check(3), (200, 0), "{name}");
        let r = post(
            &gw.admin,
            "/check",
            &[("Content-Type", "application/json")],
            r#"{"key":"user:2","cost":0}"#,
        )
        .unwrap();
        assert_eq!(r.status, 422, "{name}");
    }
}

/// Three nodes on one Redis, leasing (slots are units), hammered by 30 clients sending
/// costs of 1 to 7 units: the units let through never pass the limit.
#[test]
fn three_nodes_with_leases_and_costs_never_exceed_the_limit_in_units() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const LIMIT: u64 = 300;
    let redis = RedisServer::start();
    for algorithm in ["sliding_log", "gcra", "sliding_window"] {
        let body = format!(
            r#"
[redis]
url = "{}"
timeout_ms = 2000
[limits]
default_limit = 100000
[[rules]]
name = "api"
path_prefix = "/"
key = "header:X-Api-Key"
limit = {LIMIT}
window_ms = 60000
algorithm = "{algorithm}"
skip_default = true
sync = "lease"
lease_size = 20
cost = "header:X-Cost"
max_cost = 7
"#,
            redis.url()
        );
        let nodes: Vec<Gateway> = (0..3)
            .map(|_| Gateway::start("[proxy.direct_response]\nbody = \"ok\"", &body))
            .collect();
        let (units, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..30)
            .map(|i| {
                let addr = nodes[i % 3].proxy.clone();
                let (units, refused) = (units.clone(), refused.clone());
                std::thread::spawn(move || {
                    let mut conn = Conn::open(&addr).unwrap();
                    for n in 0..40 {
                        let cost = (i + n) % 7 + 1;
                        let r = conn
                            .get(
                                "/",
                                &[("X-Api-Key", "shared"), ("X-Cost", &cost.to_string())],
                            )
                            .unwrap();
                        match r.status {
                            200 => units.fetch_add(cost as u64, Ordering::SeqCst),
                            429 => refused.fetch_add(1, Ordering::SeqCst),
                            other => panic!("unexpected {other}: {r:?}"),
                        };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (units, refused) = (units.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
        eprintln!("{algorithm}: {units} units let through, {refused} requests refused");
        assert!(units <= LIMIT, "{algorithm}: {units} units, limit {LIMIT}");
        // 1,200 requests of 4 units on average: the limit is reached, less what leases
        // held unused when the load ended (20 slots per node at most).
        assert!(units + 3 * 20 >= LIMIT, "{algorithm}: only {units} units");
        assert!(refused > 0);
        redis::cmd("FLUSHALL")
            .query::<()>(&mut redis.conn())
            .unwrap();
    }
}
