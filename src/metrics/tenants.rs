//! Tenants at runtime (contract §15): changes made through the admin API (and reloads), by
//! action; bans, by rule and reason. Bounded by the fixed actions and the config's rules.

use prometheus::{IntCounterVec, Opts, Registry};

pub struct TenantMetrics {
    changes: IntCounterVec,
    bans: IntCounterVec,
}

impl TenantMetrics {
    pub fn new(registry: &Registry) -> Result<TenantMetrics, prometheus::Error> {
        let changes = IntCounterVec::new(
            Opts::new(
                "ratelimiter_admin_changes_total",
                "Changes written to the audit log by this node (admin API changes and reloads), by action.",
            ),
            &["action"],
        )?;
        let bans = IntCounterVec::new(
            Opts::new(
                "ratelimiter_bans_total",
                "Bans this node made (auto: after repeated refusals) or was asked to make (manual), by rule and reason.",
            ),
            &["rule", "reason"],
        )?;
        registry.register(Box::new(changes.clone()))?;
        registry.register(Box::new(bans.clone()))?;
        Ok(TenantMetrics { changes, bans })
    }

    /// A ban made.
    pub fn banned(&self, rule: &str, reason: &str) {
        self.bans.with_label_values(&[rule, reason]).inc();
    }

    /// A change written to the audit log.
    pub fn changed(&self, action: &str) {
        self.changes.with_label_values(&[action]).inc();
    }
}
