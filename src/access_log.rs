//! The access log (contract §10): one line per request, as text or JSON, to stderr or a file.
//! A request formats its line into a buffer of its thread and appends it to one shared
//! buffer; a writer thread of its own swaps that buffer out and writes it every 100 ms, or
//! sooner once 64 KiB are waiting, as nginx's `access_log ... buffer= flush=` does. So a
//! request costs no system call and no thread wake-up, and a slow disk never holds up a
//! worker: past 16 MiB waiting, lines are dropped and the count is reported. No header value
//! is ever logged (they may be secrets), nor the query string, but for the `Host`, the
//! `User-Agent` (its first 512 bytes, the host its first 256) and the request and trace IDs
//! (contract §17).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::{AccessLog as Destination, LogConfig, LogFormat};
use crate::sync::lock;

/// The longest a line waits before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Waiting bytes that wake the writer early.
const WAKE_AT: usize = 64 * 1024;
/// Waiting bytes past which lines are dropped (the writer cannot keep up).
const MAX_PENDING: usize = 16 * 1024 * 1024;

/// The longest `User-Agent` and `Host` logged, in bytes: a hostile client cannot make each of
/// its lines as long as a request header may be (and crowd other lines out of the buffer).
const MAX_USER_AGENT: usize = 512;
const MAX_HOST: usize = 256;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub client: Option<IpAddr>,
    /// The host the rules judged (the target's authority, else `Host`), its first 256 bytes.
    #[serde(serialize_with = "truncated_host")]
    pub host: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// Whether the client came over TLS.
    pub tls: bool,
    pub status: u16,
    /// The rule that decided (the one a 429 names, or the allowed rule with the least room).
    pub rule: Option<&'a str>,
    /// `allowed`, `blocked`, `unlimited`, `fail_open`, `fail_closed`, `off`, `preflight` (an
    /// exempt CORS preflight), or `rejected` (bad framing, answered before any limit).
    pub decision: &'a str,
    pub upstream: Option<&'a str>,
    /// The route that took the request (contract §18); none: `[proxy] upstreams`.
    pub route: Option<&'a str>,
    /// The status the upstream answered, when one did.
    pub upstream_status: Option<u16>,
    /// From the upstream connection being ready to the end of the response.
    #[serde(serialize_with = "three_decimals_or_null")]
    pub upstream_ms: Option<f64>,
    #[serde(serialize_with = "three_decimals")]
    pub duration_ms: f64,
    /// Request body bytes read from the client.
    pub request_bytes: usize,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    #[serde(serialize_with = "truncated_user_agent")]
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// The trace id of a valid W3C `traceparent`.
    pub trace_id: Option<&'a str>,
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn three_decimals<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round3(*ms))
}

fn three_decimals_or_null<S: serde::Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_f64(round3(*ms)),
        None => s.serialize_none(),
    }
}

/// The first `max` bytes, cut at a character's boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn truncated_user_agent<S: serde::Serializer>(ua: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    match ua {
        Some(ua) => s.serialize_str(truncate(ua, MAX_USER_AGENT)),
        None => s.serialize_none(),
    }
}

fn truncated_host<S: serde::Serializer>(host: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    match host {
        Some(host) => s.serialize_str(truncate(host, MAX_HOST)),
        None => s.serialize_none(),
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// What the requests and the writer share.
struct Shared {
    /// Lines waiting to be written.
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Where lines go; held by whoever writes (the writer thread, or a final flush).
    sink: Mutex<Sink>,
    /// Open the file again before the next write (SIGHUP, after a rotation).
    reopen: AtomicBool,
    dropped: AtomicU64,
}

/// The access log; `off` costs one branch per request.
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    format: LogFormat,
}

thread_local! {
    /// Each thread's line, reused from one request to the next.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog {
            shared: None,
            format: LogFormat::Text,
        }
    }

    /// Opens the destination (a file is created if missing and appended to) and starts the
    /// writer thread.
    pub fn open(config: &LogConfig) -> Result<AccessLog, String> {
        let sink = match &config.access {
            Destination::Off => return Ok(AccessLog::off()),
            Destination::Stderr => Sink::Stderr,
            Destination::File(path) => Sink::File(path.clone(), open(path)?),
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(2 * WAKE_AT)),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
            reopen: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&writer))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(AccessLog {
            shared: Some(shared),
            format: config.format,
        })
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    pub fn write(&self, entry: &Entry) {
        let Some(shared) = &self.shared else {
            return;
        };
        LINE.with_borrow_mut(|line| {
            line.clear();
            let _ = match self.format {
                LogFormat::Json => serde_json::to_writer(&mut *line, entry).map_err(|_| ()),
                LogFormat::Text => text(entry, line).map_err(|_| ()),
            };
            line.push(b'\n');
            let mut pending = lock(&shared.pending);
            if pending.len() + line.len() > MAX_PENDING {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let before = pending.len();
            pending.extend_from_slice(line);
            if before < WAKE_AT && pending.len() >= WAKE_AT {
                shared.wake.notify_one();
            }
        });
    }

    /// Opens the file again (after it was rotated away); on SIGHUP.
    pub fn reopen(&self) {
        if let Some(shared) = &self.shared {
            shared.reopen.store(true, Ordering::Relaxed);
            shared.wake.notify_one();
        }
    }

    /// Writes what is waiting now, from the calling thread (at shutdown). The sink is taken
    /// first, as the writer does: a batch the writer took out is written before this one.
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            let mut sink = lock(&shared.sink);
            let mut lines = std::mem::take(&mut *lock(&shared.pending));
            write_out(shared, &mut sink, &mut lines);
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
    File(PathBuf, File),
}

/// Every 100 ms, or sooner when woken: swap the waiting lines out and write them.
fn write_lines(shared: &Shared) {
    let mut lines = Vec::with_capacity(2 * WAKE_AT);
    let mut reported = 0;
    loop {
        {
            let pending = lock(&shared.pending);
            if pending.len() < WAKE_AT && !shared.reopen.load(Ordering::Relaxed) {
                drop(
                    shared
                        .wake
                        .wait_timeout(pending, FLUSH_EVERY)
                        .map_or_else(|e| e.into_inner().0, |(guard, _)| guard),
                );
            }
        }
        // The sink before the lines (as in `flush`), so batches are written in order.
        let mut sink = lock(&shared.sink);
        std::mem::swap(&mut *lock(&shared.pending), &mut lines);
        write_out(shared, &mut sink, &mut lines);
        drop(sink);
        let now = shared.dropped.load(Ordering::Relaxed);
        if now != reported {
            log::warn!(
                "access log: {} lines dropped (the writer could not keep up)",
                now - reported
            );
            reported = now;
        }
    }
}

/// Writes `lines` (emptied, its capacity kept), opening the file again first if asked.
fn write_out(shared: &Shared, sink: &mut Sink, lines: &mut Vec<u8>) {
    if shared.reopen.swap(false, Ordering::Relaxed) {
        if let Sink::File(path, file) = sink {
            match open(path) {
                Ok(f) => *file = f,
                Err(e) => log::error!("{e}"),
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let written = match sink {
        Sink::Stderr => std::io::stderr().lock().write_all(lines),
        Sink::File(_, file) => file.write_all(lines),
    };
    if let Err(e) = written {
        log_write_error(&e);
    }
    lines.clear();
}

/// A failing write (a full disk) is logged at most once a minute.
fn log_write_error(e: &std::io::Error) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = lock(&LAST);
    if last.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
        log::error!("cannot write the access log: {e}");
        *last = Some(Instant::now());
    }
}

/// `time client "METHOD path" status rule=.. decision=.. upstream=.. duration_ms=.. bytes=..`,
/// then (after the fields of contract §10, so readers of those keep working) `host=..
/// protocol=.. tls=.. upstream_status=.. upstream_ms=.. request_bytes=.. request_id=..
/// trace_id=.. route=.. user_agent=".."`.
fn text(e: &Entry, out: &mut Vec<u8>) -> std::io::Result<()> {
    write!(out, "{} ", humantime::format_rfc3339_millis(e.time))?;
    match e.client {
        Some(ip) => write!(out, "{ip}")?,
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    escape(e.method, true, out);
    out.push(b' ');
    escape(e.path, true, out);
    write!(
        out,
        "\" {} rule={} decision={} upstream={} duration_ms={:.3} bytes={} host=",
        e.status,
        e.rule.unwrap_or("-"),
        e.decision,
        e.upstream.unwrap_or("-"),
        e.duration_ms,
        e.bytes
    )?;
    escape(truncate(e.host.unwrap_or("-"), MAX_HOST), true, out);
    write!(
        out,
        " protocol={} tls={} upstream_status=",
        e.protocol, e.tls
    )?;
    match e.upstream_status {
        Some(code) => write!(out, "{code}")?,
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" upstream_ms=");
    match e.upstream_ms {
        Some(ms) => write!(out, "{ms:.3}")?,
        None => out.push(b'-'),
    }
    write!(out, " request_bytes={} request_id=", e.request_bytes)?;
    escape(e.request_id.unwrap_or("-"), true, out);
    write!(out, " trace_id={}", e.trace_id.unwrap_or("-"))?;
    write!(out, " route={}", e.route.unwrap_or("-"))?;
    match e.user_agent {
        Some(ua) => {
            out.extend_from_slice(b" user_agent=\"");
            escape(truncate(ua, MAX_USER_AGENT), false, out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b" user_agent=-"),
    }
    Ok(())
}

/// Quotes, backslashes, control bytes and (with `spaces`, outside quotes) spaces as `\xHH`,
/// so a line stays one line and its fields stay apart.
fn escape(s: &str, spaces: bool, out: &mut Vec<u8>) {
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_control() || (spaces && c == ' ') {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
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
            host: Some("api.example.com"),
            method: "GET",
            path,
            protocol: "HTTP/1.1",
            tls: false,
            status: 429,
            rule: Some("login"),
            decision: "blocked",
            upstream: None,
            upstream_status: None,
            upstream_ms: None,
            route: None,
            duration_ms: 273.11658900000003,
            request_bytes: 0,
            bytes: 87,
            user_agent: Some("curl/8.5 \"x\""),
            request_id: Some("4f1c"),
            trace_id: None,
        }
    }

    #[test]
    fn text_lines_keep_their_fields_apart() {
        let mut line = Vec::new();
        text(&entry("/a b\"c\n"), &mut line).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2023-11-14T22:13:20.123Z 10.0.0.1 \"GET /a\\x20b\\x22c\\x0a\" 429 rule=login \
             decision=blocked upstream=- duration_ms=273.117 bytes=87 host=api.example.com \
             protocol=HTTP/1.1 tls=false upstream_status=- upstream_ms=- request_bytes=0 \
             request_id=4f1c trace_id=- route=- user_agent=\"curl/8.5\x20\\x22x\\x22\""
        );
    }

    #[test]
    fn lines_reach_the_file_and_follow_a_rotation() {
        let dir = std::env::temp_dir().join(format!("access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(&LogConfig {
            access: Destination::File(path.clone()),
            format: LogFormat::Json,
        })
        .unwrap();
        for p in ["/1", "/2", "/3"] {
            log.write(&entry(p));
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let paths: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
            .collect();
        assert_eq!(paths, ["\"/1\"", "\"/2\"", "\"/3\""]);

        // Rotated away, then reopened: the next lines go to a new file at the path.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.write(&entry("/4"));
        log.flush();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), text);
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"/4\""));
        let _ = std::fs::remove_dir_all(&dir);
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
        // At most 3 decimals: no float noise.
        assert_eq!(v["duration_ms"].to_string(), "273.117");
        assert_eq!(v["host"], "api.example.com");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["tls"], false);
        assert_eq!(v["upstream_status"], serde_json::Value::Null);
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert_eq!(v["request_bytes"], 0);
        assert_eq!(v["user_agent"], "curl/8.5 \"x\"");
        assert_eq!(v["request_id"], "4f1c");
        assert_eq!(v["trace_id"], serde_json::Value::Null);
    }

    #[test]
    fn a_long_user_agent_is_cut_at_a_character() {
        let ua = "é".repeat(400);
        let cut = truncate(&ua, MAX_USER_AGENT);
        assert!(cut.len() <= MAX_USER_AGENT && cut.len() >= MAX_USER_AGENT - 1);
        assert!(ua.starts_with(cut));
    }
}
