//! The sliding-window log, as pure arithmetic over one key's log of allowed-request times.
//!
//! A request at `now` is allowed when fewer than `limit` entries lie in the window
//! `(now - window_ms, now]`; an allowed request is recorded at `now`, a blocked one is not.
//! When blocked, a slot frees when the entry that keeps the log at `limit` leaves the window:
//! that is `log[count - limit] + window_ms`. `lua/sliding_window.lua` is this same arithmetic,
//! run inside Redis; `tests/store_equivalence.rs` runs one trace through both.
//!
//! The log is exact: it never admits more than `limit` in any window, at the cost of one entry
//! per allowed request (bounded by `limit` per key).

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Entries in the window after this decision (an allowed request counts itself).
    pub count: u64,
    pub limit: u32,
    /// Further requests the window would allow now.
    pub remaining: u64,
    /// Milliseconds until a slot frees; 0 when allowed.
    pub retry_after_ms: u64,
}

impl Decision {
    /// `Retry-After`: whole seconds, rounded up, at least 1 when blocked (contract §3.4).
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            0
        } else {
            self.retry_after_ms.div_ceil(1000).max(1)
        }
    }
}

/// Whether an entry recorded at `t_ms` has left the window `(now - window_ms, now]`.
pub fn is_expired(t_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    t_ms.saturating_add(window_ms) <= now_ms
}

/// Decides on a log already pruned to the window and sorted oldest first.
pub fn decide(log: &[u64], now_ms: u64, limit: u32, window_ms: u64) -> Decision {
    decide_indexed(log.len(), |i| log[i], now_ms, limit, window_ms)
}

/// [`decide`] over any log that can be indexed (oldest first) without being copied: the
/// decision reads its length and, when blocked, one entry.
pub fn decide_indexed(
    len: usize,
    entry: impl FnOnce(usize) -> u64,
    now_ms: u64,
    limit: u32,
    window_ms: u64,
) -> Decision {
    let count = len as u64;
    let limit64 = u64::from(limit);
    if count < limit64 {
        return Decision {
            allowed: true,
            count: count + 1,
            limit,
            remaining: limit64 - count - 1,
            retry_after_ms: 0,
        };
    }
    // The entry whose expiry brings the log below the limit.
    let freeing = entry((count - limit64) as usize);
    Decision {
        allowed: false,
        count,
        limit,
        remaining: 0,
        retry_after_ms: (freeing + window_ms).saturating_sub(now_ms).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_until_the_limit() {
        let d = decide(&[], 1000, 3, 100);
        assert_eq!((d.allowed, d.count, d.remaining), (true, 1, 2));
        let d = decide(&[990, 995], 1000, 3, 100);
        assert_eq!((d.allowed, d.count, d.remaining), (true, 3, 0));
    }

    #[test]
    fn blocks_at_the_limit_until_the_oldest_leaves() {
        let d = decide(&[950, 960, 970], 1000, 3, 100);
        assert!(!d.allowed);
        assert_eq!((d.count, d.remaining), (3, 0));
        // 950 leaves the window (now - 100, now] at now = 1050.
        assert_eq!(d.retry_after_ms, 50);
        assert_eq!(d.retry_after_secs(), 1);
    }

    #[test]
    fn lowered_limit_waits_for_enough_entries_to_leave() {
        // Four entries, limit 2: three must leave before one more fits, so the third decides.
        let d = decide(&[910, 920, 930, 940], 1000, 2, 100);
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
    fn retry_after_rounds_up_to_whole_seconds() {
        let blocked = |ms| Decision {
            allowed: false,
            count: 1,
            limit: 1,
            remaining: 0,
            retry_after_ms: ms,
        };
        assert_eq!(blocked(1).retry_after_secs(), 1);
        assert_eq!(blocked(1000).retry_after_secs(), 1);
        assert_eq!(blocked(1001).retry_after_secs(), 2);
        assert_eq!(blocked(59_999).retry_after_secs(), 60);
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let d = decide(&[], u64::MAX / 2, u32::MAX, u64::MAX / 4);
        assert_eq!(d.remaining, u64::from(u32::MAX) - 1);
    }
}
