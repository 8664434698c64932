//! A rule's `period`, `timezone` and `anchor_day` (contract §15): a quota per calendar day,
//! week or month, each mistake reported where it is written.

use jiff::tz::TimeZone;

use super::error::Collector;
use super::reader::Section;
use crate::limiter::SyncMode;
use crate::rules::calendar::{Calendar, Period};

/// The rule's calendar (`Some(None)`: not a calendar quota; `None`: something is wrong,
/// reported).
pub(super) fn read(
    s: &Section,
    sync: Option<SyncMode>,
    errors: &mut Collector,
) -> Option<Option<Calendar>> {
    let period = s.choice(
        "period",
        &[
            ("day", Period::Day),
            ("week", Period::Week),
            ("month", Period::Month),
        ],
        errors,
    );
    if !s.has("period") {
        for key in ["timezone", "anchor_day"] {
            if s.has(key) {
                errors.at(
                    s.span_of(key),
                    format!("{} {key}: applies only to a calendar quota (period = \"day\", \"week\" or \"month\")", s.name),
                );
            }
        }
        return (!s.has("timezone") && !s.has("anchor_day")).then_some(None);
    }
    let mut ok = period.is_some();
    let mut conflict = |key: &str, why: &str| {
        if s.has(key) {
            ok = false;
            errors.at(
                s.span_of(key),
                format!("{} {key}: {why}; remove {key} or period", s.name),
            );
        }
    };
    conflict("window_ms", "a calendar quota's window is its period");
    conflict(
        "algorithm",
        "a calendar quota counts every unit of its period, renewed at the boundary",
    );
    conflict("delay", "a calendar quota is not paced");
    if matches!(sync, Some(SyncMode::Lease { .. })) {
        conflict(
            "sync",
            "a calendar quota is exact (a lease would outlive the period's end)",
        );
    }
    let (zone, zone_name) = match s.string("timezone", errors) {
        None if s.has("timezone") => (None, String::new()),
        None => (Some(TimeZone::UTC), "UTC".to_string()),
        Some(at) => match TimeZone::get(&at.value) {
            Ok(zone) => (Some(zone), at.value),
            Err(_) => {
                errors.at(
                    at.span,
                    format!(
                        "{} timezone: expected an IANA time zone like \"Europe/Berlin\" or \"UTC\", found {:?}",
                        s.name, at.value
                    ),
                );
                (None, String::new())
            }
        },
    };
    let anchor = s.integer(
        "anchor_day",
        1,
        31,
        "an integer 1..=31 (the month's billing day)",
        errors,
    );
    if period != Some(Period::Month) {
        if let Some(a) = &anchor {
            ok = false;
            errors.at(
                a.span.clone(),
                format!(
                    "{} anchor_day: applies only with period = \"month\"",
                    s.name
                ),
            );
        }
    }
    ok &= anchor.is_some() || !s.has("anchor_day");
    if !ok {
        return None;
    }
    Some(Some(Calendar {
        period: period?,
        zone: zone?,
        zone_name,
        anchor_day: anchor.map_or(1, |a| a.value as u8),
    }))
}
