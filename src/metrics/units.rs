//! Units (contract §13): what rules reserve at admission, and what settling gives back or
//! charges, per rule; and the settlements that could not be made, by reason. Both are
//! bounded by the config (rules) and a fixed list (kinds, reasons).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::settle::Failure;

pub struct UnitMetrics {
    units: IntCounterVec,
    failures: IntCounterVec,
}

impl UnitMetrics {
    pub fn new(registry: &Registry) -> Result<UnitMetrics, prometheus::Error> {
        let units = IntCounterVec::new(
            Opts::new(
                "ratelimiter_units_total",
                "Units reserved at admission, and given back or charged when responses settle, by rule.",
            ),
            &["rule", "kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "ratelimiter_settle_failures_total",
                "Reservations left as reserved because the response could not settle them, by rule and reason.",
            ),
            &["rule", "reason"],
        )?;
        registry.register(Box::new(units.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(UnitMetrics { units, failures })
    }

    /// The series a rule's reservations are counted in (looked up once per counter key).
    pub fn reserved(&self, rule: &str) -> IntCounter {
        self.units.with_label_values(&[rule, "reserved"])
    }

    /// A settlement made: `given` units back (negative: charged).
    pub fn settled(&self, rule: &str, given: i64) {
        let (kind, n) = match given {
            0 => return,
            g if g > 0 => ("given_back", g as u64),
            g => ("charged", g.unsigned_abs()),
        };
        self.units.with_label_values(&[rule, kind]).inc_by(n);
    }

    /// A reservation that stays as reserved.
    pub fn failed(&self, rule: &str, why: Failure) {
        self.failures.with_label_values(&[rule, why.label()]).inc();
    }
}
