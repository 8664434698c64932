//! gRPC-native answers (contract §18): a gRPC client reads an HTTP 429 or 502 as an unknown
//! transport error, so the gateway's own answers to a gRPC request (`content-type:
//! application/grpc…`) are HTTP 200 "trailers-only" responses carrying a `grpc-status` and a
//! `grpc-message`: a refusal is RESOURCE_EXHAUSTED naming the rule, an upstream that cannot
//! be reached or a store that fails closed UNAVAILABLE, a timeout DEADLINE_EXCEEDED.

use http::HeaderMap;

/// gRPC status codes the gateway answers with.
pub const INVALID_ARGUMENT: u8 = 3;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const RESOURCE_EXHAUSTED: u8 = 8;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;

/// Whether a request is a gRPC call (grpc-web, whose clients cannot read trailers, is not).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|v| {
            v.starts_with(b"application/grpc") && !v.starts_with(b"application/grpc-web")
        })
}

/// The gRPC status of one of the gateway's HTTP answers.
pub fn status_of(http: u16) -> u8 {
    match http {
        429 => RESOURCE_EXHAUSTED,
        502 | 503 => UNAVAILABLE,
        504 | 408 => DEADLINE_EXCEEDED,
        400 | 413 | 431 => INVALID_ARGUMENT,
        _ => INTERNAL,
    }
}

/// A `grpc-message`: percent-encoded as the gRPC spec asks (anything but printable ASCII
/// other than `%`).
pub fn message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        assert_eq!(status_of(429), 8);
        assert_eq!(status_of(503), 14);
        assert_eq!(status_of(502), 14);
        assert_eq!(status_of(504), 4);
        assert_eq!(
            message("rule \"gpu\": 100% full"),
            "rule \"gpu\": 100%25 full"
        );
        assert_eq!(message("ü"), "%C3%BC");
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert(
            "content-type",
            "application/grpc-web+proto".parse().unwrap(),
        );
        assert!(!is_grpc(&h), "grpc-web reads no trailers");
    }
}
