//! Keying a request (contract §3.1): a pure function of the configured source, the TCP peer
//! and the request headers, so it is tested without a network.
//!
//! - `ip` keys by `ip:<client-ip>`; the client is the peer unless the peer is a trusted proxy,
//!   then the right-most X-Forwarded-For hop that is not itself trusted (nginx's
//!   `real_ip_recursive on`).
//! - `header:<Name>` keys by `<name>:<value>`; without the header (or with an empty value) the
//!   request falls back to its `ip:` key, so leaving the header out never escapes the limit.
//! - A value longer than [`MAX_VALUE_LEN`] bytes, or one with bytes that are not visible ASCII,
//!   is keyed by its SHA-256 digest (`<name>:sha256:<hex>`): a key's size is bounded and every
//!   key is safe to print in JSON, logs and metric labels.
//! - `global` keys every request alike (`global`): one counter for all of a rule's matches.

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Longest header value used verbatim in a key.
pub const MAX_VALUE_LEN: usize = 256;

/// The key of every request under `global`.
pub const GLOBAL: &str = "global";

/// What a request is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `ip:<client-ip>`.
    Ip,
    /// `<lower-cased header name>:<value>`, falling back to the `ip:` key.
    Header(http::HeaderName),
    /// One key for every request: `global`.
    Global,
}

impl KeySource {
    /// Parses `ip`, `header:<Header-Name>` or `global`.
    pub fn parse(s: &str) -> Option<KeySource> {
        match s {
            "ip" => Some(KeySource::Ip),
            GLOBAL => Some(KeySource::Global),
            _ => {
                let name = s.strip_prefix("header:")?;
                http::HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(KeySource::Header)
            }
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Ip => f.write_str("ip"),
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Global => f.write_str(GLOBAL),
        }
    }
}

/// What a request offers to rules and keys, apart from any pingora type.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The TCP peer; `None` for a peer that is not an IP socket.
    pub peer: Option<IpAddr>,
    pub method: &'a http::Method,
    /// The `Host` header (or the request target's authority), as sent.
    pub host: Option<&'a str>,
    /// The path of the request target, without the query, as sent.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The value part of a request key, which overrides are looked up by: `10.0.0.1` of
/// `ip:10.0.0.1`, `premium-1` of `x-api-key:premium-1`; `None` for `global`.
pub fn key_value(key: &str) -> Option<&str> {
    key.split_once(':').map(|(_, value)| value)
}

/// The counter key of one request. `peer` is `None` for a peer that is not an IP socket
/// (a Unix socket), keyed as `ip:unknown`.
pub fn request_key(
    source: &KeySource,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> String {
    match source {
        KeySource::Global => return GLOBAL.to_string(),
        KeySource::Header(name) => {
            if let Some(value) = headers.get(name).map(|v| v.as_bytes()) {
                if !value.is_empty() {
                    return header_key(name.as_str(), value);
                }
            }
        }
        KeySource::Ip => {}
    }
    ip_key(peer, headers, trusted)
}

/// `ip:<client-ip>` (`ip:unknown` for a peer that is not an IP socket).
pub fn ip_key(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> String {
    match peer {
        Some(peer) => format!("ip:{}", client_ip(peer, headers, trusted)),
        None => "ip:unknown".to_string(),
    }
}

/// `<name>:<value>`, or `<name>:sha256:<hex>` for values too long or not printable.
pub fn header_key(name: &str, value: &[u8]) -> String {
    let printable = value.iter().all(|b| (0x21..=0x7e).contains(b));
    if printable && value.len() <= MAX_VALUE_LEN {
        // All visible ASCII, so this is valid UTF-8.
        return format!("{name}:{}", String::from_utf8_lossy(value));
    }
    let digest = Sha256::digest(value);
    let mut key = String::with_capacity(name.len() + 8 + 64);
    key.push_str(name);
    key.push_str(":sha256:");
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The client address: the peer, or, when the peer is trusted, the right-most
/// X-Forwarded-For hop that is not trusted. A hop that does not parse stops the walk at the
/// last address known good, so garbage never becomes a key.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop.trim()) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// An X-Forwarded-For element: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, how an IPv4 client reaches a listener
/// bound to an IPv6 address) as the IPv4 address it is, so trusted proxies, keys and
/// overrides written in IPv4 apply to it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn api_key() -> KeySource {
        KeySource::Header(HeaderName::from_static("x-api-key"))
    }

    #[test]
    fn ip_key_is_the_peer() {
        let k = request_key(&KeySource::Ip, Some(ip("10.0.0.1")), &HeaderMap::new(), &[]);
        assert_eq!(k, "ip:10.0.0.1");
    }

    #[test]
    fn untrusted_peer_cannot_spoof_forwarded_for() {
        let h = headers(&[("x-forwarded-for", b"1.2.3.4")]);
        let k = request_key(
            &KeySource::Ip,
            Some(ip("10.0.0.1")),
            &h,
            &nets(&["192.168.0.0/16"]),
        );
        assert_eq!(k, "ip:10.0.0.1");
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("1.2.3.4"));
    }

    #[test]
    fn several_forwarded_for_headers_are_one_list() {
        let h = headers(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"1.2.3.4"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.1/32"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn all_hops_trusted_gives_the_leftmost() {
        let h = headers(&[("x-forwarded-for", b"10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn garbage_hop_stops_at_last_good_address() {
        let h = headers(&[("x-forwarded-for", b"1.2.3.4, nonsense, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.2")
        );
        let h = headers(&[("x-forwarded-for", b"nonsense")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn hops_with_ports_and_mapped_v6_parse() {
        let h = headers(&[("x-forwarded-for", b"[2001:db8::1]:443, ::ffff:1.2.3.4:80")]);
        // "::ffff:1.2.3.4:80" is not an address with a port; the walk stops before it.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
        let h = headers(&[("x-forwarded-for", b"[2001:db8::1]:443, ::ffff:1.2.3.4")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
        let h = headers(&[("x-forwarded-for", b"[2001:db8::1]:443")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn header_key_lower_cases_the_name() {
        let h = headers(&[("X-Api-Key", b"abc")]);
        assert_eq!(
            request_key(&api_key(), Some(ip("10.0.0.1")), &h, &[]),
            "x-api-key:abc"
        );
    }

    #[test]
    fn missing_or_empty_header_falls_back_to_ip() {
        let k = request_key(&api_key(), Some(ip("10.0.0.1")), &HeaderMap::new(), &[]);
        assert_eq!(k, "ip:10.0.0.1");
        let h = headers(&[("x-api-key", b"")]);
        assert_eq!(
            request_key(&api_key(), Some(ip("10.0.0.1")), &h, &[]),
            "ip:10.0.0.1"
        );
    }

    #[test]
    fn fallback_respects_trusted_proxies() {
        let h = headers(&[("x-forwarded-for", b"1.2.3.4")]);
        let k = request_key(&api_key(), Some(ip("10.0.0.1")), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(k, "ip:1.2.3.4");
    }

    #[test]
    fn value_of_exactly_256_bytes_is_kept() {
        let v = vec![b'a'; MAX_VALUE_LEN];
        assert_eq!(
            header_key("x-api-key", &v),
            format!("x-api-key:{}", "a".repeat(256))
        );
    }

    #[test]
    fn long_value_is_keyed_by_its_digest() {
        let v = vec![b'a'; MAX_VALUE_LEN + 1];
        let k = header_key("x-api-key", &v);
        // Computed independently: `printf 'a%.0s' $(seq 1 257) | sha256sum`.
        assert_eq!(
            k,
            "x-api-key:sha256:e8d95cc2b4bc198c54b40bd214df958afb65f5e73d2c2eafe0593cf5c635c1f0"
        );
    }

    #[test]
    fn non_printable_value_is_keyed_by_its_digest() {
        let k = header_key("x-api-key", b"caf\xc3\xa9");
        assert!(k.starts_with("x-api-key:sha256:"), "{k}");
        let k = header_key("x-api-key", b"a b");
        assert!(k.starts_with("x-api-key:sha256:"), "{k}");
    }

    #[test]
    fn global_keys_every_request_alike() {
        let h = headers(&[("x-api-key", b"abc")]);
        assert_eq!(
            request_key(&KeySource::Global, Some(ip("10.0.0.1")), &h, &[]),
            "global"
        );
        assert_eq!(request_key(&KeySource::Global, None, &h, &[]), "global");
    }

    #[test]
    fn key_sources_parse_and_print_alike() {
        for text in ["ip", "global", "header:x-api-key"] {
            assert_eq!(KeySource::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            KeySource::parse("header:X-Api-Key").unwrap().to_string(),
            "header:x-api-key"
        );
        assert_eq!(KeySource::parse("header:X Api"), None);
        assert_eq!(KeySource::parse("cookie"), None);
    }

    #[test]
    fn key_values_are_what_overrides_match() {
        assert_eq!(key_value("ip:10.0.0.1"), Some("10.0.0.1"));
        assert_eq!(key_value("ip:2001:db8::1"), Some("2001:db8::1"));
        assert_eq!(key_value("x-api-key:premium-1"), Some("premium-1"));
        assert_eq!(key_value("global"), None);
    }

    #[test]
    fn unix_peer_keys_as_unknown() {
        assert_eq!(
            request_key(&KeySource::Ip, None, &HeaderMap::new(), &[]),
            "ip:unknown"
        );
    }
}
