//! Per-upstream metrics (contract §17): health, requests by status class, retries and errors,
//! each labelled with the route (contract §18; `""`: `[proxy] upstreams`) and the upstream as
//! configured (`host:port`), so their number is bounded by the config.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Why a request to an upstream failed, as the `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Connecting was refused or failed.
    Connect,
    /// Connecting took longer than `connect_timeout_ms`.
    ConnectTimeout,
    /// The TLS handshake failed.
    Tls,
    /// No byte read or written within `read_timeout_ms` / `write_timeout_ms`.
    Timeout,
    /// The upstream closed or reset the connection midway.
    Closed,
    /// What it answered was not a valid HTTP response.
    Protocol,
    /// Anything else.
    Other,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 7] = [
        UpstreamError::Connect,
        UpstreamError::ConnectTimeout,
        UpstreamError::Tls,
        UpstreamError::Timeout,
        UpstreamError::Closed,
        UpstreamError::Protocol,
        UpstreamError::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Tls => "tls",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Closed => "closed",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Other => "other",
        }
    }
}

pub struct UpstreamMetrics {
    healthy: IntGaugeVec,
    requests: IntCounterVec,
    retries: IntCounterVec,
    errors: IntCounterVec,
}

/// Status classes, as `ratelimiter_responses_total` has them.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl UpstreamMetrics {
    pub fn new(registry: &Registry) -> Result<UpstreamMetrics, prometheus::Error> {
        let healthy = IntGaugeVec::new(
            Opts::new(
                "ratelimiter_upstream_healthy",
                "1 when the upstream passes its health check (always, without health checks).",
            ),
            &["route", "upstream"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "ratelimiter_upstream_requests_total",
                "Responses from each upstream, by status class.",
            ),
            &["route", "upstream", "code"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "ratelimiter_upstream_retries_total",
                "Requests tried on another upstream after this one could not be connected to.",
            ),
            &["route", "upstream"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "ratelimiter_upstream_errors_total",
                "Failed connections and exchanges with each upstream, by kind.",
            ),
            &["route", "upstream", "kind"],
        )?;
        registry.register(Box::new(healthy.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(UpstreamMetrics {
            healthy,
            requests,
            retries,
            errors,
        })
    }

    /// The upstreams of the config in force, by route (`""`: `[proxy] upstreams`), and
    /// whether each is healthy. The health of an earlier config's upstreams is dropped (their
    /// counters stay). Each upstream's counters are present from the start, so `rate()` over
    /// them never starts mid-incident.
    pub fn set_upstreams<'a>(&self, upstreams: impl IntoIterator<Item = (&'a str, &'a str, bool)>) {
        self.healthy.reset();
        for (route, name, healthy) in upstreams {
            self.healthy
                .with_label_values(&[route, name])
                .set(i64::from(healthy));
            for class in CLASSES {
                self.requests.with_label_values(&[route, name, class]);
            }
            self.retries.with_label_values(&[route, name]);
            for kind in UpstreamError::ALL {
                self.errors.with_label_values(&[route, name, kind.label()]);
            }
        }
    }

    /// The health of the same upstreams, after a round of checks.
    pub fn set_health<'a>(&self, upstreams: impl IntoIterator<Item = (&'a str, &'a str, bool)>) {
        for (route, name, healthy) in upstreams {
            self.healthy
                .with_label_values(&[route, name])
                .set(i64::from(healthy));
        }
    }

    /// A response from `upstream` of `route`, by its status.
    pub fn count_response(&self, route: &str, upstream: &str, status: u16) {
        if let Some(class) = usize::from(status / 100)
            .checked_sub(1)
            .and_then(|i| CLASSES.get(i))
        {
            self.requests
                .with_label_values(&[route, upstream, class])
                .inc();
        }
    }

    pub fn count_retry(&self, route: &str, upstream: &str) {
        self.retries.with_label_values(&[route, upstream]).inc();
    }

    pub fn count_error(&self, route: &str, upstream: &str, kind: UpstreamError) {
        self.errors
            .with_label_values(&[route, upstream, kind.label()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_config_s_upstreams_replace_the_old_ones() {
        let registry = Registry::new();
        let m = UpstreamMetrics::new(&registry).unwrap();
        m.set_upstreams([("", "a:1", true), ("api", "b:2", false)]);
        m.count_response("", "a:1", 503);
        m.count_error("api", "b:2", UpstreamError::ConnectTimeout);
        assert_eq!(m.healthy.with_label_values(&["api", "b:2"]).get(), 0);
        assert_eq!(m.requests.with_label_values(&["", "a:1", "5xx"]).get(), 1);
        m.set_upstreams([("", "c:3", true)]);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .find(|f| f.name() == "ratelimiter_upstream_healthy")
            .unwrap()
            .get_metric()
            .iter()
            .map(|m| m.get_label()[1].value().to_string())
            .collect();
        assert_eq!(names, ["c:3"]);
    }
}
