//! Steady load through gateways while a Redis master fails, and what it measured: how long
//! each request took, whether the store decided it, and when the first exact decision came
//! back after the fault.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::Conn;
use super::procs::Gateway;
use super::wait_for;

/// One request sent during the run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub took: Duration,
    /// The store decided it (limit headers present), rather than the `on_error` answer.
    pub decided: bool,
    pub status: u16,
}

/// Client threads sending requests one after another, each on its own key and gateway.
pub struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// One client per (gateway, key) pair, sending with the key in `X-Api-Key`.
    pub fn start(gateways: &[&Gateway], keys: &[String]) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for gw in gateways {
            for key in keys {
                let (addr, key) = (gw.proxy.clone(), key.clone());
                let (stop, samples) = (stop.clone(), samples.clone());
                threads.push(std::thread::spawn(move || {
                    let mut conn = Conn::open(&addr).unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        let sent = Instant::now();
                        let r = conn.get("/", &[("X-Api-Key", &key)]).unwrap();
                        samples.lock().unwrap().push(Sample {
                            at: sent - start,
                            took: sent.elapsed(),
                            decided: r.header("X-RateLimit-Limit").is_some(),
                            status: r.status,
                        });
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }));
            }
        }
        Load {
            start,
            stop,
            samples,
            threads,
        }
    }

    /// Time since the load started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the clients and returns every sample.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let samples = self.samples.lock().unwrap();
        samples.clone()
    }
}

/// What the probe saw after the fault.
pub struct Recovery {
    /// When the store decided the probe's key again, on the load's clock.
    pub resumed: Duration,
    /// Whether the gateway's `/health` answered 503 meanwhile.
    pub seen_unhealthy: bool,
}

/// Polls one key through a gateway, and its `/health`, until the store decides the key again.
pub fn first_decision(load: &Load, gw: &Gateway, key: &str, limit: Duration) -> Recovery {
    let mut probe = Conn::open(&gw.proxy).unwrap();
    let mut seen_unhealthy = false;
    let resumed = wait_for("an exact decision again", limit, || {
        let r = probe.get("/", &[("X-Api-Key", key)]).ok()?;
        if r.header("X-RateLimit-Limit").is_some() {
            return Some(load.now());
        }
        let health = super::http::get(&gw.admin, "/health", &[]).ok()?;
        seen_unhealthy |= health.status == 503;
        None
    });
    Recovery {
        resumed,
        seen_unhealthy,
    }
}

/// Prints what a failover measured and checks it: every request was answered (200, as
/// `on_error = "allow"` says) within `timeout_ms` and a margin, `/health` said 503 while the
/// store could not decide, and requests were decided again after the recovery.
pub fn check_and_report(
    what: &str,
    samples: &[Sample],
    fault: Duration,
    recovery: &Recovery,
    timeout_ms: u64,
) {
    let resumed = recovery.resumed;
    let undecided = samples.iter().filter(|s| !s.decided).count();
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "{what}: fault to first exact decision {} ms; {} requests, {} answered by on_error, slowest {} ms",
        (resumed - fault).as_millis(),
        samples.len(),
        undecided,
        slowest.as_millis()
    );
    // The margin covers the gateway's own work and a loaded 2-core machine.
    let bound = Duration::from_millis(timeout_ms + 400);
    for s in samples {
        assert!(
            s.took <= bound,
            "a request sent at {:?} took {:?}",
            s.at,
            s.took
        );
        assert_eq!(s.status, 200, "{s:?}");
    }
    assert!(
        samples.iter().any(|s| s.at > resumed && s.decided),
        "no decision after the failover"
    );
    assert!(recovery.seen_unhealthy, "/health never said 503");
}
