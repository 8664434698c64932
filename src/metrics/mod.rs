//! Prometheus metrics (contract §6, §7 and §8), in a registry of this node's own so every
//! series carries `node_id`.
//!
//! Decisions are counted per check: `rule` (bounded by the config) and `key` (the counter
//! key, bounded by `metrics.max_key_labels` per node; past it a rule's further keys count
//! under `key="_other"`). A key's private values (headers, query parameters, cookies, claims)
//! show digested unless `[privacy] clear_keys` (contract §17).

mod tenants;
mod units;
mod upstream;
mod waits;

pub use tenants::TenantMetrics;
pub use units::UnitMetrics;
pub use upstream::{UpstreamError, UpstreamMetrics};
pub use waits::WaitMetrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::limiter::outcome::CheckResult;
use crate::limiter::Check;

/// The `key` label of decisions past the per-node cap on distinct keys.
pub const OTHER_KEY: &str = "_other";

/// Upstream-duration buckets, in seconds: from a fast local API to a slow report.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Request-duration buckets, in seconds: from a 429 answered at once to a slow upload.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Check-duration buckets, in seconds: fine below a millisecond, where both stores answer.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub struct Metrics {
    registry: Registry,
    checked: IntCounterVec,
    /// Requests the proxy refused, one each, by the rule that refused them and why (`limit`,
    /// `ban`).
    refused: IntCounterVec,
    check_duration: Histogram,
    pub node_up: IntGauge,
    pub active_counters: IntGauge,
    store_errors: IntCounterVec,
    /// Calls taking slots of a shared counter, per rule (contract §11).
    pub lease_calls: IntCounterVec,
    reloads: IntCounterVec,
    config_loaded: Gauge,
    /// Responses by status class, `1xx`..`5xx`.
    responses: [IntCounter; 5],
    upstream_duration: Histogram,
    /// Whole requests, from their header to their last byte.
    request_duration: Histogram,
    /// Health, responses, retries and errors of each upstream.
    pub upstreams: UpstreamMetrics,
    /// Units reserved, given back and charged; settlements that failed.
    pub units: UnitMetrics,
    /// Slots in flight, requests in line and their waits (contract §14).
    pub waits: WaitMetrics,
    /// Changes through the admin API and bans (contract §15).
    pub tenants: TenantMetrics,
    max_key_labels: AtomicUsize,
    /// Private key values shown in clear in the `key` label (`[privacy] clear_keys`); by
    /// default they are digested (contract §17).
    clear_keys: AtomicBool,
    /// The decision counters of each (rule, key) with its own label, bounded by
    /// `max_key_labels`: one map lookup per decision instead of resolving labels each time.
    labelled: RwLock<Labelled>,
}

#[derive(Default)]
struct Labelled {
    /// rule → key → counters.
    keys: HashMap<&'static str, HashMap<Box<str>, Decisions>>,
    /// Keys with their own label, over every rule.
    len: usize,
    /// rule → the counters of its keys past the cap.
    other: HashMap<&'static str, Decisions>,
}

/// A (rule, key)'s decision counters. Every series exists from the first decision, so
/// `increase()` over the blocked one starts from 0, not from its first blocked request.
/// `shadow_blocked` exists from the first decision of a shadow rule, and from its first
/// would-be block for a rule that became a shadow on reload.
struct Decisions {
    allowed: IntCounter,
    /// `ratelimiter_units_total{kind="reserved"}` of the key's rule.
    reserved: IntCounter,
    blocked: IntCounter,
    shadow_blocked: OnceLock<IntCounter>,
    /// The `key` label, for a `shadow_blocked` series made late.
    key: Box<str>,
}

impl Decisions {
    fn of(vec: &IntCounterVec, units: &UnitMetrics, check: &Check, key: &str) -> Self {
        let series =
            |result: CheckResult| vec.with_label_values(&[result.label(), key, check.rule]);
        let shadow_blocked = OnceLock::new();
        if check.shadow {
            let _ = shadow_blocked.set(series(CheckResult::ShadowBlocked));
        }
        Decisions {
            allowed: series(CheckResult::Allowed),
            reserved: units.reserved(check.rule),
            blocked: series(CheckResult::Blocked),
            shadow_blocked,
            key: key.into(),
        }
    }

    fn count(&self, vec: &IntCounterVec, check: &Check, result: CheckResult) {
        let rule = check.rule;
        match result {
            CheckResult::Allowed => {
                self.allowed.inc();
                self.reserved.inc_by(u64::from(check.cost));
            }
            CheckResult::Blocked => self.blocked.inc(),
            CheckResult::ShadowBlocked => self
                .shadow_blocked
                .get_or_init(|| vec.with_label_values(&[result.label(), &self.key, rule]))
                .inc(),
        }
    }
}

impl Metrics {
    pub fn new(node_id: &str, max_key_labels: usize) -> Result<Metrics, prometheus::Error> {
        let labels = std::iter::once(("node_id".to_string(), node_id.to_string())).collect();
        let registry = Registry::new_custom(None, Some(labels))?;
        let checked = IntCounterVec::new(
            Opts::new(
                "ratelimiter_requests_checked_total",
                "Rate-limit decisions, by result, counter key and rule.",
            ),
            &["result", "key", "rule"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "ratelimiter_refused_total",
                "Requests the proxy refused, one each, by the rule that refused them and reason (limit, ban).",
            ),
            &["rule", "reason"],
        )?;
        let check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimiter_check_duration_seconds",
                "Time of one rate-limit decision, store call included.",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        let node_up = IntGauge::new("ratelimiter_node_up", "1 while the node serves.")?;
        let active_counters = IntGauge::new(
            "ratelimiter_active_counters",
            "Live counter keys, as of the last count.",
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "ratelimiter_store_errors_total",
                "Rate-limit store failures and timeouts, by kind.",
            ),
            &["kind"],
        )?;
        let lease_calls = IntCounterVec::new(
            Opts::new(
                "ratelimiter_lease_calls_total",
                "Lease calls taking slots of a shared counter, by rule.",
            ),
            &["rule"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "ratelimiter_config_reloads_total",
                "Config reloads on SIGHUP, by result.",
            ),
            &["result"],
        )?;
        let config_loaded = Gauge::new(
            "ratelimiter_config_loaded_timestamp_seconds",
            "When the config in force was loaded, in seconds since the Unix epoch.",
        )?;
        let responses_vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_responses_total",
                "Responses sent to clients, by status class.",
            ),
            &["code"],
        )?;
        let class = |c: &str| responses_vec.with_label_values(&[c]);
        let responses = [
            class("1xx"),
            class("2xx"),
            class("3xx"),
            class("4xx"),
            class("5xx"),
        ];
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimiter_upstream_duration_seconds",
                "Time from connecting to the upstream to the end of its response.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimiter_request_duration_seconds",
                "Time of whole requests, from their header to the last byte of the response.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "ratelimiter_build_info",
                "1, labelled with the version and the commit this binary was built from.",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[crate::VERSION, crate::COMMIT])
            .set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(request_duration.clone()))?;
        let upstreams = UpstreamMetrics::new(&registry)?;
        let units = UnitMetrics::new(&registry)?;
        let waits = WaitMetrics::new(&registry)?;
        let tenants = TenantMetrics::new(&registry)?;
        registry.register(Box::new(responses_vec))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(checked.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(check_duration.clone()))?;
        registry.register(Box::new(node_up.clone()))?;
        registry.register(Box::new(active_counters.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(lease_calls.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_loaded.clone()))?;
        // Each label value is present from the start, so `rate()` over it never starts
        // mid-incident.
        for kind in ["timeout", "connection", "reply"] {
            store_errors.with_label_values(&[kind]);
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            checked,
            refused,
            check_duration,
            node_up,
            active_counters,
            store_errors,
            lease_calls,
            reloads,
            config_loaded,
            responses,
            upstream_duration,
            request_duration,
            upstreams,
            units,
            waits,
            tenants,
            max_key_labels: AtomicUsize::new(max_key_labels),
            clear_keys: AtomicBool::new(false),
            labelled: RwLock::new(Labelled::default()),
        })
    }

    pub fn observe_check(&self, took: Duration) {
        self.check_duration.observe(took.as_secs_f64());
    }

    /// Counts a request the proxy refused under the rule that refused it: `reason` is `limit`
    /// (the rule's limit was reached) or `ban` (the key is banned).
    pub fn count_refusal(&self, rule: &str, reason: &str) {
        self.refused.with_label_values(&[rule, reason]).inc();
    }

    /// Counts one check's part in a decided request, and the units it reserved.
    pub fn count_decision(&self, check: &Check, result: CheckResult) {
        let (vec, rule) = (&self.checked, check.rule);
        {
            let map = crate::sync::read(&self.labelled);
            if let Some(d) = map.keys.get(rule).and_then(|k| k.get(check.key.as_str())) {
                return d.count(vec, check, result);
            }
            if map.len >= self.max_key_labels() {
                if let Some(d) = map.other.get(rule) {
                    return d.count(vec, check, result);
                }
            }
        }
        let mut map = crate::sync::write(&self.labelled);
        let map = &mut *map;
        if let Some(d) = map.keys.get(rule).and_then(|k| k.get(check.key.as_str())) {
            d.count(vec, check, result);
        } else if map.len < self.max_key_labels() {
            // Labelled once per key: the digest is worked out here, not per decision.
            let shown = match self.clear_keys.load(Ordering::Relaxed) {
                true => std::borrow::Cow::Borrowed(check.key.as_str()),
                false => crate::key::counter::display(&check.key),
            };
            let d = Decisions::of(vec, &self.units, check, &shown);
            d.count(vec, check, result);
            map.keys
                .entry(rule)
                .or_default()
                .insert(check.key.as_str().into(), d);
            map.len += 1;
        } else {
            map.other
                .entry(rule)
                .or_insert_with(|| Decisions::of(vec, &self.units, check, OTHER_KEY))
                .count(vec, check, result);
        }
    }

    fn max_key_labels(&self) -> usize {
        self.max_key_labels.load(Ordering::Relaxed)
    }

    /// Sets `metrics.max_key_labels` (on reload). Keys that have their own label keep it when
    /// the cap is lowered.
    pub fn set_max_key_labels(&self, n: usize) {
        self.max_key_labels.store(n, Ordering::Relaxed);
    }

    /// Whether keys labelled from now on show private values in clear.
    pub fn set_clear_keys(&self, clear: bool) {
        self.clear_keys.store(clear, Ordering::Relaxed);
    }

    /// Counts a reload; a successful one also sets when the config in force was loaded.
    pub fn count_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Records when the config in force was loaded.
    pub fn config_loaded_at(&self, at: SystemTime) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_loaded.set(secs);
    }

    /// One response sent to a client.
    pub fn count_response(&self, status: u16) {
        if let Some(counter) = usize::from(status / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(i))
        {
            counter.inc();
        }
    }

    /// How long an upstream took, from connecting to the end of its response.
    pub fn observe_upstream(&self, took: Duration) {
        self.upstream_duration.observe(took.as_secs_f64());
    }

    /// A whole request, from its header to its last byte.
    pub fn observe_request(&self, took: Duration) {
        self.request_duration.observe(took.as_secs_f64());
    }

    pub fn count_store_error(&self, kind: &str) {
        self.store_errors.with_label_values(&[kind]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limit;
    use std::num::{NonZeroU32, NonZeroU64};

    fn check(rule: &'static str, key: &str, shadow: bool) -> Check {
        Check {
            cost: 1,
            rule,
            key: key.to_string(),
            limit: Limit::sliding_log(NonZeroU32::new(5).unwrap(), NonZeroU64::new(1000).unwrap()),
            shadow,
            sync: crate::limiter::SyncMode::Exact,
            wait: Default::default(),
            period_ms: 0,
        }
    }

    #[test]
    fn key_labels_are_capped_per_node_and_kept_apart_by_rule() {
        let m = Metrics::new("n1", 2).unwrap();
        m.count_decision(&check("default", "a", false), CheckResult::Allowed);
        m.count_decision(&check("default", "b", false), CheckResult::Blocked);
        m.count_decision(&check("default", "c", false), CheckResult::Allowed);
        m.count_decision(&check("login", "login/d", false), CheckResult::Allowed);
        m.count_decision(&check("default", "a", false), CheckResult::Allowed);
        let text = m.render();
        assert!(
            text.contains(
                r#"ratelimiter_requests_checked_total{key="a",result="allowed",rule="default",node_id="n1"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"key="_other",result="allowed",rule="default",node_id="n1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"key="_other",result="allowed",rule="login",node_id="n1"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"key="c""#));
        assert!(!text.contains("shadow_blocked"));
    }

    #[test]
    fn shadow_rules_have_a_shadow_blocked_series() {
        let m = Metrics::new("n1", 10).unwrap();
        let dry = check("dry", "dry/ip:10.0.0.1", true);
        m.count_decision(&dry, CheckResult::Allowed);
        m.count_decision(&dry, CheckResult::ShadowBlocked);
        let text = m.render();
        assert!(
            text.contains(
                r#"key="dry/ip:10.0.0.1",result="shadow_blocked",rule="dry",node_id="n1"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_rule_that_becomes_a_shadow_gets_its_series() {
        let m = Metrics::new("n1", 10).unwrap();
        let mut c = check("trial", "trial/ip:10.0.0.1", false);
        m.count_decision(&c, CheckResult::Blocked);
        c.shadow = true;
        m.count_decision(&c, CheckResult::ShadowBlocked);
        let text = m.render();
        assert!(
            text.contains(r#"result="shadow_blocked",rule="trial",node_id="n1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"result="blocked",rule="trial",node_id="n1"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn reloads_are_counted_from_zero() {
        let m = Metrics::new("n1", 10).unwrap();
        assert!(m
            .render()
            .contains(r#"ratelimiter_config_reloads_total{result="failure",node_id="n1"} 0"#));
        m.count_reload(true);
        assert!(m
            .render()
            .contains(r#"ratelimiter_config_reloads_total{result="success",node_id="n1"} 1"#));
    }
}
