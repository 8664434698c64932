//! What the decisions of a request's checks mean together (contract §7): the request goes
//! through only when every enforced check allows it; the response describes the check with the
//! fewest remaining requests (ties: the smaller limit); a blocked request waits for the
//! longest of its blocking checks. Shadow checks never block and are never shown to clients.

use super::{Check, Decision};

/// The decided checks of one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    checks: Vec<Check>,
    /// One per check; `None` where the backend answered without asking its store.
    decisions: Vec<Option<Decision>>,
    allowed: bool,
}

/// The `result` label a check's decision is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The request went through and was recorded in this counter.
    Allowed,
    /// The request was refused (by this check or another) and recorded nowhere.
    Blocked,
    /// A shadow check that would have blocked.
    ShadowBlocked,
}

impl CheckResult {
    pub fn label(self) -> &'static str {
        match self {
            CheckResult::Allowed => "allowed",
            CheckResult::Blocked => "blocked",
            CheckResult::ShadowBlocked => "shadow_blocked",
        }
    }
}

impl Outcome {
    pub fn new(checks: Vec<Check>, decisions: Vec<Option<Decision>>) -> Outcome {
        debug_assert_eq!(checks.len(), decisions.len());
        let allowed = checks
            .iter()
            .zip(&decisions)
            .all(|(c, d)| c.shadow || d.is_some_and(|d| d.allowed));
        Outcome {
            checks,
            decisions,
            allowed,
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Every check with its decision (where known), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Check, Option<&Decision>)> {
        self.checks
            .iter()
            .zip(self.decisions.iter().map(Option::as_ref))
    }

    /// The checks a client is told about: enforced ones whose decision is known.
    pub fn visible(&self) -> impl Iterator<Item = (&Check, &Decision)> {
        self.iter()
            .filter(|(c, _)| !c.shadow)
            .filter_map(|(c, d)| d.map(|d| (c, d)))
    }

    /// The check the `X-RateLimit-*` headers and the 429 body describe: the fewest remaining,
    /// then the smaller limit, then the longer wait.
    pub fn headline(&self) -> Option<(&Check, &Decision)> {
        self.visible().min_by(|(_, a), (_, b)| nearest_first(a, b))
    }

    /// The check a refused request is counted under (`ratelimiter_refused_total`): of its
    /// refusing checks, the one the headline would pick among them. Not the headline itself,
    /// which may be a check that allowed (a cost can be refused with units remaining).
    pub fn refused_by(&self) -> Option<&Check> {
        self.visible()
            .filter(|(_, d)| !d.allowed)
            .min_by(|(_, a), (_, b)| nearest_first(a, b))
            .map(|(c, _)| c)
    }

    /// `Retry-After` of a blocked request: the longest wait among its blocking checks.
    pub fn retry_after_secs(&self) -> u64 {
        self.visible()
            .filter(|(_, d)| !d.allowed)
            .map(|(_, d)| d.retry_after_secs())
            .max()
            .unwrap_or(0)
    }

    /// How long an allowed request waits before it is proxied (contract §14, `delay`): the
    /// longest delay among its enforced checks; 0 for most.
    pub fn delay(&self) -> std::time::Duration {
        let ms = self.visible().map(|(_, d)| d.delay_ms).max().unwrap_or(0);
        std::time::Duration::from_millis(ms)
    }

    /// How each check is counted in `ratelimiter_requests_checked_total`.
    pub fn result_of(&self, check: &Check, decision: Option<&Decision>) -> CheckResult {
        let had_room = decision.is_some_and(|d| d.allowed);
        if check.shadow && decision.is_some() && !had_room {
            CheckResult::ShadowBlocked
        } else if self.allowed {
            CheckResult::Allowed
        } else {
            CheckResult::Blocked
        }
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

/// The order the headline is chosen in: the fewest remaining, then the smaller limit, then
/// the longer wait.
fn nearest_first(a: &Decision, b: &Decision) -> std::cmp::Ordering {
    a.remaining
        .cmp(&b.remaining)
        .then(a.limit.cmp(&b.limit))
        .then(b.retry_after_ms.cmp(&a.retry_after_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limit;
    use std::num::{NonZeroU32, NonZeroU64};

    fn check(rule: &'static str, limit: u32, shadow: bool) -> Check {
        Check {
            cost: 1,
            rule,
            key: format!("{rule}/k"),
            limit: Limit::sliding_log(
                NonZeroU32::new(limit).unwrap(),
                NonZeroU64::new(1000).unwrap(),
            ),
            shadow,
            sync: crate::limiter::SyncMode::Exact,
            wait: Default::default(),
            period_ms: 0,
        }
    }

    fn decision(allowed: bool, limit: u32, remaining: u64, retry_after_ms: u64) -> Decision {
        Decision {
            allowed,
            count: u64::from(limit) - remaining,
            limit,
            remaining,
            retry_after_ms,
            reset_ms: retry_after_ms,
            mark: 0,
            delay_ms: 0,
        }
    }

    #[test]
    fn allowed_only_when_every_enforced_check_has_room() {
        let o = Outcome::new(
            vec![check("a", 5, false), check("b", 3, true)],
            vec![
                Some(decision(true, 5, 2, 0)),
                Some(decision(false, 3, 0, 900)),
            ],
        );
        assert!(o.allowed(), "a shadow check never blocks");
        assert_eq!(
            o.headline().unwrap().0.rule,
            "a",
            "shadow checks are not shown"
        );
        let results: Vec<_> = o.iter().map(|(c, d)| o.result_of(c, d)).collect();
        assert_eq!(results, [CheckResult::Allowed, CheckResult::ShadowBlocked]);
    }

    #[test]
    fn blocked_by_one_shows_the_fewest_remaining_and_waits_the_longest() {
        let o = Outcome::new(
            vec![
                check("a", 10, false),
                check("b", 5, false),
                check("c", 2, false),
            ],
            vec![
                Some(decision(true, 10, 4, 0)),
                Some(decision(false, 5, 0, 30_000)),
                Some(decision(false, 2, 0, 1_500)),
            ],
        );
        assert!(!o.allowed());
        // b and c both have 0 left; c has the smaller limit.
        assert_eq!(o.headline().unwrap().0.rule, "c");
        assert_eq!(o.retry_after_secs(), 30);
        let results: Vec<_> = o.iter().map(|(c, d)| o.result_of(c, d)).collect();
        assert_eq!(results, [CheckResult::Blocked; 3]);
    }

    #[test]
    fn a_refusal_is_counted_under_a_rule_that_refused_it() {
        // A cost of 3 refused by "big" with 2 units left; "small" allowed with 1 left is the
        // headline, yet it refused nothing.
        let o = Outcome::new(
            vec![check("big", 10, false), check("small", 2, false)],
            vec![
                Some(decision(false, 10, 2, 5_000)),
                Some(decision(true, 2, 1, 0)),
            ],
        );
        assert_eq!(o.headline().unwrap().0.rule, "small");
        assert_eq!(o.refused_by().unwrap().rule, "big");
        let allowed = Outcome::new(
            vec![check("a", 5, false)],
            vec![Some(decision(true, 5, 4, 0))],
        );
        assert!(allowed.refused_by().is_none());
    }

    #[test]
    fn unknown_decisions_of_a_remembered_block() {
        let o = Outcome::new(
            vec![check("a", 10, false), check("b", 5, false)],
            vec![None, Some(decision(false, 5, 0, 2_000))],
        );
        assert!(!o.allowed());
        assert_eq!(o.visible().count(), 1);
        assert_eq!(o.headline().unwrap().0.rule, "b");
    }
}
