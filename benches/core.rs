//! Micro-benchmarks of the pure core and the embedded store, each beside a naive baseline
//! measured in the same run:
//!
//! - window arithmetic (`peek`) on a full log, against summing the log (a lower bound on
//!   any per-request work over it);
//! - key extraction (ip, header, trusted X-Forwarded-For, over-long value digest), against
//!   formatting the peer address alone;
//! - rule selection with the default rule alone and with five path rules, against the key
//!   extraction it includes;
//! - the embedded store on one hot key, over 100,000 keys, and from two threads, against one
//!   global mutex around a `HashMap` (the obvious first implementation).
//!
//! - the per-request header work of the proxy path: the forwarding headers on a typical
//!   request, the hop-by-hop filtering and the limit fields on a typical response, each against
//!   cloning the header alone (which every one of them includes).
//!
//! Run: `cargo bench --bench core`. Numbers include only in-process work: no network, no Redis.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::{Arc, Mutex};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use ratelimiter::config::Config;
use ratelimiter::forwarding;
use ratelimiter::headers::{self, HeaderStyle};
use ratelimiter::key::{request_key, KeySource, RequestView};
use ratelimiter::limiter::algo::sliding_log::peek;
use ratelimiter::limiter::backend::memory::MemoryStore;
use ratelimiter::limiter::{Check, Decision, Limit, Mode, Outcome, Quota};

fn quota(limit: u32) -> Quota {
    Quota {
        limit: NonZeroU32::new(limit).unwrap(),
        window_ms: NonZeroU64::new(60_000).unwrap(),
    }
}

fn check(key: &str, limit: u32) -> Check {
    Check {
        rule: "default",
        key: key.to_string(),
        limit: Limit::sliding_log(quota(limit).limit, quota(limit).window_ms),
        shadow: false,
        sync: ratelimiter::limiter::SyncMode::Exact,
    }
}

fn window(c: &mut Criterion) {
    let log: Vec<u64> = (0..100).collect();
    let mut g = c.benchmark_group("window");
    g.bench_function("peek_full_log_100", |b| {
        b.iter(|| peek(black_box(&log), black_box(1_000), quota(100)))
    });
    g.bench_function("baseline_sum_log_100", |b| {
        b.iter(|| black_box(&log).iter().sum::<u64>())
    });
    g.finish();
}

fn keys(c: &mut Criterion) {
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let trusted = vec!["10.0.0.0/8".parse().unwrap()];
    let api = KeySource::Header(HeaderName::from_static("x-api-key"));
    let mut with_key = HeaderMap::new();
    with_key.insert("x-api-key", HeaderValue::from_static("customer-1234"));
    let mut long = HeaderMap::new();
    long.insert(
        "x-api-key",
        HeaderValue::from_str(&"k".repeat(1024)).unwrap(),
    );
    let mut xff = HeaderMap::new();
    xff.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.7, 203.0.113.9, 10.0.0.2"),
    );
    let none = HeaderMap::new();

    let mut g = c.benchmark_group("key");
    g.bench_function("baseline_format_peer", |b| {
        b.iter(|| format!("ip:{}", black_box(peer)))
    });
    g.bench_function("ip", |b| {
        b.iter(|| request_key(&KeySource::Ip, Some(black_box(peer)), &none, &[]))
    });
    g.bench_function("ip_trusted_xff", |b| {
        b.iter(|| request_key(&KeySource::Ip, Some(black_box(peer)), &xff, &trusted))
    });
    g.bench_function("header", |b| {
        b.iter(|| request_key(&api, Some(black_box(peer)), &with_key, &[]))
    });
    g.bench_function("header_1k_digest", |b| {
        b.iter(|| request_key(&api, Some(black_box(peer)), &long, &[]))
    });
    g.finish();
}

/// The naive baseline: one lock for every key.
#[derive(Default)]
struct GlobalMutex(Mutex<HashMap<String, Vec<u64>>>);

impl GlobalMutex {
    fn check(&self, key: &str, limit: usize) -> bool {
        let mut map = self.0.lock().unwrap();
        let log = map.entry(key.to_string()).or_default();
        if log.len() < limit {
            log.push(0);
            true
        } else {
            false
        }
    }
}

fn rules(c: &mut Criterion) {
    let none = HeaderMap::new();
    let view = |path| RequestView {
        peer: Some("10.0.0.1".parse().unwrap()),
        method: &Method::GET,
        host: Some("api.example.com"),
        path,
        headers: &none,
    };
    let alone = Config::parse("b.toml", "", &|_| None).unwrap().rule_set();
    let mut text = String::new();
    for name in ["login", "search", "upload", "admin", "export"] {
        text.push_str(&format!(
            "[[rules]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nlimit = 10\n"
        ));
    }
    let five = Config::parse("b.toml", &text, &|_| None)
        .unwrap()
        .rule_set();
    let mut g = c.benchmark_group("rules");
    g.bench_function("baseline_key_only", |b| {
        b.iter(|| {
            request_key(
                &KeySource::Ip,
                black_box(view("/search/x")).peer,
                &none,
                &[],
            )
        })
    });
    g.bench_function("default_alone", |b| {
        b.iter(|| alone.select(black_box(&view("/search/x"))))
    });
    g.bench_function("five_rules_one_match", |b| {
        b.iter(|| five.select(black_box(&view("/search/x"))))
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let mut g = c.benchmark_group("memory_store");
    g.throughput(Throughput::Elements(1));

    let s = MemoryStore::default();
    let hot = [check("ip:10.0.0.1", 100)];
    g.bench_function("hot_key_blocked", |b| {
        b.iter(|| s.decide_now(&hot, Mode::RECORD))
    });
    let base = GlobalMutex::default();
    g.bench_function("baseline_global_mutex_hot_key", |b| {
        b.iter(|| base.check("ip:10.0.0.1", 100))
    });

    let s = MemoryStore::default();
    let checks: Vec<[Check; 1]> = keys.iter().map(|k| [check(k, 1_000_000)]).collect();
    let mut i = 0;
    g.bench_function("100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % checks.len();
            s.decide_now(&checks[i], Mode::RECORD)
        })
    });
    let base = GlobalMutex::default();
    let mut i = 0;
    g.bench_function("baseline_global_mutex_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            base.check(&keys[i], 1_000_000)
        })
    });
    g.finish();

    // Two threads, distinct keys: what sharding buys over one lock.
    let mut g = c.benchmark_group("memory_store_two_threads");
    g.throughput(Throughput::Elements(2 * 10_000));
    let keys = Arc::new(keys);
    let sharded = Arc::new(MemoryStore::default());
    g.bench_function("sharded", |b| {
        b.iter(|| {
            two_threads(&keys, |k| {
                sharded.decide_now(&[check(k, 1_000_000)], Mode::RECORD);
            })
        })
    });
    let global = Arc::new(GlobalMutex::default());
    g.bench_function("baseline_global_mutex", |b| {
        b.iter(|| {
            two_threads(&keys, |k| {
                global.check(k, 1_000_000);
            })
        })
    });
    g.finish();
}

fn two_threads(keys: &Arc<Vec<String>>, check: impl Fn(&str) + Sync) {
    std::thread::scope(|s| {
        for t in 0..2 {
            let check = &check;
            let keys = keys.clone();
            s.spawn(move || {
                for i in 0..10_000 {
                    check(&keys[(t * 50_000 + i) % keys.len()]);
                }
            });
        }
    });
}

/// A request and a response as pingora reads them from the wire (names with their case kept).
fn wire_headers() -> (RequestHeader, ResponseHeader) {
    let mut req = RequestHeader::build("GET", b"/api/items?page=2", None).unwrap();
    for (k, v) in [
        ("Host", "api.example.com"),
        ("User-Agent", "curl/7.88.1"),
        ("Accept", "*/*"),
    ] {
        req.append_header(k.to_string(), v).unwrap();
    }
    let mut resp = ResponseHeader::build(200, None).unwrap();
    for (k, v) in [
        ("Server", "nginx"),
        ("Date", "Fri, 27 Nov 2026 18:00:00 GMT"),
        ("Content-Type", "application/json"),
        ("Content-Length", "42"),
        ("Connection", "keep-alive"),
    ] {
        resp.append_header(k.to_string(), v).unwrap();
    }
    (req, resp)
}

fn proxy_headers(c: &mut Criterion) {
    let (req, resp) = wire_headers();
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let allowed = Outcome::new(
        vec![check("ip:10.0.0.1", 100)],
        vec![Some(Decision {
            allowed: true,
            count: 3,
            limit: 100,
            remaining: 97,
            retry_after_ms: 0,
            reset_ms: 59_000,
        })],
    );
    let mut g = c.benchmark_group("proxy_headers");
    g.bench_function("forwarding_request", |b| {
        b.iter(|| {
            let mut r = req.clone();
            forwarding::set_forwarded(&mut r, Some(peer), Some(peer), "http").unwrap();
            r
        })
    });
    g.bench_function("baseline_clone_request", |b| b.iter(|| req.clone()));
    g.bench_function("hop_by_hop_response", |b| {
        b.iter(|| {
            let mut r = resp.clone();
            forwarding::strip_hop_by_hop(&mut r);
            r
        })
    });
    g.bench_function("limit_fields_response", |b| {
        b.iter(|| {
            let mut r = resp.clone();
            headers::insert_limit_headers(&mut r, &allowed, HeaderStyle::XRateLimit).unwrap();
            r
        })
    });
    g.bench_function("baseline_clone_response", |b| b.iter(|| resp.clone()));
    g.finish();
}

criterion_group!(benches, window, keys, rules, store, proxy_headers);
criterion_main!(benches);
