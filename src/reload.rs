//! Reload on SIGHUP (contract §8): the file given with `-c` is read again and, when valid, put
//! in force for the next request; requests in flight finish under the config they started
//! with. An invalid file changes nothing: every error is logged as file:line:col and the
//! reload is counted as failed.
//!
//! Some keys are read once at start (contract §8: the listen addresses, `[redis]`, `[node]
//! id` and `[server]`; also `[log]` access and format, and the client connection bounds of `[proxy]`). A reload that changes one of them names it in the log and keeps its
//! running value; a restart applies it. Everything else takes effect: the rules and limits for
//! the next request, `[node]` address, TTL and heartbeat at the next heartbeat,
//! `metrics.max_key_labels` for keys not labelled yet, `[log] level` at once (unless
//! `RUST_LOG` is in charge), and the HTTPS certificate (its files are read again on every
//! reload, as nginx does) for the next handshake.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::access_log::AccessLog;
use crate::config::{Config, ConfigError, ConfigErrors, Origin, DEFAULTS_NAME};
use crate::live::{Live, LiveConfig};
use crate::metrics::Metrics;
use crate::registry::{iso8601, Registry};
use crate::tenants::audit::{self, Change};
use crate::tenants::Tenants;
use crate::tls::{certified_key, ServerCert};
use serde_json::json;

pub struct Reloader {
    /// The `-c` file; `None`: the built-in defaults (and the environment) are read again.
    path: Option<String>,
    live: Arc<LiveConfig>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// Opened again on every SIGHUP, so a rotated access log file is followed.
    access: Arc<AccessLog>,
    /// The HTTPS listener's certificate, if it listens.
    cert: Option<Arc<ServerCert>>,
    /// Where every reload is written in the audit log.
    tenants: Arc<Tenants>,
}

/// What a successful reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed keys that need a restart, kept at their running values.
    pub kept: Vec<&'static str>,
}

impl Reloader {
    pub fn new(
        path: Option<String>,
        live: Arc<LiveConfig>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        access: Arc<AccessLog>,
        cert: Option<Arc<ServerCert>>,
        tenants: Arc<Tenants>,
    ) -> Self {
        Reloader {
            path,
            live,
            metrics,
            registry,
            access,
            cert,
            tenants,
        }
    }

    fn name(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULTS_NAME)
    }

    /// Reads the config again and puts it in force when valid; counted and logged.
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        self.access.reopen();
        let before = self.live.load().loaded_at;
        let result = self.put_in_force().await;
        match &result {
            Ok(Reloaded { kept }) => {
                for key in kept {
                    log::warn!(
                        "config reload: `{key}` changed, but takes effect only after a restart; \
                         the running value stays"
                    );
                }
                log::info!(
                    "config reloaded from {}: {}",
                    self.name(),
                    self.live.load().config.summary()
                );
            }
            Err(errors) => {
                log::error!(
                    "config reload from {} failed; the running config stays:",
                    self.name()
                );
                for e in &errors.0 {
                    log::error!("{e}");
                }
            }
        }
        // Counted once logged: whoever watches the counter finds the whole story in the log.
        self.metrics.count_reload(result.is_ok());
        let after = match &result {
            Ok(_) => json!({"result": "success", "loaded_at": iso8601(self.live.load().loaded_at)}),
            Err(errors) => json!({
                "result": "failure",
                "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        };
        let change = Change {
            actor: audit::SIGNAL,
            action: "config.reload",
            target: self.name().to_string(),
            before: json!({"loaded_at": iso8601(before)}),
            after,
        };
        if let Err(e) = self.tenants.record(&change).await {
            log::warn!("config reload: could not write the audit log: {e}");
        }
        self.metrics.tenants.changed(change.action);
        result
    }

    async fn put_in_force(&self) -> Result<Reloaded, ConfigErrors> {
        let mut config = Config::load_from(self.path.as_deref())?;
        let running = self.live.load();
        let kept = keep_restart_only(&running.config, &mut config);
        let node = config.node.clone();
        let max_key_labels = config.metrics.max_key_labels;
        let clear_keys = config.privacy.clear_keys;
        let log_level = config.log_level;
        let failed = |message| {
            ConfigErrors(vec![ConfigError {
                origin: Origin::Path(self.name().to_string()),
                message,
            }])
        };
        // Read before anything changes, shown only once the rest is in force too.
        let fresh = match (&self.cert, &config.proxy.tls) {
            (Some(_), Some(tls)) => Some(certified_key(tls).map_err(failed)?),
            _ => None,
        };
        let live = Live::new(config).map_err(failed)?;
        // A new pool starts with every upstream taken as healthy: check them (every route's
        // too) first, so an upstream known to be down gets no requests across the reload.
        futures_util::future::join_all(live.pools().map(|p| p.check_health())).await;
        if let (Some(cert), Some(key)) = (&self.cert, fresh) {
            cert.replace(key);
        }
        self.registry.update(&node);
        self.metrics.set_max_key_labels(max_key_labels);
        self.metrics.set_clear_keys(clear_keys);
        crate::logging::set_clear_keys(clear_keys);
        crate::logging::set_level(log_level);
        self.metrics.config_loaded_at(live.loaded_at);
        self.live.store(live);
        Ok(Reloaded { kept })
    }

    /// Reloads on every SIGHUP, on a thread of its own, for the life of the process. The
    /// handler is in place when this returns.
    pub fn listen(self) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the reload thread: {e}"))?;
        let mut hangups = {
            let _in_runtime = runtime.enter();
            signal(SignalKind::hangup()).map_err(|e| format!("cannot listen for SIGHUP: {e}"))?
        };
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                runtime.block_on(async {
                    while hangups.recv().await.is_some() {
                        log::info!("SIGHUP: reloading {}", self.name());
                        let _ = self.reload().await;
                    }
                })
            })
            .map_err(|e| format!("cannot start the reload thread: {e}"))?;
        Ok(())
    }
}

/// Puts the running value back into `new` for every key that needs a restart, and names the
/// ones that changed.
pub fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    // `node.address` defaults to `proxy.listen`: when the listen address stays, so does an
    // address that only followed it.
    if new.proxy.listen != running.proxy.listen && new.node.address == new.proxy.listen.to_string()
    {
        new.node.address = running.node.address.clone();
    }
    macro_rules! keep {
        ($name:literal, $($field:ident).+) => {
            if new.$($field).+ != running.$($field).+ {
                kept.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("server.threads", server.threads);
    keep!("server.work_stealing", server.work_stealing);
    keep!("server.grace_period_seconds", server.grace_period);
    keep!("proxy.listen", proxy.listen);
    // The HTTPS listener's address (or whether there is one) needs a restart; its certificate
    // files do not.
    if new.proxy.tls.as_ref().map(|t| t.listen) != running.proxy.tls.as_ref().map(|t| t.listen) {
        kept.push("proxy.tls_listen");
        new.proxy.tls = running.proxy.tls.clone();
    }
    // Read where connections are accepted and their headers read.
    keep!("proxy.max_header_bytes", proxy.clients.max_header_bytes);
    keep!("proxy.header_timeout_ms", proxy.clients.header_timeout);
    keep!("proxy.max_connections", proxy.clients.max_connections);
    keep!("proxy.h2c", proxy.h2c);
    keep!("admin.listen", admin.listen);
    keep!("node.id", node.id);
    keep!("redis", redis);
    keep!("log", log);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse("t.toml", text, &|_| None).unwrap()
    }

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let running = parse(
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[node]\nid = \"a\"\n[limits]\ndefault_limit = 5\n",
        );
        let mut new = parse(
            "[server]\nthreads = 7\nwork_stealing = false\ngrace_period_seconds = 9\n[proxy]\nlisten = \"127.0.0.1:9999\"\n[admin]\nlisten = \"127.0.0.1:9998\"\n[node]\nid = \"b\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n[log]\naccess = \"stderr\"\n[limits]\ndefault_limit = 7\n",
        );
        let kept = keep_restart_only(&running, &mut new);
        assert_eq!(
            kept,
            [
                "server.threads",
                "server.work_stealing",
                "server.grace_period_seconds",
                "proxy.listen",
                "admin.listen",
                "node.id",
                "redis",
                "log"
            ]
        );
        assert_eq!(new.admin.listen, running.admin.listen);
        assert_eq!(new.log, running.log);
        assert_eq!(new.server.threads, running.server.threads);
        assert_eq!(new.proxy.listen.port(), 8080);
        // The published address followed the listen address, so it stays with it.
        assert_eq!(new.node.address, "127.0.0.1:8080");
        assert_eq!(new.node.id, "a");
        assert!(new.redis.is_none());
        // What a reload is for goes through.
        assert_eq!(new.limits.default.limit.get(), 7);
    }

    #[test]
    fn the_https_address_needs_a_restart_and_its_certificate_files_do_not() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
        let tls = |listen: &str, cert: &str| {
            parse(&format!(
                "[proxy]\ntls_listen = \"{listen}\"\ntls_cert_file = \"{dir}/{cert}\"\ntls_key_file = \"{dir}/localhost.key\"\n"
            ))
        };
        let running = tls("127.0.0.1:8443", "localhost.pem");
        // Another path to the certificate (a renewal may also rewrite the same file): taken.
        let mut new = tls("127.0.0.1:8443", "./localhost.pem");
        assert!(keep_restart_only(&running, &mut new).is_empty());
        let cert = new
            .proxy
            .tls
            .as_ref()
            .unwrap()
            .cert_file
            .display()
            .to_string();
        assert!(cert.ends_with("/./localhost.pem"), "{cert}");
        // Another address: kept, with the running certificate.
        let mut new = tls("127.0.0.1:9443", "./localhost.pem");
        assert_eq!(keep_restart_only(&running, &mut new), ["proxy.tls_listen"]);
        assert_eq!(new.proxy.tls, running.proxy.tls);
        let mut none = parse("");
        assert_eq!(keep_restart_only(&running, &mut none), ["proxy.tls_listen"]);
        assert_eq!(none.proxy.tls, running.proxy.tls);
    }

    #[test]
    fn the_node_s_address_ttl_and_heartbeat_follow_a_reload() {
        let running = parse("[node]\nttl_seconds = 30\n");
        let mut new = parse(
            "[node]\naddress = \"10.0.0.5:8080\"\nttl_seconds = 20\nheartbeat_seconds = 5\n[metrics]\nmax_key_labels = 10\n",
        );
        assert!(keep_restart_only(&running, &mut new).is_empty());
        assert_eq!(new.node.address, "10.0.0.5:8080");
        assert_eq!(new.node.ttl.as_secs(), 20);
    }

    #[test]
    fn nothing_is_named_when_nothing_that_needs_a_restart_changed() {
        let running = parse("[limits]\ndefault_limit = 5\n");
        let mut new = parse("[limits]\ndefault_limit = 6\n[[rules]]\nname = \"a\"\nlimit = 1\n");
        assert!(keep_restart_only(&running, &mut new).is_empty());
    }
}
