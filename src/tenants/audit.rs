//! The audit log (contract §15): one entry per change made through the admin API (an
//! override, a ban, a counter reset) and per reload, newest first, with who made it: the
//! name of the admin token presented (`admin` for `admin.token`, a name of `admin.tokens`),
//! `anonymous` when no token is set, `signal` for a reload by SIGHUP.

use serde::Serialize;
use serde_json::Value;

use super::Tenants;
use crate::limiter::StoreError;
use crate::registry::iso8601;

/// The actor of a change when the admin port has no token.
pub const ANONYMOUS: &str = "anonymous";
/// The actor of a reload by SIGHUP.
pub const SIGNAL: &str = "signal";

/// One change, as the log keeps it.
#[derive(Debug, Serialize)]
pub struct Change<'a> {
    pub actor: &'a str,
    /// `override.put`, `override.delete`, `ban.put`, `ban.delete`, `counter.reset`,
    /// `config.reload`.
    pub action: &'static str,
    /// What changed: `<rule>/<value>`, a counter key, the config file.
    pub target: String,
    pub before: Value,
    pub after: Value,
}

#[derive(Serialize)]
struct Entry<'a> {
    time: String,
    node: &'a str,
    #[serde(flatten)]
    change: &'a Change<'a>,
}

impl Tenants {
    /// Appends a change to the audit log.
    pub async fn record(&self, change: &Change<'_>) -> Result<(), StoreError> {
        let entry = Entry {
            time: iso8601(std::time::SystemTime::now()),
            node: self.node(),
            change,
        };
        let text = serde_json::to_string(&entry)
            .map_err(|e| StoreError::Reply(format!("cannot write an audit entry: {e}")))?;
        self.store().append_audit(text).await
    }

    /// The newest `limit` entries, newest first (an entry that does not read as JSON, left
    /// by hand, is skipped).
    pub async fn audit(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .store()
            .audit(limit)
            .await?
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect())
    }
}
