//! Any header bytes and peer: key extraction never panics, and keys are bounded and printable.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratelimiter::key::{request_key, KeySource};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let peer = std::net::IpAddr::from([data[0], data[1], data[2], data[3]]);
    let (xff, api) = data[4..].split_at(data[4..].len() / 2);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(xff) {
        headers.append("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(api) {
        headers.append("x-api-key", v);
    }
    let trusted = ["0.0.0.0/1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    for source in [KeySource::Ip, KeySource::Header(HeaderName::from_static("x-api-key"))] {
        let key = request_key(&source, Some(peer), &headers, &trusted);
        assert!(key.len() <= "x-api-key:".len() + 256, "{key}");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key:?}");
    }
});
