//! The client a request comes from (contract §3.1): the TCP peer, unless the peer is a trusted
//! proxy; then the right-most `X-Forwarded-For` hop that is not itself trusted (nginx's
//! `real_ip_recursive on`). A hop that does not parse stops the walk at the last address known
//! good, so garbage never becomes a key. IPv4-mapped IPv6 addresses are the IPv4 addresses
//! they are, wherever they come from.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client address: the peer, or, when the peer is trusted, the right-most
/// X-Forwarded-For hop that is not trusted.
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

/// The network of an IPv6 client under `ip/len`; `None` for an IPv4 client, which is keyed
/// by its address (contract §12).
pub fn network(ip: IpAddr, len: u8) -> Option<IpNet> {
    match ip {
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, len.min(128))
            .ok()
            .map(|n| IpNet::V6(n.trunc())),
        IpAddr::V4(_) => None,
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

    #[test]
    fn untrusted_peer_cannot_spoof_forwarded_for() {
        let h = headers(&[("x-forwarded-for", b"1.2.3.4")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["192.168.0.0/16"])),
            ip("10.0.0.1")
        );
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
    fn ipv6_clients_group_by_network() {
        assert_eq!(
            network(ip("2001:db8:1:2:3::9"), 48),
            Some("2001:db8:1::/48".parse().unwrap())
        );
        assert_eq!(network(ip("10.0.0.1"), 24), None);
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
