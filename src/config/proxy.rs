//! `[proxy]` (contract §2 and §10): the listeners (plain, and HTTPS with HTTP/2), the
//! upstreams with their scheme, TLS trust, timeouts, retries and health checks, client
//! keep-alive, and the direct response.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::error::Collector;
use super::pem::{self, Pem};
use super::reader::{At, Section};
use super::{
    ClientLimits, DirectResponse, HealthCheck, ProxyConfig, TlsListener, Upstream, UpstreamTimeouts,
};
use crate::request::HostMatch;
use crate::request::{EscapedSlashes, PathParameters, PathPolicy};

pub(super) const KEYS: &[&str] = &[
    "listen",
    "tls_listen",
    "tls_cert_file",
    "tls_key_file",
    "upstreams",
    "upstream_tls_ca_file",
    "connect_timeout_ms",
    "read_timeout_ms",
    "write_timeout_ms",
    "keepalive_timeout_seconds",
    "retries",
    "health_check",
    "direct_response",
    "escaped_slashes",
    "path_parameters",
    "allowed_hosts",
    "max_header_bytes",
    "header_timeout_ms",
    "max_connections",
    "max_body_bytes",
    "h2c",
    "buffering",
];

/// `upstream_tls_ca_file` serves every pool, `[proxy]`'s and each route's: given with no
/// `https://` upstream in any of them, it is a mistake.
pub(super) fn check_ca_used(
    s: &Section,
    proxy: &ProxyConfig,
    routes: &[super::routes::RouteConfig],
    errors: &mut Collector,
) {
    let mut upstreams = proxy
        .upstreams
        .iter()
        .chain(routes.iter().flat_map(|r| r.upstreams.iter()));
    if proxy.upstream_tls_ca_file.is_some() && !upstreams.any(|u| u.tls) {
        errors.at(
            s.span("upstream_tls_ca_file").unwrap_or(0..0),
            format!(
                "{} upstream_tls_ca_file: only for https:// upstreams, and none is listed",
                s.name
            ),
        );
    }
}

/// The upstream timeouts when none is written.
const DEFAULT_TIMEOUTS: UpstreamTimeouts = UpstreamTimeouts {
    connect: Duration::from_millis(2_000),
    read: Duration::from_millis(60_000),
    write: Duration::from_millis(60_000),
};

/// A pool's timeouts (`[proxy]`'s, or a route's), each `base`'s where not written.
pub(super) fn timeouts(
    s: &Section,
    base: UpstreamTimeouts,
    errors: &mut Collector,
) -> UpstreamTimeouts {
    let mut ms = |key: &str, default: Duration| {
        s.integer(key, 1, 3_600_000, "an integer 1..=3600000 (ms)", errors)
            .map_or(default, |v| Duration::from_millis(v.value as u64))
    };
    UpstreamTimeouts {
        connect: ms("connect_timeout_ms", base.connect),
        read: ms("read_timeout_ms", base.read),
        write: ms("write_timeout_ms", base.write),
    }
}

/// A pool's `retries`, if written.
pub(super) fn retries(s: &Section, errors: &mut Collector) -> Option<usize> {
    s.integer("retries", 0, 10, "an integer 0..=10", errors)
        .map(|v| v.value as usize)
}

/// A pool's `health_check` table, if written.
pub(super) fn health_check(s: &Section, errors: &mut Collector) -> Option<HealthCheck> {
    s.table(
        "health_check",
        &["interval_ms", "path", "timeout_ms"],
        errors,
    )
    .map(|h| health(&h, errors))
}

/// The upstream when none is written.
const DEFAULT_UPSTREAM: &str = "127.0.0.1:3000";

pub(super) fn read(s: &Section, errors: &mut Collector) -> Option<ProxyConfig> {
    let listen = s.socket_addr("listen", "127.0.0.1:8080", errors);
    let tls = tls_listener(s, errors);
    let upstreams = upstreams(s, errors);
    let upstream_tls_ca_file = pem::file(s, "upstream_tls_ca_file", Pem::Certificate, errors);
    let timeouts = timeouts(s, DEFAULT_TIMEOUTS, errors);
    let keepalive_timeout = s
        .integer(
            "keepalive_timeout_seconds",
            0,
            3600,
            "an integer 0..=3600 (seconds; 0: no keep-alive)",
            errors,
        )
        .map_or(75, |v| v.value as u64);
    let retries = retries(s, errors).unwrap_or(1);
    let health_check = health_check(s, errors);
    let direct_response = s
        .table(
            "direct_response",
            &["status", "content_type", "body"],
            errors,
        )
        .map(|d| DirectResponse {
            status: d
                .integer("status", 100, 599, "an HTTP status 100..=599", errors)
                .map_or(200, |v| v.value as u16),
            content_type: d
                .string("content_type", errors)
                .map_or_else(|| "text/plain; charset=utf-8".to_string(), |v| v.value),
            body: d
                .string("body", errors)
                .map_or_else(String::new, |v| v.value),
        });
    if let Some(list) = &upstreams {
        if list.is_empty() && direct_response.is_none() {
            errors.at(
                s.span("upstreams").unwrap_or(0..0),
                format!(
                    "{} upstreams: expected at least one \"host:port\" or \"https://host:port\"",
                    s.name
                ),
            );
        }
    }
    let escaped_slashes = s
        .choice("escaped_slashes", &EscapedSlashes::ALL, errors)
        .unwrap_or_default();
    let path_parameters = s
        .choice("path_parameters", &PathParameters::ALL, errors)
        .unwrap_or_default();
    let mut allowed_hosts = Vec::new();
    for At { value, span } in s.strings("allowed_hosts", errors).unwrap_or_default() {
        match HostMatch::parse(&value) {
            Some(h) => allowed_hosts.push(h),
            None => errors.at(
                span,
                format!(
                    "{} allowed_hosts: expected a host name like \"api.example.com\" or \"*.example.com\", without a port, found {value:?}",
                    s.name
                ),
            ),
        }
    }
    let clients = ClientLimits {
        max_header_bytes: s
            .integer(
                "max_header_bytes",
                1024,
                1_048_575,
                "an integer 1024..=1048575 (bytes)",
                errors,
            )
            .map_or(65_536, |v| v.value as usize),
        header_timeout: Duration::from_millis(
            s.integer(
                "header_timeout_ms",
                100,
                3_600_000,
                "an integer 100..=3600000 (ms)",
                errors,
            )
            .map_or(10_000, |v| v.value as u64),
        ),
        max_connections: s
            .integer(
                "max_connections",
                1,
                1_000_000,
                "an integer 1..=1000000",
                errors,
            )
            .map_or(8_192, |v| v.value as usize),
    };
    Some(ProxyConfig {
        listen: listen?,
        tls: tls.ok()?,
        upstreams: upstreams?,
        upstream_tls_ca_file: upstream_tls_ca_file.ok()?,
        timeouts,
        keepalive_timeout: Duration::from_secs(keepalive_timeout),
        retries,
        health_check,
        direct_response,
        paths: PathPolicy {
            slashes: escaped_slashes,
            parameters: path_parameters,
        },
        allowed_hosts,
        clients,
        max_body_bytes: s
            .integer(
                "max_body_bytes",
                0,
                i64::MAX,
                "an integer >= 0 (bytes; 0: any size)",
                errors,
            )
            .map_or(0, |v| v.value as u64),
        h2c: s.boolean("h2c", errors).is_some_and(|v| v.value),
        buffering: s.boolean("buffering", errors).is_none_or(|v| v.value),
    })
}

/// `tls_listen` with its certificate and key, all three or none. `Err(())`: bad (recorded).
fn tls_listener(s: &Section, errors: &mut Collector) -> Result<Option<TlsListener>, ()> {
    let listen = if s.has("tls_listen") {
        s.socket_addr("tls_listen", "", errors).ok_or(())
    } else {
        Err(())
    };
    let cert = pem::file(s, "tls_cert_file", Pem::Certificate, errors);
    let key = pem::file(s, "tls_key_file", Pem::PrivateKey, errors);
    if !s.has("tls_listen") {
        for k in ["tls_cert_file", "tls_key_file"] {
            if let Some(span) = s.span(k) {
                errors.at(span, format!("{} {k}: only with tls_listen", s.name));
            }
        }
        return if s.has("tls_cert_file") || s.has("tls_key_file") {
            Err(())
        } else {
            Ok(None)
        };
    }
    let mut missing = false;
    for k in ["tls_cert_file", "tls_key_file"] {
        if !s.has(k) {
            missing = true;
            errors.at(
                s.span("tls_listen").unwrap_or(0..0),
                format!(
                    "{} tls_listen: needs tls_cert_file and tls_key_file; {k} is missing",
                    s.name
                ),
            );
        }
    }
    match (listen, cert, key) {
        (Ok(listen), Ok(Some(cert_file)), Ok(Some(key_file))) if !missing => {
            Ok(Some(TlsListener {
                listen,
                cert_file,
                key_file,
            }))
        }
        _ => Err(()),
    }
}

/// The upstreams, each resolved now (a name that does not resolve is an error here, as in
/// nginx); `None` when one is bad.
pub(super) fn upstreams(s: &Section, errors: &mut Collector) -> Option<Vec<Upstream>> {
    let Some(list) = s.strings("upstreams", errors) else {
        if s.has("upstreams") {
            return None;
        }
        return parse_upstream(DEFAULT_UPSTREAM).ok().map(|u| vec![u]);
    };
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for At { value, span } in list {
        match parse_upstream(&value) {
            Ok(u) => out.push(u),
            Err(why) => {
                ok = false;
                errors.at(span, format!("{} upstreams: {why}", s.name));
            }
        }
    }
    ok.then_some(out)
}

/// `host:port`, `http://host[:port]` or `https://host[:port]`, resolved.
pub fn parse_upstream(written: &str) -> Result<Upstream, String> {
    let (tls, h2, rest, default_port) = if let Some(rest) = written.strip_prefix("https://") {
        (true, false, rest, Some(443))
    } else if let Some(rest) = written.strip_prefix("http://") {
        (false, false, rest, Some(80))
    } else if let Some(rest) = written.strip_prefix("h2://") {
        (false, true, rest, None)
    } else if written.contains("://") {
        return Err(shape(written));
    } else {
        (false, false, written, None)
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') || hostport.contains('?') {
        return Err(format!(
            "an upstream is a server, without a path: found {written:?}"
        ));
    }
    let (host, port) = split_host_port(hostport, default_port).ok_or_else(|| shape(written))?;
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Err(format!("cannot resolve {host:?}: {e}")),
    };
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(Upstream {
        name: format!("{}:{port}", bracketed(&host)),
        host,
        port,
        tls,
        h2,
        addrs,
    })
}

fn shape(written: &str) -> String {
    format!(
        "expected \"host:port\", \"http://host[:port]\", \"https://host[:port]\" or \"h2://host:port\" (port 1..=65535), found {written:?}"
    )
}

/// `host:port` or `[v6]:port`; the port may be left out when there is a default.
fn split_host_port(s: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0)?,
        None => default_port?,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn health(h: &Section, errors: &mut Collector) -> HealthCheck {
    let interval = h
        .integer(
            "interval_ms",
            100,
            3_600_000,
            "an integer 100..=3600000 (ms)",
            errors,
        )
        .map_or(1_000, |v| v.value as u64);
    let timeout = h
        .integer("timeout_ms", 1, 60_000, "an integer 1..=60000 (ms)", errors)
        .map_or(1_000, |v| v.value as u64);
    let path = match h.string("path", errors) {
        Some(At { value, span }) => {
            let valid = value.starts_with('/')
                && value.bytes().all(|b| b.is_ascii_graphic())
                && !value.contains('#');
            if !valid {
                errors.at(
                    span,
                    format!(
                        "{} path: expected a path starting with \"/\" (visible ASCII), found {value:?}",
                        h.name
                    ),
                );
            }
            Some(value)
        }
        None => None,
    };
    HealthCheck {
        interval: Duration::from_millis(interval),
        path,
        timeout: Duration::from_millis(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        let u = parse_upstream("127.0.0.1:3000").unwrap();
        assert_eq!(
            (u.name.as_str(), u.tls, u.port),
            ("127.0.0.1:3000", false, 3000)
        );
        let u = parse_upstream("https://127.0.0.1").unwrap();
        assert_eq!(
            (u.name.as_str(), u.tls, u.port),
            ("127.0.0.1:443", true, 443)
        );
        let u = parse_upstream("http://localhost:8081/").unwrap();
        assert_eq!((u.host.as_str(), u.tls, u.port), ("localhost", false, 8081));
        let u = parse_upstream("https://[::1]:8443").unwrap();
        assert_eq!((u.name.as_str(), u.host.as_str()), ("[::1]:8443", "::1"));
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "ftp://x:1",
            "https://api.internal:443/v1",
            "::1:80",
            ":80",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}
