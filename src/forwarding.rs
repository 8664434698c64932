//! HTTP/1 hygiene at the edge (contract §10), as pure functions of headers: the forwarding
//! headers the upstream gets (`X-Forwarded-For` appended, `X-Real-IP` and
//! `X-Forwarded-Proto` replaced), and the hop-by-hop headers removed from a response. Pingora
//! already strips hop-by-hop request headers on the way to the upstream. What is refused
//! before anything else is [`crate::request`]'s.

use std::io::Write;
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType::InvalidHTTPHeader, OrErr};

/// `http` or `https`, as the client reached this gateway.
pub fn proto(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Tells the upstream who the client is: the peer appended to `X-Forwarded-For` (every such
/// header the client sent is one list, kept), and `X-Real-IP` (the client as the limits see
/// it) and `X-Forwarded-Proto` set, whatever the client sent in them.
pub fn set_forwarded(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    client: Option<IpAddr>,
    proto: &'static str,
) -> pingora::Result<()> {
    // The address is formatted once: the client is usually the peer itself.
    let peer_value = peer.map(ip_value);
    if let Some(peer_value) = &peer_value {
        let mut sent = req.headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        let hops = if sent.peek().is_none() {
            peer_value.clone()
        } else {
            // One value for the list: what the client sent, then the peer.
            let mut hops = Vec::with_capacity(64);
            for v in sent {
                hops.extend_from_slice(v.as_bytes());
                hops.extend_from_slice(b", ");
            }
            hops.extend_from_slice(peer_value.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(hops))
                .or_err(InvalidHTTPHeader, "X-Forwarded-For")?
        };
        req.insert_header("X-Forwarded-For", hops)?;
    }
    match client {
        Some(ip) if Some(ip) == peer => {
            req.insert_header("X-Real-IP", peer_value.unwrap_or_else(|| ip_value(ip)))?
        }
        Some(ip) => req.insert_header("X-Real-IP", ip_value(ip))?,
        None => {
            req.remove_header(&X_REAL_IP);
        }
    }
    req.insert_header("X-Forwarded-Proto", HeaderValue::from_static(proto))?;
    Ok(())
}

/// An address as a header value, without a `String` in between.
fn ip_value(ip: IpAddr) -> HeaderValue {
    // The longest text of an address is 39 bytes (IPv6).
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    if write!(w, "{ip}").is_err() {
        return HeaderValue::from_static("unknown");
    }
    let len = 48 - w.len();
    // An address's text is visible ASCII.
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Hop-by-hop response headers, never passed on (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 3] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
];

/// Removes what concerns only the upstream's connection from its response: the headers its
/// `Connection` names, `Keep-Alive`, `Proxy-Connection`, `TE`, and `Upgrade` unless this is a
/// switch of protocols (WebSocket), which must keep `Connection` and `Upgrade`.
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
    // The usual `Connection: keep-alive` (or `close`) names nothing else to remove: no
    // allocation for it.
    let named: Vec<HeaderName> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| {
            let own = [b"keep-alive".as_slice(), b"close", b"connection"]
                .iter()
                .any(|o| t.eq_ignore_ascii_case(o));
            let kept = switching && t.eq_ignore_ascii_case(b"upgrade");
            !(t.is_empty() || own || kept)
        })
        .filter_map(|t| HeaderName::from_bytes(&t.to_ascii_lowercase()).ok())
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
    // One look over the names first: a response usually has none of these.
    let hop = |k: &HeaderName| HOP_BY_HOP.contains(k) || (!switching && k == http::header::UPGRADE);
    if resp.headers.keys().any(hop) {
        for name in &HOP_BY_HOP {
            resp.remove_header(name);
        }
        if !switching {
            resp.remove_header(&http::header::UPGRADE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;

    fn req(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn forwarded_headers_are_replaced_and_appended() {
        let mut r = req(
            Version::HTTP_11,
            &[
                ("Host", "a"),
                ("X-Forwarded-For", "1.1.1.1"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
            ],
        );
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        set_forwarded(&mut r, Some(peer), Some(peer), "http").unwrap();
        assert_eq!(r.headers["x-forwarded-for"], "1.1.1.1, 10.0.0.2");
        assert_eq!(r.headers["x-real-ip"], "10.0.0.2");
        assert_eq!(r.headers["x-forwarded-proto"], "http");
        assert_eq!(r.headers.get_all("x-real-ip").iter().count(), 1);
    }

    #[test]
    fn every_forwarded_list_is_kept_byte_for_byte() {
        let mut r = req(Version::HTTP_11, &[("Host", "a")]);
        r.append_header("X-Forwarded-For", "1.1.1.1").unwrap();
        r.append_header("X-Forwarded-For", "2.2.2.2, 3.3.3.3")
            .unwrap();
        // obs-text (a Latin-1 byte) is passed on as it came, not replaced.
        r.append_header(
            "X-Forwarded-For",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .unwrap();
        let peer: IpAddr = "2001:db8::1".parse().unwrap();
        let client: IpAddr = "10.0.0.9".parse().unwrap();
        set_forwarded(&mut r, Some(peer), Some(client), "https").unwrap();
        assert_eq!(
            r.headers["x-forwarded-for"].as_bytes(),
            b"1.1.1.1, 2.2.2.2, 3.3.3.3, caf\xe9, 2001:db8::1"
        );
        assert_eq!(r.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(r.headers["x-real-ip"], "10.0.0.9");
        assert_eq!(r.headers["x-forwarded-proto"], "https");

        // No peer address (a Unix socket): nothing appended, X-Real-IP from the client alone.
        let mut r = req(Version::HTTP_11, &[("Host", "a"), ("X-Real-IP", "6.6.6.6")]);
        set_forwarded(&mut r, None, None, "http").unwrap();
        assert!(r.headers.get("x-forwarded-for").is_none());
        assert!(r.headers.get("x-real-ip").is_none());
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(ip_value(longest), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn hop_by_hop_response_headers_go() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret-Hop", "1"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("Content-Type", "text/plain"),
        ] {
            r.append_header(k.to_string(), v).unwrap();
        }
        strip_hop_by_hop(&mut r);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["connection", "content-type"]);

        let mut ws = ResponseHeader::build(101, None).unwrap();
        ws.append_header("Connection", "Upgrade").unwrap();
        ws.append_header("Upgrade", "websocket").unwrap();
        strip_hop_by_hop(&mut ws);
        assert_eq!(ws.headers["upgrade"], "websocket");
    }
}
