//! Micro-benchmarks of the pure core and the embedded store, each beside a naive baseline
//! measured in the same run:
//!
//! - window arithmetic (`decide`) on a full log, against summing the log (a lower bound on
//!   any per-request work over it);
//! - key extraction (ip, header, trusted X-Forwarded-For, over-long value digest), against
//!   formatting the peer address alone;
//! - the embedded store on one hot key, over 100,000 keys, and from two threads, against one
//!   global mutex around a `HashMap` (the obvious first implementation).
//!
//! Run: `cargo bench --bench core`. Numbers include only in-process work: no network, no Redis.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::{Arc, Mutex};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};
use ratelimiter::config::{KeySource, Quota};
use ratelimiter::key::request_key;
use ratelimiter::limiter::memory::MemoryStore;
use ratelimiter::limiter::window::decide;

fn quota(limit: u32) -> Quota {
    Quota {
        limit: NonZeroU32::new(limit).unwrap(),
        window_ms: NonZeroU64::new(60_000).unwrap(),
    }
}

fn window(c: &mut Criterion) {
    let log: Vec<u64> = (0..100).collect();
    let mut g = c.benchmark_group("window");
    g.bench_function("decide_full_log_100", |b| {
        b.iter(|| decide(black_box(&log), black_box(1_000), 100, 60_000))
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

fn store(c: &mut Criterion) {
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let mut g = c.benchmark_group("memory_store");
    g.throughput(Throughput::Elements(1));

    let s = MemoryStore::default();
    g.bench_function("hot_key_blocked", |b| {
        b.iter(|| s.check_now("ip:10.0.0.1", quota(100)))
    });
    let base = GlobalMutex::default();
    g.bench_function("baseline_global_mutex_hot_key", |b| {
        b.iter(|| base.check("ip:10.0.0.1", 100))
    });

    let s = MemoryStore::default();
    let mut i = 0;
    g.bench_function("100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            s.check_now(&keys[i], quota(1_000_000))
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
                sharded.check_now(k, quota(1_000_000));
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

criterion_group!(benches, window, keys, store);
criterion_main!(benches);
