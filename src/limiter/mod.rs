//! Deciding: one [`Store`] trait with two implementations of the same sliding-window log
//! ([`window`]): the embedded [`memory::MemoryStore`] for a single node, and
//! [`redis::RedisStore`], shared by every node. [`policy::Limiter`] wraps either with the
//! time bound and the fail-open/fail-closed policy.

pub mod blocked;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod scan;
pub mod window;

use std::fmt;

use async_trait::async_trait;

pub use policy::{Limiter, Verdict};
pub use window::Decision;

use crate::config::Quota;

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
    /// The request key, without the `ratelimit:` prefix.
    pub key: String,
    /// Entries in the window now (expired ones excluded).
    pub count: u64,
}

/// Where the sliding-window logs live.
#[async_trait]
pub trait Store: Send + Sync {
    /// Checks one request for `key` and records it when allowed, atomically.
    async fn check(&self, key: &str, quota: Quota) -> Result<Decision, StoreError>;

    /// Every key with at least one entry in its window.
    async fn counters(&self) -> Result<Vec<Counter>, StoreError>;

    /// How many keys have a live entry (the `ratelimiter_active_counters` gauge). May count a
    /// key twice while Redis rehashes; never walks the entries themselves.
    async fn active_counters(&self) -> Result<u64, StoreError>;

    /// Forgets a key's log; returns whether it existed.
    async fn reset(&self, key: &str) -> Result<bool, StoreError>;

    /// Whether the store answers now.
    async fn ping(&self) -> Result<(), StoreError>;
}
