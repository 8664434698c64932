//! The penalty box (contract §15): a key of a rule with `ban` that this node sees refused
//! `after` times within `within_ms` is banned for `for_ms`; operators ban and lift by hand
//! through the admin API. Bans live in the store ([`super::store`]) and every node holds the
//! ones in force in memory, kept in step as the overrides are: a banned request is answered
//! `429` from that memory, with no store call and no upstream contact.
//!
//! Refusals are counted by each node for the requests it refuses (a key hammering several
//! nodes reaches `after` on each at its own pace), `after` within `within_ms` of the first
//! one counted; the ban one node makes holds on it at once and on all once written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::store::StoredBan;
use super::Tenants;
use crate::key::counter::split_rule;
use crate::limiter::{Check, StoreError};
use crate::rules::ban::BanPolicy;
use crate::rules::overrides::{entry_of, Entry};
use crate::sync::{lock, read, write};

/// The most keys whose refusals a node counts at once; past it, new keys are not counted
/// until old ones age out (a flood of distinct keys cannot grow the memory).
const MAX_COUNTED: usize = 100_000;
/// How often, at most, the counted keys are swept once there are that many.
const SWEEP: Duration = Duration::from_secs(1);

/// A ban's reason.
pub const AUTO: &str = "auto";
pub const MANUAL: &str = "manual";

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `Retry-After` of a banned request: the ban's time left, in whole seconds up.
pub fn retry_after_secs(left: Duration) -> u64 {
    (left.as_millis() as u64).div_ceil(1000).max(1)
}

/// The most bans a node makes by itself and holds at once: past it, keys are refused as
/// usual rather than banned (a flood of distinct keys cannot grow the memory, nor the store).
const MAX_ACTIVE: usize = 100_000;

/// Refusals of one key since the first of its current window.
struct Counted {
    first: Instant,
    count: u32,
    within: Duration,
}

/// The refusals counted, and when they were last swept of keys whose window has passed.
struct Refusals {
    keys: HashMap<(String, Entry), Counted>,
    swept: Instant,
}

/// (rule, key) → until (ms since the epoch).
type Active = HashMap<(String, Entry), u64>;

pub struct Bans {
    /// (rule, key) → until (ms since the epoch), and the store's version they were read at.
    active: RwLock<(Active, u64)>,
    /// Whether any ban is in force: most requests need not look.
    any: AtomicBool,
    refusals: Mutex<Refusals>,
}

impl Bans {
    pub(super) fn new() -> Bans {
        Bans {
            active: RwLock::new((HashMap::new(), u64::MAX)),
            any: AtomicBool::new(false),
            refusals: Mutex::new(Refusals {
                keys: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// The store's bans at `version`, unless newer ones are in force already (and not
    /// `anyway`); returns whether they were put in force.
    fn install(&self, all: &[StoredBan], version: u64, anyway: bool) -> bool {
        let now = now_ms();
        let mut active = write(&self.active);
        if !anyway && active.1 != u64::MAX && version < active.1 {
            return false;
        }
        active.0 = all
            .iter()
            .filter(|b| b.until_ms > now)
            .map(|b| ((b.rule.clone(), b.entry.clone()), b.until_ms))
            .collect();
        active.1 = version;
        self.any.store(!active.0.is_empty(), Ordering::Relaxed);
        true
    }

    /// A ban this node made, in force here at once (the store tells the others).
    fn hold(&self, rule: &str, entry: &Entry, until_ms: u64) -> bool {
        let mut active = write(&self.active);
        if active.0.len() >= MAX_ACTIVE {
            return false;
        }
        active.0.insert((rule.to_string(), entry.clone()), until_ms);
        self.any.store(true, Ordering::Relaxed);
        true
    }
}

/// The key a check counts, as bans and overrides name it.
fn entry(check: &Check) -> Option<Entry> {
    let request_key = match split_rule(&check.key) {
        (Some(_), request_key) => request_key,
        (None, _) => check.key.as_str(),
    };
    entry_of(request_key)
}

impl Tenants {
    /// Whether a request is banned: the rule of the longest ban among its enforced checks,
    /// and how long it has left. Memory only.
    pub fn banned(&self, checks: &[Check]) -> Option<(&'static str, Duration)> {
        if !self.bans.any.load(Ordering::Relaxed) {
            return None;
        }
        let now = now_ms();
        let active = &read(&self.bans.active).0;
        checks
            .iter()
            .filter(|c| !c.shadow)
            .filter_map(|c| {
                let until = *active.get(&(c.rule.to_string(), entry(c)?))?;
                (until > now).then(|| (c.rule, Duration::from_millis(until - now)))
            })
            .max_by_key(|(_, left)| *left)
    }

    /// A refusal by a rule with `policy`: counted (`after` refusals within `within_ms` of
    /// the first one counted), and when it makes `after`, the ban it starts: in force on
    /// this node at once; the caller writes it to the store for the others.
    pub fn refused(&self, check: &Check, policy: BanPolicy) -> Option<(Entry, u64)> {
        let key = entry(check)?;
        let now = Instant::now();
        let mut refusals = lock(&self.bans.refusals);
        // Keys whose window has passed go, at most once a second.
        if refusals.keys.len() >= MAX_COUNTED && now.duration_since(refusals.swept) >= SWEEP {
            refusals
                .keys
                .retain(|_, c| now.duration_since(c.first) < c.within);
            refusals.swept = now;
        }
        let id = (check.rule.to_string(), key);
        if !refusals.keys.contains_key(&id) && refusals.keys.len() >= MAX_COUNTED {
            return None;
        }
        let counted = refusals.keys.entry(id.clone()).or_insert(Counted {
            first: now,
            count: 0,
            within: policy.within,
        });
        if now.duration_since(counted.first) >= policy.within {
            *counted = Counted {
                first: now,
                count: 0,
                within: policy.within,
            };
        }
        counted.count += 1;
        if counted.count < policy.after {
            return None;
        }
        refusals.keys.remove(&id);
        drop(refusals);
        let until = now_ms() + policy.lasts.as_millis() as u64;
        self.bans.hold(&id.0, &id.1, until).then_some((id.1, until))
    }

    /// Writes a ban this node made and already holds ([`Tenants::refused`]) to the store,
    /// for the others. Its bans are not read back: a flood of keys banned one after another
    /// would read the whole set of bans once for each.
    pub async fn record_ban(
        &self,
        rule: &str,
        entry: &Entry,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        self.store
            .put_ban(rule, entry, until_ms, AUTO, now_ms())
            .await
            .map(|_| ())
    }

    /// Bans a key of a rule until `until_ms`; in force on this node at once, on the others
    /// at their next look. Returns the ban it replaced.
    pub async fn put_ban(
        &self,
        rule: &str,
        entry: &Entry,
        until_ms: u64,
        reason: &str,
    ) -> Result<Option<StoredBan>, StoreError> {
        let before = self
            .store
            .put_ban(rule, entry, until_ms, reason, now_ms())
            .await?;
        self.sync_bans(true).await?;
        Ok(before)
    }

    /// Lifts a ban; returns it (`None`: there was none).
    pub async fn delete_ban(
        &self,
        rule: &str,
        entry: &Entry,
    ) -> Result<Option<StoredBan>, StoreError> {
        let before = self.store.delete_ban(rule, entry).await?;
        self.sync_bans(true).await?;
        Ok(before)
    }

    /// The bans in force, sorted.
    pub async fn bans(&self) -> Result<Vec<StoredBan>, StoreError> {
        let now = now_ms();
        let mut all: Vec<StoredBan> = self
            .store
            .bans()
            .await?
            .into_iter()
            .filter(|b| b.until_ms > now)
            .collect();
        all.sort_by(|a, b| (&a.rule, a.entry.written()).cmp(&(&b.rule, b.entry.written())));
        Ok(all)
    }

    /// Reads the bans again when the store's version moved (or `force`).
    pub(super) async fn sync_bans(&self, force: bool) -> Result<(), StoreError> {
        let version = self.store.bans_version().await?;
        if !force && version == read(&self.bans.active).1 {
            // Bans that ended meanwhile stop applying without a change in the store.
            if self.bans.any.load(Ordering::Relaxed) {
                let now = now_ms();
                let mut active = write(&self.bans.active);
                active.0.retain(|_, until| *until > now);
                self.bans.any.store(!active.0.is_empty(), Ordering::Relaxed);
            }
            return Ok(());
        }
        let all = self.store.bans().await?;
        // As for the overrides: an older version is a read overtaken by a change, unless the
        // store's version stays behind (it lost its data).
        if !self.bans.install(&all, version, false)
            && self.store.bans_version().await? < read(&self.bans.active).1
        {
            self.bans.install(&all, version, true);
        }
        Ok(())
    }
}
