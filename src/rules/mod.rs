//! Rules (contract §7): which limits a request owes, as a pure function of the request.
//!
//! `[limits]` is the rule named `default`, which matches every request; `[[rules]]` add named
//! rules with match conditions ([`matcher`]). [`RuleSet::select`] turns a [`RequestView`] into
//! the [`Check`]s the limiter decides: every named rule that matches, and the default unless a
//! matching rule skips it; or nothing at all when a matching rule is `unlimited`.
//!
//! Counter keys: the default rule keeps the request key (`ip:10.0.0.1`); a named rule's is
//! `<rule>/<key>` (`login/ip:10.0.0.1`, `search/global`). Rule names hold no `/` or `:` and a
//! request key has a `:` before any `/`, so the two never collide and a counter key names its
//! rule.

pub mod matcher;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

use ipnet::IpNet;
use once_cell::sync::Lazy;

use crate::key::{header_key, ip_key, key_value, request_key, KeySource, RequestView, GLOBAL};
use crate::limiter::{Check, Limit};
pub use matcher::{HostMatch, Matcher, PathMatch};

/// The name of the rule `[limits]` defines.
pub const DEFAULT_RULE: &str = "default";

/// Longest rule name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a valid rule name: 1..=64 of `a-z`, `0-9`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Rule names as `&'static str`, so a check names its rule without a copy or a reference
/// count per request. Each distinct name is kept once for the life of the process; only
/// config loads add names, so the set is bounded by the names ever configured.
pub fn intern(name: &str) -> &'static str {
    static NAMES: Lazy<Mutex<HashSet<&'static str>>> = Lazy::new(Default::default);
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
    /// `None`: `unlimited = true`, the requests it matches are limited by no rule at all.
    pub limit: Option<Limit>,
    /// Decide and count, never block.
    pub shadow: bool,
    /// Requests this rule matches skip the default rule.
    pub skip_default: bool,
    /// How its counters are kept in step across nodes (`sync`, `lease_size`, `lease_ms`).
    pub sync: crate::limiter::SyncMode,
    /// Key value (`10.0.0.7`, `premium-1`) → its own limit.
    pub overrides: Overrides,
}

/// Per-key limits (tiers, allow-lists), looked up by the value part of a request key. An
/// entry that is an IP address applies only to requests keyed by that IP (`ip:` keys,
/// including a header rule's fall-back); any other entry only to requests that send it as
/// their header value. So a client cannot claim an IP's override by sending the IP as its
/// header value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    by_ip: HashMap<String, NonZeroU32>,
    by_value: HashMap<String, NonZeroU32>,
}

impl Overrides {
    /// Adds an entry; an IP address is kept the way keys print it (`::1`, not `0::1`).
    pub fn insert(&mut self, value: &str, limit: NonZeroU32) {
        match value.parse::<IpAddr>() {
            Ok(ip) => self.by_ip.insert(ip.to_string(), limit),
            Err(_) => self.by_value.insert(value.to_string(), limit),
        };
    }

    /// The override for a request key, if any.
    pub fn get(&self, request_key: &str) -> Option<NonZeroU32> {
        let value = key_value(request_key)?;
        let map = if request_key.starts_with("ip:") {
            &self.by_ip
        } else {
            &self.by_value
        };
        map.get(value).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty() && self.by_value.is_empty()
    }

    /// Every entry, sorted by value.
    pub fn entries(&self) -> Vec<(&str, NonZeroU32)> {
        let mut all: Vec<(&str, NonZeroU32)> = self
            .by_ip
            .iter()
            .chain(&self.by_value)
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        all.sort();
        all
    }
}

impl Rule {
    /// The rule `[limits]` defines: every request, keyed by `key`.
    pub fn default_rule(key: KeySource, limit: Limit) -> Rule {
        Rule {
            name: intern(DEFAULT_RULE),
            matcher: Matcher::default(),
            key,
            limit: Some(limit),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
            skip_default: false,
            overrides: Overrides::default(),
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
        if self.is_default() {
            request_key
        } else {
            let mut key = String::with_capacity(self.name.len() + 1 + request_key.len());
            key.push_str(self.name);
            key.push('/');
            key.push_str(&request_key);
            key
        }
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

    fn check(&self, request_key: String) -> Option<Check> {
        let limit = self.limit_for(&request_key)?;
        Some(Check {
            rule: self.name,
            key: self.counter_key(request_key),
            limit,
            shadow: self.shadow,
            sync: self.sync,
        })
    }
}

/// What a request owes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A matching rule is `unlimited`: no rule applies.
    Unlimited { rule: &'static str },
    /// Decide these; never empty.
    Checks(Vec<Check>),
}

/// The default rule and the named rules, in config order, with what keys need.
#[derive(Debug, Clone)]
pub struct RuleSet {
    default: Rule,
    /// The default rule's limit (it always has one: only named rules can be unlimited).
    default_limit: Limit,
    rules: Vec<Rule>,
    trusted_proxies: Vec<IpNet>,
    /// Every header a key is read from, once.
    key_headers: Vec<http::HeaderName>,
}

impl RuleSet {
    /// The rule set of `[limits]` (keyed by `default_key`, limited by `default_limit`) and the
    /// named `rules`.
    pub fn new(
        default_key: KeySource,
        default_limit: Limit,
        rules: Vec<Rule>,
        trusted_proxies: Vec<IpNet>,
    ) -> RuleSet {
        let mut key_headers = Vec::new();
        for source in std::iter::once(&default_key).chain(rules.iter().map(|r| &r.key)) {
            if let KeySource::Header(name) = source {
                if !key_headers.contains(name) {
                    key_headers.push(name.clone());
                }
            }
        }
        RuleSet {
            default: Rule::default_rule(default_key, default_limit),
            default_limit,
            rules,
            trusted_proxies,
            key_headers,
        }
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

    /// The checks a request owes: the default rule (unless skipped), then each matching named
    /// rule.
    pub fn select(&self, view: &RequestView) -> Selection {
        if self.rules.is_empty() {
            // The common case of one limit: no matching, one key.
            let key = request_key(
                &self.default.key,
                view.peer,
                view.headers,
                &self.trusted_proxies,
            );
            return Selection::Checks(self.default.check(key).into_iter().collect());
        }
        let matched = self.matching(view);
        if let Some(r) = matched.iter().find(|r| r.unlimited()) {
            return Selection::Unlimited { rule: r.name };
        }
        let skip_default = matched.iter().any(|r| r.skip_default && !r.shadow);
        let mut keys = Keys::new(view, &self.trusted_proxies);
        let mut checks = Vec::with_capacity(matched.len() + 1);
        if !skip_default {
            checks.extend(self.default.check(keys.of(&self.default.key)));
        }
        for rule in matched {
            checks.extend(rule.check(keys.of(&rule.key)));
        }
        Selection::Checks(checks)
    }

    /// The rule a counter key belongs to, and the limit that rule gives it now. A key whose
    /// rule is gone or unlimited since a reload, or that `/check` made, is judged by the
    /// default rule.
    pub fn describe(&self, counter_key: &str) -> (&Rule, Limit) {
        if let Some((name, request_key)) = counter_key.split_once('/') {
            if !name.contains(':') {
                let rule = self.rules.iter().find(|r| r.name == name);
                if let Some((rule, limit)) = rule.and_then(|r| Some((r, r.limit_for(request_key)?)))
                {
                    return (rule, limit);
                }
            }
        }
        (&self.default, self.default_limit)
    }
}

/// A request's keys, with the client IP worked out at most once for all rules.
struct Keys<'v, 'r> {
    view: &'v RequestView<'v>,
    trusted: &'r [IpNet],
    ip: Option<String>,
}

impl<'v, 'r> Keys<'v, 'r> {
    fn new(view: &'v RequestView<'v>, trusted: &'r [IpNet]) -> Self {
        Keys {
            view,
            trusted,
            ip: None,
        }
    }

    fn of(&mut self, source: &KeySource) -> String {
        match source {
            KeySource::Global => GLOBAL.to_string(),
            KeySource::Header(name) => {
                let value = self.view.headers.get(name).map(|v| v.as_bytes());
                match value.filter(|v| !v.is_empty()) {
                    Some(value) => header_key(name.as_str(), value),
                    None => self.ip(),
                }
            }
            KeySource::Ip => self.ip(),
        }
    }

    fn ip(&mut self) -> String {
        let view = self.view;
        let trusted = self.trusted;
        self.ip
            .get_or_insert_with(|| ip_key(view.peer, view.headers, trusted))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Algorithm;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use std::num::NonZeroU64;

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
            limit: n.map(limit),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
            skip_default: false,
            overrides: Overrides::default(),
        }
    }

    fn prefix(p: &str) -> Matcher {
        Matcher {
            path: Some(PathMatch::Prefix(p.into())),
            ..Matcher::default()
        }
    }

    fn set(rules: Vec<Rule>) -> RuleSet {
        RuleSet::new(KeySource::Ip, limit(100), rules, vec![])
    }

    fn select(set: &RuleSet, method: &Method, path: &str, headers: &HeaderMap) -> Selection {
        set.select(&RequestView {
            peer: Some("10.0.0.1".parse().unwrap()),
            method,
            host: Some("api.example.com"),
            path,
            headers,
        })
    }

    fn keys(s: &Selection) -> Vec<(&str, &str, u32)> {
        match s {
            Selection::Checks(c) => c
                .iter()
                .map(|c| (c.rule, c.key.as_str(), c.limit.quota.limit.get()))
                .collect(),
            Selection::Unlimited { .. } => vec![],
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
        let mut login = rule("login", KeySource::Ip, Some(5));
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
        let mut api = rule("api", KeySource::Ip, Some(50));
        api.matcher = prefix("/api");
        api.skip_default = true;
        let mut health = rule("health", KeySource::Ip, None);
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
        let mut dry = rule("dry", KeySource::Ip, Some(1));
        dry.shadow = true;
        dry.skip_default = true;
        let s = set(vec![dry]);
        let sel = select(&s, &Method::GET, "/", &HeaderMap::new());
        assert_eq!(keys(&sel).len(), 2);
    }

    #[test]
    fn overrides_by_key_value_with_the_ip_fallback() {
        let api_key = KeySource::Header(HeaderName::from_static("x-api-key"));
        let mut tiers = rule("tiers", api_key, Some(10));
        tiers
            .overrides
            .insert("premium-1", NonZeroU32::new(10_000).unwrap());
        tiers
            .overrides
            .insert("10.0.0.1", NonZeroU32::new(1000).unwrap());
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
        let mut login = rule("login", KeySource::Ip, Some(5));
        login
            .overrides
            .insert("10.0.0.7", NonZeroU32::new(50).unwrap());
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
}
