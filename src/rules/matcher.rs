//! Which requests a rule applies to (contract §7): methods, a path condition and a host, all
//! pure functions of a [`RequestView`].
//!
//! The path is the request's normal path ([`crate::request::path`]): escapes decoded, `.` and
//! `..` resolved and repeated slashes merged, the same path the upstream is sent, so
//! `/%6Cogin`, `//login` and `/api/../login` are all `/login` here and there. Paths are
//! case-sensitive unless the rule says `path_ignore_case` (for upstreams that route without
//! regard to case, as Express does by default); a prefix is a plain string prefix (`/login`
//! also matches `/login-help`), as in nginx and Envoy. A rule for `GET` also matches `HEAD`,
//! which every framework answers with its `GET` handler (nginx's `limit_except GET` does the
//! same).
use http::Method;

use crate::request::{HostMatch, RequestView};

/// At most one of `path`, `path_prefix`, `path_regex`.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Searched in the path (anchor it with `^` and `$` for a whole match), as nginx's `~`.
    Regex(regex::Regex),
}

impl PathMatch {
    /// `ignore_case`: ASCII letters compare without regard to case (a regex is compiled so).
    pub fn matches(&self, path: &str, ignore_case: bool) -> bool {
        match self {
            PathMatch::Exact(p) if ignore_case => path.eq_ignore_ascii_case(p),
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) if ignore_case => path
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
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

/// Everything a rule can require of a request; an empty matcher matches every request.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// Any of these methods; empty: any method. `HEAD` is in it whenever `GET` is.
    pub methods: Vec<Method>,
    pub path: Option<PathMatch>,
    /// The path compares without regard to ASCII case.
    pub path_ignore_case: bool,
    pub host: Option<HostMatch>,
}

impl Matcher {
    /// Whether the request matches.
    pub fn matches(&self, view: &RequestView) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(view.method) {
            return false;
        }
        if let Some(host) = &self.host {
            if !view.host.is_some_and(|h| host.matches(h)) {
                return false;
            }
        }
        match &self.path {
            Some(p) => p.matches(view.path, self.path_ignore_case),
            None => true,
        }
    }
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
            query: None,
            headers: h,
        }
    }

    #[test]
    fn path_conditions() {
        let exact = PathMatch::Exact("/login".into());
        assert!(exact.matches("/login", false));
        assert!(!exact.matches("/login/", false));
        assert!(!exact.matches("/LOGIN", false));
        assert!(exact.matches("/LOGIN", true));
        assert!(!exact.matches("/LOGIN/", true));
        let prefix = PathMatch::Prefix("/api/".into());
        assert!(prefix.matches("/api/v1", false));
        assert!(!prefix.matches("/apix", false));
        assert!(!prefix.matches("/API/v1", false));
        assert!(prefix.matches("/API/v1", true));
        assert!(!prefix.matches("/AP", true));
        // A multi-byte character never splits: a shorter path than the prefix does not match.
        assert!(!PathMatch::Prefix("/é".into()).matches("/", true));
        let r = PathMatch::Regex(regex::Regex::new(r"^/users/\d+$").unwrap());
        assert!(r.matches("/users/42", false));
        assert!(!r.matches("/users/42/posts", false));
        // Unanchored patterns search, as nginx's `location ~`.
        assert!(PathMatch::Regex(regex::Regex::new("search").unwrap()).matches("/v1/search", false));
    }

    #[test]
    fn a_matcher_needs_every_condition() {
        let h = HeaderMap::new();
        let m = Matcher {
            methods: vec![Method::POST],
            path: Some(PathMatch::Prefix("/login".into())),
            path_ignore_case: false,
            host: Some(HostMatch::parse("api.example.com").unwrap()),
        };
        let post = Method::POST;
        let get = Method::GET;
        let yes = view(&post, Some("api.example.com"), "/login/x", &h);
        assert!(m.matches(&yes));
        for no in [
            view(&get, Some("api.example.com"), "/login", &h),
            view(&post, Some("other.example.com"), "/login", &h),
            view(&post, None, "/login", &h),
            view(&post, Some("api.example.com"), "/logout", &h),
        ] {
            assert!(!m.matches(&no), "{no:?}");
        }
        assert!(Matcher::default().matches(&yes));
    }
}
