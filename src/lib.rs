//! `ratelimiter`: a rate-limiting reverse proxy on pingora.
//!
//! A request's path through the crate:
//!
//! 1. [`config`] — the TOML file, validated once into types that cannot hold a bad value, and
//!    [`live`], the config in force, swapped whole by [`reload`] on SIGHUP;
//! 2. [`rules`] — which limits the request owes: a pure function of a [`key::RequestView`]
//!    (method, host, path, headers, peer) to a list of checks, each a counter key ([`key`])
//!    and a limit;
//! 3. [`limiter`] — the decision over all of them at once: [`limiter::algo`] is the arithmetic
//!    of each algorithm, [`limiter::backend`] the two stores (embedded memory, Redis),
//!    [`limiter::outcome`] what the decisions mean together, [`limiter::policy`] the time bound
//!    and the fail-open/fail-closed policy;
//! 4. [`proxy`] — the pingora `ProxyHttp`: proxies allowed requests with [`headers`], answers
//!    the rest with [`response`], and tags each with its ID ([`request_id`]);
//! 5. [`metrics`] — Prometheus counters and histograms of every decision.
//!
//! Beside the request path: [`redis_conn`] is the one Redis layer (standalone, Sentinel, Cluster;
//! TLS) that the store, the registry and the admin API share; [`admin`] serves the JSON admin
//! API and `/metrics` on its own port; [`registry`] keeps this node listed in Redis with a
//! heartbeat; [`tenants`] holds what operators change at runtime (overrides, the audit log);
//! [`slot_keeper`] renews the concurrency slots of requests in flight; [`shutdown`] turns signals into a drain or a fast stop, which [`lifecycle`]
//! tells the services about. [`server`] wires them all into pingora services;
//! [`cli`] and `main.rs` are the thin binary, and [`preflight`] what `-t` checks beyond the
//! config: every file it names, opened as the start opens it.

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod forwarding;
pub mod grpc;
pub mod headers;
pub mod key;
pub mod lifecycle;
pub mod limiter;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod process;
pub mod proxy;
pub mod redis_conn;
pub mod registry;
pub mod reload;
pub mod request;
pub mod request_id;
pub mod response;
pub mod rules;
pub mod server;
pub mod settle;
pub mod shutdown;
pub mod slot_keeper;
pub mod sync;
pub mod tenants;
pub mod tls;
pub mod upstreams;

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this build was made from (`build.rs`): 12 hex digits, or `unknown`.
pub const COMMIT: &str = env!("RATELIMITER_COMMIT");
