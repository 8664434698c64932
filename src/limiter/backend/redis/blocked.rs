//! Remembers keys that Redis found over their limit, so that further requests for them are
//! answered from this node's memory until a slot frees — with no Redis call.
//!
//! This is exact, not a cache that may drift: while a key is full, blocked requests are not
//! recorded and no slot can free before the time the script reported, so Redis would answer
//! "blocked" to every one of them. The only other way out is a reset, which every node hears
//! at once through Redis pub/sub ([`RESET_CHANNEL`]); when that subscription drops (Redis
//! restarted, and may have lost its data) the whole memory is forgotten. A reset may also
//! overtake a refusal's reply (pub/sub comes on another connection): a refusal sent before
//! the last reset heard is not remembered, since that reset may have undone its cause (a
//! cross-slot take-back of a record that made the key look full). The expiry is taken
//! from the moment the call was *sent*, so it can only end early (and ask Redis again), never
//! late. What it cannot see: an operator deleting keys in Redis by hand (not through the admin
//! API); such keys stay blocked here for at most the time a slot would have taken to free.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::limiter::{Decision, Limit};

/// The pub/sub channel that carries reset keys to every node.
pub const RESET_CHANNEL: &str = "ratelimiter:resets";

const SHARDS: usize = 64;
/// Upper bound on remembered keys; past it, blocked keys simply go to Redis every time.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    /// The algorithm and quota the key was found full under; another one must ask Redis.
    limit: Limit,
    /// The units of the refused request: one of fewer units may still fit, and must ask.
    cost: u32,
    count: u64,
    until: Instant,
}

type Shard = HashMap<Box<str>, Vec<Entry>>;

pub struct BlockedKeys {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    entries: AtomicUsize,
    /// Whether resets are being heard; nothing is remembered while they may be missed.
    live: AtomicBool,
    /// Every reset heard on the channel, for a resetting caller waiting to hear its own.
    heard: tokio::sync::broadcast::Sender<Arc<str>>,
    /// When the last reset was heard (ns after `started`, plus one; 0: none yet): a refusal
    /// sent before it may be what that reset undid, and is not remembered.
    last_reset_ns: AtomicU64,
    started: Instant,
}

impl Default for BlockedKeys {
    fn default() -> Self {
        BlockedKeys {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            entries: AtomicUsize::new(0),
            live: AtomicBool::new(false),
            heard: tokio::sync::broadcast::channel(1024).0,
            last_reset_ns: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl BlockedKeys {
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        crate::sync::lock(&self.shards[i])
    }

    /// The decision for a request of `cost` units on a key still known to be full for that
    /// many under this limit.
    pub fn get(&self, key: &str, limit: Limit, cost: u32, now: Instant) -> Option<Decision> {
        let mut shard = self.shard(key);
        let entries = shard.get_mut(key)?;
        let before = entries.len();
        entries.retain(|e| e.until > now);
        let removed = before - entries.len();
        let found = entries
            .iter()
            .find(|e| e.limit == limit && cost >= e.cost)
            .map(|e| Decision::refused(e.count, e.limit.quota.limit.get(), ceil_ms(e.until - now)));
        if entries.is_empty() {
            shard.remove(key);
        }
        drop(shard);
        if removed > 0 {
            self.entries.fetch_sub(removed, Ordering::Relaxed);
        }
        found
    }

    /// Marks the reset subscription as up or down; going down forgets everything.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        if !live {
            self.clear();
        }
    }

    /// Records a blocked decision for a request of `cost` units, from a call sent at `sent`.
    /// One entry per limit: the latest refusal replaces the one before.
    pub fn remember(&self, key: &str, limit: Limit, cost: u32, d: &Decision, sent: Instant) {
        if d.allowed
            || !self.live.load(Ordering::SeqCst)
            || self.entries.load(Ordering::Relaxed) >= MAX_ENTRIES
        {
            return;
        }
        let entry = Entry {
            limit,
            cost,
            count: d.count,
            until: sent + Duration::from_millis(d.retry_after_ms),
        };
        let mut shard = self.shard(key);
        // A reset heard since the call was sent may have come after the refusal and before
        // its reply (a cross-slot take-back, or an admin reset): the key may have room now.
        // Read under the shard's lock, which `forget` takes after noting the time.
        let sent_ns = sent.saturating_duration_since(self.started).as_nanos() as u64;
        if self.last_reset_ns.load(Ordering::SeqCst) > sent_ns {
            return;
        }
        let list = shard.entry(key.into()).or_default();
        match list.iter_mut().find(|e| e.limit == entry.limit) {
            Some(e) => *e = entry,
            None => {
                list.push(entry);
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets a key (it was reset).
    pub fn forget(&self, key: &str) {
        let now = self.started.elapsed().as_nanos() as u64 + 1;
        self.last_reset_ns.fetch_max(now, Ordering::SeqCst);
        if let Some(list) = self.shard(key).remove(key) {
            self.entries.fetch_sub(list.len(), Ordering::Relaxed);
        }
    }

    /// A reset arrived on the channel: forget the key, and tell any waiting caller.
    pub fn heard_reset(&self, key: &str) {
        self.forget(key);
        let _ = self.heard.send(key.into());
    }

    /// Waits (up to `limit`) until this node hears the reset of `key` come back through Redis,
    /// so a reset answered to the caller is in force on this node. The other nodes forget the
    /// key when the same message reaches them: Redis writes it to every subscriber at once, so
    /// they are a network delivery away, not a reply (`tests/blocked_path.rs` measures it).
    pub async fn await_reset(
        &self,
        key: &str,
        mut heard: tokio::sync::broadcast::Receiver<Arc<str>>,
        limit: Duration,
    ) {
        if !self.live.load(Ordering::SeqCst) {
            return;
        }
        let wait = async {
            loop {
                match heard.recv().await {
                    Ok(k) if &*k == key => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// A receiver of heard resets; take it before publishing, so the echo cannot be missed.
    pub fn listen(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.heard.subscribe()
    }

    /// Forgets everything (resets may have been missed).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = crate::sync::lock(shard);
            let n: usize = shard.values().map(Vec::len).sum();
            shard.clear();
            self.entries.fetch_sub(n, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The subscription to resets tells the memory what it hears.
impl crate::redis_conn::pubsub::Listener for BlockedKeys {
    fn live(&self, live: bool) {
        self.set_live(live);
    }

    fn message(&self, key: &str) {
        self.heard_reset(key);
    }
}

fn ceil_ms(d: Duration) -> u64 {
    (d.as_micros().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU32, NonZeroU64};

    fn q(limit: u32) -> Limit {
        Limit::sliding_log(
            NonZeroU32::new(limit).unwrap(),
            NonZeroU64::new(1000).unwrap(),
        )
    }

    fn blocked(retry_after_ms: u64) -> Decision {
        Decision {
            allowed: false,
            count: 3,
            limit: 3,
            remaining: 0,
            retry_after_ms,
            reset_ms: retry_after_ms,
            mark: 0,
            delay_ms: 0,
        }
    }

    fn live() -> BlockedKeys {
        let b = BlockedKeys::default();
        b.set_live(true);
        b
    }

    #[test]
    fn nothing_is_remembered_while_resets_may_be_missed() {
        let b = BlockedKeys::default();
        b.remember("k", q(3), 1, &blocked(500), Instant::now());
        assert!(b.is_empty());
        let b = live();
        b.remember("k", q(3), 1, &blocked(500), Instant::now());
        b.set_live(false);
        assert!(b.get("k", q(3), 1, Instant::now()).is_none());
    }

    #[test]
    fn answers_until_the_slot_frees_then_forgets() {
        let b = live();
        let t0 = Instant::now();
        b.remember("k", q(3), 1, &blocked(500), t0);
        let d = b
            .get("k", q(3), 1, t0 + Duration::from_millis(100))
            .unwrap();
        assert_eq!((d.allowed, d.count, d.retry_after_ms), (false, 3, 400));
        assert!(b
            .get("k", q(3), 1, t0 + Duration::from_millis(500))
            .is_none());
        assert!(b.is_empty());
    }

    #[test]
    fn another_quota_is_not_answered() {
        let b = live();
        let t0 = Instant::now();
        b.remember("k", q(3), 1, &blocked(500), t0);
        assert!(b.get("k", q(4), 1, t0).is_none());
    }

    #[test]
    fn forget_and_clear() {
        let b = live();
        let t0 = Instant::now();
        b.remember("a", q(3), 1, &blocked(500), t0);
        b.remember("b", q(3), 1, &blocked(500), t0);
        b.forget("a");
        assert!(b.get("a", q(3), 1, t0).is_none());
        assert_eq!(b.len(), 1);
        b.clear();
        assert!(b.get("b", q(3), 1, t0).is_none());
        assert!(b.is_empty());
    }

    #[test]
    fn a_refusal_sent_before_a_reset_heard_is_not_remembered() {
        let b = live();
        let sent = Instant::now();
        // The reset of a record that made the key look full, heard before the reply.
        b.forget("k");
        b.remember("k", q(3), 1, &blocked(500), sent);
        assert!(b.get("k", q(3), 1, sent).is_none());
        // A refusal sent after it is.
        let later = Instant::now();
        b.remember("k", q(3), 1, &blocked(500), later);
        assert!(b.get("k", q(3), 1, later).is_some());
    }

    #[test]
    fn a_refusal_for_many_units_does_not_answer_fewer() {
        let b = live();
        let t0 = Instant::now();
        b.remember("k", q(3), 50, &blocked(500), t0);
        assert!(b.get("k", q(3), 1, t0).is_none(), "one unit may still fit");
        assert!(b.get("k", q(3), 50, t0).is_some());
        assert!(b.get("k", q(3), 80, t0).is_some());
    }

    #[test]
    fn allowed_decisions_are_not_remembered() {
        let b = live();
        let mut d = blocked(500);
        d.allowed = true;
        b.remember("k", q(3), 1, &d, Instant::now());
        assert!(b.is_empty());
    }
}
