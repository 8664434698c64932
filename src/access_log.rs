//! The access log (contract §10): one line per request, as text or JSON, to stderr or a file.
//! Lines go through a bounded queue to a thread of their own, so a slow disk never holds up a
//! worker; if the queue is full, lines are dropped and the count is reported. No header value
//! is ever logged (they may be secrets), nor the query string.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AccessLog as Destination, LogConfig, LogFormat};

/// Lines that may wait for the writer.
const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The rule that decided (the one a 429 names, or the allowed rule with the least room).
    pub rule: Option<&'a str>,
    /// `allowed`, `blocked`, `unlimited`, `fail_open`, `fail_closed`, `off`, or `rejected`
    /// (bad framing, answered before any limit).
    pub decision: &'a str,
    pub upstream: Option<&'a str>,
    pub duration_ms: f64,
    pub bytes: usize,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

enum Message {
    Line(String),
    Reopen,
}

/// The access log; `off` costs one branch per request.
pub struct AccessLog {
    tx: Option<SyncSender<Message>>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog {
            tx: None,
            format: LogFormat::Text,
            dropped: Arc::default(),
        }
    }

    /// Opens the destination (a file is created if missing and appended to) and starts the
    /// writer thread.
    pub fn open(config: &LogConfig) -> Result<AccessLog, String> {
        let sink = match &config.access {
            Destination::Off => return Ok(AccessLog::off()),
            Destination::Stderr => Sink::Stderr,
            Destination::File(path) => Sink::File(path.clone(), BufWriter::new(open(path)?)),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink, counted))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(AccessLog {
            tx: Some(tx),
            format: config.format,
            dropped,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, entry: &Entry) {
        let Some(tx) = &self.tx else {
            return;
        };
        let line = match self.format {
            LogFormat::Json => serde_json::to_string(entry).unwrap_or_default(),
            LogFormat::Text => text(entry),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(Message::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens the file again (after it was rotated away); on SIGHUP.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Message::Reopen);
        }
    }
}

fn open(path: &PathBuf) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))
}

enum Sink {
    Stderr,
    File(PathBuf, BufWriter<File>),
}

impl Sink {
    fn out(&mut self) -> Box<dyn Write + '_> {
        match self {
            Sink::Stderr => Box::new(std::io::stderr().lock()),
            Sink::File(_, w) => Box::new(w),
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty.
fn write_lines(rx: Receiver<Message>, mut sink: Sink, dropped: Arc<AtomicU64>) {
    let mut reported = 0;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let mut out = sink.out();
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Message::Reopen => {
                    if let Sink::File(path, w) = &mut sink {
                        let _ = w.flush();
                        match open(path) {
                            Ok(f) => *w = BufWriter::new(f),
                            Err(e) => log::error!("{e}"),
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = sink.out().flush();
        let now = dropped.load(Ordering::Relaxed);
        if now != reported {
            log::warn!(
                "access log: {} lines dropped (the writer could not keep up)",
                now - reported
            );
            reported = now;
        }
    }
}

/// `time client "METHOD path" status rule=.. decision=.. upstream=.. duration_ms=.. bytes=..`
fn text(e: &Entry) -> String {
    let client = e
        .client
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    format!(
        "{} {client} \"{} {}\" {} rule={} decision={} upstream={} duration_ms={:.3} bytes={}",
        humantime::format_rfc3339_millis(e.time),
        escape(e.method),
        escape(e.path),
        e.status,
        e.rule.unwrap_or("-"),
        e.decision,
        e.upstream.unwrap_or("-"),
        e.duration_ms,
        e.bytes
    )
}

/// Quotes, backslashes, spaces and control bytes as `\xHH`, so a line stays one line and
/// its fields stay apart.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_control() || c == ' ' {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds, with a fraction.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str) -> Entry<'a> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: Some("10.0.0.1".parse().unwrap()),
            method: "GET",
            path,
            status: 429,
            rule: Some("login"),
            decision: "blocked",
            upstream: None,
            duration_ms: 0.25,
            bytes: 87,
        }
    }

    #[test]
    fn text_lines_keep_their_fields_apart() {
        assert_eq!(
            text(&entry("/a b\"c\n")),
            "2023-11-14T22:13:20.123Z 10.0.0.1 \"GET /a\\x20b\\x22c\\x0a\" 429 rule=login \
             decision=blocked upstream=- duration_ms=0.250 bytes=87"
        );
    }

    #[test]
    fn json_lines_have_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&entry("/x")).unwrap()).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "10.0.0.1");
        assert_eq!(v["status"], 429);
        assert_eq!(v["rule"], "login");
        assert_eq!(v["decision"], "blocked");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["bytes"], 87);
    }
}
