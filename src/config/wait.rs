//! A rule's `concurrency`, `slot_ttl_ms`, `queue` and `delay` (contract §14), each mistake
//! reported where it is written: what makes no sense together is named with both keys.

use std::num::{NonZeroU32, NonZeroU64};

use super::error::Collector;
use super::reader::{Section, Span};
use crate::limiter::{Algorithm, Limit, Queue, SyncMode, Wait};

/// How long a concurrency slot lives unless its node renews it, by default.
pub const SLOT_TTL_MS: u64 = 10_000;
const MIN_SLOT_TTL_MS: i64 = 500;
const MAX_SLOT_TTL_MS: i64 = 3_600_000;
const MAX_CONCURRENCY: i64 = 1_000_000;
const MAX_WAITING: i64 = 100_000;
const MAX_WAIT_MS: i64 = 600_000;
const MAX_DELAY_MS: i64 = 60_000;

/// The keys of a rate limit, which a concurrency rule replaces.
const RATE_KEYS: [&str; 4] = ["limit", "window_ms", "algorithm", "period"];
/// What a request weighs (contract §13): a slot is one request, whatever it weighs.
const COST_KEYS: [&str; 4] = ["cost", "max_cost", "settle", "count_status"];

/// A concurrency rule's limit: `concurrency` slots living `slot_ttl_ms`. `Some(None)`: not a
/// concurrency rule; `None`: something is wrong (reported).
pub(super) fn concurrency(
    s: &Section,
    sync: Option<SyncMode>,
    errors: &mut Collector,
) -> Option<Option<Limit>> {
    let ttl = s.integer(
        "slot_ttl_ms",
        MIN_SLOT_TTL_MS,
        MAX_SLOT_TTL_MS,
        &format!("an integer {MIN_SLOT_TTL_MS}..={MAX_SLOT_TTL_MS}"),
        errors,
    );
    if !s.has("concurrency") {
        for key in ["slot_ttl_ms", "queue"] {
            if s.has(key) {
                errors.at(
                    s.span_of(key),
                    format!(
                        "{} {key}: applies only to a concurrency rule (concurrency = N)",
                        s.name
                    ),
                );
            }
        }
        return (!s.has("slot_ttl_ms") && !s.has("queue")).then_some(None);
    }
    let n = s.integer(
        "concurrency",
        1,
        MAX_CONCURRENCY,
        &format!("an integer 1..={MAX_CONCURRENCY}"),
        errors,
    );
    let mut ok = n.is_some() && (ttl.is_some() || !s.has("slot_ttl_ms"));
    let mut conflict = |key: &str, why: &str| {
        if s.has(key) {
            ok = false;
            errors.at(
                s.span_of(key),
                format!("{} {key}: {why}; remove {key} or concurrency", s.name),
            );
        }
    };
    for key in RATE_KEYS {
        conflict(
            key,
            "a concurrency rule limits requests in flight, not requests per window",
        );
    }
    for key in COST_KEYS {
        conflict(key, "a request holds one slot, whatever it costs");
    }
    conflict("unlimited", "an unlimited rule holds nothing");
    conflict(
        "delay",
        "delay paces a gcra rate; a concurrency rule waits with queue",
    );
    if matches!(sync, Some(SyncMode::Lease { .. })) {
        conflict(
            "sync",
            "slots are exact (one is held until its response ends, which no lease can foresee)",
        );
    }
    if !ok {
        return None;
    }
    let limit = NonZeroU32::new(n?.value as u32)?;
    let ttl = NonZeroU64::new(ttl.map_or(SLOT_TTL_MS, |t| t.value as u64))?;
    Some(Some(Limit::new(Algorithm::Concurrency, limit, ttl)))
}

/// How the rule's requests may wait instead of being refused, given its limit (`Some(None)`:
/// unlimited; `None`: wrong, reported already) and sync mode (`None` when something is wrong,
/// reported).
pub(super) fn wait(
    s: &Section,
    limit: Option<Option<Limit>>,
    sync: Option<SyncMode>,
    errors: &mut Collector,
) -> Option<Wait> {
    let mut wait = Wait::default();
    let mut ok = true;
    if let Some(q) = s.inline_table("queue", &["max_waiting", "max_wait_ms"], errors) {
        let at = s.span_of("queue");
        let waiting = required(&q, "max_waiting", 1, MAX_WAITING, &at, errors);
        let wait_ms = required(&q, "max_wait_ms", 1, MAX_WAIT_MS, &at, errors);
        match (waiting, wait_ms) {
            (Some(max_waiting), Some(max_wait_ms)) => {
                wait.queue = Some(Queue {
                    max_waiting: max_waiting as u32,
                    max_wait_ms: max_wait_ms as u64,
                })
            }
            _ => ok = false,
        }
    } else {
        ok &= !s.has("queue");
    }
    if let Some(d) = s.inline_table("delay", &["max_delay_ms"], errors) {
        // (A concurrency rule with delay is reported as a conflict of its own.)
        let algorithm = limit.map(|l| l.map(|l| l.algorithm));
        if matches!(algorithm, Some(a) if a != Some(Algorithm::Gcra) && a != Some(Algorithm::Concurrency))
        {
            ok = false;
            errors.at(
                s.span_of("delay"),
                format!(
                    "{} delay: applies only with algorithm = \"gcra\" (whose requests are spaced at the rate)",
                    s.name
                ),
            );
        }
        if matches!(sync, Some(SyncMode::Lease { .. })) {
            ok = false;
            errors.at(
                s.span_of("delay"),
                format!(
                    "{} delay: needs sync = \"exact\" (a delayed request's place is reserved in the shared counter)",
                    s.name
                ),
            );
        }
        match required(
            &d,
            "max_delay_ms",
            1,
            MAX_DELAY_MS,
            &s.span_of("delay"),
            errors,
        ) {
            Some(ms) => wait.max_delay_ms = ms as u64,
            None => ok = false,
        }
    } else {
        ok &= !s.has("delay");
    }
    ok.then_some(wait)
}

/// An integer key of an inline table (written at `at`) that must be written.
fn required(
    s: &Section,
    key: &str,
    min: i64,
    max: i64,
    at: &Span,
    errors: &mut Collector,
) -> Option<i64> {
    if !s.has(key) {
        errors.at(
            at.clone(),
            format!("{} {key} is required (an integer {min}..={max})", s.name),
        );
        return None;
    }
    s.integer(key, min, max, &format!("an integer {min}..={max}"), errors)
        .map(|v| v.value)
}
