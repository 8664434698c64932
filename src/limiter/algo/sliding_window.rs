//! The sliding-window counter, as pure arithmetic over one key's state: the counts of two
//! fixed windows, the current one and the one before.
//!
//! Fixed windows are aligned to multiples of `window_ms` since the Unix epoch. At `elapsed`
//! ms into the current window, the previous window's count is weighted by the part of it
//! that a sliding window ending now still covers:
//!
//! `estimate = current + previous × (window − elapsed) / window`
//!
//! and `count = floor(estimate)`. A request has room when `count < limit`; only recorded
//! requests add to `current`. This assumes the previous window's requests were spread evenly
//! (the approach of Cloudflare and Kong's advanced limiter). Its bounds: no fixed window ever
//! holds more than `limit`, and no window of `window_ms` anywhere holds more than
//! `2 × limit` (the previous window's requests all at its end, then a full current window);
//! with steady traffic it is within a few percent of the exact log. Memory is three integers
//! per key, whatever the limit. `lua/sliding_window.lua` is the same arithmetic (in the same
//! floating-point order), run inside Redis.

use super::{Decision, Quota};

/// The counts a decision sees at `now`, from a stored window `idx` with `cur` and `prev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// The fixed window the counts are in (`now / window`, or the stored one when the clock
    /// went back: then the key is judged as of that window's start).
    pub idx: u64,
    pub elapsed: u64,
    pub cur: u64,
    pub prev: u64,
}

/// Rolls a stored state forward to `now_ms`.
pub fn counts(stored: Option<(u64, u64, u64)>, now_ms: u64, window_ms: u64) -> Counts {
    let idx = now_ms / window_ms;
    let elapsed = now_ms % window_ms;
    let (idx, elapsed, cur, prev) = match stored {
        Some((s, c, p)) if s == idx => (idx, elapsed, c, p),
        Some((s, c, _)) if s + 1 == idx => (idx, elapsed, 0, c),
        // The clock went back: never forget what the later window counted.
        Some((s, c, p)) if s > idx => (s, 0, c, p),
        _ => (idx, elapsed, 0, 0),
    };
    Counts {
        idx,
        elapsed,
        cur,
        prev,
    }
}

/// `floor(cur + prev × (window − elapsed) / window)`.
pub fn count(c: Counts, window_ms: u64) -> u64 {
    let weighted = (c.prev as f64 * (window_ms - c.elapsed) as f64) / window_ms as f64;
    (c.cur as f64 + weighted).floor() as u64
}

/// Milliseconds until the estimate falls below `target` (≥ 1), rolling into the next window
/// when the current window alone already holds `target`.
fn until_below(target: u64, c: Counts, window_ms: u64) -> u64 {
    let w = window_ms as f64;
    if c.cur < target {
        if c.prev == 0 {
            return 1;
        }
        // cur + prev × (W − e) / W < target  ⟺  e > W − (target − cur) × W / prev
        let e = (w - ((target - c.cur) as f64 * w) / c.prev as f64).floor() + 1.0;
        let e = e.max(0.0) as u64;
        return e.saturating_sub(c.elapsed).max(1);
    }
    // In the next window the current count becomes the previous one:
    // cur × (W − e) / W < target  ⟺  e > W − target × W / cur
    let e = (w - (target as f64 * w) / c.cur as f64).floor() + 1.0;
    (window_ms - c.elapsed) + e.max(1.0) as u64
}

/// The decision as if the request were not recorded, for a request of `cost` units.
pub fn peek(c: Counts, quota: Quota, cost: u32) -> Decision {
    let window_ms = quota.window_ms.get();
    let limit = quota.limit.get();
    let cost = u64::from(cost.max(1));
    let n = count(c, window_ms);
    let remaining = u64::from(limit).saturating_sub(n);
    if n + cost <= u64::from(limit) {
        let reset_ms = if n == 0 {
            0
        } else {
            until_below(n, c, window_ms)
        };
        Decision::room(n, limit, remaining, reset_ms)
    } else {
        // Room for `cost` once the estimate is at most `limit - cost`; a cost above the limit
        // never fits, and waits until both windows would be empty.
        let wait = match (u64::from(limit) + 1).checked_sub(cost) {
            Some(target) if target > 0 => until_below(target, c, window_ms),
            _ => 2 * window_ms - c.elapsed,
        };
        Decision {
            remaining,
            ..Decision::refused(n, limit, wait)
        }
    }
}

/// Records an allowed request of `cost` units: the counts after it, and the decision updated
/// to count it.
pub fn record(c: Counts, quota: Quota, cost: u32, d: &mut Decision) -> Counts {
    let cost = u64::from(cost.max(1));
    let after = Counts {
        cur: c.cur + cost,
        ..c
    };
    d.count += cost;
    d.remaining = d.remaining.saturating_sub(cost);
    d.reset_ms = until_below(d.count, after, quota.window_ms.get());
    d.mark = c.idx as i64;
    after
}

/// The stored counts once a request counted in window `mark` with `reserved` units settles at
/// `actual`: the difference goes to that window's count (the current or the previous one by
/// now), never below zero; nothing once that window has rolled out. Returns the new state and
/// the units given back (negative: charged).
pub fn settle(
    stored: (u64, u64, u64),
    mark: u64,
    reserved: u32,
    actual: u32,
) -> ((u64, u64, u64), i64) {
    let (idx, mut cur, mut prev) = stored;
    let field = if idx == mark {
        &mut cur
    } else if idx == mark + 1 {
        &mut prev
    } else {
        return (stored, 0);
    };
    let before = *field;
    *field = (before + u64::from(actual)).saturating_sub(u64::from(reserved));
    let given = before as i64 - *field as i64;
    ((idx, cur, prev), given)
}

/// One key's state in the embedded store.
#[derive(Debug, Default)]
pub struct SlidingWindow {
    /// `(window index, its count, the count of the window before)`; `None` for a fresh key.
    stored: Option<(u64, u64, u64)>,
    /// The window last decided with (it changes only on reload).
    window_ms: u64,
}

impl SlidingWindow {
    /// The stored counts, if they were counted in windows of `window_ms`: a window index
    /// means nothing under another length (the rule's window changed on reload), so such a
    /// key starts afresh.
    fn stored_for(&self, window_ms: u64) -> Option<(u64, u64, u64)> {
        self.stored.filter(|_| self.window_ms == window_ms)
    }

    pub fn peek(&mut self, now_ms: u64, quota: Quota, cost: u32) -> Decision {
        let w = quota.window_ms.get();
        peek(counts(self.stored_for(w), now_ms, w), quota, cost)
    }

    pub fn record(&mut self, now_ms: u64, quota: Quota, cost: u32, decision: &mut Decision) {
        let w = quota.window_ms.get();
        let c = record(counts(self.stored_for(w), now_ms, w), quota, cost, decision);
        self.window_ms = w;
        self.stored = Some((c.idx, c.cur, c.prev));
    }

    /// Settles a request counted in window `mark`; returns the units given back (negative:
    /// charged).
    pub fn settle(
        &mut self,
        now_ms: u64,
        quota: Quota,
        mark: u64,
        reserved: u32,
        actual: u32,
    ) -> i64 {
        let w = quota.window_ms.get();
        let Some(stored) = self.stored_for(w) else {
            return 0;
        };
        // Rolled forward to now: a count two windows old is gone, as Redis has let it expire.
        let c = counts(Some(stored), now_ms, w);
        let (after, given) = settle((c.idx, c.cur, c.prev), mark, reserved, actual);
        self.stored = Some(after);
        given
    }

    /// The estimate now.
    pub fn count(&self, now_ms: u64, quota: Quota) -> u64 {
        let w = quota.window_ms.get();
        count(counts(self.stored_for(w), now_ms, w), w)
    }

    /// Both windows empty.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        if self.window_ms == 0 {
            return true;
        }
        let c = counts(self.stored, now_ms, self.window_ms);
        c.cur == 0 && c.prev == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::algo::test_quota as q;

    fn send(s: &mut SlidingWindow, now_ms: u64, quota: Quota) -> Decision {
        let mut d = s.peek(now_ms, quota, 1);
        if d.allowed {
            s.record(now_ms, quota, 1, &mut d);
        }
        d
    }

    #[test]
    fn one_fixed_window_never_holds_more_than_the_limit() {
        let quota = q(10, 1000);
        let mut s = SlidingWindow::default();
        let allowed = (0..50)
            .filter(|_| send(&mut s, 5_000, quota).allowed)
            .count();
        assert_eq!(allowed, 10);
        let d = send(&mut s, 5_400, quota);
        // Full until the window ends (at 6000), then the previous window's 10 weigh 10 at
        // its start, 9.99 one ms later: room at 6001.
        assert_eq!((d.allowed, d.count, d.retry_after_ms), (false, 10, 601));
    }

    #[test]
    fn the_previous_window_weighs_by_the_part_still_covered() {
        let quota = q(10, 1000);
        let mut s = SlidingWindow::default();
        for _ in 0..10 {
            send(&mut s, 1_000, quota);
        }
        // 300 ms into the next window: 10 × 0.7 = 7 in use, 3 left.
        let d = s.peek(2_300, quota, 1);
        assert_eq!((d.allowed, d.count, d.remaining), (true, 7, 3));
        // The estimate falls below 7 after 2_300 + 1 ms (10 × 0.699 = 6.99).
        assert_eq!(d.reset_ms, 1);
        let allowed = (0..10)
            .filter(|_| send(&mut s, 2_300, quota).allowed)
            .count();
        assert_eq!(allowed, 3);
        // Two windows later nothing is left.
        assert!(s.is_idle(4_000));
        assert_eq!(s.peek(4_000, quota, 1).remaining, 10);
    }

    #[test]
    fn the_worst_case_is_twice_the_limit_in_a_sliding_window() {
        // Everything at the very end of one window, then as much as fits right after.
        let quota = q(100, 1000);
        let mut s = SlidingWindow::default();
        let first = (0..200)
            .filter(|_| send(&mut s, 1_999, quota).allowed)
            .count();
        let mut second = 0;
        for ms in 2_000..2_999 {
            second += (0..5).filter(|_| send(&mut s, ms, quota).allowed).count();
        }
        let total = first + second;
        assert_eq!(first, 100);
        // (1999, 2999) is one window's span: more than the limit, never more than twice it.
        assert!(total > 100 && total <= 200, "{total}");
    }

    #[test]
    fn window_boundaries_roll_the_counts() {
        let w = 1000;
        let stored = Some((7, 4, 9));
        assert_eq!(
            counts(stored, 7_500, w),
            Counts {
                idx: 7,
                elapsed: 500,
                cur: 4,
                prev: 9
            }
        );
        assert_eq!(
            counts(stored, 8_000, w),
            Counts {
                idx: 8,
                elapsed: 0,
                cur: 0,
                prev: 4
            }
        );
        assert_eq!(
            counts(stored, 9_000, w),
            Counts {
                idx: 9,
                elapsed: 0,
                cur: 0,
                prev: 0
            }
        );
        assert_eq!(
            counts(None, 9_999, w),
            Counts {
                idx: 9,
                elapsed: 999,
                cur: 0,
                prev: 0
            }
        );
    }

    #[test]
    fn the_clock_going_backwards_forgets_nothing() {
        let quota = q(3, 1000);
        let mut s = SlidingWindow::default();
        for _ in 0..3 {
            send(&mut s, 9_500, quota);
        }
        // Back into the window before: the later window's count still holds.
        let c = counts(s.stored, 8_900, 1000);
        assert_eq!((c.idx, c.cur), (9, 3));
        assert!(!send(&mut s, 8_900, quota).allowed);
    }

    #[test]
    fn a_changed_window_starts_the_counts_afresh() {
        let mut s = SlidingWindow::default();
        for _ in 0..3 {
            send(&mut s, 1_000_000, q(3, 1000));
        }
        assert!(!send(&mut s, 1_000_000, q(3, 1000)).allowed);
        // Window index 1000 of 1 s windows would be "in the future" for 60 s windows (index
        // 16): without starting afresh the key would stay full for ever.
        let d = send(&mut s, 1_000_100, q(3, 60_000));
        assert_eq!((d.allowed, d.count), (true, 1));
        assert!(!s.is_idle(1_000_100));
        assert!(s.is_idle(1_000_100 + 2 * 60_000));
    }

    #[test]
    fn costs_count_in_units_and_settle_in_their_window() {
        let quota = q(10, 1000);
        let mut s = SlidingWindow::default();
        let mut d = s.peek(5_000, quota, 7);
        s.record(5_000, quota, 7, &mut d);
        assert_eq!((d.count, d.remaining, d.mark), (7, 3, 5));
        let d = s.peek(5_100, quota, 4);
        assert_eq!((d.allowed, d.remaining), (false, 3));
        // Full for 4 until the estimate is at most 6: 7 × (1000 - e) / 1000 < 7 at once in
        // the next window (6.993 at e = 1).
        assert_eq!(d.retry_after_ms, 900 + 1);
        assert!(s.peek(5_100, quota, 3).allowed);
        // 2 used of 7: 5 back, in the window it was counted in.
        assert_eq!(s.settle(5_100, quota, 5, 7, 2), 5);
        assert_eq!(s.peek(5_100, quota, 1).count, 2);
        // In the next window the same request's charge goes to the previous count.
        let mut d = s.peek(6_000, quota, 1);
        s.record(6_000, quota, 1, &mut d);
        assert_eq!(s.settle(6_000, quota, 5, 2, 12), -10);
        assert_eq!(s.peek(6_000, quota, 1).count, 13);
        // Two windows on, nothing is left to settle.
        let mut d = s.peek(7_000, quota, 1);
        s.record(7_000, quota, 1, &mut d);
        assert_eq!(s.settle(7_000, quota, 5, 12, 0), 0);
        assert!(!SlidingWindow::default().peek(0, quota, 11).allowed);
    }

    #[test]
    fn a_changed_limit_applies_to_the_counts_as_they_are() {
        let mut s = SlidingWindow::default();
        for _ in 0..8 {
            send(&mut s, 0, q(10, 1000));
        }
        assert!(!send(&mut s, 10, q(5, 1000)).allowed);
        assert_eq!(send(&mut s, 10, q(20, 1000)).remaining, 11);
    }
}
