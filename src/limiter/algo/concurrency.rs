//! Concurrency slots (contract §14), as pure arithmetic over one key's requests in flight:
//! each holds a slot, named by its mark, that expires `window_ms` (the rule's `slot_ttl_ms`)
//! after it was taken or last renewed. A request has room while fewer than `limit` slots are
//! live. Settling a slot at 0 units frees it (its request ended); at the 1 unit it holds,
//! renews it (its request still runs). `lua/concurrency.lua` is the same, run inside Redis,
//! where the mark is the sequence part of the node's member id; here marks are unique in
//! the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Decision, Quota};

/// What a refused request is told to wait: a slot frees when some response ends, which
/// nothing can foresee (`Retry-After: 1`).
pub const RETRY_MS: u64 = 1000;

/// The last mark given, for the whole process: a key reset (or made anew on a reload) and
/// taken again never gives a mark a request still holds, which would let that request free
/// another's slot.
static LAST_MARK: AtomicU64 = AtomicU64::new(0);

/// One key's slots in the embedded store.
#[derive(Debug, Default)]
pub struct Slots {
    /// Mark → when the slot expires (ms).
    held: HashMap<u64, u64>,
}

impl Slots {
    fn prune(&mut self, now_ms: u64) {
        self.held.retain(|_, expires| *expires > now_ms);
    }

    pub fn peek(&mut self, now_ms: u64, quota: Quota) -> Decision {
        self.prune(now_ms);
        let limit = quota.limit.get();
        let count = self.held.len() as u64;
        if count < u64::from(limit) {
            Decision::room(count, limit, u64::from(limit) - count, 0)
        } else {
            Decision::refused(count, limit, RETRY_MS)
        }
    }

    pub fn record(&mut self, now_ms: u64, quota: Quota, d: &mut Decision) {
        let mark = LAST_MARK.fetch_add(1, Ordering::Relaxed) + 1;
        self.held.insert(mark, now_ms + quota.window_ms.get());
        d.count += 1;
        d.remaining = d.remaining.saturating_sub(1);
        d.mark = mark as i64;
    }

    /// Frees (`actual` 0) or renews the slot `mark`; returns the slots freed.
    pub fn settle(&mut self, now_ms: u64, quota: Quota, mark: u64, actual: u32) -> i64 {
        if actual == 0 {
            return i64::from(self.held.remove(&mark).is_some());
        }
        if let Some(expires) = self.held.get_mut(&mark) {
            *expires = now_ms + quota.window_ms.get();
        }
        0
    }

    /// Slots live now.
    pub fn count(&mut self, now_ms: u64) -> u64 {
        self.prune(now_ms);
        self.held.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::algo::test_quota as q;

    #[test]
    fn slots_are_held_until_freed_or_expired() {
        let mut s = Slots::default();
        let quota = q(2, 1000);
        let mut marks = Vec::new();
        for _ in 0..2 {
            let mut d = s.peek(0, quota);
            assert!(d.allowed);
            s.record(0, quota, &mut d);
            marks.push(d.mark as u64);
        }
        let full = s.peek(10, quota);
        assert!(!full.allowed);
        assert_eq!((full.count, full.retry_after_ms), (2, RETRY_MS));
        assert_eq!(s.settle(10, quota, marks[0], 0), 1, "freed");
        assert_eq!(s.settle(10, quota, marks[0], 0), 0, "once");
        assert!(s.peek(10, quota).allowed);
        // The other is renewed at 900 and outlives its first ttl.
        assert_eq!(s.settle(900, quota, marks[1], 1), 0);
        assert_eq!(s.count(1500), 1);
        assert_eq!(s.count(1900), 0, "not renewed again: expired");
    }
}
