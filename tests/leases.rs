//! Leases (contract §11) on a real Redis. The script (lua/lease.lua), for every algorithm:
//! leases taken by several nodes never hold more than the limit between them; what is given
//! back can be taken again; a key whose slots are all leased refuses the check script too;
//! each algorithm's lease ends when its slots are counted no longer (GCRA: within the refill
//! of its own slots; sliding window: with the window); a sliding-log lease's slots count
//! until one window after it ends. The lease table (src/limiter/backend/lease.rs): three
//! nodes deciding thousands of concurrent requests on one key never allow more than the
//! limit, and once their leases have gone back exactly the limit (GCRA: within what it
//! holds back), with about one script call per lease size of allowed requests. Three
//! gateways with a leasing rule: 3,000 concurrent requests never over the limit, about one script
//! call per lease, each counted in the metrics, unused slots shown in /api/counters and
//! given back on SIGTERM and SIGINT.

mod common;

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{Gateway, RedisServer};
use common::topologies::{Cluster, Sentinels};
use common::upstream::Upstream;
use ratelimiter::config::Config;
use ratelimiter::limiter::backend::redis::lease::Leases;
use ratelimiter::limiter::backend::redis::scripts::Scripts;
use ratelimiter::limiter::{Algorithm, Check, Limit, Mode, Quota};
use ratelimiter::redis_conn::Redis;

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::SlidingLog,
    Algorithm::Gcra,
    Algorithm::SlidingWindow,
];

fn scripts(server: &RedisServer) -> Scripts {
    scripts_for(&format!("[redis]\nurl = \"{}\"\n", server.url()))
}

fn scripts_for(body: &str) -> Scripts {
    let config = Config::parse("test.toml", body, &|_| None).expect("config");
    let redis = Redis::new(config.redis.as_ref().unwrap()).expect("clients");
    Scripts::new(Arc::new(redis))
}

fn check(key: &str, algorithm: Algorithm, limit: u32, window_ms: u64) -> Check {
    Check {
        cost: 1,
        rule: "api",
        key: key.to_string(),
        limit: Limit {
            algorithm,
            quota: Quota {
                limit: NonZeroU32::new(limit).unwrap(),
                window_ms: NonZeroU64::new(window_ms).unwrap(),
            },
        },
        shadow: false,
        sync: ratelimiter::limiter::SyncMode::Exact,
        wait: Default::default(),
        period_ms: 0,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The Redis server's clock, in ms.
fn server_ms(server: &RedisServer) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    s * 1000 + us / 1000
}

#[test]
fn leases_share_the_limit_and_what_goes_back_can_be_taken_again() {
    let server = RedisServer::start();
    let s = scripts(&server);
    let rt = runtime();
    for algorithm in ALGORITHMS {
        let name = algorithm.name();
        let c = check(&format!("lease:{name}"), algorithm, 100, 60_000);
        rt.block_on(async {
            let before = server_ms(&server);
            let a = s.take(&c, 30, 60_000, "node-a:1").await.unwrap();
            let b = s.take(&c, 50, 60_000, "node-b:1").await.unwrap();
            let cc = s.take(&c, 50, 60_000, "node-c:1").await.unwrap();
            let total = a.granted + b.granted + cc.granted;
            assert_eq!(a.granted, 30, "{name}: the first lease gets what it asks");
            assert!(total <= 100, "{name}: {total} slots leased, limit 100");
            match algorithm {
                // The counting algorithms lease the whole limit out.
                Algorithm::SlidingLog | Algorithm::SlidingWindow => {
                    assert_eq!((b.granted, cc.granted), (50, 20), "{name}");
                }
                // GCRA also holds back the refill during each lease (at most its own size).
                Algorithm::Gcra => {
                    assert!(total >= 100 - a.granted - b.granted, "{name}: {total}");
                }
                Algorithm::Concurrency | Algorithm::Calendar => unreachable!("never leased"),
            }
            let none = s.take(&c, 1, 60_000, "node-d:1").await.unwrap();
            assert_eq!(none.granted, 0, "{name}: nothing left");
            assert!(none.retry_after_ms > 0, "{name}: {none:?}");

            // The check script sees the leased slots as used.
            let refused = s.call(&[&c], Mode::RECORD, "req-1", true).await.unwrap();
            assert!(
                !refused.decisions[0].allowed,
                "{name}: a check past the leases"
            );

            // Node C gives back 10 unused slots: they can be taken again, once.
            let unused = cc.granted.min(10);
            let given = s.give(&c, "node-c:1", &cc, unused).await.unwrap();
            assert_eq!(given, unused, "{name}");
            let again = s.take(&c, 50, 60_000, "node-d:2").await.unwrap();
            assert!(again.granted >= unused, "{name}: {again:?}");
            if algorithm != Algorithm::Gcra {
                assert_eq!(again.granted, 10, "{name}");
            }
            let none = s.take(&c, 1, 60_000, "node-d:3").await.unwrap();
            assert_eq!(none.granted, 0, "{name}");
            // Node A's lease has later ones built on it: a counting algorithm takes its slots
            // back; GCRA, whose later leases counted on its time, keeps them until they pass.
            let given = s.give(&c, "node-a:1", &a, 10).await.unwrap();
            let expected = if algorithm == Algorithm::Gcra { 0 } else { 10 };
            assert_eq!(given, expected, "{name}");

            // Where each lease ends.
            let after = server_ms(&server);
            match algorithm {
                Algorithm::SlidingLog => {
                    assert!(a.ends_ms >= before + 60_000 && a.ends_ms <= after + 60_000)
                }
                Algorithm::Gcra => {
                    // 30 slots of a 600 ms interval refill in 18 s.
                    assert!(a.ends_ms >= before + 18_000 && a.ends_ms <= after + 18_000)
                }
                Algorithm::SlidingWindow => {
                    let window_end = (before / 60_000 + 1) * 60_000;
                    assert!(a.ends_ms <= window_end.max((after / 60_000 + 1) * 60_000));
                    assert!(a.ends_ms > before);
                }
                Algorithm::Concurrency | Algorithm::Calendar => unreachable!("never leased"),
            }
        });
    }
}

#[test]
fn given_back_slots_free_exactly_and_a_lease_past_the_limit_is_cut() {
    let server = RedisServer::start();
    let s = scripts(&server);
    let rt = runtime();
    for algorithm in ALGORITHMS {
        let name = algorithm.name();
        let c = check(&format!("give:{name}"), algorithm, 10, 60_000);
        rt.block_on(async {
            let a = s.take(&c, 1_000, 60_000, "a:1").await.unwrap();
            assert_eq!(a.granted, 10, "{name}: cut to the limit");
            assert_eq!(a.remaining, 0, "{name}");
            // Everything back: the key is as good as fresh.
            assert_eq!(s.give(&c, "a:1", &a, 10).await.unwrap(), 10, "{name}");
            let d = s.call(&[&c], Mode::RECORD, "req-1", true).await.unwrap();
            assert!(d.decisions[0].allowed, "{name}: {:?}", d.decisions[0]);
            assert_eq!(d.decisions[0].remaining, 9, "{name}: {:?}", d.decisions[0]);
            // Giving back more than was left unused takes back no more than the lease.
            let b = s.take(&c, 3, 60_000, "b:1").await.unwrap();
            assert_eq!(b.granted, 3, "{name}");
            assert!(s.give(&c, "b:1", &b, 99).await.unwrap() <= 3, "{name}");
        });
    }
}

#[test]
fn a_sliding_log_lease_counts_until_one_window_after_it_ends() {
    let server = RedisServer::start();
    let s = scripts(&server);
    let rt = runtime();
    let (window, lease) = (400, 300);
    let c = check("expiry:sliding_log", Algorithm::SlidingLog, 5, window);
    rt.block_on(async {
        let a = s.take(&c, 5, lease, "a:1").await.unwrap();
        assert_eq!(a.granted, 5);
        let started = Instant::now();
        loop {
            let d = s.call(&[&c], Mode::RECORD, "probe", true).await.unwrap();
            let now = server_ms(&server);
            if d.decisions[0].allowed {
                assert!(
                    now >= a.ends_ms + window,
                    "allowed at {now}, before the lease's end {} plus the window",
                    a.ends_ms
                );
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// `command` on a counter's Redis key, `args` after the key.
fn on_key<T: redis::FromRedisValue>(
    server: &RedisServer,
    command: &str,
    key: &str,
    args: &[&str],
) -> T {
    redis::cmd(command)
        .arg(format!("ratelimit:{key}"))
        .arg(args)
        .query(&mut server.conn())
        .unwrap()
}

/// The number of entries in a counter's sorted set.
fn entries(server: &RedisServer, key: &str) -> usize {
    on_key(server, "ZCARD", key, &[])
}

#[test]
fn a_sliding_log_lease_is_one_entry_that_counts_all_its_slots() {
    let server = RedisServer::start();
    let s = scripts(&server);
    let rt = runtime();
    let key = "weights:sliding_log";
    let c = check(key, Algorithm::SlidingLog, 10, 60_000);
    // The same key as a rule with a lower limit would see it (after a reload).
    let c2 = check(key, Algorithm::SlidingLog, 2, 60_000);
    rt.block_on(async {
        // A lease of 8 ending at once, then two requests recorded one by one after it.
        let a = s.take(&c, 8, 1, "a:1").await.unwrap();
        assert_eq!(a.granted, 8);
        assert_eq!(entries(&server, key), 2, "the lease's entry and the tally");
        let tally: f64 = on_key(&server, "ZSCORE", key, &["#"]);
        assert_eq!(tally, 1e13 + 7.0, "the slots beyond one, over 10^13");
        let members: Vec<String> = on_key(&server, "ZRANGE", key, &["0", "0"]);
        assert_eq!(members, ["a:1#8"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for member in ["req-1", "req-2"] {
            let d = s.call(&[&c], Mode::RECORD, member, true).await.unwrap();
            assert!(d.decisions[0].allowed, "{:?}", d.decisions[0]);
        }
        let full = s.call(&[&c], Mode::RECORD, "req-3", true).await.unwrap();
        let full = full.decisions[0];
        assert!(!full.allowed && full.count == 10, "{full:?}");
        // Limit 10: the first slot to free is the lease's, one window after it ended.
        // Limit 2: the ninth, the first request's, about 50 ms later.
        let low = s.call(&[&c2], Mode::RECORD, "req-3", true).await.unwrap();
        let low = low.decisions[0];
        assert!(!low.allowed && low.count == 10, "{low:?}");
        assert!(
            low.retry_after_ms >= full.retry_after_ms + 30,
            "the ninth slot frees after the lease's: {low:?} {full:?}"
        );
        assert!(full.retry_after_ms > 59_000, "{full:?}");

        // Giving back 3 shrinks the entry: 7 slots used, 3 free again.
        assert_eq!(s.give(&c, "a:1", &a, 3).await.unwrap(), 3);
        assert_eq!(entries(&server, key), 4);
        for (i, member) in ["req-4", "req-5", "req-6"].into_iter().enumerate() {
            let d = s.call(&[&c], Mode::RECORD, member, true).await.unwrap();
            let d = d.decisions[0];
            assert!(d.allowed && d.count == 8 + i as u64, "{d:?}");
        }
        let d = s.call(&[&c], Mode::RECORD, "req-7", true).await.unwrap();
        assert!(!d.decisions[0].allowed, "{:?}", d.decisions[0]);
        // Given back twice, or after the lease's entry is gone: nothing more.
        assert_eq!(s.give(&c, "a:1", &a, 3).await.unwrap(), 0);
    });
}

#[test]
fn a_retried_sliding_log_take_counts_once_and_a_full_give_back_ends_its_hold() {
    let server = RedisServer::start();
    let s = scripts(&server);
    let rt = runtime();
    let key = "retry:sliding_log";
    let c = check(key, Algorithm::SlidingLog, 10, 1_000);
    let pttl = || -> i64 { on_key(&server, "PTTL", key, &[]) };
    rt.block_on(async {
        let d = s.call(&[&c], Mode::RECORD, "req-1", true).await.unwrap();
        assert!(d.decisions[0].allowed);
        // The same take twice, as after a reply lost to a broken connection.
        let a = s.take(&c, 4, 60_000, "a:1").await.unwrap();
        let again = s.take(&c, 4, 60_000, "a:1").await.unwrap();
        assert_eq!((a.granted, again.granted), (4, 4));
        let d = s.call(&[&c], Mode::RECORD, "req-2", true).await.unwrap();
        assert_eq!(d.decisions[0].count, 6, "{:?}", d.decisions[0]);
        // The lease keeps the key for a minute; given back whole, the key lives one window
        // after its newest request again.
        assert!(pttl() > 59_000);
        assert_eq!(s.give(&c, "a:1", &a, 4).await.unwrap(), 4);
        assert!((0..=1_000).contains(&pttl()), "{}", pttl());
        let d = s.call(&[&c], Mode::RECORD, "req-3", true).await.unwrap();
        assert_eq!(d.decisions[0].count, 3, "{:?}", d.decisions[0]);
    });
}

#[test]
fn a_request_refused_by_its_second_rule_gives_its_first_slot_back_to_that_lease() {
    let server = RedisServer::start();
    let rt = runtime();
    let lease = |key: &str, limit| Check {
        cost: 1,
        sync: ratelimiter::limiter::SyncMode::Lease {
            size: 5,
            ms: 60_000,
        },
        ..check(key, Algorithm::SlidingLog, limit, 60_000)
    };
    let (a, b) = (lease("two:a", 100), lease("two:b", 5));
    let node = Leases::new(Arc::new(scripts(&server)), "node".into());
    let other = Leases::new(Arc::new(scripts(&server)), "other".into());
    rt.block_on(async {
        // The node holds a lease on A; another node holds all of B.
        assert!(node.decide(&a, 5, 60_000).await.unwrap().allowed);
        assert!(other.decide(&b, 5, 60_000).await.unwrap().allowed);
        let leased = |l: &Leases, key: &str| {
            l.leased()
                .into_iter()
                .find(|(k, _)| k == key)
                .map_or(0, |(_, n)| n)
        };
        assert_eq!(leased(&node, "two:a"), 4);
        // A request owing A and B: B refuses, so A's slot goes back to A's lease, whether
        // decided from memory (a second time, B's refusal is remembered) or by a call.
        for _ in 0..2 {
            let both = [a.clone(), b.clone()];
            let d = match node.decide_local(&both) {
                Some(d) => d,
                None => node.decide_all(&both).await.unwrap(),
            };
            assert!(d[0].unwrap().allowed && !d[1].unwrap().allowed, "{d:?}");
            assert_eq!(leased(&node, "two:a"), 4);
        }
    });
}

fn script_calls(server: &RedisServer) -> u64 {
    common::command_calls(&mut server.conn(), &["evalsha", "eval"])
}

#[test]
fn the_metric_counts_calls_taking_slots_and_not_give_backs() {
    let server = RedisServer::start();
    let rt = runtime();
    let node = Leases::new(Arc::new(scripts(&server)), "node".into());
    let counted =
        prometheus::IntCounterVec::new(prometheus::Opts::new("calls", "calls"), &["rule"]).unwrap();
    node.count_calls_in(counted.clone());
    let c = check("metric", Algorithm::SlidingLog, 100, 60_000);
    rt.block_on(async {
        assert!(node.decide(&c, 10, 60_000).await.unwrap().allowed);
        let before = script_calls(&server);
        node.give_back_all().await;
        assert_eq!(script_calls(&server) - before, 1, "a give-back");
    });
    assert_eq!(counted.with_label_values(&["api"]).get(), 1);
}

/// `tasks` tasks per node, each making `requests` requests on `c`, all at once: how many
/// were allowed.
async fn burst(
    nodes: &[Arc<Leases>],
    c: &Check,
    tasks: usize,
    requests: usize,
    size: u64,
    lease_ms: u64,
) -> u64 {
    let mut running = Vec::new();
    for node in nodes {
        for _ in 0..tasks {
            let (node, c) = (node.clone(), c.clone());
            running.push(tokio::spawn(async move {
                let mut n = 0u64;
                for _ in 0..requests {
                    if node.decide(&c, size, lease_ms).await.unwrap().allowed {
                        n += 1;
                    }
                }
                n
            }));
        }
    }
    let mut total = 0;
    for t in running {
        total += t.await.unwrap();
    }
    total
}

/// Every node gives back what it holds; then `node` takes `c`'s slots until one is refused:
/// how many it was allowed.
async fn give_back_and_take_the_rest(
    nodes: &[Arc<Leases>],
    node: usize,
    c: &Check,
    size: u64,
    lease_ms: u64,
) -> u64 {
    for n in nodes {
        n.give_back_all().await;
    }
    let mut m = 0u64;
    while nodes[node].decide(c, size, lease_ms).await.unwrap().allowed {
        m += 1;
        assert!(
            m <= u64::from(c.limit.quota.limit.get()),
            "{}: no end",
            c.key
        );
    }
    m
}

#[test]
fn three_nodes_on_leases_never_exceed_the_limit_and_give_everything_back() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (limit, size, lease_ms) = (500u32, 10u64, 60_000u64);
    for algorithm in ALGORITHMS {
        let name = algorithm.name();
        let c = check(&format!("nodes:{name}"), algorithm, limit, 60_000);
        let nodes: Vec<Arc<Leases>> = (0..3)
            .map(|i| Arc::new(Leases::new(Arc::new(scripts(&server)), format!("node-{i}"))))
            .collect();
        let calls_before = script_calls(&server);
        // 3 nodes x 50 tasks x 20 requests, all at once.
        let allowed = rt.block_on(burst(&nodes, &c, 50, 20, size, lease_ms));
        let calls = script_calls(&server) - calls_before;
        assert!(allowed <= u64::from(limit), "{name}: {allowed} allowed");
        // Refused requests are answered from memory: the calls are about one per lease.
        assert!(
            calls <= allowed / size + 3 * 3,
            "{name}: {calls} script calls for {allowed} allowed"
        );

        // Every node gives back what it holds; then one node takes what is left.
        let more = rt.block_on(give_back_and_take_the_rest(&nodes, 0, &c, size, lease_ms));
        let total = allowed + more;
        eprintln!("{name}: {allowed} of 3000 allowed with {calls} script calls, {more} more after the leases went back");
        match algorithm {
            Algorithm::Gcra => {
                // A node's give-back is refused once another lease was built on it, and each
                // lease holds back at most its own size: never above the limit (plus the
                // refill of the seconds the test takes), never short by more than that.
                let refill = 5;
                assert!(total <= u64::from(limit) + refill, "{name}: {total}");
                assert!(total + 2 * 3 * size >= u64::from(limit), "{name}: {total}");
            }
            _ => assert_eq!(total, u64::from(limit), "{name}: {allowed} + {more}"),
        }

        // Fewer requests than the limit: the nodes keep unused slots, which go back.
        let c = check(&format!("partial:{name}"), algorithm, limit, 60_000);
        let few = rt.block_on(burst(&nodes, &c, 7, 7, size, lease_ms));
        assert_eq!(few, 3 * 7 * 7, "{name}: all allowed");
        let held: u64 = nodes
            .iter()
            .flat_map(|n| n.leased())
            .filter(|(k, _)| *k == c.key)
            .map(|(_, unused)| unused)
            .sum();
        assert!(
            held > 0 && held < 3 * size,
            "{name}: {held} slots held unused"
        );
        let rest = rt.block_on(give_back_and_take_the_rest(&nodes, 1, &c, size, lease_ms));
        eprintln!("{name}: {few} allowed, {held} leased and unused went back, then {rest} more");
        match algorithm {
            Algorithm::Gcra => {
                assert!(few + rest <= u64::from(limit) + 5, "{name}: {few} + {rest}");
                assert!(
                    few + rest + 2 * 3 * size >= u64::from(limit),
                    "{name}: {few} + {rest}"
                );
            }
            _ => assert_eq!(few + rest, u64::from(limit), "{name}: {few} + {rest}"),
        }
    }
}

/// `clients` connections spread over `addrs`, each making `each` requests on one key, all at
/// once: (allowed, refused).
fn hammer(addrs: &[String], clients: usize, each: usize, key: &str) -> (usize, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let allowed = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let addr = addrs[i % addrs.len()].clone();
            let (allowed, refused, barrier) = (allowed.clone(), refused.clone(), barrier.clone());
            let key = key.to_string();
            std::thread::spawn(move || {
                let mut conn = common::http::Conn::open(&addr).unwrap();
                barrier.wait();
                for _ in 0..each {
                    let r = conn.get("/", &[("X-Api-Key", &key)]).unwrap();
                    match r.status {
                        200 => allowed.fetch_add(1, Ordering::SeqCst),
                        429 => refused.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected status {other}: {r:?}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (
        allowed.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    )
}

fn lease_gateways(redis: &RedisServer, up: &Upstream, n: usize, limit: u32) -> Vec<Gateway> {
    gateways_leasing(redis, up, n, limit, 60_000, 60_000)
}

/// `n` gateways with one rule on every path: `limit` per `window_ms` per API key, leases of
/// 10 slots for `lease_ms`.
fn gateways_leasing(
    redis: &RedisServer,
    up: &Upstream,
    n: usize,
    limit: u32,
    window_ms: u64,
    lease_ms: u64,
) -> Vec<Gateway> {
    let body = format!(
        "[privacy]\nclear_keys = true\n[redis]\nurl = \"{}\"\ntimeout_ms = 2000\n[limits]\nenabled = true\n[[rules]]\nname = \"api\"\npath_prefix = \"/\"\nkey = \"header:X-Api-Key\"\nlimit = {limit}\nwindow_ms = {window_ms}\nskip_default = true\nsync = \"lease\"\nlease_size = 10\nlease_ms = {lease_ms}\n",
        redis.url()
    );
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    (0..n).map(|_| Gateway::start(&upstreams, &body)).collect()
}

/// `ratelimiter_lease_calls_total{rule="api"}`, summed over the nodes' metrics.
fn lease_calls_counted(nodes: &[Gateway]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let metrics = common::http::get(&n.admin, "/metrics", &[]).unwrap().body;
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("ratelimiter_lease_calls_total{") && l.contains("rule=\"api\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .map_or(0, |v| v.parse().unwrap())
        })
        .sum()
}

#[test]
fn three_gateways_on_leases_stay_within_the_limit_and_sigterm_gives_back() {
    const LIMIT: u32 = 300;
    let redis = RedisServer::start();
    let up = Upstream::start();
    let mut nodes = lease_gateways(&redis, &up, 3, LIMIT);
    let addrs: Vec<String> = nodes.iter().map(|n| n.proxy.clone()).collect();

    let before = script_calls(&redis);
    let (allowed, refused) = hammer(&addrs, 60, 50, "shared");
    let calls = script_calls(&redis) - before;
    eprintln!("3000 requests: {allowed} allowed, {refused} refused, {calls} script calls");
    assert!(
        allowed <= LIMIT as usize,
        "{allowed} allowed, limit {LIMIT}"
    );
    assert_eq!(allowed + refused, 3000);
    assert!(allowed as u64 / 10 <= calls && calls <= allowed as u64 / 10 + 3 * 4);
    // Each node counts its calls taking slots: at least one per 10 allowed, and no more
    // than Redis ran (it also ran the heartbeat's counts).
    let counted = lease_calls_counted(&nodes);
    assert!(
        allowed as u64 / 10 <= counted && counted <= calls,
        "{counted} calls counted"
    );

    let limits: serde_json::Value = serde_json::from_str(
        &common::http::get(&nodes[0].admin, "/api/limits", &[])
            .unwrap()
            .body,
    )
    .unwrap();
    let api = &limits["rules"][1];
    assert_eq!(
        (
            &api["name"],
            &api["sync"],
            &api["lease_size"],
            &api["lease_ms"]
        ),
        (
            &serde_json::json!("api"),
            &serde_json::json!("lease"),
            &serde_json::json!(10),
            &serde_json::json!(60_000)
        ),
        "{limits}"
    );

    // A few requests each on a second key leave each node holding unused slots, shown in
    // /api/counters; SIGTERM gives them back.
    let (few, _) = hammer(&addrs, 3, 4, "partial");
    assert_eq!(few, 12);
    assert_eq!(
        lease_calls_counted(&nodes),
        counted + 3,
        "one lease per node"
    );
    let listed = common::http::get(&nodes[0].admin, "/api/counters", &[]).unwrap();
    let text = listed.body.clone();
    let counters: serde_json::Value = serde_json::from_str(&text).unwrap();
    let partial = counters["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "api/x-api-key:partial")
        .unwrap_or_else(|| panic!("{text}"));
    // Each node leased 10 and used 4: the count holds every leased slot, this node's 6
    // unused ones shown apart.
    assert_eq!(partial["count"], 30, "{text}");
    assert_eq!(partial["leased"], 6, "{text}");
    // SIGINT gives back as SIGTERM does.
    for (n, signal) in nodes.iter().zip(["INT", "TERM", "TERM"]) {
        n.signal(signal);
    }
    for n in &mut nodes {
        assert_eq!(n.wait_exit(Duration::from_secs(10)), Some(0));
    }
    // A fresh node can have everything the others did not use.
    let fresh = lease_gateways(&redis, &up, 1, LIMIT);
    let (rest, _) = hammer(&[fresh[0].proxy.clone()], 1, LIMIT as usize + 5, "partial");
    assert_eq!(
        few + rest,
        LIMIT as usize,
        "{few} before, {rest} after SIGINT and SIGTERM"
    );
}

/// One request on `key` through `addr`: whether it was allowed.
fn allowed(addr: &str, key: &str) -> bool {
    match common::http::get(addr, "/", &[("X-Api-Key", key)])
        .unwrap()
        .status
    {
        200 => true,
        429 => false,
        other => panic!("unexpected status {other}"),
    }
}

#[test]
fn under_admission_stays_within_the_stated_bound_and_ends_with_the_leases() {
    // The README: while other nodes hold unused slots, a node refuses early by at most
    // (nodes - 1) x lease_size requests, for at most lease_ms (plus the 50 ms sweep).
    const LIMIT: usize = 100;
    let redis = RedisServer::start();
    let up = Upstream::start();
    let nodes = gateways_leasing(&redis, &up, 3, LIMIT as u32, 60_000, 1_000);
    // Each node allows one request and holds the other 9 slots of its lease.
    for n in &nodes {
        assert!(allowed(&n.proxy, "k"));
    }
    let mut first = 0;
    while allowed(&nodes[0].proxy, "k") {
        first += 1;
        assert!(first <= LIMIT, "no end");
    }
    let under = LIMIT - 3 - first;
    eprintln!("node 0 allowed {first} more; refused early by {under} (bound 20)");
    assert!(
        under <= 2 * 10,
        "refused early by {under}, more than (3 - 1) x 10"
    );
    // Once the other leases end and go back, node 0 gets exactly the rest.
    let started = std::time::Instant::now();
    let mut rest = 0;
    let mut back = None;
    loop {
        if allowed(&nodes[0].proxy, "k") {
            rest += 1;
            back.get_or_insert(started.elapsed());
        } else if rest > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the held slots never came back"
        );
        if rest == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        3 + first + rest,
        LIMIT,
        "{first} + {rest} after the leases ended"
    );
    assert!(started.elapsed() < Duration::from_millis(1_000 + 50 + 1_000));
    // Refused early for at most lease_ms and one sweep after the refusal (with room for
    // this machine's scheduling): never a second lease_ms.
    let back = back.unwrap();
    eprintln!("node 0 allowed again {back:?} after its refusal");
    assert!(back < Duration::from_millis(1_000 + 50 + 600), "{back:?}");
}

#[test]
fn a_sigkilled_node_loses_at_most_its_lease_until_the_window_passes() {
    const LIMIT: usize = 50;
    let redis = RedisServer::start();
    let up = Upstream::start();
    let (window, lease) = (1_000u64, 500u64);
    let mut nodes = gateways_leasing(&redis, &up, 2, LIMIT as u32, window, lease);
    // Node 0 uses 3 slots of its lease of 10 and dies with the other 7.
    for _ in 0..3 {
        assert!(allowed(&nodes[0].proxy, "k"));
    }
    let killed_at = std::time::Instant::now();
    nodes[0].signal("KILL");
    nodes[0].wait_exit(Duration::from_secs(5));
    // Node 1 gets the rest, less the 7 lost slots: never more.
    let mut got = 0;
    while allowed(&nodes[1].proxy, "k") {
        got += 1;
        assert!(got <= LIMIT, "no end");
    }
    assert_eq!(
        got,
        LIMIT - 10,
        "the killed node's whole lease is out of use"
    );
    // The lost slots count as used at the lease's end: they free one window after it.
    let freed = loop {
        if allowed(&nodes[1].proxy, "k2-probe") && allowed(&nodes[1].proxy, "k") {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(6), "never freed");
        std::thread::sleep(Duration::from_millis(25));
    };
    eprintln!(
        "the killed node's slots freed after {freed:?} (lease {lease} ms + window {window} ms)"
    );
    assert!(
        freed >= Duration::from_millis(lease + window - 200),
        "{freed:?}"
    );
}

/// Three lease tables on `body`'s Redis, every algorithm: 600 concurrent requests on one key
/// with limit 100 allow at most 100, and exactly 100 once the leases have gone back (GCRA:
/// within what its leases hold back).
fn three_tables_stay_exact(body: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for algorithm in ALGORITHMS {
        let name = algorithm.name();
        let c = check(&format!("topology:{name}"), algorithm, 100, 60_000);
        let nodes: Vec<Arc<Leases>> = (0..3)
            .map(|i| Arc::new(Leases::new(Arc::new(scripts_for(body)), format!("n{i}"))))
            .collect();
        let allowed = rt.block_on(burst(&nodes, &c, 10, 20, 10, 60_000));
        assert!(allowed <= 100, "{name}: {allowed}");
        let rest = rt.block_on(give_back_and_take_the_rest(&nodes, 2, &c, 10, 60_000));
        match algorithm {
            Algorithm::Gcra => assert!(allowed + rest <= 105 && allowed + rest + 60 >= 100),
            _ => assert_eq!(allowed + rest, 100, "{name}: {allowed} + {rest}"),
        }
    }
}

#[test]
fn leases_stay_exact_on_a_cluster() {
    let cluster = Cluster::start(3);
    three_tables_stay_exact(&format!("[redis]\ncluster = {}\n", cluster.seeds()));
}

#[test]
fn leases_stay_exact_through_sentinels() {
    let set = Sentinels::start();
    three_tables_stay_exact(&format!(
        "[redis]\nsentinels = {}\nsentinel_master = \"mymaster\"\n",
        set.urls()
    ));
}

#[test]
fn a_request_also_owing_an_exact_rule_is_decided_exactly_and_explain_reads_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    // The leasing rule does not skip the default rule (exact): every request owes both.
    let body = format!(
        "[redis]\nurl = \"{}\"\n[limits]\ndefault_limit = 1000\ndefault_window_ms = 60000\n[[rules]]\nname = \"api\"\npath_prefix = \"/api/\"\nlimit = 100\nwindow_ms = 60000\nsync = \"lease\"\nlease_size = 10\nlease_ms = 60000\n",
        redis.url()
    );
    let gw = Gateway::start(&format!("upstreams = [\"{}\"]", up.addr), &body);
    let before = script_calls(&redis);
    for _ in 0..20 {
        assert_eq!(
            common::http::get(&gw.proxy, "/api/x", &[]).unwrap().status,
            200
        );
    }
    let calls = script_calls(&redis) - before;
    assert!(
        calls >= 20,
        "mixed requests take the check script: {calls} calls"
    );
    let mut conn = redis.conn();
    let api: usize = redis::cmd("ZCARD")
        .arg("ratelimit:api/ip:127.0.0.1")
        .query(&mut conn)
        .unwrap();
    assert_eq!(api, 20, "recorded one by one, no lease taken");

    // A leasing rule alone: one lease of 10 slots for the first request; explain, which
    // looks at Redis, counts all 10 as used.
    let leasing = format!(
        "[redis]\nurl = \"{}\"\n[limits]\ndefault_limit = 1000\n[[rules]]\nname = \"solo\"\npath_prefix = \"/\"\nlimit = 100\nwindow_ms = 60000\nskip_default = true\nsync = \"lease\"\nlease_size = 10\nlease_ms = 60000\n",
        redis.url()
    );
    let solo = Gateway::start(&format!("upstreams = [\"{}\"]", up.addr), &leasing);
    assert_eq!(
        common::http::get(&solo.proxy, "/", &[]).unwrap().status,
        200
    );
    let r = common::http::post(&solo.admin, "/api/explain", &[], r#"{"ip":"127.0.0.1"}"#).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"count\":10"), "{}", r.body);
}

/// A request of several units on a sliding log is one entry counted through the tally: a
/// check call retried after a lost reply counts it once, and settling it to nothing leaves
/// the key living one window after its newest entry again.
#[test]
fn a_weighed_log_entry_counts_once_when_retried_and_settles_its_expiry() {
    let server = RedisServer::start();
    let scripts = scripts(&server);
    let rt = runtime();
    let old = check("w", Algorithm::SlidingLog, 100, 10_000);
    let weighed = Check {
        cost: 5,
        ..old.clone()
    };
    rt.block_on(async {
        scripts
            .call(&[&old], Mode::RECORD, "m0", true)
            .await
            .unwrap();
        // The weighed entry is the newest by 400 ms: the key's expiry follows it.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        scripts
            .call(&[&weighed], Mode::RECORD, "m1", true)
            .await
            .unwrap();
        // The same member again: what a retried call does. Its reply is the one the caller
        // gets, and the entry takes the retry's time, which that reply's mark says.
        let retried = scripts
            .call(&[&weighed], Mode::RECORD, "m1", true)
            .await
            .unwrap();
        let tally: String = on_key(&server, "ZSCORE", "w", &["#"]);
        assert_eq!(tally, "10000000000004", "the 5 units counted once");
        let now = scripts
            .call(&[&old], Mode::DRY_RUN, "look", true)
            .await
            .unwrap();
        assert_eq!(now.decisions[0].count, 6);
        // Settled to nothing: the entry goes, and the key expires with its newest entry.
        let s = ratelimiter::limiter::Settlement {
            check: weighed.clone(),
            mark: retried.decisions[0].mark,
            actual: 0,
            max_cost: 100,
        };
        assert_eq!(scripts.settle(&[&s], "node").await.unwrap(), [5]);
        let now = scripts
            .call(&[&old], Mode::DRY_RUN, "look", true)
            .await
            .unwrap();
        assert_eq!(now.decisions[0].count, 1);
        assert_eq!(entries(&server, "w"), 2, "the first entry and the tally");
        let ttl: i64 = on_key(&server, "PTTL", "w", &[]);
        assert!(
            ttl <= 9_600 && ttl > 8_000,
            "{ttl}: one window after the first entry"
        );
    });
}
