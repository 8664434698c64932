//! A rule's `ban = { after, within_ms, for_ms }` (contract §15), each mistake reported where
//! it is written.

use std::time::Duration;

use super::error::Collector;
use super::reader::Section;
use crate::rules::ban::BanPolicy;

const MAX_AFTER: i64 = 1_000_000;
const MAX_MS: i64 = 31_536_000_000;

/// The rule's ban policy (`Some(None)`: none; `None`: something is wrong, reported). A rule
/// with nothing to refuse (unlimited) or that never refuses (shadow) cannot ban.
pub(super) fn read(
    s: &Section,
    unlimited: bool,
    shadow: bool,
    errors: &mut Collector,
) -> Option<Option<BanPolicy>> {
    let Some(b) = s.inline_table("ban", &["after", "within_ms", "for_ms"], errors) else {
        return (!s.has("ban")).then_some(None);
    };
    let why = match (unlimited, shadow) {
        (true, _) => Some("an unlimited rule refuses nothing"),
        (_, true) => Some("a shadow rule never refuses, so it never bans"),
        _ => None,
    };
    if let Some(why) = why {
        errors.at(
            s.span_of("ban"),
            format!("{} ban: {why}; remove ban", s.name),
        );
        return None;
    }
    let at = s.span_of("ban");
    let mut field = |key: &str, min: i64, max: i64| -> Option<i64> {
        if !b.has(key) {
            errors.at(
                at.clone(),
                format!("{} {key} is required (an integer {min}..={max})", b.name),
            );
            return None;
        }
        b.integer(key, min, max, &format!("an integer {min}..={max}"), errors)
            .map(|v| v.value)
    };
    let after = field("after", 1, MAX_AFTER);
    let within = field("within_ms", 1, MAX_MS);
    let lasts = field("for_ms", 1, MAX_MS);
    Some(Some(BanPolicy {
        after: after? as u32,
        within: Duration::from_millis(within? as u64),
        lasts: Duration::from_millis(lasts? as u64),
    }))
}
