//! The Lua script and the embedded store implement one arithmetic (src/limiter/window.rs):
//! the same request trace through both gives the same decisions.

mod common;

use std::num::{NonZeroU32, NonZeroU64};
use std::time::{Duration, Instant};

use common::procs::RedisServer;
use ratelimiter::config::{Config, Quota};
use ratelimiter::limiter::memory::MemoryStore;
use ratelimiter::limiter::redis::RedisStore;
use ratelimiter::limiter::{Decision, Store};

/// (time from start in ms, key, limit). Windows are 1200 ms; every event sits at least 100 ms
/// away from any entry's expiry, so scheduling jitter cannot move it across one.
const TRACE: &[(u64, &str, u32)] = &[
    (0, "a", 3),
    (0, "a", 3),
    (0, "b", 1),
    (300, "a", 3),
    (300, "a", 3),  // blocked: 3 in the window
    (300, "b", 1),  // blocked
    (500, "a", 3),  // blocked again, and not recorded
    (1400, "a", 3), // the two at 0 left (at 1200); the one at 300 is in until 1500: allowed
    (1400, "a", 3), // allowed: 2 in the window before it
    (1400, "a", 3), // blocked
    (1600, "b", 1), // b's entry at 0 left
    (1600, "c", 2),
    (1600, "a", 2), // a lower limit for the same key: 2 in the window, blocked
    (2800, "a", 3), // everything before 1600 left
];

const WINDOW_MS: u64 = 1200;

async fn run(store: &dyn Store) -> Vec<(bool, u64, u64)> {
    let start = Instant::now();
    let mut out = Vec::new();
    for (at, key, limit) in TRACE {
        let due = start + Duration::from_millis(*at);
        tokio::time::sleep_until(due.into()).await;
        let quota = Quota {
            limit: NonZeroU32::new(*limit).unwrap(),
            window_ms: NonZeroU64::new(WINDOW_MS).unwrap(),
        };
        let d: Decision = store.check(key, quota).await.unwrap();
        out.push((d.allowed, d.count, d.remaining));
    }
    out
}

#[tokio::test]
async fn redis_and_embedded_stores_decide_alike() {
    let redis = RedisServer::start();
    let config = Config::parse(
        "t.toml",
        &format!("[redis]\nurl = \"{}\"\ntimeout_ms = 1000\n", redis.url()),
        &|_| None,
    )
    .unwrap();
    let redis_store = RedisStore::new(config.redis.as_ref().unwrap()).unwrap();
    let memory_store = MemoryStore::default();

    let (from_redis, from_memory) = tokio::join!(run(&redis_store), run(&memory_store));
    assert_eq!(from_redis, from_memory);
    let allowed: Vec<bool> = from_memory.iter().map(|d| d.0).collect();
    assert_eq!(
        allowed,
        [true, true, true, true, false, false, false, true, true, false, true, true, false, true]
    );
}
