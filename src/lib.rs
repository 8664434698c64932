//! `ratelimiter`: a rate-limiting reverse proxy on pingora.
//!
//! A request's path through the crate:
//!
//! 1. [`config`] — the TOML file, validated once into types that cannot hold a bad value;
//! 2. [`key`] — the request's counter key (client IP, or a header with a fall-back to it);
//! 3. [`limiter`] — the sliding-window decision: [`limiter::window`] is the arithmetic,
//!    [`limiter::memory`] and [`limiter::redis`] the two stores, [`limiter::policy`] the time
//!    bound and the fail-open/fail-closed policy;
//! 4. [`proxy`] — the pingora `ProxyHttp`: proxies allowed requests, answers the rest with
//!    [`response`];
//! 5. [`metrics`] — Prometheus counters and histograms of every decision.
//!
//! Beside the request path: [`admin`] serves the JSON admin API and `/metrics` on its own
//! port; [`registry`] keeps this node listed in Redis with a heartbeat; [`shutdown`] turns
//! signals into a drain or a fast stop. [`server`] wires them all into pingora services;
//! [`cli`] and `main.rs` are the thin binary.

pub mod admin;
pub mod cli;
pub mod config;
pub mod key;
pub mod limiter;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod response;
pub mod server;
pub mod shutdown;
