//! Admission: what the gateway refuses of a request before anything else, and the normal
//! form it judges and forwards the rest in (the table of refusals is in [`crate::request`]).

use std::borrow::Cow;

use http::{HeaderName, Method, Version};
use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{raw_target_authority, RawTargetAuthority};

use super::path::{self, PathError, PathPolicy};
use super::HostMatch;

/// Why a request is refused before it is limited or proxied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: an HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    NoHost,
    /// 501: a transfer coding other than `chunked` alone, which nobody here decodes.
    TransferCoding,
    /// 400: a method token with a lower-case letter or other byte nginx refuses; methods are
    /// case-sensitive, and upstreams that upper-case them would run a handler no rule saw.
    Method,
    /// 400: a request target that is not a path (authority-form, or `*` but for `OPTIONS`).
    Target,
    /// 400: a path without a normal form.
    Path(PathError),
    /// 400: more than one `Content-Length` value (RFC 9112 §6.3), which upstreams resolve
    /// differently.
    ContentLength,
    /// 400: a header a key is read from, sent more than once: the gateway and the upstream
    /// could each read a different one.
    Repeated(HeaderName),
    /// 421: a host this gateway does not serve (`proxy.allowed_hosts`).
    UnknownHost,
    /// 413: a declared body over `proxy.max_body_bytes`.
    BodyTooLarge,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::TransferCoding => 501,
            Refusal::UnknownHost => 421,
            Refusal::BodyTooLarge => 413,
            _ => 400,
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Refusal::NoHost => "an HTTP/1.1 request needs a Host header",
            Refusal::TransferCoding => "only the chunked transfer coding is supported",
            Refusal::Method => "the method must be an upper-case token, like GET or POST",
            Refusal::Target => "the request target must be a path",
            Refusal::Path(e) => e.message(),
            Refusal::ContentLength => "more than one Content-Length",
            Refusal::Repeated(name) => {
                return Cow::Owned(format!("more than one {name} header"));
            }
            Refusal::UnknownHost => "this gateway does not serve that host",
            Refusal::BodyTooLarge => BODY_TOO_LARGE,
        })
    }
}

/// Why a request body over `proxy.max_body_bytes` is refused (413), whether its length was
/// declared or found out while it streamed.
pub const BODY_TOO_LARGE: &str = "content too large: the request body is over proxy.max_body_bytes";

/// What a request must satisfy beyond framing: from the config in force.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub paths: PathPolicy,
    /// Empty: any host.
    pub allowed_hosts: &'a [HostMatch],
    /// The headers keys are read from, each of which a request may carry once.
    pub key_headers: &'a [HeaderName],
    /// The largest body a request may declare; 0: any.
    pub max_body_bytes: u64,
}

/// A request the gateway accepts, in the form it is judged and forwarded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<'r> {
    /// The path rules match.
    pub path: Cow<'r, str>,
    /// The host rules match: the target's authority, else the `Host` header.
    pub host: Option<&'r str>,
    /// The query string, without the `?`, as sent.
    pub query: Option<&'r [u8]>,
    /// The target to forward instead of the one sent (origin-form, query kept), when it
    /// differs.
    pub target: Option<Vec<u8>>,
    /// The `Host` to forward instead of the one sent: the target's authority, which the rules
    /// judged, when the `Host` header is missing or names another host.
    pub forward_host: Option<&'r str>,
}

/// Accepts a request, or says why not.
pub fn admit<'r>(req: &'r RequestHeader, policy: &Policy) -> Result<Admitted<'r>, Refusal> {
    if !valid_method(&req.method) {
        return Err(Refusal::Method);
    }
    let (host, forward_host) = host(req);
    if req.version == Version::HTTP_11 && host.is_none() {
        return Err(Refusal::NoHost);
    }
    framing(req)?;
    if policy.max_body_bytes > 0 && declared_length(req).is_some_and(|n| n > policy.max_body_bytes)
    {
        return Err(Refusal::BodyTooLarge);
    }
    for name in policy.key_headers {
        if req.headers.get_all(name).iter().nth(1).is_some() {
            return Err(Refusal::Repeated(name.clone()));
        }
    }
    if !policy.allowed_hosts.is_empty()
        && !host.is_some_and(|h| policy.allowed_hosts.iter().any(|m| m.matches(h)))
    {
        return Err(Refusal::UnknownHost);
    }
    let raw = req.raw_path();
    let (path_and_query, absolute) = match raw.first() {
        Some(b'/') => (raw, false),
        _ if raw == b"*" => {
            return match req.method {
                Method::OPTIONS => Ok(Admitted {
                    path: Cow::Borrowed("*"),
                    host,
                    query: None,
                    target: None,
                    forward_host,
                }),
                _ => Err(Refusal::Target),
            }
        }
        // HTTP/2 and an empty target: the URI holds the path.
        _ if raw.is_empty() => (req.uri.path().as_bytes(), false),
        _ => match raw_target_authority(raw) {
            RawTargetAuthority::Absolute { path_and_query, .. } => (path_and_query, true),
            _ => return Err(Refusal::Target),
        },
    };
    let (path, query) = match path_and_query.iter().position(|b| *b == b'?') {
        Some(q) => (&path_and_query[..q], Some(&path_and_query[q..])),
        None => (path_and_query, None),
    };
    let normal = path::normalize(path, policy.paths).map_err(Refusal::Path)?;
    let target = (absolute || matches!(normal.forwarded, Cow::Owned(_))).then(|| {
        let mut t = normal.forwarded.to_vec();
        t.extend_from_slice(query.unwrap_or_default());
        t
    });
    Ok(Admitted {
        path: normal.matched,
        host,
        query: query.map(|q| &q[1..]),
        target,
        forward_host,
    })
}

/// An upper-case token as nginx accepts it: `A-Z`, `_` and `-`.
fn valid_method(method: &Method) -> bool {
    let m = method.as_str().as_bytes();
    !m.is_empty()
        && m.iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-')
}

/// The host a request is for: the target's authority (HTTP/2, absolute-form), else `Host`;
/// and the authority again when the upstream must be sent it as `Host`: an HTTP/1.0 request
/// in absolute-form may have no `Host` (one that differs from the authority was refused by
/// pingora, RFC 9112 §3.2.2).
pub fn host(req: &RequestHeader) -> (Option<&str>, Option<&str>) {
    let header = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let authority = match req.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => raw_target_authority(req.raw_path())
            .authority()
            .and_then(|a| std::str::from_utf8(a).ok()),
    };
    match authority {
        Some(a) if header == Some(a) => (Some(a), None),
        Some(a) => (Some(a), Some(a)),
        None => (header, None),
    }
}

/// The `Content-Length`, when there is one valid value (framing has refused two).
fn declared_length(req: &RequestHeader) -> Option<u64> {
    let v = req.headers.get(http::header::CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// Body framing that every upstream reads alike.
fn framing(req: &RequestHeader) -> Result<(), Refusal> {
    let mut lengths = 0;
    for v in req.headers.get_all(http::header::CONTENT_LENGTH) {
        lengths += v.as_bytes().split(|b| *b == b',').count();
    }
    if lengths > 1 {
        return Err(Refusal::ContentLength);
    }
    let mut codings = req
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(Refusal::TransferCoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        method: &str,
        target: &[u8],
        version: Version,
        headers: &[(&str, &str)],
    ) -> RequestHeader {
        let mut r = RequestHeader::build(method, target, None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn h11(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut all = vec![("Host", "api.example.com")];
        all.extend_from_slice(headers);
        req(method, target.as_bytes(), Version::HTTP_11, &all)
    }

    const OPEN: Policy<'static> = Policy {
        paths: PathPolicy {
            slashes: crate::request::EscapedSlashes::Reject,
            parameters: crate::request::PathParameters::Keep,
        },
        allowed_hosts: &[],
        key_headers: &[],
        max_body_bytes: 0,
    };

    fn refusal(r: &RequestHeader, policy: &Policy) -> Option<Refusal> {
        admit(r, policy).err()
    }

    #[test]
    fn framing_refusals() {
        assert_eq!(
            refusal(&req("GET", b"/x", Version::HTTP_11, &[]), &OPEN),
            Some(Refusal::NoHost)
        );
        assert_eq!(
            refusal(&req("GET", b"/x", Version::HTTP_10, &[]), &OPEN),
            None
        );
        let te = |v: &str| refusal(&h11("POST", "/x", &[("Transfer-Encoding", v)]), &OPEN);
        assert_eq!(te("chunked"), None);
        assert_eq!(te("Chunked"), None);
        assert_eq!(te("gzip, chunked"), Some(Refusal::TransferCoding));
        assert_eq!(te("gzip"), Some(Refusal::TransferCoding));
        let cl = |values: &[&str]| {
            let headers: Vec<(&str, &str)> =
                values.iter().map(|v| ("Content-Length", *v)).collect();
            refusal(&h11("POST", "/x", &headers), &OPEN)
        };
        assert_eq!(cl(&["5"]), None);
        let bounded = Policy {
            max_body_bytes: 4,
            ..OPEN
        };
        let sized = |n: &str| refusal(&h11("POST", "/x", &[("Content-Length", n)]), &bounded);
        assert_eq!(sized("4"), None);
        assert_eq!(sized("5"), Some(Refusal::BodyTooLarge));
        assert_eq!(
            refusal(&h11("POST", "/x", &[("Content-Length", "5")]), &OPEN),
            None
        );
        assert_eq!(cl(&["5, 5"]), Some(Refusal::ContentLength));
        assert_eq!(cl(&["5", "5"]), Some(Refusal::ContentLength));
    }

    #[test]
    fn methods_must_be_upper_case_tokens() {
        for m in ["GET", "POST", "M-SEARCH", "VERSION-CONTROL", "X_CUSTOM"] {
            assert_eq!(refusal(&h11(m, "/", &[]), &OPEN), None, "{m}");
        }
        for m in ["post", "Post", "gEt", "GET2"] {
            assert_eq!(
                refusal(&h11(m, "/", &[]), &OPEN),
                Some(Refusal::Method),
                "{m}"
            );
        }
    }

    #[test]
    fn targets_must_be_paths() {
        assert_eq!(
            refusal(&h11("GET", "host:80", &[]), &OPEN),
            Some(Refusal::Target)
        );
        assert_eq!(refusal(&h11("GET", "*", &[]), &OPEN), Some(Refusal::Target));
        let options = h11("OPTIONS", "*", &[]);
        let options = admit(&options, &OPEN).unwrap();
        assert_eq!((options.path.as_ref(), options.target), ("*", None));
        // Absolute-form goes on as origin-form; its authority is the host.
        let abs = req(
            "GET",
            b"http://api.example.com/a/../b?x=1",
            Version::HTTP_11,
            &[("Host", "api.example.com")],
        );
        let a = admit(&abs, &OPEN).unwrap();
        assert_eq!(a.path, "/b");
        assert_eq!(a.host, Some("api.example.com"));
        assert_eq!(a.target.as_deref(), Some(&b"/b?x=1"[..]));
    }

    #[test]
    fn the_normal_path_is_matched_and_forwarded_with_the_query_as_sent() {
        let r = h11("GET", "/%6Cogin/./?q=%2F..%2F", &[]);
        let a = admit(&r, &OPEN).unwrap();
        assert_eq!(a.path, "/login/");
        assert_eq!(a.target.as_deref(), Some(&b"/login/?q=%2F..%2F"[..]));
        let r = h11("GET", "/api/items/1?x=%2F", &[]);
        let plain = admit(&r, &OPEN).unwrap();
        assert_eq!((plain.path.as_ref(), plain.target), ("/api/items/1", None));
        assert_eq!(
            refusal(&h11("GET", "/api/items/..%2F..%2Fhealthz", &[]), &OPEN),
            Some(Refusal::Path(PathError::EscapedSlash))
        );
    }

    #[test]
    fn key_headers_may_be_sent_once() {
        let key = [HeaderName::from_static("x-api-key")];
        let policy = Policy {
            key_headers: &key,
            ..OPEN
        };
        assert_eq!(
            refusal(&h11("GET", "/", &[("X-Api-Key", "a")]), &policy),
            None
        );
        assert_eq!(
            refusal(
                &h11("GET", "/", &[("X-Api-Key", "a"), ("x-api-key", "b")]),
                &policy
            ),
            Some(Refusal::Repeated(key[0].clone()))
        );
        // Headers no key reads may repeat.
        assert_eq!(
            refusal(
                &h11("GET", "/", &[("Accept", "a"), ("Accept", "b")]),
                &policy
            ),
            None
        );
    }

    #[test]
    fn allowed_hosts() {
        let hosts = [
            HostMatch::parse("api.example.com").unwrap(),
            HostMatch::parse("*.example.net").unwrap(),
        ];
        let policy = Policy {
            allowed_hosts: &hosts,
            ..OPEN
        };
        let with_host = |h: &str| req("GET", b"/", Version::HTTP_11, &[("Host", h)]);
        assert_eq!(refusal(&with_host("API.example.com:8080"), &policy), None);
        assert_eq!(refusal(&with_host("a.example.net"), &policy), None);
        assert_eq!(
            refusal(&with_host("evil.example"), &policy),
            Some(Refusal::UnknownHost)
        );
        assert_eq!(
            refusal(&req("GET", b"/", Version::HTTP_10, &[]), &policy),
            Some(Refusal::UnknownHost)
        );
        assert_eq!(Refusal::UnknownHost.status(), 421);
    }
}
