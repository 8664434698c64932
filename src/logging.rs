//! The gateway's own log on stderr, filtered by `RUST_LOG` (default `info`), as text or as one
//! JSON object per line (`[log] format`).
//!
//! Private key values stay out of it at every level (contract §17): the gateway's own lines
//! never print header values, query strings or keys, and the debug and trace lines of the
//! libraries underneath, which print whole request headers (pingora) and commands (redis),
//! are dropped unless `[privacy] clear_keys` lets values be shown.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::LogFormat;

/// Whether private values may be shown (`[privacy] clear_keys`); follows reloads.
static CLEAR_KEYS: AtomicBool = AtomicBool::new(false);

/// Lets (or stops letting) the libraries' debug lines through.
pub fn set_clear_keys(clear: bool) {
    CLEAR_KEYS.store(clear, Ordering::Relaxed);
}

/// Targets whose debug and trace lines may print request headers or Redis commands.
fn prints_values(target: &str) -> bool {
    target.starts_with("pingora") || target == "redis" || target.starts_with("redis::")
}

/// The log behind the filter that keeps private values out.
struct Private(env_logger::Logger);

impl Private {
    fn allowed(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
            || !prints_values(metadata.target())
            || CLEAR_KEYS.load(Ordering::Relaxed)
    }
}

impl log::Log for Private {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.allowed(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.allowed(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Sets up the log; once per process.
pub fn init(format: LogFormat, clear_keys: bool) {
    set_clear_keys(clear_keys);
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.target(env_logger::Target::Stderr);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let logger = builder.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Private(logger))).is_ok() {
        log::set_max_level(max);
    }
    if !clear_keys {
        log::debug!(
            "debug logging: the libraries' debug lines, which print request headers and Redis \
             commands, are left out ([privacy] clear_keys = true lets them in)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_lines_that_print_values_are_told_apart() {
        for target in [
            "pingora_core::protocols::http::v1::server",
            "pingora_proxy",
            "redis",
            "redis::aio",
        ] {
            assert!(prints_values(target), "{target}");
        }
        for target in [
            "ratelimiter::proxy",
            "ratelimiter::redis_conn::topology",
            "redisx",
        ] {
            assert!(!prints_values(target), "{target}");
        }
    }
}
