//! The rate-limit fields of a response (contract §3 and §7), in the style `[headers] style`
//! picks:
//!
//! - `x-ratelimit` (default): `X-RateLimit-Limit` and `X-RateLimit-Remaining` of the check with
//!   the fewest remaining requests; a 429 adds `X-RateLimit-Reset`.
//! - `ietf`: the fields of draft-ietf-httpapi-ratelimit-headers (-10/-11), one list item per
//!   applied rule: `RateLimit-Policy: "login";q=5;w=60` (quota, window in seconds, rounded
//!   up) and `RateLimit: "login";r=0;t=42` (remaining, seconds until more quota frees); a
//!   concurrency rule's quota is of requests at once: `"gpu";q=4;qu="concurrent-requests"`.
//! - `both`, or `none`.
//!
//! A 429 always carries `Retry-After` (the longest wait among the blocking rules), whatever the
//! style: it is HTTP's own field, not a rate-limit one. On a 429 every `t` equals
//! `Retry-After`: never smaller, as the contract asks, and never later, as the draft asks. Shadow
//! rules never show.

use std::fmt::{self, Write};
use std::str::FromStr;

use pingora::http::ResponseHeader;

use crate::limiter::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    #[default]
    XRateLimit,
    Ietf,
    Both,
    None,
}

impl HeaderStyle {
    const NAMES: [(HeaderStyle, &'static str); 4] = [
        (HeaderStyle::XRateLimit, "x-ratelimit"),
        (HeaderStyle::Ietf, "ietf"),
        (HeaderStyle::Both, "both"),
        (HeaderStyle::None, "none"),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("x-ratelimit", |(_, n)| n)
    }

    fn x_ratelimit(self) -> bool {
        matches!(self, HeaderStyle::XRateLimit | HeaderStyle::Both)
    }

    fn ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }

    /// Whether the fields show when more quota frees up for an allowed request (the IETF `t`).
    pub fn shows_reset(self) -> bool {
        self.ietf()
    }
}

impl fmt::Display for HeaderStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HeaderStyle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(style, _)| *style)
            .ok_or_else(|| {
                format!("expected \"x-ratelimit\", \"ietf\", \"both\" or \"none\", found {s:?}")
            })
    }
}

/// Puts the fields for a decided request on a response.
pub fn insert_limit_headers(
    resp: &mut ResponseHeader,
    outcome: &Outcome,
    style: HeaderStyle,
) -> pingora::Result<()> {
    for (name, value) in limit_headers(outcome, style) {
        resp.insert_header(name, value)?;
    }
    Ok(())
}

/// The fields for a decided request.
pub fn limit_headers(outcome: &Outcome, style: HeaderStyle) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(4);
    let blocked = !outcome.allowed();
    let retry = outcome.retry_after_secs();
    if style.x_ratelimit() {
        if let Some((_, d)) = outcome.headline() {
            headers.push(("X-RateLimit-Limit", d.limit.to_string()));
            headers.push(("X-RateLimit-Remaining", d.remaining.to_string()));
            if blocked {
                // Seconds until the request would be allowed: both a reset and when to retry.
                headers.push(("X-RateLimit-Reset", retry.to_string()));
            }
        }
    }
    if style.ietf() {
        let (mut policy, mut state) = (String::new(), String::new());
        for (check, d) in outcome.visible() {
            let sep = if policy.is_empty() { "" } else { ", " };
            if check.is_concurrency() {
                // A quota of requests at once: no window.
                let _ = write!(
                    policy,
                    "{sep}\"{}\";q={};qu=\"concurrent-requests\"",
                    check.rule, d.limit
                );
            } else {
                // A calendar quota's window is its period (its `window_ms` is what is left).
                let window_ms = match check.period_ms {
                    0 => check.limit.quota.window_ms.get(),
                    period => period,
                };
                let window_s = window_ms.div_ceil(1000);
                let _ = write!(policy, "{sep}\"{}\";q={};w={window_s}", check.rule, d.limit);
            }
            let t = if blocked { retry } else { d.reset_secs() };
            let _ = write!(state, "{sep}\"{}\";r={};t={t}", check.rule, d.remaining);
        }
        if !policy.is_empty() {
            headers.push(("RateLimit-Policy", policy));
            headers.push(("RateLimit", state));
        }
    }
    if blocked {
        headers.push(("Retry-After", retry.to_string()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Check, Decision, Limit};
    use std::num::{NonZeroU32, NonZeroU64};

    fn check(rule: &'static str, limit: u32, window_ms: u64, shadow: bool) -> Check {
        Check {
            cost: 1,
            rule,
            key: format!("{rule}/ip:10.0.0.1"),
            limit: Limit::sliding_log(
                NonZeroU32::new(limit).unwrap(),
                NonZeroU64::new(window_ms).unwrap(),
            ),
            shadow,
            sync: crate::limiter::SyncMode::Exact,
            wait: Default::default(),
            period_ms: 0,
        }
    }

    fn d(
        allowed: bool,
        limit: u32,
        remaining: u64,
        retry_ms: u64,
        reset_ms: u64,
    ) -> Option<Decision> {
        Some(Decision {
            allowed,
            count: u64::from(limit) - remaining,
            limit,
            remaining,
            retry_after_ms: retry_ms,
            reset_ms,
            mark: 0,
            delay_ms: 0,
        })
    }

    fn get<'a>(h: &'a [(&str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn styles_parse() {
        for s in ["x-ratelimit", "ietf", "both", "none"] {
            assert_eq!(s.parse::<HeaderStyle>().unwrap().to_string(), s);
        }
        assert!("X-RateLimit".parse::<HeaderStyle>().is_err());
    }

    #[test]
    fn allowed_request_in_every_style() {
        let o = Outcome::new(
            vec![
                check("default", 100, 60_000, false),
                check("login", 5, 1_500, false),
            ],
            vec![d(true, 100, 97, 0, 59_000), d(true, 5, 2, 0, 1_200)],
        );
        let x = limit_headers(&o, HeaderStyle::XRateLimit);
        assert_eq!(
            x,
            [
                ("X-RateLimit-Limit", "5".to_string()),
                ("X-RateLimit-Remaining", "2".to_string())
            ]
        );
        let i = limit_headers(&o, HeaderStyle::Ietf);
        assert_eq!(
            get(&i, "RateLimit-Policy"),
            Some(r#""default";q=100;w=60, "login";q=5;w=2"#)
        );
        assert_eq!(
            get(&i, "RateLimit"),
            Some(r#""default";r=97;t=59, "login";r=2;t=2"#)
        );
        assert_eq!(i.len(), 2);
        assert_eq!(limit_headers(&o, HeaderStyle::Both).len(), 4);
        assert!(limit_headers(&o, HeaderStyle::None).is_empty());
    }

    #[test]
    fn blocked_request_waits_for_the_longest_and_t_equals_retry_after() {
        let o = Outcome::new(
            vec![
                check("default", 100, 60_000, false),
                check("login", 5, 60_000, false),
                check("burst", 2, 10_000, false),
                check("dry", 1, 1_000, true),
            ],
            vec![
                d(true, 100, 50, 0, 30_000),
                d(false, 5, 0, 41_500, 41_500),
                d(false, 2, 0, 3_000, 3_000),
                d(false, 1, 0, 500, 500),
            ],
        );
        let h = limit_headers(&o, HeaderStyle::Both);
        assert_eq!(get(&h, "Retry-After"), Some("42"));
        assert_eq!(get(&h, "X-RateLimit-Reset"), Some("42"));
        // Both blocking rules have 0 left; burst has the smaller limit.
        assert_eq!(get(&h, "X-RateLimit-Limit"), Some("2"));
        assert_eq!(get(&h, "X-RateLimit-Remaining"), Some("0"));
        assert_eq!(
            get(&h, "RateLimit"),
            Some(r#""default";r=50;t=42, "login";r=0;t=42, "burst";r=0;t=42"#)
        );
        let none = limit_headers(&o, HeaderStyle::None);
        assert_eq!(none, [("Retry-After", "42".to_string())]);
    }
}
