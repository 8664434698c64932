//! Where the runtime state of tenants lives (contract §15): per-key overrides and the audit
//! log. With Redis it is shared by every node: the overrides in one hash, with a version
//! number that every change raises (so a node asks for the whole hash only when it moved),
//! and the audit log in one list, newest first, capped. With the embedded store, in memory.
//!
//! | key | type | content |
//! |---|---|---|
//! | `ratelimiter:overrides` | hash | `<rule>/ip/<address>` or `<rule>/value/<value>` → the limit (or concurrency) |
//! | `ratelimiter:overrides:version` | string | raised by every change |
//! | `ratelimiter:audit` | list | one JSON entry per change, newest first, at most 10000 |
//! | `ratelimiter:bans` | hash | `<rule>/ip/<address>` or `<rule>/value/<value>` → `<until, ms since the epoch> <auto\|manual>` |
//! | `ratelimiter:bans:version` | string | raised by every change |

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::bans::AUTO;
use crate::limiter::StoreError;
use crate::redis_conn::Redis;
use crate::rules::overrides::Entry;
use crate::sync::lock;

pub const OVERRIDES_KEY: &str = "ratelimiter:overrides";
pub const OVERRIDES_VERSION_KEY: &str = "ratelimiter:overrides:version";
pub const AUDIT_KEY: &str = "ratelimiter:audit";
pub const BANS_KEY: &str = "ratelimiter:bans";
pub const BANS_VERSION_KEY: &str = "ratelimiter:bans:version";
/// The most audit entries kept.
pub const AUDIT_CAP: usize = 10_000;

/// One override as stored: the rule, what it applies to, and the limit.
pub type Stored = (String, Entry, u32);

/// One ban as stored: the rule, the key it bans, until when (ms since the epoch), and why
/// (`auto` or `manual`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBan {
    pub rule: String,
    pub entry: Entry,
    pub until_ms: u64,
    pub reason: String,
}

impl StoredBan {
    fn text(&self) -> String {
        format!("{} {}", self.until_ms, self.reason)
    }

    fn parse(field: &str, text: &str) -> Option<StoredBan> {
        let (rule, entry) = parse_field(field)?;
        let (until, reason) = text.split_once(' ')?;
        Some(StoredBan {
            rule,
            entry,
            until_ms: until.parse().ok()?,
            reason: reason.to_string(),
        })
    }
}

#[async_trait]
pub trait TenantStore: Send + Sync {
    /// A number that every change of the overrides raises.
    async fn overrides_version(&self) -> Result<u64, StoreError>;
    /// Every override.
    async fn overrides(&self) -> Result<Vec<Stored>, StoreError>;
    /// Sets one; returns the limit it had before.
    async fn put_override(
        &self,
        rule: &str,
        entry: &Entry,
        limit: u32,
    ) -> Result<Option<u32>, StoreError>;
    /// Removes one; returns the limit it had.
    async fn delete_override(&self, rule: &str, entry: &Entry) -> Result<Option<u32>, StoreError>;
    /// A number that every change of the bans raises.
    async fn bans_version(&self) -> Result<u64, StoreError>;
    /// Every ban (ended ones included, until they are cleared).
    async fn bans(&self) -> Result<Vec<StoredBan>, StoreError>;
    /// Bans one key of a rule until `until_ms` (ms since the epoch), for `reason`; ends
    /// bans that ended before `now_ms` while at it. Returns the ban it replaced.
    async fn put_ban(
        &self,
        rule: &str,
        entry: &Entry,
        until_ms: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<StoredBan>, StoreError>;
    /// Lifts a ban; returns it.
    async fn delete_ban(&self, rule: &str, entry: &Entry) -> Result<Option<StoredBan>, StoreError>;
    /// Appends an entry (JSON) to the audit log.
    async fn append_audit(&self, entry: String) -> Result<(), StoreError>;
    /// The newest `limit` entries, newest first.
    async fn audit(&self, limit: usize) -> Result<Vec<String>, StoreError>;
}

/// Whether a ban in force outlasts one made automatically until `until_ms`, and stays: an
/// automatic ban never shortens one (an operator's day-long ban, say).
fn keeps(before: Option<&StoredBan>, until_ms: u64, now_ms: u64) -> bool {
    before.is_some_and(|b| b.until_ms > now_ms && b.until_ms >= until_ms)
}

fn field(rule: &str, entry: &Entry) -> String {
    match entry {
        Entry::Ip(ip) => format!("{rule}/ip/{ip}"),
        Entry::Value(v) => format!("{rule}/value/{v}"),
    }
}

/// This node's memory: the embedded store.
#[derive(Default)]
pub struct MemoryTenants {
    overrides: Mutex<(u64, HashMap<String, u32>)>,
    bans: Mutex<(u64, HashMap<String, String>)>,
    audit: Mutex<VecDeque<String>>,
}

#[async_trait]
impl TenantStore for MemoryTenants {
    async fn overrides_version(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.overrides).0)
    }

    async fn overrides(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(lock(&self.overrides)
            .1
            .iter()
            .filter_map(|(f, n)| parse(f, &n.to_string()))
            .collect())
    }

    async fn put_override(
        &self,
        rule: &str,
        entry: &Entry,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        let mut o = lock(&self.overrides);
        o.0 += 1;
        Ok(o.1.insert(field(rule, entry), limit))
    }

    async fn delete_override(&self, rule: &str, entry: &Entry) -> Result<Option<u32>, StoreError> {
        let mut o = lock(&self.overrides);
        let before = o.1.remove(&field(rule, entry));
        if before.is_some() {
            o.0 += 1;
        }
        Ok(before)
    }

    async fn bans_version(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.bans).0)
    }

    async fn bans(&self) -> Result<Vec<StoredBan>, StoreError> {
        Ok(lock(&self.bans)
            .1
            .iter()
            .filter_map(|(f, t)| StoredBan::parse(f, t))
            .collect())
    }

    async fn put_ban(
        &self,
        rule: &str,
        entry: &Entry,
        until_ms: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<StoredBan>, StoreError> {
        let mut b = lock(&self.bans);
        b.1.retain(|f, t| StoredBan::parse(f, t).is_some_and(|ban| ban.until_ms > now_ms));
        let f = field(rule, entry);
        let before = b.1.get(&f).and_then(|t| StoredBan::parse(&f, t));
        if reason == AUTO && keeps(before.as_ref(), until_ms, now_ms) {
            return Ok(before);
        }
        let ban = StoredBan {
            rule: rule.to_string(),
            entry: entry.clone(),
            until_ms,
            reason: reason.to_string(),
        };
        b.0 += 1;
        b.1.insert(f, ban.text());
        Ok(before)
    }

    async fn delete_ban(&self, rule: &str, entry: &Entry) -> Result<Option<StoredBan>, StoreError> {
        let mut b = lock(&self.bans);
        let f = field(rule, entry);
        let before = b.1.remove(&f).and_then(|t| StoredBan::parse(&f, &t));
        if before.is_some() {
            b.0 += 1;
        }
        Ok(before)
    }

    async fn append_audit(&self, entry: String) -> Result<(), StoreError> {
        let mut log = lock(&self.audit);
        log.push_front(entry);
        log.truncate(AUDIT_CAP);
        Ok(())
    }

    async fn audit(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(lock(&self.audit).iter().take(limit).cloned().collect())
    }
}

/// A field into its rule and entry; `None` for anything else (another program's field, a
/// hand-made one).
fn parse_field(field: &str) -> Option<(String, Entry)> {
    let (rule, rest) = field.split_once('/')?;
    let entry = match rest.split_once('/')? {
        ("ip", ip) => Entry::Ip(ip.to_string()),
        ("value", v) => Entry::Value(v.to_string()),
        _ => return None,
    };
    Some((rule.to_string(), entry))
}

/// A field and a number into an override.
fn parse(field: &str, limit: &str) -> Option<Stored> {
    let (rule, entry) = parse_field(field)?;
    let limit: u32 = limit.parse().ok().filter(|n| *n > 0)?;
    Some((rule, entry, limit))
}

/// The shared state in Redis.
pub struct RedisTenants {
    redis: Arc<Redis>,
}

impl RedisTenants {
    pub fn new(redis: Arc<Redis>) -> RedisTenants {
        RedisTenants { redis }
    }

    async fn query<T: redis::FromRedisValue + Send>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        let cmd = &cmd;
        Ok(self
            .redis
            .retried(self.redis.slow_timeout(), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?)
    }

    /// A change: made, then the version raised (a node that reads the version before the
    /// change lands reads it again at its next look).
    async fn changed(&self, version_key: &str) -> Result<(), StoreError> {
        self.query::<u64>(redis::cmd("INCR").arg(version_key).clone())
            .await
            .map(|_| ())
    }

    async fn version(&self, key: &str) -> Result<u64, StoreError> {
        let v: Option<u64> = self.query(redis::cmd("GET").arg(key).clone()).await?;
        Ok(v.unwrap_or(0))
    }

    /// One field of a hash.
    async fn field_of(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        self.query(redis::cmd("HGET").arg(key).arg(field).clone())
            .await
    }

    /// Sets one field of a hash, then raises its version.
    async fn set_field(
        &self,
        key: &str,
        field: &str,
        value: String,
        version_key: &str,
    ) -> Result<(), StoreError> {
        self.query::<u64>(redis::cmd("HSET").arg(key).arg(field).arg(value).clone())
            .await?;
        self.changed(version_key).await
    }

    /// Removes one field of a hash (raising its version when there was one); returns it.
    async fn remove_field(
        &self,
        key: &str,
        field: &str,
        version_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let before = self.field_of(key, field).await?;
        if before.is_some() {
            self.query::<u64>(redis::cmd("HDEL").arg(key).arg(field).clone())
                .await?;
            self.changed(version_key).await?;
        }
        Ok(before)
    }
}

#[async_trait]
impl TenantStore for RedisTenants {
    async fn overrides_version(&self) -> Result<u64, StoreError> {
        self.version(OVERRIDES_VERSION_KEY).await
    }

    async fn overrides(&self) -> Result<Vec<Stored>, StoreError> {
        let all: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(OVERRIDES_KEY).clone())
            .await?;
        Ok(all.iter().filter_map(|(f, n)| parse(f, n)).collect())
    }

    async fn put_override(
        &self,
        rule: &str,
        entry: &Entry,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        let f = field(rule, entry);
        let before = self.field_of(OVERRIDES_KEY, &f).await?;
        self.set_field(OVERRIDES_KEY, &f, limit.to_string(), OVERRIDES_VERSION_KEY)
            .await?;
        Ok(before.and_then(|b| b.parse().ok()))
    }

    async fn delete_override(&self, rule: &str, entry: &Entry) -> Result<Option<u32>, StoreError> {
        let before = self
            .remove_field(OVERRIDES_KEY, &field(rule, entry), OVERRIDES_VERSION_KEY)
            .await?;
        Ok(before.and_then(|b| b.parse().ok()))
    }

    async fn bans_version(&self) -> Result<u64, StoreError> {
        self.version(BANS_VERSION_KEY).await
    }

    /// Every ban; ended ones are cleared from the hash on the way.
    async fn bans(&self) -> Result<Vec<StoredBan>, StoreError> {
        let all: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(BANS_KEY).clone())
            .await?;
        let bans: Vec<StoredBan> = all
            .iter()
            .filter_map(|(f, t)| StoredBan::parse(f, t))
            .collect();
        let now = super::bans::now_ms();
        let ended: Vec<String> = bans
            .iter()
            .filter(|b| b.until_ms <= now)
            .map(|b| field(&b.rule, &b.entry))
            .collect();
        if !ended.is_empty() {
            self.query::<u64>(redis::cmd("HDEL").arg(BANS_KEY).arg(&ended).clone())
                .await?;
        }
        Ok(bans)
    }

    async fn put_ban(
        &self,
        rule: &str,
        entry: &Entry,
        until_ms: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<StoredBan>, StoreError> {
        let ban = StoredBan {
            rule: rule.to_string(),
            entry: entry.clone(),
            until_ms,
            reason: reason.to_string(),
        };
        let f = field(rule, entry);
        let before = self
            .field_of(BANS_KEY, &f)
            .await?
            .and_then(|t| StoredBan::parse(&f, &t));
        if reason == AUTO && keeps(before.as_ref(), until_ms, now_ms) {
            return Ok(before);
        }
        self.set_field(BANS_KEY, &f, ban.text(), BANS_VERSION_KEY)
            .await?;
        Ok(before)
    }

    async fn delete_ban(&self, rule: &str, entry: &Entry) -> Result<Option<StoredBan>, StoreError> {
        let f = field(rule, entry);
        let before = self.remove_field(BANS_KEY, &f, BANS_VERSION_KEY).await?;
        Ok(before.and_then(|t| StoredBan::parse(&f, &t)))
    }

    async fn append_audit(&self, entry: String) -> Result<(), StoreError> {
        self.query::<u64>(redis::cmd("LPUSH").arg(AUDIT_KEY).arg(entry).clone())
            .await?;
        self.query::<()>(
            redis::cmd("LTRIM")
                .arg(AUDIT_KEY)
                .arg(0)
                .arg(AUDIT_CAP - 1)
                .clone(),
        )
        .await
    }

    async fn audit(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.query(
            redis::cmd("LRANGE")
                .arg(AUDIT_KEY)
                .arg(0)
                .arg(limit - 1)
                .clone(),
        )
        .await
    }
}
