//! The gateway on a real Redis Cluster (contract §9): three masters with a replica each, made
//! by `redis-cli --cluster create`. Every check runs on its key's master; listings, blocks,
//! the registry and the active-counter gauge cover every master; resets reach every gateway;
//! several rules whose keys live on different shards never allow more than their limits; a
//! master killed under load is followed by itself.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::failover::{check_and_report, first_decision, Load};
use common::http::{get, post, Conn};
use common::procs::Gateway;
use common::topologies::{acl_refusals, add_gateway_user, Cluster};
use common::upstream::Upstream;
use common::wait_for;

fn gateway_body(cluster: &Cluster, extra: &str) -> String {
    format!(
        "[privacy]\nclear_keys = true\n[node]\nttl_seconds = 3\nheartbeat_seconds = 1\n[redis]\ncluster = {}\n{extra}\n",
        cluster.seeds()
    )
}

/// One API key whose counter lives on each master, in the masters' order.
fn key_per_master(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let mut found: BTreeMap<u16, String> = BTreeMap::new();
    let masters = cluster.masters();
    for i in 0.. {
        let key = format!("{prefix}{i}");
        found
            .entry(cluster.master_of(&format!("ratelimit:x-api-key:{key}")))
            .or_insert(key);
        if found.len() == masters.len() {
            break;
        }
    }
    masters.iter().map(|m| found[m].clone()).collect()
}

fn zcard(cluster: &Cluster, key: &str) -> usize {
    cluster.cmd(&["ZCARD", key]).trim().parse().unwrap()
}

/// Sends `per_client` requests from each of `clients` threads, spread over the gateways and
/// the keys, all released at once; returns how many were allowed per key.
fn hammer(
    gateways: &[&Gateway],
    keys: &[String],
    path: &str,
    clients: usize,
    per_client: usize,
) -> Vec<usize> {
    let allowed: Arc<Vec<AtomicUsize>> =
        Arc::new(keys.iter().map(|_| AtomicUsize::new(0)).collect());
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let addr = gateways[i % gateways.len()].proxy.clone();
            let (k, key) = (i % keys.len(), keys[i % keys.len()].clone());
            let (allowed, barrier, path) = (allowed.clone(), barrier.clone(), path.to_string());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                barrier.wait();
                for _ in 0..per_client {
                    let r = conn.get(&path, &[("X-Api-Key", &key)]).unwrap();
                    match r.status {
                        200 => {
                            allowed[k].fetch_add(1, Ordering::SeqCst);
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
    allowed.iter().map(|a| a.load(Ordering::SeqCst)).collect()
}

#[test]
fn every_shard_is_exact_from_several_gateways() {
    const LIMIT: usize = 20;
    let cluster = Cluster::start(3);
    let up = Upstream::start();
    let body = gateway_body(
        &cluster,
        &format!("timeout_ms = 2000\n[limits]\ndefault_limit = {LIMIT}\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\""),
    );
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&upstreams, &body)).collect();
    let keys = key_per_master(&cluster, "tenant-");

    // 3 keys on 3 masters, 4 clients per key over 3 gateways, 10 requests each: 40 per key.
    let allowed = hammer(&gws.iter().collect::<Vec<_>>(), &keys, "/", 12, 10);
    assert_eq!(allowed, vec![LIMIT; 3], "{}", gws[0].log());
    assert_eq!(up.served(), 3 * LIMIT);
    for key in &keys {
        let name = format!("ratelimit:x-api-key:{key}");
        assert_eq!(zcard(&cluster, &name), LIMIT, "{name}");
    }
    // Each counter sits on its own master.
    let homes: Vec<u16> = keys
        .iter()
        .map(|k| cluster.master_of(&format!("ratelimit:x-api-key:{k}")))
        .collect();
    assert_eq!(homes, cluster.masters());
    for gw in &gws {
        assert_eq!(get(&gw.admin, "/health", &[]).unwrap().status, 200);
    }
}

#[test]
fn listings_blocks_registry_and_resets_cover_every_master() {
    const LIMIT: usize = 2;
    let cluster = Cluster::start(3);
    // As the README's ACL user, which each node must know (ACLs are per node).
    for node in &cluster.nodes {
        add_gateway_user(node.port);
    }
    let body = gateway_body(
        &cluster,
        &format!("timeout_ms = 1000\n[limits]\ndefault_limit = {LIMIT}\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n[proxy.direct_response]\nbody = \"ok\""),
    );
    let body = body.replace("redis://", "redis://gw:gw-secret@");
    let gws: Vec<Gateway> = (0..2)
        .map(|i| {
            Gateway::start(
                "",
                &body.replace("[node]\n", &format!("[node]\nid = \"gw-{i}\"\n")),
            )
        })
        .collect();
    let keys = key_per_master(&cluster, "user-");
    // Something else's key under the prefix, on some master: listings skip it.
    cluster.cmd(&["SET", "ratelimit:orders:seq", "41"]);

    // Each key used up through the second gateway, so it remembers them as blocked.
    let mut c = Conn::open(&gws[1].proxy).unwrap();
    for key in &keys {
        let statuses: Vec<u16> = (0..LIMIT + 1)
            .map(|_| c.get("/", &[("X-Api-Key", key)]).unwrap().status)
            .collect();
        assert_eq!(statuses, [200, 200, 429], "{key}");
    }

    // The first gateway lists every counter and every block, wherever they live.
    let counters = get(&gws[0].admin, "/api/counters", &[]).unwrap();
    assert_eq!(counters.status, 200, "{}", counters.body);
    let blocks = get(&gws[0].admin, "/api/blocks", &[]).unwrap();
    assert_eq!(blocks.status, 200, "{}", blocks.body);
    for key in &keys {
        let entry = format!(r#""key":"x-api-key:{key}","count":{LIMIT}"#);
        assert!(
            counters.body.contains(&entry),
            "{entry} in {}",
            counters.body
        );
        assert!(
            blocks.body.contains(&format!(r#""key":"x-api-key:{key}""#)),
            "{key} in {}",
            blocks.body
        );
    }
    assert!(!counters.body.contains("orders"), "{}", counters.body);
    let metrics = get(&gws[0].admin, "/metrics", &[]).unwrap().body;
    assert!(
        metrics.contains(r#"ratelimiter_active_counters{node_id="gw-0"} 3"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("active_counters"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Both gateways are in the registry (its keys spread over the masters too).
    wait_for("both nodes listed", Duration::from_secs(10), || {
        let nodes = get(&gws[0].admin, "/api/nodes", &[]).ok()?.body;
        (nodes.contains(r#""id":"gw-0""#) && nodes.contains(r#""id":"gw-1""#)).then_some(())
    });

    // A reset through the first gateway clears every key's counter and reaches the second
    // gateway's memory of blocked keys.
    for key in &keys {
        let r = post(
            &gws[0].admin,
            &format!("/api/counters/x-api-key:{key}/reset"),
            &[],
            "",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            zcard(&cluster, &format!("ratelimit:x-api-key:{key}")),
            0,
            "{key}"
        );
    }
    for key in &keys {
        wait_for("the reset to reach gw-1", Duration::from_secs(5), || {
            let r = get(&gws[1].proxy, "/", &[("X-Api-Key", key)]).ok()?;
            (r.status == 200).then_some(())
        });
    }
    assert_eq!(
        cluster.cmd(&["GET", "ratelimit:orders:seq"]).trim(),
        "41",
        "other keys are left alone"
    );
    for node in &cluster.nodes {
        assert_eq!(acl_refusals(node.port).trim(), "", "node {}", node.port);
    }
}

#[test]
fn rules_on_different_shards_never_exceed_their_limits() {
    const PER_KEY: usize = 10;
    const GLOBAL: usize = 25;
    let cluster = Cluster::start(3);
    let up = Upstream::start();
    let body = gateway_body(
        &cluster,
        &format!(
            "timeout_ms = 2000\n[limits]\ndefault_limit = {PER_KEY}\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n\
             [[rules]]\nname = \"api\"\npath_prefix = \"/api\"\nkey = \"global\"\nlimit = {GLOBAL}\n"
        ),
    );
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&upstreams, &body)).collect();
    // Per-key counters on every master: most requests touch two shards.
    let keys = key_per_master(&cluster, "k");
    let global_home = cluster.master_of("ratelimit:api/global");
    let spread: Vec<u16> = keys
        .iter()
        .map(|k| cluster.master_of(&format!("ratelimit:x-api-key:{k}")))
        .collect();
    assert!(spread.iter().any(|&m| m != global_home));

    // 30 clients, 10 requests each, over three gateways: 300 requests for 25 places.
    let mut allowed = hammer(&gws.iter().collect::<Vec<_>>(), &keys, "/api/x", 30, 10);
    let total: usize = allowed.iter().sum();
    // Never more than a limit. (While a refused request's record on one shard is being taken
    // back, a concurrent request there may be refused too: a few places can go unused under
    // a burst, never more than the limit allowed.)
    assert!(total <= GLOBAL, "{allowed:?}");
    assert!(allowed.iter().all(|&n| n <= PER_KEY), "{allowed:?}");
    eprintln!("cross-shard burst: {allowed:?} allowed of {GLOBAL}");
    // Every allowed request is recorded in both counters and nothing else is: what one shard
    // recorded for a request another refused was given back.
    assert_eq!(zcard(&cluster, "ratelimit:api/global"), total);
    let per_key: Vec<usize> = keys
        .iter()
        .map(|k| zcard(&cluster, &format!("ratelimit:x-api-key:{k}")))
        .collect();
    assert_eq!(per_key, allowed);

    // So every place left is still there: one request at a time, each key until refused,
    // fills the global limit exactly.
    let mut c = Conn::open(&gws[0].proxy).unwrap();
    for (k, key) in keys.iter().enumerate() {
        while c.get("/api/x", &[("X-Api-Key", key)]).unwrap().status == 200 {
            allowed[k] += 1;
        }
    }
    assert_eq!(allowed.iter().sum::<usize>(), GLOBAL, "{allowed:?}");
    assert_eq!(up.served(), GLOBAL);
    assert_eq!(zcard(&cluster, "ratelimit:api/global"), GLOBAL);
}

/// How a master fails.
#[derive(Clone, Copy)]
enum Fault {
    /// The process dies: connections to it are refused at once.
    Kill,
    /// The process hangs (SIGSTOP), as a partitioned machine would: connections stay open and
    /// nothing answers, so only the timeout ends a call.
    Freeze,
}

/// Two gateways under load on every shard lose a master; every request is answered within
/// the timeout and a margin, and once the replica is promoted, limiting is exact again.
fn master_failure_under_load(fault: Fault, what: &str) {
    const TIMEOUT_MS: u64 = 300;
    let mut cluster = Cluster::start(3);
    let body = gateway_body(
        &cluster,
        &format!(
            "timeout_ms = {TIMEOUT_MS}\non_error = \"allow\"\n[limits]\ndefault_limit = 1000000\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n[proxy.direct_response]\nbody = \"ok\""
        ),
    );
    let gws: Vec<Gateway> = (0..2).map(|_| Gateway::start("", &body)).collect();
    let keys = key_per_master(&cluster, "load-");
    let victim = cluster.masters()[0];

    let load = Load::start(&gws.iter().collect::<Vec<_>>(), &keys);
    std::thread::sleep(Duration::from_millis(500));
    match fault {
        Fault::Kill => cluster.node(victim).kill(),
        Fault::Freeze => cluster.node(victim).freeze(),
    }
    let at = load.now();
    let recovery = first_decision(&load, &gws[0], &keys[0], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    check_and_report(what, &samples, at, &recovery, TIMEOUT_MS);

    // Exact again on the promoted master, from both gateways.
    cluster.wait_ok();
    let limit_body = body.replace("default_limit = 1000000", "default_limit = 15");
    for gw in &gws {
        gw.reload_with("", &limit_body);
        wait_for("the new limit", Duration::from_secs(10), || {
            let r = get(&gw.proxy, "/", &[("X-Api-Key", "probe")]).ok()?;
            (r.header("X-RateLimit-Limit") == Some("15")).then_some(())
        });
    }
    let fresh = key_per_master(&cluster, "after-");
    let allowed = hammer(&gws.iter().collect::<Vec<_>>(), &fresh, "/", 6, 10);
    let stored: Vec<usize> = fresh
        .iter()
        .map(|k| zcard(&cluster, &format!("ratelimit:x-api-key:{k}")))
        .collect();
    assert_eq!(
        allowed,
        vec![15; 3],
        "stored {stored:?}\n{}\n{}",
        gws[0].log(),
        gws[1].log()
    );
    assert_eq!(stored, vec![15; 3]);
    // The admin port's own connection follows on its next calls.
    for gw in &gws {
        wait_for("healthy again", Duration::from_secs(10), || {
            let r = get(&gw.admin, "/health", &[]).ok()?;
            (r.status == 200).then_some(())
        });
    }
}

#[test]
fn a_killed_master_is_followed_and_exact_limiting_resumes() {
    master_failure_under_load(Fault::Kill, "cluster, master killed");
}

#[test]
fn a_hung_master_is_followed_and_exact_limiting_resumes() {
    master_failure_under_load(Fault::Freeze, "cluster, master hung");
}

/// Costs on a cluster (contract §13): two rules whose counters live on different shards
/// reserve at once (one call per shard) and settle from one response (one call per shard);
/// each counter ends holding the tokens the upstream used.
#[test]
fn costs_reserve_and_settle_across_shards() {
    let cluster = Cluster::start(3);
    let llm = common::llm::Llm::start();
    let body = gateway_body(
        &cluster,
        "timeout_ms = 2000\n[limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"per_key\"\npath_prefix = \"/v1/\"\nkey = \"header:X-Api-Key\"\nlimit = 100000\ncost = 50\nmax_cost = 5000\nsettle = \"header:X-Usage\"\n\
         [[rules]]\nname = \"tokens\"\npath_prefix = \"/v1/\"\nkey = \"global\"\nlimit = 100000\ncost = 50\nmax_cost = 5000\nsettle = \"json:usage.total_tokens\"\n",
    );
    let gw = Gateway::start(&format!("upstreams = [\"{}\"]", llm.addr), &body);
    // A key whose counter is on another shard than the global one.
    let global_home = cluster.master_of("ratelimit:tokens/global");
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.master_of(&format!("ratelimit:per_key/x-api-key:{k}")) != global_home)
        .unwrap();
    let mut total = 0;
    for max_tokens in [10, 300, 7] {
        let request = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "count these words"}],
            "max_tokens": max_tokens,
        });
        let r = post(
            &gw.proxy,
            "/v1/chat/completions",
            &[("X-Api-Key", &key), ("Content-Type", "application/json")],
            &request.to_string(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        total += 3 + max_tokens;
        let counted = |counter: &str| -> u64 {
            let listing = get(&gw.admin, &format!("/api/counters?key={counter}"), &[]).unwrap();
            let v: serde_json::Value = serde_json::from_str(&listing.body).unwrap();
            v["counters"][0]["count"].as_u64().unwrap_or(0)
        };
        let per_key = format!("per_key/x-api-key:{key}");
        wait_for("both shards settled", Duration::from_secs(5), || {
            (counted(&per_key) == total && counted("tokens/global") == total).then_some(())
        });
    }
}

/// Concurrency on a cluster (contract §14): a per-key rule and a global one whose slots live
/// on different shards. Two gateways never put more in flight than either allows; a request
/// refused by one shard's rule leaves no slot on the other (taken back); every slot is freed
/// (one call per shard) once the responses end.
#[test]
fn concurrency_slots_across_shards() {
    let cluster = Cluster::start(3);
    let up = Upstream::start();
    let body = gateway_body(
        &cluster,
        "timeout_ms = 2000\n[limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"per_key\"\nkey = \"header:X-Api-Key\"\nconcurrency = 2\n\
         [[rules]]\nname = \"all\"\nkey = \"global\"\nconcurrency = 3\n",
    );
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    let gws: Vec<Gateway> = (0..2).map(|_| Gateway::start(&upstreams, &body)).collect();
    let global_home = cluster.master_of("ratelimit:all/global");
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.master_of(&format!("ratelimit:per_key/x-api-key:{k}")) != global_home)
        .unwrap();
    let slow = |gw: &Gateway, key: &str| {
        let (addr, key) = (gw.proxy.clone(), key.to_string());
        std::thread::spawn(move || {
            get(&addr, "/sleep/800", &[("X-Api-Key", &key)]).map_or(0, |r| r.status)
        })
    };
    // Two of `key` in flight: its rule is full, the global one holds two of three.
    let held = [slow(&gws[0], &key), slow(&gws[1], &key)];
    wait_for("two in flight", Duration::from_secs(5), || {
        (up.sleeping() == 2).then_some(())
    });
    for gw in &gws {
        let r = get(&gw.proxy, "/", &[("X-Api-Key", &key)]).unwrap();
        assert_eq!(r.status, 429, "per_key is full");
    }
    assert_eq!(
        zcard(&cluster, "ratelimit:all/global"),
        2,
        "the refused requests' global slots were taken back"
    );
    // Another key takes the last global slot; a third key finds the global rule full.
    let other = slow(&gws[0], "other");
    wait_for("three in flight", Duration::from_secs(5), || {
        (up.sleeping() == 3).then_some(())
    });
    assert_eq!(
        get(&gws[1].proxy, "/", &[("X-Api-Key", "third")])
            .unwrap()
            .status,
        429
    );
    assert_eq!(up.peak(), 3);
    for h in held.into_iter().chain([other]) {
        assert_eq!(h.join().unwrap(), 200);
    }
    // Freed on both shards.
    wait_for("every slot freed", Duration::from_secs(5), || {
        (zcard(&cluster, "ratelimit:all/global") == 0
            && zcard(&cluster, &format!("ratelimit:per_key/x-api-key:{key}")) == 0)
            .then_some(())
    });
    assert_eq!(
        get(&gws[1].proxy, "/", &[("X-Api-Key", &key)])
            .unwrap()
            .status,
        200
    );
}
