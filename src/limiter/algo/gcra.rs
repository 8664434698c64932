//! The generic cell rate algorithm (GCRA), as pure arithmetic over one key's state: a single
//! timestamp, the theoretical arrival time (TAT) of the next request, in microseconds.
//!
//! A quota of `limit` per `window_ms` is an emission interval `T = window / limit` (one
//! request per `T` sustained) and a burst tolerance `tau = T × (limit − 1)` (`limit` requests
//! at once). With `d = max(TAT, now) − now`, the time the key is "ahead" of its rate, a request
//! has room when `d ≤ tau`, and recording it moves TAT to `max(TAT, now) + T`. So a fresh key
//! takes exactly `limit` requests at once, then one per `T`; a key left alone for a window is
//! fresh again. `lua/gcra.lua` is the same arithmetic, run inside Redis.
//!
//! The counts it reports are its own estimate: `remaining` is how many requests would be
//! allowed at once now, `floor((tau − d) / T) + 1`, and `count` is `limit − remaining`, the
//! burst in use. Memory is one integer per key, whatever the limit. `T` is whole microseconds
//! (at least 1), rounded down, so the sustained rate is never below `limit` per window, and
//! `tau` is `T × (limit − 1)` exactly, so the burst is never more than `limit`.

use super::{Decision, Quota};

/// The emission interval `T` and the burst tolerance `tau`, in microseconds.
pub fn params(quota: Quota) -> (u64, u64) {
    let limit = u64::from(quota.limit.get());
    let t = (quota.window_ms.get().saturating_mul(1000) / limit).max(1);
    (t, t * (limit - 1))
}

/// Microseconds to whole milliseconds, rounded up.
fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

/// The decision as if the request were not recorded, for a key whose TAT is `tat_us` (0 for
/// a key never seen) and a request of `cost` units: it has room when `cost` units would be
/// allowed at once now.
pub fn peek(tat_us: u64, now_us: u64, quota: Quota, cost: u32) -> Decision {
    let (t, tau) = params(quota);
    let limit = quota.limit.get();
    let cost = u64::from(cost.max(1));
    let d = tat_us.saturating_sub(now_us);
    let remaining = if d <= tau { (tau - d) / t + 1 } else { 0 };
    if remaining >= cost {
        // The next request's worth frees when d has fallen by enough to raise remaining.
        let reset_ms = if d == 0 {
            0
        } else {
            ceil_ms(d + remaining * t - tau)
        };
        Decision::room(u64::from(limit) - remaining, limit, remaining, reset_ms)
    } else {
        // `cost` units fit once d has fallen to tau - (cost - 1) × T; a cost above the limit
        // never does, and is told to wait as if it could.
        let fits_at = tau.saturating_sub((cost - 1).saturating_mul(t));
        Decision {
            remaining,
            ..Decision::refused(
                u64::from(limit) - remaining,
                limit,
                ceil_ms(d.saturating_sub(fits_at)).max(1),
            )
        }
    }
}

/// Records an allowed request of `cost` units: the new TAT, and the decision updated to
/// count it.
pub fn record(tat_us: u64, now_us: u64, quota: Quota, cost: u32, d: &mut Decision) -> u64 {
    let (t, tau) = params(quota);
    let cost = u64::from(cost.max(1));
    let ahead = tat_us.saturating_sub(now_us);
    // With `remaining` before this request: the next unit after it frees at d - tau + r×T.
    // (A delayed request is recorded ahead of its rate: then nothing frees before it.)
    d.reset_ms = ceil_ms((ahead + d.remaining * t).saturating_sub(tau));
    d.count += cost;
    d.remaining = d.remaining.saturating_sub(cost);
    tat_us.max(now_us).saturating_add(cost.saturating_mul(t))
}

/// The TAT once a request that reserved `reserved` units settles at `actual`: moved back
/// by what was not used (never before `now`: what has drained cannot be given back twice), or
/// on by what was used beyond the reservation.
pub fn settle(tat_us: u64, now_us: u64, quota: Quota, reserved: u32, actual: u32) -> u64 {
    let (t, _) = params(quota);
    if actual >= reserved {
        tat_us
            .max(now_us)
            .saturating_add(u64::from(actual - reserved).saturating_mul(t))
    } else {
        tat_us
            .saturating_sub(u64::from(reserved - actual).saturating_mul(t))
            .max(now_us.min(tat_us))
    }
}

/// One key's state in the embedded store.
#[derive(Debug, Default)]
pub struct Gcra {
    tat_us: u64,
}

impl Gcra {
    pub fn peek(&mut self, now_us: u64, quota: Quota, cost: u32) -> Decision {
        peek(self.tat_us, now_us, quota, cost)
    }

    pub fn record(&mut self, now_us: u64, quota: Quota, cost: u32, decision: &mut Decision) {
        self.tat_us = record(self.tat_us, now_us, quota, cost, decision);
    }

    /// Settles a request's reservation; returns the units given back (negative: charged).
    pub fn settle(&mut self, now_us: u64, quota: Quota, reserved: u32, actual: u32) -> i64 {
        let before = self.tat_us;
        self.tat_us = settle(before, now_us, quota, reserved, actual);
        // In whole units, to the nearest: what drained meanwhile is a fraction of one.
        let t = i128::from(params(quota).0);
        let moved = i128::from(before.max(now_us)) - i128::from(self.tat_us.max(now_us));
        ((moved + moved.signum() * (t / 2)) / t).clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }

    /// The burst in use now (`limit − remaining`).
    pub fn count(&self, now_us: u64, quota: Quota) -> u64 {
        peek(self.tat_us, now_us, quota, 1).count
    }

    /// Nothing in use: the key is as good as fresh.
    pub fn is_idle(&self, now_us: u64) -> bool {
        self.tat_us <= now_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::algo::test_quota as q;

    /// Sends a request at `now_us` (ms × 1000); returns whether it was allowed.
    fn send(g: &mut Gcra, now_ms: u64, quota: Quota) -> Decision {
        let mut d = g.peek(now_ms * 1000, quota, 1);
        if d.allowed {
            g.record(now_ms * 1000, quota, 1, &mut d);
        }
        d
    }

    #[test]
    fn a_fresh_key_takes_exactly_its_burst() {
        let quota = q(5, 1000); // T = 200 ms, tau = 800 ms
        assert_eq!(params(quota), (200_000, 800_000));
        let mut g = Gcra::default();
        let t0 = 1_000_000;
        let remaining: Vec<u64> = (0..5).map(|_| send(&mut g, t0, quota).remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let d = send(&mut g, t0, quota);
        assert!(!d.allowed);
        // The next slot frees after one emission interval.
        assert_eq!((d.count, d.remaining, d.retry_after_ms), (5, 0, 200));
    }

    #[test]
    fn sustained_rate_is_one_per_interval() {
        let quota = q(5, 1000);
        let mut g = Gcra::default();
        let t0 = 1_000_000;
        for _ in 0..5 {
            send(&mut g, t0, quota);
        }
        // Every 200 ms one more request fits, and no more.
        for k in 1..=20 {
            let now = t0 + k * 200;
            assert!(send(&mut g, now, quota).allowed, "at +{}", k * 200);
            assert!(!send(&mut g, now, quota).allowed, "twice at +{}", k * 200);
        }
        // 199 ms after the last one is too early.
        assert!(!send(&mut g, t0 + 20 * 200 + 199, quota).allowed);
    }

    #[test]
    fn a_key_left_alone_for_a_window_is_fresh_again() {
        let quota = q(3, 900);
        let mut g = Gcra::default();
        for _ in 0..3 {
            send(&mut g, 5_000, quota);
        }
        assert!(!g.is_idle(5_000 * 1000));
        assert!(g.is_idle((5_000 + 900) * 1000));
        let d = g.peek((5_000 + 900) * 1000, quota, 1);
        assert_eq!((d.remaining, d.count, d.reset_ms), (3, 0, 0));
    }

    #[test]
    fn counts_and_reset_describe_the_burst_in_use() {
        let quota = q(4, 1000); // T = 250 ms
        let mut g = Gcra::default();
        let d = send(&mut g, 1_000, quota);
        assert_eq!((d.count, d.remaining, d.reset_ms), (1, 3, 250));
        // 100 ms later: 150 ms until the used slot is back.
        let d = g.peek(1_100 * 1000, quota, 1);
        assert_eq!((d.count, d.remaining, d.reset_ms), (1, 3, 150));
    }

    #[test]
    fn the_clock_going_backwards_never_admits_more() {
        let quota = q(3, 3000);
        let mut g = Gcra::default();
        for _ in 0..3 {
            send(&mut g, 10_000, quota);
        }
        // Time steps back 5 s: the key looks further ahead of its rate, so it stays blocked
        // (and longer), rather than letting a new burst through.
        let d = send(&mut g, 5_000, quota);
        assert!(!d.allowed);
        assert!(d.retry_after_ms > 1000, "{d:?}");
    }

    #[test]
    fn a_changed_limit_applies_to_the_state_as_it_is() {
        let mut g = Gcra::default();
        for _ in 0..10 {
            assert!(send(&mut g, 0, q(10, 1000)).allowed);
        }
        // Lowered to 2 per second on reload: the key is 1 s ahead, so it waits until it is
        // within the new tolerance (500 ms): 500 ms.
        let d = send(&mut g, 0, q(2, 1000));
        assert_eq!((d.allowed, d.retry_after_ms), (false, 500));
        assert!(send(&mut g, 500, q(2, 1000)).allowed);
        // Raised to 100 (tolerance 990 ms): the key is 1 s ahead, so 10 ms more and it fits.
        assert!(!send(&mut g, 500, q(100, 1000)).allowed);
        assert!(send(&mut g, 510, q(100, 1000)).allowed);
    }

    #[test]
    fn costs_take_that_many_intervals_and_settle_back_or_on() {
        let quota = q(10, 1000); // T = 100 ms, tau = 900 ms
        let mut g = Gcra::default();
        let now = 1_000_000;
        let mut d = g.peek(now, quota, 6);
        assert_eq!((d.allowed, d.remaining), (true, 10));
        g.record(now, quota, 6, &mut d);
        assert_eq!((d.count, d.remaining), (6, 4));
        // Four units left: five do not fit, and fit once one more interval has passed.
        let d = g.peek(now, quota, 5);
        assert_eq!((d.allowed, d.remaining, d.retry_after_ms), (false, 4, 100));
        assert!(g.peek(now, quota, 4).allowed);
        // Only 2 of the 6 used: 4 come back.
        assert_eq!(g.settle(now, quota, 6, 2), 4);
        assert_eq!(g.peek(now, quota, 1).remaining, 8);
        // A charge past the limit: 13 more than reserved, waits until the TAT drains.
        assert_eq!(g.settle(now, quota, 2, 15), -13);
        let d = g.peek(now, quota, 1);
        assert_eq!((d.allowed, d.retry_after_ms), (false, 600));
        // A give-back after the units drained gives nothing.
        let later = now + 5_000_000;
        assert_eq!(g.settle(later, quota, 5, 0), 0);
        assert!(g.is_idle(later));
        // More than the limit never fits.
        assert!(!Gcra::default().peek(now, quota, 11).allowed);
    }

    #[test]
    fn tiny_intervals_and_huge_limits_do_not_overflow() {
        // More requests than microseconds in the window: T is 1 µs, the burst is the limit.
        let quota = q(u32::MAX, 1);
        assert_eq!(params(quota), (1, u64::from(u32::MAX) - 1));
        let d = peek(0, 1, quota, 1);
        assert_eq!(d.remaining, u64::from(u32::MAX));
        let quota = q(1, 365 * 24 * 3600 * 1000);
        let mut d = peek(0, u64::MAX / 4, quota, 1);
        let tat = record(0, u64::MAX / 4, quota, 1, &mut d);
        assert!(tat > u64::MAX / 4);
    }
}
