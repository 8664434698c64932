//! The Lua scripts and the embedded store implement one arithmetic (src/limiter/algo/): the
//! same request trace through both gives the same decisions, for single checks and for
//! requests with several checks (blocked by one, recorded in none; shadows never block).

mod common;

use std::num::{NonZeroU32, NonZeroU64};
use std::time::{Duration, Instant};

use common::procs::RedisServer;
use ratelimiter::config::Config;
use ratelimiter::limiter::backend::memory::MemoryStore;
use ratelimiter::limiter::backend::redis::RedisStore;
use ratelimiter::limiter::{Backend, Check, Limit, Mode};

/// A check in the trace: (counter key, limit, shadow).
type C = (&'static str, u32, bool);

/// (time from start in ms, the request's checks, record or look only). Windows are 1200 ms;
/// every event sits at least 100 ms away from any entry's expiry, so scheduling jitter cannot
/// move it across one.
const TRACE: &[(u64, &[C], Mode)] = &[
    (0, &[("a", 3, false)], Mode::RECORD),
    (0, &[("a", 3, false)], Mode::RECORD),
    (0, &[("b", 1, false)], Mode::RECORD),
    (300, &[("a", 3, false)], Mode::RECORD),
    (300, &[("a", 3, false)], Mode::RECORD), // blocked: 3 in the window
    (300, &[("b", 1, false)], Mode::RECORD), // blocked
    (500, &[("a", 3, false)], Mode::RECORD), // blocked again, and not recorded
    (500, &[("a", 3, false)], Mode::DRY_RUN), // looked at only
    (1400, &[("a", 3, false)], Mode::RECORD), // the two at 0 left (at 1200); allowed
    (1400, &[("a", 3, false)], Mode::RECORD), // allowed: 2 in the window before it
    (1400, &[("a", 3, false)], Mode::RECORD), // blocked
    (1600, &[("b", 1, false)], Mode::RECORD), // b's entry at 0 left
    (1600, &[("c", 2, false)], Mode::RECORD),
    (1600, &[("a", 2, false)], Mode::RECORD), // a lower limit for the same key: blocked
    // Several checks: c has one slot left, d is fresh; both record.
    (1700, &[("c", 2, false), ("d", 5, false)], Mode::RECORD),
    // c is full: the request is blocked and d is not charged.
    (1700, &[("d", 5, false), ("c", 2, false)], Mode::RECORD),
    // A shadow that is full never blocks; the enforced check records.
    (1700, &[("d", 5, false), ("c", 2, true)], Mode::RECORD),
    (1700, &[("e", 1, true), ("d", 5, false)], Mode::RECORD),
    (1700, &[("e", 1, true), ("d", 5, false)], Mode::RECORD),
    (1700, &[("d", 5, false), ("c", 2, false)], Mode::DRY_RUN),
    (2800, &[("a", 3, false)], Mode::RECORD), // everything before 1600 left
];

const WINDOW_MS: u64 = 1200;

/// Per event, per check: (allowed, count, remaining, retry_after > 0, reset > 0).
type Seen = Vec<Vec<(bool, u64, u64, bool, bool)>>;

async fn run(store: &dyn Backend) -> Seen {
    let start = Instant::now();
    let mut out = Vec::new();
    for (at, checks, mode) in TRACE {
        let due = start + Duration::from_millis(*at);
        tokio::time::sleep_until(due.into()).await;
        let checks: Vec<Check> = checks
            .iter()
            .map(|(key, limit, shadow)| Check {
                rule: "default",
                key: key.to_string(),
                limit: Limit::sliding_log(
                    NonZeroU32::new(*limit).unwrap(),
                    NonZeroU64::new(WINDOW_MS).unwrap(),
                ),
                shadow: *shadow,
            })
            .collect();
        // Ask for reset_ms too, so the script's extra read is covered.
        let decisions = store.decide(&checks, mode.with_reset(true)).await.unwrap();
        out.push(
            decisions
                .into_iter()
                .map(|d| {
                    let d = d.expect("every check decided");
                    (
                        d.allowed,
                        d.count,
                        d.remaining,
                        d.retry_after_ms > 0,
                        d.reset_ms > 0,
                    )
                })
                .collect(),
        );
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
    let allowed: Vec<Vec<bool>> = from_memory
        .iter()
        .map(|e| e.iter().map(|d| d.0).collect())
        .collect();
    let (t, f) = (true, false);
    assert_eq!(
        allowed,
        [
            vec![t],
            vec![t],
            vec![t],
            vec![t],
            vec![f],
            vec![f],
            vec![f],
            vec![f],
            vec![t],
            vec![t],
            vec![f],
            vec![t],
            vec![t],
            vec![f],
            vec![t, t],
            vec![t, f],
            vec![t, f],
            vec![t, t],
            vec![f, t],
            vec![t, f],
            vec![t],
        ]
    );
    // Counts show who was charged: d took the first multi-check request, not the blocked one.
    assert_eq!(from_memory[15][0], (true, 1, 4, false, true));
    assert_eq!(from_memory[16][0].1, 2);
    assert_eq!(from_memory[18][1].1, 4);
}
