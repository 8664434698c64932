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
//! - [`topology`] watches who serves the data (a cluster's masters, the sentinels' master)
//!   and, when that changes, has every thread replace its connection: a master that hangs
//!   rather than dies is noticed by no call, since calls to it only time out.
//! - [`tls`] builds the clients: `rediss://`, a CA file, a client certificate, `tls_insecure`,
//!   ACL users and passwords from the URLs.
//! - [`scan`] walks keys on every master; [`pubsub`] follows a channel wherever it can be
//!   heard.

pub mod pubsub;
pub mod scan;
pub mod sentinel;
pub mod tls;
pub mod topology;

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use thread_local::ThreadLocal;
use tokio::sync::watch;

use crate::config::{RedisConfig, RedisTopology};
use crate::sync::lock;
use sentinel::{SentinelConn, Sentinels};

/// Why a Redis call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No answer within the call's bound.
    Timeout,
    /// Connection refused, reset or not yet established.
    Connection(String),
    /// Redis answered with an error, or with a reply nobody here understands.
    Reply(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout => f.write_str("timed out"),
            Error::Connection(e) => write!(f, "connection: {e}"),
            Error::Reply(e) => write!(f, "reply: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// How soon a thread tries again to connect after a failed attempt: until then its calls
/// fail at once (or go to the connection it already has).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// How to reach the data, built once from the config (its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Target {
    Standalone(redis::Client),
    Cluster(Box<ClusterTarget>),
    Sentinel(Sentinels),
}

struct ClusterTarget {
    /// Makes every new connection: first from the config's seeds, after a failover from
    /// the masters then serving ([`ClusterTarget::reseed`]).
    client: std::sync::RwLock<ClusterClient>,
    /// The seeds' settings; the first one's also serve for a client to any node (the
    /// subscription, the topology watch).
    seeds: Vec<redis::ConnectionInfo>,
    tls: tls::Tls,
    connect: Duration,
    response: Duration,
}

impl ClusterTarget {
    /// New connections start from `masters` (host, port), the masters serving now. A new
    /// cluster connection waits for every seed, so a seed that hangs (a master that failed
    /// over, its machine stopped) would hold each thread's next connection for the whole
    /// connect timeout, and its requests past theirs.
    fn reseed(&self, masters: &[(String, u16)]) {
        if masters.is_empty() {
            return;
        }
        let infos = masters
            .iter()
            .map(|(host, port)| tls::at(&self.seeds[0], host, *port))
            .collect();
        match tls::cluster_client_at(infos, &self.tls, self.connect, self.response) {
            Ok(client) => *crate::sync::write(&self.client) = client,
            Err(e) => log::warn!("keeping the cluster seeds after a failover: {e}"),
        }
    }
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

/// This thread's connection and how making one goes.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Counts finished attempts to connect, for callers waiting on one.
    made: watch::Sender<u64>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Conn>,
    /// The topology epoch the connection was made in.
    epoch: u64,
    /// The thread whose runtime made the connection (and drives it). `ThreadLocal` hands the
    /// slot of a thread that has ended to the next new thread, whose calls must not depend
    /// on that ended runtime: a slot made by another thread is made again.
    owner: Option<ThreadId>,
    /// A connection is being made in the background.
    connecting: bool,
    failed_at: Option<Instant>,
}

/// One attempt to connect a slot. However it ends (made, failed, or its task dropped with
/// its runtime), the slot hears of it, so no caller waits on an attempt that will not finish.
struct Attempt {
    slot: Arc<Slot>,
    owner: ThreadId,
    finished: bool,
}

impl Attempt {
    fn finish(mut self, made: Result<Conn, Error>, epoch: u64) {
        let mut state = lock(&self.slot.state);
        match made {
            Ok(conn) => {
                state.conn = Some(conn);
                state.epoch = epoch;
                state.owner = Some(self.owner);
                state.failed_at = None;
            }
            Err(e) => {
                log::debug!("cannot connect to Redis: {e}");
                state.failed_at = Some(Instant::now());
            }
        }
        drop(state);
        self.finished = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut state = lock(&self.slot.state);
        state.connecting = false;
        if !self.finished {
            state.failed_at = Some(Instant::now());
        }
        drop(state);
        self.slot.made.send_modify(|n| *n += 1);
    }
}

pub struct Redis {
    target: Target,
    /// A check's bound.
    timeout: Duration,
    conns: ThreadLocal<Arc<Slot>>,
    /// Bumped by [`topology`] when who serves the data changes: connections made before are
    /// replaced.
    epoch: watch::Sender<u64>,
}

impl Redis {
    /// Prepares the clients without connecting: callable with Redis down.
    pub fn new(config: &RedisConfig) -> Result<Redis, Error> {
        let connect = connect_timeout(config.timeout);
        let tls = tls::Tls::load(&config.tls)?;
        let target = match &config.topology {
            RedisTopology::Standalone(url) => Target::Standalone(tls.client(tls::info(url)?)?),
            RedisTopology::Cluster(seeds) => {
                let response = slow_timeout(config.timeout);
                Target::Cluster(Box::new(ClusterTarget {
                    client: std::sync::RwLock::new(tls::cluster_client(
                        seeds, &tls, connect, response,
                    )?),
                    seeds: seeds.iter().map(tls::info).collect::<Result<_, _>>()?,
                    tls,
                    connect,
                    response,
                }))
            }
            RedisTopology::Sentinel { sentinels, master } => {
                Target::Sentinel(Sentinels::new(sentinels, master, &tls, connect)?)
            }
        };
        Ok(Redis {
            target,
            timeout: config.timeout,
            conns: ThreadLocal::new(),
            epoch: watch::channel(0).0,
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
        slow_timeout(self.timeout)
    }

    /// This thread's connection, made on first use on this thread's runtime (so its driver
    /// lives there too). After a topology change the old connection may point at a master
    /// that hangs, so the successor is waited for (within the caller's own bound) and the old
    /// one is used only if making the successor fails.
    pub async fn conn(&self) -> Result<Conn, Error> {
        let slot = self.conns.get_or_default().clone();
        let epoch = *self.epoch.borrow();
        let mut made = {
            let mut state = lock(&slot.state);
            let stale = state.conn.is_none()
                || state.epoch < epoch
                || state.owner != Some(std::thread::current().id());
            let paused = state
                .failed_at
                .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE);
            if stale && !state.connecting && !paused {
                state.connecting = true;
                self.connect_in_background(slot.clone(), epoch);
            }
            match &state.conn {
                Some(conn) if !stale || !state.connecting => return Ok(conn.clone()),
                None if !state.connecting => return Err(Error::Connection("not connected".into())),
                _ => slot.made.subscribe(),
            }
        };
        let _ = made.changed().await;
        let state = lock(&slot.state);
        state
            .conn
            .clone()
            .ok_or_else(|| Error::Connection("not connected".into()))
    }

    /// Makes a connection on this thread's runtime and puts it in `slot`.
    fn connect_in_background(&self, slot: Arc<Slot>, epoch: u64) {
        let connecting = self.connector();
        let attempt = Attempt {
            slot,
            owner: std::thread::current().id(),
            finished: false,
        };
        tokio::spawn(async move {
            let made = connecting.await;
            attempt.finish(made, epoch);
        });
    }

    /// Connecting, as a future that owns what it needs.
    fn connector(&self) -> BoxFuture<'static, Result<Conn, Error>> {
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
                let client = client.clone();
                Box::pin(async move {
                    ConnectionManager::new_lazy_with_config(client, config)
                        .map(Conn::Standalone)
                        .map_err(error)
                })
            }
            Target::Cluster(cluster) => {
                let client = crate::sync::read(&cluster.client).clone();
                Box::pin(async move {
                    client
                        .get_async_connection()
                        .await
                        .map(Conn::Cluster)
                        .map_err(error)
                })
            }
            Target::Sentinel(sentinels) => {
                let conn = sentinels.connection();
                Box::pin(async move {
                    conn.ready().await?;
                    Ok(Conn::Sentinel(conn))
                })
            }
        }
    }

    /// Has every thread replace its connection (who serves the data changed).
    pub fn topology_changed(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Resolves when the topology changes after this call.
    pub fn on_topology_change(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut epoch = self.epoch.subscribe();
        async move {
            let _ = epoch.changed().await;
        }
    }

    /// Runs a call on this thread's connection within `limit`, once more if the first
    /// attempt finds the connection broken: a connection heals on the call after an outage,
    /// and a quiet thread (the admin port's, the heartbeat's) may have made none since.
    pub async fn retried<T, F, Fut>(&self, limit: Duration, call: F) -> Result<T, Error>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(limit, self.attempts(call))
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// Runs a call on this thread's connection within `limit`, with no second attempt: for a
    /// call that must not run twice, since a broken connection may have lost the reply of a
    /// call that ran (giving back a lease's slots twice would free slots still in use).
    pub async fn once<T, F, Fut>(&self, limit: Duration, call: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.conn().await?;
            call(conn).await.map_err(error)
        };
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// As [`Redis::retried`], with no bound of its own: for a caller that bounds the whole
    /// call already (a check, under the limiter's `timeout_ms`), so no second timer is set.
    pub async fn attempts<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut last = None;
        for _ in 0..2 {
            let conn = match self.conn().await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match call(conn).await.map_err(error) {
                Err(Error::Connection(e)) => last = Some(Error::Connection(e)),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::Connection("not connected".into())))
    }

    /// Every master of the data, for walks that must see every key.
    pub async fn masters(&self) -> Result<Vec<Node>, Error> {
        if !self.is_cluster() {
            return Ok(vec![Node::Only]);
        }
        let text: String = self
            .retried(self.slow_timeout(), |mut c| async move {
                redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await
            })
            .await?;
        let masters = topology::cluster_masters(&text);
        if masters.is_empty() {
            return Err(Error::Reply(
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
    ) -> Result<T, Error> {
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
        redis::from_redis_value(value).map_err(|e| Error::Reply(e.to_string()))
    }

    /// Sends a pipeline to one master (its keys must live there).
    pub async fn pipeline_on<T: redis::FromRedisValue>(
        &self,
        node: &Node,
        pipe: &Pipeline,
    ) -> Result<T, Error> {
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
        redis::from_redis_value(Value::Array(values)).map_err(|e| Error::Reply(e.to_string()))
    }

    /// Whether the store can decide now: the server (or the Sentinel's master) answers; a
    /// cluster reports every slot served and every master answers.
    pub async fn ping(&self) -> Result<(), Error> {
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
            Err(Error::Reply("cluster_state is not ok".into()))
        }
    }

    /// A client for a node that hears the cluster's (or the server's) publications: the
    /// server, the Sentinel's current master, or a cluster node (any will do: a cluster
    /// delivers every PUBLISH to every node). `attempt` rotates through the candidates.
    pub async fn subscriber(&self, attempt: usize) -> Result<redis::Client, Error> {
        match &self.target {
            Target::Standalone(client) => Ok(client.clone()),
            Target::Sentinel(sentinels) => sentinels.master_client().await,
            Target::Cluster(cluster) => {
                let nodes = self.masters().await?;
                match &nodes[attempt % nodes.len()] {
                    Node::At { host, port } => {
                        cluster.tls.client(tls::at(&cluster.seeds[0], host, *port))
                    }
                    Node::Only => Err(Error::Reply("no cluster node".into())),
                }
            }
        }
    }
}

/// The bound on calls off the request path, for a check bound of `timeout`.
fn slow_timeout(timeout: Duration) -> Duration {
    (timeout * 10).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Connecting takes a few round trips, so it gets more time than one call.
pub fn connect_timeout(call: Duration) -> Duration {
    (call * 4).max(Duration::from_millis(250))
}

/// The one mapping from redis-rs errors to the store's.
pub fn error(e: RedisError) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        Error::Connection(e.to_string())
    } else {
        Error::Reply(e.to_string())
    }
}
