//! `[redis]` (contract §2 and §9): one topology (a URL, Cluster seeds or Sentinels), TLS
//! files, the call timeout and the failure policy.

use std::time::Duration;

use super::error::Collector;
use super::pem::{self, Pem};
use super::reader::{At, Section};
use super::{OnError, RedisConfig, RedisTls, RedisTopology, RedisUrl};

type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

pub(super) const KEYS: &[&str] = &[
    "url",
    "cluster",
    "sentinels",
    "sentinel_master",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_insecure",
    "timeout_ms",
    "on_error",
];

/// The default when `[redis]` names no topology.
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

pub(super) fn read(
    present: bool,
    s: &Section,
    env: Env,
    errors: &mut Collector,
) -> Option<RedisConfig> {
    let from_env = env("RATELIMITER_REDIS_URL");
    if !present && from_env.is_none() {
        return None;
    }
    let topology = topology(s, from_env, errors);
    let tls = tls(s, errors);
    let timeout = s
        .integer("timeout_ms", 1, 60_000, "an integer 1..=60000", errors)
        .map_or(50, |v| v.value as u64);
    let on_error = s
        .choice(
            "on_error",
            &[("allow", OnError::Allow), ("deny", OnError::Deny)],
            errors,
        )
        .unwrap_or(OnError::Allow);
    let (topology, tls) = (topology?, tls?);
    if !topology.is_tls() {
        for key in [
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
            "tls_insecure",
        ] {
            if let Some(span) = s.span(key) {
                errors.at(
                    span,
                    format!("{} {key}: TLS settings need rediss:// URLs", s.name),
                );
            }
        }
    }
    Some(RedisConfig {
        topology,
        tls,
        timeout: Duration::from_millis(timeout),
        on_error,
    })
}

/// Exactly one of `url`, `cluster`, `sentinels` (none: the default URL);
/// `RATELIMITER_REDIS_URL` replaces whichever the file names.
fn topology(
    s: &Section,
    from_env: Option<String>,
    errors: &mut Collector,
) -> Option<RedisTopology> {
    let written: Vec<&str> = ["url", "cluster", "sentinels"]
        .into_iter()
        .filter(|k| s.has(k))
        .collect();
    if let [first, rest @ ..] = &written[..] {
        for k in rest {
            if let Some(span) = s.span(k) {
                errors.at(
                    span,
                    format!(
                        "{} {k}: exactly one of url, cluster and sentinels; {first} is set too",
                        s.name
                    ),
                );
            }
        }
    }
    let master = s.string("sentinel_master", errors);
    if let Some(v) = from_env {
        return match check_url(&v) {
            Ok(()) => Some(RedisTopology::Standalone(RedisUrl(v))),
            Err(why) => {
                errors.env("RATELIMITER_REDIS_URL", why);
                None
            }
        };
    }
    let topology = match written.first().copied() {
        None | Some("url") => {
            let url = match s.string("url", errors) {
                Some(At { value, span }) => match check_url(&value) {
                    Ok(()) => value,
                    Err(why) => {
                        errors.at(span, format!("{} url: {why}", s.name));
                        return None;
                    }
                },
                None if s.has("url") => return None,
                None => DEFAULT_URL.to_string(),
            };
            RedisTopology::Standalone(RedisUrl(url))
        }
        Some("cluster") => RedisTopology::Cluster(urls(s, "cluster", errors)?),
        _ => {
            let sentinels = urls(s, "sentinels", errors)?;
            let Some(At { value, span }) = master else {
                errors.at(
                    s.span("sentinels").unwrap_or(0..0),
                    format!(
                        "{} sentinels: sentinel_master is required with sentinels (the name the sentinels monitor)",
                        s.name
                    ),
                );
                return None;
            };
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.at(
                    span,
                    format!(
                        "{} sentinel_master: expected the monitored master's name, found {value:?}",
                        s.name
                    ),
                );
                return None;
            }
            return Some(RedisTopology::Sentinel {
                sentinels,
                master: value,
            });
        }
    };
    if let Some(At { span, .. }) = master {
        errors.at(
            span,
            format!("{} sentinel_master: only with sentinels", s.name),
        );
    }
    Some(topology)
}

/// A non-empty list of URLs, all with the same scheme.
fn urls(s: &Section, key: &str, errors: &mut Collector) -> Option<Vec<RedisUrl>> {
    let list = s.strings(key, errors)?;
    if list.is_empty() {
        errors.at(
            s.span(key).unwrap_or(0..0),
            format!(
                "{} {key}: expected at least one redis:// or rediss:// URL",
                s.name
            ),
        );
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for At { value, span } in list {
        match check_url(&value) {
            Ok(()) => out.push(RedisUrl(value)),
            Err(why) => {
                ok = false;
                errors.at(span, format!("{} {key}: {why}", s.name));
            }
        }
    }
    let tls = out.iter().filter(|u| u.is_tls()).count();
    if ok && tls != 0 && tls != out.len() {
        errors.at(
            s.span(key).unwrap_or(0..0),
            format!(
                "{} {key}: mixes redis:// and rediss:// URLs; use one scheme for every node",
                s.name
            ),
        );
        return None;
    }
    ok.then_some(out)
}

fn check_url(url: &str) -> Result<(), String> {
    let shown = RedisUrl(url.to_string()).redacted();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "expected a redis:// or rediss:// URL, found {shown:?}"
        ));
    }
    redis::Client::open(url).map(|_| ()).map_err(|e| {
        format!(
            "invalid Redis URL {shown:?}: {}",
            e.detail().unwrap_or("malformed")
        )
    })
}

/// The TLS files, each read now so a missing or wrong file is a config error, not a failure
/// at the first connection.
fn tls(s: &Section, errors: &mut Collector) -> Option<RedisTls> {
    let ca = pem::file(s, "tls_ca_file", Pem::Certificate, errors);
    let cert = pem::file(s, "tls_cert_file", Pem::Certificate, errors);
    let key = pem::file(s, "tls_key_file", Pem::PrivateKey, errors);
    let mut ok = ca.is_ok() && cert.is_ok() && key.is_ok();
    let (ca_file, cert_file, key_file) =
        (ca.ok().flatten(), cert.ok().flatten(), key.ok().flatten());
    for (set, other) in [
        ("tls_cert_file", "tls_key_file"),
        ("tls_key_file", "tls_cert_file"),
    ] {
        if s.has(set) && !s.has(other) {
            ok = false;
            errors.at(
                s.span(set).unwrap_or(0..0),
                format!(
                    "{} {set}: a client certificate needs both tls_cert_file and tls_key_file; {other} is missing",
                    s.name
                ),
            );
        }
    }
    let insecure = s.boolean("tls_insecure", errors).is_some_and(|v| v.value);
    ok.then_some(RedisTls {
        ca_file,
        cert_file,
        key_file,
        insecure,
    })
}
