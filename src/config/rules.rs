//! `[[rules]]` (contract §7): each table into a [`Rule`], every mistake reported where it is
//! written, all at once.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};

use http::Method;

use super::error::Collector;
use super::reader::{At, Section, Span};
use super::MAX_WINDOW_MS;
use crate::key::{KeySource, Missing};
use crate::limiter::{Algorithm, Limit, Quota, SyncMode};
use crate::request::HostMatch;
use crate::rules::{
    intern, valid_name, Costing, Matcher, PathMatch, Rule, DEFAULT_RULE, MAX_NAME_LEN,
};

/// The keys of a match condition ([`matcher`]), which rules and routes share.
const MATCH_KEYS: [&str; 6] = [
    "methods",
    "path",
    "path_prefix",
    "path_regex",
    "path_ignore_case",
    "host",
];

/// The keys a `[[rules]]` or `[[routes]]` table may hold: its name, the match condition's,
/// then `own`, in that order (the order the error for an unknown key lists them in).
pub(super) fn keys_with_match(own: &[&'static str]) -> Vec<&'static str> {
    std::iter::once("name")
        .chain(MATCH_KEYS)
        .chain(own.iter().copied())
        .collect()
}

/// A rule's own keys, beside its name and match condition.
const KEYS: &[&str] = &[
    "key",
    "missing",
    "limit",
    "window_ms",
    "algorithm",
    "shadow",
    "skip_default",
    "unlimited",
    "overrides",
    "sync",
    "lease_size",
    "lease_ms",
    "cost",
    "max_cost",
    "settle",
    "count_status",
    "concurrency",
    "slot_ttl_ms",
    "queue",
    "delay",
    "ban",
    "period",
    "timezone",
    "anchor_day",
];

/// The longest lease: past it, unused slots would keep other nodes out for too long.
const MAX_LEASE_MS: i64 = 60_000;

/// What a rule takes from `[limits]` when it does not say.
pub(super) struct Defaults {
    pub key: KeySource,
    pub missing: Missing,
    pub window_ms: NonZeroU64,
    /// Whether `[jwt]` is written (`jwt:` parts need it).
    pub jwt: bool,
}

/// Reads every `[[rules]]` table.
pub(super) fn read(root: &Section, limits: &Defaults, errors: &mut Collector) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, (s, at)) in root
        .tables("rules", &keys_with_match(KEYS), errors)
        .into_iter()
        .enumerate()
    {
        let reserved = (DEFAULT_RULE, "the rule [limits] defines");
        let name = table_name(
            &s,
            &at,
            ("rule", index + 1),
            Some(reserved),
            &mut names,
            errors,
        );
        let matcher = matcher(&s, errors);
        let key = super::keys::source(&s, true, limits.jwt, errors)
            .map(|k| k.unwrap_or(limits.key.clone()));
        let missing = match s.has("missing") {
            true => super::keys::missing(&s, errors),
            false => Some(limits.missing),
        };
        let unlimited = s.boolean("unlimited", errors);
        let shadow = s.boolean("shadow", errors);
        let skip_default = s.boolean("skip_default", errors);
        if shadow.as_ref().is_some_and(|v| v.value) {
            for (flag, set) in [("skip_default", &skip_default), ("unlimited", &unlimited)] {
                if let Some(v) = set.as_ref().filter(|v| v.value) {
                    errors.at(
                        v.span.clone(),
                        format!(
                            "{} {flag}: a shadow rule never changes what is enforced; remove {flag} or shadow",
                            s.name
                        ),
                    );
                }
            }
        }
        let unlimited = unlimited.is_some_and(|v| v.value);
        let sync = sync(&s, errors);
        let calendar = super::calendar::read(&s, sync, errors);
        let (limit, costing) = match super::wait::concurrency(&s, sync, errors) {
            // A slot is one request: it weighs one.
            Some(Some(slots)) => (Some(Some(slots)), Some(Costing::one(1))),
            Some(None) => {
                let limit = limit(&s, &at, limits, unlimited, errors).map(|l| {
                    // A calendar quota counts in its period (its nominal length, for show).
                    match (l, calendar.as_ref().and_then(Option::as_ref)) {
                        (Some(l), Some(c)) => Some(Limit::new(
                            Algorithm::Calendar,
                            l.quota.limit,
                            c.period.nominal_ms(),
                        )),
                        (l, _) => l,
                    }
                });
                let costing = limit.as_ref().and_then(|l| {
                    super::cost::read(&s, l.map(|l| l.quota.limit.get()), sync, errors)
                });
                (limit, costing)
            }
            None => (None, None),
        };
        let overrides = super::keys::overrides(&s, key.as_ref(), errors);
        let wait = super::wait::wait(&s, limit, sync, errors);
        let is_shadow = shadow.as_ref().is_some_and(|v| v.value);
        let ban = super::ban::read(&s, unlimited, is_shadow, errors);
        if let (
            Some(name),
            Some(key),
            Some(missing),
            Some(limit),
            Some(sync),
            Some(costing),
            Some(wait),
            Some(ban),
            Some(calendar),
        ) = (
            name, key, missing, limit, sync, costing, wait, ban, calendar,
        ) {
            rules.push(Rule {
                name: intern(&name),
                matcher: matcher.unwrap_or_default(),
                key,
                missing,
                limit,
                shadow: shadow.is_some_and(|v| v.value),
                skip_default: skip_default.is_some_and(|v| v.value),
                overrides: overrides.unwrap_or_default(),
                sync,
                costing,
                wait,
                ban,
                calendar,
            });
        }
    }
    rules
}

/// The `name` of the `number`th table of a kind (`rule`, `route`): required, valid, not
/// `reserved` (a name and what it already is), and not the name of an earlier one (`seen`).
pub(super) fn table_name(
    s: &Section,
    at: &Span,
    (kind, number): (&str, usize),
    reserved: Option<(&str, &str)>,
    seen: &mut HashMap<String, usize>,
    errors: &mut Collector,
) -> Option<String> {
    let Some(At { value, span }) = s.string("name", errors) else {
        if !s.has("name") {
            errors.at(at.clone(), format!("{}: name is required", s.name));
        }
        return None;
    };
    if let Some((taken, what)) = reserved.filter(|(taken, _)| value == *taken) {
        errors.at(
            span,
            format!("{} name: {taken:?} is {what}; choose another name", s.name),
        );
        return None;
    }
    if !valid_name(&value) {
        errors.at(
            span,
            format!(
                "{} name: expected 1 to {MAX_NAME_LEN} characters of a-z, 0-9, _ and -, found {value:?}",
                s.name
            ),
        );
        return None;
    }
    if let Some(first) = seen.get(&value) {
        errors.at(
            span,
            format!(
                "{} name: {value:?} is already the name of {kind} #{first}",
                s.name
            ),
        );
        return None;
    }
    seen.insert(value.clone(), number);
    Some(value)
}

/// The match conditions of a `[[rules]]` or `[[routes]]` table.
pub(super) fn matcher(s: &Section, errors: &mut Collector) -> Option<Matcher> {
    let mut ok = true;
    let mut methods = Vec::new();
    for At { value, span } in s.strings("methods", errors).unwrap_or_default() {
        let token = !value.is_empty() && value.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(value.as_bytes()) {
            Ok(m) if token => methods.push(m),
            _ => {
                ok = false;
                errors.at(
                    span,
                    format!(
                        "{} methods: expected an upper-case HTTP method like \"GET\", found {value:?}",
                        s.name
                    ),
                );
            }
        }
    }

    let written: Vec<(&str, At<String>)> = ["path", "path_prefix", "path_regex"]
        .into_iter()
        .filter_map(|k| s.string(k, errors).map(|v| (k, v)))
        .collect();
    let mut path = None;
    if let [(first, _), rest @ ..] = &written[..] {
        for (k, v) in rest {
            ok = false;
            errors.at(
                v.span.clone(),
                format!(
                    "{} {k}: at most one of path, path_prefix and path_regex; {first} is set too",
                    s.name
                ),
            );
        }
    }
    let ignore_case = s.boolean("path_ignore_case", errors);
    if let Some(v) = ignore_case.as_ref().filter(|_| written.is_empty()) {
        ok = false;
        errors.at(
            v.span.clone(),
            format!(
                "{} path_ignore_case: applies to a path condition; set path, path_prefix or path_regex",
                s.name
            ),
        );
    }
    let ignore_case = ignore_case.is_some_and(|v| v.value);
    if let Some((k, At { value, span })) = written.into_iter().next() {
        path = match k {
            "path_regex" => match regex::RegexBuilder::new(&value)
                .case_insensitive(ignore_case)
                .build()
            {
                Ok(r) => Some(PathMatch::Regex(r)),
                Err(e) => {
                    let why = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    errors.at(
                        span,
                        format!("{} path_regex: invalid regex {value:?}: {why}", s.name),
                    );
                    None
                }
            },
            _ if !value.starts_with('/') => {
                errors.at(
                    span,
                    format!(
                        "{} {k}: expected a path starting with \"/\", found {value:?}",
                        s.name
                    ),
                );
                None
            }
            "path" => Some(PathMatch::Exact(value)),
            _ => Some(PathMatch::Prefix(value)),
        };
        ok &= path.is_some();
    }

    let host = match s.string("host", errors) {
        None => None,
        Some(At { value, span }) => match HostMatch::parse(&value) {
            Some(h) => Some(h),
            None => {
                ok = false;
                errors.at(
                    span,
                    format!(
                        "{} host: expected a host name like \"api.example.com\" or \"*.example.com\", without a port, found {value:?}",
                        s.name
                    ),
                );
                None
            }
        },
    };
    // `GET` covers `HEAD`: every framework answers a HEAD with its GET handler.
    if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
        methods.push(Method::HEAD);
    }
    ok.then_some(Matcher {
        methods,
        path,
        path_ignore_case: ignore_case,
        host,
    })
}

/// `Some(None)` for an unlimited rule; `None` when something is wrong.
fn limit(
    s: &Section,
    at: &Span,
    limits: &Defaults,
    unlimited: bool,
    errors: &mut Collector,
) -> Option<Option<Limit>> {
    let limit = s.integer(
        "limit",
        1,
        u32::MAX as i64,
        "an integer 1..=4294967295",
        errors,
    );
    let window = s.integer(
        "window_ms",
        1,
        MAX_WINDOW_MS,
        &format!("an integer 1..={MAX_WINDOW_MS}"),
        errors,
    );
    let algorithm = match s.string("algorithm", errors) {
        None => Some(Algorithm::SlidingLog),
        Some(At { value, span }) => match value.parse::<Algorithm>() {
            Ok(a) => Some(a),
            Err(why) => {
                errors.at(span, format!("{} algorithm: {why}", s.name));
                None
            }
        },
    };
    if unlimited {
        return Some(None);
    }
    let limit = match limit {
        Some(l) => NonZeroU32::new(l.value as u32)?,
        None => {
            if !s.has("limit") {
                errors.at(
                    at.clone(),
                    format!("{}: limit is required (or unlimited = true)", s.name),
                );
            }
            return None;
        }
    };
    let window_ms = match window {
        Some(w) => NonZeroU64::new(w.value as u64)?,
        None if s.has("window_ms") => return None,
        None => limits.window_ms,
    };
    Some(Some(Limit {
        algorithm: algorithm?,
        quota: Quota { limit, window_ms },
    }))
}

/// `sync`, with `lease_size` and `lease_ms` (contract §11); `None` when something is wrong.
fn sync(s: &Section, errors: &mut Collector) -> Option<SyncMode> {
    let size = s.integer(
        "lease_size",
        0,
        i64::from(SyncMode::LEASE_MAX),
        &format!(
            "an integer 0..={} (0: a hundredth of the limit)",
            SyncMode::LEASE_MAX
        ),
        errors,
    );
    let ms = s.integer(
        "lease_ms",
        1,
        MAX_LEASE_MS,
        &format!("an integer 1..={MAX_LEASE_MS}"),
        errors,
    );
    let bad = (s.has("lease_size") && size.is_none()) || (s.has("lease_ms") && ms.is_none());
    let lease = match s.choice("sync", &[("exact", false), ("lease", true)], errors) {
        None if s.has("sync") => return None,
        chosen => chosen.unwrap_or(false),
    };
    if !lease {
        for (key, set) in [("lease_size", &size), ("lease_ms", &ms)] {
            if let Some(v) = set {
                errors.at(
                    v.span.clone(),
                    format!("{} {key}: applies only with sync = \"lease\"", s.name),
                );
            }
        }
        return (!bad && size.is_none() && ms.is_none()).then_some(SyncMode::Exact);
    }
    if bad {
        return None;
    }
    Some(SyncMode::Lease {
        size: size.map_or(0, |v| v.value as u32),
        ms: ms.map_or(SyncMode::LEASE_MS, |v| v.value as u64),
    })
}
