//! Prometheus metrics (contract §6), in a registry of this node's own so every series
//! carries `node_id`.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The `key` label of decisions past the per-node cap on distinct keys.
pub const OTHER_KEY: &str = "_other";

/// Check-duration buckets, in seconds: fine below a millisecond, where both stores answer.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub struct Metrics {
    registry: Registry,
    checked: IntCounterVec,
    check_duration: Histogram,
    pub node_up: IntGauge,
    pub active_counters: IntGauge,
    store_errors: IntCounterVec,
    max_key_labels: usize,
    /// The (allowed, blocked) counters of each key with its own label, bounded by
    /// `max_key_labels`: one map lookup per decision instead of resolving labels each time.
    labelled: RwLock<HashMap<Box<str>, Decisions>>,
    other: Decisions,
}

/// A key's two decision counters. Both series exist from the key's first decision, so
/// `increase()` over the blocked one starts from 0, not from its first blocked request.
#[derive(Clone)]
struct Decisions {
    allowed: IntCounter,
    blocked: IntCounter,
}

impl Decisions {
    fn of(vec: &IntCounterVec, key: &str) -> Self {
        Decisions {
            allowed: vec.with_label_values(&["allowed", key]),
            blocked: vec.with_label_values(&["blocked", key]),
        }
    }

    fn count(&self, allowed: bool) {
        if allowed {
            self.allowed.inc();
        } else {
            self.blocked.inc();
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
                "Rate-limit decisions, by result and counter key.",
            ),
            &["result", "key"],
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
        registry.register(Box::new(checked.clone()))?;
        registry.register(Box::new(check_duration.clone()))?;
        registry.register(Box::new(node_up.clone()))?;
        registry.register(Box::new(active_counters.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        // Each kind is present from the start, so `rate()` over it never starts mid-incident.
        for kind in ["timeout", "connection", "reply"] {
            store_errors.with_label_values(&[kind]);
        }
        let other = Decisions::of(&checked, OTHER_KEY);
        Ok(Metrics {
            registry,
            checked,
            other,
            check_duration,
            node_up,
            active_counters,
            store_errors,
            max_key_labels,
            labelled: RwLock::new(HashMap::new()),
        })
    }

    pub fn observe_check(&self, took: Duration) {
        self.check_duration.observe(took.as_secs_f64());
    }

    pub fn count_decision(&self, key: &str, allowed: bool) {
        {
            let map = self.labelled.read().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = map.get(key) {
                return d.count(allowed);
            }
            if map.len() >= self.max_key_labels {
                return self.other.count(allowed);
            }
        }
        let mut map = self.labelled.write().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map.get(key) {
            d.count(allowed);
        } else if map.len() < self.max_key_labels {
            let d = Decisions::of(&self.checked, key);
            d.count(allowed);
            map.insert(key.into(), d);
        } else {
            self.other.count(allowed);
        }
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

    #[test]
    fn key_labels_are_capped() {
        let m = Metrics::new("n1", 2).unwrap();
        m.count_decision("a", true);
        m.count_decision("b", false);
        m.count_decision("c", true);
        m.count_decision("a", true);
        let text = m.render();
        assert!(
            text.contains(
                r#"ratelimiter_requests_checked_total{key="a",result="allowed",node_id="n1"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"key="_other",result="allowed",node_id="n1"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"key="c""#));
    }
}
