//! The embedded store: counters in this process's memory, for a single node. The arithmetic is
//! the algorithms' own ([`crate::limiter::algo`]); this file only keeps their state.
//!
//! Keys are spread over shards, each behind its own mutex, so concurrent requests for
//! different keys rarely contend. A request with several checks locks the shards of all its
//! keys, always in shard order (so two requests cannot deadlock), and decides them together.
//! A key whose state has emptied is idle: each shard sweeps its idle keys at most once a
//! second when it is next touched, and gives the memory back, so a flood of distinct keys
//! costs memory for at most one window.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::limiter::algo::{Algorithm, Decision, State};
use crate::limiter::{Check, Counter, Counters, Decide, Limit, Mode, Settlement, StoreError};
use crate::sync::lock;

/// A source of monotonic microseconds; tests drive a manual one.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> u64;
}

/// Microseconds since the Unix epoch as of the store's creation, then counted by the
/// monotonic clock: fixed windows line up with the epoch as Redis's do, and a step of the
/// wall clock never moves time backwards for the counters.
pub struct MonotonicClock {
    start: Instant,
    epoch_us: u64,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        MonotonicClock {
            start: Instant::now(),
            epoch_us,
        }
    }
}

impl Clock for MonotonicClock {
    fn now_us(&self) -> u64 {
        self.epoch_us + self.start.elapsed().as_micros() as u64
    }
}

const SHARDS: usize = 64;
const SWEEP_EVERY_US: u64 = 1_000_000;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Shard {
    counters: HashMap<Box<str>, State>,
    next_sweep_us: u64,
}

impl Shard {
    /// Drops idle keys and returns their memory, at most once a second.
    fn sweep_if_due(&mut self, now_us: u64) {
        if now_us >= self.next_sweep_us {
            self.sweep(now_us);
        }
    }

    fn sweep(&mut self, now_us: u64) {
        self.counters.retain(|_, state| {
            state.shrink();
            !state.is_idle(now_us)
        });
        if self.counters.capacity() > 2 * self.counters.len() + 64 {
            self.counters.shrink_to_fit();
        }
        self.next_sweep_us = now_us + SWEEP_EVERY_US;
    }

    fn peek(&mut self, check: &Check, now_us: u64) -> Decision {
        let quota = check.limit.quota;
        match self.counters.get_mut(check.key.as_str()) {
            Some(state) if state.algorithm() == check.limit.algorithm => {
                state.peek(now_us, quota, check.cost)
            }
            // New, or its rule changed algorithm on reload: it starts afresh.
            _ => State::new(check.limit.algorithm).peek(now_us, quota, check.cost),
        }
        .delayed(check.wait.max_delay_ms, check.cost)
    }

    fn record(&mut self, check: &Check, now_us: u64, decision: &mut Decision) {
        let algorithm = check.limit.algorithm;
        let state = match self.counters.get_mut(check.key.as_str()) {
            Some(state) if state.algorithm() == algorithm => state,
            Some(state) => {
                *state = State::new(algorithm);
                state
            }
            None => self
                .counters
                .entry(check.key.as_str().into())
                .or_insert_with(|| State::new(algorithm)),
        };
        state.record(now_us, check.limit.quota, check.cost, decision);
    }

    fn settle(&mut self, s: &Settlement, now_us: u64) -> i64 {
        match self.counters.get_mut(s.check.key.as_str()) {
            Some(state) if state.algorithm() == s.check.limit.algorithm => {
                state.settle(now_us, s.check.limit.quota, s.mark, s.check.cost, s.actual)
            }
            // A GCRA key whose TAT has passed is gone here as in Redis, and a charge still
            // applies to it (from now), as the script's does.
            None if s.check.limit.algorithm == Algorithm::Gcra && s.actual > s.check.cost => {
                let mut state = State::new(Algorithm::Gcra);
                let given =
                    state.settle(now_us, s.check.limit.quota, s.mark, s.check.cost, s.actual);
                self.counters.insert(s.check.key.as_str().into(), state);
                given
            }
            // Reset, expired, or its rule changed algorithm: nothing to settle.
            _ => 0,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_clock(Arc::new(MonotonicClock::default()))
    }
}

impl MemoryStore {
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            clock,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    /// The decision itself, synchronous: it never waits on anything but shard locks. Every
    /// entry is `Some` (this store always knows).
    pub fn decide_now(&self, checks: &[Check], mode: Mode) -> Vec<Option<Decision>> {
        let now = self.clock.now_us();
        if let [check] = checks {
            // One check, one lock: the common case, without the bookkeeping below.
            let mut shard = lock(&self.shards[self.shard_of(&check.key)]);
            shard.sweep_if_due(now);
            let mut decision = shard.peek(check, now);
            if mode.record && decision.allowed {
                shard.record(check, now, &mut decision);
            }
            return vec![Some(decision)];
        }
        // Lock every shard involved, in shard order; `slot(i)` is the guard of checks[i].
        let of_check: Vec<usize> = checks.iter().map(|c| self.shard_of(&c.key)).collect();
        let mut order = of_check.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            order.iter().map(|&i| lock(&self.shards[i])).collect();
        let slot = |i: usize| order.binary_search(&of_check[i]).unwrap_or(0);
        for guard in guards.iter_mut() {
            guard.sweep_if_due(now);
        }

        let mut decisions: Vec<Decision> = checks
            .iter()
            .enumerate()
            .map(|(i, c)| guards[slot(i)].peek(c, now))
            .collect();
        let blocked = checks
            .iter()
            .zip(&decisions)
            .any(|(c, d)| !c.shadow && !d.allowed);
        if mode.record && !blocked {
            for (i, (check, decision)) in checks.iter().zip(decisions.iter_mut()).enumerate() {
                if decision.allowed {
                    guards[slot(i)].record(check, now, decision);
                }
            }
        }
        decisions.into_iter().map(Some).collect()
    }

    /// Keys currently held, idle or not (for memory accounting in tests and benches).
    pub fn held_keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).counters.len()).sum()
    }

    /// Runs every shard's idle sweep now.
    pub fn sweep_all(&self) {
        let now = self.clock.now_us();
        for shard in self.shards.iter() {
            lock(shard).sweep(now);
        }
    }
}

/// A poisoned shard still holds consistent data (no code panics while holding it half-updated),
/// so keep serving rather than take the node down.

#[async_trait]
impl Decide for MemoryStore {
    async fn decide(
        &self,
        checks: &[Check],
        mode: Mode,
    ) -> Result<Vec<Option<Decision>>, StoreError> {
        Ok(self.decide_now(checks, mode))
    }

    fn decide_local(&self, checks: &[Check], mode: Mode) -> Option<Vec<Option<Decision>>> {
        Some(self.decide_now(checks, mode))
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<i64>, StoreError> {
        let now = self.clock.now_us();
        Ok(settlements
            .iter()
            .map(|s| lock(&self.shards[self.shard_of(&s.check.key)]).settle(s, now))
            .collect())
    }
}

#[async_trait]
impl Counters for MemoryStore {
    async fn counters(
        &self,
        limit_of: &(dyn for<'k> Fn(&'k str) -> Limit + Send + Sync),
    ) -> Result<Vec<Counter>, StoreError> {
        let now = self.clock.now_us();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            for (key, state) in shard.counters.iter_mut() {
                let count = state.count(now, limit_of(key).quota);
                if count > 0 {
                    out.push(Counter {
                        key: key.to_string(),
                        count,
                        leased: 0,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn count(&self, key: &str, limit: Limit) -> Result<Option<Counter>, StoreError> {
        let now = self.clock.now_us();
        let mut shard = lock(&self.shards[self.shard_of(key)]);
        let count = shard
            .counters
            .get_mut(key)
            .map_or(0, |state| state.count(now, limit.quota));
        Ok((count > 0).then(|| Counter {
            key: key.to_string(),
            count,
            leased: 0,
        }))
    }

    async fn active_counters(&self) -> Result<u64, StoreError> {
        let now = self.clock.now_us();
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            for state in shard.counters.values_mut() {
                total += u64::from(!state.is_idle(now));
            }
        }
        Ok(total)
    }

    async fn reset(&self, key: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.shards[self.shard_of(key)])
            .counters
            .remove(key)
            .is_some())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limit;
    use std::num::{NonZeroU32, NonZeroU64};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Milliseconds, set by the test.
    #[derive(Default)]
    struct ManualClock(AtomicU64);
    impl Clock for ManualClock {
        fn now_us(&self) -> u64 {
            self.0.load(Ordering::SeqCst) * 1000
        }
    }

    fn check(key: &str, limit: u32, window_ms: u64) -> Check {
        Check {
            rule: "default",
            key: key.to_string(),
            limit: Limit::sliding_log(
                NonZeroU32::new(limit).unwrap(),
                NonZeroU64::new(window_ms).unwrap(),
            ),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
            cost: 1,
            wait: Default::default(),
            period_ms: 0,
        }
    }

    fn one(store: &MemoryStore, c: &Check) -> Decision {
        all(store, std::slice::from_ref(c), Mode::RECORD)[0]
    }

    fn all(store: &MemoryStore, checks: &[Check], mode: Mode) -> Vec<Decision> {
        store
            .decide_now(checks, mode)
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }

    #[test]
    fn limits_and_slides() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        let c = check("k", 2, 100);
        let d = one(&store, &c);
        assert_eq!((d.allowed, d.count, d.remaining), (true, 1, 1));
        clock.0.store(10, Ordering::SeqCst);
        assert!(one(&store, &c).allowed);
        let blocked = one(&store, &c);
        assert!(!blocked.allowed);
        assert_eq!(blocked.retry_after_ms, 90);
        // The first entry (t=0) leaves at t=100.
        clock.0.store(100, Ordering::SeqCst);
        assert!(one(&store, &c).allowed);
        assert!(!one(&store, &c).allowed);
    }

    #[test]
    fn blocked_by_one_check_is_recorded_in_none() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        let (wide, narrow) = (check("wide", 10, 1000), check("narrow", 1, 1000));
        let both = [wide.clone(), narrow.clone()];
        let d = all(&store, &both, Mode::RECORD);
        assert_eq!((d[0].count, d[1].count), (1, 1));
        let d = all(&store, &both, Mode::RECORD);
        assert!(d[0].allowed && !d[1].allowed);
        // The wide counter was not charged for the refused request.
        assert_eq!(d[0].count, 1);
        assert_eq!(one(&store, &wide).count, 2);
    }

    #[test]
    fn a_shadow_check_never_blocks_and_is_not_charged_past_its_limit() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        let mut dry = check("dry", 1, 1000);
        dry.shadow = true;
        let both = [check("real", 10, 1000), dry];
        for n in 1..=3 {
            let d = all(&store, &both, Mode::RECORD);
            assert_eq!(d[0].count, n, "the enforced check records every request");
            assert_eq!(d[1].allowed, n == 1);
            assert_eq!(d[1].count, 1);
        }
    }

    #[test]
    fn dry_runs_record_nothing() {
        let store = MemoryStore::default();
        let c = check("k", 1, 60_000);
        for _ in 0..3 {
            let d = all(&store, std::slice::from_ref(&c), Mode::DRY_RUN);
            assert_eq!((d[0].allowed, d[0].count), (true, 0));
        }
        assert_eq!(store.held_keys(), 0);
    }

    #[test]
    fn idle_keys_are_swept() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        for i in 0..10_000 {
            one(&store, &check(&format!("k{i}"), 5, 100));
        }
        assert_eq!(store.held_keys(), 10_000);
        clock.0.store(5_000, Ordering::SeqCst);
        one(&store, &check("fresh", 5, 100));
        store.sweep_all();
        assert_eq!(store.held_keys(), 1);
    }

    #[tokio::test]
    async fn counters_exclude_expired_entries_and_reset_forgets() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        one(&store, &check("a", 5, 100));
        clock.0.store(60, Ordering::SeqCst);
        one(&store, &check("a", 5, 100));
        one(&store, &check("b", 5, 100));
        clock.0.store(100, Ordering::SeqCst);
        let limit = check("a", 5, 100).limit;
        let counters = store.counters(&move |_| limit).await.unwrap();
        let a = counters.iter().find(|c| c.key == "a").unwrap();
        assert_eq!(a.count, 1);
        assert!(store.reset("a").await.unwrap());
        assert!(!store.reset("a").await.unwrap());
        assert!(one(&store, &check("a", 1, 100)).allowed);
    }
}
