//! Exactness across nodes (contract §3.2): N gateways sharing one Redis never allow more than
//! `limit` in a window, whatever the concurrency.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::http::Conn;
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;

#[test]
fn three_nodes_on_one_redis_allow_exactly_the_limit() {
    const LIMIT: usize = 50;
    const CLIENTS: usize = 30;
    const PER_CLIENT: usize = 10; // 300 requests, all on one key.

    let redis = RedisServer::start();
    let up = Upstream::start();
    let body = format!(
        "[redis]\nurl = \"{}\"\ntimeout_ms = 2000\n[limits]\ndefault_limit = {LIMIT}\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n",
        redis.url()
    );
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    let nodes: Vec<Gateway> = (0..3).map(|_| Gateway::start(&upstreams, &body)).collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.proxy.clone()).collect();

    let allowed = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = addrs[i % addrs.len()].clone();
            let (allowed, blocked, barrier) = (allowed.clone(), blocked.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                barrier.wait();
                for _ in 0..PER_CLIENT {
                    let r = conn.get("/", &[("X-Api-Key", "shared")]).unwrap();
                    match r.status {
                        200 => allowed.fetch_add(1, Ordering::SeqCst),
                        429 => blocked.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected status {other}: {r:?}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::SeqCst), LIMIT);
    assert_eq!(blocked.load(Ordering::SeqCst), CLIENTS * PER_CLIENT - LIMIT);
    assert_eq!(up.served(), LIMIT);
    let mut conn = redis.conn();
    let card: usize = redis::cmd("ZCARD")
        .arg("ratelimit:x-api-key:shared")
        .query(&mut conn)
        .unwrap();
    assert_eq!(card, LIMIT);
}

#[test]
fn a_killed_node_does_not_loosen_the_limit_for_the_others() {
    const LIMIT: usize = 40;
    let redis = RedisServer::start();
    let up = Upstream::start();
    let body = format!(
        "[node]\nttl_seconds = 2\nheartbeat_seconds = 1\n[redis]\nurl = \"{}\"\ntimeout_ms = 2000\n[limits]\ndefault_limit = {LIMIT}\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n",
        redis.url()
    );
    let upstreams = format!("upstreams = [\"{}\"]", up.addr);
    let mut nodes: Vec<Gateway> = (0..3).map(|_| Gateway::start(&upstreams, &body)).collect();
    let k = [("X-Api-Key", "shared")];
    let mut allowed = 0;
    for _ in 0..15 {
        if common::http::get(&nodes[0].proxy, "/", &k).unwrap().status == 200 {
            allowed += 1;
        }
    }
    nodes[0].signal("KILL");
    nodes[0].wait_exit(std::time::Duration::from_secs(5));
    // The survivors share what is left of the window, concurrently, and no more.
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let addr = nodes[1 + i % 2].proxy.clone();
            let ok = ok.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                for _ in 0..5 {
                    if conn.get("/", &[("X-Api-Key", "shared")]).unwrap().status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(allowed + ok.load(Ordering::SeqCst), LIMIT);
}
