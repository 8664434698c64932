//! Redis Sentinel (contract §9): the master is found by asking the sentinels
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and confirmed with `ROLE`; a connection that loses it
//! (the master died, or was demoted and answers `READONLY`) asks again in the background, and
//! calls meanwhile wait for the new master within their own time bound.
//!
//! The credentials, database and scheme of the sentinel URLs are used for the sentinels and
//! for the master alike (one ACL user, one TLS setup).

use super::Error;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::watch;

use super::error;
use super::tls::{self, Tls};
use crate::config::RedisUrl;

/// How to find the master.
#[derive(Clone)]
pub struct Sentinels {
    inner: Arc<Inner>,
}

struct Inner {
    sentinels: Vec<redis::Client>,
    /// The first sentinel's settings, at the master's address.
    base: ConnectionInfo,
    master: String,
    tls: Tls,
    connect: Duration,
    /// Which sentinel to ask first (the one that answered last).
    next: AtomicUsize,
}

impl Sentinels {
    pub fn new(
        urls: &[RedisUrl],
        master: &str,
        tls: &Tls,
        connect: Duration,
    ) -> Result<Sentinels, Error> {
        let infos: Vec<ConnectionInfo> = urls.iter().map(tls::info).collect::<Result<_, _>>()?;
        let sentinels = infos
            .iter()
            .map(|i| tls.client(i.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Sentinels {
            inner: Arc::new(Inner {
                sentinels,
                base: infos[0].clone(),
                master: master.to_string(),
                tls: tls.clone(),
                connect,
                next: AtomicUsize::new(0),
            }),
        })
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect))
            // A master that stopped answering is lost: find it again.
            .set_response_timeout(Some(self.inner.connect))
    }

    /// A connection to the master as the sentinels name it now, checked with `ROLE`.
    async fn find(&self) -> Result<(redis::Client, MultiplexedConnection), Error> {
        let inner = &self.inner;
        let n = inner.sentinels.len();
        let first = inner.next.load(Ordering::Relaxed);
        let mut last = Error::Connection("no sentinel answered".into());
        for i in 0..n {
            let k = (first + i) % n;
            match self.ask(&inner.sentinels[k]).await {
                Ok(found) => {
                    inner.next.store(k, Ordering::Relaxed);
                    return Ok(found);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn ask(
        &self,
        sentinel: &redis::Client,
    ) -> Result<(redis::Client, MultiplexedConnection), Error> {
        let config = self.config();
        let mut s = sentinel
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(error)?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.inner.master)
            .query_async(&mut s)
            .await
            .map_err(error)?;
        let Some((host, port)) = addr else {
            return Err(Error::Reply(format!(
                "the sentinel knows no master named {:?}",
                self.inner.master
            )));
        };
        let client = self
            .inner
            .tls
            .client(tls::at(&self.inner.base, &host, port))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(error)?;
        let role: Vec<Value> = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(error)?;
        match role.first() {
            Some(Value::BulkString(r)) if r == b"master" => Ok((client, conn)),
            _ => Err(Error::Reply(format!(
                "{host}:{port}, named by a sentinel, is not a master (yet)"
            ))),
        }
    }

    /// The master's address as the first sentinel that answers names it, asked on `probe`'s
    /// connections (for the topology watch).
    pub async fn master_addr(&self, probe: &mut super::topology::Probe) -> Option<String> {
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.inner.master);
        let (host, port): (String, u16) = probe.ask(&self.inner.sentinels, &ask).await?;
        Some(format!("{host}:{port}"))
    }

    /// A client for the master now (for the subscription to resets).
    pub async fn master_client(&self) -> Result<redis::Client, Error> {
        self.find().await.map(|(client, _)| client)
    }

    /// A connection that follows the master; it finds it on first use.
    pub fn connection(&self) -> SentinelConn {
        SentinelConn {
            sentinels: self.clone(),
            state: Arc::new(State {
                current: watch::channel(None).0,
                finding: AtomicBool::new(false),
            }),
        }
    }
}

/// A connection to the master, replaced when it is lost.
#[derive(Clone)]
pub struct SentinelConn {
    sentinels: Sentinels,
    state: Arc<State>,
}

struct State {
    current: watch::Sender<Option<MultiplexedConnection>>,
    /// A search for the master is under way.
    finding: AtomicBool,
}

/// Whether an error means the master is gone from this connection.
fn lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

impl SentinelConn {
    /// The master's connection, waiting (within the caller's bound) while it is found.
    async fn master(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.state.current.borrow().clone() {
            return Ok(conn);
        }
        self.find_in_background();
        let mut rx = self.state.current.subscribe();
        let found = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| not_connected())?
            .clone();
        found.ok_or_else(not_connected)
    }

    /// Resolves once the master is found (it may take as long as the sentinels do).
    pub async fn ready(&self) -> Result<(), Error> {
        self.master().await.map(|_| ()).map_err(error)
    }

    fn find_in_background(&self) {
        if self.state.finding.swap(true, Ordering::SeqCst) {
            return;
        }
        let (sentinels, state) = (self.sentinels.clone(), self.state.clone());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                match sentinels.find().await {
                    Ok((_, conn)) => {
                        state.current.send_replace(Some(conn));
                        break;
                    }
                    Err(e) => {
                        log::debug!("looking for the master through the sentinels: {e}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
            }
            state.finding.store(false, Ordering::SeqCst);
        });
    }

    /// After an error: if the master is gone, forget it and look for the new one.
    fn after<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if lost(e) {
                self.state.current.send_replace(None);
                self.find_in_background();
            }
        }
        result
    }
}

type RedisResult<T> = Result<T, RedisError>;

fn not_connected() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no master found through the sentinels yet",
    ))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.master().await?;
            let result = conn.req_packed_command(cmd).await;
            self.after(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.master().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            self.after(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.sentinels.inner.base.redis_settings().db()
    }
}
