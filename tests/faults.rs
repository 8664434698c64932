//! Faults around the gateway, each made real: an upstream that is down, Redis paused (slow),
//! SIGTERM with requests in flight, hostile bytes on the wire. The gateway must degrade as
//! configured, never hang, never crash, and come back by itself.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{get, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::{free_port, wait_for};

#[test]
fn upstream_down_is_a_fast_502_after_the_limit() {
    let port = free_port(); // nothing listens there
    let gw = Gateway::start(
        &format!("upstreams = [\"127.0.0.1:{port}\"]"),
        "[limits]\ndefault_limit = 3\ndefault_window_ms = 60000\n",
    );
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 502);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "502 took {:?}",
            started.elapsed()
        );
    }
    // The limit was applied before the upstream was tried: the 4th is a 429, not a 502.
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 429);
}

#[test]
fn upstream_that_comes_back_is_used_again_by_the_same_gateway() {
    let port = free_port();
    let gw = Gateway::start(
        &format!("upstreams = [\"127.0.0.1:{port}\"]"),
        "[limits]\ndefault_limit = 1000\n",
    );
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 502);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nback",
            );
        }
    });
    let r = get(&gw.proxy, "/", &[]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "back"));
}

#[test]
fn slow_redis_is_bounded_by_the_timeout() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 100\non_error = \"allow\"\n[limits]\ndefault_limit = 1000\n",
            redis.url()
        ),
    );
    assert_eq!(
        get(&gw.proxy, "/", &[])
            .unwrap()
            .header("X-RateLimit-Limit"),
        Some("1000")
    );
    let before = process_stats(gw.pid());
    // Redis stops answering for 3 s; 40 requests from 8 clients meanwhile.
    let mut conn = redis.conn();
    let redis_clients = |conn: &mut redis::Connection| -> usize {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).unwrap();
        list.lines().count()
    };
    let clients_before = redis_clients(&mut conn);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut conn)
        .unwrap();
    let worst = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, worst, failed) = (gw.proxy.clone(), worst.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr).unwrap();
                for _ in 0..5 {
                    let t = Instant::now();
                    match c.get("/", &[]) {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let took = t.elapsed();
                    let mut w = worst.lock().unwrap();
                    *w = (*w).max(took);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "fail open: every request proxied"
    );
    let worst = *worst.lock().unwrap();
    assert!(
        worst < Duration::from_millis(100 + 400),
        "a request waited {worst:?}"
    );
    // Redis answers again: limited again, by itself.
    wait_for("limiting to resume", Duration::from_secs(10), || {
        get(&gw.proxy, "/", &[])
            .ok()?
            .header("X-RateLimit-Limit")
            .map(|_| ())
    });
    // No pile-up: at most one Redis connection per proxy worker thread (the first request
    // made one of the two), no descriptors or memory left behind.
    assert!(
        redis_clients(&mut conn) <= clients_before + 1,
        "Redis connections grew"
    );
    let after = process_stats(gw.pid());
    // Up to one pooled upstream connection per concurrent client is expected; a pile-up of
    // waiting requests would hold far more.
    assert!(
        after.fds <= before.fds + 8 + 4,
        "fds {} -> {}",
        before.fds,
        after.fds
    );
    assert!(
        after.rss_kb < before.rss_kb * 3 / 2 + 2048,
        "rss {} -> {} kB",
        before.rss_kb,
        after.rss_kb
    );
}

struct ProcessStats {
    rss_kb: u64,
    fds: usize,
}

fn process_stats(pid: u32) -> ProcessStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    ProcessStats { rss_kb, fds }
}

#[test]
fn a_redis_password_is_never_printed() {
    let redis = RedisServer::start();
    let url = format!(
        "redis://ratelimiter:hunter2-secret@127.0.0.1:{}/0",
        redis.port
    );
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!("[redis]\nurl = \"{url}\"\ntimeout_ms = 200\n"),
    );
    // The password is wrong for this Redis, so calls fail and get logged.
    for _ in 0..3 {
        get(&gw.proxy, "/", &[]).unwrap();
    }
    let mut seen = gw.log();
    for path in [
        "/api/limits",
        "/api/nodes",
        "/health",
        "/api/counters",
        "/metrics",
    ] {
        seen.push_str(&get(&gw.admin, path, &[]).unwrap().body);
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .args(["-t", "-c"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    seen.push_str(&String::from_utf8_lossy(&check.stdout));
    assert!(
        seen.contains("rate-limit store failed"),
        "the failure was logged: {seen}"
    );
    assert!(!seen.contains("hunter2"), "the password leaked: {seen}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let up = Upstream::start();
    let mut gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        "[limits]\ndefault_limit = 1000\n",
    );
    // Ten requests that take 600 ms at the upstream, in flight when SIGTERM arrives.
    let started = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (addr, started) = (gw.proxy.clone(), started.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr).unwrap();
                started.fetch_add(1, Ordering::SeqCst);
                c.get("/sleep/600", &[]).map(|r| r.status)
            })
        })
        .collect();
    wait_for("requests in flight", Duration::from_secs(5), || {
        (started.load(Ordering::SeqCst) == 10).then_some(())
    });
    std::thread::sleep(Duration::from_millis(100)); // let them reach the upstream
    gw.signal("TERM");
    for c in clients {
        assert_eq!(
            c.join().unwrap().ok(),
            Some(200),
            "in-flight request completed"
        );
    }
    // The grace period in these tests is 1 s: the process is gone soon after.
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = vec![0; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn hostile_requests_get_4xx_and_the_node_keeps_serving() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[limits]\ndefault_limit = 100000\nkey = \"header:X-Api-Key\"\n",
    );
    let p = &gw.proxy;
    let many: Vec<u8> = (0..5000)
        .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "too many headers",
            [b"GET / HTTP/1.1\r\nHost: x\r\n".as_ref(), &many, b"\r\n"].concat(),
        ),
        (
            "a control byte in a key",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: \xff\xfe\x01\r\n\r\n".to_vec(),
        ),
        (
            "NUL in a key",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: a\x00b\r\n\r\n".to_vec(),
        ),
        (
            "TLS bytes",
            [
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".as_ref(),
                &[b'x'; 100],
                b"\r\n\r\n",
            ]
            .concat(),
        ),
        ("broken request line", b"GET\r\n\r\n".to_vec()),
        (
            "100 KB URL",
            [
                b"GET /".as_ref(),
                &[b'a'; 100_000],
                b" HTTP/1.1\r\nHost: x\r\n\r\n",
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in &cases {
        let status = raw(p, bytes);
        assert!(status.starts_with("HTTP/1.1 4"), "{what}: {status:?}");
    }
    // A 60 KB key value (within proxy.max_header_bytes) and one that is not valid UTF-8 are
    // keyed by their digests and served; a 200 KB one is over the bound.
    let key_request = |value: &[u8]| {
        [
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: ".as_ref(),
            value,
            b"\r\n\r\n",
        ]
        .concat()
    };
    assert_eq!(raw(p, &key_request(&[b'k'; 60_000])), "HTTP/1.1 200 OK");
    assert_eq!(raw(p, &key_request(b"\xff\xfe caf\xe9")), "HTTP/1.1 200 OK");
    assert_eq!(
        raw(p, &key_request(&[b'k'; 200_000])),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let counters: serde_json::Value =
        serde_json::from_str(&get(&gw.admin, "/api/counters", &[]).unwrap().body).unwrap();
    let keys = counters["counters"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{counters}");
    for c in keys {
        let key = c["key"].as_str().unwrap();
        assert!(key.starts_with("x-api-key:sha256:"), "{key}");
        assert!(key.len() <= 11 + 7 + 64, "bounded key: {c}");
    }
    // Half a request, then silence: the node does not wait on it to serve others.
    let mut stalled = TcpStream::connect(p).unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Api")
        .unwrap();
    assert_eq!(get(p, "/", &[("X-Api-Key", "fine")]).unwrap().status, 200);
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}
