//! The concurrency slots this node holds (contract §14): a request admitted under a
//! concurrency rule holds a slot in the store from admission until its response has ended
//! (or its client left, or its upstream failed), which the proxy marks by freeing the
//! request's [`Slots`] in its last phase (a request dropped without one frees them in a task
//! of its own). Freeing wakes the requests waiting in line for those keys
//! ([`super::queue`]).
//!
//! A slot expires in the store `slot_ttl_ms` after it was taken unless renewed: this node
//! renews its slots while their requests run ([`Limiter::renew_slots`], about every third of
//! the ttl, again at once after a failure), so only a node that died lets its slots expire.
//! A free that failed (the store down or slow) is tried again as long as the slot could
//! still be live, so a slot never outlives its request by more than the store's outage. At
//! a stop, whatever is still held is freed at once ([`Limiter::give_back`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Limiter, Outcome, Settlement};
use crate::sync::lock;

/// A request's slots, freed when dropped.
pub struct Slots {
    id: u64,
    limiter: Arc<Limiter>,
}

impl Slots {
    /// Frees the slots now, and returns once the store has them back (or failed): awaited
    /// before the connection's next request is read, so a client that sends one after the
    /// last byte of its response never finds its own slot still held.
    pub async fn free(self) {
        // Dropped after this, it finds them freed already.
        if let Some(slots) = self.limiter.freeing(self.id) {
            self.limiter.release(self.id, slots).await;
        }
    }
}

impl Drop for Slots {
    /// A request dropped without its last phase (the process stopping, a task cancelled):
    /// freed in a task of its own.
    fn drop(&mut self) {
        let Some(slots) = self.limiter.freeing(self.id) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (limiter, id) = (self.limiter.clone(), self.id);
        runtime.spawn(async move { limiter.release(id, slots).await });
    }
}

/// Where a request's slots are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its request runs: renewed.
    Held,
    /// Its request has ended, and a call frees them.
    Freeing,
    /// The call failed: tried again until they would have expired.
    Unfreed,
}

/// One request's slots, as settlements that free them (`actual` 0) or renew them (1).
struct Held {
    slots: Vec<Settlement>,
    /// When they were taken or last renewed.
    renewed: Instant,
    /// The shortest ttl among them.
    ttl: Duration,
    stage: Stage,
}

impl Held {
    fn due(&self, now: Instant) -> bool {
        self.stage == Stage::Held && now.duration_since(self.renewed) >= self.ttl / 3
    }
}

/// Every slot this node holds, by request.
#[derive(Default)]
pub struct HeldSlots {
    last_id: AtomicU64,
    held: Mutex<HashMap<u64, Held>>,
}

impl HeldSlots {
    /// What became of these requests' slots.
    fn update(&self, ids: &[u64], what: Update) {
        let mut held = lock(&self.held);
        for id in ids {
            match what {
                Update::Freed => {
                    held.remove(id);
                }
                Update::Unfreed => {
                    if let Some(h) = held.get_mut(id) {
                        h.stage = Stage::Unfreed;
                    }
                }
                // Only while their request still runs (it may have ended meanwhile).
                Update::Renewed(at) => {
                    if let Some(h) = held.get_mut(id).filter(|h| h.stage == Stage::Held) {
                        h.renewed = at;
                    }
                }
            }
        }
    }
}

/// What a store call did to some requests' slots.
#[derive(Debug, Clone, Copy)]
enum Update {
    Freed,
    Unfreed,
    Renewed(Instant),
}

impl Limiter {
    /// The slots an admitted request took (its concurrency checks that recorded it), held
    /// until the returned value is dropped; `None` when it took none.
    pub fn hold(self: &Arc<Self>, outcome: &Outcome) -> Option<Slots> {
        if !outcome.allowed() {
            return None;
        }
        let slots: Vec<Settlement> = outcome
            .iter()
            .filter(|(c, _)| c.is_concurrency())
            .filter_map(|(c, d)| d.filter(|d| d.allowed && d.mark != 0).map(|d| (c, d)))
            .map(|(check, d)| Settlement {
                check: check.clone(),
                mark: d.mark,
                actual: 0,
                max_cost: 1,
            })
            .collect();
        if slots.is_empty() {
            return None;
        }
        let ttl = slots
            .iter()
            .map(|s| Duration::from_millis(s.check.limit.quota.window_ms.get()))
            .min()
            .unwrap_or_default();
        for s in &slots {
            self.metrics.waits.in_flight(s.check.rule, 1);
        }
        let id = self.held.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.held.held).insert(
            id,
            Held {
                slots,
                renewed: Instant::now(),
                ttl,
                stage: Stage::Held,
            },
        );
        Some(Slots {
            id,
            limiter: self.clone(),
        })
    }

    /// Marks a request's slots as being freed (no longer renewed, no longer counted in
    /// flight) and returns them; `None` when that was done already. They stay listed until
    /// freed, so that a release that never runs (the process is stopping) leaves them to
    /// [`Limiter::give_back`].
    fn freeing(&self, id: u64) -> Option<Vec<Settlement>> {
        let slots = match lock(&self.held.held).get_mut(&id) {
            Some(held) if held.stage == Stage::Held => {
                held.stage = Stage::Freeing;
                held.slots.clone()
            }
            _ => return None,
        };
        for s in &slots {
            self.metrics.waits.in_flight(s.check.rule, -1);
        }
        Some(slots)
    }

    /// Frees slots in the store, then wakes the lines waiting for their keys; a failure
    /// leaves them to be tried again ([`Limiter::renew_slots`]).
    async fn release(&self, id: u64, slots: Vec<Settlement>) {
        match self.bounded(self.store.settle(&slots)).await {
            Ok(_) => {
                self.held.update(&[id], Update::Freed);
                for s in &slots {
                    self.lines.wake(&s.check.key);
                }
            }
            Err(e) => {
                self.failed(&e);
                self.held.update(&[id], Update::Unfreed);
            }
        }
    }

    /// Renews the slots due (held for a third of their ttl since taken or last renewed) in
    /// one store call, and tries again the frees that failed, in another. Called often by a
    /// background task of the node; a renewal that fails is due again at the next call.
    pub async fn renew_slots(&self) {
        let now = Instant::now();
        let (mut renew, mut unfreed) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        {
            let mut held = lock(&self.held.held);
            // Unfreed slots past their ttl have expired in the store.
            held.retain(|_, h| h.stage != Stage::Unfreed || now.duration_since(h.renewed) < h.ttl);
            for (id, h) in held.iter() {
                let (ids, slots) = match h.stage {
                    _ if h.due(now) => (&mut renew.0, &mut renew.1),
                    Stage::Unfreed => (&mut unfreed.0, &mut unfreed.1),
                    _ => continue,
                };
                ids.push(*id);
                let actual = u32::from(h.stage == Stage::Held);
                slots.extend(h.slots.iter().map(|s| Settlement {
                    actual,
                    ..s.clone()
                }));
            }
        }
        if !renew.1.is_empty() {
            match self.bounded(self.store.settle(&renew.1)).await {
                Ok(_) => self.held.update(&renew.0, Update::Renewed(now)),
                Err(e) => self.failed(&e),
            }
        }
        if !unfreed.1.is_empty() {
            match self.bounded(self.store.settle(&unfreed.1)).await {
                Ok(_) => {
                    self.held.update(&unfreed.0, Update::Freed);
                    for s in &unfreed.1 {
                        self.lines.wake(&s.check.key);
                    }
                }
                Err(e) => self.failed(&e),
            }
        }
    }

    /// Gives back what this node holds of shared counters, at a stop: every concurrency
    /// slot still held (the requests that held them are over) and its leases' unused slots.
    /// Blocks; called outside any runtime.
    pub fn give_back(&self) {
        let slots: Vec<Settlement> = lock(&self.held.held)
            .drain()
            .flat_map(|(_, h)| h.slots)
            .collect();
        self.store.give_back(slots);
    }
}
