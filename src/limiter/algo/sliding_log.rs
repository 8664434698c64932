//! The sliding-window log, as pure arithmetic over one key's log of allowed-request times.
//!
//! A request at `now` has room when fewer than `limit` entries lie in the window
//! `(now - window_ms, now]`; an allowed request is recorded at `now`, a blocked one is not.
//! When full, a slot frees when the entry that keeps the log at `limit` leaves the window:
//! that is `log[count - limit] + window_ms`. More quota frees up (`reset_ms`) when the oldest
//! entry leaves. `lua/sliding_log.lua` is this same arithmetic, run inside Redis.
//!
//! The log is exact: it never admits more than `limit` in any window, at the cost of one entry
//! per allowed request (bounded by `limit` per key).

use std::collections::VecDeque;

use super::{Decision, Quota};

/// Whether an entry recorded at `t_ms` has left the window `(now - window_ms, now]`.
pub fn is_expired(t_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    t_ms.saturating_add(window_ms) <= now_ms
}

/// Peeks at a log already pruned to the window, for a request of `cost` units: `count` units
/// are in use, and `unit_time(k)` is the time of the entry holding the `k`-th of them (from
/// 0, oldest first). The decision reads at most two entries' times.
pub fn peek_units(
    count: u64,
    unit_time: impl Fn(u64) -> u64,
    now_ms: u64,
    quota: Quota,
    cost: u32,
) -> Decision {
    let limit = quota.limit.get();
    let limit64 = u64::from(limit);
    let cost = u64::from(cost.max(1));
    let window_ms = quota.window_ms.get();
    let until_leaves = |t: u64| (t + window_ms).saturating_sub(now_ms).max(1);
    let remaining = limit64.saturating_sub(count);
    if count + cost <= limit64 {
        let reset_ms = if count == 0 {
            0
        } else {
            until_leaves(unit_time(0))
        };
        return Decision::room(count, limit, remaining, reset_ms);
    }
    // Room for `cost` comes when the unit that keeps the log above `limit - cost` leaves;
    // a cost above the limit never fits, and waits a whole window.
    let wait = match (count + cost).checked_sub(limit64 + 1) {
        Some(k) if cost <= limit64 && k < count => until_leaves(unit_time(k)),
        _ => window_ms,
    };
    Decision {
        remaining,
        ..Decision::refused(count, limit, wait)
    }
}

/// [`peek_units`] over a slice of one-unit entries, for a request of one unit.
pub fn peek(log: &[u64], now_ms: u64, quota: Quota) -> Decision {
    peek_units(log.len() as u64, |i| log[i as usize], now_ms, quota, 1)
}

/// The decision once the request's `cost` units are recorded at `now` (only ever after a
/// peek with room).
pub fn counted(d: &mut Decision, quota: Quota, cost: u32, now_ms: u64) {
    if d.count == 0 {
        // The new entry is the oldest: more quota frees when it leaves.
        d.reset_ms = quota.window_ms.get();
    }
    d.count += u64::from(cost);
    d.remaining = d.remaining.saturating_sub(u64::from(cost));
    d.mark = now_ms as i64;
}

/// One key's log in the embedded store: the allowed requests, oldest first, each with its
/// time and the units it holds, and the units of them all.
#[derive(Debug, Default)]
pub struct Log {
    window_ms: u64,
    entries: VecDeque<(u64, u32)>,
    units: u64,
}

impl Log {
    fn prune(&mut self, now_ms: u64) {
        while let Some(&(t, n)) = self.entries.front() {
            if !is_expired(t, now_ms, self.window_ms) {
                break;
            }
            self.units -= u64::from(n);
            self.entries.pop_front();
        }
    }

    /// The time of the entry holding the `k`-th unit (from 0, oldest first).
    fn unit_time(&self, k: u64) -> u64 {
        let mut seen = 0;
        for &(t, n) in &self.entries {
            seen += u64::from(n);
            if seen > k {
                return t;
            }
        }
        self.entries.back().map_or(0, |e| e.0)
    }

    pub fn peek(&mut self, now_ms: u64, quota: Quota, cost: u32) -> Decision {
        // The window in force is the latest one asked for (it changes only on reload).
        self.window_ms = quota.window_ms.get();
        self.prune(now_ms);
        peek_units(self.units, |k| self.unit_time(k), now_ms, quota, cost)
    }

    pub fn record(&mut self, now_ms: u64, quota: Quota, cost: u32, decision: &mut Decision) {
        self.window_ms = quota.window_ms.get();
        let cost = cost.max(1);
        self.entries.push_back((now_ms, cost));
        self.units += u64::from(cost);
        counted(decision, quota, cost, now_ms);
    }

    /// Sets the units of a request recorded at `at_ms` with `reserved` units to `actual`
    /// (0 takes it out), at `now_ms`. Entries of the same time and units are alike, so any one of them
    /// is the request's. Returns the units given back (negative: charged); nothing once the
    /// entry has left the window.
    pub fn settle(&mut self, now_ms: u64, at_ms: u64, reserved: u32, actual: u32) -> i64 {
        // What has left the window is gone, as Redis has dropped it.
        self.prune(now_ms);
        // Entries are in time order: only those of that time are looked at.
        let from = self.entries.partition_point(|&(t, _)| t < at_ms);
        let to = self.entries.partition_point(|&(t, _)| t <= at_ms);
        let Some(i) = (from..to).rev().find(|&i| self.entries[i].1 == reserved) else {
            return 0;
        };
        self.units = self.units - u64::from(reserved) + u64::from(actual);
        if actual == 0 {
            self.entries.remove(i);
        } else {
            self.entries[i].1 = actual;
        }
        i64::from(reserved) - i64::from(actual)
    }

    pub fn count(&mut self, now_ms: u64) -> u64 {
        self.prune(now_ms);
        self.units
    }

    pub fn shrink(&mut self) {
        if self.entries.capacity() > 4 * self.entries.len().max(4) {
            self.entries.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::algo::test_quota as q;

    #[test]
    fn has_room_until_the_limit() {
        let d = peek(&[], 1000, q(3, 100));
        assert_eq!(
            (d.allowed, d.count, d.remaining, d.reset_ms),
            (true, 0, 3, 0)
        );
        let d = peek(&[990, 995], 1000, q(3, 100));
        assert_eq!((d.allowed, d.count, d.remaining), (true, 2, 1));
        // The oldest entry (990) leaves at 1090.
        assert_eq!(d.reset_ms, 90);
    }

    #[test]
    fn counting_the_request_updates_count_remaining_and_reset() {
        let mut d = peek(&[], 1000, q(3, 100));
        counted(&mut d, q(3, 100), 1, 1000);
        assert_eq!((d.count, d.remaining, d.reset_ms), (1, 2, 100));
        let mut d = peek(&[990], 1000, q(3, 100));
        counted(&mut d, q(3, 100), 1, 1000);
        assert_eq!((d.count, d.remaining, d.reset_ms), (2, 1, 90));
    }

    #[test]
    fn full_until_the_oldest_leaves() {
        let d = peek(&[950, 960, 970], 1000, q(3, 100));
        assert!(!d.allowed);
        assert_eq!((d.count, d.remaining), (3, 0));
        // 950 leaves the window (now - 100, now] at now = 1050.
        assert_eq!((d.retry_after_ms, d.reset_ms), (50, 50));
        assert_eq!(d.retry_after_secs(), 1);
    }

    #[test]
    fn lowered_limit_waits_for_enough_entries_to_leave() {
        // Four entries, limit 2: three must leave before one more fits, so the third decides.
        let d = peek(&[910, 920, 930, 940], 1000, q(2, 100));
        assert_eq!((d.allowed, d.count), (false, 4));
        assert_eq!(d.retry_after_ms, 930 + 100 - 1000);
    }

    #[test]
    fn window_edge_is_exclusive_of_the_past() {
        // An entry exactly window_ms old is expired; a younger one is not.
        assert!(is_expired(900, 1000, 100));
        assert!(!is_expired(901, 1000, 100));
        // Early in a clock's life nothing is expired, even an entry at time 0.
        assert!(!is_expired(0, 50, 100));
    }

    #[test]
    fn the_log_prunes_records_and_slides() {
        let mut log = Log::default();
        let quota = q(2, 100);
        for now in [0, 10] {
            let mut d = log.peek(now, quota, 1);
            assert!(d.allowed);
            log.record(now, quota, 1, &mut d);
        }
        let d = log.peek(20, quota, 1);
        assert_eq!((d.allowed, d.retry_after_ms), (false, 80));
        // Blocked requests are not recorded; the entry at 0 leaves at 100.
        assert!(log.peek(100, quota, 1).allowed);
        assert_eq!(log.count(100), 1);
        assert_eq!(log.count(110), 0);
    }

    #[test]
    fn the_clock_going_backwards_keeps_every_entry() {
        // Entries "from the future" (the clock stepped back) are all still in the window, so
        // the log stays full rather than letting a new burst through.
        let d = peek(&[1000, 1010], 500, q(2, 100));
        assert_eq!((d.allowed, d.count), (false, 2));
        assert_eq!(d.retry_after_ms, 1000 + 100 - 500);
        assert!(!is_expired(1010, 500, 100));
    }

    #[test]
    fn costs_need_room_for_every_unit_and_wait_for_enough_to_leave() {
        let mut log = Log::default();
        let quota = q(10, 100);
        for (now, cost) in [(0, 4), (10, 3), (20, 2)] {
            let mut d = log.peek(now, quota, cost);
            assert!(d.allowed);
            log.record(now, quota, cost, &mut d);
            assert_eq!(d.mark, now as i64);
        }
        // 9 of 10 used: one unit fits, two do not.
        let d = log.peek(30, quota, 2);
        assert_eq!((d.allowed, d.count, d.remaining), (false, 9, 1));
        // Two units need one more to leave: the 4 at 0 leave at 100.
        assert_eq!(d.retry_after_ms, 70);
        assert!(log.peek(30, quota, 1).allowed);
        // Five units need 4 to leave: still the entry at 0.
        assert_eq!(log.peek(30, quota, 5).retry_after_ms, 70);
        // Eight need 7: the 3 at 10 too, at 110.
        assert_eq!(log.peek(30, quota, 8).retry_after_ms, 80);
        // More than the limit never fits.
        let d = log.peek(30, quota, 11);
        assert_eq!((d.allowed, d.retry_after_ms), (false, 100));
        assert_eq!(log.peek(100, quota, 5).count, 5);
    }

    #[test]
    fn settling_gives_back_or_charges_the_request_s_entry() {
        let mut log = Log::default();
        let quota = q(10, 100);
        let mut d = log.peek(0, quota, 5);
        log.record(0, quota, 5, &mut d);
        assert_eq!(log.settle(10, 0, 5, 2), 3);
        assert_eq!(log.count(50), 2);
        // A charge may take the key past its limit; it stays until the entry leaves.
        assert_eq!(log.settle(10, 0, 2, 14), -12);
        assert_eq!(log.count(50), 14);
        assert!(!log.peek(50, quota, 1).allowed);
        assert_eq!(log.peek(50, quota, 1).retry_after_ms, 50);
        // Nothing to settle once the entry has left, or for an entry that is not there.
        assert_eq!(log.settle(100, 0, 14, 1), 0, "left the window");
        assert_eq!(log.count(100), 0);
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let d = peek(&[], u64::MAX / 2, q(u32::MAX, u64::MAX / 4));
        assert_eq!(d.remaining, u64::from(u32::MAX));
    }
}
