//! A keep-alive load on a few connections, each sending one request after another on the
//! same connection (a new one when the server said `Connection: close` or closed it), with a
//! tally of what became of every request: for what a stop or an upgrade costs clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::http::Conn;

/// What became of the requests of a load.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Answered, by status.
    pub answered: BTreeMap<u16, usize>,
    /// Sent, then the connection ended without an answer: what a client sees as a failed
    /// request.
    pub lost: usize,
    /// Connections refused (nothing was sent).
    pub refused: usize,
    /// Answers with `Connection: close`.
    pub closed_by_server: usize,
    /// Clients (one connection at a time each) that lost at least one request.
    pub clients_losing: usize,
}

impl Tally {
    pub fn ok(&self) -> usize {
        self.answered.get(&200).copied().unwrap_or(0)
    }

    /// Answers other than 200.
    pub fn failed(&self) -> usize {
        self.answered
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds another tally to this one.
    pub fn add(&mut self, other: &Tally) {
        for (s, n) in &other.answered {
            *self.answered.entry(*s).or_default() += n;
        }
        self.lost += other.lost;
        self.refused += other.refused;
        self.closed_by_server += other.closed_by_server;
        self.clients_losing += other.clients_losing;
    }
}

pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl KeepAliveLoad {
    /// Starts `connections` clients sending `GET path` to `addr`.
    pub fn start(addr: &str, connections: usize, path: &str) -> KeepAliveLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..connections)
            .map(|_| {
                let (addr, path, stop) = (addr.to_string(), path.to_string(), stop.clone());
                std::thread::spawn(move || run(&addr, &path, &stop))
            })
            .collect();
        KeepAliveLoad { stop, workers }
    }

    /// Stops the clients and adds up their tallies.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for w in self.workers {
            total.add(&w.join().unwrap());
        }
        total
    }
}

fn run(addr: &str, path: &str, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(addr) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tally.refused += 1;
                    // Nothing listens: no use hammering.
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        match c.get(path, &[]) {
            Ok(r) => {
                *tally.answered.entry(r.status).or_default() += 1;
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    tally.closed_by_server += 1;
                    conn = None;
                }
            }
            Err(_) => {
                tally.lost += 1;
                conn = None;
            }
        }
    }
    tally.clients_losing = usize::from(tally.lost > 0);
    tally
}
