//! Real parts for integration tests: `redis-server` processes on free ports, a small HTTP/1.1
//! upstream, the `ratelimiter` binary, and a keep-alive HTTP client that speaks to them on
//! the wire. Everything waits for readiness by polling, never by a fixed sleep.

#![allow(dead_code)]

pub mod failover;
pub mod frameworks;
pub mod http;
pub mod llm;
pub mod load;
pub mod procs;
pub mod topologies;
pub mod upstream;

use std::time::{Duration, Instant};

/// Milliseconds since the epoch, now (the wall clock the gateway's stores use).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The value of one series in `/metrics` (0 when absent).
pub fn metric(gw: &procs::Gateway, series: &str) -> f64 {
    let text = http::get(&gw.admin, "/metrics", &[]).unwrap().body;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name_and_labels = l.rsplit_once(' ').map_or("", |(n, _)| n);
            // Every label asked for is on the line, whatever else (node_id) is.
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            name_and_labels.starts_with(&format!("{name}{{"))
                && labels
                    .trim_end_matches('}')
                    .split(',')
                    .all(|label| name_and_labels.contains(label))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a request every 5 ms until one is allowed: after a reset through another node, this
/// node forgets the key once the reset's pub/sub message reaches it, a moment after the reset
/// answered. Returns how long that took; panics past `limit`.
pub fn until_allowed(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let status = http::get(addr, path, headers)
            .map(|r| r.status)
            .unwrap_or(0);
        if status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still refused ({status}) {:?} after the reset",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many times Redis ran each of `commands` (lower case, e.g. `evalsha`), from
/// `INFO commandstats`, summed.
pub fn command_calls(conn: &mut redis::Connection, commands: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !commands.contains(&name) {
                return None;
            }
            stats
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A port that was free a moment ago, from below the kernel's ephemeral range.
///
/// Asking the kernel for port 0 would hand out an ephemeral port, and until the process under
/// test binds it, any outgoing connection of the suite may take the same port as its local
/// end: the gateway then cannot listen, or a test talks to the wrong process. Ports below
/// 32768 are never used for outgoing connections; each is handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000; // up to 31999, below the default ephemeral range (32768..)
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another, but start each at its own place in the range.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}
