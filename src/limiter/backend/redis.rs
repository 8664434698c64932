//! The shared store: counters in Redis, all of a request's checks decided by one Lua script
//! call (`lua/check.lua` with the algorithm files before it), so the decision is atomic
//! across every node and costs one round trip however many rules apply.
//!
//! All Redis I/O goes through one multiplexed connection (a `ConnectionManager`, which
//! pipelines concurrent calls and reconnects by itself). Its driver tasks run on a small
//! runtime of their own, owned by the store, so the connection outlives no runtime and serves
//! the proxy and admin services alike. The connection is made lazily: the gateway starts even
//! when Redis is down, and heals when it returns.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::blocked::{BlockedKeys, RESET_CHANNEL};
use crate::config::RedisConfig;
use crate::limiter::scan::KeyScan;
use crate::limiter::{Backend, Check, Counter, Decision, Limit, Mode, StoreError};

/// The check script, embedded at build time: the algorithms, then the driver that runs them.
pub const SCRIPT: &str = concat!(
    include_str!("../../../lua/sliding_log.lua"),
    include_str!("../../../lua/gcra.lua"),
    include_str!("../../../lua/sliding_window.lua"),
    include_str!("../../../lua/check.lua"),
);

/// Integers per check in the script's reply.
const REPLY_FIELDS: usize = 5;

/// Counts one key's live entries, for listing counters: the algorithms, then the driver.
const COUNT_SCRIPT: &str = concat!(
    include_str!("../../../lua/sliding_log.lua"),
    include_str!("../../../lua/gcra.lua"),
    include_str!("../../../lua/sliding_window.lua"),
    include_str!("../../../lua/count.lua"),
);

/// How long a reset waits to hear its own message back from Redis.
const RESET_ECHO_WAIT: Duration = Duration::from_millis(200);

/// Bound on each step of a counter listing (one SCAN, or one pipelined batch of counts).
const LIST_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// Prefix of every counter key in Redis (contract §4).
pub const KEY_PREFIX: &str = "ratelimit:";

pub struct RedisStore {
    conn: ConnectionManager,
    /// Keys known to be full, answered without Redis until a slot frees.
    blocked: Arc<BlockedKeys>,
    script: Script,
    count_script: Script,
    /// Unique per process: with `seq`, makes every sorted-set member unique across nodes.
    instance: String,
    seq: AtomicU64,
    /// Keeps the connection's driver tasks alive; `None` only while dropping.
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
    /// Prepares the connection without connecting: callable with Redis down.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.expose())
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-io")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Connection(format!("cannot start the Redis runtime: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout(config.timeout)))
            // Each caller bounds its own calls: the proxy path by `timeout_ms`, the admin
            // listing by a longer step bound.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let conn = {
            let _in_runtime = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                .map_err(|e| StoreError::Connection(e.to_string()))?
        };
        let blocked = Arc::new(BlockedKeys::default());
        runtime.spawn(follow_resets(client, blocked.clone()));
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Ok(RedisStore {
            conn,
            blocked,
            script: Script::new(SCRIPT),
            count_script: Script::new(COUNT_SCRIPT),
            instance: format!("{:016x}", h.finish()),
            seq: AtomicU64::new(0),
            runtime: Some(runtime),
        })
    }

    /// The shared multiplexed connection, for other users of this Redis (the node registry).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn member(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.instance)
    }
}

/// Listens for resets on [`RESET_CHANNEL`] for as long as the store lives, reconnecting with
/// back-off. While not subscribed, nothing is remembered as blocked.
async fn follow_resets(client: redis::Client, blocked: Arc<BlockedKeys>) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(RESET_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            backoff = Duration::from_millis(50);
            blocked.set_live(true);
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                if let Ok(key) = msg.get_payload::<String>() {
                    blocked.heard_reset(&key);
                }
            }
            log::warn!("lost the Redis subscription to resets; reconnecting");
        }
        blocked.set_live(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Connecting takes a few round trips, so it gets more time than one call.
fn connect_timeout(call: Duration) -> Duration {
    (call * 4).max(Duration::from_millis(250))
}

/// One step of a listing, bounded by [`LIST_STEP_TIMEOUT`].
async fn step<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(LIST_STEP_TIMEOUT, call)
        .await
        .map_err(|_| StoreError::Timeout)?
        .map_err(store_error)
}

fn store_error(e: redis::RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Connection(e.to_string())
    } else {
        StoreError::Reply(e.to_string())
    }
}

impl RedisStore {
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

fn parse_reply(checks: &[Check], reply: &[i64]) -> Result<Vec<Option<Decision>>, StoreError> {
    if reply.len() != checks.len() * REPLY_FIELDS {
        return Err(StoreError::Reply(format!(
            "unexpected script reply {reply:?} for {} checks",
            checks.len()
        )));
    }
    let n = |v: i64| v.max(0) as u64;
    Ok(checks
        .iter()
        .zip(reply.chunks_exact(REPLY_FIELDS))
        .map(|(check, r)| {
            Some(Decision {
                allowed: r[0] == 1,
                count: n(r[1]),
                limit: check.limit.quota.limit.get(),
                remaining: n(r[2]),
                retry_after_ms: n(r[3]),
                reset_ms: n(r[4]),
            })
        })
        .collect())
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
        let mut invocation = self.script.prepare_invoke();
        for check in checks {
            invocation.key(format!("{KEY_PREFIX}{}", check.key));
        }
        invocation
            .arg(u8::from(mode.record) | (u8::from(mode.reset) << 1))
            .arg(self.member());
        for check in checks {
            invocation
                .arg(check.limit.algorithm.script_id())
                .arg(check.limit.quota.limit.get())
                .arg(check.limit.quota.window_ms.get())
                .arg(u8::from(check.shadow));
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        let decisions = parse_reply(checks, &reply)?;
        if mode.record {
            for (check, decision) in checks.iter().zip(&decisions) {
                if let Some(d) = decision.as_ref().filter(|_| !check.shadow) {
                    self.blocked.remember(&check.key, check.limit, d, sent);
                }
            }
        }
        Ok(decisions)
    }

    /// Walks the keys with SCAN (never KEYS, which blocks Redis) and counts each batch in one
    /// pipelined round trip, so listing 100,000 counters takes a few hundred round trips.
    async fn counters(
        &self,
        limit_of: &(dyn for<'k> Fn(&'k str) -> Limit + Send + Sync),
    ) -> Result<Vec<Counter>, StoreError> {
        let mut conn = self.conn.clone();
        step(self.count_script.load_async(&mut conn)).await?;
        let mut scan = KeyScan::new(format!("{KEY_PREFIX}*"), LIST_STEP_TIMEOUT);
        let mut out = Vec::new();
        while let Some(keys) = scan.next(&mut conn).await? {
            if keys.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
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
            let counts: Vec<u64> = step(pipe.query_async(&mut conn)).await?;
            for (key, count) in keys.into_iter().zip(counts) {
                if count > 0 {
                    let key = key[KEY_PREFIX.len()..].to_string();
                    out.push(Counter { key, count });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn active_counters(&self) -> Result<u64, StoreError> {
        // Every algorithm lets a key expire once it no longer limits anything, so counting
        // keys counts live counters.
        let mut conn = self.conn.clone();
        let mut scan = KeyScan::new(format!("{KEY_PREFIX}*"), LIST_STEP_TIMEOUT);
        let mut total = 0;
        while let Some(keys) = scan.next(&mut conn).await? {
            total += keys.len() as u64;
        }
        Ok(total)
    }

    /// Deletes the key and tells every node (this one included) to forget it as blocked.
    async fn reset(&self, key: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let echo = self.blocked.listen();
        let (removed, _): (u64, u64) = redis::pipe()
            .atomic()
            .del(format!("{KEY_PREFIX}{key}"))
            .publish(RESET_CHANNEL, key)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        self.blocked.forget(key);
        self.blocked.await_reset(key, echo, RESET_ECHO_WAIT).await;
        Ok(removed > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}
