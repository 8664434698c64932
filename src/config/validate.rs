//! From the spanned TOML tree to [`Config`]: one function per section, each value checked
//! where it is read so the error points at it. Environment overrides are applied here too,
//! with errors that name the variable.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use crate::headers::HeaderStyle;
use crate::key::{KeySource, Missing};

use ipnet::IpNet;

use super::error::{Collector, ConfigErrors};
use super::reader::{self, At, Section};
use super::*;

type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// The sections written `[name]`.
const SECTIONS: &[&str] = &[
    "server", "proxy", "admin", "node", "redis", "limits", "jwt", "privacy", "headers", "response",
    "metrics", "log",
];
/// The sections written `[[name]]`.
const ARRAYS: &[&str] = &["rules", "routes"];

pub(super) fn build(path: &str, source: &str, env: Env) -> Result<Config, ConfigErrors> {
    let mut errors = Collector::new(path, source);
    let Some(mut doc) = reader::parse(source, &mut errors) else {
        return Err(ConfigErrors(errors.into_sorted()));
    };
    // Before anything is read, so every string key takes `${VAR}`; the `RATELIMITER_*`
    // overrides below still replace what the file says.
    for (span, message) in super::document::interpolate(&mut doc, env) {
        errors.at_value(span, message);
    }
    let root = Section::root(&doc, SECTIONS, ARRAYS, &mut errors);

    let server = server(
        &root.section(
            "server",
            &[
                "threads",
                "work_stealing",
                "grace_period_seconds",
                "pid_file",
                "upgrade_socket",
            ],
            &mut errors,
        ),
        &mut errors,
    );
    let proxy_section = root.section("proxy", super::proxy::KEYS, &mut errors);
    let proxy = super::proxy::read(&proxy_section, &mut errors);
    let admin = admin(
        &root.section(
            "admin",
            &["listen", "token", "tokens", "read", "metrics_token"],
            &mut errors,
        ),
        &mut errors,
    );
    let node = node(
        &root.section(
            "node",
            &["id", "address", "ttl_seconds", "heartbeat_seconds"],
            &mut errors,
        ),
        proxy.as_ref().map(|p| p.listen),
        env,
        &mut errors,
    );
    let redis = super::redis::read(
        root.has("redis"),
        &root.section("redis", super::redis::KEYS, &mut errors),
        env,
        &mut errors,
    );
    let has_jwt = root.has("jwt");
    let limits = limits(
        &root.section(
            "limits",
            &[
                "enabled",
                "default_limit",
                "default_window_ms",
                "key",
                "missing",
                "trusted_proxies",
                "preflight",
            ],
            &mut errors,
        ),
        env,
        has_jwt,
        &mut errors,
    );
    // Rules are read even when [limits] is bad, so every error shows at once; the config is
    // rejected then anyway, so the stand-in defaults never reach a rule in force.
    let rule_defaults = match &limits {
        Some(l) => super::rules::Defaults {
            key: l.key.clone(),
            missing: l.missing,
            window_ms: l.default.window_ms,
            jwt: root.has("jwt"),
        },
        None => super::rules::Defaults {
            key: KeySource::ip(),
            missing: Missing::Ip,
            window_ms: NonZeroU64::MIN,
            jwt: root.has("jwt"),
        },
    };
    let rules = super::rules::read(&root, &rule_defaults, &mut errors);
    let routes = super::routes::read(&root, proxy.as_ref(), &mut errors);
    if let Some(proxy) = &proxy {
        super::proxy::check_ca_used(&proxy_section, proxy, &routes, &mut errors);
    }
    let jwt = super::keys::jwt(
        &root.section("jwt", super::keys::JWT_KEYS, &mut errors),
        root.span("jwt"),
        &mut errors,
    );
    let privacy = privacy(
        &root.section("privacy", &["clear_keys"], &mut errors),
        &mut errors,
    );
    let headers = headers(
        &root.section("headers", &["style", "body"], &mut errors),
        &mut errors,
    );
    let response = super::response::read(
        &root.section("response", super::response::KEYS, &mut errors),
        &mut errors,
    );
    let metrics = metrics(
        &root.section("metrics", &["max_key_labels"], &mut errors),
        &mut errors,
    );
    let (log, log_level) = super::log::read(
        &root.section("log", super::log::KEYS, &mut errors),
        &mut errors,
    );

    match (proxy, admin, node, limits) {
        (Some(proxy), Some(admin), Some(node), Some(limits)) if errors.errors.is_empty() => {
            Ok(Config {
                server,
                proxy,
                admin,
                node,
                redis,
                limits,
                rules,
                routes,
                jwt: jwt.flatten(),
                privacy,
                headers,
                response,
                metrics,
                log,
                log_level,
            })
        }
        _ => Err(ConfigErrors(errors.into_sorted())),
    }
}

fn server(s: &Section, errors: &mut Collector) -> ServerConfig {
    let default_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = s
        .integer(
            "threads",
            0,
            1024,
            "an integer 0..=1024 (0: one per core)",
            errors,
        )
        .map_or(default_threads, |t| match t.value {
            0 => default_threads,
            n => n as usize,
        });
    let grace = s
        .integer(
            "grace_period_seconds",
            0,
            3600,
            "an integer 0..=3600",
            errors,
        )
        .map_or(5, |g| g.value as u64);
    let path = |key: &str, errors: &mut Collector| {
        let At { value, span } = s.string(key, errors)?;
        if value.is_empty() {
            errors.at(
                span,
                format!("{} {key}: expected a file path, found \"\"", s.name),
            );
            return None;
        }
        Some(PathBuf::from(value))
    };
    let pid_file = path("pid_file", errors);
    let upgrade_socket = path("upgrade_socket", errors);
    if let (Some(p), Some(span)) = (&upgrade_socket, s.span("upgrade_socket")) {
        if p.as_os_str().len() > MAX_SOCKET_PATH {
            errors.at(
                span,
                format!(
                    "{} upgrade_socket: expected a path of at most {MAX_SOCKET_PATH} bytes (a Unix socket's limit), found one of {}",
                    s.name,
                    p.as_os_str().len()
                ),
            );
        }
    }
    ServerConfig {
        threads,
        work_stealing: s.boolean("work_stealing", errors).is_none_or(|v| v.value),
        grace_period: Duration::from_secs(grace),
        pid_file,
        upgrade_socket,
    }
}

/// The longest path a Unix socket address holds (`sun_path`, less its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

fn admin(s: &Section, errors: &mut Collector) -> Option<AdminConfig> {
    let listen = s.socket_addr("listen", "127.0.0.1:9090", errors);
    let token = bearer_token(s, "token", errors);
    let metrics_token = bearer_token(s, "metrics_token", errors);
    let read = s
        .choice(
            "read",
            &[("open", AdminRead::Open), ("token", AdminRead::Token)],
            errors,
        )
        .unwrap_or(AdminRead::Open);
    let tokens = named_tokens(s, token.as_deref(), errors);
    if read == AdminRead::Token && !s.has("token") && tokens.is_empty() {
        errors.at(
            s.span("read").unwrap_or(0..0),
            format!(
                "{} read: \"token\" needs a token to check; expected token or tokens set in {} too, or read = \"open\"",
                s.name, s.name
            ),
        );
    }
    Some(AdminConfig {
        listen: listen?,
        token,
        read,
        metrics_token,
        tokens,
    })
}

/// `tokens = { ops = "...", billing = "..." }`: names like rule names (`admin` is
/// `token`'s), each token valid and used once.
fn named_tokens(s: &Section, admin: Option<&str>, errors: &mut Collector) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, token) in s.string_table("tokens", errors).unwrap_or_default() {
        let why = if !crate::rules::valid_name(&name.value) {
            Some(format!(
                "expected a name of 1 to 64 characters of a-z, 0-9, _ and -, found {:?}",
                name.value
            ))
        } else if name.value == AdminConfig::TOKEN_ACTOR {
            Some("\"admin\" is the name of admin.token; choose another".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            errors.at(name.span, format!("{} tokens: {why}", s.name));
            continue;
        }
        let t = &token.value;
        if !usable_token(t) {
            errors.at(
                token.span,
                format!(
                    "{} tokens: {:?}: expected a non-empty string without spaces or control characters",
                    s.name, name.value
                ),
            );
            continue;
        }
        if admin == Some(t.as_str()) || out.iter().any(|(_, other)| other == t) {
            errors.at(
                token.span,
                format!(
                    "{} tokens: {:?}: the same token as another name (each name needs its own, or the audit log could not tell who made a change)",
                    s.name, name.value
                ),
            );
            continue;
        }
        out.push((name.value, token.value));
    }
    out
}

/// Whether a token can be sent in an `Authorization` header as written: not empty, no space
/// or control character.
fn usable_token(t: &str) -> bool {
    !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A bearer token as written; a bad one is reported and left out.
fn bearer_token(s: &Section, key: &str, errors: &mut Collector) -> Option<String> {
    match s.string(key, errors) {
        Some(At { value, span }) if !usable_token(&value) => {
            errors.at(
                span,
                format!(
                    "{} {key}: expected a non-empty string without spaces or control characters",
                    s.name
                ),
            );
            None
        }
        other => other.map(|t| t.value),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

const NODE_ID_RULE: &str = "expected 1 to 128 visible ASCII characters (no spaces)";

fn node(
    s: &Section,
    listen: Option<SocketAddr>,
    env: Env,
    errors: &mut Collector,
) -> Option<NodeConfig> {
    let mut id = match s.string("id", errors) {
        Some(At { value, span }) if !valid_node_id(&value) => {
            errors.at(
                span,
                format!("{} id: {NODE_ID_RULE}, found {value:?}", s.name),
            );
            None
        }
        Some(v) => Some(v.value),
        None => Some(hostname()),
    };
    if let Some(v) = env("RATELIMITER_NODE_ID") {
        if valid_node_id(&v) {
            id = Some(v);
        } else {
            errors.env(
                "RATELIMITER_NODE_ID",
                format!("{NODE_ID_RULE}, found {v:?}"),
            );
        }
    }

    let mut address = match s.string("address", errors) {
        Some(At { value, span }) => match value.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Some(value),
            _ => {
                errors.at(
                    span,
                    format!(
                        "{} address: expected \"host:port\", found {value:?}",
                        s.name
                    ),
                );
                None
            }
        },
        None => listen.map(|l| l.to_string()),
    };
    if let Some(addr) = address.as_mut() {
        let (mut host, mut port) = match addr.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (addr.clone(), String::new()),
        };
        if let Some(h) = env("RATELIMITER_NODE_HOST") {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.env(
                    "RATELIMITER_NODE_HOST",
                    format!("expected a host name or address, found {h:?}"),
                );
            } else {
                host = h;
            }
        }
        if let Some(p) = env("RATELIMITER_NODE_PORT") {
            if p.parse::<u16>().is_ok() {
                port = p;
            } else {
                errors.env(
                    "RATELIMITER_NODE_PORT",
                    format!("expected a port 0..=65535, found {p:?}"),
                );
            }
        }
        *addr = format!("{host}:{port}");
    }

    let ttl = env_int(
        s,
        "ttl_seconds",
        "RATELIMITER_NODE_TTL_SECONDS",
        1,
        86_400,
        30,
        env,
        errors,
    );
    let heartbeat = env_int(
        s,
        "heartbeat_seconds",
        "RATELIMITER_NODE_HEARTBEAT_SECONDS",
        1,
        86_400,
        10,
        env,
        errors,
    );
    if let (Some(ttl), Some(hb)) = (&ttl, &heartbeat) {
        if hb.value >= ttl.value {
            let message = format!(
                "{} heartbeat_seconds: expected less than ttl_seconds ({}), found {}",
                s.name, ttl.value, hb.value
            );
            match &hb.origin {
                Some(span) => errors.at(span.clone(), message),
                None => match &ttl.origin {
                    Some(span) => errors.at(span.clone(), message),
                    None => errors.env("RATELIMITER_NODE_HEARTBEAT_SECONDS", message),
                },
            }
        }
    }
    Some(NodeConfig {
        id: id?,
        address: address?,
        ttl: Duration::from_secs(ttl?.value as u64),
        heartbeat: Duration::from_secs(heartbeat?.value as u64),
    })
}

/// An integer from the file, overridden by an environment variable.
struct Overridable {
    value: i64,
    /// The file span when the value came from the file, `None` from default or environment.
    origin: Option<reader::Span>,
}

#[allow(clippy::too_many_arguments)]
fn env_int(
    s: &Section,
    key: &str,
    var: &'static str,
    min: i64,
    max: i64,
    default: i64,
    env: Env,
    errors: &mut Collector,
) -> Option<Overridable> {
    let what = format!("an integer {min}..={max}");
    let mut out = match s.has(key) {
        true => s
            .integer(key, min, max, &what, errors)
            .map(|v| Overridable {
                value: v.value,
                origin: Some(v.span),
            }),
        false => Some(Overridable {
            value: default,
            origin: None,
        }),
    };
    if let Some(v) = env(var) {
        match v.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => {
                out = Some(Overridable {
                    value: n,
                    origin: None,
                })
            }
            _ => {
                errors.env(var, format!("expected {what}, found {v:?}"));
                out = None;
            }
        }
    }
    out
}

fn limits(s: &Section, env: Env, has_jwt: bool, errors: &mut Collector) -> Option<LimitsConfig> {
    let enabled = s.boolean("enabled", errors).is_none_or(|v| v.value);
    let limit = env_int(
        s,
        "default_limit",
        "RATELIMITER_DEFAULT_LIMIT",
        1,
        u32::MAX as i64,
        100,
        env,
        errors,
    )
    .and_then(|v| NonZeroU32::new(v.value as u32));
    let window = env_int(
        s,
        "default_window_ms",
        "RATELIMITER_DEFAULT_WINDOW_MS",
        1,
        MAX_WINDOW_MS,
        60_000,
        env,
        errors,
    )
    .and_then(|v| NonZeroU64::new(v.value as u64));
    let key =
        super::keys::source(s, false, has_jwt, errors).map(|k| k.unwrap_or_else(KeySource::ip));
    let missing = super::keys::missing(s, errors);
    let mut trusted_proxies = Vec::new();
    for At { value, span } in s.strings("trusted_proxies", errors).unwrap_or_default() {
        match parse_cidr(&value) {
            Some(net) => trusted_proxies.push(net),
            None => errors.at(span, format!(
                "{} trusted_proxies: expected a CIDR like \"10.0.0.0/8\" or an IP address, found {value:?}", s.name
            )),
        }
    }
    let preflight = s
        .choice("preflight", &Preflight::ALL, errors)
        .unwrap_or_default();
    Some(LimitsConfig {
        enabled,
        default: Quota {
            limit: limit?,
            window_ms: window?,
        },
        key: key?,
        missing: missing?,
        trusted_proxies,
        preflight,
    })
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

fn privacy(s: &Section, errors: &mut Collector) -> PrivacyConfig {
    PrivacyConfig {
        clear_keys: s.boolean("clear_keys", errors).is_some_and(|v| v.value),
    }
}

fn headers(s: &Section, errors: &mut Collector) -> HeadersConfig {
    let style = match s.string("style", errors) {
        None => HeaderStyle::default(),
        Some(At { value, span }) => match value.parse::<HeaderStyle>() {
            Ok(style) => style,
            Err(why) => {
                errors.at(span, format!("{} style: {why}", s.name));
                HeaderStyle::default()
            }
        },
    };
    let problem = s
        .choice("body", &[("json", false), ("problem+json", true)], errors)
        .unwrap_or(false);
    HeadersConfig { style, problem }
}

fn metrics(s: &Section, errors: &mut Collector) -> MetricsConfig {
    MetricsConfig {
        max_key_labels: s
            .integer(
                "max_key_labels",
                0,
                1_000_000,
                "an integer 0..=1000000",
                errors,
            )
            .map_or(1000, |v| v.value as usize),
    }
}
