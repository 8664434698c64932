//! The gateway's own answer bodies (contract §3.4–3.5, §7 and `POST /check`): the 429 body,
//! the `/check` answer, and the 503 of a fail-closed store. One place, so the proxy and the
//! admin API answer alike. The rate-limit header fields are [`crate::headers`].

use serde::Serialize;

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
    use crate::limiter::{Check, Limit};
    use std::num::{NonZeroU32, NonZeroU64};

    #[test]
    fn blocked_body_matches_the_contract() {
        let d = Decision {
            allowed: false,
            count: 5,
            limit: 5,
            remaining: 0,
            retry_after_ms: 1500,
            reset_ms: 1500,
        };
        let check = Check {
            rule: "login",
            key: "login/ip:10.0.0.1".into(),
            limit: Limit::sliding_log(
                NonZeroU32::new(5).unwrap(),
                NonZeroU64::new(60_000).unwrap(),
            ),
            shadow: false,
            sync: crate::limiter::SyncMode::Exact,
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
