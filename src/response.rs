//! The gateway's own answer bodies (contract §3.4–3.5, §7 and `POST /check`): the 429 body,
//! the `/check` answer, and the 503 of a fail-closed store. One place, so the proxy and the
//! admin API answer alike. The rate-limit header fields are [`crate::headers`]; what else the
//! proxy's own answers carry (`[response] headers`) is [`add_own_headers`].

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use serde::Serialize;

use crate::config::ResponseConfig;
use crate::limiter::{Decision, Outcome};

/// The JSON body of a decision: the `/check` answer, and (with `rule`) the 429 body.
#[derive(Debug, Serialize)]
pub struct DecisionBody<'a> {
    pub allowed: bool,
    pub current_count: u64,
    pub remaining: u64,
    pub retry_after_seconds: u64,
    /// The rule the 429 describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
}

impl From<&Decision> for DecisionBody<'_> {
    fn from(d: &Decision) -> Self {
        DecisionBody {
            allowed: d.allowed,
            current_count: d.count,
            remaining: d.remaining,
            retry_after_seconds: d.retry_after_secs(),
            rule: None,
        }
    }
}

/// The fields of its own answers a page may need to read, in the order they are named in
/// `Access-Control-Expose-Headers` (none of them is CORS-safelisted, so a browser hides them
/// from a cross-origin page unless they are exposed).
const OWN_FIELDS: [&str; 7] = [
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
    "X-Request-Id",
];

static EXPOSE: HeaderName = HeaderName::from_static("access-control-expose-headers");

/// Adds to an answer the proxy makes itself (a refusal, a 429, a gateway error, the direct
/// response, pingora's own 400/408/431): the `[response] headers`, and, when those let an
/// origin read the answer without exposing anything themselves,
/// `Access-Control-Expose-Headers` naming the gateway's fields on it, so a page can read
/// `Retry-After` and the limit fields of a 429.
pub fn add_own_headers(resp: &mut ResponseHeader, config: &ResponseConfig) -> pingora::Result<()> {
    for h in &config.headers {
        resp.insert_header(h.name.clone(), h.value.clone())?;
    }
    if config.expose_own_fields {
        let names: Vec<&str> = OWN_FIELDS
            .into_iter()
            .filter(|n| resp.headers.contains_key(*n))
            .collect();
        if !names.is_empty() {
            let value = HeaderValue::from_str(&names.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static("*"));
            resp.insert_header(&EXPOSE, value)?;
        }
    }
    Ok(())
}

/// The request's declared body length, when it sends a valid `Content-Length`.
pub fn declared_length(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The body of one decision (`/check`), serialized.
pub fn decision_json(d: &Decision) -> String {
    json(&DecisionBody::from(d))
}

/// The body of a 429: the rule the headers describe, and the longest wait of the blocking
/// rules.
pub fn blocked_json(outcome: &Outcome) -> String {
    let (rule, count) = outcome
        .headline()
        .map_or(("", 0), |(check, d)| (check.rule, d.count));
    json(&DecisionBody {
        allowed: false,
        current_count: count,
        remaining: 0,
        retry_after_seconds: outcome.retry_after_secs(),
        rule: Some(rule),
    })
}

/// The problem type of a refusal (draft-ietf-httpapi-ratelimit-headers -10, §4.1 of its
/// IANA considerations).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A 429's body as an RFC 9457 problem (`[headers] body = "problem+json"`, contract §16): the
/// problem type, its title, the status, what happened, and the rules that refused the request
/// (`violated-policies`), with the §3 fields kept as extension members.
pub fn problem_json(rules: &[&str], retry_after_seconds: u64, detail: &str) -> String {
    json(&serde_json::json!({
        "type": QUOTA_EXCEEDED,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": detail,
        "violated-policies": rules,
        "retry_after_seconds": retry_after_seconds,
    }))
}

/// The problem+json body of a blocked request: every enforced rule that refused it.
pub fn blocked_problem_json(outcome: &Outcome) -> String {
    let rules: Vec<&str> = outcome
        .visible()
        .filter(|(_, d)| !d.allowed)
        .map(|(c, _)| c.rule)
        .collect();
    let retry = outcome.retry_after_secs();
    problem_json(
        &rules,
        retry,
        &format!(
            "rate limited by rule {}; retry after {retry} s",
            rules.join(", ")
        ),
    )
}

/// The body of the 429 a banned key gets (contract §15): the 429's fields, and that it is
/// a ban.
pub fn banned_json(rule: &str, retry_after_seconds: u64) -> String {
    json(&serde_json::json!({
        "allowed": false,
        "banned": true,
        "remaining": 0,
        "retry_after_seconds": retry_after_seconds,
        "rule": rule,
    }))
}

/// The body of the 503 a fail-closed gateway answers while its store is unreachable.
pub fn store_unavailable_json() -> String {
    error_json("rate limit store unavailable")
}

/// `{"error":"..."}`.
pub fn error_json(message: &str) -> String {
    json(&serde_json::json!({ "error": message }))
}

fn json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; an empty object is a safe fallback anyway.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddedHeader;
    use crate::limiter::{Check, Limit};
    use std::num::{NonZeroU32, NonZeroU64};

    #[test]
    fn own_answers_carry_the_configured_fields_and_what_to_expose() {
        let config = ResponseConfig {
            headers: vec![AddedHeader {
                name: "Access-Control-Allow-Origin".into(),
                value: HeaderValue::from_static("*"),
            }],
            expose_own_fields: true,
        };
        let mut resp = ResponseHeader::build(429, None).unwrap();
        resp.insert_header("Retry-After", "3").unwrap();
        resp.insert_header("X-RateLimit-Limit", "5").unwrap();
        add_own_headers(&mut resp, &config).unwrap();
        assert_eq!(resp.headers["access-control-allow-origin"], "*");
        assert_eq!(
            resp.headers["access-control-expose-headers"],
            "Retry-After, X-RateLimit-Limit"
        );
        // pingora's own 400 has none of the gateway's fields: nothing to expose.
        let mut bare = ResponseHeader::build(400, None).unwrap();
        add_own_headers(&mut bare, &config).unwrap();
        assert!(bare.headers.get("access-control-expose-headers").is_none());
        assert_eq!(bare.headers["access-control-allow-origin"], "*");
    }

    #[test]
    fn blocked_body_matches_the_contract() {
        let d = Decision {
            allowed: false,
            count: 5,
            limit: 5,
            remaining: 0,
            retry_after_ms: 1500,
            reset_ms: 1500,
            mark: 0,
            delay_ms: 0,
        };
        let check = Check {
            cost: 1,
            rule: "login",
            key: "login/ip:10.0.0.1".into(),
            limit: Limit::sliding_log(
                NonZeroU32::new(5).unwrap(),
                NonZeroU64::new(60_000).unwrap(),
            ),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
            wait: Default::default(),
            period_ms: 0,
        };
        assert_eq!(
            decision_json(&d),
            r#"{"allowed":false,"current_count":5,"remaining":0,"retry_after_seconds":2}"#
        );
        assert_eq!(
            blocked_json(&Outcome::new(vec![check], vec![Some(d)])),
            r#"{"allowed":false,"current_count":5,"remaining":0,"retry_after_seconds":2,"rule":"login"}"#
        );
    }
}
