//! Deciding. A request owes a list of [`Check`]s (one per applied rule, from
//! [`crate::rules`]); a store decides the whole list atomically ([`Decide`]), and [`Limiter`]
//! wraps it with the time bound, the fail-open/fail-closed policy and the metrics.
//!
//! - [`algo`]: each algorithm's arithmetic, pure, apart from where its state lives;
//! - [`store`]: what a store does, by role: the hot path ([`Decide`]) apart from the admin side
//!   ([`Counters`]);
//! - [`backend::memory`]: the embedded store, a single node's own memory;
//! - [`backend::redis`]: the shared store, one Lua script call per request;
//! - [`outcome`]: what a list of decisions means for the request (allowed, which rule shows);
//! - [`policy`]: the [`Limiter`];
//! - [`slots`]: the concurrency slots this node holds for requests in flight (contract §14);
//! - [`queue`]: requests waiting in line for a slot.

pub mod algo;
pub mod backend;
pub mod outcome;
pub mod policy;
pub mod queue;
pub mod slots;
pub mod store;

use std::fmt;

pub use algo::{Algorithm, Decision, Limit, Quota};
pub use outcome::Outcome;
pub use policy::{Limiter, Verdict};
pub use store::{Counters, Decide};

/// One counter a request is checked against: the rule it comes from, its counter key and what
/// it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The rule's name (`default` for `[limits]`).
    pub rule: &'static str,
    /// The counter key, without the store's `ratelimit:` prefix (`login/ip:10.0.0.1`).
    pub key: String,
    pub limit: Limit,
    /// A dry-run rule: decided and counted, never blocking.
    pub shadow: bool,
    /// How the counter is kept in step across nodes.
    pub sync: SyncMode,
    /// Units the request reserves (contract §13): 1 for a request that weighs one.
    pub cost: u32,
    /// How the request may wait instead of being refused (contract §14).
    pub wait: Wait,
    /// For a calendar quota (contract §15), the length of the period the request falls in
    /// (its `limit.quota.window_ms` is the time left until its end); 0 otherwise.
    pub period_ms: u64,
}

/// A check of one unit, kept exactly: the common case.
impl Check {
    pub fn new(rule: &'static str, key: String, limit: Limit) -> Check {
        Check {
            rule,
            key,
            limit,
            shadow: false,
            sync: SyncMode::Exact,
            cost: 1,
            wait: Wait::default(),
            period_ms: 0,
        }
    }

    /// Whether it holds a slot while its request is in flight (contract §14).
    pub fn is_concurrency(&self) -> bool {
        self.limit.algorithm == Algorithm::Concurrency
    }
}

/// How a request may wait instead of being refused (contract §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wait {
    /// A gcra rule's `delay`: a request that would have room within this long is admitted
    /// after that wait instead of refused; 0: never delayed.
    pub max_delay_ms: u64,
    /// A concurrency rule's `queue`: a request without a slot waits in line for one.
    pub queue: Option<Queue>,
}

/// A concurrency rule's line of waiting requests, per key on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// Requests that may wait at once; one more is refused at once.
    pub max_waiting: u32,
    /// How long a request waits before it is refused.
    pub max_wait_ms: u64,
}

/// A recorded request's reservation, settled once its response has told what it really cost
/// (contract §13): the difference between `check.cost` (reserved) and `actual` is given back
/// or charged, in the record the decision's `mark` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub check: Check,
    pub mark: i64,
    pub actual: u32,
    /// The rule's `max_cost`: no request of it can have been refused while more than this
    /// was left, so a give-back below that needs no node to forget a refusal it remembers.
    pub max_cost: u32,
}

/// How a rule's counters are kept in step across gateway nodes (contract §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// One store call per decided request.
    #[default]
    Exact,
    /// Slots leased from the shared counter in batches of `size` (0: about a hundredth of the
    /// limit) for `ms` at most, and spent locally.
    Lease { size: u32, ms: u64 },
}

impl SyncMode {
    /// The default lease length.
    pub const LEASE_MS: u64 = 100;
    /// The largest lease that may be asked for (a lease is never more than the limit).
    pub const LEASE_MAX: u32 = u32::MAX;

    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Exact => "exact",
            SyncMode::Lease { .. } => "lease",
        }
    }

    /// A lease's size and length for a counter of `limit`, when this mode leases.
    pub fn lease(self, limit: u32) -> Option<(u64, u64)> {
        match self {
            SyncMode::Exact => None,
            SyncMode::Lease { size, ms } => {
                let size = if size == 0 {
                    limit / 100
                } else {
                    size.min(limit)
                };
                Some((u64::from(size.max(1)), ms.max(1)))
            }
        }
    }
}

/// What a decision does beside deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Record the request where every enforced check has room (the proxy, `/check`); `false`
    /// only looks (`/api/explain`) and writes nothing.
    pub record: bool,
    /// Work out `reset_ms` for checks with room too (the IETF `t`); it costs the Redis store
    /// one more read per check, so only the IETF header style asks for it.
    pub reset: bool,
}

impl Mode {
    pub const RECORD: Mode = Mode {
        record: true,
        reset: false,
    };
    pub const DRY_RUN: Mode = Mode {
        record: false,
        reset: false,
    };

    pub const fn with_reset(self, reset: bool) -> Mode {
        Mode { reset, ..self }
    }
}

/// Why the store could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within `redis.timeout_ms`.
    Timeout,
    /// Connection refused, reset or not yet established.
    Connection(String),
    /// Redis answered with an error, or with a reply the gateway does not understand.
    Reply(String),
}

impl StoreError {
    /// The `kind` label of `ratelimiter_store_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Connection(_) => "connection",
            StoreError::Reply(_) => "reply",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("timed out"),
            StoreError::Connection(e) => write!(f, "connection: {e}"),
            StoreError::Reply(e) => write!(f, "reply: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A live counter, as listed by the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// The counter key, without the `ratelimit:` prefix.
    pub key: String,
    /// Requests in its window now (expired ones excluded).
    pub count: u64,
    /// Slots of it this node has leased and not yet used.
    pub leased: u64,
}

#[cfg(test)]
mod tests {
    use super::SyncMode;

    #[test]
    fn lease_sizes() {
        assert_eq!(SyncMode::Exact.lease(100), None);
        let auto = SyncMode::Lease { size: 0, ms: 100 };
        assert_eq!(auto.lease(10_000), Some((100, 100)));
        assert_eq!(auto.lease(50), Some((1, 100)), "at least one slot");
        assert_eq!(auto.lease(1_000_000_000), Some((10_000_000, 100)));
        let asked = SyncMode::Lease { size: 500, ms: 0 };
        assert_eq!(
            asked.lease(200),
            Some((200, 1)),
            "never more than the limit"
        );
    }
}
