//! `[log]` (contract §10 and §17): the access log (off, stderr or a file), the format of every
//! log line, the access log's and the gateway's own, and the level of the gateway's own.

use log::LevelFilter;

use super::error::Collector;
use super::reader::{At, Section};
use super::{AccessLog, LogConfig, LogFormat};

pub(super) const KEYS: &[&str] = &["access", "format", "level"];

/// The access log's settings, and the level (`level`).
pub(super) fn read(s: &Section, errors: &mut Collector) -> (LogConfig, LevelFilter) {
    let access = match s.string("access", errors) {
        None => AccessLog::Off,
        Some(At { value, span }) => match value.as_str() {
            "off" => AccessLog::Off,
            "stderr" => AccessLog::Stderr,
            "" => {
                errors.at(
                    span,
                    format!(
                        "{} access: expected \"off\", \"stderr\" or a file path, found \"\"",
                        s.name
                    ),
                );
                AccessLog::Off
            }
            path => AccessLog::File(path.into()),
        },
    };
    let format = s
        .choice(
            "format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            errors,
        )
        .unwrap_or(LogFormat::Text);
    let level = s
        .choice(
            "level",
            &[
                ("error", LevelFilter::Error),
                ("warn", LevelFilter::Warn),
                ("info", LevelFilter::Info),
                ("debug", LevelFilter::Debug),
                ("trace", LevelFilter::Trace),
            ],
            errors,
        )
        .unwrap_or(LevelFilter::Info);
    (LogConfig { access, format }, level)
}
