//! Configuration: the TOML file (contract §2), checked once into types that cannot hold a bad
//! value. Nothing outside this module sees the raw document.
//!
//! - [`document`]: the format-neutral tree every section is validated on (a TOML file or a
//!   JSON document become it), each value with where it was written;
//! - `reader`: walks that tree section by section, recording unknown keys and wrong types;
//! - `validate`: turns each section into its validated type and applies `RATELIMITER_*`
//!   environment overrides; `proxy`, `redis`, `log` do their sections;
//! - `rules`: the `[[rules]]` tables, into [`crate::rules::Rule`]s; `keys`: what keys are read
//!   from (`key`, `missing`, overrides, `[jwt]`), for `[limits]` and rules alike;
//! - `response`: `[response]`, the headers added to the answers the gateway makes itself;
//! - `error`: file:line:column errors, all of them at once.

mod ban;
mod calendar;
mod cost;
pub mod document;
mod error;
mod keys;
mod log;
mod pem;
mod proxy;
mod reader;
mod redis;
mod response;
mod routes;
mod rules;
mod validate;
mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors, Origin};
use ipnet::IpNet;
pub use keys::override_entry;
pub use routes::RouteConfig;
pub use validate::MAX_SOCKET_PATH;

use crate::headers::HeaderStyle;
use crate::key::jwt::Verifier;
use crate::key::{KeySource, Missing};
use crate::limiter::{Algorithm, Limit, Quota};
use crate::rules::{Rule, RuleSet};

/// Longest window: a year, long enough for any quota, short enough that ms arithmetic cannot
/// overflow.
pub const MAX_WINDOW_MS: i64 = 365 * 24 * 3600 * 1000;

/// How errors name the built-in defaults (no `-c`).
pub const DEFAULTS_NAME: &str = "<defaults>";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub node: NodeConfig,
    /// `None`: the embedded in-memory store (single node).
    pub redis: Option<RedisConfig>,
    pub limits: LimitsConfig,
    /// The named rules (`[[rules]]`), in file order.
    pub rules: Vec<Rule>,
    /// The routes (`[[routes]]`), in file order: the first that matches a request takes it.
    pub routes: Vec<RouteConfig>,
    /// Verifies bearer tokens for `jwt:` key parts (`[jwt]`, its key file read).
    pub jwt: Option<std::sync::Arc<Verifier>>,
    pub privacy: PrivacyConfig,
    pub headers: HeadersConfig,
    pub response: ResponseConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// `[log] level`: the gateway's own log level, unless `RUST_LOG` is set. Apart from
    /// [`LogConfig`] because it follows a reload, which the access log does not.
    pub log_level: ::log::LevelFilter,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// One work-stealing runtime (pingora's default) or one single-threaded runtime per
    /// thread, each serving the connections it accepted.
    pub work_stealing: bool,
    /// How long SIGTERM waits for in-flight requests before the process exits.
    pub grace_period: Duration,
    /// Where the process writes its id, for service managers and scripts.
    pub pid_file: Option<PathBuf>,
    /// Where a new process started with `-u` takes over the listening sockets; `None`: a
    /// path in the temporary directory named after `proxy.listen`.
    pub upgrade_socket: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// An HTTPS listener beside `listen` (HTTP/1.1 and HTTP/2), sharing its limits.
    pub tls: Option<TlsListener>,
    pub upstreams: Vec<Upstream>,
    /// The CA that `https://` upstreams' certificates are checked against (else the system's
    /// roots).
    pub upstream_tls_ca_file: Option<PathBuf>,
    pub timeouts: UpstreamTimeouts,
    /// Idle client connections are closed after this; zero: no keep-alive.
    pub keepalive_timeout: Duration,
    /// How many other upstreams a request that could not be sent (connect failure) tries.
    pub retries: usize,
    /// Active health checks; `None`: every upstream is always tried.
    pub health_check: Option<HealthCheck>,
    /// When set, allowed requests are answered by the gateway itself (Envoy's
    /// `direct_response`, nginx's `return`), and `upstreams` is not used.
    pub direct_response: Option<DirectResponse>,
    /// What an escaped slash and a `;` in a path mean.
    pub paths: crate::request::PathPolicy,
    /// The hosts served; empty: any. Other hosts get 421.
    pub allowed_hosts: Vec<crate::request::HostMatch>,
    /// What one client connection may hold, on both listeners.
    pub clients: ClientLimits,
    /// The largest request body, in bytes; a larger one gets 413. 0: any size.
    pub max_body_bytes: u64,
    /// Cleartext HTTP/2 (prior knowledge) on the plain listener, beside HTTP/1 (contract
    /// §18): for gRPC clients without TLS.
    pub h2c: bool,
    /// Whether responses may be batched into fewer writes to the client (the default); off,
    /// response bytes go to the client as they arrive (contract §18).
    pub buffering: bool,
}

/// Bounds on client connections, applied where connections are accepted and their request
/// headers read (restart-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The largest request header section; a larger one gets 431.
    pub max_header_bytes: usize,
    /// How long a request header section (and a TLS handshake) may take as a whole; a slower
    /// one gets 408.
    pub header_timeout: Duration,
    /// Client connections held at once over both proxy listeners; past it, new ones wait in
    /// the kernel's accept queue.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One upstream server, as written: `host:port`, `http://host[:port]`, `https://host[:port]`
/// or `h2://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`, without the scheme.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// TLS to the upstream, verified, with the host name as SNI; HTTP/2 or HTTP/1.1 by
    /// ALPN.
    pub tls: bool,
    /// `h2://`: cleartext HTTP/2 with prior knowledge (a gRPC service, say).
    pub h2: bool,
    /// The addresses the host resolved to when the config loaded (names are resolved again
    /// while the gateway runs).
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// No byte from the upstream for this long: 504.
    pub read: Duration,
    pub write: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    /// `GET` this path expecting 2xx or 3xx; `None`: a TCP connect check.
    pub path: Option<String>,
    pub timeout: Duration,
}

/// `[log]`: the access log and the format of every log line (what the access log is opened
/// with; a restart changes it). `[log] level` is [`Config::log_level`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub access: AccessLog,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token required by mutating admin endpoints (and by reads with
    /// [`AdminRead::Token`]).
    pub token: Option<String>,
    /// Whether `/api/*` reads need `token` too.
    pub read: AdminRead,
    /// When set, `GET /metrics` needs this bearer token (a scraper's, apart from the admin
    /// token, so the one it holds can read nothing else).
    pub metrics_token: Option<String>,
    /// Named admin tokens (`admin.tokens = { ops = "..." }`), each as good as `token`; the
    /// name is the actor the audit log records (contract §15).
    pub tokens: Vec<(String, String)>,
}

impl AdminConfig {
    /// The actor name of `admin.token` in the audit log.
    pub const TOKEN_ACTOR: &'static str = "admin";

    /// Whether any admin token is set (`token` or `tokens`): then changes need one.
    pub fn has_token(&self) -> bool {
        self.token.is_some() || !self.tokens.is_empty()
    }

    /// Every admin token with its actor name: `token` as `admin`, then the named ones.
    pub fn named_tokens(&self) -> impl Iterator<Item = (&str, &str)> {
        self.token
            .as_deref()
            .map(|t| (Self::TOKEN_ACTOR, t))
            .into_iter()
            .chain(self.tokens.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }
}

/// Who may read `/api/*` (contract §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRead {
    /// Anyone who reaches the admin port (private key values digested).
    Open,
    /// Only a caller with `admin.token`.
    Token,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: String,
    /// `host:port` published in the registry.
    pub address: String,
    pub ttl: Duration,
    pub heartbeat: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub topology: RedisTopology,
    pub tls: RedisTls,
    /// Bound on every Redis call of a check; other calls get a multiple of it.
    pub timeout: Duration,
    pub on_error: OnError,
}

/// Where the Redis data lives (contract §9): exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy in front of several).
    Standalone(RedisUrl),
    /// Redis Cluster, found through these seed nodes.
    Cluster(Vec<RedisUrl>),
    /// The master the sentinels monitor under `master`, followed after a failover.
    Sentinel {
        sentinels: Vec<RedisUrl>,
        master: String,
    },
}

impl RedisTopology {
    /// The URLs it names (one for a standalone server).
    pub fn urls(&self) -> &[RedisUrl] {
        match self {
            RedisTopology::Standalone(url) => std::slice::from_ref(url),
            RedisTopology::Cluster(urls) => urls,
            RedisTopology::Sentinel { sentinels, .. } => sentinels,
        }
    }

    /// Whether it is reached over TLS (`rediss://`; one scheme for all its URLs).
    pub fn is_tls(&self) -> bool {
        self.urls().iter().any(RedisUrl::is_tls)
    }
}

impl std::fmt::Display for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |urls: &[RedisUrl]| {
            urls.iter()
                .map(RedisUrl::redacted)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            RedisTopology::Standalone(url) => write!(f, "{url}"),
            RedisTopology::Cluster(urls) => write!(f, "cluster via {}", list(urls)),
            RedisTopology::Sentinel { sentinels, master } => {
                write!(f, "sentinel master {master:?} via {}", list(sentinels))
            }
        }
    }
}

/// TLS to Redis beyond what the URL says: whom to trust, and a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// Trust this CA (PEM) instead of the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Skip certificate verification (testing only; warned at start).
    pub insecure: bool,
}

/// A Redis URL that never prints its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// The URL with its secret, for the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, safe for logs and admin responses.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        let Some(scheme_end) = s.find("://") else {
            return s.clone();
        };
        let rest = &s[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    "***".to_string()
                };
                format!("{}{masked}{}", &s[..scheme_end + 3], &rest[at..])
            }
            None => s.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// What a request gets when the store cannot decide (contract §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail open: proxy without limit headers.
    Allow,
    /// Fail closed: 503.
    Deny,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub enabled: bool,
    pub default: Quota,
    pub key: KeySource,
    /// What a request whose key part is missing gets under the default rule.
    pub missing: Missing,
    pub trusted_proxies: Vec<IpNet>,
    /// Whether CORS preflights count against the rules.
    pub preflight: Preflight,
}

/// `[limits] preflight` (contract §17): what a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) owes. A browser sends one before a cross-origin request
/// without the request's credentials, so under a header key it counts against the missing-key
/// client, and under an IP key it halves what the page can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preflight {
    /// Counted like any request.
    #[default]
    Count,
    /// Counted against no rule, and passed to the upstream.
    Exempt,
}

impl Preflight {
    pub const ALL: [(&'static str, Preflight); 2] =
        [("count", Preflight::Count), ("exempt", Preflight::Exempt)];
}

/// `[privacy]` (contract §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrivacyConfig {
    /// Show private key values (headers, query parameters, cookies, claims) in clear in
    /// metrics, logs and listings; by default they are digested.
    pub clear_keys: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersConfig {
    pub style: HeaderStyle,
    /// `[headers] body = "problem+json"`: a 429's body is an RFC 9457 problem (contract §16);
    /// else the JSON of §3.
    pub problem: bool,
}

/// `[response]` (contract §17): what the answers the gateway makes itself carry beside their
/// own fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseConfig {
    /// Added to each such answer, in file order; never a hop-by-hop or framing field, nor one
    /// the gateway sets itself (checked when read).
    pub headers: Vec<AddedHeader>,
    /// Whether `Access-Control-Expose-Headers` naming the gateway's own fields is added too:
    /// when `headers` allows an origin and does not expose anything itself.
    pub expose_own_fields: bool,
}

/// One field of `[response] headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedHeader {
    /// A legal field name, as written: HTTP/1 answers keep its case.
    pub name: String,
    pub value: http::HeaderValue,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub max_key_labels: usize,
}

impl Config {
    /// Reads and validates the config file given with `-c` (`None`: the built-in defaults),
    /// with `RATELIMITER_*` overrides from the process environment.
    pub fn load_from(path: Option<&str>) -> Result<Config, ConfigErrors> {
        match path {
            Some(path) => Config::load(path),
            None => Config::parse(DEFAULTS_NAME, "", &|var| std::env::var(var).ok()),
        }
    }

    /// Reads and validates a config file, with `RATELIMITER_*` overrides from the process
    /// environment.
    pub fn load(path: &str) -> Result<Config, ConfigErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                origin: Origin::Path(path.to_string()),
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        Config::parse(path, &source, &|var| std::env::var(var).ok())
    }

    /// Validates config text; `path` only names the source in errors, `env` looks up overrides.
    pub fn parse(
        path: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        validate::build(path, source, env)
    }

    /// The default rule and the named rules, with what keys need.
    pub fn rule_set(&self) -> RuleSet {
        let default = Limit {
            algorithm: Algorithm::SlidingLog,
            quota: self.limits.default,
        };
        RuleSet::new(
            Rule::default_rule(self.limits.key.clone(), self.limits.missing, default),
            self.rules.clone(),
            self.limits.trusted_proxies.clone(),
            self.jwt.clone(),
        )
    }

    /// One line for `ratelimiter -t`.
    pub fn summary(&self) -> String {
        let store = match &self.redis {
            Some(r) => format!(
                "redis {} (timeout {:?}, on_error {:?})",
                r.topology, r.timeout, r.on_error
            ),
            None => "embedded store".to_string(),
        };
        let key = &self.limits.key;
        let target = match &self.proxy.direct_response {
            Some(d) => format!("direct response {}", d.status),
            None => format!("{} upstream(s)", self.proxy.upstreams.len()),
        };
        format!(
            "node {} proxy {} -> {target}, admin {}, {store}, limit {} per {} ms by {key}, {} rule(s){}",
            self.node.id,
            self.proxy.listen,
            self.admin.listen,
            self.limits.default.limit,
            self.limits.default.window_ms,
            self.rules.len(),
            if self.limits.enabled {
                ""
            } else {
                " (limiting off)"
            }
        )
    }
}
