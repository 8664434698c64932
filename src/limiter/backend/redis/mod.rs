//! The shared store: counters in Redis, all of a request's checks decided by one Lua script
//! call ([`scripts`]), so the decision is atomic across every node and costs one round trip
//! however many rules apply. Beside it: [`blocked`] remembers keys known full, [`lease`] holds
//! this node's leases of counters, [`cross_slot`] decides a request whose keys live on several
//! Redis Cluster slots. The files depend on each other in that order only: `scripts` and
//! `blocked` at the bottom, this store at the top.
//!
//! Every call goes through the Redis layer ([`crate::redis_conn`]): the calling thread's own
//! connection, to a standalone server, a Sentinel's master or a Redis Cluster. On a cluster a
//! request's keys may live on several slots, and one script can only touch one: such a
//! request is decided slot by slot ([`cross_slot`]), never above a limit.
//!
//! The subscription to resets and the watch on the topology run on a small runtime of their
//! own, owned by the store.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;

pub mod blocked;
pub mod cross_slot;
pub mod lease;
pub mod scripts;

use crate::config::RedisConfig;
use crate::limiter::{
    Check, Counter, Counters, Decide, Decision, Limit, Mode, Settlement, StoreError, SyncMode,
};
use crate::redis_conn::scan::Scan;
use crate::redis_conn::{pubsub, topology, Redis};
use blocked::{BlockedKeys, RESET_CHANNEL};
use lease::Leases;
use scripts::{Scripts, COUNT_SCRIPT};

pub use scripts::{KEY_PREFIX, SCRIPT};

/// A Redis failure, as the limiter's policy sees it.
impl From<crate::redis_conn::Error> for StoreError {
    fn from(e: crate::redis_conn::Error) -> StoreError {
        match e {
            crate::redis_conn::Error::Timeout => StoreError::Timeout,
            crate::redis_conn::Error::Connection(e) => StoreError::Connection(e),
            crate::redis_conn::Error::Reply(e) => StoreError::Reply(e),
        }
    }
}

/// Whether every check of a request leases: then the lease table decides it.
fn all_lease(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.sync != SyncMode::Exact)
}

/// How long a reset waits to hear its own message back from Redis.
const RESET_ECHO_WAIT: Duration = Duration::from_millis(200);

pub struct RedisStore {
    redis: Arc<Redis>,
    /// Keys known to be full, answered without Redis until a slot frees.
    blocked: Arc<BlockedKeys>,
    scripts: Arc<Scripts>,
    /// This node's leases, for rules with `sync = "lease"`.
    leases: Arc<Leases>,
    count_script: Script,
    /// Unique per process: with `seq`, makes every sorted-set member unique across nodes.
    instance: String,
    seq: AtomicU64,
    /// Runs the subscription to resets; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside async code; the store may be
        // dropped there (in tests, or by an admin task), so let it wind down in the background.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl RedisStore {
    /// Prepares the clients without connecting: callable with Redis down.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let redis = Arc::new(Redis::new(config)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-resets")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Connection(format!("cannot start the Redis runtime: {e}")))?;
        let blocked = Arc::new(BlockedKeys::default());
        runtime.spawn(pubsub::follow(
            redis.clone(),
            RESET_CHANNEL,
            blocked.clone(),
        ));
        runtime.spawn(topology::follow(redis.clone()));
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let instance = format!("{:016x}", h.finish());
        let scripts = Arc::new(Scripts::new(redis.clone()));
        let leases = Arc::new(Leases::new(scripts.clone(), instance.clone()));
        runtime.spawn(leases.clone().give_back_ended_forever());
        Ok(RedisStore {
            scripts,
            leases,
            redis,
            blocked,
            count_script: Script::new(&COUNT_SCRIPT),
            instance,
            // From 1: a concurrency slot's mark is its sequence number, and 0 means none.
            seq: AtomicU64::new(1),
            runtime: Some(runtime),
        })
    }

    /// This node's leases.
    pub fn leases(&self) -> Arc<Leases> {
        self.leases.clone()
    }

    /// The Redis layer, for the other users of this Redis (the node registry).
    pub fn redis(&self) -> Arc<Redis> {
        self.redis.clone()
    }

    /// A new member id, and its sequence number (a concurrency slot's mark).
    fn member(&self) -> (String, u64) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        (format!("{}-{n:x}", self.instance), n)
    }

    /// A request remembered blocked: the decisions known without asking Redis, when at least
    /// one enforced check is a key known to be full.
    fn remembered_block(&self, checks: &[Check], now: Instant) -> Option<Vec<Option<Decision>>> {
        let mut known: Option<Vec<Option<Decision>>> = None;
        for (i, check) in checks.iter().enumerate() {
            if check.shadow {
                continue;
            }
            if let Some(d) = self.blocked.get(&check.key, check.limit, check.cost, now) {
                known.get_or_insert_with(|| vec![None; checks.len()])[i] = Some(d);
            }
        }
        known
    }
}

#[async_trait]
impl Decide for RedisStore {
    fn give_back(&self, slots: Vec<Settlement>) {
        let Some(rt) = &self.runtime else {
            return;
        };
        // On the store's own runtime, whose thread has its own connection.
        let (leases, limit) = (self.leases.clone(), self.redis.slow_timeout());
        let (scripts, owner) = (self.scripts.clone(), self.instance.clone());
        let held = slots.len();
        let done = rt.block_on(rt.spawn(async move {
            let leases = tokio::time::timeout(limit, leases.give_back_all()).await;
            let slots = match slots.is_empty() {
                true => Ok(Ok(Vec::new())),
                false => tokio::time::timeout(limit, settle(&scripts, &owner, &slots)).await,
            };
            (leases, slots)
        }));
        let (leases, slots) = match done {
            Ok((leases, slots)) => (leases.is_ok(), matches!(slots, Ok(Ok(_)))),
            Err(_) => (false, false),
        };
        if !leases {
            log::warn!("could not give back every leased slot in time; they free when their leases would have ended");
        }
        if !slots {
            log::warn!("could not free {held} concurrency slot(s) at exit; they expire within their slot_ttl_ms");
        }
    }

    fn freed(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<str>>> {
        Some(self.blocked.listen())
    }

    fn decide_local(&self, checks: &[Check], mode: Mode) -> Option<Vec<Option<Decision>>> {
        if !mode.record {
            return None;
        }
        if all_lease(checks) {
            return self.leases.decide_local(checks);
        }
        self.remembered_block(checks, Instant::now())
    }

    /// Asks Redis (keys remembered full were looked up already, in `decide_local`).
    async fn decide(
        &self,
        checks: &[Check],
        mode: Mode,
    ) -> Result<Vec<Option<Decision>>, StoreError> {
        let sent = Instant::now();
        if mode.record && all_lease(checks) {
            return self.leases.decide_all(checks).await;
        }
        let (member, seq) = self.member();
        let mut untaken = Untaken::of(self, checks, mode, seq);
        let groups = if self.redis.is_cluster() && checks.len() > 1 {
            cross_slot::by_slot(checks)
        } else {
            Vec::new()
        };
        let cross = groups.len() > 1;
        let decisions = if cross {
            cross_slot::decide(&self.scripts, checks, groups, mode, member).await?
        } else {
            let all: Vec<&Check> = checks.iter().collect();
            self.scripts
                .call(&all, mode, &member, false)
                .await?
                .decisions
        };
        if mode.record {
            for (check, d) in checks.iter().zip(&decisions) {
                if !check.shadow && check.limit.algorithm.refusals_remembered() {
                    self.blocked
                        .remember(&check.key, check.limit, check.cost, d, sent);
                }
            }
        }
        // The decisions reach the caller: the slots taken are its to free. (A request refused
        // across cluster slots holds none, but a slot whose call failed may have taken one.)
        let refused = checks
            .iter()
            .zip(&decisions)
            .any(|(c, d)| !c.shadow && !d.allowed);
        if !(cross && refused) {
            untaken.slots.clear();
        }
        Ok(decisions.into_iter().map(Some).collect())
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<Vec<i64>, StoreError> {
        settle(&self.scripts, &self.instance, settlements).await
    }
}

/// The concurrency slots a decision may take, freed unless its decisions reach the caller: a
/// call cut short by the time bound (or failing after the script ran) may have taken them,
/// and no request would ever free them. Freeing a slot never taken does nothing.
struct Untaken<'s> {
    store: &'s RedisStore,
    slots: Vec<Settlement>,
}

impl<'s> Untaken<'s> {
    fn of(store: &'s RedisStore, checks: &[Check], mode: Mode, seq: u64) -> Untaken<'s> {
        let slots = match mode.record {
            true => checks
                .iter()
                .filter(|c| c.is_concurrency())
                .map(|check| Settlement {
                    check: check.clone(),
                    mark: seq as i64,
                    actual: 0,
                    max_cost: 1,
                })
                .collect(),
            false => Vec::new(),
        };
        Untaken { store, slots }
    }
}

impl Drop for Untaken<'_> {
    fn drop(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (scripts, owner) = (self.store.scripts.clone(), self.store.instance.clone());
        let slots = std::mem::take(&mut self.slots);
        runtime.spawn(async move {
            if let Err(e) = settle(&scripts, &owner, &slots).await {
                log::debug!("could not free the slots of a decision cut short: {e}");
            }
        });
    }
}

/// Settles in one script call, or one per cluster slot, all at once; `owner` is this node's
/// instance id.
async fn settle(
    scripts: &Scripts,
    owner: &str,
    settlements: &[Settlement],
) -> Result<Vec<i64>, StoreError> {
    let mut groups: Vec<(Option<redis::cluster_routing::Slot>, Vec<usize>)> = Vec::new();
    for (i, s) in settlements.iter().enumerate() {
        let slot = scripts
            .redis
            .is_cluster()
            .then(|| cross_slot::slot_of(&s.check.key));
        match groups.iter_mut().find(|(g, _)| *g == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    let calls = groups.iter().map(|(_, members)| {
        let part: Vec<&Settlement> = members.iter().map(|&i| &settlements[i]).collect();
        async move { scripts.settle(&part, owner).await }
    });
    let mut given = vec![0; settlements.len()];
    for ((_, members), reply) in groups
        .iter()
        .zip(futures_util::future::join_all(calls).await)
    {
        for (&i, g) in members.iter().zip(reply?) {
            given[i] = g;
        }
    }
    Ok(given)
}

#[async_trait]
impl Counters for RedisStore {
    /// Walks the keys of every master with SCAN (never KEYS, which blocks Redis) and counts
    /// each batch in one pipelined round trip on its master, so listing 100,000 counters takes
    /// a few hundred round trips. A key that is not a counter (another service's, under the
    /// same prefix) counts 0 and is left out.
    async fn counters(
        &self,
        limit_of: &(dyn for<'k> Fn(&'k str) -> Limit + Send + Sync),
    ) -> Result<Vec<Counter>, StoreError> {
        let redis = &self.redis;
        let script = &self.count_script;
        redis
            .retried(redis.slow_timeout(), |mut c| async move {
                script.load_async(&mut c).await
            })
            .await?;
        let leased: std::collections::HashMap<String, u64> =
            self.leases.leased().into_iter().collect();
        let mut scan = Scan::new(redis, format!("{KEY_PREFIX}*")).await?;
        let mut out = Vec::new();
        while let Some((node, keys)) = scan.next().await? {
            if keys.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for key in &keys {
                let limit = limit_of(key.strip_prefix(KEY_PREFIX).unwrap_or(key));
                pipe.cmd("EVALSHA")
                    .arg(self.count_script.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(limit.algorithm.script_id())
                    .arg(limit.quota.limit.get())
                    .arg(limit.quota.window_ms.get());
            }
            let counts: Vec<redis::Value> = redis.pipeline_on(&node, &pipe).await?;
            for (key, count) in keys.into_iter().zip(counts) {
                let count = match count {
                    redis::Value::Int(n) if n > 0 => n as u64,
                    _ => continue,
                };
                let key = key[KEY_PREFIX.len()..].to_string();
                let leased = leased.get(&key).copied().unwrap_or(0);
                out.push(Counter { key, count, leased });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn count(&self, key: &str, limit: Limit) -> Result<Option<Counter>, StoreError> {
        let (redis, script) = (&self.redis, &self.count_script);
        let counter = format!("{KEY_PREFIX}{key}");
        let counter = &counter;
        let count: i64 = redis
            .retried(redis.slow_timeout(), |mut c| async move {
                script
                    .key(counter)
                    .arg(limit.algorithm.script_id())
                    .arg(limit.quota.limit.get())
                    .arg(limit.quota.window_ms.get())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let leased = self
            .leases
            .leased()
            .into_iter()
            .find_map(|(k, n)| (k == key).then_some(n))
            .unwrap_or(0);
        Ok((count > 0).then(|| Counter {
            key: key.to_string(),
            count: count as u64,
            leased,
        }))
    }

    async fn active_counters(&self) -> Result<u64, StoreError> {
        // Every algorithm lets a key expire once it no longer limits anything, so counting
        // keys counts live counters.
        let mut scan = Scan::new(&self.redis, format!("{KEY_PREFIX}*")).await?;
        let mut total = 0;
        while let Some((_, keys)) = scan.next().await? {
            total += keys.len() as u64;
        }
        Ok(total)
    }

    /// Deletes the key, then tells every node (this one included) to forget it as blocked.
    async fn reset(&self, key: &str) -> Result<bool, StoreError> {
        let redis = &self.redis;
        let echo = self.blocked.listen();
        let counter = format!("{KEY_PREFIX}{key}");
        let counter = &counter;
        let removed: u64 = redis
            .retried(redis.slow_timeout(), |mut c| async move {
                redis::cmd("DEL").arg(counter).query_async(&mut c).await
            })
            .await?;
        redis
            .retried(redis.slow_timeout(), |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(RESET_CHANNEL)
                    .arg(key)
                    .query_async::<u64>(&mut c)
                    .await
            })
            .await?;
        self.blocked.forget(key);
        self.blocked.await_reset(key, echo, RESET_ECHO_WAIT).await;
        Ok(removed > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.redis.ping().await?)
    }
}
