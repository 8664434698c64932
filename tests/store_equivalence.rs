//! The Lua scripts and the embedded store implement one arithmetic (src/limiter/algo/): the
//! same request trace through both gives the same decisions, for every algorithm, for single
//! checks and for requests with several checks (blocked by one, recorded in none; shadows
//! never block), and for look-only calls.

mod common;

use std::num::{NonZeroU32, NonZeroU64};
use std::time::{Duration, Instant};

use common::procs::RedisServer;
use ratelimiter::config::Config;
use ratelimiter::limiter::backend::memory::MemoryStore;
use ratelimiter::limiter::backend::redis::RedisStore;
use ratelimiter::limiter::{Algorithm, Check, Counters, Decide, Limit, Mode, Settlement};

use Algorithm::{Gcra, SlidingLog, SlidingWindow};

/// A check in a trace: (counter key, algorithm, limit, shadow).
type C = (&'static str, Algorithm, u32, bool);

/// (ms after the trace's start, the request's checks, record or look only).
type Event = (u64, &'static [C], Mode);

/// Every window is 1200 ms; every event sits at least 100 ms away from any expiry or
/// threshold, so scheduling jitter cannot move a decision across one.
const WINDOW_MS: u64 = 1200;

const R: Mode = Mode::RECORD;
const LOOK: Mode = Mode::DRY_RUN;

/// The sliding log: an entry leaves exactly one window after it was recorded.
const SLIDING_LOG: &[Event] = &[
    (0, &[("a", SlidingLog, 3, false)], R),
    (0, &[("a", SlidingLog, 3, false)], R),
    (0, &[("b", SlidingLog, 1, false)], R),
    (300, &[("a", SlidingLog, 3, false)], R),
    (300, &[("a", SlidingLog, 3, false)], R), // blocked: 3 in the window
    (300, &[("b", SlidingLog, 1, false)], R), // blocked
    (500, &[("a", SlidingLog, 3, false)], R), // blocked again, and not recorded
    (500, &[("a", SlidingLog, 3, false)], LOOK),
    (1400, &[("a", SlidingLog, 3, false)], R), // the two at 0 left (at 1200): allowed
    (1400, &[("a", SlidingLog, 3, false)], R),
    (1400, &[("a", SlidingLog, 3, false)], R), // blocked
    (1600, &[("b", SlidingLog, 1, false)], R), // b's entry at 0 left
    (1600, &[("c", SlidingLog, 2, false)], R),
    (1600, &[("a", SlidingLog, 2, false)], R), // a lower limit for the same key: blocked
    // Several checks: c has one slot left, d is fresh; both record.
    (
        1700,
        &[("c", SlidingLog, 2, false), ("d", SlidingLog, 5, false)],
        R,
    ),
    // c is full: the request is blocked and d is not charged.
    (
        1700,
        &[("d", SlidingLog, 5, false), ("c", SlidingLog, 2, false)],
        R,
    ),
    // A shadow that is full never blocks; the enforced check records.
    (
        1700,
        &[("d", SlidingLog, 5, false), ("c", SlidingLog, 2, true)],
        R,
    ),
    (
        1700,
        &[("e", SlidingLog, 1, true), ("d", SlidingLog, 5, false)],
        R,
    ),
    (
        1700,
        &[("e", SlidingLog, 1, true), ("d", SlidingLog, 5, false)],
        R,
    ),
    (
        1700,
        &[("d", SlidingLog, 5, false), ("c", SlidingLog, 2, false)],
        LOOK,
    ),
    (2800, &[("a", SlidingLog, 3, false)], R), // everything before 1600 left
];

/// GCRA, limit 3 per 1200 ms: T = 400 ms, a burst of 3.
const GCRA: &[Event] = &[
    (0, &[("g", Gcra, 3, false)], R),
    (0, &[("g", Gcra, 3, false)], R),
    (0, &[("g", Gcra, 3, false)], R),
    (0, &[("g", Gcra, 3, false)], R), // blocked: 1200 ms ahead, 800 tolerated
    (500, &[("g", Gcra, 3, false)], R), // 700 ahead: allowed
    (500, &[("g", Gcra, 3, false)], R), // blocked
    (1300, &[("g", Gcra, 3, false)], LOOK),
    (1300, &[("g", Gcra, 3, false)], R), // 300 ahead: 2 left
    (1300, &[("g", Gcra, 3, false)], R),
    // With a sliding log beside it: the log has room, GCRA does not; nothing recorded. (The
    // first refusal of g since it filled, so Redis decides it, not the memory of full keys.)
    (
        1300,
        &[("l", SlidingLog, 5, false), ("g", Gcra, 3, false)],
        R,
    ),
    (
        1300,
        &[("l", SlidingLog, 5, false), ("g", Gcra, 3, true)],
        R,
    ),
    (3100, &[("g", Gcra, 3, false)], R), // caught up: fresh again
    (3100, &[("g", Gcra, 1, false)], R), // a lower limit on the same key: blocked
];

/// The sliding-window counter, limit 4, times from the start of a fixed window.
const SLIDING_WINDOW: &[Event] = &[
    (200, &[("w", SlidingWindow, 4, false)], R),
    (200, &[("w", SlidingWindow, 4, false)], R),
    (200, &[("w", SlidingWindow, 4, false)], R),
    (200, &[("w", SlidingWindow, 4, false)], R),
    (200, &[("w", SlidingWindow, 4, false)], R), // blocked: 4 in this window
    // 100 ms into the next window: 4 × 1100/1200 = 3.67, floored 3: one more fits.
    (1300, &[("w", SlidingWindow, 4, false)], R),
    (1300, &[("w", SlidingWindow, 4, false)], R),
    (1900, &[("w", SlidingWindow, 4, false)], LOOK),
    // 1 + 4 × 500/1200 = 2.67: two more fit.
    (1900, &[("w", SlidingWindow, 4, false)], R),
    (1900, &[("w", SlidingWindow, 4, false)], R),
    // Every algorithm in one request; the full window blocks it, the others keep their room.
    // (The first refusal since w filled, so Redis decides it, not the memory of full keys.)
    (
        1900,
        &[
            ("x", Gcra, 2, false),
            ("w", SlidingWindow, 4, false),
            ("y", SlidingLog, 2, false),
        ],
        R,
    ),
    (
        1900,
        &[
            ("x", Gcra, 2, false),
            ("w", SlidingWindow, 4, true),
            ("y", SlidingLog, 2, false),
        ],
        R,
    ),
    (3700, &[("w", SlidingWindow, 4, false)], R), // two windows on: empty
];

/// Per event, per check: (allowed, count, remaining, retry_after_ms, reset_ms).
type Seen = Vec<Vec<(bool, u64, u64, u64, u64)>>;

/// How far the two stores' waits may differ: they read their clocks a moment apart.
const CLOCK_SLACK_MS: u64 = 30;

async fn run(store: &dyn Decide, trace: &[Event], start: Instant) -> Seen {
    let mut out = Vec::new();
    for (at, checks, mode) in trace {
        tokio::time::sleep_until((start + Duration::from_millis(*at)).into()).await;
        let checks: Vec<Check> = checks
            .iter()
            .map(|(key, algorithm, limit, shadow)| Check {
                cost: 1,
                rule: "default",
                key: key.to_string(),
                limit: Limit::new(
                    *algorithm,
                    NonZeroU32::new(*limit).unwrap(),
                    NonZeroU64::new(WINDOW_MS).unwrap(),
                ),
                shadow: *shadow,
                sync: ratelimiter::limiter::SyncMode::Exact,
                wait: Default::default(),
                period_ms: 0,
            })
            .collect();
        // Ask for reset_ms too, so the scripts' extra reads are covered.
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
                        d.retry_after_ms,
                        d.reset_ms,
                    )
                })
                .collect(),
        );
    }
    out
}

/// When a trace starts: shortly, or (`aligned`) at the start of the next fixed window, which
/// both stores count from the Unix epoch.
fn start(aligned: bool) -> Instant {
    if !aligned {
        return Instant::now() + Duration::from_millis(100);
    }
    let now_ms = common::epoch_ms();
    Instant::now() + Duration::from_millis(WINDOW_MS - now_ms % WINDOW_MS)
}

/// A store on this Redis, connected before a trace starts.
async fn connected(redis: &RedisServer) -> RedisStore {
    let config = Config::parse(
        "t.toml",
        &format!("[redis]\nurl = \"{}\"\ntimeout_ms = 1000\n", redis.url()),
        &|_| None,
    )
    .unwrap();
    let store = RedisStore::new(config.redis.as_ref().unwrap()).unwrap();
    store.ping().await.unwrap();
    store
}

/// Runs a trace through Redis and memory at once; returns what both saw.
async fn both(trace: &[Event], aligned: bool) -> Seen {
    let redis = RedisServer::start();
    let redis_store = connected(&redis).await;
    let memory_store = MemoryStore::default();
    let start = start(aligned);
    let (from_redis, from_memory) = tokio::join!(
        run(&redis_store, trace, start),
        run(&memory_store, trace, start)
    );
    // The same decisions, counts and remaining; the same waits to within the slack.
    let exact = |seen: &Seen| -> Vec<Vec<(bool, u64, u64)>> {
        seen.iter()
            .map(|e| e.iter().map(|d| (d.0, d.1, d.2)).collect())
            .collect()
    };
    assert_eq!(exact(&from_redis), exact(&from_memory));
    for (i, (r, m)) in from_redis.iter().zip(&from_memory).enumerate() {
        for (a, b) in r.iter().zip(m) {
            for (what, x, y) in [("retry_after_ms", a.3, b.3), ("reset_ms", a.4, b.4)] {
                assert!(
                    x.abs_diff(y) <= CLOCK_SLACK_MS && (x == 0) == (y == 0),
                    "event {i}: {what} {x} in Redis, {y} in memory"
                );
            }
        }
    }
    from_memory
}

/// The first three fields and whether the waits are set: what the traces below assert.
fn shape(d: (bool, u64, u64, u64, u64)) -> (bool, u64, u64, bool, bool) {
    (d.0, d.1, d.2, d.3 > 0, d.4 > 0)
}

fn allowed(seen: &Seen) -> Vec<Vec<bool>> {
    seen.iter()
        .map(|e| e.iter().map(|d| d.0).collect())
        .collect()
}

#[tokio::test]
async fn sliding_log_decides_alike_in_redis_and_memory() {
    let seen = both(SLIDING_LOG, false).await;
    let (t, f) = (true, false);
    assert_eq!(
        allowed(&seen),
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
    assert_eq!(shape(seen[15][0]), (true, 1, 4, false, true));
    assert_eq!(seen[16][0].1, 2);
    assert_eq!(seen[18][1].1, 4);
}

#[tokio::test]
async fn gcra_decides_alike_in_redis_and_memory() {
    let seen = both(GCRA, false).await;
    let (t, f) = (true, false);
    assert_eq!(
        allowed(&seen),
        [
            vec![t],
            vec![t],
            vec![t],
            vec![f],
            vec![t],
            vec![f],
            vec![t],
            vec![t],
            vec![t],
            vec![t, f],
            vec![t, f],
            vec![t],
            vec![f],
        ]
    );
    // GCRA's own counts: the burst in use, and what is left of it.
    assert_eq!(shape(seen[0][0]), (true, 1, 2, false, true));
    // T = 400 ms: the used slot is back 400 ms after it was taken.
    assert!(
        seen[0][0].4.abs_diff(400) <= CLOCK_SLACK_MS,
        "{:?}",
        seen[0][0]
    );
    // Blocked at 1200 ms ahead with 800 tolerated: 400 ms to wait.
    assert!(
        seen[3][0].3.abs_diff(400) <= CLOCK_SLACK_MS,
        "{:?}",
        seen[3][0]
    );
    assert_eq!(
        shape(seen[6][0]),
        (true, 1, 2, false, true),
        "300 ms ahead: 2 left"
    );
    assert_eq!(seen[9][0].1, 0, "the log was not charged");
    assert_eq!(seen[10][0].1, 1, "a shadow GCRA does not block the log");
}

#[tokio::test]
async fn sliding_window_decides_alike_in_redis_and_memory() {
    let seen = both(SLIDING_WINDOW, true).await;
    let (t, f) = (true, false);
    assert_eq!(
        allowed(&seen),
        [
            vec![t],
            vec![t],
            vec![t],
            vec![t],
            vec![f],
            vec![t],
            vec![f],
            vec![t],
            vec![t],
            vec![t],
            vec![t, f, t],
            vec![t, f, t],
            vec![t],
        ]
    );
    assert_eq!(seen[5][0].1, 4, "3 weighed from before, and this one");
    assert_eq!(
        shape(seen[7][0]),
        (true, 2, 2, false, true),
        "1 + 1.67, floored"
    );
    // Full at 200 ms into the window: room again 1 ms into the next one.
    assert!(
        seen[4][0].3.abs_diff(1001) <= CLOCK_SLACK_MS,
        "{:?}",
        seen[4][0]
    );
    assert_eq!(
        seen[10][0].1, 0,
        "GCRA was not charged for the blocked request"
    );
    assert_eq!(
        seen[11][0].1, 1,
        "a shadow window does not block the others"
    );
}

/// A request with a cost, and what its response settles it at: (ms after the start, key,
/// cost, settled at).
type Weighed = (u64, &'static str, u32, Option<u32>);

/// Costs and settlements (contract §13): reservations of several units, give-backs, a charge
/// past the limit, a refusal for more units than are left while fewer still fit; for each
/// algorithm, the same trace through both stores. Limit 10 per window.
const WEIGHED: &[Weighed] = &[
    (0, "c", 4, Some(2)),    // 4 reserved, 2 used: 2 back
    (0, "c", 6, None),       // 8
    (0, "c", 3, None),       // refused: 2 left
    (0, "c", 2, Some(5)),    // 10, then charged 3: 13, past the limit
    (0, "d", 11, None),      // more than the limit: never fits
    (300, "c", 1, None),     // refused: charged past the limit
    (300, "e", 10, Some(0)), // all of it back
    (300, "e", 10, None),
    (1600, "c", 1, Some(1)),
    (1600, "e", 1, None),
];

/// Per request: (allowed, count, remaining) and the units its settlement gave back.
type WeighedSeen = Vec<((bool, u64, u64), Option<i64>)>;

async fn run_weighed(store: &dyn Decide, algorithm: Algorithm, start: Instant) -> WeighedSeen {
    let mut out = Vec::new();
    for (at, key, cost, settled) in WEIGHED {
        tokio::time::sleep_until((start + Duration::from_millis(*at)).into()).await;
        let check = Check {
            cost: *cost,
            ..Check::new(
                "default",
                format!("{}-{key}", algorithm.name()),
                Limit::new(
                    algorithm,
                    NonZeroU32::new(10).unwrap(),
                    NonZeroU64::new(WINDOW_MS).unwrap(),
                ),
            )
        };
        let d = store.decide(std::slice::from_ref(&check), R).await.unwrap()[0].expect("decided");
        let given = match settled {
            Some(actual) if d.allowed => {
                let s = Settlement {
                    check,
                    mark: d.mark,
                    actual: *actual,
                    max_cost: 100,
                };
                Some(store.settle(&[s]).await.unwrap()[0])
            }
            _ => None,
        };
        out.push(((d.allowed, d.count, d.remaining), given));
    }
    out
}

#[tokio::test]
async fn costs_and_settlements_decide_alike_in_redis_and_memory() {
    let redis = RedisServer::start();
    let redis_store = connected(&redis).await;
    for algorithm in Algorithm::ALL {
        let memory_store = MemoryStore::default();
        let start = start(true);
        let (from_redis, from_memory) = tokio::join!(
            run_weighed(&redis_store, *algorithm, start),
            run_weighed(&memory_store, *algorithm, start)
        );
        assert_eq!(from_redis, from_memory, "{}", algorithm.name());
        let allowed: Vec<bool> = from_memory.iter().map(|(d, _)| d.0).collect();
        assert_eq!(
            allowed,
            [true, true, false, true, false, false, true, true, true, true],
            "{}",
            algorithm.name()
        );
        // The settlements: 2 back, 3 charged, 10 back.
        let given: Vec<i64> = from_memory.iter().filter_map(|(_, g)| *g).collect();
        assert_eq!(&given[..3], [2, -3, 10], "{}", algorithm.name());
    }
    // The sliding log counts exactly: after the window, only what the late requests hold.
    let log = run_weighed(&MemoryStore::default(), SlidingLog, start(false)).await;
    assert_eq!(log[3].0, (true, 10, 0), "8 in use, then the 2");
    assert_eq!(
        log[5].0,
        (false, 13, 0),
        "the charge took the key past its limit"
    );
    assert_eq!(log[8].0, (true, 1, 9), "the window has passed");
}

/// Polls `probe` every 20 ms until it holds, or panics after `limit`.
async fn until(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A give-back that makes room for a refusal nodes remember is published: every node (two
/// stores on one Redis here) forgets it, and the next request is asked of Redis and allowed.
#[tokio::test]
async fn a_give_back_makes_every_node_forget_a_refusal_it_remembers() {
    let redis = RedisServer::start();
    let (a, b) = (connected(&redis).await, connected(&redis).await);
    let limit = Limit::sliding_log(
        NonZeroU32::new(10).unwrap(),
        NonZeroU64::new(60_000).unwrap(),
    );
    let big = Check {
        cost: 10,
        ..Check::new("default", "g".to_string(), limit)
    };
    let one = Check {
        cost: 1,
        ..big.clone()
    };
    let taken = a.decide(std::slice::from_ref(&big), R).await.unwrap()[0].unwrap();
    assert!(taken.allowed);
    // Each node refuses one unit and remembers it (once it hears resets: its subscription
    // comes up after it connects).
    for node in [&a, &b] {
        until(
            "the refusal remembered",
            Duration::from_secs(5),
            async || {
                let d = node.decide(std::slice::from_ref(&one), R).await.unwrap();
                assert!(!d[0].unwrap().allowed);
                node.decide_local(std::slice::from_ref(&one), R).is_some()
            },
        )
        .await;
    }
    let settled = Settlement {
        check: big,
        mark: taken.mark,
        actual: 2,
        max_cost: 10,
    };
    assert_eq!(a.settle(&[settled]).await.unwrap(), [8]);
    for node in [&a, &b] {
        until(
            "the refusal forgotten",
            Duration::from_secs(2),
            async || node.decide_local(std::slice::from_ref(&one), R).is_none(),
        )
        .await;
    }
    let d = b.decide(std::slice::from_ref(&one), R).await.unwrap()[0].unwrap();
    assert_eq!((d.allowed, d.count), (true, 3));
}

/// A concurrency step: take a slot of a key (limit 2), or settle the slot the n-th step took
/// at 0 (free it) or 1 (renew it).
#[derive(Clone, Copy)]
enum Slot {
    Take,
    Free(usize),
    Renew(usize),
}

/// Slots live one window (1200 ms) unless renewed.
const SLOTS: &[(u64, Slot)] = &[
    (0, Slot::Take),
    (0, Slot::Take),
    (0, Slot::Take), // refused: two in flight
    (0, Slot::Free(0)),
    (0, Slot::Take), // the freed one's place
    (300, Slot::Renew(1)),
    (300, Slot::Free(0)), // freed already: nothing
    (1400, Slot::Take),   // the slot taken at 0 expired; the renewed one lives to 1500
    (1400, Slot::Take),   // refused
    (1700, Slot::Take),   // the renewed one expired too
    (1700, Slot::Take),   // refused
];

/// Per step: the decision's (allowed, count, remaining, retry_after_ms > 0), or a
/// settlement's slots freed.
async fn run_slots(store: &dyn Decide, start: Instant) -> Vec<(bool, u64, u64, bool, i64)> {
    let check = Check::new(
        "default",
        "slots".to_string(),
        Limit::new(
            Algorithm::Concurrency,
            NonZeroU32::new(2).unwrap(),
            NonZeroU64::new(WINDOW_MS).unwrap(),
        ),
    );
    let (mut out, mut marks) = (Vec::new(), Vec::new());
    for (at, step) in SLOTS {
        tokio::time::sleep_until((start + Duration::from_millis(*at)).into()).await;
        let settle = |i: usize, actual| Settlement {
            check: check.clone(),
            mark: marks[i],
            actual,
            max_cost: 1,
        };
        match *step {
            Slot::Take => {
                let d = store.decide(std::slice::from_ref(&check), R).await.unwrap()[0].unwrap();
                marks.push(d.mark);
                out.push((d.allowed, d.count, d.remaining, d.retry_after_ms > 0, 0));
            }
            Slot::Free(i) | Slot::Renew(i) => {
                let actual = u32::from(matches!(step, Slot::Renew(_)));
                let given = store.settle(&[settle(i, actual)]).await.unwrap()[0];
                marks.push(0);
                out.push((true, 0, 0, false, given));
            }
        }
    }
    out
}

#[tokio::test]
async fn concurrency_slots_decide_alike_in_redis_and_memory() {
    let redis = RedisServer::start();
    let redis_store = connected(&redis).await;
    let memory_store = MemoryStore::default();
    let start = start(false);
    let (from_redis, from_memory) = tokio::join!(
        run_slots(&redis_store, start),
        run_slots(&memory_store, start)
    );
    assert_eq!(from_redis, from_memory);
    let allowed: Vec<bool> = from_memory.iter().map(|s| s.0).collect();
    assert_eq!(
        allowed,
        [true, true, false, true, true, true, true, true, false, true, false]
    );
    let freed: Vec<i64> = from_memory.iter().map(|s| s.4).collect();
    assert_eq!(freed[3], 1, "freed");
    assert_eq!((freed[5], freed[6]), (0, 0), "renewed; freed once only");
    assert_eq!(
        from_memory[2],
        (false, 2, 0, true, 0),
        "refused with a wait"
    );
    // Counted with the slot just taken: one other live.
    assert_eq!(from_memory[7].1, 2, "at 1400, the renewed slot lives");
    assert_eq!(
        from_memory[9].1, 2,
        "at 1700, only the slot taken at 1400 lives"
    );
}

/// A gcra key with `delay`: a burst of its limit at once, then requests delayed by the wait
/// up to max_delay_ms, then refused, told to come back when a delay would do.
#[tokio::test]
async fn delays_decide_alike_in_redis_and_memory() {
    let redis = RedisServer::start();
    let redis_store = connected(&redis).await;
    let memory_store = MemoryStore::default();
    // Two per 1200 ms: one every 600 ms; up to 700 ms of delay.
    let check = Check {
        wait: ratelimiter::limiter::Wait {
            max_delay_ms: 700,
            queue: None,
        },
        ..Check::new(
            "default",
            "paced".to_string(),
            Limit::new(
                Gcra,
                NonZeroU32::new(2).unwrap(),
                NonZeroU64::new(WINDOW_MS).unwrap(),
            ),
        )
    };
    let burst = async |store: &dyn Decide| {
        let mut out = Vec::new();
        for _ in 0..5 {
            let d = store.decide(std::slice::from_ref(&check), R).await.unwrap()[0].unwrap();
            out.push((d.allowed, d.delay_ms, d.retry_after_ms));
        }
        out
    };
    let (from_redis, from_memory) = tokio::join!(burst(&redis_store), burst(&memory_store));
    for (r, m) in from_redis.iter().zip(&from_memory) {
        assert_eq!(r.0, m.0);
        assert!(r.1.abs_diff(m.1) <= CLOCK_SLACK_MS && r.2.abs_diff(m.2) <= CLOCK_SLACK_MS);
    }
    let shape: Vec<(bool, bool)> = from_memory.iter().map(|d| (d.0, d.1 > 0)).collect();
    assert_eq!(
        shape,
        [
            (true, false),
            (true, false),
            (true, true),
            (false, false),
            (false, false)
        ]
    );
    assert!(
        from_memory[2].1.abs_diff(600) <= CLOCK_SLACK_MS,
        "{from_memory:?}"
    );
    // The next would wait 1200 ms: refused, to come back in 500 (1200 - 700).
    assert!(
        from_memory[3].2.abs_diff(500) <= CLOCK_SLACK_MS,
        "{from_memory:?}"
    );
}
