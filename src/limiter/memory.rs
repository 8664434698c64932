//! The embedded store: the sliding-window log in this process's memory, for a single node.
//!
//! Keys are spread over shards, each behind its own mutex, so concurrent requests for
//! different keys rarely contend. A key whose log has emptied is idle: each shard sweeps its
//! idle keys at most once a second when it is next touched, and gives the memory back, so a
//! flood of distinct keys costs memory for at most one window.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;

use super::window::{decide, decide_indexed, is_expired, Decision};
use super::{Counter, Store, StoreError};
use crate::config::Quota;

/// A source of monotonic milliseconds; tests drive a manual one.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// Milliseconds since the store was created.
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

const SHARDS: usize = 64;
const SWEEP_EVERY_MS: u64 = 1000;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Shard {
    logs: HashMap<Box<str>, Log>,
    next_sweep_ms: u64,
}

/// One key's log: the times of allowed requests in its window, oldest first.
struct Log {
    window_ms: u64,
    times: VecDeque<u64>,
}

impl Log {
    fn prune(&mut self, now_ms: u64) {
        while self
            .times
            .front()
            .is_some_and(|&t| is_expired(t, now_ms, self.window_ms))
        {
            self.times.pop_front();
        }
    }
}

impl Shard {
    /// Drops idle keys and returns their memory.
    fn sweep(&mut self, now_ms: u64) {
        self.logs.retain(|_, log| {
            log.prune(now_ms);
            if log.times.capacity() > 4 * log.times.len().max(4) {
                log.times.shrink_to_fit();
            }
            !log.times.is_empty()
        });
        if self.logs.capacity() > 2 * self.logs.len() + 64 {
            self.logs.shrink_to_fit();
        }
        self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
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

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        lock(&self.shards[i])
    }

    /// The check itself, synchronous: it never waits on anything but a shard lock.
    pub fn check_now(&self, key: &str, quota: Quota) -> Decision {
        let now = self.clock.now_ms();
        let mut shard = self.shard(key);
        if now >= shard.next_sweep_ms {
            shard.sweep(now);
        }
        let window_ms = quota.window_ms.get();
        let limit = quota.limit.get();
        if let Some(log) = shard.logs.get_mut(key) {
            log.window_ms = window_ms;
            log.prune(now);
            let times = &log.times;
            let decision = decide_indexed(times.len(), |i| times[i], now, limit, window_ms);
            if decision.allowed {
                log.times.push_back(now);
            }
            return decision;
        }
        let decision = decide(&[], now, limit, window_ms);
        let mut times = VecDeque::with_capacity(1);
        times.push_back(now);
        shard.logs.insert(key.into(), Log { window_ms, times });
        decision
    }

    /// Keys currently held, idle or not (for memory accounting in tests and benches).
    pub fn held_keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).logs.len()).sum()
    }

    /// Runs every shard's idle sweep now.
    pub fn sweep_all(&self) {
        let now = self.clock.now_ms();
        for shard in self.shards.iter() {
            lock(shard).sweep(now);
        }
    }
}

/// A poisoned shard still holds consistent data (no code panics while holding it half-updated),
/// so keep serving rather than take the node down.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Store for MemoryStore {
    async fn check(&self, key: &str, quota: Quota) -> Result<Decision, StoreError> {
        Ok(self.check_now(key, quota))
    }

    async fn counters(&self) -> Result<Vec<Counter>, StoreError> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            for (key, log) in shard.logs.iter_mut() {
                log.prune(now);
                if !log.times.is_empty() {
                    out.push(Counter {
                        key: key.to_string(),
                        count: log.times.len() as u64,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn active_counters(&self) -> Result<u64, StoreError> {
        let now = self.clock.now_ms();
        let mut total = 0;
        for shard in self.shards.iter() {
            let shard = lock(shard);
            total += shard
                .logs
                .values()
                .filter(|log| {
                    log.times
                        .back()
                        .is_some_and(|&t| !is_expired(t, now, log.window_ms))
                })
                .count() as u64;
        }
        Ok(total)
    }

    async fn reset(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.shard(key).logs.remove(key).is_some())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU32, NonZeroU64};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct ManualClock(AtomicU64);
    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn quota(limit: u32, window_ms: u64) -> Quota {
        Quota {
            limit: NonZeroU32::new(limit).unwrap(),
            window_ms: NonZeroU64::new(window_ms).unwrap(),
        }
    }

    #[test]
    fn limits_and_slides() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        let q = quota(2, 100);
        assert!(store.check_now("k", q).allowed);
        clock.0.store(10, Ordering::SeqCst);
        assert!(store.check_now("k", q).allowed);
        let blocked = store.check_now("k", q);
        assert!(!blocked.allowed);
        assert_eq!(blocked.retry_after_ms, 90);
        // The first entry (t=0) leaves at t=100.
        clock.0.store(100, Ordering::SeqCst);
        assert!(store.check_now("k", q).allowed);
        assert!(!store.check_now("k", q).allowed);
    }

    #[test]
    fn blocked_requests_are_not_recorded() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        let q = quota(1, 100);
        assert!(store.check_now("k", q).allowed);
        for t in 1..100 {
            clock.0.store(t, Ordering::SeqCst);
            assert!(!store.check_now("k", q).allowed);
        }
        clock.0.store(100, Ordering::SeqCst);
        assert!(store.check_now("k", q).allowed);
    }

    #[test]
    fn idle_keys_are_swept() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        for i in 0..10_000 {
            store.check_now(&format!("k{i}"), quota(5, 100));
        }
        assert_eq!(store.held_keys(), 10_000);
        clock.0.store(5_000, Ordering::SeqCst);
        store.check_now("fresh", quota(5, 100));
        store.sweep_all();
        assert_eq!(store.held_keys(), 1);
    }

    #[tokio::test]
    async fn counters_exclude_expired_entries_and_reset_forgets() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::with_clock(clock.clone());
        store.check_now("a", quota(5, 100));
        clock.0.store(60, Ordering::SeqCst);
        store.check_now("a", quota(5, 100));
        store.check_now("b", quota(5, 100));
        clock.0.store(100, Ordering::SeqCst);
        let counters = store.counters().await.unwrap();
        let a = counters.iter().find(|c| c.key == "a").unwrap();
        assert_eq!(a.count, 1);
        assert!(store.reset("a").await.unwrap());
        assert!(!store.reset("a").await.unwrap());
        assert!(store.check_now("a", quota(1, 100)).allowed);
    }
}
