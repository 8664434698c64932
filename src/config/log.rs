//! `[log]` (contract §10): the access log (off, stderr or a file) and the format of every
//! log line, the access log's and the gateway's own.

use super::error::Collector;
use super::reader::{At, Section};
use super::{AccessLog, LogConfig, LogFormat};

pub(super) const KEYS: &[&str] = &["access", "format"];

pub(super) fn read(s: &Section, errors: &mut Collector) -> LogConfig {
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
    LogConfig { access, format }
}
