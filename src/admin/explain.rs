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
//! a path the proxy would refuse with 400 (an escaped slash, a malformed escape) being the
//! decision `refused` with its reason (as is a cost header a rule cannot read, naming the
//! rule); `host` defaults to a `Host` in `headers`;
//! `query` (a query string, also taken from `path` after `?`) and `cookies` (name → value)
//! feed `query:` and `cookie:` parts, `headers` every other (`Authorization` for `jwt:`).
//! Each check shows every part of its key, as read from the described request.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Value};

use super::to_json;
use crate::limiter::{Check, Decision, Outcome};
use crate::live::Route;
use crate::request::RequestView;
use crate::request::{path, PathPolicy};
use crate::rules::{RuleSet, Selection};
use crate::tenants::bans;

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
    query: Option<String>,
    cookies: Option<BTreeMap<String, String>>,
}

/// A described request, checked.
pub struct ExplainRequest {
    method: Method,
    path: String,
    /// Why the proxy would refuse the path with 400, before any rule.
    refused: Option<String>,
    host: Option<String>,
    ip: IpAddr,
    query: Option<String>,
    headers: HeaderMap,
}

/// What the rules make of a described request.
pub struct Plan {
    /// The path the rules saw (the normal form of the one described), or the one described
    /// when the proxy refuses it.
    path: String,
    /// Why the proxy would answer 400 instead of applying any rule.
    refused: Option<String>,
    /// The named rules it matches, in config order.
    matched: Vec<&'static str>,
    /// The matching rule that makes it unlimited.
    unlimited: Option<&'static str>,
    pub checks: Vec<Check>,
    /// For each check, every part of its key as read (`null`: missing).
    parts: Vec<Vec<Value>>,
    /// The route that would take it (contract §18); `None`: `[proxy] upstreams`.
    route: Option<&'static str>,
    /// The rule whose ban its key is under, and for how long yet: the proxy answers 429
    /// whatever its counters say (contract §15).
    pub banned: Option<(&'static str, std::time::Duration)>,
}

impl ExplainRequest {
    /// `slashes`: what an escaped slash means, as on the proxy.
    pub fn parse(body: &[u8], paths: PathPolicy) -> Result<ExplainRequest, String> {
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
        let (sent, in_path) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (target.as_str(), None),
        };
        let query = raw.query.or(in_path);
        if query
            .as_ref()
            .is_some_and(|q| q.len() > 8192 || q.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return Err("query: expected a query string without spaces, at most 8192 bytes".into());
        }
        if !sent.starts_with('/')
            || target.len() > 8192
            || sent.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(format!(
                "path: expected a request path starting with \"/\", without spaces, at most 8192 bytes, found {target:?}"
            ));
        }
        let (path, refused) = match path::normalize(sent.as_bytes(), paths) {
            Ok(normal) => (normal.matched.into_owned(), None),
            Err(e) => (sent.to_string(), Some(e.message().to_string())),
        };
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
        let cookies = raw.cookies.unwrap_or_default();
        if cookies.len() > MAX_HEADERS {
            return Err(format!("cookies: at most {MAX_HEADERS}"));
        }
        if !cookies.is_empty() {
            let mut line = Vec::new();
            for (name, value) in &cookies {
                let fine = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
                };
                if !fine(name) || !value.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                    return Err(format!("cookies: {name:?}={value:?} is not a cookie"));
                }
                if !line.is_empty() {
                    line.extend_from_slice(b"; ");
                }
                line.extend_from_slice(format!("{name}={value}").as_bytes());
            }
            let v = HeaderValue::from_bytes(&line)
                .map_err(|_| "cookies: not a Cookie header".to_string())?;
            headers.append(http::header::COOKIE, v);
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
            refused,
            host,
            ip,
            query,
            headers,
        })
    }

    pub fn plan(&self, rules: &RuleSet, routes: &[Route]) -> Plan {
        if let Some(why) = &self.refused {
            return Plan {
                path: self.path.clone(),
                refused: Some(why.clone()),
                matched: Vec::new(),
                unlimited: None,
                checks: Vec::new(),
                parts: Vec::new(),
                route: None,
                banned: None,
            };
        }
        let view = RequestView {
            peer: Some(crate::key::canonical(self.ip)),
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref().map(str::as_bytes),
            headers: &self.headers,
        };
        let matched = rules.matching(&view).iter().map(|r| r.name).collect();
        let route = routes
            .iter()
            .find(|r| r.matcher.matches(&view))
            .map(|r| r.name);
        let (unlimited, checks) = match rules.select(&view) {
            Selection::Unlimited { rule } => (Some(rule), Vec::new()),
            Selection::Skipped => (None, Vec::new()),
            Selection::Checks(checks) => (None, checks),
            Selection::BadCost { rule, why } => {
                return Plan {
                    path: self.path.clone(),
                    refused: Some(format!("rule {rule}: {why}")),
                    matched,
                    unlimited: None,
                    checks: Vec::new(),
                    parts: Vec::new(),
                    route,
                    banned: None,
                }
            }
        };
        // Every part of each applied rule's key, as read from this request.
        let mut keys = rules.keys(&view);
        let parts = checks
            .iter()
            .map(|c| {
                let rule = rules.get(c.rule);
                let source = rule.map(|r| r.key.parts()).unwrap_or_default();
                source
                    .iter()
                    .map(|p| {
                        let read = keys.value_of(p);
                        json!({"source": p.to_string(), "value": read.as_ref().map(|r| r.text())})
                    })
                    .collect()
            })
            .collect();
        Plan {
            path: self.path.clone(),
            refused: None,
            matched,
            unlimited,
            checks,
            parts,
            route,
            banned: None,
        }
    }
}

impl Plan {
    /// The answer, given what the store read for each check.
    pub fn answer(self, decisions: Vec<Option<Decision>>) -> String {
        let default_applies = self.checks.iter().any(|c| c.rule == "default");
        if let Some(why) = self.refused {
            return to_json(&json!({
                "decision": "refused",
                "status": 400,
                "reason": why,
                "path": self.path,
                "route": null,
                "rule": null,
                "retry_after_seconds": 0,
                "matched": self.matched,
                "default_applies": false,
                "checks": [],
            }));
        }
        if let Some(rule) = self.unlimited {
            return to_json(&json!({
                "decision": "unlimited",
                "path": self.path,
                "route": self.route,
                "rule": rule,
                "retry_after_seconds": 0,
                "matched": self.matched,
                "default_applies": false,
                "checks": [],
            }));
        }
        let outcome = Outcome::new(self.checks, decisions);
        let parts = self.parts;
        let checks: Vec<Value> = outcome
            .iter()
            .zip(parts)
            .map(|((c, d), parts)| {
                json!({
                    "rule": c.rule,
                    "key": c.key,
                    "parts": parts,
                    "limit": c.limit.quota.limit.get(),
                    "window_ms": c.limit.quota.window_ms.get(),
                    "algorithm": c.limit.algorithm.name(),
                    "shadow": c.shadow,
                    "cost": c.cost,
                    "allowed": d.map(|d| d.allowed),
                    "count": d.map(|d| d.count),
                    "remaining": d.map(|d| d.remaining),
                    "retry_after_seconds": d.map(|d| d.retry_after_secs()),
                })
            })
            .collect();
        let (decision, rule, retry_after) = match self.banned {
            // As the proxy answers it, whatever the counters say.
            Some((rule, left)) => ("banned", Some(rule), bans::retry_after_secs(left)),
            None if !outcome.allowed() => (
                "blocked",
                outcome.headline().map(|(c, _)| c.rule),
                outcome.retry_after_secs(),
            ),
            None => ("allowed", None, 0),
        };
        to_json(&json!({
            "decision": decision,
            "path": self.path,
            "route": self.route,
            "rule": rule,
            "retry_after_seconds": retry_after,
            "matched": self.matched,
            "default_applies": default_applies,
            "checks": checks,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::EscapedSlashes;

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
            let err = ExplainRequest::parse(body.as_bytes(), EscapedSlashes::Reject.into())
                .err()
                .unwrap();
            assert!(err.contains(says), "{body}: {err}");
        }
        let ok = ExplainRequest::parse(
            br#"{"ip":"::1","path":"/a/../%62?b=c","headers":{"Host":"x.example"}}"#,
            EscapedSlashes::Reject.into(),
        )
        .unwrap();
        assert_eq!(
            (ok.path.as_str(), ok.host.as_deref()),
            ("/b", Some("x.example"))
        );
        let slash = br#"{"ip":"::1","path":"/a/..%2Fb"}"#;
        let refused = ExplainRequest::parse(slash, EscapedSlashes::Reject.into()).unwrap();
        assert!(
            refused
                .refused
                .as_deref()
                .unwrap()
                .contains("escaped slash"),
            "{:?}",
            refused.refused
        );
        assert_eq!(refused.path, "/a/..%2Fb");
        let rules = crate::config::Config::parse("t.toml", "", &|_| None)
            .unwrap()
            .rule_set();
        let plan = refused.plan(&rules, &[]);
        assert!(plan.checks.is_empty());
        assert!(plan
            .answer(Vec::new())
            .starts_with(r#"{"decision":"refused","status":400,"#));
        let kept = ExplainRequest::parse(slash, EscapedSlashes::Keep.into()).unwrap();
        assert_eq!(kept.path, "/a/..%2Fb");
    }
}
