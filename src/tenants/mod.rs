//! Tenants at runtime (contract §15): what operators change while the fleet runs, apart from
//! the config file.
//!
//! - Overrides: per-key limits set through the admin API, kept in the store ([`store`]) and
//!   applied by every node: each node holds the set in memory and looks at the store's
//!   version of it every [`SYNC_EVERY`], so a change made through one node is in force on
//!   every node within that, and after restarts. They take precedence over the file's
//!   `overrides` and change only the limit a key is judged by, never its counter.
//! - Bans: keys refused too often, or banned by hand, answered `429` from memory on every
//!   node for a while ([`bans`]).
//! - The audit log: every change through the admin API and every reload, with who made it
//!   ([`audit`]).

pub mod audit;
pub mod bans;
pub mod store;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::key::counter::split_rule;
use crate::limiter::{Check, Limit, StoreError};
use crate::rules::overrides::Entry;
use crate::rules::Overrides;
use crate::sync::{read, write};
use store::{Stored, TenantStore};

/// How often a node looks at the store's version of the overrides.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

pub struct Tenants {
    store: Arc<dyn TenantStore>,
    /// This node's id, for the audit log.
    node: String,
    /// The overrides in force on this node, by rule, and the store's version they were read
    /// at.
    overrides: RwLock<(HashMap<String, Overrides>, u64)>,
    /// Whether any override is set: most requests need not look.
    any: AtomicBool,
    /// The bans in force, and the refusals counted towards new ones.
    bans: bans::Bans,
}

impl Tenants {
    pub fn new(store: Arc<dyn TenantStore>, node: String) -> Tenants {
        Tenants {
            store,
            node,
            overrides: RwLock::new((HashMap::new(), u64::MAX)),
            any: AtomicBool::new(false),
            bans: bans::Bans::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn store(&self) -> &dyn TenantStore {
        self.store.as_ref()
    }

    /// Applies the overrides in force to a request's checks: a check whose rule has one for
    /// its key is judged by that limit (or concurrency).
    pub fn apply(&self, checks: &mut [Check]) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let overrides = read(&self.overrides);
        for check in checks {
            if let Some(n) = Self::lookup(&overrides.0, check.rule, &check.key) {
                check.limit.quota.limit = n;
            }
        }
    }

    /// `limit` as the overrides in force change it for this counter key of `rule`.
    pub fn limit_for(&self, rule: &str, counter_key: &str, mut limit: Limit) -> Limit {
        if self.any.load(Ordering::Relaxed) {
            if let Some(n) = Self::lookup(&read(&self.overrides).0, rule, counter_key) {
                limit.quota.limit = n;
            }
        }
        limit
    }

    fn lookup(
        overrides: &HashMap<String, Overrides>,
        rule: &str,
        counter_key: &str,
    ) -> Option<NonZeroU32> {
        let of_rule = overrides.get(rule)?;
        let request_key = match split_rule(counter_key) {
            (Some(_), request_key) => request_key,
            (None, _) => counter_key,
        };
        of_rule.get(request_key)
    }

    /// Reads the overrides and the bans again when the store's versions moved (or
    /// `force`).
    pub async fn sync(&self, force: bool) -> Result<(), StoreError> {
        self.sync_overrides(force).await?;
        self.sync_bans(force).await
    }

    async fn sync_overrides(&self, force: bool) -> Result<(), StoreError> {
        let version = self.store.overrides_version().await?;
        if !force && version == read(&self.overrides).1 {
            return Ok(());
        }
        let all = self.store.overrides().await?;
        if !self.install(&all, version, false) {
            // Older than those in force: a read overtaken by a change made through this node,
            // or a store that lost its data (a Redis restarted empty), whose version stays
            // behind. Only the second is put in force.
            if self.store.overrides_version().await? < read(&self.overrides).1 {
                self.install(&all, version, true);
            }
        }
        Ok(())
    }

    /// The store's overrides at `version`, unless newer ones are in force already (and not
    /// `anyway`); returns whether they were put in force.
    fn install(&self, all: &[Stored], version: u64, anyway: bool) -> bool {
        let mut by_rule: HashMap<String, Overrides> = HashMap::new();
        for (rule, entry, limit) in all {
            if let Some(n) = NonZeroU32::new(*limit) {
                by_rule
                    .entry(rule.clone())
                    .or_default()
                    .insert(entry.clone(), n);
            }
        }
        let mut overrides = write(&self.overrides);
        if !anyway && overrides.1 != u64::MAX && version < overrides.1 {
            return false;
        }
        self.any.store(!by_rule.is_empty(), Ordering::Relaxed);
        *overrides = (by_rule, version);
        true
    }

    /// Sets an override (already validated against its rule); returns the limit before.
    pub async fn put_override(
        &self,
        rule: &str,
        entry: &Entry,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        let before = self.store.put_override(rule, entry, limit).await?;
        self.sync_overrides(true).await?;
        Ok(before)
    }

    /// Removes an override; returns its limit (`None`: there was none).
    pub async fn delete_override(
        &self,
        rule: &str,
        entry: &Entry,
    ) -> Result<Option<u32>, StoreError> {
        let before = self.store.delete_override(rule, entry).await?;
        self.sync_overrides(true).await?;
        Ok(before)
    }

    /// Every override set at runtime, sorted.
    pub async fn overrides(&self) -> Result<Vec<Stored>, StoreError> {
        let mut all = self.store.overrides().await?;
        all.sort_by(|a, b| (&a.0, a.1.written()).cmp(&(&b.0, b.1.written())));
        Ok(all)
    }
}

/// Keeps this node's overrides in step with the store's: looks at its version every
/// [`SYNC_EVERY`], for the life of the process.
pub struct TenantSync {
    pub tenants: Arc<Tenants>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for TenantSync {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let mut failing = false;
        loop {
            match self.tenants.sync(false).await {
                Ok(()) if failing => {
                    log::info!("overrides set at runtime: read again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    log::warn!("overrides set at runtime: cannot read them: {e}; trying again every {SYNC_EVERY:?}");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    }
}
