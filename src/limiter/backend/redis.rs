//! The shared store: counters in Redis, all of a request's checks decided by one Lua script
//! call (`lua/check.lua` with the algorithm files before it), so the decision is atomic
//! across every node and costs one round trip however many rules apply.
//!
//! Every call goes through the Redis layer ([`crate::redis`]): the calling thread's own
//! connection, to a standalone server, a Sentinel's master or a Redis Cluster. On a cluster a
//! request's keys may live on several slots, and one script can only touch one. Such a request
//! is first looked at on every slot at once, writing nothing: if a slot refuses it, it is
//! refused and holds no place anywhere. Otherwise every slot records it, all at once, and if a
//! slot refuses now (another request took the last place in between), the others' records are
//! taken back right after (`lua/release.lua`). Every limit holds throughout, since each slot's
//! call enforces its own atomically.
//!
//! The subscription to resets and the watch on the topology run on a small runtime of their
//! own, owned by the store.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::cluster_routing::Slot;
use redis::Script;

use super::blocked::{BlockedKeys, RESET_CHANNEL};
use crate::config::RedisConfig;
use crate::limiter::{Backend, Check, Counter, Decision, Limit, Mode, StoreError};
use crate::redis::scan::Scan;
use crate::redis::{pubsub, topology, Redis};

/// The algorithm files every script starts with.
macro_rules! with_algorithms {
    ($driver:literal) => {
        concat!(
            include_str!("../../../lua/sliding_log.lua"),
            include_str!("../../../lua/gcra.lua"),
            include_str!("../../../lua/sliding_window.lua"),
            include_str!($driver),
        )
    };
}

/// The check script, embedded at build time: the algorithms, then the driver that runs them.
pub const SCRIPT: &str = with_algorithms!("../../../lua/check.lua");

/// Counts one key's live entries, for listing counters.
const COUNT_SCRIPT: &str = with_algorithms!("../../../lua/count.lua");

/// Takes back a request's records on the slots that allowed it, when another refused it.
const RELEASE_SCRIPT: &str = with_algorithms!("../../../lua/release.lua");

/// Integers per check in the check script's reply.
const REPLY_FIELDS: usize = 6;

/// How long a reset waits to hear its own message back from Redis.
const RESET_ECHO_WAIT: Duration = Duration::from_millis(200);

/// Prefix of every counter key in Redis (contract §4).
pub const KEY_PREFIX: &str = "ratelimit:";

pub struct RedisStore {
    redis: Arc<Redis>,
    /// Keys known to be full, answered without Redis until a slot frees.
    blocked: Arc<BlockedKeys>,
    script: Script,
    count_script: Script,
    release_script: Script,
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
        Ok(RedisStore {
            redis,
            blocked,
            script: Script::new(SCRIPT),
            count_script: Script::new(COUNT_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
            instance: format!("{:016x}", h.finish()),
            seq: AtomicU64::new(0),
            runtime: Some(runtime),
        })
    }

    /// The Redis layer, for the other users of this Redis (the node registry).
    pub fn redis(&self) -> Arc<Redis> {
        self.redis.clone()
    }

    fn member(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.instance)
    }

    /// A request remembered blocked: the decisions known without asking Redis, when at least
    /// one enforced check is a key known to be full.
    fn remembered_block(&self, checks: &[Check], now: Instant) -> Option<Vec<Option<Decision>>> {
        let mut known: Option<Vec<Option<Decision>>> = None;
        for (i, check) in checks.iter().enumerate() {
            if check.shadow {
                continue;
            }
            if let Some(d) = self.blocked.get(&check.key, check.limit, now) {
                known.get_or_insert_with(|| vec![None; checks.len()])[i] = Some(d);
            }
        }
        known
    }
}

/// One script call's answer for its checks: the decisions, and each check's mark for a
/// release.
struct Reply {
    decisions: Vec<Decision>,
    marks: Vec<i64>,
}

fn parse_reply(checks: &[&Check], reply: &[i64]) -> Result<Reply, StoreError> {
    if reply.len() != checks.len() * REPLY_FIELDS {
        return Err(StoreError::Reply(format!(
            "unexpected script reply {reply:?} for {} checks",
            checks.len()
        )));
    }
    let n = |v: i64| v.max(0) as u64;
    let mut out = Reply {
        decisions: Vec::with_capacity(checks.len()),
        marks: Vec::with_capacity(checks.len()),
    };
    for (check, r) in checks.iter().zip(reply.chunks_exact(REPLY_FIELDS)) {
        out.decisions.push(Decision {
            allowed: r[0] == 1,
            count: n(r[1]),
            limit: check.limit.quota.limit.get(),
            remaining: n(r[2]),
            retry_after_ms: n(r[3]),
            reset_ms: n(r[4]),
        });
        out.marks.push(r[5]);
    }
    Ok(out)
}

impl RedisStore {
    /// One script call over these checks (all in one slot on a cluster).
    async fn call(&self, checks: &[&Check], mode: Mode, member: &str) -> Result<Reply, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for check in checks {
            invocation.key(format!("{KEY_PREFIX}{}", check.key));
        }
        invocation
            .arg(u8::from(mode.record) | (u8::from(mode.reset) << 1))
            .arg(member);
        for check in checks {
            invocation
                .arg(check.limit.algorithm.script_id())
                .arg(check.limit.quota.limit.get())
                .arg(check.limit.quota.window_ms.get())
                .arg(u8::from(check.shadow));
        }
        // Once more on a broken connection: after an outage each thread's connection heals on
        // its next call, and this way that call is not lost. (A script that ran before the
        // connection broke may then count twice: never more than the limit, only less.)
        let invocation = &invocation;
        let reply: Vec<i64> = self
            .redis
            .retried(self.redis.timeout(), |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        parse_reply(checks, &reply)
    }

    /// Takes back the records of checks that allowed a request another slot refused, and
    /// tells every node to forget those keys as blocked (a request racing this one may have
    /// been refused by the record being taken back).
    async fn release(
        &self,
        checks: &[&Check],
        marks: &[i64],
        member: &str,
    ) -> Result<(), StoreError> {
        let mut invocation = self.release_script.prepare_invoke();
        for check in checks {
            invocation.key(format!("{KEY_PREFIX}{}", check.key));
        }
        invocation.arg(member).arg(RESET_CHANNEL).arg(KEY_PREFIX);
        for (check, mark) in checks.iter().zip(marks) {
            invocation
                .arg(check.limit.algorithm.script_id())
                .arg(check.limit.quota.limit.get())
                .arg(check.limit.quota.window_ms.get())
                .arg(mark);
        }
        let invocation = &invocation;
        self.redis
            .retried(self.redis.timeout(), |mut conn| async move {
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await
            .map(|_| ())
    }

    /// Each slot's checks in their own call, all at once: every check's decision (`None`
    /// where its slot's call failed), its mark for a release, and the last failure.
    async fn call_slots(
        &self,
        checks: &[Check],
        groups: &[Vec<usize>],
        mode: Mode,
        member: &str,
    ) -> (Vec<Option<Decision>>, Vec<i64>, Option<StoreError>) {
        let calls = groups.iter().map(|group| {
            let part: Vec<&Check> = group.iter().map(|&i| &checks[i]).collect();
            async move { self.call(&part, mode, member).await }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        let mut marks = vec![0; checks.len()];
        let mut failure = None;
        for (group, reply) in groups.iter().zip(replies) {
            match reply {
                Ok(reply) => {
                    for (k, &i) in group.iter().enumerate() {
                        decisions[i] = Some(reply.decisions[k]);
                        marks[i] = reply.marks[k];
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        (decisions, marks, failure)
    }

    /// A request whose keys live on several cluster slots. Recording, it is looked at first
    /// without writing: a request one slot refuses never holds a place on another, where it
    /// could turn away a request with room and leave that key remembered as full. Then each
    /// slot records it; if one refuses now, the slots that recorded take it back.
    async fn decide_across_slots(
        &self,
        checks: &[Check],
        groups: Vec<Vec<usize>>,
        mode: Mode,
        member: &str,
    ) -> Result<Vec<Decision>, StoreError> {
        let refused = |decisions: &[Option<Decision>]| {
            checks
                .iter()
                .zip(decisions)
                .any(|(c, d)| !c.shadow && d.is_some_and(|d| !d.allowed))
        };
        if mode.record {
            let look = Mode {
                record: false,
                ..mode
            };
            let (decisions, _, failure) = self.call_slots(checks, &groups, look, member).await;
            if let Some(e) = failure {
                return Err(e);
            }
            if refused(&decisions) {
                return Ok(decisions.into_iter().flatten().collect());
            }
        }
        let (mut decisions, marks, failure) = self.call_slots(checks, &groups, mode, member).await;
        if mode.record && (refused(&decisions) || failure.is_some()) {
            // Every group that answered without an enforced refusal recorded its checks with
            // room: take those back.
            let mut back: Vec<&Check> = Vec::new();
            let mut back_marks = Vec::new();
            let mut back_idx = Vec::new();
            for group in &groups {
                let answered = group.iter().all(|&i| decisions[i].is_some());
                let group_refused = group
                    .iter()
                    .any(|&i| !checks[i].shadow && decisions[i].is_some_and(|d| !d.allowed));
                if !answered || group_refused {
                    continue;
                }
                for &i in group {
                    if decisions[i].is_some_and(|d| d.allowed) {
                        back.push(&checks[i]);
                        back_marks.push(marks[i]);
                        back_idx.push(i);
                    }
                }
            }
            // One release call per slot, as the check calls were.
            let mut by_slot: Vec<(Slot, Vec<usize>)> = Vec::new();
            for (k, check) in back.iter().enumerate() {
                let slot = slot_of(&check.key);
                match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, ks)) => ks.push(k),
                    None => by_slot.push((slot, vec![k])),
                }
            }
            let releases = by_slot.iter().map(|(_, ks)| {
                let part: Vec<&Check> = ks.iter().map(|&k| back[k]).collect();
                let part_marks: Vec<i64> = ks.iter().map(|&k| back_marks[k]).collect();
                async move { self.release(&part, &part_marks, member).await }
            });
            for result in futures_util::future::join_all(releases).await {
                if let Err(e) = result {
                    // The record stays: the limit holds, the client is counted once too often.
                    log::warn!("could not take back a refused request's record: {e}");
                }
            }
            for &i in &back_idx {
                if let Some(d) = decisions[i].as_mut() {
                    d.count = d.count.saturating_sub(1);
                    d.remaining += 1;
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(decisions.into_iter().flatten().collect())
    }
}

/// A counter key's cluster slot.
fn slot_of(key: &str) -> Slot {
    Slot::for_key(format!("{KEY_PREFIX}{key}"))
}

/// Checks grouped by cluster slot, in the order their slots first appear.
fn by_slot(checks: &[Check]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let slot = slot_of(&check.key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

#[async_trait]
impl Backend for RedisStore {
    async fn decide(
        &self,
        checks: &[Check],
        mode: Mode,
    ) -> Result<Vec<Option<Decision>>, StoreError> {
        let sent = Instant::now();
        if mode.record {
            if let Some(known) = self.remembered_block(checks, sent) {
                return Ok(known);
            }
        }
        let member = self.member();
        let groups = if self.redis.is_cluster() && checks.len() > 1 {
            by_slot(checks)
        } else {
            Vec::new()
        };
        let decisions = if groups.len() > 1 {
            self.decide_across_slots(checks, groups, mode, &member)
                .await?
        } else {
            let all: Vec<&Check> = checks.iter().collect();
            self.call(&all, mode, &member).await?.decisions
        };
        if mode.record {
            for (check, d) in checks.iter().zip(&decisions) {
                if !check.shadow {
                    self.blocked.remember(&check.key, check.limit, d, sent);
                }
            }
        }
        Ok(decisions.into_iter().map(Some).collect())
    }

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
                out.push(Counter { key, count });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
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
        self.redis.ping().await
    }
}
