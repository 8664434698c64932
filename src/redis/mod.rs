//! The one Redis layer (contract §9), used by the limiter's Redis store, the node registry and
//! the admin API: one connection type for the three topologies, one pair of timeouts, one
//! error mapping, one SCAN over every master.
//!
//! - [`Conn`] is a standalone server, a Redis Cluster or a Sentinel-managed master, behind
//!   redis-rs's `ConnectionLike`, so scripts, commands and pipelines run on any of them. Each
//!   follows failures by itself: a standalone connection reconnects, a cluster connection
//!   follows MOVED and refreshes its slots after a failover, a Sentinel connection asks the
//!   sentinels again for the master ([`sentinel`]).
//! - Connections are per thread ([`Redis::conn`]): a check runs on a connection whose driver
//!   lives on the runtime of the worker that handles the request, never crossing to another
//!   runtime's thread. Every connection multiplexes and pipelines the calls of its thread.
//! - [`tls`] builds the clients: `rediss://`, a CA file, a client certificate, `tls_insecure`,
//!   ACL users and passwords from the URLs.
//! - [`scan`] walks keys on every master; [`pubsub`] follows a channel wherever it can be
//!   heard.

pub mod pubsub;
pub mod scan;
pub mod sentinel;
pub mod tls;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use thread_local::ThreadLocal;

use crate::config::{RedisConfig, RedisTopology};
use crate::limiter::StoreError;
use sentinel::{SentinelConn, Sentinels};

/// How soon a thread tries again to connect after a failed attempt (cluster, whose first
/// connection must reach a seed node): until then its calls fail at once.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// How to reach the data, built once from the config (its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Target {
    Standalone(redis::Client),
    Cluster(Box<ClusterTarget>),
    Sentinel(Sentinels),
}

struct ClusterTarget {
    client: ClusterClient,
    /// The first seed's settings, for a client to one node (the subscription).
    seed: redis::ConnectionInfo,
    tls: tls::Tls,
}

/// A connection to whichever topology the config names.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// One master of the data: the only one, or a cluster master by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Only,
    At { host: String, port: u16 },
}

/// This thread's connection, or when it last failed to connect.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::OnceCell<Conn>,
    failed_at: Mutex<Option<Instant>>,
}

pub struct Redis {
    target: Target,
    /// A check's bound.
    timeout: Duration,
    conns: ThreadLocal<Slot>,
}

impl Redis {
    /// Prepares the clients without connecting: callable with Redis down.
    pub fn new(config: &RedisConfig) -> Result<Redis, StoreError> {
        let connect = connect_timeout(config.timeout);
        let tls = tls::Tls::load(&config.tls)?;
        let target = match &config.topology {
            RedisTopology::Standalone(url) => Target::Standalone(tls.client(tls::info(url)?)?),
            RedisTopology::Cluster(seeds) => Target::Cluster(Box::new(ClusterTarget {
                client: tls::cluster_client(seeds, &tls, connect)?,
                seed: tls::info(&seeds[0])?,
                tls,
            })),
            RedisTopology::Sentinel { sentinels, master } => {
                Target::Sentinel(Sentinels::new(sentinels, master, &tls, connect)?)
            }
        };
        Ok(Redis {
            target,
            timeout: config.timeout,
            conns: ThreadLocal::new(),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The bound on one call of a check (`redis.timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bound on calls off the request path (listings, registry, resets, health): longer
    /// than a check's, short enough that nothing stalls for long.
    pub fn slow_timeout(&self) -> Duration {
        (self.timeout * 10).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// This thread's connection, made on first use on this thread's runtime.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        let slot = self.conns.get_or_default();
        if let Some(conn) = slot.conn.get() {
            return Ok(conn.clone());
        }
        if let Some(at) = *lock(&slot.failed_at) {
            if at.elapsed() < RECONNECT_PAUSE {
                return Err(StoreError::Connection("not connected".into()));
            }
        }
        let made = slot.conn.get_or_try_init(|| self.connect()).await;
        match made {
            Ok(conn) => Ok(conn.clone()),
            Err(e) => {
                *lock(&slot.failed_at) = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        match &self.target {
            Target::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout(self.timeout)))
                    // Each caller bounds its own calls (a check by timeout_ms, the rest by
                    // slow_timeout).
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(Conn::Standalone)
                    .map_err(store_error)
            }
            Target::Cluster(cluster) => cluster
                .client
                .get_async_connection()
                .await
                .map(Conn::Cluster)
                .map_err(store_error),
            Target::Sentinel(sentinels) => Ok(Conn::Sentinel(sentinels.connection())),
        }
    }

    /// Runs a call under a bound, mapping every failure to a [`StoreError`].
    pub async fn bounded<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Runs a call off the request path on this thread's connection, within `limit`, once
    /// more if the first attempt finds the connection broken: a connection heals on the call
    /// after an outage, and a quiet thread (the admin port's, the heartbeat's) may have made
    /// none since.
    pub async fn retried<T, F, Fut>(&self, limit: Duration, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempts = async {
            let mut last = StoreError::Connection("not connected".into());
            for _ in 0..2 {
                let conn = match self.conn().await {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                match call(conn).await.map_err(store_error) {
                    Err(StoreError::Connection(e)) => last = StoreError::Connection(e),
                    other => return other,
                }
            }
            Err(last)
        };
        tokio::time::timeout(limit, attempts)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// Every master of the data, for walks that must see every key.
    pub async fn masters(&self) -> Result<Vec<Node>, StoreError> {
        if !self.is_cluster() {
            return Ok(vec![Node::Only]);
        }
        let text: String = self
            .retried(self.slow_timeout(), |mut c| async move {
                redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await
            })
            .await?;
        let masters = scan::cluster_masters(&text);
        if masters.is_empty() {
            return Err(StoreError::Reply(
                "the cluster lists no master with slots".into(),
            ));
        }
        Ok(masters)
    }

    /// Sends a command to one master (for commands that name no key, like SCAN).
    pub async fn query_on<T: redis::FromRedisValue>(
        &self,
        node: &Node,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        let value = self
            .retried(self.slow_timeout(), |mut conn| async move {
                match (node, &mut conn) {
                    (Node::At { host, port }, Conn::Cluster(c)) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        c.route_command(cmd.clone(), routing).await
                    }
                    _ => cmd.query_async::<Value>(&mut conn).await,
                }
            })
            .await?;
        redis::from_redis_value(value).map_err(|e| StoreError::Reply(e.to_string()))
    }

    /// Sends a pipeline to one master (its keys must live there).
    pub async fn pipeline_on<T: redis::FromRedisValue>(
        &self,
        node: &Node,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        let values = self
            .retried(self.slow_timeout(), |mut conn| async move {
                match (node, &mut conn) {
                    (Node::At { host, port }, Conn::Cluster(c)) => {
                        let route = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        c.route_pipeline(pipe.clone(), 0, pipe.len(), route).await
                    }
                    _ => pipe.query_async::<Vec<Value>>(&mut conn).await,
                }
            })
            .await?;
        redis::from_redis_value(Value::Array(values)).map_err(|e| StoreError::Reply(e.to_string()))
    }

    /// Whether the store can decide now: the server (or the Sentinel's master) answers; a
    /// cluster reports every slot served and every master answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let limit = self.timeout.max(Duration::from_millis(250));
        let state = self
            .retried(limit, |mut conn| async move {
                match &mut conn {
                    Conn::Cluster(c) => {
                        let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(c).await?;
                        let all = RoutingInfo::MultiNode((
                            MultipleNodeRoutingInfo::AllMasters,
                            Some(ResponsePolicy::AllSucceeded),
                        ));
                        c.route_command(redis::cmd("PING"), all).await?;
                        Ok(info.contains("cluster_state:ok"))
                    }
                    _ => redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| true),
                }
            })
            .await?;
        if state {
            Ok(())
        } else {
            Err(StoreError::Reply("cluster_state is not ok".into()))
        }
    }

    /// A client for a node that hears the cluster's (or the server's) publications: the
    /// server, the Sentinel's current master, or a cluster node (any will do: a cluster
    /// delivers every PUBLISH to every node). `attempt` rotates through the candidates.
    pub async fn subscriber(&self, attempt: usize) -> Result<redis::Client, StoreError> {
        match &self.target {
            Target::Standalone(client) => Ok(client.clone()),
            Target::Sentinel(sentinels) => sentinels.master_client().await,
            Target::Cluster(cluster) => {
                let nodes = self.masters().await?;
                match &nodes[attempt % nodes.len()] {
                    Node::At { host, port } => {
                        cluster.tls.client(tls::at(&cluster.seed, host, *port))
                    }
                    Node::Only => Err(StoreError::Reply("no cluster node".into())),
                }
            }
        }
    }
}

/// Connecting takes a few round trips, so it gets more time than one call.
pub fn connect_timeout(call: Duration) -> Duration {
    (call * 4).max(Duration::from_millis(250))
}

/// The one mapping from redis-rs errors to the store's.
pub fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        StoreError::Connection(e.to_string())
    } else {
        StoreError::Reply(e.to_string())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
