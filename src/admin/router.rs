//! Admin request routing, pure: a method and a path to a [`Route`], or why not (404/405).

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the status page.
    Status,
    Health,
    /// `GET /health/live`: the process serves.
    Live,
    /// `GET /health/ready`: this node should get traffic.
    Ready,
    Nodes,
    Counters,
    Limits,
    Blocks,
    /// `POST /api/counters/{key}/reset`, with the key decoded.
    Reset(String),
    Check,
    Explain,
    Metrics,
    OpenApi,
    /// `GET /api/overrides`: every override set at runtime.
    Overrides,
    /// `PUT` or `DELETE /api/overrides/{rule}/{value}`, decoded.
    Override {
        put: bool,
        rule: String,
        value: String,
    },
    /// `GET /api/audit`: the audit log.
    Audit,
    /// `GET /api/bans`: the bans in force.
    Bans,
    /// `PUT` or `DELETE /api/bans/{rule}/{value}`, decoded.
    Ban {
        put: bool,
        rule: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path exists with these methods only (the `Allow` header).
    MethodNotAllowed(&'static str),
    /// A reset path whose key is empty or does not decode.
    BadKey(String),
}

const COUNTERS_PREFIX: &str = "/api/counters/";
const OVERRIDES_PREFIX: &str = "/api/overrides/";
const BANS_PREFIX: &str = "/api/bans/";

/// `PUT` (true) or `DELETE` of `{rule}/{value}`, both decoded and not empty.
fn keyed(method: &str, rest: &str, what: &str) -> Result<(bool, String, String), Miss> {
    let put = match method {
        "PUT" => true,
        "DELETE" => false,
        _ => return Err(Miss::MethodNotAllowed("PUT, DELETE")),
    };
    let (rule, value) = rest
        .split_once('/')
        .ok_or_else(|| Miss::BadKey(format!("expected /api/{what}/{{rule}}/{{value}}")))?;
    let decode = |raw: &str, part: &str| {
        let v = percent_decode_str(raw).decode_utf8().map_err(|_| {
            Miss::BadKey(format!(
                "the {part} is not valid UTF-8 once percent-decoded"
            ))
        })?;
        match v.is_empty() {
            true => Err(Miss::BadKey(format!("the {part} is empty"))),
            false => Ok(v.into_owned()),
        }
    };
    Ok((put, decode(rule, "rule")?, decode(value, "value")?))
}
const RESET_SUFFIX: &str = "/reset";

pub fn route(method: &str, path_and_query: &str) -> Result<Route, Miss> {
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    let fixed = match path {
        "/" => Some(("GET", Route::Status)),
        "/health" => Some(("GET", Route::Health)),
        "/health/live" => Some(("GET", Route::Live)),
        "/health/ready" => Some(("GET", Route::Ready)),
        "/api/nodes" => Some(("GET", Route::Nodes)),
        "/api/counters" => Some(("GET", Route::Counters)),
        "/api/limits" => Some(("GET", Route::Limits)),
        "/api/blocks" => Some(("GET", Route::Blocks)),
        "/check" => Some(("POST", Route::Check)),
        "/api/explain" => Some(("POST", Route::Explain)),
        "/metrics" => Some(("GET", Route::Metrics)),
        "/openapi.json" => Some(("GET", Route::OpenApi)),
        "/api/overrides" => Some(("GET", Route::Overrides)),
        "/api/audit" => Some(("GET", Route::Audit)),
        "/api/bans" => Some(("GET", Route::Bans)),
        _ => None,
    };
    if let Some((allowed, route)) = fixed {
        // HEAD is answered wherever GET is (the body left out by the caller).
        return match (allowed, method) {
            (a, m) if a == m => Ok(route),
            ("GET", "HEAD") => Ok(route),
            ("GET", _) => Err(Miss::MethodNotAllowed("GET, HEAD")),
            _ => Err(Miss::MethodNotAllowed(allowed)),
        };
    }
    // `/api/overrides/{rule}/{value}` and `/api/bans/{rule}/{value}`: the value is everything
    // after the rule's `/`.
    if let Some(rest) = path.strip_prefix(OVERRIDES_PREFIX) {
        let (put, rule, value) = keyed(method, rest, "overrides")?;
        return Ok(Route::Override { put, rule, value });
    }
    if let Some(rest) = path.strip_prefix(BANS_PREFIX) {
        let (put, rule, value) = keyed(method, rest, "bans")?;
        return Ok(Route::Ban { put, rule, value });
    }
    // Everything between `/api/counters/` and the final `/reset` is the key.
    if let Some(raw) = path
        .strip_prefix(COUNTERS_PREFIX)
        .and_then(|rest| rest.strip_suffix(RESET_SUFFIX))
    {
        if method != "POST" {
            return Err(Miss::MethodNotAllowed("POST"));
        }
        let key = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| Miss::BadKey("the key is not valid UTF-8 once percent-decoded".into()))?;
        if key.is_empty() {
            return Err(Miss::BadKey("the key is empty".into()));
        }
        return Ok(Route::Reset(key.into_owned()));
    }
    Err(Miss::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_contract_paths() {
        assert_eq!(route("GET", "/"), Ok(Route::Status));
        assert_eq!(route("GET", "/?refresh=1"), Ok(Route::Status));
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(route("GET", "/health/live"), Ok(Route::Live));
        assert_eq!(route("HEAD", "/health/ready?x=1"), Ok(Route::Ready));
        assert_eq!(route("GET", "/api/nodes?x=1"), Ok(Route::Nodes));
        assert_eq!(route("POST", "/check"), Ok(Route::Check));
        assert_eq!(route("POST", "/api/explain"), Ok(Route::Explain));
        assert_eq!(route("GET", "/metrics"), Ok(Route::Metrics));
    }

    #[test]
    fn reset_keys_raw_or_percent_encoded() {
        let want = Ok(Route::Reset("ip:10.0.0.1".into()));
        assert_eq!(route("POST", "/api/counters/ip:10.0.0.1/reset"), want);
        assert_eq!(route("POST", "/api/counters/ip%3A10.0.0.1/reset"), want);
        // A key may itself hold slashes; only the final /reset ends it.
        assert_eq!(
            route("POST", "/api/counters/x-api-key:a/b/reset/reset"),
            Ok(Route::Reset("x-api-key:a/b/reset".into()))
        );
        assert_eq!(
            route("POST", "/api/counters/x-api-key:a%2Fb/reset"),
            Ok(Route::Reset("x-api-key:a/b".into()))
        );
    }

    #[test]
    fn misses() {
        assert_eq!(route("GET", "/nope"), Err(Miss::NotFound));
        assert_eq!(
            route("POST", "/health"),
            Err(Miss::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(
            route("DELETE", "/health/ready"),
            Err(Miss::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(route("GET", "/health/"), Err(Miss::NotFound));
        assert_eq!(route("GET", "/health/other"), Err(Miss::NotFound));
        assert_eq!(route("HEAD", "/api/counters?limit=1"), Ok(Route::Counters));
        assert_eq!(route("HEAD", "/check"), Err(Miss::MethodNotAllowed("POST")));
        assert_eq!(route("GET", "/check"), Err(Miss::MethodNotAllowed("POST")));
        assert_eq!(
            route("GET", "/api/counters/k/reset"),
            Err(Miss::MethodNotAllowed("POST"))
        );
        assert!(matches!(
            route("POST", "/api/counters//reset"),
            Err(Miss::BadKey(_))
        ));
        assert!(matches!(
            route("POST", "/api/counters/%ff/reset"),
            Err(Miss::BadKey(_))
        ));
    }
}
