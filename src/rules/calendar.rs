//! Calendar periods (contract §15): a quota per day, week or month in an IANA time zone,
//! daylight saving included, renewed at the period's boundary in that zone. A month starts
//! on its `anchor_day` (the billing day), or on the month's last day when it is shorter
//! (`anchor_day = 31` renews on 30 April and 28 February). A week starts on Monday.

use std::fmt;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A calendar period's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// Its usual length, for show (a rule's `window_ms` in listings): a day of 24 hours, a
    /// week, a month of 30 days. Counting uses the real period.
    pub fn nominal_ms(self) -> std::num::NonZeroU64 {
        let ms: u64 = match self {
            Period::Day => 86_400_000,
            Period::Week => 7 * 86_400_000,
            Period::Month => 30 * 86_400_000,
        };
        std::num::NonZeroU64::new(ms).unwrap_or(std::num::NonZeroU64::MIN)
    }
}

/// A rule's calendar: its period, zone and (for months) billing day.
#[derive(Clone)]
pub struct Calendar {
    pub period: Period,
    pub zone: TimeZone,
    /// The zone's name as written (`Europe/Berlin`; `UTC` by default).
    pub zone_name: String,
    /// The day of the month a month starts on, 1..=31.
    pub anchor_day: u8,
}

impl fmt::Debug for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.period.name(), self.zone_name)?;
        if self.period == Period::Month {
            write!(f, " from day {}", self.anchor_day)?;
        }
        Ok(())
    }
}

/// The period a moment falls in: when it began and when it ends, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Bounds {
    /// Milliseconds from `now_ms` to the end (at least 1).
    pub fn left_ms(&self, now_ms: i64) -> u64 {
        (self.end_ms - now_ms).max(1) as u64
    }

    pub fn length_ms(&self) -> u64 {
        (self.end_ms - self.start_ms).max(1) as u64
    }
}

impl Calendar {
    /// The period `now` falls in.
    pub fn bounds(&self, now: Timestamp) -> Bounds {
        let today = now.to_zoned(self.zone.clone()).date();
        let (start, end) = match self.period {
            Period::Day => (today, today.tomorrow().unwrap_or(today)),
            Period::Week => {
                let back = i64::from(today.weekday().to_monday_zero_offset());
                let monday = today.checked_sub(back.days()).unwrap_or(today);
                (monday, monday.checked_add(7.days()).unwrap_or(monday))
            }
            Period::Month => {
                let this = self.anchor_in(today.year(), today.month());
                let start = if today >= this {
                    this
                } else {
                    let last = today.first_of_month().yesterday().unwrap_or(today);
                    self.anchor_in(last.year(), last.month())
                };
                let next = start.last_of_month().tomorrow().unwrap_or(start);
                (start, self.anchor_in(next.year(), next.month()))
            }
        };
        Bounds {
            start_ms: self.midnight_ms(start),
            end_ms: self.midnight_ms(end),
        }
    }

    /// The anchor day of a month, or its last day when the month is shorter.
    fn anchor_in(&self, year: i16, month: i8) -> Date {
        let first = Date::new(year, month, 1).unwrap_or_default();
        let day = self.anchor_day.min(first.days_in_month() as u8).max(1);
        Date::new(year, month, day as i8).unwrap_or(first)
    }

    /// When a date begins in the zone (its first moment, should midnight be skipped by a
    /// change of offset), in ms since the epoch.
    fn midnight_ms(&self, date: Date) -> i64 {
        date.to_zoned(self.zone.clone())
            .and_then(|z| z.start_of_day())
            .map_or(0, |z| z.timestamp().as_millisecond())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(period: Period, zone: &str, anchor_day: u8) -> Calendar {
        Calendar {
            period,
            zone: TimeZone::get(zone).unwrap(),
            zone_name: zone.to_string(),
            anchor_day,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ms(s: &str) -> i64 {
        at(s).as_millisecond()
    }

    #[test]
    fn a_day_is_a_day_in_its_zone_daylight_saving_included() {
        let berlin = cal(Period::Day, "Europe/Berlin", 1);
        // 23:59:57 in Berlin (CET, UTC+1) on 10 March: the day ends at 23:00 UTC.
        let b = berlin.bounds(at("2026-03-10T22:59:57Z"));
        assert_eq!(b.end_ms, ms("2026-03-10T23:00:00Z"));
        assert_eq!(b.left_ms(ms("2026-03-10T22:59:57Z")), 3000);
        // 29 March 2026 has 23 hours in Berlin: CET until 02:00, then CEST.
        let b = berlin.bounds(at("2026-03-29T21:59:57Z"));
        assert_eq!(b.start_ms, ms("2026-03-28T23:00:00Z"));
        assert_eq!(b.end_ms, ms("2026-03-29T22:00:00Z"));
        assert_eq!(b.length_ms(), 23 * 3_600_000);
        // 25 October 2026 has 25.
        let b = berlin.bounds(at("2026-10-25T12:00:00Z"));
        assert_eq!(b.length_ms(), 25 * 3_600_000);
    }

    #[test]
    fn a_week_starts_on_monday() {
        let utc = cal(Period::Week, "UTC", 1);
        // Sunday 6 December 2026: the week began on Monday 30 November.
        let b = utc.bounds(at("2026-12-06T20:00:00Z"));
        assert_eq!(b.start_ms, ms("2026-11-30T00:00:00Z"));
        assert_eq!(b.end_ms, ms("2026-12-07T00:00:00Z"));
    }

    #[test]
    fn a_month_starts_on_its_billing_day_or_the_last_day_of_a_shorter_month() {
        let on_31 = cal(Period::Month, "UTC", 31);
        // April has 30 days: the period from 31 March ends on 30 April.
        let b = on_31.bounds(at("2026-04-29T23:59:57Z"));
        assert_eq!(b.start_ms, ms("2026-03-31T00:00:00Z"));
        assert_eq!(b.end_ms, ms("2026-04-30T00:00:00Z"));
        // From 30 April to 31 May; February's ends on the 28th.
        let b = on_31.bounds(at("2026-04-30T00:00:01Z"));
        assert_eq!(b.end_ms, ms("2026-05-31T00:00:00Z"));
        let b = on_31.bounds(at("2026-02-10T00:00:00Z"));
        assert_eq!(
            (b.start_ms, b.end_ms),
            (ms("2026-01-31T00:00:00Z"), ms("2026-02-28T00:00:00Z"))
        );
        let on_15 = cal(Period::Month, "Europe/Berlin", 15);
        // 14 January in Berlin: the period began on 15 December (CET).
        let b = on_15.bounds(at("2026-01-14T12:00:00Z"));
        assert_eq!(b.start_ms, ms("2025-12-14T23:00:00Z"));
        assert_eq!(b.end_ms, ms("2026-01-14T23:00:00Z"));
        let calendar_month = cal(Period::Month, "UTC", 1);
        let b = calendar_month.bounds(at("2026-12-31T23:59:59Z"));
        assert_eq!(b.end_ms, ms("2027-01-01T00:00:00Z"));
    }
}
