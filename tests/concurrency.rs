//! Concurrency limits and waiting (contract §14), on the wire: real gateways, a real Redis and
//! an upstream that holds `/sleep/<ms>` and `/stream/<ms>` requests and records the most it
//! held at once. Three nodes on one Redis never put more than the concurrency in flight;
//! streams and WebSocket tunnels hold their slot to the end; a client that leaves frees its
//! slot; a node killed frees its slots within `slot_ttl_ms`, one stopped at once; the queue
//! is first in, first out, bounded and timed; `delay` spaces a burst at the rate; Redis hung
//! or killed while slots are held applies `on_error` and leaks nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{get, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::{metric, wait_for};

fn gateway(upstream: &Upstream, store: &str, rules: &str) -> Gateway {
    Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!("{store}\n[limits]\ndefault_limit = 1000000\n\n{rules}"),
    )
}

fn redis_section(redis: &RedisServer) -> String {
    format!("[redis]\nurl = \"{}\"\n", redis.url())
}

fn gpu(concurrency: u32, extra: &str) -> String {
    format!(
        "[[rules]]\nname = \"gpu\"\nkey = \"header:X-Api-Key\"\nconcurrency = {concurrency}\n{extra}\n"
    )
}

fn status(gw: &Gateway, path: &str, key: &str) -> u16 {
    get(&gw.proxy, path, &[("X-Api-Key", key)]).map_or(0, |r| r.status)
}

/// Waits until no slot of `counter_key` is held: a request's slot is freed just after its
/// client has the whole answer, so a next request on a new connection may still meet it.
fn free(gw: &Gateway, counter_key: &str) {
    wait_for("the slots freed", Duration::from_secs(2), || {
        (gw.count(counter_key) == 0).then_some(())
    });
}

/// A request sent on its own connection, answered on another thread.
fn send(gw: &Gateway, path: &str, key: &str) -> std::thread::JoinHandle<(u16, Instant)> {
    let (addr, path, key) = (gw.proxy.clone(), path.to_string(), key.to_string());
    std::thread::spawn(move || {
        let r = get(&addr, &path, &[("X-Api-Key", &key)]).map_or(0, |r| r.status);
        (r, Instant::now())
    })
}

/// A request whose answer is read only as far as its first body bytes: the connection stays
/// open, the response running.
fn open_stream(gw: &Gateway, path: &str, key: &str) -> TcpStream {
    let mut s = TcpStream::connect(&gw.proxy).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    s
}

/// Reads a response to its end (the last chunk), or to the connection's close.
fn read_to_end(mut s: TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !String::from_utf8_lossy(&seen).ends_with("0\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn three_nodes_on_one_redis_never_exceed_the_concurrency() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let rules = gpu(3, "");
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| gateway(&upstream, &redis_section(&redis), &rules))
        .collect();
    // 18 clients, 6 per node, each sending 300 ms requests of one key for 2 s.
    let until = Instant::now() + Duration::from_secs(2);
    let tally = Arc::new(Mutex::new((0usize, 0usize)));
    let clients: Vec<_> = (0..18)
        .map(|i| {
            let addr = nodes[i % 3].proxy.clone();
            let tally = tally.clone();
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let s = get(&addr, "/sleep/300", &[("X-Api-Key", "team-a")])
                        .map_or(0, |r| r.status);
                    let mut t = tally.lock().unwrap();
                    match s {
                        200 => t.0 += 1,
                        429 => t.1 += 1,
                        other => panic!("status {other}"),
                    }
                    drop(t);
                    if s == 429 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (ok, refused) = *tally.lock().unwrap();
    println!(
        "3 nodes, concurrency 3: {ok} answered, {refused} refused, at most {} in flight at the upstream",
        upstream.peak()
    );
    assert_eq!(
        upstream.peak(),
        3,
        "never more than 3 in flight, and 3 used"
    );
    assert!(ok >= 12, "the slots were used: {ok}");
    assert!(refused > 0);
    // Every response has ended: a later wave of three gets in on every node.
    wait_for("the slots to be free", Duration::from_secs(2), || {
        (nodes[0].count("gpu/x-api-key:team-a") == 0).then_some(())
    });
    upstream.reset_peak();
    let wave: Vec<_> = nodes
        .iter()
        .map(|gw| send(gw, "/sleep/300", "team-a"))
        .collect();
    for w in wave {
        assert_eq!(w.join().unwrap().0, 200);
    }
    for gw in &nodes {
        // Freed just after each client has its answer.
        wait_for("the node's gauge at 0", Duration::from_secs(2), || {
            (metric(gw, "ratelimiter_in_flight{rule=\"gpu\"}") == 0.0).then_some(())
        });
    }
}

#[test]
fn streams_and_websockets_hold_their_slot_until_they_end() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    for store in [String::new(), redis_section(&redis)] {
        let gw = gateway(&upstream, &store, &gpu(1, ""));
        // A streamed response: its header and first bytes came, the rest has not.
        let stream = open_stream(&gw, "/stream/800", "k");
        assert_eq!(status(&gw, "/", "k"), 429, "the stream holds the slot");
        assert_eq!(gw.count("gpu/x-api-key:k"), 1, "listed in flight");
        assert!(read_to_end(stream).contains("last"));
        wait_for("the stream's slot", Duration::from_secs(2), || {
            (status(&gw, "/", "k") == 200).then_some(())
        });
        // That request's own slot is freed just after its client has the answer.
        free(&gw, "gpu/x-api-key:k");

        // A WebSocket tunnel holds its slot while open.
        let mut ws = TcpStream::connect(&gw.proxy).unwrap();
        ws.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nX-Api-Key: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        ws.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0; 2048];
        let n = ws.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        ws.write_all(b"ping").unwrap();
        let n = ws.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(status(&gw, "/", "k"), 429, "the tunnel holds the slot");
        drop(ws);
        wait_for("the tunnel's slot", Duration::from_secs(2), || {
            (status(&gw, "/", "k") == 200).then_some(())
        });
    }
}

/// Drops the connection of a request holding the only slot; returns how long until another
/// request gets it (well before the upstream would have answered, or the test fails).
fn freed_after_leaving(gw: &Gateway, held: TcpStream, what: &str) -> Duration {
    assert_eq!(status(gw, "/", "k"), 429, "{what}: the slot is held");
    let left = Instant::now();
    drop(held);
    wait_for(what, Duration::from_secs(3), || {
        (status(gw, "/", "k") == 200).then_some(())
    });
    // That request's own slot is freed just after its answer.
    free(gw, "gpu/x-api-key:k");
    left.elapsed()
}

#[test]
fn a_client_that_leaves_mid_response_frees_its_slot() {
    let upstream = Upstream::start();
    let gw = gateway(&upstream, "", &gpu(1, ""));
    // Mid-response: the stream's first bytes came; the client goes.
    let stream = open_stream(&gw, "/stream/5000", "k");
    let took = freed_after_leaving(&gw, stream, "a client leaving mid-response");
    println!("slot freed {took:?} after the client left mid-response");
    // Before the response: the upstream still thinking.
    let mut waiting = TcpStream::connect(&gw.proxy).unwrap();
    waiting
        .write_all(b"GET /sleep/5000 HTTP/1.1\r\nHost: t\r\nX-Api-Key: k\r\n\r\n")
        .unwrap();
    wait_for("the request in flight", Duration::from_secs(2), || {
        (gw.count("gpu/x-api-key:k") == 1).then_some(())
    });
    let took = freed_after_leaving(&gw, waiting, "a client leaving before the response");
    println!("slot freed {took:?} after a client left before the response");
}

/// Two slots held on `victim` through slow requests; the other node is refused until
/// they free. Returns how long after `stop` they freed, as seen by `other`.
fn slots_freed_after(victim: &mut Gateway, other: &Gateway, stop: &str) -> Duration {
    free(other, "gpu/x-api-key:k");
    let held: Vec<_> = (0..2).map(|_| send(victim, "/sleep/30000", "k")).collect();
    // (Counted from none: both of these hold one.)
    wait_for("two slots held", Duration::from_secs(5), || {
        (other.count("gpu/x-api-key:k") == 2).then_some(())
    });
    assert_eq!(status(other, "/", "k"), 429);
    let stopped = Instant::now();
    victim.signal(stop);
    let took = wait_for("the slots to free", Duration::from_secs(15), || {
        (status(other, "/", "k") == 200).then(|| stopped.elapsed())
    });
    drop(held);
    took
}

#[test]
fn a_node_killed_frees_its_slots_within_the_ttl_and_one_stopped_at_once() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let store = redis_section(&redis);
    let rules = gpu(2, "slot_ttl_ms = 3000");
    let other = gateway(&upstream, &store, &rules);

    // Held past a whole ttl, the slots of a live node stay held: they are renewed.
    let mut victim = gateway(&upstream, &store, &rules);
    let held: Vec<_> = (0..2).map(|_| send(&victim, "/sleep/4500", "k")).collect();
    wait_for("two slots held", Duration::from_secs(5), || {
        (other.count("gpu/x-api-key:k") == 2).then_some(())
    });
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(3800) {
        assert_eq!(status(&other, "/", "k"), 429, "renewed slots stay held");
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in held {
        assert_eq!(h.join().unwrap().0, 200);
    }

    let killed = slots_freed_after(&mut victim, &other, "KILL");
    println!("SIGKILL: slots freed {killed:?} after (slot_ttl_ms = 3000)");
    assert!(
        killed <= Duration::from_millis(3000 + 1000),
        "within the ttl: {killed:?}"
    );
    assert!(
        killed >= Duration::from_millis(1000),
        "not before the ttl: {killed:?}"
    );

    let mut victim = gateway(&upstream, &store, &rules);
    let stopped = slots_freed_after(&mut victim, &other, "TERM");
    println!("SIGTERM: slots freed {stopped:?} after (grace period 1 s)");
    assert!(
        stopped < Duration::from_millis(2500),
        "at once, at the end of the drain: {stopped:?}"
    );
    assert!(victim.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn the_queue_is_first_in_first_out_bounded_and_timed() {
    let upstream = Upstream::start();
    let gw = gateway(
        &upstream,
        "",
        &gpu(1, "queue = { max_waiting = 3, max_wait_ms = 1500 }"),
    );
    // One in flight for 600 ms, then three in line, sent 50 ms apart.
    let first = send(&gw, "/sleep/600", "k");
    wait_for("the first upstream", Duration::from_secs(2), || {
        (upstream.sleeping() == 1).then_some(())
    });
    let mut line = Vec::new();
    for i in 0..3 {
        line.push((i, send(&gw, "/sleep/100", "k")));
        wait_for("the request in line", Duration::from_secs(2), || {
            (metric(&gw, "ratelimiter_queue_waiting{rule=\"gpu\"}") == f64::from(i + 1))
                .then_some(())
        });
    }
    // The line is full: one more is refused at once.
    let refused = Instant::now();
    assert_eq!(status(&gw, "/", "k"), 429);
    assert!(refused.elapsed() < Duration::from_millis(300));
    // Other keys go on while the line waits (one after another on a connection, so that
    // none meets the slot of the one before).
    let other = Instant::now();
    let mut c = Conn::open(&gw.proxy).unwrap();
    for _ in 0..20 {
        assert_eq!(c.get("/", &[("X-Api-Key", "other")]).unwrap().status, 200);
    }
    println!(
        "20 requests of another key in {:?} while 3 wait",
        other.elapsed()
    );
    assert!(other.elapsed() < Duration::from_millis(1000));

    assert_eq!(first.join().unwrap().0, 200);
    let mut done: Vec<(i32, Instant)> = line
        .into_iter()
        .map(|(i, h)| {
            let (status, at) = h.join().unwrap();
            assert_eq!(status, 200, "request {i} waited and got in");
            (i, at)
        })
        .collect();
    done.sort_by_key(|(_, at)| *at);
    let order: Vec<i32> = done.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2], "first in, first out");
    assert_eq!(upstream.peak(), 1);

    // Timed out: the slot stays held past max_wait_ms. (The last response's slot is freed
    // just after its client has it: wait for that, so this one takes the slot at once.)
    free(&gw, "gpu/x-api-key:k");
    let held = send(&gw, "/sleep/3000", "k");
    wait_for("the slot held", Duration::from_secs(2), || {
        (gw.count("gpu/x-api-key:k") == 1).then_some(())
    });
    let waited = Instant::now();
    let r = get(&gw.proxy, "/", &[("X-Api-Key", "k")]).unwrap();
    let took = waited.elapsed();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("1"));
    println!("a timed-out wait took {took:?} (max_wait_ms = 1500)");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(2200));
    assert_eq!(held.join().unwrap().0, 200);
    // Three waited and got in, one timed out; the one refused at once never waited.
    assert_eq!(
        metric(&gw, "ratelimiter_wait_seconds_count{rule=\"gpu\"}"),
        4.0
    );
    assert_eq!(metric(&gw, "ratelimiter_queue_waiting{rule=\"gpu\"}"), 0.0);
}

#[test]
fn the_queue_waits_for_slots_freed_on_other_nodes() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let store = redis_section(&redis);
    let rules = gpu(1, "queue = { max_waiting = 4, max_wait_ms = 3000 }");
    let (a, b) = (
        gateway(&upstream, &store, &rules),
        gateway(&upstream, &store, &rules),
    );
    let held = send(&a, "/sleep/500", "k");
    wait_for("the slot held", Duration::from_secs(2), || {
        (upstream.sleeping() == 1).then_some(())
    });
    let asked = Instant::now();
    let waiting = send(&b, "/", "k");
    let (held_status, freed) = held.join().unwrap();
    let (status, admitted) = waiting.join().unwrap();
    assert_eq!((held_status, status), (200, 200));
    let after = admitted.saturating_duration_since(freed);
    println!(
        "a request waiting on node B got in {after:?} after node A's response ended ({:?} in line)",
        admitted - asked
    );
    assert!(
        after < Duration::from_millis(300),
        "woken, not polled late: {after:?}"
    );
}

#[test]
fn delay_spaces_a_burst_at_the_rate_and_refuses_beyond_max_delay() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    for store in [String::new(), redis_section(&redis)] {
        // 4 per second: a burst of 4, then one every 250 ms; up to 1 s of delay.
        let gw = gateway(
            &upstream,
            &store,
            "[[rules]]\nname = \"smooth\"\nkey = \"header:X-Api-Key\"\nalgorithm = \"gcra\"\nlimit = 4\nwindow_ms = 1000\ndelay = { max_delay_ms = 1000 }\n",
        );
        let start = Instant::now();
        let burst: Vec<_> = (0..12).map(|_| send(&gw, "/", "k")).collect();
        let mut admitted: Vec<Duration> = Vec::new();
        let mut refused = 0;
        for h in burst {
            match h.join().unwrap() {
                (200, at) => admitted.push(at - start),
                (429, _) => refused += 1,
                (s, _) => panic!("status {s}"),
            }
        }
        admitted.sort();
        println!("delay: admitted at {admitted:?}, {refused} refused");
        assert_eq!(admitted.len(), 8, "4 at once and 4 delayed by up to 1 s");
        assert_eq!(refused, 4);
        for (i, at) in admitted.iter().enumerate().skip(4) {
            let due = Duration::from_millis(250 * (i as u64 - 3));
            assert!(
                *at + Duration::from_millis(30) >= due && *at < due + Duration::from_millis(400),
                "request {i} admitted at {at:?}, due at {due:?}"
            );
        }
        assert_eq!(
            metric(&gw, "ratelimiter_wait_seconds_count{rule=\"smooth\"}"),
            4.0,
            "each delayed request observed once"
        );
    }
}

#[test]
fn redis_lost_while_slots_are_held_applies_on_error_and_leaks_nothing() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start();
    for (fault, on_error) in [("hung", "deny"), ("hung", "allow"), ("killed", "deny")] {
        let store = format!(
            "{}timeout_ms = 200\non_error = \"{on_error}\"\n",
            redis_section(&redis)
        );
        let gw = gateway(&upstream, &store, &gpu(2, "slot_ttl_ms = 2000"));
        let held: Vec<_> = (0..2).map(|_| send(&gw, "/sleep/1000", "k")).collect();
        wait_for("two slots held", Duration::from_secs(5), || {
            (gw.count("gpu/x-api-key:k") == 2).then_some(())
        });
        match fault {
            "hung" => redis.pause(),
            _ => redis.stop(),
        }
        let expected = if on_error == "deny" { 503 } else { 200 };
        assert_eq!(
            status(&gw, "/", "k"),
            expected,
            "{fault}, on_error = {on_error}"
        );
        for h in held {
            assert_eq!(h.join().unwrap().0, 200);
        }
        // Their slots could not be freed while Redis was away.
        std::thread::sleep(Duration::from_millis(300));
        match fault {
            "hung" => redis.resume(),
            // Back empty, on the same port: what the node still means to free is gone.
            _ => redis.restart(),
        }
        let back = Instant::now();
        // Nothing leaked: both slots free within the ttl, at the latest.
        wait_for("both slots free", Duration::from_secs(4), || {
            (gw.count("gpu/x-api-key:k") == 0).then_some(())
        });
        println!(
            "Redis {fault}, on_error = {on_error}: both slots free {:?} after Redis came back",
            back.elapsed()
        );
        let both: Vec<_> = (0..2).map(|_| send(&gw, "/sleep/300", "k")).collect();
        wait_for("two slots held again", Duration::from_secs(5), || {
            (gw.count("gpu/x-api-key:k") == 2).then_some(())
        });
        assert_eq!(status(&gw, "/", "k"), 429);
        for h in both {
            assert_eq!(h.join().unwrap().0, 200);
        }
        wait_for("the node's gauge at 0", Duration::from_secs(2), || {
            (metric(&gw, "ratelimiter_in_flight{rule=\"gpu\"}") == 0.0).then_some(())
        });
    }
}

#[test]
fn the_fields_and_the_listing_say_slots() {
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\n[headers]\nstyle = \"both\"\n\n{}",
            gpu(2, "")
        ),
    );
    let held = send(&gw, "/sleep/500", "k");
    wait_for("one slot held", Duration::from_secs(2), || {
        (gw.count("gpu/x-api-key:k") == 1).then_some(())
    });
    let r = get(&gw.proxy, "/", &[("X-Api-Key", "k")]).unwrap();
    assert_eq!(r.status, 200);
    // Counted as this request saw it: the other in flight and itself.
    assert_eq!(r.header("X-RateLimit-Limit"), Some("2"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("0"));
    let policy = r.header("RateLimit-Policy").unwrap();
    assert!(
        policy.contains("\"gpu\";q=2;qu=\"concurrent-requests\""),
        "{policy}"
    );
    assert_eq!(held.join().unwrap().0, 200);
    let limits = get(&gw.admin, "/api/limits", &[]).unwrap();
    let body: serde_json::Value = serde_json::from_str(&limits.body).unwrap();
    let rule = body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "gpu")
        .unwrap()
        .clone();
    assert_eq!(rule["concurrency"], 2);
    assert_eq!(rule["slot_ttl_ms"], 10000);
    assert_eq!(rule["algorithm"], "concurrency");
    assert!(rule["limit"].is_null());
}
