//! Request IDs and trace ids (contract §17). Each request carries an `X-Request-Id`: the
//! client's, when it sent one valid value, else one made here (32 hex digits of randomness,
//! like nginx's `$request_id`). It goes to the upstream, back to the client, and into the
//! access log. A W3C `traceparent` passes through untouched; its trace id is logged.
//!
//! A client's ID is kept only when it is short and plain, since it is written into the access
//! log and handed to the upstream: 1 to 128 characters of letters, digits and `-_.:+/=@`
//! (UUIDs, ULIDs, nginx's and Envoy's IDs, base64). Anything else, or two values, is replaced.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use rand::RngCore;

/// The field, as written on HTTP/1 (pingora keeps the case of a name given as text).
pub const X_REQUEST_ID: &str = "X-Request-Id";
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The longest client ID kept.
const MAX_LEN: usize = 128;

/// The request's ID: the client's when valid, else a new one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(X_REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(v), None) if valid(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

fn valid(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// 128 random bits as 32 lower-case hex digits.
fn generate() -> HeaderValue {
    let mut bits = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bits);
    let mut hex = [0u8; 32];
    for (i, b) in bits.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    // Hex digits are always a valid field value.
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The trace id of a valid W3C `traceparent` (version `00`, or a later version read as far as
/// `00` goes), as its 32 hex digits.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let mut sent = headers.get_all(&TRACEPARENT).iter();
    let value = match (sent.next(), sent.next()) {
        (Some(v), None) => v.to_str().ok()?,
        _ => return None,
    };
    let b = value.as_bytes();
    // version "-" trace-id "-" parent-id "-" flags
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = &b[0..2];
    let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    let (trace, parent, flags) = (&b[3..35], &b[36..52], &b[53..55]);
    let shape = lower_hex(version)
        && version != b"ff"
        && lower_hex(trace)
        && nonzero(trace)
        && lower_hex(parent)
        && nonzero(parent)
        && lower_hex(flags);
    // Version 00 is exactly 55 characters; a later one may go on after a `-`.
    let end = if version == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    };
    (shape && end).then(|| &value[3..35])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_plain_client_id_is_kept() {
        for id in [
            "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "req:42/a+b=",
        ] {
            assert_eq!(of(&headers(&[("X-Request-Id", id)])), id);
        }
    }

    #[test]
    fn anything_else_is_replaced_by_a_new_id() {
        let long = "a".repeat(129);
        for sent in [
            vec![],
            vec![("X-Request-Id", "")],
            vec![("X-Request-Id", "has space")],
            vec![("X-Request-Id", "quote\"d")],
            vec![("X-Request-Id", long.as_str())],
            vec![("X-Request-Id", "a"), ("X-Request-Id", "b")],
        ] {
            let id = of(&headers(&sent));
            assert_eq!(id.len(), 32, "{sent:?}");
            assert!(id.as_bytes().iter().all(|b| HEX.contains(b)), "{id:?}");
        }
        assert_ne!(of(&HeaderMap::new()), of(&HeaderMap::new()));
    }

    #[test]
    fn the_trace_id_of_a_valid_traceparent() {
        let t = |v: &str| trace_id(&headers(&[("traceparent", v)])).map(str::to_string);
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(t(good).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        // A later version may carry more fields.
        assert!(t("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
