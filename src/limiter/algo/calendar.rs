//! A calendar quota (contract §15), as pure arithmetic over one key's count: the units
//! counted in the current period, which ends `window_ms` after the period's first request
//! (the gateway passes, as `window_ms`, the time left until the period's end in its zone).
//! From the end on, the count starts afresh. A record's mark is its period's end (ms), so a
//! settlement after the boundary leaves the new period alone. `lua/calendar.lua` is the
//! same, run inside Redis, where the key expires at the end.

use super::{Decision, Quota};

/// One key's count in the embedded store.
#[derive(Debug, Default)]
pub struct Fixed {
    count: u64,
    /// When the period counted ends (µs since the epoch).
    ends_us: u64,
}

impl Fixed {
    fn live(&mut self, now_us: u64) -> u64 {
        if now_us >= self.ends_us {
            self.count = 0;
        }
        self.count
    }

    pub fn peek(&mut self, now_us: u64, quota: Quota, cost: u32) -> Decision {
        let count = self.live(now_us);
        let limit = quota.limit.get();
        let remaining = u64::from(limit).saturating_sub(count);
        let left_ms = match count {
            0 => quota.window_ms.get(),
            _ => (self.ends_us - now_us).div_ceil(1000),
        };
        if count + u64::from(cost) <= u64::from(limit) {
            let reset_ms = if count == 0 { 0 } else { left_ms };
            return Decision::room(count, limit, remaining, reset_ms);
        }
        Decision {
            remaining,
            ..Decision::refused(count, limit, left_ms.max(1))
        }
    }

    pub fn record(&mut self, now_us: u64, quota: Quota, cost: u32, d: &mut Decision) {
        if self.live(now_us) == 0 {
            self.ends_us = now_us + quota.window_ms.get() * 1000;
        }
        self.count += u64::from(cost);
        d.count += u64::from(cost);
        d.remaining = d.remaining.saturating_sub(u64::from(cost));
        d.reset_ms = (self.ends_us - now_us).div_ceil(1000);
        d.mark = (self.ends_us / 1000) as i64;
    }

    /// Gives back (or charges) the difference, in the period the record (`mark`) was made in
    /// while it runs.
    pub fn settle(&mut self, now_us: u64, mark: u64, reserved: u32, actual: u32) -> i64 {
        let count = self.live(now_us);
        if self.ends_us / 1000 != mark || now_us >= self.ends_us {
            return 0;
        }
        let after = (count + u64::from(actual)).saturating_sub(u64::from(reserved));
        self.count = after;
        count as i64 - after as i64
    }

    pub fn count(&mut self, now_us: u64) -> u64 {
        self.live(now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::algo::test_quota as q;

    #[test]
    fn counts_until_the_period_ends_then_afresh() {
        let mut f = Fixed::default();
        // The period has 3 s left when its first request comes.
        for _ in 0..2 {
            let mut d = f.peek(0, q(2, 3000), 1);
            assert!(d.allowed);
            f.record(0, q(2, 3000), 1, &mut d);
        }
        // A second later the gateway says 2 s are left; the key still ends at 3 s.
        let refused = f.peek(1_000_000, q(2, 2000), 1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, 2000, "to the period's end");
        assert!(
            f.peek(3_000_000, q(2, 86_400_000), 1).allowed,
            "a new period"
        );
        assert_eq!(f.count(3_000_000), 0);
    }

    #[test]
    fn a_settlement_after_the_boundary_leaves_the_new_period_alone() {
        let mut f = Fixed::default();
        let mut d = f.peek(0, q(10, 1000), 5);
        f.record(0, q(10, 1000), 5, &mut d);
        let old_period = d.mark as u64;
        assert_eq!(
            f.settle(500_000, old_period, 5, 2),
            3,
            "in its period: 3 back"
        );
        // The next period counts 4; the old record settles at 0 after the boundary.
        let mut d = f.peek(1_000_000, q(10, 1000), 4);
        f.record(1_000_000, q(10, 1000), 4, &mut d);
        assert_eq!(f.settle(1_200_000, old_period, 2, 0), 0);
        assert_eq!(f.count(1_200_000), 4);
    }
}
