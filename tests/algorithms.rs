//! Every algorithm on the wire (contract §7): limit fields, counters, blocks, `/check` with an
//! algorithm and the memory of full keys, in both stores; and their bounds across three nodes
//! under concurrency: GCRA allows exactly its burst, the sliding-window counter never more
//! than its documented bound.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{get, post, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use serde_json::{json, Value};

fn body(r: &common::http::Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body))
}

fn evalsha_calls(redis: &RedisServer) -> u64 {
    common::command_calls(&mut redis.conn(), &["evalsha"])
}

/// One rule on every path with this algorithm, replacing the default.
fn rule(algorithm: &str, limit: u32, window_ms: u64) -> String {
    format!(
        r#"
[privacy]
clear_keys = true
[limits]
default_limit = 1000000
key = "header:X-Api-Key"
[[rules]]
name = "api"
path_prefix = "/"
algorithm = "{algorithm}"
limit = {limit}
window_ms = {window_ms}
skip_default = true
"#
    )
}

/// The same walk for each algorithm and store: fields, 429, counters, blocks, /check.
fn walk(gw: &Gateway, algorithm: &str) {
    let mut c = Conn::open(&gw.proxy).unwrap();
    let k = [("X-Api-Key", "alice")];
    let remaining: Vec<String> = (0..3)
        .map(|_| {
            let r = c.get("/", &k).unwrap();
            assert_eq!(r.status, 200, "{algorithm}: {r:?}");
            assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
            r.header("X-RateLimit-Remaining").unwrap().to_string()
        })
        .collect();
    assert_eq!(remaining, ["2", "1", "0"], "{algorithm}");
    let r = c.get("/", &k).unwrap();
    assert_eq!(r.status, 429, "{algorithm}");
    assert_eq!(body(&r)["rule"], "api");
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    // GCRA frees one slot per 20 s (60 s / 3); both counters of the others a full window.
    assert!(
        (1..=60).contains(&retry),
        "{algorithm}: Retry-After {retry}"
    );

    let counters = body(&get(&gw.admin, "/api/counters", &[]).unwrap());
    assert_eq!(
        counters,
        json!({"counters":[{"key":"api/x-api-key:alice","count":3,"limit":3,"remaining":0,"rule":"api"}]}),
        "{algorithm}"
    );
    let blocks = body(&get(&gw.admin, "/api/blocks", &[]).unwrap());
    assert_eq!(
        blocks,
        json!({"blocked":[{"key":"api/x-api-key:alice","current_count":3,"limit":3,"rule":"api"}]}),
        "{algorithm}"
    );
    let limits = body(&get(&gw.admin, "/api/limits", &[]).unwrap());
    assert_eq!(limits["rules"][1]["algorithm"], algorithm);

    // /check with the algorithm.
    let check = format!(r#"{{"key":"svc","limit":2,"window_ms":60000,"algorithm":"{algorithm}"}}"#);
    let statuses: Vec<u16> = (0..3)
        .map(|_| post(&gw.admin, "/check", &[], &check).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 429], "{algorithm}");
    let r = post(&gw.admin, "/check", &[], &check).unwrap();
    assert_eq!(body(&r)["current_count"], 2, "{algorithm}");
}

#[test]
fn every_algorithm_works_end_to_end_with_the_embedded_store() {
    for algorithm in ["sliding_log", "gcra", "sliding_window"] {
        let gw = Gateway::start(
            "[proxy.direct_response]\nbody = \"ok\"",
            &rule(algorithm, 3, 60_000),
        );
        walk(&gw, algorithm);
    }
}

#[test]
fn every_algorithm_works_end_to_end_with_redis_and_full_keys_cost_no_call() {
    for algorithm in ["sliding_log", "gcra", "sliding_window"] {
        let redis = RedisServer::start();
        let gw = Gateway::start(
            "[proxy.direct_response]\nbody = \"ok\"",
            &format!(
                "[redis]\nurl = \"{}\"\ntimeout_ms = 1000\n{}",
                redis.url(),
                rule(algorithm, 3, 60_000)
            ),
        );
        // Wait until the node hears resets (only then does it remember full keys).
        common::wait_for("the reset subscription", Duration::from_secs(10), || {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("ratelimiter:resets")
                .query(&mut redis.conn())
                .unwrap();
            (n == 1).then_some(())
        });
        walk(&gw, algorithm);
        let before = evalsha_calls(&redis);
        for _ in 0..20 {
            let r = get(&gw.proxy, "/", &[("X-Api-Key", "alice")]).unwrap();
            assert_eq!(r.status, 429);
        }
        assert_eq!(
            evalsha_calls(&redis),
            before,
            "{algorithm}: blocked from memory"
        );
        // The state is one small key for the counters, whatever the limit.
        let kind: String = redis::cmd("TYPE")
            .arg("ratelimit:api/x-api-key:alice")
            .query(&mut redis.conn())
            .unwrap();
        let expected = match algorithm {
            "sliding_log" => "zset",
            "gcra" => "string",
            _ => "hash",
        };
        assert_eq!(kind, expected);
    }
}

/// 300 requests on one key, from 30 clients over three nodes at once; returns how many went
/// through.
fn burst(nodes: &[Gateway], key: &str) -> usize {
    let allowed = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(30));
    let threads: Vec<_> = (0..30)
        .map(|i| {
            let addr = nodes[i % nodes.len()].proxy.clone();
            let (allowed, barrier, key) = (allowed.clone(), barrier.clone(), key.to_string());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                barrier.wait();
                for _ in 0..10 {
                    let r = conn.get("/", &[("X-Api-Key", &key)]).unwrap();
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
    allowed.load(Ordering::SeqCst)
}

fn three_nodes(redis: &RedisServer, up: &Upstream, config: &str) -> Vec<Gateway> {
    let body = format!(
        "[redis]\nurl = \"{}\"\ntimeout_ms = 2000\n{config}",
        redis.url()
    );
    (0..3)
        .map(|_| Gateway::start(&format!("upstreams = [\"{}\"]", up.addr), &body))
        .collect()
}

/// A counter whose window changes (a reload, or /check with another window) starts afresh
/// in both stores, instead of judging old window indexes by the new length.
#[test]
fn a_sliding_window_whose_window_changes_starts_afresh() {
    let redis = RedisServer::start();
    let embedded = Gateway::start("[proxy.direct_response]\nbody = \"ok\"", "");
    let shared = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!("[redis]\nurl = \"{}\"\ntimeout_ms = 1000\n", redis.url()),
    );
    for gw in [&embedded, &shared] {
        let check = |window_ms: u64| {
            let body = format!(
                r#"{{"key":"w","limit":2,"window_ms":{window_ms},"algorithm":"sliding_window"}}"#
            );
            post(&gw.admin, "/check", &[], &body).unwrap().status
        };
        // Ten-second windows, so the three calls fall in one of them.
        assert_eq!(
            [check(10_000), check(10_000), check(10_000)],
            [200, 200, 429]
        );
        let hour = 3_600_000;
        assert_eq!([check(hour), check(hour), check(hour)], [200, 200, 429]);
    }
}

#[test]
fn gcra_allows_exactly_its_burst_across_three_nodes() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    // 50 an hour: one more every 72 s, far longer than the test; so exactly the burst.
    let nodes = three_nodes(&redis, &up, &rule("gcra", 50, 3_600_000));
    assert_eq!(burst(&nodes, "shared"), 50);
    assert_eq!(up.served(), 50);
}

#[test]
fn sliding_window_stays_within_its_bounds_across_three_nodes() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    // Within one fixed window with nothing before it, the counter is exact: the limit.
    let nodes = three_nodes(&redis, &up, &rule("sliding_window", 50, 3_600_000));
    let hour = 3_600_000;
    if hour - common::epoch_ms() % hour < 30_000 {
        // Too near the next hour for the burst to fit in this one: wait for it.
        std::thread::sleep(Duration::from_millis(
            hour - common::epoch_ms() % hour + 100,
        ));
    }
    assert_eq!(burst(&nodes, "one-window"), 50);
    drop(nodes);

    // Across a window boundary: a full window, then as much as the weighted estimate allows
    // at once, both bursts within one window's span; never more than twice the limit.
    const LIMIT: usize = 30;
    let window = 4_000;
    let nodes = three_nodes(&redis, &up, &rule("sliding_window", LIMIT as u32, window));
    // Start 2.5 s into a fixed window (1.5 s for the first burst to finish in it).
    let into = common::epoch_ms() % window;
    std::thread::sleep(Duration::from_millis((window + 2_500 - into) % window));
    let first = burst(&nodes, "edge");
    let boundary = window - common::epoch_ms() % window;
    assert!(boundary < 1_500, "the first burst ran into the next window");
    // Into the next window, 100 ms past the boundary.
    std::thread::sleep(Duration::from_millis(boundary + 100));
    let second = burst(&nodes, "edge");
    let elapsed = common::epoch_ms() % window;
    assert_eq!(
        first, LIMIT,
        "the first fixed window takes exactly the limit"
    );
    // The previous window's 30 still weigh 30 × (window − elapsed) / window: by the end of
    // the second burst at most 30 × elapsed / window (+1 for the floor) can have gone through.
    let bound = (LIMIT as u64 * elapsed).div_ceil(window) as usize + 1;
    assert!(
        second <= bound,
        "{second} through, {elapsed} ms into the window"
    );
    let (c, p): (u64, u64) = redis::cmd("HMGET")
        .arg("ratelimit:api/x-api-key:edge")
        .arg("c")
        .arg("p")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!((p, c), (LIMIT as u64, second as u64));
}

/// A counter whose algorithm changes (a rule's, on reload) holds another type in Redis: the
/// new algorithm starts it afresh rather than failing. (The last one has another limit: this
/// node still remembers the key full under the first.)
#[test]
fn a_counter_whose_algorithm_changes_starts_afresh() {
    let redis = RedisServer::start();
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!("[redis]\nurl = \"{}\"\ntimeout_ms = 1000\n", redis.url()),
    );
    let check = |algorithm: &str, limit: u32| {
        let body =
            format!(r#"{{"key":"a","limit":{limit},"window_ms":60000,"algorithm":"{algorithm}"}}"#);
        post(&gw.admin, "/check", &[], &body).unwrap().status
    };
    for (algorithm, limit) in [
        ("sliding_log", 2),
        ("sliding_window", 2),
        ("gcra", 2),
        ("sliding_log", 3),
    ] {
        let statuses: Vec<u16> = (0..=limit).map(|_| check(algorithm, limit)).collect();
        let mut expected = vec![200; limit as usize];
        expected.push(429);
        assert_eq!(statuses, expected, "{algorithm}: {}", gw.log());
    }
}
