//! `[[routes]]` (contract §18): requests that match a route's conditions (as a rule's:
//! methods, path, host) go to its own upstreams, with its own timeouts, retries and health
//! check; the first route in file order that matches takes a request, and a request no route
//! matches goes to `[proxy] upstreams`. Each mistake is reported where it is written.
//! (`buffering` defaults to `[proxy]`'s too.)

use std::collections::HashMap;

use super::error::Collector;
use super::reader::Section;
use super::{HealthCheck, ProxyConfig, Upstream, UpstreamTimeouts};
use crate::rules::Matcher;

/// A route's own keys, beside its name and match condition.
const KEYS: &[&str] = &[
    "upstreams",
    "connect_timeout_ms",
    "read_timeout_ms",
    "write_timeout_ms",
    "retries",
    "health_check",
    "buffering",
];

/// One route, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: Matcher,
    pub upstreams: Vec<Upstream>,
    pub timeouts: UpstreamTimeouts,
    pub retries: usize,
    pub health_check: Option<HealthCheck>,
    /// `false`: response bytes go to the client as they arrive.
    pub buffering: bool,
}

/// Every `[[routes]]` table; a route's timeouts, retries and health check default to
/// `[proxy]`'s (`proxy`: `None` when `[proxy]` is wrong, reported there).
pub(super) fn read(
    root: &Section,
    proxy: Option<&ProxyConfig>,
    errors: &mut Collector,
) -> Vec<RouteConfig> {
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, (s, at)) in root
        .tables("routes", &super::rules::keys_with_match(KEYS), errors)
        .into_iter()
        .enumerate()
    {
        let name =
            super::rules::table_name(&s, &at, ("route", index + 1), None, &mut names, errors);
        let matcher = super::rules::matcher(&s, errors);
        if !s.has("upstreams") {
            errors.at(
                at.clone(),
                format!("{}: upstreams is required (the route's own pool)", s.name),
            );
        }
        let upstreams = super::proxy::upstreams(&s, errors);
        if upstreams.as_ref().is_some_and(Vec::is_empty) {
            errors.at(
                s.span_of("upstreams"),
                format!(
                    "{} upstreams: expected at least one \"host:port\" or \"https://host:port\"",
                    s.name
                ),
            );
        }
        let timeouts = proxy.map(|p| super::proxy::timeouts(&s, p.timeouts, errors));
        let retries = super::proxy::retries(&s, errors);
        let h2 = upstreams.as_ref().is_some_and(|u| u.iter().any(|u| u.h2));
        let health_check = match super::proxy::health_check(&s, errors) {
            Some(h) => Some(Some(h)),
            // [proxy]'s HTTP check would ask an h2:// (gRPC) service for a plain GET, which
            // such services refuse: its pool inherits the check as a TCP one.
            None => proxy.map(|p| {
                p.health_check.clone().map(|mut h| {
                    if h2 {
                        h.path = None;
                    }
                    h
                })
            }),
        };
        let buffering = s
            .boolean("buffering", errors)
            .map_or(proxy.is_none_or(|p| p.buffering), |v| v.value);
        if let (Some(name), Some(matcher), Some(upstreams), Some(timeouts), Some(health_check)) =
            (name, matcher, upstreams, timeouts, health_check)
        {
            if upstreams.is_empty() || !s.has("upstreams") {
                continue;
            }
            out.push(RouteConfig {
                name,
                matcher,
                upstreams,
                timeouts,
                retries: retries.or(proxy.map(|p| p.retries)).unwrap_or(1),
                health_check,
                buffering,
            });
        }
    }
    out
}
