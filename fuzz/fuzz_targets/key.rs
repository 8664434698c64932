//! Any header bytes, query and peer, under any source: key extraction never panics, keys are
//! bounded and printable, parse back into their parts, and two different sources or values
//! never give the same key (`ratelimiter::key::counter`).
#![no_main]

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use ratelimiter::key::counter::{parse, split_rule};
use ratelimiter::key::{KeySource, Keys, Missing, Part};
use ratelimiter::request::RequestView;

/// The sources tried, each also as a composite with the next.
const SOURCES: &[&str] = &[
    "ip",
    "ip/64",
    "header:x-api-key",
    "header:ip",
    "header:x-org",
    "query:api_key",
    "cookie:session",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let peer = std::net::IpAddr::from([data[0], data[1], data[2], data[3]]);
    let which = usize::from(data[4]) % SOURCES.len();
    let rest = &data[5..];
    let (a, b) = rest.split_at(rest.len() / 2);
    let mut headers = HeaderMap::new();
    for (name, value) in [("x-forwarded-for", a), ("x-api-key", a), ("ip", b), ("x-org", b), ("cookie", b)] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let view = RequestView {
        peer: Some(peer),
        method: &Method::GET,
        host: None,
        path: "/",
        query: Some(a),
        headers: &headers,
    };
    let trusted = ["0.0.0.0/1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    let one = KeySource::parse(SOURCES[which]).unwrap();
    let next = Part::parse(SOURCES[(which + 1) % SOURCES.len()]).unwrap();
    let both = KeySource::composite(vec![one.parts()[0].clone(), next]).unwrap();
    let mut keys = Keys::new(&view, &trusted, None);
    for (source, parts) in [(&one, 1), (&both, 2)] {
        let key = keys.request_key(source, Missing::Ip).unwrap();
        assert!(key.len() <= 2 * (20 + 3 * 256), "{key}");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key:?}");
        assert_eq!(split_rule(&key).0, None, "{key}");
        let parsed = parse(&key).unwrap_or_else(|| panic!("{key} does not parse"));
        // Every part read, or the client IP's key when one is missing.
        assert!(
            parsed.len() == parts || (parsed.len() == 1 && key.starts_with("ip:")),
            "{key}"
        );
    }
});
