//! The limiting algorithms, as pure arithmetic over one counter's state, apart from where that
//! state is stored. Each algorithm is one module here and one Lua file in `lua/`, with the same
//! two steps in both:
//!
//! 1. `peek`: the decision as if the request were *not* recorded (is there room, how much is
//!    left, when does more free up). A request with several rules peeks at all of them first.
//! 2. `record`: only when every enforced rule had room, each rule with room records the request
//!    and its decision is updated to count it.
//! 3. `settle` (contract §13): later, once the response has told what the request really
//!    cost, its record (found again by the decision's `mark`) is given back or charged the
//!    difference.
//!
//! Counts are in units: a request of `cost` units needs room for all of them, and records
//! them all (one entry of that weight in a log).
//!
//! The embedded store keeps a [`State`] per counter key and calls these functions under a lock;
//! the Redis store runs the Lua twins inside one script call. Each algorithm is registered once,
//! in [`REGISTRY`]: its name in the config, its id in the scripts and its Lua file; the scripts'
//! table of algorithms by id is generated from it ([`lua_dispatch`]), and a unit test checks
//! the Lua files against it. `tests/store_equivalence.rs` runs one trace through both stores,
//! for every algorithm.
//!
//! | algorithm | state per key | exact? |
//! |---|---|---|
//! | [`sliding_log`] | one entry per allowed request in the window | yes: never more than `limit` in any window |
//! | [`gcra`] | one timestamp | yes for its own rule: a burst of `limit`, then one per `window / limit` |
//! | [`sliding_window`] | two counts | an estimate: at most `limit` per fixed window, `2 × limit` in any window |
//! | [`concurrency`] | one slot per request in flight | yes: never more than `limit` in flight (contract §14) |
//! | [`calendar`] | one count per key | yes: never more than `limit` in a calendar period (contract §15) |
//!
//! Concurrency is registered like the others, with its `limit` the slots and its `window_ms`
//! the slots' time to live, but is not written as an `algorithm`: a rule says `concurrency`.
//! Calendar quotas likewise (a rule says `period`); their `window_ms` is, per request, the
//! time left until the period's end, which the gateway works out in the rule's zone.

pub mod calendar;
pub mod concurrency;
pub mod gcra;
pub mod sliding_log;
pub mod sliding_window;

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::str::FromStr;

/// At most `limit` requests in any `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub limit: NonZeroU32,
    pub window_ms: NonZeroU64,
}

/// How a counter decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// The exact sliding-window log: one entry per allowed request in the window.
    SlidingLog,
    /// The generic cell rate algorithm: one timestamp per key.
    Gcra,
    /// The weighted two-window counter: two counts per key.
    SlidingWindow,
    /// Requests in flight (contract §14): one slot per request until its response ends.
    Concurrency,
    /// A quota per calendar day, week or month (contract §15).
    Calendar,
}

/// One algorithm, as everything that dispatches on it knows it.
pub struct Registered {
    pub algorithm: Algorithm,
    /// Its name in the config (`algorithm = "gcra"`) and the admin API.
    pub name: &'static str,
    /// The number the Redis scripts dispatch on.
    pub id: u8,
    /// Its Lua file, which defines a function of the same name as `name` returning the
    /// algorithm's steps (`lua/sliding_log.lua` says which).
    pub lua: &'static str,
}

/// Every algorithm, once. Adding one is a line here, its Rust module and state, and its Lua
/// file; the scripts' dispatch follows from this table.
pub const REGISTRY: [Registered; 5] = [
    Registered {
        algorithm: Algorithm::SlidingLog,
        name: "sliding_log",
        id: 1,
        lua: include_str!("../../../lua/sliding_log.lua"),
    },
    Registered {
        algorithm: Algorithm::Gcra,
        name: "gcra",
        id: 2,
        lua: include_str!("../../../lua/gcra.lua"),
    },
    Registered {
        algorithm: Algorithm::SlidingWindow,
        name: "sliding_window",
        id: 3,
        lua: include_str!("../../../lua/sliding_window.lua"),
    },
    Registered {
        algorithm: Algorithm::Concurrency,
        name: "concurrency",
        id: 4,
        lua: include_str!("../../../lua/concurrency.lua"),
    },
    Registered {
        algorithm: Algorithm::Calendar,
        name: "calendar",
        id: 5,
        lua: include_str!("../../../lua/calendar.lua"),
    },
];

/// The Lua that defines every algorithm and `ALGORITHMS`, the table the scripts dispatch on
/// (id → the algorithm's function), for the scripts to start with.
pub fn lua_dispatch() -> String {
    let mut out = String::new();
    for r in &REGISTRY {
        out.push_str(r.lua);
        out.push('\n');
    }
    out.push_str("local ALGORITHMS = {");
    for r in &REGISTRY {
        out.push_str(&format!("[{}] = {}, ", r.id, r.name));
    }
    out.push_str("}\n");
    out
}

impl Algorithm {
    /// The rate algorithms, which a rule names in `algorithm`.
    pub const ALL: &'static [Algorithm] = &[
        Algorithm::SlidingLog,
        Algorithm::Gcra,
        Algorithm::SlidingWindow,
    ];

    fn registered(self) -> &'static Registered {
        // Each algorithm is in the registry: the unit test below checks every one.
        REGISTRY
            .iter()
            .find(|r| r.algorithm == self)
            .unwrap_or(&REGISTRY[0])
    }

    pub fn name(self) -> &'static str {
        self.registered().name
    }

    /// Whether a node may remember a key this algorithm refused (`blocked.rs`) until the
    /// refusal's wait is over. Not for concurrency, whose slots free whenever a response
    /// ends, nor for calendar quotas, whose limit is told anew (the time left) on every
    /// request.
    pub fn refusals_remembered(self) -> bool {
        !matches!(self, Algorithm::Concurrency | Algorithm::Calendar)
    }

    /// The number the Redis scripts dispatch on (`ALGORITHMS` in the scripts).
    pub fn script_id(self) -> u8 {
        self.registered().id
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Algorithm::ALL
                    .iter()
                    .map(|a| format!("{:?}", a.name()))
                    .collect();
                let (last, rest) = names.split_last().expect("at least one algorithm");
                let list = match rest {
                    [] => last.clone(),
                    _ => format!("{} or {last}", rest.join(", ")),
                };
                format!("expected {list}, found {s:?}")
            })
    }
}

/// What one counter applies: an algorithm and its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub quota: Quota,
}

impl Limit {
    pub fn new(algorithm: Algorithm, limit: NonZeroU32, window_ms: NonZeroU64) -> Limit {
        Limit {
            algorithm,
            quota: Quota { limit, window_ms },
        }
    }

    pub fn sliding_log(limit: NonZeroU32, window_ms: NonZeroU64) -> Limit {
        Limit::new(Algorithm::SlidingLog, limit, window_ms)
    }
}

/// One counter's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether this counter had room for the request.
    pub allowed: bool,
    /// Requests in the window after this decision (counting this one when it was recorded).
    pub count: u64,
    pub limit: u32,
    /// Further requests this counter would allow now.
    pub remaining: u64,
    /// Milliseconds until this counter has room again; 0 when it has room.
    pub retry_after_ms: u64,
    /// For an allowed request of a rule with `delay` (contract §14): how long it waits before
    /// it is proxied; its place was reserved at arrival. 0 for every other decision.
    pub delay_ms: u64,
    /// Milliseconds until more of the quota frees up (the next entry leaves the window); 0
    /// when nothing is in use. For a check with room, the Redis store works it out only when
    /// asked ([`crate::limiter::Mode::reset`]), and says 0 otherwise.
    pub reset_ms: u64,
    /// Where the store put the request's record, for settling it later: the time of a log's
    /// entry (ms), the window index of a sliding window's count; 0 when nothing was recorded
    /// (and always for GCRA, which needs none).
    pub mark: i64,
}

impl Decision {
    /// Room for the request: `count` in use of `limit` (the request's units included once
    /// it is recorded), `remaining` more allowed now, more of the quota frees in `reset_ms`.
    pub fn room(count: u64, limit: u32, remaining: u64, reset_ms: u64) -> Decision {
        Decision {
            allowed: true,
            count,
            limit,
            remaining,
            retry_after_ms: 0,
            reset_ms,
            mark: 0,
            delay_ms: 0,
        }
    }

    /// A refusal: `count` in use of `limit`, and a slot frees in `wait_ms` (also the reset).
    pub fn refused(count: u64, limit: u32, wait_ms: u64) -> Decision {
        Decision {
            allowed: false,
            count,
            limit,
            remaining: 0,
            retry_after_ms: wait_ms,
            reset_ms: wait_ms,
            mark: 0,
            delay_ms: 0,
        }
    }

    /// This decision for a rule that may delay a request by up to `max_delay_ms` instead of
    /// refusing it (contract §14, gcra): a refusal that would have room within that time
    /// becomes an admission delayed by the wait, and a longer one is told to come back when
    /// a delayed admission would be possible. `lua/check.lua` does the same.
    ///
    /// A request of more units than the limit never fits, and is never delayed (its wait is
    /// only what it is told).
    pub fn delayed(mut self, max_delay_ms: u64, cost: u32) -> Decision {
        if max_delay_ms == 0 || self.allowed || cost > self.limit {
            return self;
        }
        if self.retry_after_ms <= max_delay_ms {
            // Admitted ahead of its rate: nothing more is left, nothing frees before it.
            self.allowed = true;
            self.delay_ms = self.retry_after_ms;
            self.retry_after_ms = 0;
            self.remaining = 0;
            self.reset_ms = 0;
        } else {
            self.retry_after_ms = (self.retry_after_ms - max_delay_ms).max(1);
            self.reset_ms = self.retry_after_ms;
        }
        self
    }

    /// `Retry-After`: whole seconds, rounded up, at least 1 when blocked (contract §3.4).
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            0
        } else {
            self.retry_after_ms.div_ceil(1000).max(1)
        }
    }

    /// Whole seconds until more quota frees up, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000)
    }
}

/// One counter's state in the embedded store. Times are microseconds since the Unix epoch, as
/// the Redis scripts see them (`TIME`).
#[derive(Debug)]
pub enum State {
    Log(sliding_log::Log),
    Gcra(gcra::Gcra),
    Window(sliding_window::SlidingWindow),
    Slots(concurrency::Slots),
    Fixed(calendar::Fixed),
}

impl State {
    pub fn new(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::SlidingLog => State::Log(Default::default()),
            Algorithm::Gcra => State::Gcra(Default::default()),
            Algorithm::SlidingWindow => State::Window(Default::default()),
            Algorithm::Concurrency => State::Slots(Default::default()),
            Algorithm::Calendar => State::Fixed(Default::default()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            State::Log(_) => Algorithm::SlidingLog,
            State::Gcra(_) => Algorithm::Gcra,
            State::Window(_) => Algorithm::SlidingWindow,
            State::Slots(_) => Algorithm::Concurrency,
            State::Fixed(_) => Algorithm::Calendar,
        }
    }

    /// The decision for a request of `cost` units as if it were not recorded; may drop what
    /// has expired.
    pub fn peek(&mut self, now_us: u64, quota: Quota, cost: u32) -> Decision {
        match self {
            State::Log(s) => s.peek(now_us / 1000, quota, cost),
            State::Gcra(s) => s.peek(now_us, quota, cost),
            State::Window(s) => s.peek(now_us / 1000, quota, cost),
            State::Slots(s) => s.peek(now_us / 1000, quota),
            State::Fixed(s) => s.peek(now_us, quota, cost),
        }
    }

    /// Records an allowed request of `cost` units and updates its decision to count it.
    pub fn record(&mut self, now_us: u64, quota: Quota, cost: u32, decision: &mut Decision) {
        match self {
            State::Log(s) => s.record(now_us / 1000, quota, cost, decision),
            State::Gcra(s) => s.record(now_us, quota, cost, decision),
            State::Window(s) => s.record(now_us / 1000, quota, cost, decision),
            State::Slots(s) => s.record(now_us / 1000, quota, decision),
            State::Fixed(s) => s.record(now_us, quota, cost, decision),
        }
    }

    /// Settles a recorded request (its decision's `mark`) from `reserved` units to `actual`;
    /// returns the units given back (negative: charged).
    pub fn settle(
        &mut self,
        now_us: u64,
        quota: Quota,
        mark: i64,
        reserved: u32,
        actual: u32,
    ) -> i64 {
        let mark = mark.max(0) as u64;
        match self {
            State::Log(s) => s.settle(now_us / 1000, mark, reserved, actual),
            State::Gcra(s) => s.settle(now_us, quota, reserved, actual),
            State::Window(s) => s.settle(now_us / 1000, quota, mark, reserved, actual),
            State::Slots(s) => s.settle(now_us / 1000, quota, mark, actual),
            State::Fixed(s) => s.settle(now_us, mark, reserved, actual),
        }
    }

    /// Requests in the window now (the algorithm's own estimate), for listings.
    pub fn count(&mut self, now_us: u64, quota: Quota) -> u64 {
        match self {
            State::Log(s) => s.count(now_us / 1000),
            State::Gcra(s) => s.count(now_us, quota),
            State::Window(s) => s.count(now_us / 1000, quota),
            State::Slots(s) => s.count(now_us / 1000),
            State::Fixed(s) => s.count(now_us),
        }
    }

    /// Whether the state holds nothing that still matters (and may be dropped). Each state
    /// knows the window it was last used with, so no limit is needed.
    pub fn is_idle(&mut self, now_us: u64) -> bool {
        match self {
            State::Log(s) => s.count(now_us / 1000) == 0,
            State::Gcra(s) => s.is_idle(now_us),
            State::Window(s) => s.is_idle(now_us / 1000),
            State::Slots(s) => s.count(now_us / 1000) == 0,
            State::Fixed(s) => s.count(now_us) == 0,
        }
    }

    /// Gives back spare memory after a burst.
    pub fn shrink(&mut self) {
        if let State::Log(log) = self {
            log.shrink();
        }
    }
}

/// A quota of `limit` per `window_ms` (a concurrency rule: slots and their ttl; a calendar
/// quota: the time left in its period), for the algorithms' tests.
#[cfg(test)]
pub(crate) fn test_quota(limit: u32, window_ms: u64) -> Quota {
    Quota {
        limit: std::num::NonZeroU32::new(limit).unwrap(),
        window_ms: std::num::NonZeroU64::new(window_ms).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(*a));
        }
        assert_eq!(
            "leaky".parse::<Algorithm>(),
            Err(r#"expected "sliding_log", "gcra" or "sliding_window", found "leaky""#.to_string())
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let blocked = |ms| Decision {
            allowed: false,
            count: 1,
            limit: 1,
            remaining: 0,
            retry_after_ms: ms,
            reset_ms: ms,
            mark: 0,
            delay_ms: 0,
        };
        assert_eq!(blocked(1).retry_after_secs(), 1);
        assert_eq!(blocked(1000).retry_after_secs(), 1);
        assert_eq!(blocked(1001).retry_after_secs(), 2);
        assert_eq!(blocked(59_999).retry_after_secs(), 60);
        assert_eq!(blocked(1001).reset_secs(), 2);
    }

    #[test]
    fn a_refusal_within_the_delay_is_a_delayed_admission() {
        let refused = |wait| Decision {
            remaining: 1,
            ..Decision::refused(9, 10, wait)
        };
        let d = refused(400).delayed(500, 2);
        assert!(d.allowed);
        assert_eq!((d.delay_ms, d.retry_after_ms, d.remaining), (400, 0, 0));
        let d = refused(800).delayed(500, 2);
        assert!(!d.allowed);
        assert_eq!(
            (d.retry_after_ms, d.reset_ms),
            (300, 300),
            "back when a delay would do"
        );
        assert!(
            !refused(400).delayed(500, 11).allowed,
            "never fits: never delayed"
        );
        assert!(!refused(400).delayed(0, 1).allowed, "no delay");
    }

    /// The registry and the Lua files agree: every algorithm registered once, with a unique
    /// name and id, its file defining the function the scripts' table names and returning the
    /// same steps as every other; and no driver script dispatches on its own.
    #[test]
    fn the_registry_and_the_lua_files_agree() {
        for a in Algorithm::ALL
            .iter()
            .chain([&Algorithm::Concurrency, &Algorithm::Calendar])
        {
            let r = a.registered();
            assert_eq!(r.algorithm, *a);
            assert_eq!(REGISTRY.iter().filter(|o| o.name == r.name).count(), 1);
            assert_eq!(REGISTRY.iter().filter(|o| o.id == r.id).count(), 1);
            assert!(
                r.lua.contains(&format!("\nlocal function {}()\n", r.name)),
                "lua for {} does not define {}()",
                r.name,
                r.name
            );
            assert!(
                r.lua.contains("  return peek, record, release, take, give"),
                "{} returns other steps",
                r.name
            );
            assert!(lua_dispatch().contains(&format!("[{}] = {},", r.id, r.name)));
        }
        assert_eq!(
            REGISTRY.len(),
            Algorithm::ALL.len() + 2,
            "and concurrency, calendar"
        );
        for driver in [
            include_str!("../../../lua/check.lua"),
            include_str!("../../../lua/count.lua"),
            include_str!("../../../lua/release.lua"),
            include_str!("../../../lua/lease.lua"),
        ] {
            for r in &REGISTRY {
                let code: String = driver
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect();
                assert!(
                    !code.contains(&format!("{}(", r.name))
                        && !code.contains(&format!("{},", r.name)),
                    "a driver names {} itself",
                    r.name
                );
            }
        }
    }
}
