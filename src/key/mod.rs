//! Keys (contract §3.1, §12): what a request is counted by.
//!
//! - [`KeySource`]: what a rule keys by, as configured: `global`, or one part or several (a
//!   composite key, one counter per combination): `ip`, `ip/N`, `header:<Name>`,
//!   `query:<name>`, `cookie:<name>`, `jwt:<claim>`;
//! - [`source`]: the one dispatch from a source to a request's value, pure, with what one
//!   request's rules share (the client IP, the verified token) worked out once;
//! - [`client_ip`]: the trusted-proxy walk;
//! - [`counter`]: the counter-key grammar, built and parsed in one place, unambiguous by
//!   construction, and its display form with private values digested;
//! - [`jwt`]: bearer tokens verified against `[jwt]`.
//!
//! A part that is missing or invalid (no header, a token that does not verify) never lets a
//! request escape its limit: the request is keyed by its client IP instead
//! ([`Missing::Ip`]), unless the rule says `missing = "skip"`.

pub mod client_ip;
pub mod counter;
pub mod jwt;
pub mod source;

use std::fmt;

pub use client_ip::{canonical, client_ip};
pub use counter::{GLOBAL, MAX_VALUE_LEN};
pub use source::Keys;

/// One part of a key, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// The client IP.
    Ip,
    /// IPv6 clients grouped by this prefix length; IPv4 clients by their address.
    IpPrefix(u8),
    /// A request header, its name lower-cased.
    Header(http::HeaderName),
    /// A query parameter, percent-decoded; the first occurrence.
    Query(String),
    /// A cookie of the `Cookie` header(s); the first occurrence.
    Cookie(String),
    /// A claim of the bearer token in `Authorization`, verified.
    Jwt(String),
}

/// Longest query parameter, cookie or claim name.
const MAX_NAME_LEN: usize = 128;

impl Part {
    /// Parses one part: `ip`, `ip/N`, `header:<Name>`, `query:<name>`, `cookie:<name>`,
    /// `jwt:<claim>`; the error says what was expected.
    pub fn parse(s: &str) -> Result<Part, String> {
        let expected = || {
            format!(
                "expected \"ip\", \"ip/<1..=128>\", \"header:<Header-Name>\", \"query:<name>\", \"cookie:<name>\", \"jwt:<claim>\" or \"global\", found {s:?}"
            )
        };
        if s == "ip" {
            return Ok(Part::Ip);
        }
        if let Some(len) = s.strip_prefix("ip/") {
            return match len.parse::<u8>() {
                Ok(n) if (1..=128).contains(&n) => Ok(Part::IpPrefix(n)),
                _ => Err(expected()),
            };
        }
        let (source, name) = s.split_once(':').ok_or_else(expected)?;
        match source {
            "header" => {
                let header =
                    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| expected())?;
                if header.as_str().contains(counter::SEPARATOR) {
                    return Err(format!(
                        "a header read for a key cannot have a '|' in its name, found {s:?}"
                    ));
                }
                Ok(Part::Header(header))
            }
            "query" | "cookie" | "jwt" => {
                let valid = !name.is_empty()
                    && name.len() <= MAX_NAME_LEN
                    && name.bytes().all(|b| {
                        b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'|' | b'[' | b']')
                    });
                if !valid {
                    return Err(format!(
                        "{source}: expected a name of 1 to {MAX_NAME_LEN} visible ASCII characters without ( ) [ ] |, found {name:?}"
                    ));
                }
                Ok(match source {
                    "query" => Part::Query(name.to_string()),
                    "cookie" => Part::Cookie(name.to_string()),
                    _ => Part::Jwt(name.to_string()),
                })
            }
            _ => Err(expected()),
        }
    }

    /// Whether its values are private (API keys, sessions, tokens): shown digested (§17).
    pub fn is_private(&self) -> bool {
        !matches!(self, Part::Ip | Part::IpPrefix(_))
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Ip => f.write_str("ip"),
            Part::IpPrefix(n) => write!(f, "ip/{n}"),
            Part::Header(h) => write!(f, "header:{h}"),
            Part::Query(n) => write!(f, "query:{n}"),
            Part::Cookie(n) => write!(f, "cookie:{n}"),
            Part::Jwt(n) => write!(f, "jwt:{n}"),
        }
    }
}

/// What a rule keys by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// One counter for every request the rule matches: `global`.
    Global,
    /// One part, or several (a composite key); never empty.
    Parts(Vec<Part>),
}

impl KeySource {
    /// The source of the client IP, `ip`.
    pub fn ip() -> KeySource {
        KeySource::Parts(vec![Part::Ip])
    }

    /// Parses `global` or one part.
    pub fn parse(s: &str) -> Result<KeySource, String> {
        if s == GLOBAL {
            return Ok(KeySource::Global);
        }
        Part::parse(s).map(|p| KeySource::Parts(vec![p]))
    }

    /// A composite of several parts (at least two, none repeated).
    pub fn composite(parts: Vec<Part>) -> Result<KeySource, String> {
        if parts.len() < 2 {
            return Err("a composite key needs at least two parts".into());
        }
        for (i, p) in parts.iter().enumerate() {
            if parts[..i].contains(p) {
                return Err(format!("{p} is listed twice"));
            }
        }
        Ok(KeySource::Parts(parts))
    }

    /// Its parts (none for `global`).
    pub fn parts(&self) -> &[Part] {
        match self {
            KeySource::Global => &[],
            KeySource::Parts(p) => p,
        }
    }

    pub fn is_global(&self) -> bool {
        matches!(self, KeySource::Global)
    }

    /// As written in the config: a string for `global` and one part, a list for a composite.
    pub fn to_json(&self) -> serde_json::Value {
        match self.parts() {
            [_, _, ..] => serde_json::Value::Array(
                self.parts()
                    .iter()
                    .map(|p| serde_json::Value::String(p.to_string()))
                    .collect(),
            ),
            _ => serde_json::Value::String(self.to_string()),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            [] => f.write_str(GLOBAL),
            [one] => write!(f, "{one}"),
            parts => {
                f.write_str("[")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "\"{p}\"")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// What a rule does with a request whose key part is missing or invalid (`missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// Key it by the client IP (contract §3.1: leaving a part out never escapes the limit).
    #[default]
    Ip,
    /// The rule does not apply to it.
    Skip,
}

impl Missing {
    pub fn name(self) -> &'static str {
        match self {
            Missing::Ip => "ip",
            Missing::Skip => "skip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_alike() {
        for text in [
            "ip",
            "ip/64",
            "global",
            "header:x-api-key",
            "query:api_key",
            "cookie:session",
            "jwt:sub",
            "jwt:https://example.com/org",
        ] {
            assert_eq!(KeySource::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            KeySource::parse("header:X-Api-Key").unwrap().to_string(),
            "header:x-api-key"
        );
        for bad in [
            "header:X Api",
            "cookie",
            "ip/0",
            "ip/129",
            "query:",
            "query:a|b",
            "jwt:a(b)",
            "header:a|b",
            "token:x",
        ] {
            assert!(KeySource::parse(bad).is_err(), "{bad}");
        }
        let c = KeySource::composite(vec![
            Part::parse("jwt:org").unwrap(),
            Part::parse("header:X-Project").unwrap(),
        ])
        .unwrap();
        assert_eq!(c.to_string(), r#"["jwt:org", "header:x-project"]"#);
        assert_eq!(
            c.to_json(),
            serde_json::json!(["jwt:org", "header:x-project"])
        );
        assert!(KeySource::composite(vec![Part::Ip, Part::Ip]).is_err());
        assert!(KeySource::composite(vec![Part::Ip]).is_err());
    }
}
