//! Prometheus metrics (contract §6), in a registry of this node's own so every series
//! carries `node_id`.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
    /// Keys that have their own label; bounded by `max_key_labels`.
    labelled: RwLock<HashSet<Box<str>>>,
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
        Ok(Metrics {
            registry,
            checked,
            check_duration,
            node_up,
            active_counters,
            store_errors,
            max_key_labels,
            labelled: RwLock::new(HashSet::new()),
        })
    }

    pub fn observe_check(&self, took: Duration) {
        self.check_duration.observe(took.as_secs_f64());
    }

    pub fn count_decision(&self, key: &str, allowed: bool) {
        let result = if allowed { "allowed" } else { "blocked" };
        let label = self.key_label(key);
        self.checked.with_label_values(&[result, label]).inc();
    }

    pub fn count_store_error(&self, kind: &str) {
        self.store_errors.with_label_values(&[kind]).inc();
    }

    /// The key itself while fewer than `max_key_labels` keys have a label, else `_other`.
    fn key_label<'k>(&self, key: &'k str) -> &'k str {
        {
            let set = self.labelled.read().unwrap_or_else(|p| p.into_inner());
            if set.contains(key) {
                return key;
            }
            if set.len() >= self.max_key_labels {
                return OTHER_KEY;
            }
        }
        let mut set = self.labelled.write().unwrap_or_else(|p| p.into_inner());
        if set.contains(key) {
            key
        } else if set.len() < self.max_key_labels {
            set.insert(key.into());
            key
        } else {
            OTHER_KEY
        }
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
