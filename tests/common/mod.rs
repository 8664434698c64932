//! Real parts for integration tests: `redis-server` processes on free ports, a small HTTP/1.1
//! upstream, the `ratelimiter` binary, and a keep-alive HTTP client that speaks to them on
//! the wire. Everything waits for readiness by polling, never by a fixed sleep.

#![allow(dead_code)]

pub mod http;
pub mod procs;
pub mod upstream;

use std::time::{Duration, Instant};

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

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
