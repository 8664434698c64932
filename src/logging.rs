//! The gateway's own log on stderr, as text or as one JSON object per line (`[log] format`),
//! at the level `[log] level` sets (default `info`, changed by a reload), unless `RUST_LOG` is
//! set (and not empty): then its filter applies, per target as env_logger reads it, and a
//! reload leaves it alone.
//!
//! Private key values stay out of it at every level (contract §17): the gateway's own lines
//! never print header values, query strings or keys, and the debug and trace lines of the
//! libraries underneath, which print whole request headers (pingora) and commands (redis),
//! are dropped unless `[privacy] clear_keys` lets values be shown.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use log::LevelFilter;

use crate::config::LogFormat;

/// Whether private values may be shown (`[privacy] clear_keys`); follows reloads.
static CLEAR_KEYS: AtomicBool = AtomicBool::new(false);

/// The most verbose level written (`LevelFilter as usize`): `[log] level`, or everything when
/// `RUST_LOG` filters instead.
static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

/// Whether `RUST_LOG` filters, so `[log] level` does not.
static FROM_ENV: AtomicBool = AtomicBool::new(false);

/// Puts `[log] level` in force (at start and on reload), unless `RUST_LOG` is set.
pub fn set_level(level: LevelFilter) {
    if FROM_ENV.load(Ordering::Relaxed) {
        return;
    }
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}

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
        let private = metadata.level() <= log::Level::Info
            || !prints_values(metadata.target())
            || CLEAR_KEYS.load(Ordering::Relaxed);
        private && metadata.level() as usize <= LEVEL.load(Ordering::Relaxed)
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

/// `RUST_LOG` when it is set and not empty (an empty one, as `Environment=RUST_LOG=` leaves
/// it, means unset).
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// Sets up the log at `level` (`[log] level`) unless `RUST_LOG` is set; once per process.
pub fn init(format: LogFormat, level: LevelFilter, clear_keys: bool) {
    set_clear_keys(clear_keys);
    let mut builder = env_logger::Builder::new();
    if let Ok(style) = std::env::var("RUST_LOG_STYLE") {
        builder.parse_write_style(&style);
    }
    let from_env = rust_log();
    match &from_env {
        Some(filter) => {
            builder.parse_filters(filter);
        }
        // Everything passes env_logger; `LEVEL`, which a reload can change, decides.
        None => {
            builder.filter_level(LevelFilter::Trace);
        }
    }
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
        if from_env.is_some() {
            FROM_ENV.store(true, Ordering::Relaxed);
            LEVEL.store(LevelFilter::Trace as usize, Ordering::Relaxed);
            log::set_max_level(max);
        } else {
            set_level(level);
        }
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
