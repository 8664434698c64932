//! `[response]` (contract §17): headers added to every answer the gateway makes itself (a 429,
//! a refusal, a 413, a 502/503/504, the direct response, and pingora's own 400/408/431), such
//! as CORS headers, so a browser's page can read a refusal.
//!
//! A field that concerns one connection (hop-by-hop) or the message's framing is refused: the
//! gateway frames its answers itself, and a `Connection` or `Transfer-Encoding` added by hand
//! would contradict it. So is a field the gateway sets on these answers itself
//! (`Content-Type`, `Retry-After`, the limit fields, `X-Request-Id`): two values would leave a
//! client to pick one, or break the request's ID.

use http::{HeaderName, HeaderValue};

use super::error::Collector;
use super::reader::{At, Section};
use super::{AddedHeader, ResponseConfig};

pub(super) const KEYS: &[&str] = &["headers"];

/// Hop-by-hop fields (RFC 9110 §7.6.1, and the older ones of RFC 2616 §13.5.1) and framing
/// fields, lower case.
const HOP_OR_FRAMING: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Fields the gateway sets on its own answers, lower case.
const OWN: &[&str] = &[
    "content-type",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "x-request-id",
];

pub(super) fn read(s: &Section, errors: &mut Collector) -> ResponseConfig {
    let mut headers: Vec<AddedHeader> = Vec::new();
    for (written, value) in s.string_table("headers", errors).unwrap_or_default() {
        if !legal_name(s, &written, errors) {
            continue;
        }
        let name = written.value.clone();
        if headers.iter().any(|h| h.name.eq_ignore_ascii_case(&name)) {
            errors.at(
                written.span,
                format!(
                    "{} headers: {:?} is named twice (names ignore case); expected each field once",
                    s.name, written.value
                ),
            );
            continue;
        }
        let At { value, span } = value;
        let legal = value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
            && value.trim_matches([' ', '\t']) == value;
        match HeaderValue::from_str(&value) {
            Ok(value) if legal => headers.push(AddedHeader { name, value }),
            _ => errors.at(
                span,
                format!(
                    "{} headers: {:?}: expected a value of visible ASCII characters, spaces and tabs, not starting or ending with a space, found {value:?}",
                    s.name, written.value
                ),
            ),
        }
    }
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let expose_own_fields =
        has("access-control-allow-origin") && !has("access-control-expose-headers");
    ResponseConfig {
        headers,
        expose_own_fields,
    }
}

/// Whether a name may be added: a legal field name, not hop-by-hop, framing or the gateway's
/// own.
fn legal_name(s: &Section, name: &At<String>, errors: &mut Collector) -> bool {
    let At { value, span } = name;
    let Ok(parsed) = HeaderName::from_bytes(value.as_bytes()) else {
        errors.at(
            span.clone(),
            format!(
                "{} headers: expected a header name (a token like \"Access-Control-Allow-Origin\"), found {value:?}",
                s.name
            ),
        );
        return false;
    };
    let lower = parsed.as_str();
    let why = if HOP_OR_FRAMING.contains(&lower) {
        "is a hop-by-hop or framing field, which the gateway sets for each connection itself"
    } else if OWN.contains(&lower) {
        "is set by the gateway on its own answers"
    } else {
        return true;
    };
    errors.at(
        span.clone(),
        format!(
            "{} headers: {value:?} {why}; expected any other field",
            s.name
        ),
    );
    false
}
