//! The blocked path: a key known to be over its limit is answered from the node's memory until
//! a slot frees, with no Redis call; a reset through the admin API clears that memory on every
//! node before it answers.

mod common;

use std::time::Duration;

use common::http::{get, post, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::wait_for;

fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    common::command_calls(conn, &["evalsha"])
}

fn subscribers(conn: &mut redis::Connection) -> u64 {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("ratelimiter:resets")
        .query(conn)
        .unwrap();
    n
}

fn node(redis: &RedisServer, up: &Upstream) -> Gateway {
    Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\n[limits]\ndefault_limit = 3\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n",
            redis.url()
        ),
    )
}

#[test]
fn blocked_requests_cost_no_redis_call_until_reset() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let nodes: Vec<Gateway> = (0..3).map(|_| node(&redis, &up)).collect();
    let mut conn = redis.conn();
    wait_for(
        "every node subscribed to resets",
        Duration::from_secs(10),
        || (subscribers(&mut conn) == 3).then_some(()),
    );

    let hot = [("X-Api-Key", "hot")];
    for n in &nodes {
        get(&n.proxy, "/", &hot).unwrap();
    }
    // Full now; each node learns it once from Redis.
    for n in &nodes {
        assert_eq!(get(&n.proxy, "/", &hot).unwrap().status, 429);
    }
    let before = evalsha_calls(&mut conn);
    for n in &nodes {
        let mut c = Conn::open(&n.proxy).unwrap();
        for _ in 0..100 {
            let r = c.get("/", &hot).unwrap();
            assert_eq!(r.status, 429);
            assert_eq!(r.header("X-RateLimit-Remaining"), Some("0"));
            assert!(r.header("Retry-After").unwrap().parse::<u64>().unwrap() >= 1);
        }
    }
    assert_eq!(
        evalsha_calls(&mut conn),
        before,
        "300 blocked requests, 0 Redis calls"
    );

    // A reset through one node: in force on that node when it answers, and on the others
    // once its pub/sub message reaches them, a moment later (the README's bound).
    let r = post(
        &nodes[1].admin,
        "/api/counters/x-api-key:hot/reset",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(get(&nodes[1].proxy, "/", &hot).unwrap().status, 200);
    for n in [&nodes[0], &nodes[2]] {
        let took = common::until_allowed(&n.proxy, "/", &hot, Duration::from_secs(1));
        eprintln!("another node allowed the key {took:?} after the reset answered");
    }
}

#[test]
fn remembered_block_ends_when_the_slot_frees() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\n[limits]\ndefault_limit = 1\ndefault_window_ms = 700\n",
            redis.url()
        ),
    );
    let mut conn = redis.conn();
    wait_for("subscribed", Duration::from_secs(10), || {
        (subscribers(&mut conn) == 1).then_some(())
    });
    let mut c = Conn::open(&gw.proxy).unwrap();
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
    let started = std::time::Instant::now();
    assert_eq!(c.get("/", &[]).unwrap().status, 429);
    wait_for("the slot to free", Duration::from_secs(3), || {
        (c.get("/", &[]).unwrap().status == 200).then_some(())
    });
    let blocked_for = started.elapsed();
    assert!(
        blocked_for < Duration::from_millis(1200),
        "blocked for {blocked_for:?}"
    );
}

#[test]
fn a_redis_restart_forgets_remembered_blocks() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let gw = node(&redis, &up);
    let mut conn = redis.conn();
    wait_for("subscribed", Duration::from_secs(10), || {
        (subscribers(&mut conn) == 1).then_some(())
    });
    let k = [("X-Api-Key", "k")];
    for _ in 0..4 {
        get(&gw.proxy, "/", &k).unwrap();
    }
    assert_eq!(get(&gw.proxy, "/", &k).unwrap().status, 429);
    // The data is gone with the restart; the node must not keep blocking from memory.
    redis.restart();
    wait_for(
        "the key to be allowed again",
        Duration::from_secs(10),
        || (get(&gw.proxy, "/", &k).ok()?.status == 200).then_some(()),
    );
}
