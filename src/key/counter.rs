//! The counter-key grammar (contract §3, §7, §12), built and parsed here and nowhere else:
//!
//! ```text
//! counter-key = [ rule "/" ] request-key          ; rule: [a-z0-9_-]{1,64}; none: the default rule
//! request-key = "global" / part / "[" part 1*( "|" part ) "]"     ; [...]: a composite key
//! part        = "ip:" address                     ; ip, and ip/N for an IPv4 client
//!             / "ip:" network "/" length          ; ip/N for an IPv6 client
//!             / "ip:unknown"                      ; a peer that is not an IP socket
//!             / header-name ":" value             ; header:<Name>, lower-cased, but not "ip"
//!             / "header(ip):" value               ; header:ip
//!             / "query(" name "):" value / "cookie(" name "):" value / "jwt(" claim "):" value
//! value       = 1*256( %x21-7E ), not starting with "sha256:"   ; as sent
//!             / "sha256:" 64( HEXDIG )             ; the digest of any other value
//! ```
//!
//! Why it is unambiguous, whatever values clients send: every part starts with a tag no other
//! source can write (header names are tokens: no `(`, `)`, `[`, `:` or `/`, and the one name
//! that is also a tag, `ip`, is written `header(ip)`); a value is taken up to the end of the
//! part, and a digest is never a value as sent, since a value that starts with `sha256:` is
//! itself digested; inside `[...]` a value's `%` and `|` are escaped (`%25`, `%7C`), so `|`
//! only ever separates parts, and a composite key never equals a single part (no tag starts
//! with `[`). A rule name holds no `:`, `(`, `[` or `/`, and a request key has no `/` before
//! its first `:`, `(` or `[`, so the first `/` of a counter key ends its rule exactly when what
//! precedes it is a rule name. `ip:` and `<header>:` keys keep the form of contract §3, so
//! counters survive an upgrade. The property test below and `fuzz/fuzz_targets/key.rs`
//! check all this on arbitrary names and values.
//!
//! The display form ([`display`]) shows a private part (`header`, `query`, `cookie`, `jwt`)
//! as `<tag>:sha256:<the first 16 hex digits of the value's SHA-256>`, the same on every
//! node, for metrics, logs and listings read without a token (contract §17).

use std::borrow::Cow;
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::Part;

/// The longest value used as sent.
pub const MAX_VALUE_LEN: usize = 256;

/// What marks a digest.
pub const DIGEST: &str = "sha256:";

/// The key of every request under `global`.
pub const GLOBAL: &str = "global";

/// Separates the parts of a composite key.
pub const SEPARATOR: char = '|';

/// How long a display digest is, in hex digits.
const SHOWN_DIGITS: usize = 16;

/// A part's value, as its source read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Ip(IpAddr),
    /// An IPv6 client's network, for `ip/N`.
    Net(IpNet),
    /// A peer that is not an IP socket.
    UnknownIp,
    Bytes(&'a [u8]),
}

/// `ip:<address>`, or `ip:unknown` for a peer that is not an IP socket.
pub fn ip_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".to_string(),
    }
}

/// The request key of these parts and their values (one part, or a composite of several).
pub fn request_key(parts: &[(&Part, Value)]) -> String {
    match parts {
        [] => GLOBAL.to_string(),
        [(part, value)] => {
            let mut out = String::with_capacity(16 + value_len(value));
            push_part(&mut out, part, value, false);
            out
        }
        _ => {
            let mut out = String::with_capacity(64);
            out.push('[');
            for (i, (part, value)) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(SEPARATOR);
                }
                push_part(&mut out, part, value, true);
            }
            out.push(']');
            out
        }
    }
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::Bytes(b) => b.len().min(MAX_VALUE_LEN + 8),
        _ => 40,
    }
}

/// The counter key of a request key under a rule (`None`: the default rule).
pub fn counter_key(rule: Option<&str>, request_key: String) -> String {
    match rule {
        None => request_key,
        Some(rule) => {
            let mut key = String::with_capacity(rule.len() + 1 + request_key.len());
            key.push_str(rule);
            key.push('/');
            key.push_str(&request_key);
            key
        }
    }
}

fn push_part(out: &mut String, part: &Part, value: &Value, composite: bool) {
    match part {
        Part::Ip | Part::IpPrefix(_) => out.push_str("ip:"),
        Part::Header(name) if name.as_str() == "ip" => out.push_str("header(ip):"),
        Part::Header(name) => {
            out.push_str(name.as_str());
            out.push(':');
        }
        Part::Query(name) => {
            let _ = write!(out, "query({name}):");
        }
        Part::Cookie(name) => {
            let _ = write!(out, "cookie({name}):");
        }
        Part::Jwt(claim) => {
            let _ = write!(out, "jwt({claim}):");
        }
    }
    match value {
        Value::Ip(ip) => {
            let _ = write!(out, "{ip}");
        }
        Value::Net(net) => {
            let _ = write!(out, "{net}");
        }
        Value::UnknownIp => out.push_str("unknown"),
        Value::Bytes(raw) => push_value(out, raw, composite),
    }
}

/// A value as sent when it is short, printable and not digest-shaped; else its digest. In a
/// composite key, `%` and `|` are escaped.
fn push_value(out: &mut String, raw: &[u8], composite: bool) {
    let printable = raw.iter().all(|b| (0x21..=0x7e).contains(b));
    if printable && raw.len() <= MAX_VALUE_LEN && !raw.starts_with(DIGEST.as_bytes()) {
        for &b in raw {
            match b {
                b'%' if composite => out.push_str("%25"),
                b'|' if composite => out.push_str("%7C"),
                // Visible ASCII: a char each.
                b => out.push(char::from(b)),
            }
        }
        return;
    }
    out.push_str(DIGEST);
    push_hex(out, &Sha256::digest(raw), 64);
}

fn push_hex(out: &mut String, bytes: &[u8], digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes.iter().take(digits.div_ceil(2)) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Whether `name` is a rule name: 1..=64 of `a-z`, `0-9`, `_`, `-`.
pub fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A counter key's rule (`None`: the default rule's, or a key no rule made) and request key.
pub fn split_rule(counter_key: &str) -> (Option<&str>, &str) {
    match counter_key.find(['/', ':', '(', '[']) {
        Some(i) if counter_key.as_bytes()[i] == b'/' && valid_rule_name(&counter_key[..i]) => {
            (Some(&counter_key[..i]), &counter_key[i + 1..])
        }
        _ => (None, counter_key),
    }
}

/// What a part of a key was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'k> {
    Ip,
    Header(&'k str),
    Query(&'k str),
    Cookie(&'k str),
    Jwt(&'k str),
}

impl Kind<'_> {
    /// Whether its values are private (keys, sessions, tokens): shown digested (§17).
    pub fn is_private(&self) -> bool {
        !matches!(self, Kind::Ip)
    }
}

/// One part of a parsed key: its kind, and its value as written in the key (escaped in a
/// composite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedPart<'k> {
    pub kind: Kind<'k>,
    pub value: &'k str,
}

/// The parts of a request key; `None` for `global`, or a key not written by this grammar
/// (one that `/check` made).
pub fn parse(request_key: &str) -> Option<Vec<ParsedPart<'_>>> {
    match request_key
        .strip_prefix('[')
        .and_then(|k| k.strip_suffix(']'))
    {
        Some(inner) => inner.split(SEPARATOR).map(parse_part).collect(),
        None => parse_part(request_key).map(|p| vec![p]),
    }
}

fn parse_part(part: &str) -> Option<ParsedPart<'_>> {
    if let Some(value) = part.strip_prefix("ip:") {
        return Some(ParsedPart {
            kind: Kind::Ip,
            value,
        });
    }
    let i = part.find([':', '('])?;
    let (tag, rest) = (&part[..i], &part[i + 1..]);
    if part.as_bytes()[i] == b'(' {
        let (name, value) = rest.split_once("):")?;
        let kind = match tag {
            "header" => Kind::Header(name),
            "query" => Kind::Query(name),
            "cookie" => Kind::Cookie(name),
            "jwt" => Kind::Jwt(name),
            _ => return None,
        };
        return Some(ParsedPart { kind, value });
    }
    let token = !tag.is_empty() && tag.bytes().all(is_tchar);
    token.then_some(ParsedPart {
        kind: Kind::Header(tag),
        value: rest,
    })
}

/// A header name's bytes (RFC 9110 §5.6.2), lower case.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_lowercase()
        || b.is_ascii_digit()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// What an override is looked up by (contract §7, §12): an IP key's address (or network), or
/// the value of any other key, the values of a composite's parts joined by `|` as they are
/// written in the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideKey<'k> {
    Ip(&'k str),
    Value(Cow<'k, str>),
}

/// The override key of a request key; `None` for `global` and keys of no rule.
pub fn override_key(request_key: &str) -> Option<OverrideKey<'_>> {
    match parse(request_key)?.as_slice() {
        [ParsedPart {
            kind: Kind::Ip,
            value,
        }] if !request_key.starts_with('[') => Some(OverrideKey::Ip(value)),
        [one] => Some(OverrideKey::Value(Cow::Borrowed(one.value))),
        parts => {
            let joined: Vec<&str> = parts.iter().map(|p| p.value).collect();
            Some(OverrideKey::Value(Cow::Owned(joined.join("|"))))
        }
    }
}

/// A counter key as shown where a private value must not be (contract §17): each private
/// part's value replaced by `sha256:<16 hex digits>` of it. IP parts and keys no rule made
/// stay as they are.
pub fn display(counter_key: &str) -> Cow<'_, str> {
    let (rule, request_key) = split_rule(counter_key);
    let Some(parts) = parse(request_key) else {
        return Cow::Borrowed(counter_key);
    };
    if !parts.iter().any(|p| p.kind.is_private()) {
        return Cow::Borrowed(counter_key);
    }
    let composite = request_key.starts_with('[');
    let mut out = String::with_capacity(counter_key.len().min(128));
    if let Some(rule) = rule {
        out.push_str(rule);
        out.push('/');
    }
    if composite {
        out.push('[');
    }
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        // The tag as written: everything of the part before its value.
        let part_start = p.value.as_ptr() as usize - request_key.as_ptr() as usize;
        let tag_start = request_key[..part_start]
            .rfind(['[', SEPARATOR])
            .map_or(0, |i| i + 1);
        out.push_str(&request_key[tag_start..part_start]);
        if p.kind.is_private() {
            out.push_str(DIGEST);
            out.push_str(&shown_digest(p.value, composite));
        } else {
            out.push_str(p.value);
        }
    }
    if composite {
        out.push(']');
    }
    Cow::Owned(out)
}

/// An override's value (a composite's values joined by `|`, as [`override_key`] reads them)
/// as shown where a private value must not be: each value of a private part digested as
/// [`display`] digests it in a counter key, so the two can be matched.
pub fn display_override<'v>(value: &'v str, parts: &[Part]) -> Cow<'v, str> {
    if !parts.iter().any(Part::is_private) {
        return Cow::Borrowed(value);
    }
    let composite = parts.len() > 1;
    let values: Vec<&str> = match composite {
        true => value.split(SEPARATOR).collect(),
        false => vec![value],
    };
    let mut out = String::with_capacity(value.len().min(128));
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        // A value with more `|` than the key has parts is shown digested whole.
        match parts.get(i).is_none_or(Part::is_private) {
            true => {
                out.push_str(DIGEST);
                out.push_str(&shown_digest(v, composite));
            }
            false => out.push_str(v),
        }
    }
    Cow::Owned(out)
}

/// The 16 hex digits shown for a value: of its SHA-256, which a digested value already is.
fn shown_digest(value: &str, composite: bool) -> String {
    if let Some(hex) = value.strip_prefix(DIGEST) {
        return hex.chars().take(SHOWN_DIGITS).collect();
    }
    let raw = if composite {
        unescape(value)
    } else {
        Cow::Borrowed(value)
    };
    let mut out = String::with_capacity(SHOWN_DIGITS);
    push_hex(&mut out, &Sha256::digest(raw.as_bytes()), SHOWN_DIGITS);
    out
}

/// A composite part's value as sent.
fn unescape(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    Cow::Owned(value.replace("%7C", "|").replace("%25", "%"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use std::collections::HashMap;

    fn header(name: &str) -> Part {
        Part::Header(HeaderName::from_bytes(name.as_bytes()).unwrap())
    }

    fn one(part: &Part, value: Value) -> String {
        request_key(&[(part, value)])
    }

    #[test]
    fn ip_and_header_keys_keep_their_form() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(one(&Part::Ip, Value::Ip(ip)), "ip:10.0.0.1");
        assert_eq!(ip_key(None), "ip:unknown");
        assert_eq!(
            one(&header("x-api-key"), Value::Bytes(b"premium-1")),
            "x-api-key:premium-1"
        );
        // Computed independently: `printf 'a%.0s' $(seq 1 257) | sha256sum`.
        assert_eq!(
            one(&header("x-api-key"), Value::Bytes(&[b'a'; 257])),
            "x-api-key:sha256:e8d95cc2b4bc198c54b40bd214df958afb65f5e73d2c2eafe0593cf5c635c1f0"
        );
        assert_eq!(
            one(&header("x-api-key"), Value::Bytes(&[b'a'; 256])),
            format!("x-api-key:{}", "a".repeat(256))
        );
        let net: IpNet = "2001:db8:1::/48".parse().unwrap();
        assert_eq!(
            one(&Part::IpPrefix(48), Value::Net(net)),
            "ip:2001:db8:1::/48"
        );
    }

    #[test]
    fn a_header_named_ip_is_not_the_client_ip() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let real = one(&Part::Ip, Value::Ip(ip));
        let spoofed = one(&header("ip"), Value::Bytes(b"10.0.0.7"));
        assert_ne!(real, spoofed);
        assert_eq!(spoofed, "header(ip):10.0.0.7");
        assert_eq!(override_key(&real), Some(OverrideKey::Ip("10.0.0.7")));
        assert_eq!(
            override_key(&spoofed),
            Some(OverrideKey::Value(Cow::Borrowed("10.0.0.7")))
        );
    }

    #[test]
    fn a_digest_is_never_a_value_as_sent() {
        let long = one(&header("x-api-key"), Value::Bytes(&[b'a'; 257]));
        let (_, digest) = long.split_once(':').unwrap();
        let forged = one(&header("x-api-key"), Value::Bytes(digest.as_bytes()));
        assert_ne!(forged, long);
        assert!(forged.starts_with("x-api-key:sha256:"), "{forged}");
    }

    #[test]
    fn composite_keys_escape_their_separator() {
        let (org, project) = (header("x-org"), header("x-project"));
        let a = request_key(&[
            (&org, Value::Bytes(b"a|x-project:b")),
            (&project, Value::Bytes(b"c")),
        ]);
        let b = request_key(&[
            (&org, Value::Bytes(b"a")),
            (&project, Value::Bytes(b"b|x-project:c")),
        ]);
        assert_ne!(a, b);
        assert_eq!(a, "[x-org:a%7Cx-project:b|x-project:c]");
        assert_eq!(
            override_key(&request_key(&[
                (&org, Value::Bytes(b"acme")),
                (&project, Value::Bytes(b"p1"))
            ])),
            Some(OverrideKey::Value(Cow::Owned("acme|p1".into())))
        );
        // A single value holding the separator is not a composite.
        let single = one(&org, Value::Bytes(b"a|x-project:b"));
        assert_eq!(parse(&single).unwrap().len(), 1);
    }

    #[test]
    fn rules_split_off_exactly() {
        assert_eq!(
            split_rule("login/ip:10.0.0.1"),
            (Some("login"), "ip:10.0.0.1")
        );
        assert_eq!(split_rule("ip:10.0.0.1"), (None, "ip:10.0.0.1"));
        assert_eq!(split_rule("ip:2001:db8::/64"), (None, "ip:2001:db8::/64"));
        assert_eq!(split_rule("x-api-key:a/b"), (None, "x-api-key:a/b"));
        assert_eq!(split_rule("search/global"), (Some("search"), "global"));
        assert_eq!(split_rule("global"), (None, "global"));
        assert_eq!(
            split_rule("api/[ip:1.2.3.4|x:y]"),
            (Some("api"), "[ip:1.2.3.4|x:y]")
        );
        assert_eq!(split_rule("Bad/ip:1.1.1.1"), (None, "Bad/ip:1.1.1.1"));
    }

    #[test]
    fn override_values_are_digested_as_their_counter_keys_are() {
        let key = Part::Header(HeaderName::from_static("x-api-key"));
        let shown = display_override("premium-1", std::slice::from_ref(&key));
        let counter = display("r/x-api-key:premium-1");
        assert_eq!(
            format!("r/x-api-key:{shown}"),
            counter,
            "the same digest in both"
        );
        assert!(!shown.contains("premium"));
        let ip = [Part::Ip];
        assert_eq!(display_override("10.0.0.7", &ip), "10.0.0.7");
        let both = [Part::Ip, key];
        let shown = display_override("10.0.0.7|a%7Cb", &both);
        let counter = display("r/[ip:10.0.0.7|x-api-key:a%7Cb]");
        assert_eq!(
            format!("r/[ip:10.0.0.7|x-api-key:{}]", &shown[9..]),
            counter
        );
        assert!(shown.starts_with("10.0.0.7|sha256:"));
    }

    #[test]
    fn private_values_show_as_a_short_digest() {
        // `printf premium-1 | sha256sum | cut -c1-16`
        assert_eq!(
            display("api/x-api-key:premium-1"),
            "api/x-api-key:sha256:a32b1a51c4fda8c4"
        );
        assert_eq!(display("ip:10.0.0.1"), "ip:10.0.0.1");
        assert_eq!(display("search/global"), "search/global");
        let long = one(&header("x-api-key"), Value::Bytes(&[b'a'; 257]));
        assert_eq!(display(&long), "x-api-key:sha256:e8d95cc2b4bc198c");
        let mixed = request_key(&[
            (&Part::Ip, Value::Ip("10.0.0.1".parse().unwrap())),
            (&Part::Jwt("org".into()), Value::Bytes(b"acme")),
        ]);
        assert_eq!(mixed, "[ip:10.0.0.1|jwt(org):acme]");
        let shown = display(&mixed);
        assert!(
            shown.starts_with("[ip:10.0.0.1|jwt(org):sha256:") && shown.ends_with(']'),
            "{shown}"
        );
        assert!(!shown.contains("acme"));
        assert_eq!(
            display("user:1"),
            "user:sha256:6b86b273ff34fce1",
            "a /check key of the grammar's shape"
        );
    }

    /// Arbitrary sources and values, including every separator and tag as a value, never
    /// give two different (rule, source, values) the same counter key, and every key parses
    /// back into its kinds.
    #[test]
    fn the_grammar_is_unambiguous() {
        let names = [
            "ip",
            "global",
            "x-api-key",
            "query",
            "cookie",
            "jwt",
            "a.b",
            "%",
            "~",
        ];
        let values: &[&[u8]] = &[
            b"a",
            b"ip:1.2.3.4",
            b"a|b",
            b"a:b",
            b"x-api-key:a",
            b"(x):y",
            b"[a]",
            b"%7C",
            b"%",
            b"sha256:abc",
            b"global",
            b"a/b",
            b"login/ip:1",
            b"caf\xc3\xa9",
            b"\x00",
            b"",
            b"|",
            b"]",
            b"[",
        ];
        let parts: Vec<Part> = names
            .iter()
            .map(|n| header(n))
            .chain(names.iter().flat_map(|n| {
                [
                    Part::Query((*n).into()),
                    Part::Cookie((*n).into()),
                    Part::Jwt((*n).into()),
                ]
            }))
            .chain([Part::Ip, Part::IpPrefix(64)])
            .collect();
        let ips = [
            Value::Ip("10.0.0.1".parse().unwrap()),
            Value::Ip("::1".parse().unwrap()),
            Value::Net("2001:db8::/64".parse().unwrap()),
            Value::UnknownIp,
        ];
        // Under `ip/N`, an IPv4 client (or an unknown peer) is keyed as under `ip`, on
        // purpose: the same counter. Its own values are networks.
        let values_of = |p: &Part| -> Vec<Value> {
            match p {
                Part::Ip => vec![ips[0], ips[1], ips[3]],
                Part::IpPrefix(_) => vec![ips[2]],
                _ => values.iter().map(|v| Value::Bytes(v)).collect(),
            }
        };
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut check = |rule: Option<&str>, combo: &[(&Part, Value)]| {
            let key = counter_key(rule, request_key(combo));
            let what = format!("{rule:?} {combo:?}");
            if let Some(before) = seen.insert(key.clone(), what.clone()) {
                assert_eq!(before, what, "two sources gave {key:?}");
            }
            let (r, request) = split_rule(&key);
            assert_eq!(r, rule, "{key}");
            let parsed = parse(request).unwrap_or_else(|| panic!("{key} does not parse"));
            assert_eq!(parsed.len(), combo.len().max(1), "{key}");
        };
        for rule in [None, Some("login"), Some("ip")] {
            for p in &parts {
                for v in values_of(p) {
                    check(rule, &[(p, v)]);
                }
            }
            for a in parts.iter().step_by(3) {
                for b in parts.iter().step_by(4) {
                    for va in values_of(a).into_iter().step_by(2) {
                        for vb in values_of(b).into_iter().step_by(3) {
                            check(rule, &[(a, va), (b, vb)]);
                        }
                    }
                }
            }
        }
        assert!(seen.len() > 10_000, "{}", seen.len());
    }
}
