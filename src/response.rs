//! The gateway's own answers (contract §3.3–3.5 and `POST /check`): limit headers, the 429
//! body, and the 503 of a fail-closed store. One place, so the proxy and the admin API answer
//! alike.

use serde::Serialize;

use crate::limiter::Decision;

/// The JSON body of a decision: the 429 body, and the `/check` answer.
#[derive(Debug, Serialize)]
pub struct DecisionBody {
    pub allowed: bool,
    pub current_count: u64,
    pub remaining: u64,
    pub retry_after_seconds: u64,
}

impl From<&Decision> for DecisionBody {
    fn from(d: &Decision) -> Self {
        DecisionBody {
            allowed: d.allowed,
            current_count: d.count,
            remaining: d.remaining,
            retry_after_seconds: d.retry_after_secs(),
        }
    }
}

/// `X-RateLimit-*` (and `Retry-After` when blocked) for a decision.
pub fn limit_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("X-RateLimit-Limit", d.limit.to_string()),
        ("X-RateLimit-Remaining", d.remaining.to_string()),
    ];
    if !d.allowed {
        // Seconds until a slot frees: both the reset of this key's limit and when to retry.
        let secs = d.retry_after_secs().to_string();
        headers.push(("X-RateLimit-Reset", secs.clone()));
        headers.push(("Retry-After", secs));
    }
    headers
}

/// The request's declared body length, when it sends a valid `Content-Length`.
pub fn declared_length(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The body of a decision, serialized.
pub fn decision_json(d: &Decision) -> String {
    json(&DecisionBody::from(d))
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

    #[test]
    fn blocked_body_and_headers_match_the_contract() {
        let d = Decision {
            allowed: false,
            count: 5,
            limit: 5,
            remaining: 0,
            retry_after_ms: 1500,
        };
        assert_eq!(
            decision_json(&d),
            r#"{"allowed":false,"current_count":5,"remaining":0,"retry_after_seconds":2}"#
        );
        let h = limit_headers(&d);
        assert!(h.contains(&("X-RateLimit-Limit", "5".into())));
        assert!(h.contains(&("X-RateLimit-Remaining", "0".into())));
        assert!(h.contains(&("X-RateLimit-Reset", "2".into())));
        assert!(h.contains(&("Retry-After", "2".into())));
    }

    #[test]
    fn allowed_headers_have_no_retry_after() {
        let d = Decision {
            allowed: true,
            count: 1,
            limit: 5,
            remaining: 4,
            retry_after_ms: 0,
        };
        let h = limit_headers(&d);
        assert_eq!(h.len(), 2);
        assert!(h.contains(&("X-RateLimit-Remaining", "4".into())));
    }
}
