//! Which requests a rule applies to (contract §7): methods, a path condition and a host, all
//! pure functions of a [`RequestView`].
//!
//! Paths are compared as nginx compares them in its `location` blocks: percent-escapes
//! decoded, `.` and `..` segments resolved and repeated slashes merged, so `/%6Cogin`,
//! `//login` and `/api/../login` are all `/login` and cannot slip past a rule for `/login`.
//! The request itself is forwarded as sent. Paths are case-sensitive; a prefix is a plain
//! string prefix (`/login` also matches `/login-help`), as in nginx and Envoy.

use std::borrow::Cow;

use http::Method;

use crate::key::RequestView;

/// At most one of `path`, `path_prefix`, `path_regex`.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Searched in the path (anchor it with `^` and `$` for a whole match), as nginx's `~`.
    Regex(regex::Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// The config key it was written under, and its text.
    pub fn describe(&self) -> (&'static str, &str) {
        match self {
            PathMatch::Exact(p) => ("path", p),
            PathMatch::Prefix(p) => ("path_prefix", p),
            PathMatch::Regex(r) => ("path_regex", r.as_str()),
        }
    }
}

/// A host name, lower-cased; `*.example.com` matches any name ending in `.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMatch(String);

impl HostMatch {
    /// A host pattern from the config: a name (or `*.` and a name), no port.
    pub fn parse(s: &str) -> Option<HostMatch> {
        let name = s.strip_prefix("*.").unwrap_or(s);
        let valid = !name.is_empty()
            && name.len() <= 253
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        valid.then(|| HostMatch(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host_name(host);
        match self.0.strip_prefix("*.") {
            Some(domain) => {
                host.len() > domain.len() + 1
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                    && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
            }
            None => host.eq_ignore_ascii_case(&self.0),
        }
    }
}

/// The name part of a `Host` value: without the port and a trailing dot (`[::1]:80` → `[::1]`).
fn host_name(host: &str) -> &str {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Everything a rule can require of a request; an empty matcher matches every request.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// Any of these methods; empty: any method.
    pub methods: Vec<Method>,
    pub path: Option<PathMatch>,
    pub host: Option<HostMatch>,
}

impl Matcher {
    /// Whether the request matches; `path` is the request's [`normalize_path`], computed by the
    /// caller once for all rules.
    pub fn matches(&self, view: &RequestView, path: &mut LazyPath) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(view.method) {
            return false;
        }
        if let Some(host) = &self.host {
            if !view.host.is_some_and(|h| host.matches(h)) {
                return false;
            }
        }
        match &self.path {
            Some(p) => p.matches(path.get(view.path)),
            None => true,
        }
    }
}

/// A request's normalized path, computed the first time a rule asks for it.
#[derive(Default)]
pub struct LazyPath(Option<String>);

impl LazyPath {
    pub fn get(&mut self, raw: &str) -> &str {
        self.0
            .get_or_insert_with(|| normalize_path(raw).into_owned())
            .as_str()
    }
}

/// The path as rules see it: percent-escapes decoded (invalid UTF-8 replaced), `.` and `..`
/// segments resolved (never above the root), repeated slashes merged. Borrowed when already
/// normal.
pub fn normalize_path(raw: &str) -> Cow<'_, str> {
    let plain =
        raw.starts_with('/') && !raw.contains('%') && !raw.contains("//") && !raw.contains("/.");
    if plain {
        return Cow::Borrowed(raw);
    }
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || decoded == "."
        || decoded == "..";
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn view<'a>(
        method: &'a Method,
        host: Option<&'a str>,
        path: &'a str,
        h: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            peer: None,
            method,
            host,
            path,
            headers: h,
        }
    }

    #[test]
    fn paths_are_normalized_as_nginx_does() {
        for (raw, want) in [
            ("/login", "/login"),
            ("/", "/"),
            ("", "/"),
            ("//login", "/login"),
            ("/%6Cogin", "/login"),
            ("/api/../login", "/login"),
            ("/api/./v1//users/", "/api/v1/users/"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a%2F..%2Flogin", "/login"),
            ("/caf%C3%A9", "/café"),
            ("/bad%FF", "/bad\u{FFFD}"),
            ("/100%", "/100%"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw:?}");
        }
        assert!(matches!(normalize_path("/api/v1"), Cow::Borrowed(_)));
    }

    #[test]
    fn path_conditions() {
        assert!(PathMatch::Exact("/login".into()).matches("/login"));
        assert!(!PathMatch::Exact("/login".into()).matches("/login/"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/v1"));
        assert!(!PathMatch::Prefix("/api/".into()).matches("/apix"));
        let r = PathMatch::Regex(regex::Regex::new(r"^/users/\d+$").unwrap());
        assert!(r.matches("/users/42"));
        assert!(!r.matches("/users/42/posts"));
        // Unanchored patterns search, as nginx's `location ~`.
        assert!(PathMatch::Regex(regex::Regex::new("search").unwrap()).matches("/v1/search"));
    }

    #[test]
    fn hosts_ignore_case_port_and_trailing_dot() {
        let h = HostMatch::parse("API.example.com").unwrap();
        for host in [
            "api.example.com",
            "Api.Example.Com:8443",
            "api.example.com.",
        ] {
            assert!(h.matches(host), "{host}");
        }
        assert!(!h.matches("www.example.com"));
        let wild = HostMatch::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com:80"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(HostMatch::parse("[::1]").is_none());
        assert!(HostMatch::parse("api.example.com:80").is_none());
        assert!(HostMatch::parse("").is_none());
        assert_eq!(host_name("[::1]:8080"), "[::1]");
    }

    #[test]
    fn a_matcher_needs_every_condition() {
        let h = HeaderMap::new();
        let m = Matcher {
            methods: vec![Method::POST],
            path: Some(PathMatch::Prefix("/login".into())),
            host: Some(HostMatch::parse("api.example.com").unwrap()),
        };
        let post = Method::POST;
        let get = Method::GET;
        let yes = view(&post, Some("api.example.com"), "//login/x", &h);
        assert!(m.matches(&yes, &mut LazyPath::default()));
        for no in [
            view(&get, Some("api.example.com"), "/login", &h),
            view(&post, Some("other.example.com"), "/login", &h),
            view(&post, None, "/login", &h),
            view(&post, Some("api.example.com"), "/logout", &h),
        ] {
            assert!(!m.matches(&no, &mut LazyPath::default()), "{no:?}");
        }
        assert!(Matcher::default().matches(&yes, &mut LazyPath::default()));
    }
}
