//! What rules and keys read of an admitted request: plain types, no pingora type, so the
//! selection of rules and the keys are pure functions, unit-tested and fuzzed without a
//! network.

use std::net::IpAddr;

use http::HeaderMap;

/// An admitted request ([`super::admit`]), as rules and keys see it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The TCP peer (an IPv4 client of an IPv6 listener as IPv4); `None` for a peer that is
    /// not an IP socket.
    pub peer: Option<IpAddr>,
    pub method: &'a http::Method,
    /// The host: the target's authority, else the `Host` header, as sent.
    pub host: Option<&'a str>,
    /// The normal path, decoded ([`super::path`]).
    pub path: &'a str,
    /// The query string, without the `?`, as sent.
    pub query: Option<&'a [u8]>,
    pub headers: &'a HeaderMap,
}
