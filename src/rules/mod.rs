//! Rules (contract §7): which limits a request owes, as a pure function of the request.
//!
//! `[limits]` is the rule named `default`, which matches every request; `[[rules]]` add named
//! rules with match conditions ([`matcher`]) and per-key limits ([`overrides`]). [`RuleSet::select`]
//! turns a [`RequestView`] into the [`Check`]s the limiter decides: every named rule that
//! matches, and the default unless a matching rule skips it; or nothing at all when a matching
//! rule is `unlimited`. A rule whose key part is missing applies keyed by the client IP, or
//! not at all with `missing = "skip"`. Counter keys are [`crate::key::counter`]'s: the default
//! rule's is the request key (`ip:10.0.0.1`), a named rule's `<rule>/<key>`
//! (`login/ip:10.0.0.1`). Rules are validated from the config's format-neutral document
//! ([`crate::config::document`]), whatever it was written in.

pub mod ban;
pub mod calendar;
pub mod cost;
pub mod matcher;
pub mod overrides;

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use ipnet::IpNet;

use crate::key::counter::{self, split_rule};
use crate::key::jwt::Verifier;
use crate::key::{KeySource, Keys, Missing, Part};
use crate::limiter::{Check, Limit, Wait};
use crate::request::RequestView;
pub use cost::Costing;
pub use matcher::{Matcher, PathMatch};
pub use overrides::Overrides;

/// The name of the rule `[limits]` defines.
pub const DEFAULT_RULE: &str = "default";

/// Longest rule name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a valid rule name: 1..=64 of `a-z`, `0-9`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    counter::valid_rule_name(name)
}

/// Rule names as `&'static str`, so a check names its rule without a copy or a reference
/// count per request. Each distinct name is kept once for the life of the process; only
/// config loads add names, so the set is bounded by the names ever configured.
pub fn intern(name: &str) -> &'static str {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut names = crate::sync::lock(&NAMES);
    match names.get(name) {
        Some(known) => known,
        None => {
            let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
            names.insert(leaked);
            leaked
        }
    }
}

/// One rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: &'static str,
    pub matcher: Matcher,
    pub key: KeySource,
    /// What a request whose key part is missing gets: keyed by its IP, or this rule skipped.
    pub missing: Missing,
    /// `None`: `unlimited = true`, the requests it matches are limited by no rule at all.
    pub limit: Option<Limit>,
    /// Decide and count, never block.
    pub shadow: bool,
    /// Requests this rule matches skip the default rule.
    pub skip_default: bool,
    /// How its counters are kept in step across nodes (`sync`, `lease_size`, `lease_ms`).
    pub sync: crate::limiter::SyncMode,
    /// Key value (`10.0.0.7`, `premium-1`, `acme|p1`) → its own limit.
    pub overrides: Overrides,
    /// What a request weighs and how its response settles it (contract §13).
    pub costing: Costing,
    /// How its requests may wait instead of being refused (contract §14).
    pub wait: Wait,
    /// Its penalty box: keys refused often enough are banned for a while (contract §15).
    pub ban: Option<ban::BanPolicy>,
    /// A quota per calendar period (contract §15).
    pub calendar: Option<calendar::Calendar>,
}

impl Rule {
    /// The rule `[limits]` defines: every request, keyed by `key`.
    pub fn default_rule(key: KeySource, missing: Missing, limit: Limit) -> Rule {
        Rule {
            name: intern(DEFAULT_RULE),
            matcher: Matcher::default(),
            key,
            missing,
            limit: Some(limit),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
            skip_default: false,
            overrides: Overrides::default(),
            costing: Costing::one(limit.quota.limit.get()),
            wait: Wait::default(),
            ban: None,
            calendar: None,
        }
    }

    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_RULE
    }

    pub fn unlimited(&self) -> bool {
        self.limit.is_none()
    }

    /// The counter key of a request key under this rule.
    pub fn counter_key(&self, request_key: String) -> String {
        counter::counter_key((!self.is_default()).then_some(self.name), request_key)
    }

    /// What this rule applies to a request key: its limit, or an override's.
    pub fn limit_for(&self, request_key: &str) -> Option<Limit> {
        let mut limit = self.limit?;
        if !self.overrides.is_empty() {
            if let Some(n) = self.overrides.get(request_key) {
                limit.quota.limit = n;
            }
        }
        Some(limit)
    }

    fn check(&self, request_key: String, cost: u32) -> Option<Check> {
        let mut limit = self.limit_for(&request_key)?;
        // A calendar quota's count lives until its period's end, worked out now in its zone.
        let mut period_ms = 0;
        if let Some(calendar) = &self.calendar {
            let now = jiff::Timestamp::now();
            let bounds = calendar.bounds(now);
            let left = bounds.left_ms(now.as_millisecond());
            limit.quota.window_ms =
                std::num::NonZeroU64::new(left).unwrap_or(limit.quota.window_ms);
            period_ms = bounds.length_ms();
        }
        Some(Check {
            rule: self.name,
            key: self.counter_key(request_key),
            limit,
            shadow: self.shadow,
            sync: self.sync,
            cost,
            wait: self.wait,
            period_ms,
        })
    }
}

/// What a request owes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A matching rule is `unlimited`: no rule applies.
    Unlimited { rule: &'static str },
    /// Every rule it meets skips it (`missing = "skip"` and a key part missing).
    Skipped,
    /// Decide these; never empty.
    Checks(Vec<Check>),
    /// A rule that applies reads its cost from a header that is missing or invalid: the
    /// request is refused (`400`), never let through free.
    BadCost { rule: &'static str, why: String },
}

/// The default rule and the named rules, in config order, with what keys need.
#[derive(Debug, Clone)]
pub struct RuleSet {
    default: Rule,
    /// The default rule's limit (it always has one: only named rules can be unlimited).
    default_limit: Limit,
    rules: Vec<Rule>,
    trusted_proxies: Vec<IpNet>,
    /// Every header a key is read from (`Authorization` for `jwt:` parts), once.
    key_headers: Vec<http::HeaderName>,
    /// Verifies bearer tokens for `jwt:` parts.
    jwt: Option<Arc<Verifier>>,
    /// Whether a rule settles from responses (`settle`, `count_status`).
    settles: bool,
}

impl RuleSet {
    /// The rule set of `[limits]` (its `default` rule) and the named `rules`.
    pub fn new(
        default: Rule,
        rules: Vec<Rule>,
        trusted_proxies: Vec<IpNet>,
        jwt: Option<Arc<Verifier>>,
    ) -> RuleSet {
        let mut key_headers = Vec::new();
        for rule in std::iter::once(&default).chain(&rules) {
            for part in rule.key.parts() {
                // A token is read from `Authorization`: sent twice, the upstream could
                // honour the one the rules did not read.
                let name = match part {
                    Part::Header(name) => name,
                    Part::Jwt(_) => &http::header::AUTHORIZATION,
                    _ => continue,
                };
                if !key_headers.contains(name) {
                    key_headers.push(name.clone());
                }
            }
        }
        let settles = rules.iter().any(|r| r.costing.settles());
        RuleSet {
            settles,
            default_limit: default.limit.expect("the default rule has a limit"),
            default,
            rules,
            trusted_proxies,
            key_headers,
            jwt,
        }
    }

    /// Whether any rule settles from responses: when none does, no request owes anything
    /// after its response.
    pub fn settles(&self) -> bool {
        self.settles
    }

    pub fn default_rule(&self) -> &Rule {
        &self.default
    }

    /// The default rule, then the named rules in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        std::iter::once(&self.default).chain(self.rules.iter())
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.iter().find(|r| r.name == name)
    }

    /// The named rules a request matches, in config order (for `/api/explain`).
    pub fn matching<'r>(&'r self, view: &RequestView) -> Vec<&'r Rule> {
        self.rules
            .iter()
            .filter(|r| r.matcher.matches(view))
            .collect()
    }

    /// The headers some rule's key is read from, each of which a request may send once.
    pub fn key_headers(&self) -> &[http::HeaderName] {
        &self.key_headers
    }

    /// A request's keys, for every rule.
    pub fn keys<'v>(&'v self, view: &'v RequestView<'v>) -> Keys<'v> {
        Keys::new(view, &self.trusted_proxies, self.jwt.as_deref())
    }

    /// The checks a request owes: the default rule (unless skipped), then each matching named
    /// rule.
    pub fn select(&self, view: &RequestView) -> Selection {
        let mut keys = self.keys(view);
        if self.rules.is_empty() {
            // The common case of one limit: no matching.
            let key = keys.request_key(&self.default.key, self.default.missing);
            return match key.and_then(|k| self.default.check(k, 1)) {
                Some(check) => Selection::Checks(vec![check]),
                None => Selection::Skipped,
            };
        }
        let matched = self.matching(view);
        if let Some(r) = matched.iter().find(|r| r.unlimited()) {
            return Selection::Unlimited { rule: r.name };
        }
        let skip_default = matched.iter().any(|r| r.skip_default && !r.shadow);
        let mut checks = Vec::with_capacity(matched.len() + 1);
        let applied = (!skip_default).then_some(&self.default);
        for rule in applied.into_iter().chain(matched) {
            if let Some(key) = keys.request_key(&rule.key, rule.missing) {
                let cost = match rule.costing.units(view.headers) {
                    Ok(cost) => cost,
                    Err(why) => {
                        return Selection::BadCost {
                            rule: rule.name,
                            why,
                        }
                    }
                };
                checks.extend(rule.check(key, cost));
            }
        }
        if checks.is_empty() {
            return Selection::Skipped;
        }
        Selection::Checks(checks)
    }

    /// The rule a counter key belongs to, and the limit that rule gives it now. A key whose
    /// rule is gone or unlimited since a reload, or that `/check` made, is judged by the
    /// default rule.
    pub fn describe(&self, counter_key: &str) -> (&Rule, Limit) {
        if let (Some(name), request_key) = split_rule(counter_key) {
            let rule = self.rules.iter().find(|r| r.name == name);
            if let Some((rule, limit)) = rule.and_then(|r| Some((r, r.limit_for(request_key)?))) {
                return (rule, limit);
            }
        }
        (&self.default, self.default_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Algorithm;
    use http::{HeaderMap, HeaderValue, Method};
    use std::num::{NonZeroU32, NonZeroU64};

    fn limit(n: u32) -> Limit {
        Limit::sliding_log(
            NonZeroU32::new(n).unwrap(),
            NonZeroU64::new(60_000).unwrap(),
        )
    }

    fn rule(name: &str, key: KeySource, n: Option<u32>) -> Rule {
        Rule {
            name: intern(name),
            matcher: Matcher::default(),
            key,
            missing: Missing::Ip,
            limit: n.map(limit),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
            skip_default: false,
            overrides: Overrides::default(),
            costing: Costing::one(n.unwrap_or(1)),
            wait: Wait::default(),
            ban: None,
            calendar: None,
        }
    }

    fn prefix(p: &str) -> Matcher {
        Matcher {
            path: Some(PathMatch::Prefix(p.into())),
            ..Matcher::default()
        }
    }

    fn set(rules: Vec<Rule>) -> RuleSet {
        RuleSet::new(
            Rule::default_rule(KeySource::ip(), Missing::Ip, limit(100)),
            rules,
            vec![],
            None,
        )
    }

    fn select(set: &RuleSet, method: &Method, path: &str, headers: &HeaderMap) -> Selection {
        set.select(&RequestView {
            peer: Some("10.0.0.1".parse().unwrap()),
            method,
            host: Some("api.example.com"),
            path,
            query: None,
            headers,
        })
    }

    fn keys(s: &Selection) -> Vec<(&str, &str, u32)> {
        match s {
            Selection::Checks(c) => c
                .iter()
                .map(|c| (c.rule, c.key.as_str(), c.limit.quota.limit.get()))
                .collect(),
            Selection::Unlimited { .. } | Selection::Skipped | Selection::BadCost { .. } => {
                vec![]
            }
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("login"));
        assert!(valid_name("api_v2-tier"));
        assert!(!valid_name("Login"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        let owned = String::from("login");
        assert!(std::ptr::eq(intern("login"), intern(owned.as_str())));
    }

    #[test]
    fn only_the_default_without_rules() {
        let s = set(vec![]);
        let h = HeaderMap::new();
        assert_eq!(
            keys(&select(&s, &Method::GET, "/", &h)),
            [("default", "ip:10.0.0.1", 100)]
        );
    }

    #[test]
    fn matching_rules_stack_on_the_default() {
        let mut login = rule("login", KeySource::ip(), Some(5));
        login.matcher = prefix("/login");
        let mut search = rule("search", KeySource::Global, Some(1000));
        search.matcher = prefix("/search");
        let s = set(vec![login, search]);
        let h = HeaderMap::new();
        assert_eq!(
            keys(&select(&s, &Method::POST, "/login", &h)),
            [
                ("default", "ip:10.0.0.1", 100),
                ("login", "login/ip:10.0.0.1", 5)
            ]
        );
        assert_eq!(
            keys(&select(&s, &Method::GET, "/search", &h)),
            [
                ("default", "ip:10.0.0.1", 100),
                ("search", "search/global", 1000)
            ]
        );
        assert_eq!(keys(&select(&s, &Method::GET, "/", &h)).len(), 1);
    }

    #[test]
    fn skip_default_and_unlimited() {
        let mut api = rule("api", KeySource::ip(), Some(50));
        api.matcher = prefix("/api");
        api.skip_default = true;
        let mut health = rule("health", KeySource::ip(), None);
        health.matcher = prefix("/health");
        let s = set(vec![api, health]);
        let h = HeaderMap::new();
        assert_eq!(
            keys(&select(&s, &Method::GET, "/api/x", &h)),
            [("api", "api/ip:10.0.0.1", 50)]
        );
        assert_eq!(
            select(&s, &Method::GET, "/health", &h),
            Selection::Unlimited { rule: "health" }
        );
    }

    #[test]
    fn a_shadow_rule_never_skips_the_default() {
        let mut dry = rule("dry", KeySource::ip(), Some(1));
        dry.shadow = true;
        dry.skip_default = true;
        let s = set(vec![dry]);
        let sel = select(&s, &Method::GET, "/", &HeaderMap::new());
        assert_eq!(keys(&sel).len(), 2);
    }

    #[test]
    fn overrides_by_key_value_with_the_ip_fallback() {
        let api_key = KeySource::parse("header:x-api-key").unwrap();
        let mut tiers = rule("tiers", api_key, Some(10));
        tiers
            .overrides
            .insert_value("premium-1".into(), NonZeroU32::new(10_000).unwrap());
        tiers
            .overrides
            .insert_ip("10.0.0.1".into(), NonZeroU32::new(1000).unwrap());
        let s = set(vec![tiers]);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("premium-1"));
        assert_eq!(
            keys(&select(&s, &Method::GET, "/", &h))[1],
            ("tiers", "tiers/x-api-key:premium-1", 10_000)
        );
        h.insert("x-api-key", HeaderValue::from_static("basic"));
        assert_eq!(keys(&select(&s, &Method::GET, "/", &h))[1].2, 10);
        // Without the header the request is keyed by its IP, which has an override too.
        assert_eq!(
            keys(&select(&s, &Method::GET, "/", &HeaderMap::new()))[1],
            ("tiers", "tiers/ip:10.0.0.1", 1000)
        );
        // Sending that IP as the header value does not claim the IP's override.
        h.insert("x-api-key", HeaderValue::from_static("10.0.0.1"));
        assert_eq!(
            keys(&select(&s, &Method::GET, "/", &h))[1],
            ("tiers", "tiers/x-api-key:10.0.0.1", 10)
        );
    }

    #[test]
    fn counter_keys_name_their_rule() {
        let mut login = rule("login", KeySource::ip(), Some(5));
        login
            .overrides
            .insert_ip("10.0.0.7".into(), NonZeroU32::new(50).unwrap());
        let s = set(vec![login]);
        let (r, l) = s.describe("login/ip:10.0.0.7");
        assert_eq!((r.name, l.quota.limit.get()), ("login", 50));
        let (r, l) = s.describe("ip:10.0.0.1");
        assert_eq!((r.name, l.quota.limit.get()), ("default", 100));
        // A header value may hold a slash; the key is still the default rule's.
        assert_eq!(s.describe("x-api-key:a/b").0.name, "default");
        assert_eq!(s.describe("gone/ip:10.0.0.1").0.name, "default");
        assert_eq!(l.algorithm, Algorithm::SlidingLog);
    }

    #[test]
    fn a_rule_whose_key_is_missing_applies_by_ip_or_not_at_all() {
        let mut keyed = rule(
            "keyed",
            KeySource::parse("header:x-api-key").unwrap(),
            Some(5),
        );
        keyed.missing = Missing::Skip;
        let s = set(vec![keyed]);
        let h = HeaderMap::new();
        assert_eq!(
            keys(&select(&s, &Method::GET, "/", &h)),
            [("default", "ip:10.0.0.1", 100)]
        );
        let mut skipping_default = set(vec![]);
        skipping_default.default.key = KeySource::parse("query:k").unwrap();
        skipping_default.default.missing = Missing::Skip;
        assert_eq!(
            select(&skipping_default, &Method::GET, "/", &h),
            Selection::Skipped
        );
    }
}
