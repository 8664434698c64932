//! The penalty box (contract §15): a key of a rule with `ban` that this node sees refused
//! `after` times within `within_ms` is banned for `for_ms`; operators ban and lift by hand
//! through the admin API. Bans live in the store ([`super::store`]) and every node holds the
//! ones in force in memory, kept in step as the overrides are: a banned request is answered
//! `429` from that memory, with no store call and no upstream contact.
//!
//! Refusals are counted by each node for the requests it refuses (a key hammering several
//! nodes reaches `after` on each at its own pace); the ban one node makes holds on all.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// A ban's reason.
pub const AUTO: &str = "auto";
pub const MANUAL: &str = "manual";

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Refusals of one key, and the window they count in.
struct Counted {
    at: VecDeque<Instant>,
    within: Duration,
}

#[derive(Default)]
pub struct Bans {
    /// (rule, key) → until (ms since the epoch).
    active: RwLock<HashMap<(String, Entry), u64>>,
    version: AtomicU64,
    any: AtomicBool,
    refusals: Mutex<HashMap<(String, Entry), Counted>>,
}

impl Bans {
    pub(super) fn new() -> Bans {
        Bans {
            version: AtomicU64::new(u64::MAX),
            ..Bans::default()
        }
    }

    fn install(&self, all: Vec<StoredBan>) {
        let now = now_ms();
        let active: HashMap<(String, Entry), u64> = all
            .into_iter()
            .filter(|b| b.until_ms > now)
            .map(|b| ((b.rule, b.entry), b.until_ms))
            .collect();
        self.any.store(!active.is_empty(), Ordering::Relaxed);
        *write(&self.active) = active;
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
        let active = read(&self.bans.active);
        checks
            .iter()
            .filter(|c| !c.shadow)
            .filter_map(|c| {
                let until = *active.get(&(c.rule.to_string(), entry(c)?))?;
                (until > now).then(|| (c.rule, Duration::from_millis(until - now)))
            })
            .max_by_key(|(_, left)| *left)
    }

    /// A refusal by a rule with `policy`: counted, and when it makes `after` within the
    /// window, the ban it starts (the key, and until when).
    pub fn refused(&self, check: &Check, policy: BanPolicy) -> Option<(Entry, u64)> {
        let key = entry(check)?;
        let now = Instant::now();
        let mut refusals = lock(&self.bans.refusals);
        if refusals.len() >= MAX_COUNTED {
            refusals.retain(|_, c| {
                c.at.back()
                    .is_some_and(|last| now.duration_since(*last) < c.within)
            });
        }
        let id = (check.rule.to_string(), key);
        if !refusals.contains_key(&id) && refusals.len() >= MAX_COUNTED {
            return None;
        }
        let counted = refusals.entry(id.clone()).or_insert_with(|| Counted {
            at: VecDeque::new(),
            within: policy.within,
        });
        counted.within = policy.within;
        while counted
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= policy.within)
        {
            counted.at.pop_front();
        }
        counted.at.push_back(now);
        if counted.at.len() < policy.after as usize {
            return None;
        }
        refusals.remove(&id);
        Some((id.1, now_ms() + policy.lasts.as_millis() as u64))
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
        if !force && version == self.bans.version.load(Ordering::Relaxed) {
            // Bans that ended meanwhile stop applying without a change in the store.
            if self.bans.any.load(Ordering::Relaxed) {
                let now = now_ms();
                let mut active = write(&self.bans.active);
                active.retain(|_, until| *until > now);
                self.bans.any.store(!active.is_empty(), Ordering::Relaxed);
            }
            return Ok(());
        }
        let all = self.store.bans().await?;
        self.bans.install(all);
        self.bans.version.store(version, Ordering::Relaxed);
        Ok(())
    }
}
