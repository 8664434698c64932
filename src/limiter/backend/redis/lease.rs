//! Leases (contract §11): this node's share of a shared counter, taken from Redis in batches
//! (`lua/lease.lua`) and spent here, so most requests are decided without a store call.
//!
//! A key's lease is used until its slots are spent or it ends; then what is left goes back
//! and a new one is taken, by one request while the others on that key wait for it. The
//! script counts every slot of a lease as used, so the limit holds across nodes whatever this
//! node does with them; unused slots only keep others out until they go back (when the lease
//! is replaced, by [`Leases::give_back_ended`], or at shutdown by [`Leases::give_back_all`]).
//!
//! The Redis store sends here every request whose checks all lease (`sync = "lease"`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::scripts::{Grant, Scripts};
use crate::limiter::{Check, Decision, StoreError};
use crate::sync::{lock, read, write};

/// How often ended leases give back their unused slots.
pub const GIVE_BACK_EVERY: Duration = Duration::from_millis(50);

/// One key's lease, while held.
struct Held {
    id: String,
    /// This node's number for the lease (in `id` too): tells a slot's lease from a later one.
    n: u64,
    grant: Grant,
    used: u64,
    /// When the lease ends, on this node's clock (measured from before the call, so never
    /// later than the server's end).
    ends: Instant,
    check: Check,
}

impl Held {
    fn unused(&self) -> u64 {
        self.grant.granted - self.used
    }

    fn usable(&self, now: Instant) -> bool {
        now < self.ends && self.unused() > 0
    }

    /// The decision for a request that took a slot of this lease: what is left is this
    /// lease's unused slots and what others had not leased when it was taken.
    fn decision(&self) -> Decision {
        let limit = self.check.limit.quota.limit.get();
        let remaining = (self.grant.remaining + self.unused()).min(u64::from(limit));
        Decision::room(u64::from(limit) - remaining, limit, remaining, 0)
    }
}

/// A key's state on this node: its lease, or, when none could be had, until when requests
/// are refused without asking again.
#[derive(Default)]
struct State {
    lease: Option<Held>,
    /// Until when, the refusal, and the units refused (fewer may still fit).
    refused: Option<(Instant, Decision, u32)>,
}

impl State {
    /// The decision for one more request of `cost` units on this key, when this node knows
    /// it without asking Redis: slots of a usable lease that has that many (with the lease's
    /// number), or a refusal still fresh for at most that many.
    fn local(&mut self, now: Instant, cost: u32) -> Option<(Decision, u64)> {
        let cost = u64::from(cost.max(1));
        if let Some(h) = self
            .lease
            .as_mut()
            .filter(|h| h.usable(now) && h.unused() >= cost)
        {
            h.used += cost;
            return Some((h.decision(), h.n));
        }
        let (until, refused, _) = self
            .refused
            .filter(|(until, _, units)| now < *until && cost >= u64::from(*units))?;
        let left = until.saturating_duration_since(now).as_millis() as u64;
        let wait = left.max(1).min(refused.retry_after_ms.max(1));
        Some((Decision::refused(refused.count, refused.limit, wait), 0))
    }
}

/// One key on this node. Requests decide under `state`, a plain lock held for a few
/// instructions; the one that must call Redis also holds `calling` across the call, so the
/// others on the key wait for its lease rather than take their own.
#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    calling: tokio::sync::Mutex<()>,
}

pub struct Leases {
    scripts: Arc<Scripts>,
    /// Unique per process: with `seq`, makes every lease id unique across nodes.
    instance: String,
    seq: AtomicU64,
    held: RwLock<HashMap<String, Arc<Slot>>>,
    /// `ratelimiter_lease_calls_total{rule}` (calls taking slots), once the metrics are known.
    counted: std::sync::OnceLock<prometheus::IntCounterVec>,
}

impl Leases {
    pub fn new(scripts: Arc<Scripts>, instance: String) -> Leases {
        Leases {
            scripts,
            instance,
            seq: AtomicU64::new(0),
            held: RwLock::new(HashMap::new()),
            counted: std::sync::OnceLock::new(),
        }
    }

    /// Counts this table's calls taking slots (contract §11), per rule, in `counter`.
    pub fn count_calls_in(&self, counter: prometheus::IntCounterVec) {
        let _ = self.counted.set(counter);
    }

    fn count_call(&self, rule: &str) {
        if let Some(c) = self.counted.get() {
            c.with_label_values(&[rule]).inc();
        }
    }

    /// Decides a request whose checks all lease from this node's leases alone, when it can:
    /// `None` when some check needs a call to Redis (then nothing was taken), else what
    /// [`Leases::decide_all`] would decide.
    pub fn decide_local(&self, checks: &[Check]) -> Option<Vec<Option<Decision>>> {
        let now = Instant::now();
        let mut out: Vec<Option<Decision>> = vec![None; checks.len()];
        // The lease each check's slot came from, kept only while a later check may refuse
        // (so a one-check request allocates nothing for it).
        let mut from = Vec::new();
        for (i, check) in checks.iter().enumerate() {
            let decided = {
                let held = read(&self.held);
                held.get(&check.key)
                    .and_then(|slot| lock(&slot.state).local(now, check.cost))
            };
            let Some((d, n)) = decided else {
                self.unuse_allowed(&checks[..i], &out, &from);
                return None;
            };
            out[i] = Some(d);
            if i + 1 < checks.len() {
                from.push(n);
            }
            if !d.allowed && !check.shadow {
                self.unuse_allowed(&checks[..i], &out, &from);
                break;
            }
        }
        Some(out)
    }

    /// Decides a request whose checks all lease, atomically as the check script would: when
    /// an enforced check refuses, the slots the others took go back to their leases and
    /// the checks after it are not asked (`None`).
    pub async fn decide_all(&self, checks: &[Check]) -> Result<Vec<Option<Decision>>, StoreError> {
        let mut out: Vec<Option<Decision>> = vec![None; checks.len()];
        let mut from = Vec::with_capacity(checks.len());
        for (i, check) in checks.iter().enumerate() {
            let (size, ms) = check
                .sync
                .lease(check.limit.quota.limit.get())
                .unwrap_or((1, 1));
            let decided = self.decide_from(check, size, ms).await;
            let refused = match &decided {
                Ok((d, _)) => !d.allowed && !check.shadow,
                Err(_) => true,
            };
            if refused {
                self.unuse_allowed(&checks[..i], &out, &from);
            }
            let (d, n) = decided?;
            out[i] = Some(d);
            from.push(n);
            if refused {
                break;
            }
        }
        Ok(out)
    }

    /// Puts back the slots that the allowed ones of `decided` took from their keys' leases
    /// (numbered in `from`), for a request that will not be made after all. A slot whose
    /// lease has been replaced since stays used: that lease is spent or given back, and the
    /// slot only stays counted until it leaves the window.
    fn unuse_allowed(&self, checks: &[Check], decided: &[Option<Decision>], from: &[u64]) {
        for ((check, d), &n) in checks.iter().zip(decided).zip(from) {
            if !d.is_some_and(|d| d.allowed) {
                continue;
            }
            if let Some(slot) = read(&self.held).get(&check.key) {
                let mut state = lock(&slot.state);
                let cost = u64::from(check.cost.max(1));
                if let Some(h) = state.lease.as_mut().filter(|h| h.n == n && h.used >= cost) {
                    h.used -= cost;
                }
            }
        }
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        if let Some(slot) = read(&self.held).get(key) {
            return slot.clone();
        }
        write(&self.held)
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Decides one request on `check` from this node's lease of its key, taking a lease of
    /// `size` slots for `lease_ms` when none is usable.
    pub async fn decide(
        &self,
        check: &Check,
        size: u64,
        lease_ms: u64,
    ) -> Result<Decision, StoreError> {
        Ok(self.decide_from(check, size, lease_ms).await?.0)
    }

    /// As [`Leases::decide`], with the number of the lease an allowed request took its slot
    /// from.
    async fn decide_from(
        &self,
        check: &Check,
        size: u64,
        lease_ms: u64,
    ) -> Result<(Decision, u64), StoreError> {
        let slot = self.slot(&check.key);
        if let Some(d) = lock(&slot.state).local(Instant::now(), check.cost) {
            return Ok(d);
        }
        let _calling = slot.calling.lock().await;
        // Spent or over: the unused slots go back before the next lease is taken (with GCRA
        // they could not once a later lease is built on this one). Another request may have
        // taken a new lease while this one waited.
        let old = {
            let mut state = lock(&slot.state);
            if let Some(d) = state.local(Instant::now(), check.cost) {
                return Ok(d);
            }
            state.refused = None;
            state.lease.take()
        };
        if let Some(old) = old {
            self.give(&old).await;
        }
        // Numbered from 1: 0 is no lease.
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}:l{n}", self.instance);
        let asked = Instant::now();
        self.count_call(check.rule);
        let grant = self.scripts.take(check, size, lease_ms, &id).await?;
        let mut state = lock(&slot.state);
        if grant.granted == 0 {
            let limit = check.limit.quota.limit.get();
            let wait = grant.retry_after_ms.max(1);
            let refused = Decision::refused(grant.count.max(u64::from(limit)), limit, wait);
            // Asked again when a slot frees, or sooner: once every lease that other nodes held
            // now has ended and been given back (a sweep later), so the next ask is not
            // refused again by the same unused slots.
            let sweep = GIVE_BACK_EVERY.as_millis() as u64;
            let again = Duration::from_millis(wait.min(lease_ms.max(1) + sweep));
            state.refused = Some((asked + again, refused, check.cost.max(1)));
            return Ok((refused, 0));
        }
        let h = state.lease.insert(Held {
            id,
            n,
            grant,
            used: u64::from(check.cost.max(1)),
            ends: asked + Duration::from_millis(grant.left_ms),
            check: check.clone(),
        });
        Ok((h.decision(), n))
    }

    /// Gives back what a lease left unused; a failure only keeps the slots out of use until
    /// they would have left the window anyway.
    async fn give(&self, held: &Held) {
        if held.unused() == 0 {
            return;
        }
        if let Err(e) = self
            .scripts
            .give(&held.check, &held.id, &held.grant, held.unused())
            .await
        {
            log::debug!(
                "giving back {} slots of {}: {e}",
                held.unused(),
                held.check.key
            );
        }
    }

    /// Gives back the unused slots of ended leases every [`GIVE_BACK_EVERY`], for as long as
    /// the store lives.
    pub async fn give_back_ended_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(GIVE_BACK_EVERY).await;
            self.give_back_ended().await;
        }
    }

    /// Gives back the unused slots of leases that have ended, and forgets their keys.
    pub async fn give_back_ended(&self) {
        self.give_back(|h| !h.usable(Instant::now()), false).await;
    }

    /// Gives back every unused slot (at shutdown).
    pub async fn give_back_all(&self) {
        self.give_back(|_| true, true).await;
    }

    async fn give_back(&self, done: impl Fn(&Held) -> bool, all: bool) {
        let slots: Vec<(String, Arc<Slot>)> = read(&self.held)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, slot) in slots {
            // A key busy calling Redis is left for the next sweep, unless all go.
            let _calling = match slot.calling.try_lock() {
                Ok(calling) => calling,
                Err(_) if all => slot.calling.lock().await,
                Err(_) => continue,
            };
            let old = {
                let mut state = lock(&slot.state);
                let old = if state.lease.as_ref().is_some_and(&done) {
                    state.lease.take()
                } else {
                    None
                };
                let now = Instant::now();
                if state
                    .refused
                    .is_some_and(|(until, _, _)| now >= until || all)
                {
                    state.refused = None;
                }
                old
            };
            if let Some(old) = old {
                self.give(&old).await;
            }
            let mut map = write(&self.held);
            // Forgotten when idle, unless a request is using it right now.
            let idle = |s: &Arc<Slot>| {
                let state = lock(&s.state);
                Arc::strong_count(s) == 2 && state.lease.is_none() && state.refused.is_none()
            };
            if map.get(&key).is_some_and(idle) {
                map.remove(&key);
            }
        }
    }

    /// Slots leased by this node and not yet used, per key.
    pub fn leased(&self) -> Vec<(String, u64)> {
        read(&self.held)
            .iter()
            .filter_map(|(k, s)| {
                let unused = lock(&s.state).lease.as_ref().map_or(0, Held::unused);
                (unused > 0).then(|| (k.clone(), unused))
            })
            .collect()
    }
}
