//! Micro-benchmarks of the pure core and the embedded store, each beside a naive baseline
//! measured in the same run:
//!
//! - window arithmetic (`peek`) on a full log, against summing the log (a lower bound on
//!   any per-request work over it);
//! - key extraction (ip, header, trusted X-Forwarded-For, over-long value digest, a query
//!   parameter, a cookie, a composite, a JWT claim verified with RS256 and with HS256), against
//!   formatting the peer address alone; the display form of a private key (§17);
//! - rule selection with the default rule alone and with five path rules, against the key
//!   extraction it includes;
//! - the embedded store on one hot key, over 100,000 keys, and from two threads, against one
//!   global mutex around a `HashMap` (the obvious first implementation).
//!
//! - the per-request header work of the proxy path: the forwarding headers on a typical
//!   request, the hop-by-hop filtering and the limit fields on a typical response, each against
//!   cloning the header alone (which every one of them includes).
//!
//! - what a refused request adds to the metrics, against counting a response.
//!
//! Run: `cargo bench --bench core`. Numbers include only in-process work: no network, no Redis.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::{Arc, Mutex};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use ratelimiter::config::Config;
use ratelimiter::forwarding;
use ratelimiter::headers::{self, HeaderStyle};
use ratelimiter::key::jwt::{JwtConfig, KeyFile, Verifier};
use ratelimiter::key::{counter, KeySource, Keys, Missing, Part};
use ratelimiter::limiter::algo::sliding_log::peek;
use ratelimiter::limiter::backend::memory::MemoryStore;
use ratelimiter::limiter::{Check, Decision, Limit, Mode, Outcome, Quota};
use ratelimiter::request::RequestView;

fn quota(limit: u32) -> Quota {
    Quota {
        limit: NonZeroU32::new(limit).unwrap(),
        window_ms: NonZeroU64::new(60_000).unwrap(),
    }
}

fn check(key: &str, limit: u32) -> Check {
    Check {
        cost: 1,
        rule: "default",
        key: key.to_string(),
        limit: Limit::sliding_log(quota(limit).limit, quota(limit).window_ms),
        shadow: false,
        sync: ratelimiter::limiter::SyncMode::Exact,
        wait: Default::default(),
        period_ms: 0,
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

fn view<'a>(peer: IpAddr, headers: &'a HeaderMap, query: Option<&'a [u8]>) -> RequestView<'a> {
    RequestView {
        peer: Some(peer),
        method: &Method::GET,
        host: Some("api.example.com"),
        path: "/",
        query,
        headers,
    }
}

/// The key of one request under one source, as the proxy works it out.
fn key_of(
    source: &KeySource,
    view: &RequestView,
    trusted: &[ipnet::IpNet],
    jwt: Option<&Verifier>,
) -> Option<String> {
    Keys::new(view, trusted, jwt).request_key(source, Missing::Ip)
}

/// A token for the bench keys (`benches/fixtures/`), valid for an hour.
fn token(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some("bench".into());
    let claims = serde_json::json!({"sub":"customer-1234","org":"acme","exp":exp});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn keys(c: &mut Criterion) {
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let trusted = vec!["10.0.0.0/8".parse().unwrap()];
    let ip = KeySource::ip();
    let api = KeySource::parse("header:x-api-key").unwrap();
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
    let mut cookies = HeaderMap::new();
    cookies.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; _ga=GA1.2.3; session=s-1234567890; lang=en"),
    );
    let none = HeaderMap::new();
    let query = b"page=2&api_key=customer-1234&sort=asc".as_slice();
    let composite = KeySource::composite(vec![
        Part::parse("header:x-api-key").unwrap(),
        Part::parse("query:api_key").unwrap(),
    ])
    .unwrap();

    // JWT: an RS256 key pair made for the bench (benches/fixtures/), and an HS256 secret.
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fixtures");
    let rs = Verifier::load(&JwtConfig {
        keys: KeyFile::Jwks(format!("{fixtures}/rs256.jwks.json").into()),
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        issuer: None,
        audience: None,
        leeway_seconds: 30,
    })
    .unwrap();
    let pem = std::fs::read(format!("{fixtures}/rs256.pem")).unwrap();
    let rs_token = token(
        jsonwebtoken::Algorithm::RS256,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    );
    let secret_file =
        std::env::temp_dir().join(format!("ratelimiter-bench-{}", std::process::id()));
    std::fs::write(&secret_file, [42u8; 32]).unwrap();
    let hs = Verifier::load(&JwtConfig {
        keys: KeyFile::Secret(secret_file.clone()),
        algorithms: vec![jsonwebtoken::Algorithm::HS256],
        issuer: None,
        audience: None,
        leeway_seconds: 30,
    })
    .unwrap();
    let _ = std::fs::remove_file(&secret_file);
    let hs_token = token(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(&[42u8; 32]),
    );
    let bearer = |t: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    };
    let (rs_headers, hs_headers) = (bearer(&rs_token), bearer(&hs_token));
    let sub = KeySource::parse("jwt:sub").unwrap();
    assert_eq!(
        key_of(&sub, &view(peer, &rs_headers, None), &[], Some(&rs)).unwrap(),
        "jwt(sub):customer-1234"
    );
    assert_eq!(
        key_of(&sub, &view(peer, &hs_headers, None), &[], Some(&hs)).unwrap(),
        "jwt(sub):customer-1234"
    );

    let mut g = c.benchmark_group("key");
    g.bench_function("baseline_format_peer", |b| {
        b.iter(|| format!("ip:{}", black_box(peer)))
    });
    g.bench_function("ip", |b| {
        b.iter(|| key_of(&ip, &view(black_box(peer), &none, None), &[], None))
    });
    g.bench_function("ip_trusted_xff", |b| {
        b.iter(|| key_of(&ip, &view(black_box(peer), &xff, None), &trusted, None))
    });
    g.bench_function("header", |b| {
        b.iter(|| key_of(&api, &view(black_box(peer), &with_key, None), &[], None))
    });
    g.bench_function("header_1k_digest", |b| {
        b.iter(|| key_of(&api, &view(black_box(peer), &long, None), &[], None))
    });
    let q = KeySource::parse("query:api_key").unwrap();
    g.bench_function("query", |b| {
        b.iter(|| key_of(&q, &view(black_box(peer), &none, Some(query)), &[], None))
    });
    let cookie = KeySource::parse("cookie:session").unwrap();
    g.bench_function("cookie", |b| {
        b.iter(|| key_of(&cookie, &view(black_box(peer), &cookies, None), &[], None))
    });
    g.bench_function("composite_header_query", |b| {
        b.iter(|| {
            key_of(
                &composite,
                &view(black_box(peer), &with_key, Some(query)),
                &[],
                None,
            )
        })
    });
    g.bench_function("jwt_rs256", |b| {
        b.iter(|| {
            key_of(
                &sub,
                &view(black_box(peer), &rs_headers, None),
                &[],
                Some(&rs),
            )
        })
    });
    g.bench_function("jwt_hs256", |b| {
        b.iter(|| {
            key_of(
                &sub,
                &view(black_box(peer), &hs_headers, None),
                &[],
                Some(&hs),
            )
        })
    });
    g.bench_function("display_private", |b| {
        b.iter(|| counter::display(black_box("api/x-api-key:customer-1234")).into_owned())
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
        query: None,
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
    let ip = KeySource::ip();
    g.bench_function("baseline_key_only", |b| {
        b.iter(|| key_of(&ip, &black_box(view("/search/x")), &[], None))
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
            mark: 0,
            delay_ms: 0,
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

/// What a refused request adds to the metrics (`ratelimiter_refused_total`), beside what every
/// response already costs (`ratelimiter_responses_total`).
fn refusal_metrics(c: &mut Criterion) {
    let metrics = ratelimiter::metrics::Metrics::new("bench", 1000).unwrap();
    let mut g = c.benchmark_group("refusal_metrics");
    g.bench_function("count_refusal", |b| {
        b.iter(|| metrics.count_refusal(black_box("login"), "limit"))
    });
    g.bench_function("baseline_count_response", |b| {
        b.iter(|| metrics.count_response(black_box(429)))
    });
    g.finish();
}

criterion_group!(
    benches,
    window,
    keys,
    rules,
    store,
    proxy_headers,
    refusal_metrics
);
criterion_main!(benches);
