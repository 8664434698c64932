//! The upstreams of one config (contract §10), on `pingora-load-balancing`: round-robin
//! selection that skips upstreams the health checks found down and those a request already
//! failed to connect to; names resolved again every few seconds; pingora's TCP and HTTP
//! health checks, one per upstream (each has its own host name and TLS); and the `HttpPeer`
//! for a choice, with TLS and SNI, the CA, and the connect, read and write timeouts.
//!
//! A reload builds a new pool; [`watch::Watch`] runs the health checks and the re-resolution of
//! whichever pool is in force.

pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;

use crate::config::{HealthCheck as HealthConfig, ProxyConfig, Upstream, UpstreamTimeouts};
use crate::sync::lock;

/// How often upstream host names are resolved again.
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// How long one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a backend is, beside its address (kept in its `ext`).
#[derive(Debug, Clone)]
struct Target {
    /// `host:port` as configured, for logs, metrics and the health check's `Host`.
    name: Arc<str>,
    host: String,
    tls: bool,
    /// Cleartext HTTP/2 with prior knowledge (`h2://`).
    h2: bool,
}

/// Streams one HTTP/2 connection to an upstream carries at once.
const H2_STREAMS: usize = 100;

/// How a peer's protocol is chosen: `h2://` speaks HTTP/2 from the start; `https://` offers
/// h2 and HTTP/1.1 by ALPN; anything else speaks HTTP/1.1.
fn protocol(options: &mut pingora::upstreams::peer::PeerOptions, tls: bool, h2: bool) {
    use pingora::protocols::ALPN;
    options.alpn = match (tls, h2) {
        (_, true) => ALPN::H2,
        (true, false) => ALPN::H2H1,
        (false, false) => ALPN::H1,
    };
    options.max_h2_streams = H2_STREAMS;
}

/// The upstreams of one config.
pub struct Pool {
    lb: LoadBalancer<RoundRobin>,
    ca: Option<Arc<[WrappedX509]>>,
    timeouts: UpstreamTimeouts,
    pub(crate) health: Option<HealthConfig>,
    /// Whether any upstream is a name (else there is nothing to resolve again).
    pub(crate) has_names: bool,
    /// The upstreams as configured (`host:port`).
    names: Vec<String>,
}

/// The CA `https://` upstreams are checked against (else the system's roots), read once per
/// config for every pool.
pub type UpstreamCa = Option<Arc<[WrappedX509]>>;

impl Pool {
    /// `[proxy]`'s pool, and the CA every pool of the config uses.
    pub fn new(config: &ProxyConfig) -> Result<(Pool, UpstreamCa), String> {
        let ca = match &config.upstream_tls_ca_file {
            Some(path) => Some(crate::tls::upstream_ca(path)?),
            None => None,
        };
        let pool = Pool::of(
            &config.upstreams,
            ca.clone(),
            config.timeouts,
            config.health_check.as_ref(),
        )?;
        Ok((pool, ca))
    }

    /// A pool of these upstreams.
    pub fn of(
        upstreams: &[Upstream],
        ca: UpstreamCa,
        timeouts: UpstreamTimeouts,
        health: Option<&HealthConfig>,
    ) -> Result<Pool, String> {
        let mut backends = Backends::new(Box::new(Names::new(upstreams)));
        if let Some(health) = health {
            backends.set_health_check(Box::new(Checks::new(upstreams, health, ca.clone())?));
        }
        let lb = LoadBalancer::<RoundRobin>::from_backends(backends);
        // The first discovery uses the addresses resolved when the config loaded: it does
        // not wait on anything.
        match lb.update().now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("cannot set up the upstreams: {e}")),
            None => return Err("cannot set up the upstreams: discovery did not finish".into()),
        }
        Ok(Pool {
            lb,
            ca,
            timeouts,
            health: health.cloned(),
            has_names: upstreams
                .iter()
                .any(|u| u.host.parse::<std::net::IpAddr>().is_err()),
            names: upstreams.iter().map(|u| u.name.clone()).collect(),
        })
    }

    /// The next upstream in turn that is healthy and not in `tried`, as a peer to connect to.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<Box<HttpPeer>> {
        let backend = self.lb.select_with(b"", 256, |b, healthy| {
            healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
        })?;
        let addr = *backend.addr.as_inet()?;
        let target = backend.ext.get::<Target>()?;
        let sni = if target.tls {
            target.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, target.tls, sni);
        protocol(&mut peer.options, target.tls, target.h2);
        peer.options.connection_timeout = Some(self.timeouts.connect);
        peer.options.read_timeout = Some(self.timeouts.read);
        peer.options.write_timeout = Some(self.timeouts.write);
        if target.tls {
            peer.options.ca = self.ca.clone();
        }
        Some(Box::new(peer))
    }

    /// The configured name of the upstream at `addr` (for logs and metrics).
    pub fn name_of(&self, addr: &SocketAddr) -> Option<Arc<str>> {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .find(|b| b.addr.as_inet() == Some(addr))
            .and_then(|b| b.ext.get::<Target>().map(|t| t.name.clone()))
    }

    /// Each configured upstream, in config order, and whether it gets requests: one of its
    /// addresses passes its health check (any does, without health checks; none has, when its
    /// name never resolved).
    pub fn health(&self) -> Vec<(&str, bool)> {
        let backends = self.lb.backends();
        let all = backends.get_backend();
        self.names
            .iter()
            .map(|name| {
                let healthy = all.iter().any(|b| {
                    b.ext.get::<Target>().is_some_and(|t| *t.name == **name) && backends.ready(b)
                });
                (name.as_str(), healthy)
            })
            .collect()
    }

    /// Runs every upstream's check once, all at once (none without `[proxy.health_check]`).
    pub async fn check_health(&self) {
        if self.health.is_some() {
            self.lb.backends().run_health_check(true).await;
        }
    }

    pub(crate) async fn resolve_again(&self) {
        if let Err(e) = self.lb.update().await {
            log::warn!("resolving the upstreams again: {e}");
        }
    }
}

/// The upstreams' addresses: as resolved when the config loaded, then resolved again on each
/// call; a name that does not resolve keeps its last addresses.
struct Names {
    upstreams: Vec<Upstream>,
    last: Mutex<HashMap<String, Vec<SocketAddr>>>,
    first: std::sync::atomic::AtomicBool,
}

impl Names {
    fn new(upstreams: &[Upstream]) -> Names {
        Names {
            upstreams: upstreams.to_vec(),
            last: Mutex::new(
                upstreams
                    .iter()
                    .map(|u| (u.name.clone(), u.addrs.clone()))
                    .collect(),
            ),
            first: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn backends(&self, addrs: &HashMap<String, Vec<SocketAddr>>) -> BTreeSet<Backend> {
        let mut out = BTreeSet::new();
        for u in &self.upstreams {
            for addr in addrs.get(&u.name).into_iter().flatten() {
                let mut b = Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                    weight: 1,
                    ext: Default::default(),
                };
                b.ext.insert(Target {
                    name: Arc::from(u.name.as_str()),
                    host: u.host.clone(),
                    tls: u.tls,
                    h2: u.h2,
                });
                // The first upstream naming an address keeps it.
                out.insert(b);
            }
        }
        out
    }
}

#[async_trait]
impl ServiceDiscovery for Names {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if !self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            for u in &self.upstreams {
                if u.host.parse::<std::net::IpAddr>().is_ok() {
                    continue;
                }
                let lookup = tokio::net::lookup_host((u.host.as_str(), u.port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(found)) => {
                        let found: Vec<SocketAddr> = found.collect();
                        if !found.is_empty() {
                            lock(&self.last).insert(u.name.clone(), found);
                        }
                    }
                    Ok(Err(e)) => log::warn!("cannot resolve upstream {}: {e}", u.name),
                    Err(_) => log::warn!("resolving upstream {} timed out", u.name),
                }
            }
        }
        let addrs = lock(&self.last).clone();
        Ok((self.backends(&addrs), HashMap::new()))
    }
}

/// Each upstream's health check: a TCP connect, or a `GET` of the path expecting 2xx or 3xx,
/// over TLS with SNI and the CA for `https://` upstreams.
struct Checks {
    by_name: HashMap<String, Box<dyn HealthCheck + Send + Sync>>,
    /// The bound on one whole check (pingora's are per connect, read and write).
    timeout: Duration,
}

impl Checks {
    fn new(
        upstreams: &[Upstream],
        config: &HealthConfig,
        ca: Option<Arc<[WrappedX509]>>,
    ) -> Result<Checks, String> {
        let mut by_name: HashMap<String, Box<dyn HealthCheck + Send + Sync>> = HashMap::new();
        for u in upstreams {
            let check: Box<dyn HealthCheck + Send + Sync> = match &config.path {
                None => {
                    let mut tcp = TcpHealthCheck::new();
                    tcp.peer_template.options.connection_timeout = Some(config.timeout);
                    tcp
                }
                Some(path) => {
                    let mut http = HttpHealthCheck::new(&u.name, u.tls);
                    protocol(&mut http.peer_template.options, u.tls, u.h2);
                    if u.tls {
                        http.peer_template.sni = u.host.clone();
                        http.peer_template.options.ca = ca.clone();
                    }
                    http.peer_template.options.connection_timeout = Some(config.timeout);
                    http.peer_template.options.total_connection_timeout = Some(config.timeout);
                    http.peer_template.options.read_timeout = Some(config.timeout);
                    http.peer_template.options.write_timeout = Some(config.timeout);
                    let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                        .map_err(|e| format!("health check path {path:?}: {e}"))?;
                    req.insert_header("Host", u.name.as_str())
                        .and_then(|_| req.insert_header("User-Agent", "ratelimiter-health-check"))
                        .map_err(|e| format!("health check for {}: {e}", u.name))?;
                    http.req = req;
                    http.validator = Some(Box::new(success_or_redirect));
                    Box::new(http)
                }
            };
            by_name.insert(u.name.clone(), check);
        }
        Ok(Checks {
            by_name,
            timeout: config.timeout,
        })
    }
}

fn success_or_redirect(resp: &ResponseHeader) -> Result<()> {
    let status = resp.status.as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Error::e_explain(
            ErrorType::CustomCode("health check status", status),
            format!("health check answered {status}"),
        )
    }
}

#[async_trait]
impl HealthCheck for Checks {
    async fn check(&self, target: &Backend) -> Result<()> {
        let check = target
            .ext
            .get::<Target>()
            .and_then(|t| self.by_name.get(&*t.name));
        let Some(check) = check else {
            return Ok(());
        };
        // A body that trickles in would keep each read within its bound, and the whole
        // round of checks (and the watch) waiting.
        match tokio::time::timeout(self.timeout, check.check(target)).await {
            Ok(result) => result,
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!("health check took longer than {:?}", self.timeout),
            ),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let name = target
            .ext
            .get::<Target>()
            .map_or_else(|| format!("{:?}", target.addr), |t| t.name.to_string());
        if healthy {
            log::info!(
                "upstream {name} ({}) passes its health check again",
                target.addr
            );
        } else {
            log::warn!(
                "upstream {name} ({}) failed its health check: no requests until it passes",
                target.addr
            );
        }
    }

    /// One failed check takes an upstream out, one passed check brings it back.
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}
