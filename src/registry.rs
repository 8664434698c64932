//! The node registry (contract §4): each node keeps a Redis hash `ratelimiter:nodes:<id>`
//! (`address`, `registered_at`, and `instance`, which tells this process's entry from its
//! successor's after an upgrade) alive with a TTL, refreshed every heartbeat and deleted on
//! shutdown, so any node can list every live node sharing its Redis. A node killed without
//! warning disappears when its TTL runs out. With the embedded store the registry is the
//! node itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::NodeConfig;
use crate::limiter::{Counters, StoreError};
use crate::metrics::Metrics;
use crate::redis_conn::scan::Scan;
use crate::redis_conn::Redis;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

pub const KEY_PREFIX: &str = "ratelimiter:nodes:";

/// The node's registry settings that a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    address: String,
    ttl: Duration,
    heartbeat: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub registered_at: String,
}

pub struct Registry {
    /// The id is fixed for the life of the process; the rest follows reloads.
    me: NodeInfo,
    /// What a reload may change: the published address, the TTL and the heartbeat.
    settings: RwLock<Settings>,
    /// `None`: the embedded store, a registry of one.
    redis: Option<Arc<Redis>>,
    /// Set once the node unregisters, so a late heartbeat cannot bring it back.
    leaving: AtomicBool,
    /// This process, among the processes that have had this node's id.
    instance: String,
}

/// Deletes a node's entry only while it is still the given process's.
const DELETE_IF_OURS: &str = r#"
if redis.call('HMGET', KEYS[1], 'instance')[1] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl Registry {
    pub fn new(node: &NodeConfig, redis: Option<Arc<Redis>>) -> Self {
        Registry {
            me: NodeInfo {
                id: node.id.clone(),
                address: node.address.clone(),
                registered_at: iso8601(SystemTime::now()),
            },
            settings: RwLock::new(Settings {
                address: node.address.clone(),
                ttl: node.ttl,
                heartbeat: node.heartbeat,
            }),
            redis,
            leaving: AtomicBool::new(false),
            instance: instance(),
        }
    }

    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    fn settings(&self) -> Settings {
        crate::sync::read(&self.settings).clone()
    }

    /// Takes a reloaded `[node]` (its id stays): the next heartbeat publishes the new address
    /// and TTL, and the one after waits the new interval.
    pub fn update(&self, node: &NodeConfig) {
        *crate::sync::write(&self.settings) = Settings {
            address: node.address.clone(),
            ttl: node.ttl,
            heartbeat: node.heartbeat,
        };
    }

    /// How long the heartbeat waits between beats.
    pub fn heartbeat(&self) -> Duration {
        self.settings().heartbeat
    }

    fn key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.me.id)
    }

    /// Writes (or re-writes, after a Redis restart) this node's entry and its TTL, atomically.
    pub async fn register(&self) -> Result<(), StoreError> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        if self.leaving.load(Ordering::SeqCst) {
            return Ok(());
        }
        let settings = self.settings();
        let mut pipe = redis::pipe();
        // HSET with several fields, not the deprecated HMSET: one command less for the ACL.
        pipe.atomic()
            .cmd("HSET")
            .arg(self.key())
            .arg("address")
            .arg(&settings.address)
            .arg("registered_at")
            .arg(&self.me.registered_at)
            .arg("instance")
            .arg(&self.instance)
            .ignore()
            .expire(self.key(), settings.ttl.as_secs() as i64)
            .ignore();
        let pipe = &pipe;
        redis
            .retried(redis.slow_timeout(), |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
            .map_err(StoreError::from)
    }

    /// Stops further heartbeats and leaves the entry to the process that took over the
    /// listening sockets, which has this node's id.
    pub fn hand_over(&self) {
        self.leaving.store(true, Ordering::SeqCst);
    }

    /// After a failed upgrade: this process keeps the entry alive again.
    pub fn resume(&self) {
        self.leaving.store(false, Ordering::SeqCst);
    }

    /// At the end of a hand-over: deletes the entry unless the successor has made it its own
    /// (when it runs under another id, or failed before its first heartbeat, the entry
    /// would otherwise outlive this process by its TTL).
    pub async fn unregister_unless_taken_over(&self) -> Result<(), StoreError> {
        self.leaving.store(true, Ordering::SeqCst);
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let script = redis::Script::new(DELETE_IF_OURS);
        let (key, instance) = (self.key(), &self.instance);
        let (script, key) = (&script, &key);
        redis
            .retried(redis.slow_timeout(), |mut c| async move {
                script
                    .key(key)
                    .arg(instance)
                    .invoke_async::<()>(&mut c)
                    .await
            })
            .await
            .map_err(StoreError::from)
    }

    /// Deletes this node's entry (best effort) and stops further heartbeats.
    pub async fn unregister(&self) -> Result<(), StoreError> {
        self.leaving.store(true, Ordering::SeqCst);
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let key = self.key();
        let key = &key;
        redis
            .retried(redis.slow_timeout(), |mut c| async move {
                redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await
            })
            .await
            .map_err(StoreError::from)
    }

    /// Every live node sharing this Redis, sorted by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let Some(redis) = &self.redis else {
            return Ok(vec![NodeInfo {
                address: self.settings().address,
                ..self.me.clone()
            }]);
        };
        // Each master's entries, read from that master in one pipelined round trip.
        let mut found: Vec<(String, std::collections::HashMap<String, String>)> = Vec::new();
        let mut scan = Scan::new(redis, format!("{KEY_PREFIX}*")).await?;
        while let Some((node, keys)) = scan.next().await? {
            if keys.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.hgetall(key);
            }
            let hashes: Vec<std::collections::HashMap<String, String>> =
                redis.pipeline_on(&node, &pipe).await?;
            found.extend(keys.into_iter().zip(hashes));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.dedup_by(|a, b| a.0 == b.0);
        Ok(found
            .into_iter()
            // A key that expired between SCAN and HGETALL comes back empty: not live.
            .filter(|(_, h)| !h.is_empty())
            .map(
                |(key, mut h): (String, std::collections::HashMap<String, String>)| NodeInfo {
                    id: key[KEY_PREFIX.len()..].to_string(),
                    address: h.remove("address").unwrap_or_default(),
                    registered_at: h.remove("registered_at").unwrap_or_default(),
                },
            )
            .collect())
    }
}

/// The heartbeat: registers at start, refreshes every `heartbeat_seconds`, and refreshes the
/// active-counter gauge on the same beat. Stops on shutdown.
pub struct Heartbeat {
    pub registry: Arc<Registry>,
    pub counters: Arc<dyn Counters>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Heartbeat {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut was_failing = false;
        loop {
            match self.registry.register().await {
                Ok(()) if was_failing => {
                    log::info!("node {} registered again", self.registry.me.id);
                    was_failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !was_failing {
                        log::warn!("node registry: cannot register: {e}; retrying every heartbeat");
                    }
                    was_failing = true;
                }
            }
            if let Ok(n) = self.counters.active_counters().await {
                self.metrics.active_counters.set(n as i64);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.registry.heartbeat()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Tells this process from any other that has had the node's id: its pid and start time.
fn instance() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// `2026-11-22T10:00:00Z`: ISO 8601 (RFC 3339) in UTC, to the second.
pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn formats_utc_iso8601() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(iso8601(at(0)), "1970-01-01T00:00:00Z");
        // `date -u -d @1795341600 +%FT%TZ`
        assert_eq!(iso8601(at(1_795_341_600)), "2026-11-22T10:00:00Z");
        assert_eq!(iso8601(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(at(4_107_542_399)), "2100-02-28T23:59:59Z");
    }
}
