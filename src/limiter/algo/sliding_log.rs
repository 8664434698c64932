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

/// Peeks at a log already pruned to the window and indexable oldest first, without copying
/// it: the decision reads its length and at most two entries.
pub fn peek_indexed(
    len: usize,
    entry: impl Fn(usize) -> u64,
    now_ms: u64,
    quota: Quota,
) -> Decision {
    let count = len as u64;
    let limit = quota.limit.get();
    let limit64 = u64::from(limit);
    let window_ms = quota.window_ms.get();
    let until_leaves = |t: u64| (t + window_ms).saturating_sub(now_ms).max(1);
    if count < limit64 {
        return Decision {
            allowed: true,
            count,
            limit,
            remaining: limit64 - count,
            retry_after_ms: 0,
            reset_ms: if count == 0 {
                0
            } else {
                until_leaves(entry(0))
            },
        };
    }
    // The entry whose expiry brings the log below the limit.
    Decision::refused(
        count,
        limit,
        until_leaves(entry((count - limit64) as usize)),
    )
}

/// [`peek_indexed`] over a slice.
pub fn peek(log: &[u64], now_ms: u64, quota: Quota) -> Decision {
    peek_indexed(log.len(), |i| log[i], now_ms, quota)
}

/// The decision once the request is recorded at `now` (only ever after a peek with room).
pub fn counted(d: &mut Decision, quota: Quota) {
    if d.count == 0 {
        // The new entry is the oldest: more quota frees when it leaves.
        d.reset_ms = quota.window_ms.get();
    }
    d.count += 1;
    d.remaining = d.remaining.saturating_sub(1);
}

/// One key's log in the embedded store: the times of allowed requests, oldest first.
#[derive(Debug, Default)]
pub struct Log {
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

    pub fn peek(&mut self, now_ms: u64, quota: Quota) -> Decision {
        // The window in force is the latest one asked for (it changes only on reload).
        self.window_ms = quota.window_ms.get();
        self.prune(now_ms);
        let times = &self.times;
        peek_indexed(times.len(), |i| times[i], now_ms, quota)
    }

    pub fn record(&mut self, now_ms: u64, quota: Quota, decision: &mut Decision) {
        self.window_ms = quota.window_ms.get();
        self.times.push_back(now_ms);
        counted(decision, quota);
    }

    pub fn count(&mut self, now_ms: u64) -> u64 {
        self.prune(now_ms);
        self.times.len() as u64
    }

    pub fn shrink(&mut self) {
        if self.times.capacity() > 4 * self.times.len().max(4) {
            self.times.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU32, NonZeroU64};

    fn q(limit: u32, window_ms: u64) -> Quota {
        Quota {
            limit: NonZeroU32::new(limit).unwrap(),
            window_ms: NonZeroU64::new(window_ms).unwrap(),
        }
    }

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
        counted(&mut d, q(3, 100));
        assert_eq!((d.count, d.remaining, d.reset_ms), (1, 2, 100));
        let mut d = peek(&[990], 1000, q(3, 100));
        counted(&mut d, q(3, 100));
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
            let mut d = log.peek(now, quota);
            assert!(d.allowed);
            log.record(now, quota, &mut d);
        }
        let d = log.peek(20, quota);
        assert_eq!((d.allowed, d.retry_after_ms), (false, 80));
        // Blocked requests are not recorded; the entry at 0 leaves at 100.
        assert!(log.peek(100, quota).allowed);
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
    fn huge_limits_do_not_overflow() {
        let d = peek(&[], u64::MAX / 2, q(u32::MAX, u64::MAX / 4));
        assert_eq!(d.remaining, u64::from(u32::MAX));
    }
}
