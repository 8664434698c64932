//! Store failure (contract §3.5): Redis stopped mid-test, Redis down at start, Redis back.
//! With `allow` requests pass without limit headers, with `deny` they get 503; neither waits
//! longer than the timeout; when Redis returns, limiting resumes by itself.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, Conn};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::wait_for;

const TIMEOUT_MS: u64 = 100;
/// Scheduling slack for a loaded 2-core CI machine; the bound asserted is timeout + this.
const MARGIN: Duration = Duration::from_millis(400);

fn gateway(redis: &RedisServer, up: &Upstream, on_error: &str) -> Gateway {
    Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = {TIMEOUT_MS}\non_error = \"{on_error}\"\n[limits]\ndefault_limit = 2\ndefault_window_ms = 60000\n",
            redis.url()
        ),
    )
}

fn timed(conn: &mut Conn) -> (u16, bool, Duration) {
    let start = Instant::now();
    let r = conn.get("/", &[]).unwrap();
    (
        r.status,
        r.header("X-RateLimit-Limit").is_some(),
        start.elapsed(),
    )
}

/// Polls until a request is limited again (has limit headers), then checks it is exact.
fn assert_limiting_resumes(gw: &Gateway, redis: &RedisServer) {
    wait_for("limiting to resume", Duration::from_secs(10), || {
        let r = get(&gw.proxy, "/", &[]).ok()?;
        r.header("X-RateLimit-Limit").is_some().then_some(())
    });
    // The restarted Redis lost the script cache; the gateway re-loaded the script itself.
    let mut conn = redis.conn();
    let sha = redis::Script::new(&ratelimiter::limiter::backend::redis::SCRIPT)
        .get_hash()
        .to_string();
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, [true]);
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 429);
}

#[test]
fn fail_open_passes_requests_fast_and_heals() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let gw = gateway(&redis, &up, "allow");
    let mut conn = Conn::open(&gw.proxy).unwrap();
    assert_eq!(timed(&mut conn).0, 200);

    redis.stop();
    for _ in 0..10 {
        let (status, limited, took) = timed(&mut conn);
        assert_eq!(status, 200, "fail open");
        assert!(!limited, "no limit headers without a decision");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "waited {took:?}"
        );
    }
    redis.restart();
    assert_limiting_resumes(&gw, &redis);
    assert!(
        gw.log().contains("rate-limit store failed"),
        "the failure is logged"
    );
}

#[test]
fn fail_closed_answers_503_fast_and_heals() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let gw = gateway(&redis, &up, "deny");
    let mut conn = Conn::open(&gw.proxy).unwrap();
    assert_eq!(timed(&mut conn).0, 200);

    redis.stop();
    let served = up.served();
    for _ in 0..10 {
        let (status, _, took) = timed(&mut conn);
        assert_eq!(status, 503, "fail closed");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "waited {took:?}"
        );
    }
    assert_eq!(up.served(), served, "nothing proxied while denying");
    let r = conn.get("/", &[]).unwrap();
    assert_eq!(r.body, r#"{"error":"rate limit store unavailable"}"#);
    redis.restart();
    assert_limiting_resumes(&gw, &redis);
}

#[test]
fn starts_with_redis_down_and_heals_when_it_comes() {
    let mut redis = RedisServer::start();
    redis.stop();
    let up = Upstream::start();
    let gw = gateway(&redis, &up, "allow");
    assert_eq!(
        get(&gw.admin, "/health", &[]).unwrap().status,
        503,
        "unhealthy at start"
    );
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let (status, limited, took) = timed(&mut conn);
    assert_eq!((status, limited), (200, false));
    assert!(
        took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "waited {took:?}"
    );
    redis.restart();
    assert_limiting_resumes(&gw, &redis);
    assert_eq!(
        get(&gw.admin, "/health", &[]).unwrap().status,
        200,
        "healed"
    );
}

/// Load from several clients while Redis is killed and brought back: with `allow` no request
/// fails or waits past the timeout, and limiting resumes soon after Redis is back.
#[test]
fn redis_killed_under_load_fails_open_and_resumes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = {TIMEOUT_MS}\non_error = \"allow\"\n[limits]\ndefault_limit = 1000000\nkey = \"header:X-Api-Key\"\n",
            redis.url()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (addr, stop, failures, worst) = (
                gw.proxy.clone(),
                stop.clone(),
                failures.clone(),
                worst.clone(),
            );
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                let key = format!("client-{i}");
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    match conn.get("/", &[("X-Api-Key", &key)]) {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            conn = Conn::open(&addr).unwrap();
                        }
                    }
                    let took = t.elapsed();
                    let mut w = worst.lock().unwrap();
                    *w = (*w).max(took);
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_millis(500);
    wait_for("load to run", Duration::from_secs(2), || {
        (Instant::now() > until).then_some(())
    });
    redis.stop();
    let until = Instant::now() + Duration::from_secs(1);
    wait_for("a second without Redis", Duration::from_secs(3), || {
        (Instant::now() > until).then_some(())
    });
    redis.restart();
    let back = Instant::now();
    wait_for("limiting to resume", Duration::from_secs(10), || {
        get(&gw.proxy, "/", &[("X-Api-Key", "probe")])
            .ok()?
            .header("X-RateLimit-Limit")
            .map(|_| ())
    });
    let resumed = back.elapsed();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    eprintln!("limiting resumed {resumed:?} after Redis came back");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request failed while Redis was down"
    );
    let worst = *worst.lock().unwrap();
    assert!(
        worst < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "a request waited {worst:?}"
    );
    assert!(
        resumed < Duration::from_secs(2),
        "limiting resumed only after {resumed:?}"
    );
}
