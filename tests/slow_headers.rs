//! Slow and huge request headers (contract §17, `proxy.max_header_bytes`; the whole-header
//! deadline `proxy.header_timeout_ms`; the cap `proxy.max_connections`): a bounded number of
//! attacking connections, each holding a large unfinished header and trickling a byte at a
//! time, can neither keep a connection past the deadline nor take the node's memory or
//! descriptors, on either port, and `/health` is answered throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::{get, Conn};
use common::procs::Gateway;
use common::upstream::Upstream;
use common::wait_for;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A client sending an unfinished header, then a byte at a time; remembers when the gateway
/// closed it and what it said.
struct Slow {
    stream: TcpStream,
    closed: Option<(Duration, String)>,
}

impl Slow {
    fn open(addr: &str, pad: usize) -> Slow {
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}", "a".repeat(pad));
        // Part of it may wait in the kernel until the gateway accepts the connection.
        stream.set_nonblocking(true).unwrap();
        let _ = stream.write(head.as_bytes());
        Slow {
            stream,
            closed: None,
        }
    }

    /// Sends one more byte and notes a close; `true` while open.
    fn trickle(&mut self, started: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let mut buf = [0u8; 256];
        let seen = match self.stream.read(&mut buf) {
            Ok(0) => Some(String::new()),
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(what) = seen {
            self.closed = Some((started.elapsed(), what));
            return false;
        }
        if let Err(e) = self.stream.write(b"a") {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                self.closed = Some((started.elapsed(), e.to_string()));
                return false;
            }
        }
        true
    }
}

#[test]
fn slow_and_huge_headers_are_cut_and_bound_memory_and_descriptors() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"{}\"]\nmax_header_bytes = 16384\nheader_timeout_ms = 1500\nmax_connections = 40",
            up.addr
        ),
        "",
    );
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);
    let pid = gw.pid();
    let (rss_before, fds_before) = (rss_kib(pid), fds(pid));

    // One header over the bound: 431, on both ports.
    let big = "b".repeat(20_000);
    for addr in [&gw.proxy, &gw.admin] {
        let r = Conn::open(addr)
            .unwrap()
            .get("/health", &[("X-Big", &big)])
            .unwrap();
        assert_eq!(r.status, 431, "{addr}: {r:?}");
    }

    // 150 connections on the proxy port and 20 on the admin port, each with 12 KiB of an
    // unfinished header, then a byte every 200 ms.
    let started = Instant::now();
    let mut slow: Vec<Slow> = (0..150).map(|_| Slow::open(&gw.proxy, 12 * 1024)).collect();
    slow.extend((0..20).map(|_| Slow::open(&gw.admin, 12 * 1024)));
    let (mut peak_fds, mut peak_rss, mut health) = (0, 0, Vec::new());
    while slow.iter().any(|s| s.closed.is_none()) && started.elapsed() < Duration::from_secs(30) {
        for s in slow.iter_mut() {
            s.trickle(started);
        }
        peak_fds = peak_fds.max(fds(pid));
        peak_rss = peak_rss.max(rss_kib(pid));
        let probe = Instant::now();
        let h = get(&gw.admin, "/health", &[])
            .map(|r| r.status)
            .unwrap_or(0);
        health.push((h, probe.elapsed()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    let open = slow.iter().filter(|s| s.closed.is_none()).count();
    assert_eq!(open, 0, "connections still open after {took:?}");
    // Every one was cut with 408 once its header had taken 1.5 s: at the earliest then, and
    // all of them within a few rounds of 40 at a time.
    let first = slow
        .iter()
        .map(|s| s.closed.as_ref().unwrap().0)
        .min()
        .unwrap();
    assert!(
        first >= Duration::from_millis(1400),
        "cut before the deadline: {first:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "the last was cut after {took:?}"
    );
    for s in &slow {
        let (_, said) = s.closed.as_ref().unwrap();
        assert!(said.starts_with("HTTP/1.1 408"), "{said:?}");
    }
    // The cap held the descriptors: at most 40 attacking connections were accepted at once
    // (the admin port's take 20 more), and memory stayed in proportion.
    eprintln!(
        "descriptors {fds_before} -> peak {peak_fds}; RSS {rss_before} KiB -> peak {peak_rss} KiB; cut after {first:?}..{took:?}"
    );
    assert!(
        peak_fds <= fds_before + 40 + 20 + 10,
        "descriptors {fds_before} -> {peak_fds}"
    );
    assert!(
        peak_rss < rss_before + 32 * 1024,
        "memory {rss_before} KiB -> {peak_rss} KiB"
    );
    // The node answered its health checks throughout, and proxies again at once.
    assert!(
        health
            .iter()
            .all(|(status, took)| *status == 200 && *took < Duration::from_secs(1)),
        "{health:?}"
    );
    wait_for("a request to go through", Duration::from_secs(5), || {
        get(&gw.proxy, "/", &[]).ok().filter(|r| r.status == 200)
    });
}

#[test]
fn a_legitimate_client_waits_for_a_slot_instead_of_failing() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"{}\"]\nheader_timeout_ms = 1000\nmax_connections = 5",
            up.addr
        ),
        "",
    );
    // Five idle connections hold every slot (a connection that sends nothing is cut at the
    // header deadline too).
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(&gw.proxy).unwrap())
        .collect();
    let started = Instant::now();
    let r = get(&gw.proxy, "/", &[]).unwrap();
    assert_eq!(r.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "served after {waited:?}"
    );
    drop(idle);
}

/// An HTTP/2 client that finishes TLS, picks `h2`, and then never sends its connection
/// preface is cut at the header deadline, as an HTTP/1 client that sends no request is.
#[test]
fn an_http2_connection_without_its_preface_is_cut_at_the_deadline() {
    let certs = common::topologies::Certs::generate();
    let up = Upstream::start();
    let tls_port = common::free_port();
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"{}\"]\nheader_timeout_ms = 1000\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            up.addr,
            certs.file("server.pem"),
            certs.file("server.key")
        ),
        "",
    );
    wait_for("the TLS listener", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", tls_port)).ok()
    });
    // s_client keeps the connection while its stdin is open and exits once the server closes.
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", "h2", "-connect"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let started = Instant::now();
    let exited = loop {
        if client.try_wait().unwrap().is_some() {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(8) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = client.kill();
    let _ = client.wait();
    let exited = exited.expect("the connection was still open after 8 s");
    assert!(exited >= Duration::from_millis(500), "cut after {exited:?}");
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);
}
