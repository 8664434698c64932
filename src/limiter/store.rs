//! What a store does, split by who asks (the embedded store and Redis implement both):
//!
//! - [`Decide`], the hot path: decide a request's checks, from memory when the store knows
//!   the answer without waiting, and give back what the node holds at shutdown. The verbs of
//!   a request's later phases belong here too: settling a reservation once the response has
//!   told its real cost, releasing a slot held while the request was in flight;
//! - [`Counters`], the admin side: list, count and forget counters, and say whether the store
//!   answers. Off the request path, with longer time bounds.

use async_trait::async_trait;

use super::{Check, Counter, Decision, Limit, Mode, Settlement, StoreError};

/// Deciding requests.
#[async_trait]
pub trait Decide: Send + Sync {
    /// Decides a request's checks atomically: each check is peeked at; when every check that is
    /// not a shadow has room (and `mode` records), each check with room records the request.
    /// A request blocked by any check is recorded in none.
    ///
    /// Returns one entry per check, in order. An entry is `None` only when the store knew the
    /// request blocked without asking (a key remembered full): then at least one entry is a
    /// blocked decision of an enforced check. Callers try [`Decide::decide_local`] first; this
    /// does not repeat what it looked at.
    async fn decide(
        &self,
        checks: &[Check],
        mode: Mode,
    ) -> Result<Vec<Option<Decision>>, StoreError>;

    /// What [`Decide::decide`] would return, when the store knows it without waiting (the
    /// embedded store always; Redis from this node's leases or from a key remembered full);
    /// `None` when only `decide` can tell.
    fn decide_local(&self, _checks: &[Check], _mode: Mode) -> Option<Vec<Option<Decision>>> {
        None
    }

    /// Settles recorded requests' reservations (contract §13), all in one call where the
    /// store can: each record's units become its settlement's `actual`. Returns, per
    /// settlement, the units given back (negative: charged); 0 where the record has left
    /// the window or was reset. A concurrency slot (contract §14) settled at 0 is freed
    /// (given back: 1), at 1 renewed (its request still runs).
    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<i64>, StoreError>;

    /// Gives back what this node holds of shared counters at shutdown: the unused slots of
    /// its leases, and `slots`, the concurrency slots of requests that never ended (settled
    /// at 0). Blocks; called outside any runtime.
    fn give_back(&self, _slots: Vec<Settlement>) {}

    /// Keys other nodes may have made room in (a concurrency slot freed on a full key, a
    /// give-back, a reset), as this node hears of them; `None` for a store no other node
    /// shares.
    fn freed(&self) -> Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>> {
        None
    }
}

/// The counters, for the admin API, the registry's gauge and health checks.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Every key with at least one request in its window, counted as the limit `limit_of` gives
    /// it (its rule's, as configured now) counts: each algorithm reports its own estimate.
    async fn counters(
        &self,
        limit_of: &(dyn for<'k> Fn(&'k str) -> Limit + Send + Sync),
    ) -> Result<Vec<Counter>, StoreError>;

    /// One counter, counted as `limit` counts it; `None` when it holds nothing.
    async fn count(&self, key: &str, limit: Limit) -> Result<Option<Counter>, StoreError>;

    /// How many keys have a live entry (the `ratelimiter_active_counters` gauge). May count a
    /// key twice while Redis rehashes; never walks the entries themselves.
    async fn active_counters(&self) -> Result<u64, StoreError>;

    /// Forgets a counter; returns whether it existed.
    async fn reset(&self, key: &str) -> Result<bool, StoreError>;

    /// Whether the store answers now.
    async fn ping(&self) -> Result<(), StoreError>;
}
