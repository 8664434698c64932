//! `POST /api/explain` (contract §7): "what would happen to this request?" A described
//! request goes through the same rule selection as the proxy's, and each counter it would meet
//! is read, recording nothing.
//!
//! ```json
//! {"method":"POST","path":"/login","host":"api.example.com","ip":"10.0.0.1",
//!  "headers":{"X-Api-Key":"k"}}
//! ```
//!
//! `ip` is the TCP peer the request would come from (with `trusted_proxies`, an
//! `X-Forwarded-For` in `headers` is honoured as the proxy would); `method` defaults to `GET`,
//! `path` to `/` and is taken as the proxy takes it, in its normal form (the answer's `path`),
//! a path the proxy would refuse being a 422; `host` defaults to a `Host` in `headers`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Value};

use super::to_json;
use crate::key::RequestView;
use crate::limiter::{Check, Decision, Outcome};
use crate::request::{path, EscapedSlashes};
use crate::rules::{RuleSet, Selection};

/// At most this many headers in a described request.
const MAX_HEADERS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    ip: String,
    headers: Option<BTreeMap<String, String>>,
}

/// A described request, checked.
pub struct ExplainRequest {
    method: Method,
    path: String,
    host: Option<String>,
    ip: IpAddr,
    headers: HeaderMap,
}

/// What the rules make of a described request.
pub struct Plan {
    /// The path the rules saw (the normal form of the one described).
    path: String,
    /// The named rules it matches, in config order.
    matched: Vec<&'static str>,
    /// The matching rule that makes it unlimited.
    unlimited: Option<&'static str>,
    pub checks: Vec<Check>,
}

impl ExplainRequest {
    /// `slashes`: what an escaped slash means, as on the proxy.
    pub fn parse(body: &[u8], slashes: EscapedSlashes) -> Result<ExplainRequest, String> {
        let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
        let method = match raw.method.as_deref().unwrap_or("GET") {
            m if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                Method::from_bytes(m.as_bytes()).map_err(|e| format!("method: {e}"))?
            }
            m => {
                return Err(format!(
                    "method: expected an upper-case HTTP method like \"GET\", found {m:?}"
                ))
            }
        };
        let target = raw.path.unwrap_or_else(|| "/".to_string());
        let sent = target.split('?').next().unwrap_or("");
        if !sent.starts_with('/')
            || target.len() > 8192
            || sent.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(format!(
                "path: expected a request path starting with \"/\", without spaces, at most 8192 bytes, found {target:?}"
            ));
        }
        let path = path::normalize(sent.as_bytes(), slashes)
            .map_err(|e| format!("path: the proxy refuses it with 400: {}", e.message()))?
            .matched
            .into_owned();
        let ip: IpAddr = raw
            .ip
            .parse()
            .map_err(|_| format!("ip: expected an IP address, found {:?}", raw.ip))?;
        let given = raw.headers.unwrap_or_default();
        if given.len() > MAX_HEADERS {
            return Err(format!("headers: at most {MAX_HEADERS}"));
        }
        let mut headers = HeaderMap::with_capacity(given.len());
        for (name, value) in given {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            // Visible ASCII, spaces and tabs: what a request can carry and a key can be made of.
            let printable = value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            let v = HeaderValue::from_str(&value)
                .ok()
                .filter(|_| printable)
                .ok_or_else(|| format!("headers: the value of {name:?} is not a header value"))?;
            headers.append(n, v);
        }
        let host = match raw.host {
            Some(h)
                if h.is_empty() || h.len() > 255 || h.bytes().any(|b| !b.is_ascii_graphic()) =>
            {
                return Err(format!("host: expected a host name, found {h:?}"))
            }
            Some(h) => Some(h),
            None => headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        Ok(ExplainRequest {
            method,
            path,
            host,
            ip,
            headers,
        })
    }

    pub fn plan(&self, rules: &RuleSet) -> Plan {
        let view = RequestView {
            peer: Some(self.ip),
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            headers: &self.headers,
        };
        let matched = rules.matching(&view).iter().map(|r| r.name).collect();
        let (unlimited, checks) = match rules.select(&view) {
            Selection::Unlimited { rule } => (Some(rule), Vec::new()),
            Selection::Checks(checks) => (None, checks),
        };
        Plan {
            path: self.path.clone(),
            matched,
            unlimited,
            checks,
        }
    }
}

impl Plan {
    /// The answer, given what the store read for each check.
    pub fn answer(self, decisions: Vec<Option<Decision>>) -> String {
        let default_applies = self.checks.iter().any(|c| c.rule == "default");
        if let Some(rule) = self.unlimited {
            return to_json(&json!({
                "decision": "unlimited",
                "path": self.path,
                "rule": rule,
                "retry_after_seconds": 0,
                "matched": self.matched,
                "default_applies": false,
                "checks": [],
            }));
        }
        let outcome = Outcome::new(self.checks, decisions);
        let checks: Vec<Value> = outcome
            .iter()
            .map(|(c, d)| {
                json!({
                    "rule": c.rule,
                    "key": c.key,
                    "limit": c.limit.quota.limit.get(),
                    "window_ms": c.limit.quota.window_ms.get(),
                    "algorithm": c.limit.algorithm.name(),
                    "shadow": c.shadow,
                    "allowed": d.map(|d| d.allowed),
                    "count": d.map(|d| d.count),
                    "remaining": d.map(|d| d.remaining),
                    "retry_after_seconds": d.map(|d| d.retry_after_secs()),
                })
            })
            .collect();
        let blocked = !outcome.allowed();
        let rule = outcome.headline().filter(|_| blocked).map(|(c, _)| c.rule);
        to_json(&json!({
            "decision": if blocked { "blocked" } else { "allowed" },
            "path": self.path,
            "rule": rule,
            "retry_after_seconds": outcome.retry_after_secs(),
            "matched": self.matched,
            "default_applies": default_applies,
            "checks": checks,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_descriptions_say_what_is_wrong() {
        for (body, says) in [
            (r#"{}"#, "missing field `ip`"),
            (r#"{"ip":"nope"}"#, "ip: expected an IP address"),
            (r#"{"ip":"10.0.0.1","method":"get"}"#, "method:"),
            (r#"{"ip":"10.0.0.1","path":"login"}"#, "path:"),
            (
                r#"{"ip":"10.0.0.1","headers":{"bad name":"x"}}"#,
                "not a header name",
            ),
            (r#"{"ip":"10.0.0.1","bogus":1}"#, "unknown field"),
        ] {
            let err = ExplainRequest::parse(body.as_bytes(), EscapedSlashes::Reject)
                .err()
                .unwrap();
            assert!(err.contains(says), "{body}: {err}");
        }
        let ok = ExplainRequest::parse(
            br#"{"ip":"::1","path":"/a/../%62?b=c","headers":{"Host":"x.example"}}"#,
            EscapedSlashes::Reject,
        )
        .unwrap();
        assert_eq!(
            (ok.path.as_str(), ok.host.as_deref()),
            ("/b", Some("x.example"))
        );
        let slash = br#"{"ip":"::1","path":"/a/..%2Fb"}"#;
        let err = ExplainRequest::parse(slash, EscapedSlashes::Reject)
            .err()
            .unwrap();
        assert!(err.contains("escaped slash"), "{err}");
        let kept = ExplainRequest::parse(slash, EscapedSlashes::Keep).unwrap();
        assert_eq!(kept.path, "/a/..%2Fb");
    }
}
