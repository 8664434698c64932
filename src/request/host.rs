//! Host patterns, as rules (`host`) and `proxy.allowed_hosts` write them: a name, or `*.` and
//! a name for any subdomain of it; compared without regard to case, port or trailing dot.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
